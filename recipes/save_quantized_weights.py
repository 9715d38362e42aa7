"""A quantized (int8) state_dict does not load: RuntimeError: While copying the parameter named "0.weight"
... an exception occurred : ("'Parameter' object has no attribute 'tensor_data_names'",)

A quantized model's weights are not float tensors but torchao tensor subclasses (int8 data plus
scales). load_state_dict copies each saved tensor into the model's own parameter, and a float
parameter cannot take an Int8Tensor. torch.load(weights_only=True) also refuses the subclass
unless torchao is imported first (importing it allowlists its tensor classes).

Fix: import torchao, build the float model, quantize it the same way (quantize_ with the same
config), then load_state_dict(torch.load(path, weights_only=True)).

Run: python save_quantized_weights.py
Needs: torch, torchao
Chapter: share_model.py, "5. Quantized weights"
"""

import logging
import tempfile
from pathlib import Path

import torch
from torch import nn

# torchao, not torch.ao.quantization: quantize_dynamic is still in torch 2.13 but warns that it is
# deprecated in favour of torchao (and its quantized tensors warn too).
# torchao 0.18 with torch 2.13 logs while it is imported (on a CPU-only torch, two CUDA kernel libraries
# it cannot load; torch's notice that torchao registers an Enum the old way): quiet for the import only.
quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
for logger in quiet:
    logger.setLevel(logging.ERROR)
from torchao.quantization import Int8Tensor, Int8WeightOnlyConfig, quantize_  # noqa: E402

for logger in quiet:
    logger.setLevel(logging.NOTSET)


def build() -> nn.Sequential:  # an iris-shaped MLP large enough for the file sizes to matter
    return nn.Sequential(nn.Linear(4, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 3))


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if isinstance(a, Int8Tensor):  # torch.equal is not implemented for it: compare what it holds
        parts = [(a.qdata, b.qdata), (a.scale, b.scale), (a.dequantize(), b.dequantize())]
        return a.block_size == b.block_size and all(torch.equal(x, y) for x, y in parts)
    return torch.equal(a, b)


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(120, 4)
model = build()
torch.save(model.state_dict(), folder / "float.pth")
quantize_(model, Int8WeightOnlyConfig())  # in place: each Linear weight becomes an Int8Tensor
torch.save(model.state_dict(), folder / "int8.pth")
float_kib, int8_kib = ((folder / f).stat().st_size / 1024 for f in ("float.pth", "int8.pth"))
print(f"float file {float_kib:.0f} KiB, int8 file {int8_kib:.0f} KiB: {float_kib / int8_kib:.1f}x smaller")

try:
    build().load_state_dict(torch.load(folder / "int8.pth", weights_only=True))
except RuntimeError as err:
    detail = str(err).splitlines()[1].split("an exception occurred : ")[-1]
    print(f"problem: {type(err).__name__}: copying the int8 weights into a float model: {detail}")
    assert "While copying the parameter named" in str(err)
else:
    raise AssertionError("a float model took the int8 weights")

# THE FIX: quantize a fresh float model the same way, then load.
fresh = build()
quantize_(fresh, Int8WeightOnlyConfig())
fresh.load_state_dict(torch.load(folder / "int8.pth", weights_only=True))

state, reloaded = model.state_dict(), fresh.state_dict()
assert reloaded.keys() == state.keys() and all(same(reloaded[k], v) for k, v in state.items())
with torch.no_grad():
    assert torch.equal(fresh(X), model(X))
workdir.cleanup()
print("ok: the int8 model reloads into a model quantized the same way: every tensor equal, same predictions")

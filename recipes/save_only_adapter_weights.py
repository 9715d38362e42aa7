"""An adapter (LoRA) or fine-tuned part saves as large as the whole model.

model.state_dict() holds every tensor, the frozen base's too, so a file of a small adapter's
training is as large as the whole model, once per fine-tune. Save only the trainable tensors;
the base file is shared. To load, build the base, load its file, add the adapter, then load the
adapter file with strict=False: the missing keys must be exactly the base's, none unexpected.

Fix: torch.save({k: v for k, v in model.state_dict().items() if k in trainable_names}, path), and
model.load_state_dict(torch.load(path, weights_only=True), strict=False) on the rebuilt base.

Run: python save_only_adapter_weights.py
Needs: torch
Chapter: share_model.py, "4. Only what changed: an adapter"
"""

import tempfile
from pathlib import Path

import torch
from torch import nn


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update: y = base(x) + x A^T B^T * scale."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))  # zero: starts as the base model
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale


def build_base() -> nn.Sequential:  # an iris-shaped MLP large enough for the file sizes to matter
    return nn.Sequential(nn.Linear(4, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 3))


def base_with_adapters(base_file: Path) -> nn.Sequential:
    """The base model with its weights from base_file, each Linear layer wrapped with a fresh adapter."""
    base = build_base()
    base.load_state_dict(torch.load(base_file, weights_only=True))
    return nn.Sequential(*[LoRALinear(m) if isinstance(m, nn.Linear) else m for m in base], nn.LogSoftmax(1))


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(120, 4)
y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # learnable: three classes from two features
torch.save(build_base().state_dict(), folder / "base.pth")  # the pretrained base, shared by fine-tunes
model = base_with_adapters(folder / "base.pth")
optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
for _ in range(50):
    optimizer.zero_grad()
    nn.NLLLoss()(model(X), y).backward()
    optimizer.step()

# THE FIX: save the trainable tensors only.
trainable = {name for name, p in model.named_parameters() if p.requires_grad}
torch.save({k: v for k, v in model.state_dict().items() if k in trainable}, folder / "adapter.pth")
torch.save(model.state_dict(), folder / "whole.pth")  # what it would have cost
adapter_kib, whole_kib = ((folder / f).stat().st_size / 1024 for f in ("adapter.pth", "whole.pth"))
print(f"adapter file {adapter_kib:.0f} KiB, whole model {whole_kib:.0f} KiB: {whole_kib / adapter_kib:.0f}x")
assert adapter_kib < whole_kib / 10

fresh = base_with_adapters(folder / "base.pth")
result = fresh.load_state_dict(torch.load(folder / "adapter.pth", weights_only=True), strict=False)
assert set(result.missing_keys) == set(model.state_dict()) - trainable and not result.unexpected_keys
with torch.no_grad():
    expected = model(X)
    assert torch.equal(fresh(X), expected)
    for i, layer in enumerate(fresh):  # merge: W + B @ A * scale, then plain Linear layers again
        if isinstance(layer, LoRALinear):
            layer.base.weight += layer.B @ layer.A * layer.scale
            fresh[i] = layer.base
    merged = fresh(X)
print(f"merged into the weights: log-probabilities differ by at most {(merged - expected).abs().max():.1e}")
# Not bit-equal: the merged product is summed in another order. Within float32 rounding, though:
torch.testing.assert_close(merged, expected)  # float32 defaults: rtol 1.3e-6, atol 1e-5
assert torch.equal(merged.argmax(1), expected.argmax(1))
workdir.cleanup()
print("ok: the adapter-only file restores identical predictions; merged, equal within float32 rounding")

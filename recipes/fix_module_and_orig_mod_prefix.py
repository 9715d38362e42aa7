"""Missing key(s) in state_dict: "hidden.weight" ... Unexpected key(s) in state_dict: "module.hidden.weight".

nn.DataParallel and DistributedDataParallel keep your model as .module, so their state_dict names every
tensor "module.<name>"; torch.compile keeps it as ._orig_mod, giving "_orig_mod.<name>". A plain model
knows neither prefix, and load_state_dict refuses the file in strict mode.

Fix: strip the prefix with torch.nn.modules.utils.consume_prefix_in_state_dict_if_present; better, save
model.module.state_dict() or model._orig_mod.state_dict() in the first place.

Run: python fix_module_and_orig_mod_prefix.py
Needs: torch
Chapter: load_tips.py, "5. Prefixes: `module.` and `_orig_mod.`"
"""

import copy
import os
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present


class Multiclass(nn.Module):
    """The article's iris network: 4 measurements -> 8 hidden units -> 3 log-probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.output = nn.Linear(8, 3)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logsoftmax(self.output(self.act(self.hidden(x))))


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(120, 4)
model = Multiclass()
# The files a wrapped model writes. DataParallel moves what it wraps to GPU 0 where there is one: wrap a
# copy. torch.compile compiles on the first call only, so nothing is compiled here; it does make torch's
# compile-cache folder, kept in ours so that the script leaves nothing behind.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(folder / "torch-compile-cache"))
torch.save(nn.DataParallel(copy.deepcopy(model)).state_dict(), folder / "dataparallel.pth")
torch.save(torch.compile(model).state_dict(), folder / "compiled.pth")

for file_name, prefix in [("dataparallel.pth", "module."), ("compiled.pth", "_orig_mod.")]:
    state = torch.load(folder / file_name, map_location="cpu", weights_only=True)
    # The problem: a plain model refuses the prefixed names.
    try:
        Multiclass().load_state_dict(state)
    except RuntimeError as err:
        missing, unexpected = '"hidden.weight"', f'"{prefix}hidden.weight"'
        said = [f"Missing key(s) in state_dict: {missing}", f"Unexpected key(s) in state_dict: {unexpected}"]
        assert all(words in str(err) for words in said), str(err)
        print(f"problem: {file_name}: {type(err).__name__}: {said[0]} ... {said[1]} ...")
    else:
        raise AssertionError(f"a plain model accepted the keys of {file_name}")

    # The fix: strip the prefix (in place), then load strictly.
    consume_prefix_in_state_dict_if_present(state, prefix)
    restored = Multiclass()
    restored.load_state_dict(state, strict=True)

    assert restored.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(restored.state_dict()[key], value) for key, value in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(restored(X), model(X))
# Better, in the first place: save the inner model's state_dict, which has no prefix to strip.
assert nn.DataParallel(copy.deepcopy(model)).module.state_dict().keys() == model.state_dict().keys()
assert torch.compile(model)._orig_mod.state_dict().keys() == model.state_dict().keys()
workdir.cleanup()
print("ok: with module. and _orig_mod. stripped, both files load with strict=True, every tensor equal")

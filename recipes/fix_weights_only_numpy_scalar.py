"""Weights only load failed ... Unsupported global: GLOBAL numpy._core.multiarray.scalar (a NumPy scalar).

torch.load reads with weights_only=True by default since torch 2.6: tensors and plain Python values only.
A best accuracy computed with NumPy or scikit-learn is a np.float64, which pickles as NumPy functions
and classes, so the whole checkpoint is refused. weights_only=False would load it, and would also run
whatever code a file names: that is not the fix.

Fix: save float(x), not the NumPy scalar; for a file you already have and trust, allowlist exactly
numpy's globals with torch.serialization.safe_globals.

Run: python fix_weights_only_numpy_scalar.py
Needs: torch, numpy
Chapter: checkpoint_resume.py, "What a checkpoint holds"
"""

import importlib
import pickle
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn


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
y = torch.randint(0, 3, (120,))
model = Multiclass()
best_acc = (model(X).argmax(dim=1).numpy() == y.numpy()).mean()  # np.float64, as sklearn returns too
old_file = folder / "checkpoint-numpy.pt"
torch.save({"model": model.state_dict(), "best_acc": best_acc}, old_file)

# The problem: the default load refuses the NumPy scalar.
try:
    torch.load(old_file, weights_only=True)
except pickle.UnpicklingError as err:
    refused = re.search(r"Unsupported global: GLOBAL numpy[\w.]*", str(err))
    assert refused, str(err)
    print(f"problem: {type(err).__name__}: {refused[0]}")
else:
    raise AssertionError("torch.load accepted a NumPy scalar with weights_only=True")

# Fix 1, for new files: store a plain Python float.
new_file = folder / "checkpoint.pt"
torch.save({"model": model.state_dict(), "best_acc": float(best_acc)}, new_file)
plain = torch.load(new_file, weights_only=True)
assert type(plain["best_acc"]) is float and plain["best_acc"] == best_acc

# Fix 2, for a file you trust: allowlist exactly the globals it names, listed without loading it.
names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(old_file))
assert all(name.startswith("numpy.") for name in names), names  # anything else: stop and look
allowed = [getattr(importlib.import_module(mod), attr) for mod, _, attr in (n.rpartition(".") for n in names)]
# The scan misses the dtype's own class, which torch checks only while building: add one per dtype saved.
allowed.append(np.dtypes.Float64DType)
print(f"allowlisting {names} and numpy.dtypes.Float64DType")
with torch.serialization.safe_globals(allowed):
    trusted = torch.load(old_file, weights_only=True)
assert type(trusted["best_acc"]) is np.float64 and trusted["best_acc"] == best_acc
for loaded in (plain, trusted):
    assert loaded["model"].keys() == model.state_dict().keys()
    assert all(torch.equal(loaded["model"][key], value) for key, value in model.state_dict().items())
workdir.cleanup()
print("ok: float(x) loads with weights_only=True; the old file loads with only numpy's globals allowed")

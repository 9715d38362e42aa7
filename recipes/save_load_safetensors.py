"""Save a model's state_dict as safetensors and load it back.

A .safetensors file is a JSON header (names, dtypes, shapes, your own metadata strings) and the
raw bytes: no pickle, so loading it runs no code. It holds tensors only, so the class and its
constructor arguments come from your code; keep what rebuilds the model in the metadata.

Fix: safetensors.torch.save_file(model.state_dict(), path, metadata={...}), then
model.load_state_dict(load_file(path)); or save_model(model, path) and load_model(model, path).

Run: python save_load_safetensors.py
Needs: torch, safetensors
Chapter: compare_formats.py, "safetensors"
"""

import json
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
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
y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # learnable: three classes from two features
hyper = {"lr": 0.05, "epochs": 50}
model = Multiclass()
optimizer = torch.optim.Adam(model.parameters(), lr=hyper["lr"])
for _ in range(hyper["epochs"]):
    optimizer.zero_grad()
    nn.NLLLoss()(model(X), y).backward()
    optimizer.step()

# save_file / load_file: a dict of tensors, plus metadata that must be str -> str (json for the rest)
path = folder / "iris.safetensors"
save_file(model.state_dict(), path, metadata={"class": "Multiclass", "hyper": json.dumps(hyper)})
reloaded = Multiclass()
reloaded.load_state_dict(load_file(path))  # strict: every name must match
with safe_open(path, framework="pt") as f:  # the header alone, no tensor read
    metadata = dict(sorted(f.metadata().items()))  # sorted: the header does not keep their order

# save_model / load_model: the same, from and into the model (they also handle tied weights)
save_model(model, folder / "iris-model.safetensors", metadata={"class": "Multiclass"})
second = Multiclass()
missing, unexpected = load_model(second, folder / "iris-model.safetensors")

print(f"saved {len(model.state_dict())} tensors, metadata {metadata}")
state = model.state_dict()
for loaded in (reloaded, second):
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
assert metadata["class"] == "Multiclass" and json.loads(metadata["hyper"]) == hyper
assert not missing and not unexpected  # load_model is strict by default; it returns what did not match
workdir.cleanup()
print("ok: both safetensors round trips give every tensor equal and identical predictions")

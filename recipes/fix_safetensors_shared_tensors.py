"""RuntimeError: Some tensors share memory, this will lead to duplicate memory on disk and potential
differences when loading them again (safetensors.torch.save_file on a model with tied weights).

A model whose output layer reuses its input embedding's weight has one tensor under two names
in its state_dict. A safetensors file cannot say that two names are one tensor, so save_file
refuses rather than write two copies that a load would then keep apart.

Fix: safetensors.torch.save_model(model, path) writes the tensor once, under one name (the metadata
only notes the other); load_model(fresh_model, path) copies it into a model whose class ties the two
names again. load_model makes no tie itself: into an untied model it reports output.weight missing.

Run: python fix_safetensors_shared_tensors.py
Needs: torch, safetensors
Chapter: compare_formats.py, "safetensors"
"""

import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model
from torch import nn


class TiedModel(nn.Module):
    """Tokens -> embeddings -> scores over the same tokens, with the output weight tied to the input."""

    def __init__(self, vocab: int = 10, dim: int = 8) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.output = nn.Linear(dim, vocab, bias=False)
        self.output.weight = self.embedding.weight  # tied: one Parameter under two names

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.output(self.embedding(tokens))


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
tokens = torch.randint(0, 10, (120,))
model = TiedModel()
path = folder / "tied.safetensors"

try:
    save_file(model.state_dict(), path)
except RuntimeError as err:
    print(f"problem: {type(err).__name__}: {' '.join(str(err).split())[:70]}...")
    assert "Some tensors share memory" in str(err) and "output.weight" in str(err)
else:
    raise AssertionError("save_file accepted tied weights")

# THE FIX: save_model writes the shared tensor once, under one of its names.
save_model(model, path)
with safe_open(path, framework="pt") as f:
    print(f"fixed: the file holds {list(f.keys())}, metadata {f.metadata()}")
    assert list(f.keys()) == ["embedding.weight"] and f.metadata()["output.weight"] == "embedding.weight"
# load_model copies it into the fresh model's tied Parameter, which fills both names at once.
fresh = TiedModel()
assert not torch.equal(fresh.output.weight, model.output.weight)  # its own random start, so far
missing, unexpected = load_model(fresh, path)
assert not missing and not unexpected
assert fresh.output.weight is fresh.embedding.weight  # the tie from TiedModel() survives the load
assert torch.equal(fresh.output.weight, model.output.weight)  # the one stored tensor, under both names
with torch.no_grad():
    assert torch.equal(fresh(tokens), model(tokens))

# The tie itself must come from the class: load_model does not read the metadata to make one.
untied = nn.ModuleDict({"embedding": nn.Embedding(10, 8), "output": nn.Linear(8, 10, bias=False)})
try:
    load_model(untied, path)
except RuntimeError as err:
    assert 'Missing key(s) in state_dict: "output.weight"' in str(err), str(err)
    print('an untied model: load_model says: Missing key(s) in state_dict: "output.weight"')
else:
    raise AssertionError("load_model filled an untied output.weight")

# torch.save keeps the sharing itself: the pickle records one storage, used by both names.
torch.save(model.state_dict(), folder / "tied.pth")
state = torch.load(folder / "tied.pth", weights_only=True)
shared = state["output.weight"].data_ptr() == state["embedding.weight"].data_ptr()
print(f"torch.save: after torch.load, both names share one storage: {shared}")
assert shared
workdir.cleanup()
print("ok: save_model writes the tied weight once; load_model fills both names of a model that ties them")

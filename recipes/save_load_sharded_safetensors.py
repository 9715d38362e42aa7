"""One huge model file instead of shards: save a state_dict as safetensors shards with an index,
and load it back (loading one shard alone fails: Missing key(s) in state_dict).

A checkpoint published as one file must fit in memory all at once, and in every upload and
download. Large models are published as shards of at most max_shard_size bytes, plus
model.safetensors.index.json, whose weight_map says which shard holds which tensor.

Fix: huggingface_hub.save_torch_state_dict(state_dict, folder, max_shard_size=...) writes the
shards and the index; load_torch_model(model, folder) loads them one shard at a time; or read
the index yourself and load_state_dict shard by shard with strict=False, checking what is left.

Run: python save_load_sharded_safetensors.py
Needs: torch, safetensors, huggingface_hub
Chapter: share_model.py, "3. Shards with an index"
"""

import json
import tempfile
from pathlib import Path

import torch
from huggingface_hub import load_torch_model, save_torch_state_dict
from safetensors.torch import load_file
from torch import nn


def build() -> nn.Sequential:  # an iris-shaped MLP with a few layers of some size
    return nn.Sequential(nn.Linear(4, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 3))


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(30, 4)
model = build().eval()
save_torch_state_dict(model.state_dict(), folder, max_shard_size="100KB")  # 256x256 float32 = 262 KB
index = json.loads((folder / "model.safetensors.index.json").read_text())
shards = sorted(set(index["weight_map"].values()))
print(f"{len(shards)} shards: {shards}")
assert len(shards) > 1

first = load_file(folder / shards[0])
try:
    build().load_state_dict(first)  # one shard is not the model
except RuntimeError as err:
    print(f"problem: {type(err).__name__}: {str(err).splitlines()[1].strip()[:90]}...")
    assert "Missing key(s) in state_dict" in str(err)
else:
    raise AssertionError("one shard loaded as the whole model")

# THE FIX: load every shard the index names, one at a time.
with_hub = build().eval()
load_torch_model(with_hub, folder)  # strict: every key of the model must be in some shard

by_hand = build().eval()
missing = set(by_hand.state_dict())
for shard in shards:  # only one shard's tensors in memory at a time
    tensors = load_file(folder / shard)
    assert not by_hand.load_state_dict(tensors, strict=False).unexpected_keys
    missing -= set(tensors)
assert not missing and set(index["weight_map"]) == set(model.state_dict())

state = model.state_dict()
with torch.no_grad():
    for loaded in (with_hub, by_hand):
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
        assert torch.equal(loaded(X), model(X))
workdir.cleanup()
print("ok: the shards load back through their index, with load_torch_model and by hand: every tensor equal")

"""Weights only load failed ... Unsupported global: GLOBAL __main__.TrainConfig (your own class).

torch.load reads with weights_only=True by default since torch 2.6: tensors and plain Python values only.
A checkpoint that holds an object of your own class, here a dataclass of training settings, names that
class, and torch refuses to rebuild it. weights_only=False would load it, and would also run whatever
code a file names: that is not the fix.

Fix: save dataclasses.asdict(config) and rebuild with TrainConfig(**saved); for a file you already have
and trust, allowlist exactly that class with torch.serialization.safe_globals.

Run: python fix_weights_only_custom_class.py
Needs: torch
Chapter: checkpoint_resume.py, "What a checkpoint holds"
"""

import dataclasses
import pickle
import re
import tempfile
from pathlib import Path

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


@dataclasses.dataclass
class TrainConfig:
    lr: float = 0.01
    epochs: int = 30
    optimizer: str = "Adam"


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
model = Multiclass()
config = TrainConfig(lr=0.005)
old_file = folder / "checkpoint-object.pt"
torch.save({"model": model.state_dict(), "config": config}, old_file)

# The problem: the default load refuses the class.
try:
    torch.load(old_file, weights_only=True)
except pickle.UnpicklingError as err:
    refused = re.search(r"Unsupported global: GLOBAL [\w.]+", str(err))
    assert refused and refused[0].endswith("GLOBAL __main__.TrainConfig"), str(err)
    print(f"problem: {type(err).__name__}: {refused[0]}")
else:
    raise AssertionError("torch.load accepted a TrainConfig with weights_only=True")

# Fix 1, for new files: save a plain dict and rebuild the object from it.
new_file = folder / "checkpoint.pt"
torch.save({"model": model.state_dict(), "config": dataclasses.asdict(config)}, new_file)
plain = torch.load(new_file, weights_only=True)
rebuilt = TrainConfig(**plain["config"])  # runs __init__ (and any checks in __post_init__) as usual

# Fix 2, for a file you trust: allowlist exactly the class it names, listed without loading it.
# Allowing a class lets the file create it and set its fields to values the file chooses, through
# __new__ and __setstate__ without __init__: only for classes whose construction you trust.
assert torch.serialization.get_unsafe_globals_in_checkpoint(old_file) == ["__main__.TrainConfig"]
with torch.serialization.safe_globals([TrainConfig]):
    trusted = torch.load(old_file, weights_only=True)
print(f"from a dict: {rebuilt}, allowlisted: {trusted['config']}")

assert rebuilt == config and trusted["config"] == config and type(trusted["config"]) is TrainConfig
for loaded in (plain, trusted):
    assert loaded["model"].keys() == model.state_dict().keys()
    assert all(torch.equal(loaded["model"][key], value) for key, value in model.state_dict().items())
workdir.cleanup()
print("ok: the config comes back equal from a plain dict and from the old file with only TrainConfig allowed")

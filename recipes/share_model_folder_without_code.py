"""RuntimeError: Error(s) in loading state_dict for Multiclass: size mismatch for hidden.weight: copying a
param with shape torch.Size([16, 4]) from checkpoint, the shape in current model is torch.Size([8, 4]).

A state_dict holds the weights, not the constructor arguments: whoever loads it without your
training script guesses them, and a wrong guess (here the default width) fails.

Fix: share a folder, config.json (the constructor arguments) beside model.safetensors, as
Hugging Face does: by hand with json and save_file, or with huggingface_hub's PyTorchModelHubMixin
(save_pretrained / from_pretrained). A program with only the architecture rebuilds the model.

Run: python share_model_folder_without_code.py
Needs: torch, safetensors, huggingface_hub
Chapter: share_model.py, "1. A folder others can load"
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import load_file, save_file
from torch import nn


class Multiclass(nn.Module):
    """The article's iris network, with its sizes as constructor arguments."""

    def __init__(self, n_features: int = 4, n_hidden: int = 8, n_classes: int = 3) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, n_hidden)
        self.act = nn.ReLU()
        self.output = nn.Linear(n_hidden, n_classes)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logsoftmax(self.output(self.act(self.hidden(x))))


if sys.argv[1:2] == ["--load"]:  # the receiving program: the architecture above and the folder, no sizes
    folder = Path(sys.argv[2])
    model = Multiclass(**json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(folder / "model.safetensors"))
    inputs = load_file(folder.parent / "x.safetensors")["x"].clone()  # clone: aligned, as the sender's
    with torch.no_grad():
        save_file({"out": model.eval()(inputs)}, folder.parent / "out.safetensors")
    sys.exit(0)

workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(30, 4)
model = Multiclass(n_hidden=16).eval()  # trained with a wider hidden layer than the default
torch.save(model.state_dict(), folder / "weights.pth")

try:
    Multiclass().load_state_dict(torch.load(folder / "weights.pth", weights_only=True))
except RuntimeError as err:
    print(f"problem: {type(err).__name__}: {str(err).splitlines()[1].strip()}")
    assert "size mismatch for hidden.weight" in str(err)
else:
    raise AssertionError("the default-width model took the wider weights")

# THE FIX, by hand: the constructor arguments in config.json, the weights in model.safetensors.
(folder / "iris").mkdir()
(folder / "iris" / "config.json").write_text(json.dumps({"n_features": 4, "n_hidden": 16, "n_classes": 3}))
save_file(model.state_dict(), folder / "iris" / "model.safetensors")
save_file({"x": X}, folder / "x.safetensors")
# A fresh process (-I: nothing of this folder importable) that has the architecture and the folder only.
subprocess.run([sys.executable, "-I", __file__, "--load", str(folder / "iris")], check=True)
with torch.no_grad():
    assert torch.equal(load_file(folder / "out.safetensors")["out"], model(X))


# THE FIX, with huggingface_hub: the mixin records the constructor's arguments itself.
class HubMulticlass(Multiclass, PyTorchModelHubMixin):
    pass


hub_model = HubMulticlass(n_hidden=16)
hub_model.load_state_dict(model.state_dict())
hub_model.save_pretrained(folder / "hub")
assert json.loads((folder / "hub" / "config.json").read_text())["n_hidden"] == 16
rebuilt = HubMulticlass.from_pretrained(folder / "hub")  # prints "Loading weights from local directory"
with torch.no_grad():
    assert torch.equal(rebuilt(X), model(X))
workdir.cleanup()
print("ok: a fresh process rebuilds the model from config.json + model.safetensors; the mixin's folder too")

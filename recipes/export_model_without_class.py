"""Load and run a model without its Python class (TorchScript is deprecated: use torch.export).

A state_dict, or a whole model saved with torch.save, needs the model's class at load time. A
torch.export program holds the computation itself (a graph of tensor operations) and the weights:
torch.export.load(path).module() is a working model in a process that has never seen the class.

Fix: torch.export.export(model, (example,), dynamic_shapes=...) with the batch dimension dynamic,
torch.export.save(program, "model.pt2"); elsewhere, torch.export.load("model.pt2").module()(x).

Run: python export_model_without_class.py
Needs: torch
Chapter: compare_formats.py, "A .pt2 file runs without your code"
"""

import subprocess
import sys
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


# The whole program that runs the file: no Multiclass here, and python -I keeps this script's folder
# off its import path. Trusted files only: torch.export.load may unpickle parts of the archive.
RUN_PT2 = """
import sys, warnings, torch
# torch 2.10's loader wraps the file's bytes read-only and warns so; nothing here writes to them.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
model = torch.export.load(sys.argv[1]).module()
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2], weights_only=True)), sys.argv[3])
"""

workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(120, 4)
model = Multiclass().eval()  # trained or not: the .pt2 holds whatever weights it has now

# THE FIX: export with a dynamic batch dimension (traced with 5 rows, run below with 120), then save.
batch = torch.export.Dim("batch")
program = torch.export.export(model, (X[:5],), dynamic_shapes=({0: batch},))
torch.export.save(program, folder / "model.pt2")

torch.save(X, folder / "inputs.pt")
files = [str(folder / name) for name in ("model.pt2", "inputs.pt", "outputs.pt")]
child = subprocess.run([sys.executable, "-I", "-c", RUN_PT2, *files], capture_output=True, text=True)
assert child.returncode == 0 and child.stderr == "", child.stderr
outputs = torch.load(folder / "outputs.pt", weights_only=True)
with torch.no_grad():
    expected = model(X)
print(f"a process without the class ran model.pt2 on {tuple(X.shape)}: outputs {tuple(outputs.shape)}")
assert torch.equal(outputs, expected)  # bit for bit: the graph runs the same operations
workdir.cleanup()
print("ok: the .pt2 run in a process without the class predicts exactly as the original model")

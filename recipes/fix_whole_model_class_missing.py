"""AttributeError: Can't get attribute 'Multiclass' on <module '__main__'> after torch.save(model).

torch.save(model) pickles the model object, and a pickle stores no class, only the name to import it by:
here __main__.Multiclass. A program without that class cannot load the file: weights_only=True (the
default) refuses it as "Unsupported global: GLOBAL __main__.Multiclass", weights_only=False fails with
the AttributeError.

Fix: where the class exists, load the old file once with weights_only=True, allowing exactly the
classes that torch.serialization.get_unsafe_globals_in_checkpoint lists (torch.serialization.safe_globals),
and resave model.state_dict(); from then on load that into a freshly built model with weights_only=True.

Run: python fix_whole_model_class_missing.py
Needs: torch
Chapter: save_load_demo.py, "3. The pitfall: saving the whole model"
"""

import re
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


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(120, 4)
model = Multiclass()
torch.save(model, folder / "whole-model.pth")  # the pitfall: the file records __main__.Multiclass

# The problem, for real: a new Python process that does not define Multiclass tries both loads.
child_code = """import torch
try:
    torch.load("whole-model.pth", weights_only=True)  # the default since torch 2.6
except Exception as err:
    print(f"{type(err).__name__}: {err}")
torch.load("whole-model.pth", weights_only=False)  # our own file; fails with a traceback on stderr
"""
child = subprocess.run([sys.executable, "-c", child_code], cwd=folder, capture_output=True, text=True)
refused = re.search(r"Unsupported global: GLOBAL [\w.]+", child.stdout)
error_line = child.stderr.strip().splitlines()[-1]  # the traceback's last line
assert child.stdout.startswith("UnpicklingError: "), child.stdout
assert refused and refused[0].endswith("GLOBAL __main__.Multiclass"), child.stdout
print(f"problem: in a process without the class: UnpicklingError: {refused[0]}")
print(f"problem: and with weights_only=False: {error_line}")
assert child.returncode == 1 and error_line.startswith("AttributeError:"), child.stderr
assert "'Multiclass'" in error_line and "__main__" in error_line, child.stderr

# The fix, here where the class exists: load the old file once, allowing only the classes it names ...
needed = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(folder / "whole-model.pth"))
allowed = [Multiclass, nn.Linear, nn.ReLU, nn.LogSoftmax]
print(f"fixed: the file names {needed}")
assert needed == sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in allowed)  # and nothing else
with torch.serialization.safe_globals(allowed):
    old = torch.load(folder / "whole-model.pth", weights_only=True)
torch.save(old.state_dict(), folder / "model-state.pth")
# ... and from then on: build the model, then load the weights, which need no class.
restored = Multiclass()
restored.load_state_dict(torch.load(folder / "model-state.pth", weights_only=True))

assert restored.state_dict().keys() == model.state_dict().keys()
assert all(torch.equal(restored.state_dict()[key], value) for key, value in model.state_dict().items())
with torch.no_grad():
    assert torch.equal(restored(X), model(X))
workdir.cleanup()
print("ok: the old file loads with only its own 4 classes allowed; its resaved state_dict predicts the same")

"""Optimizer state on the wrong device (or dtype) when resuming: Expected all tensors to be on the same device

optimizer.load_state_dict copies each state tensor (Adam's exp_avg, exp_avg_sq) onto its parameter's
device and dtype as they are at that call. A model moved afterwards (model.to("cuda")) leaves the state
behind on the cpu, and the first optimizer.step() fails. On a machine with a GPU this recipe shows that
device error itself: it moves the model to cuda after the load (the message says "on the same device").
Without a GPU it shows the same wrong order with the other thing the load casts, the dtype (the model
moved to float64: "expected dtype float"). On a GPU the fix also puts the state on cuda.

Fix: model.to(device) first, then build the optimizer over its parameters, then
optimizer.load_state_dict(checkpoint["optimizer_state_dict"]).

Run: python resume_optimizer_on_right_device.py
Needs: torch
Chapter: checkpoint_resume.py, "Resuming: the official recipe"
"""

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


def train_step(model: Multiclass, optimizer: torch.optim.Optimizer, X: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad()
    nn.NLLLoss()(model(X), y).backward()
    optimizer.step()


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
X = torch.randn(120, 4)
y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # a learnable rule: 3 classes
model = Multiclass()
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
for _ in range(20):
    train_step(model, optimizer, X, y)
path = folder / "checkpoint.pth"
torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}, path)
checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # state on the cpu, float32
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# The problem: the optimizer's state loaded first, the model moved after: to cuda where there is a
# GPU, else to float64 (the dtype twin, which any machine can show).
model = Multiclass()
model.load_state_dict(checkpoint["model_state_dict"])
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
late = device if device.type == "cuda" else torch.float64
model.to(late)  # too late: exp_avg and exp_avg_sq stay float32, on the cpu
try:
    train_step(model, optimizer, X.to(late), y.to(device))
except RuntimeError as err:
    print(f"problem (model.to({late}) after the load): {type(err).__name__}: {err}")
    assert ("on the same device" if device.type == "cuda" else "expected dtype float") in str(err), err
else:
    raise AssertionError("a step with the state left behind should fail")

# The fix: move the model, then build the optimizer, then load its state (cast to each parameter).
model = Multiclass().to(device, torch.float64)  # float64 makes the cast visible without a GPU
model.load_state_dict(checkpoint["model_state_dict"])
optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
optimizer.load_state_dict(checkpoint["optimizer_state_dict"])

saved = checkpoint["optimizer_state_dict"]["state"]
for index, param in enumerate(model.parameters()):
    state = optimizer.state[param]
    for key in ("exp_avg", "exp_avg_sq"):
        assert (state[key].device, state[key].dtype) == (param.device, param.dtype)
        assert torch.equal(state[key], saved[index][key].to(device, torch.float64))
    assert (state["step"].device.type, state["step"].dtype) == ("cpu", torch.float32)  # never cast
before = model.hidden.weight.detach().clone()
train_step(model, optimizer, X.to(device, torch.float64), y.to(device))
assert not torch.equal(before, model.hidden.weight)
print(f"fixed: optimizer state on {device.type}, float64, like its parameters; the step ran")
workdir.cleanup()
print("ok: loaded after model.to, every optimizer state tensor is on its parameter's device and dtype")

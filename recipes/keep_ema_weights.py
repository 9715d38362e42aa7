"""After resuming, my EMA (exponential moving average) weights are gone: they restart from the raw weights.

The EMA copy of a model averages the weights of every step so far. A resume that builds a new
AveragedModel from the restored model (or saves the EMA but never loads it) starts the average
over from today's raw weights and forgets all earlier steps, so the EMA used for evaluation ends
somewhere else than in the run that never stopped.

Fix: save ema.state_dict() (the averaged weights and n_averaged) and load it into the new AveragedModel.

Run: python keep_ema_weights.py
Needs: torch
Chapter: checkpoint_resume.py, "What a checkpoint holds"
"""

import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


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
y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()  # learnable: 3 classes from two measurements
STEPS, INTERRUPT = 60, 30


def build() -> tuple[Multiclass, torch.optim.Adam, AveragedModel]:
    """Fresh objects, as a new process builds them; a resume overwrites their state."""
    torch.manual_seed(1)  # both runs start from the same weights
    model = Multiclass()
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99))  # a copy, averaged after each step
    return model, torch.optim.Adam(model.parameters(), lr=0.01), ema


def train(model: Multiclass, optimizer: torch.optim.Adam, ema: AveragedModel, steps: int) -> None:
    """Full-batch Adam steps, each followed by an EMA update."""
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.nll_loss(model(X), y).backward()
        optimizer.step()
        ema.update_parameters(model)


straight = build()
train(*straight, STEPS)
model, optimizer, ema = build()
train(model, optimizer, ema, INTERRUPT)
checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "ema": ema.state_dict()}
torch.save(checkpoint, folder / "checkpoint.pth")
del model, optimizer, ema, checkpoint  # the "crash": only the file survives

# THE PROBLEM: the EMA rebuilt from the restored raw weights.
checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
model, optimizer, _ = build()
model.load_state_dict(checkpoint["model"])
optimizer.load_state_dict(checkpoint["optimizer"])
ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.99))  # starts again from the raw weights
train(model, optimizer, ema, STEPS - INTERRUPT)
off = max((a - b).abs().max().item() for a, b in zip(ema.parameters(), straight[2].parameters(), strict=True))
print(f"problem: the rebuilt EMA ends up to {off:.3f} away from the uninterrupted run's EMA")
print(f"problem: it averaged {ema.n_averaged.item()} steps, not {straight[2].n_averaged.item()}")
assert off > 1e-3

# THE FIX: load the EMA's own state. Read the file again: optimizer.load_state_dict adopts the
# loaded tensors, and the naive run changed them.
checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
model, optimizer, ema = build()
model.load_state_dict(checkpoint["model"])
optimizer.load_state_dict(checkpoint["optimizer"])
ema.load_state_dict(checkpoint["ema"])  # module.* weights and n_averaged
train(model, optimizer, ema, STEPS - INTERRUPT)

for name, value in ema.state_dict().items():
    assert torch.equal(value, straight[2].state_dict()[name]), name
for name, value in model.state_dict().items():
    assert torch.equal(value, straight[0].state_dict()[name]), name
for index, per_param in optimizer.state_dict()["state"].items():
    assert all(torch.equal(t, straight[1].state_dict()["state"][index][k]) for k, t in per_param.items())
assert torch.equal(ema(X), straight[2](X))  # the EMA model predicts exactly the same
print(f"fixed: the EMA averaged {ema.n_averaged.item()} steps, as in the uninterrupted run")
workdir.cleanup()
print("ok: with its state_dict restored the EMA ends bit-identical to the uninterrupted run's")

"""After resuming, the learning rate is wrong and the GradScaler's scale is back at 65536.

A checkpoint with only the model and the optimizer loses two pieces of state: how far the
schedule (warm-up, then cosine) has got, and the loss scale of float16 mixed precision with its
growth tracker. The fresh scheduler runs its warm-up again, multiplying the restored learning
rate up to six times the peak; the fresh scaler starts at 65536; the resumed run drifts away.

Fix: save scheduler.state_dict() and scaler.state_dict() too, and load them into fresh objects.

Run: python resume_lr_scheduler_and_gradscaler.py
Needs: torch
Chapter: checkpoint_resume.py, "What a checkpoint holds"
"""

import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR


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


def build() -> dict:
    """Fresh objects, as a new process builds them: 10 warm-up steps, then cosine; float16 loss scaling."""
    torch.manual_seed(1)  # both runs start from the same weights
    model = Multiclass()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    warmup = LinearLR(optimizer, start_factor=0.1, total_iters=10)
    scheduler = SequentialLR(optimizer, [warmup, CosineAnnealingLR(optimizer, T_max=50)], milestones=[10])
    scaler = torch.amp.GradScaler("cpu", growth_interval=5)  # default 2000: would not move in 60 steps
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}


def train(run: dict, steps: int) -> list[float]:  # full-batch steps in float16 autocast; returns each lr
    model, optimizer, scheduler, scaler = run.values()
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.nll_loss(model(X), y)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)  # skipped when a float16 gradient overflowed (at step 20 here)
        scaler.update()  # halves the scale after an overflow, doubles it after 5 clean steps
        scheduler.step()  # every step, skipped or not (torch warns only if the very first one is skipped)
    return lrs


def tensors(run: dict) -> list[torch.Tensor]:  # every weight, and every Adam step count and moment
    moments = [t for per_param in run["optimizer"].state_dict()["state"].values() for t in per_param.values()]
    return [*run["model"].state_dict().values(), *moments]


straight = build()
train(straight, INTERRUPT)
expected_lrs = train(straight, STEPS - INTERRUPT)  # the learning rates after the interruption
interrupted = build()
train(interrupted, INTERRUPT)
torch.save({name: part.state_dict() for name, part in interrupted.items()}, folder / "checkpoint.pth")
del interrupted  # the "crash": only the file survives

# THE PROBLEM: model and optimizer restored, scheduler and scaler fresh.
checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
naive = build()  # optimizer.load_state_dict below adopts the loaded tensors, and training changes them
for name in ("model", "optimizer"):
    naive[name].load_state_dict(checkpoint[name])
naive_scale = naive["scaler"].get_scale()
naive_lrs = train(naive, STEPS - INTERRUPT)
print(f"problem: the lr climbs to {max(naive_lrs):.3f}; the schedule says at most {max(expected_lrs):.3f}")
print(f"problem: the scale starts at {naive_scale:.0f}, not at the saved {checkpoint['scaler']['scale']:.0f}")
assert max(naive_lrs) > 2 * max(expected_lrs) and naive_scale == 65536 != checkpoint["scaler"]["scale"]

# THE FIX: build every object first (the scheduler's constructor writes the lr), then load every state.
checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)  # again: the naive run changed it
resumed = build()
for name in ("model", "optimizer", "scheduler", "scaler"):
    resumed[name].load_state_dict(checkpoint[name])
resumed_lrs = train(resumed, STEPS - INTERRUPT)
assert resumed_lrs == expected_lrs  # the same learning rate at every step
assert all(resumed[n].state_dict() == straight[n].state_dict() for n in ("scheduler", "scaler"))  # lr, scale
assert all(torch.equal(a, b) for a, b in zip(tensors(resumed), tensors(straight), strict=True))
workdir.cleanup()
print("ok: with scheduler and scaler state the resumed run matches the uninterrupted one bit for bit")

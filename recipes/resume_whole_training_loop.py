"""Resume a whole training loop exactly: schedule, float16 GradScaler, EMA and the position in the epoch.

The official checkpoint (model and optimizer) resumed mid-epoch ends somewhere else: the
schedule runs its warm-up again, the loss scale restarts at 65536, the EMA restarts from the
raw weights, and the epoch starts over with a new shuffle.

Fix: save every object's state_dict(), the step, the batches done in the epoch and the loader
generator's state at the epoch's start; build every object fresh, load every state, replay the
epoch's order and skip the batches done.

Run: python resume_whole_training_loop.py
Needs: torch
Chapter: resume_training_run.py, "A checkpoint of the whole run, and keeping the right ones"
"""

import itertools
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
path = Path(workdir.name) / "checkpoint.pth"
torch.manual_seed(0)
X = torch.randn(120, 4)
y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()  # learnable: 3 classes from two measurements
STEPS, INTERRUPT, PER_EPOCH = 60, 22, 15  # 120 samples in batches of 8; the stop is mid-epoch


def build() -> dict:
    torch.manual_seed(1)  # every object fresh, as a new process builds it; the article's iris network first
    run = {"model": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3), nn.LogSoftmax(dim=1))}
    run["optimizer"] = opt = torch.optim.Adam(run["model"].parameters(), lr=0.05)
    warmup, cosine = LinearLR(opt, start_factor=0.1, total_iters=10), CosineAnnealingLR(opt, T_max=50)
    run["scheduler"] = SequentialLR(opt, [warmup, cosine], milestones=[10])
    run["scaler"] = torch.amp.GradScaler("cpu", growth_interval=5)
    run["ema"] = AveragedModel(run["model"], multi_avg_fn=get_ema_multi_avg_fn(0.9))
    run["generator"] = torch.Generator().manual_seed(2)
    loader = DataLoader(TensorDataset(X, y), batch_size=8, shuffle=True, generator=run["generator"])
    return run | {"loader": loader, "step": 0, "epoch_start": run["generator"].get_state()}


def train(run: dict, last_step: int) -> None:
    while run["step"] < last_step:
        done = run["step"] % PER_EPOCH
        if done == 0:  # take the state as the epoch starts: the sampler draws again after its last batch
            run["epoch_start"] = run["generator"].get_state()
        run["generator"].set_state(run["epoch_start"])  # replays this epoch's order
        for xb, yb in itertools.islice(run["loader"], done, None):  # skips the batches done
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.nll_loss(run["model"](xb), yb)
            run["optimizer"].zero_grad()
            run["scaler"].scale(loss).backward()
            run["scaler"].step(run["optimizer"])  # skipped if a float16 gradient overflowed
            run["scaler"].update()
            run["scheduler"].step()
            run["ema"].update_parameters(run["model"])
            run["step"] += 1
            if run["step"] == last_step:
                break


def tensors(run: dict) -> list[torch.Tensor]:  # model, EMA, every Adam tensor, the generator
    parts = [
        run["model"].state_dict(),
        run["ema"].state_dict(),
        *run["optimizer"].state_dict()["state"].values(),
    ]
    return [t for part in parts for t in part.values()] + [run["generator"].get_state()]


straight, interrupted = build(), build()
train(straight, STEPS)
train(interrupted, INTERRUPT)
STATEFUL = ("model", "optimizer", "scheduler", "scaler", "ema")
position = {
    "step": INTERRUPT,
    "generator": interrupted["generator"].get_state(),
    "epoch_start": interrupted["epoch_start"],
}
torch.save({name: interrupted[name].state_dict() for name in STATEFUL} | position, path)

# THE PROBLEM: the official recipe's checkpoint (model and optimizer), resumed at the epoch's start.
checkpoint = torch.load(path, weights_only=True)
naive = build()
naive["model"].load_state_dict(checkpoint["model"])
naive["optimizer"].load_state_dict(checkpoint["optimizer"])  # adopts the loaded tensors: load afresh below
naive["step"] = INTERRUPT - INTERRUPT % PER_EPOCH  # the epoch starts over
train(naive, STEPS)
off = max((a - b).abs().max().item() for a, b in zip(tensors(naive)[:4], tensors(straight)[:4], strict=True))
print(f"problem: the official checkpoint resumed ends with weights off by up to {off:.3f}")
assert off > 1e-3

# THE FIX: every object's state, the step, and the generator: at the epoch's start and now.
checkpoint = torch.load(path, weights_only=True)
resumed = build()
for name in STATEFUL:
    resumed[name].load_state_dict(checkpoint[name])
resumed["step"], resumed["epoch_start"] = checkpoint["step"], checkpoint["epoch_start"]
resumed["generator"].set_state(checkpoint["generator"])
train(resumed, STEPS)
assert all(torch.equal(a, b) for a, b in zip(tensors(resumed), tensors(straight), strict=True))
assert resumed["scheduler"].state_dict() == straight["scheduler"].state_dict()
assert resumed["scaler"].state_dict() == straight["scaler"].state_dict() and resumed["step"] == STEPS
workdir.cleanup()
print("ok: model, EMA, optimizer, scheduler, scaler and generator resumed mid-epoch equal the straight run")

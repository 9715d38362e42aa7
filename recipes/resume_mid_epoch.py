"""Resuming from a checkpoint saved in the middle of an epoch repeats or skips batches.

A checkpoint every N steps lands inside an epoch. Restored with only the epoch, the resumed
run starts that epoch over with a freshly seeded shuffle and trains again on samples it has
already seen, in another order than the run that never stopped (or, if it counts the epoch as
done, skips the rest of it).

Fix: save the batches done in the epoch and the loader generator's state from the epoch's start,
and on resume restore that state and skip those batches with itertools.islice (which still loads
them: cheap here; a huge dataset wants a sampler that starts at the right index).

Run: python resume_mid_epoch.py
Needs: torch
Chapter: checkpoint_resume.py, "Training that saves a checkpoint every few epochs"
"""

import itertools
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


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
dataset = TensorDataset(torch.arange(120), X, y)  # each sample's index rides along, to record batches
EPOCHS, SAVE_EVERY, CRASH_AT = 3, 5, 17  # 12 batches an epoch: the step-15 checkpoint is mid-epoch


def build() -> tuple[Multiclass, torch.optim.Adam, DataLoader]:  # fresh objects, as a new process has them
    torch.manual_seed(1)  # both runs start from the same weights
    model = Multiclass()
    loader = DataLoader(dataset, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(0))
    return model, torch.optim.Adam(model.parameters(), lr=0.01), loader


def train(run: tuple, first_epoch: int, skip: int, step: int, save_to: Path | None = None) -> list[list[int]]:
    """From batch `skip` of `first_epoch` on; returns the sample indices of every batch trained on."""
    model, optimizer, loader = run
    seen = []
    for epoch in range(first_epoch, EPOCHS):
        epoch_start = loader.generator.get_state()  # iter(loader) draws this epoch's shuffle from here
        for done, (index, xb, yb) in enumerate(itertools.islice(loader, skip, None), start=skip + 1):
            optimizer.zero_grad()
            nn.functional.nll_loss(model(xb), yb).backward()
            optimizer.step()
            seen.append(index.tolist())
            step += 1
            if save_to and step % SAVE_EVERY == 0:
                state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
                torch.save({**state, "epoch": epoch, "batches_done": done, "generator": epoch_start}, save_to)
            if save_to and step == CRASH_AT:
                return seen  # the "crash": steps 16 and 17 are lost, the step-15 checkpoint survives
        skip = 0
    return seen


straight = build()
straight_seen = train(straight, 0, 0, 0)
before_crash = train(build(), 0, 0, 0, save_to=folder / "checkpoint.pth")

# THE PROBLEM: only the epoch restored; the epoch starts over with the shuffle seeded at start-up.
checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)
naive = build()  # optimizer.load_state_dict below adopts the loaded tensors, and training changes them
naive[0].load_state_dict(checkpoint["model"])
naive[1].load_state_dict(checkpoint["optimizer"])
naive_seen = before_crash[: checkpoint["step"]] + train(naive, checkpoint["epoch"], 0, checkpoint["step"])
extra = len(naive_seen) - len(straight_seen)
too_often = sum(n > EPOCHS for n in Counter(i for batch in naive_seen for i in batch).values())
differ = sum(a != b for a, b in zip(naive_seen[15:], straight_seen[15:], strict=False))  # after step 15
print(f"problem: {extra} batches repeated, {too_often} samples seen too often, {differ} later batches differ")
assert extra == checkpoint["batches_done"] and too_often > 0 and differ > 0

# THE FIX: restore the generator as at the epoch's start, re-create the iterator, skip the batches done.
checkpoint = torch.load(folder / "checkpoint.pth", weights_only=True)  # again: the naive run changed it
resumed = model, optimizer, loader = build()
model.load_state_dict(checkpoint["model"])
optimizer.load_state_dict(checkpoint["optimizer"])
loader.generator.set_state(checkpoint["generator"])  # the same shuffle as the interrupted epoch
resumed_seen = train(resumed, checkpoint["epoch"], checkpoint["batches_done"], checkpoint["step"])
assert before_crash[: checkpoint["step"]] + resumed_seen == straight_seen  # the same batches, in order
for name, value in model.state_dict().items():
    assert torch.equal(value, straight[0].state_dict()[name]), name
for index, per_param in optimizer.state_dict()["state"].items():
    assert all(torch.equal(t, straight[1].state_dict()["state"][index][k]) for k, t in per_param.items())
workdir.cleanup()
print("ok: the resumed run trains on exactly the same batches in the same order and ends bit-identical")

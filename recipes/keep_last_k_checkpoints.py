"""Keep only the last k checkpoints and a `latest` pointer, so a crash at any moment leaves one to resume.

Deleting old checkpoints before the new one is safely on disk, or rewriting the pointer file in
place, can leave nothing loadable when the process dies at the wrong moment. Each step has to be
complete and on the disk before the next begins; crashes simulated at every point prove it.

Fix: write the checkpoint, then the `latest` pointer, each to a temporary file, fsync, os.replace;
only then delete all but the newest k.

Run: python keep_last_k_checkpoints.py
Needs: torch
Chapter: checkpoint_resume.py, "Saving so that a crash cannot ruin the last checkpoint"
"""

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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
y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()  # learnable: 3 classes from two measurements
K, STEPS, SAVE_EVERY, CRASH_STEP = 3, 12, 2, 8
POINTS = ("during the save", "after the save", "during the pointer update", "after the pointer update")


def write_atomically(path: Path, write: Callable[[BinaryIO], object], crash: str | None, what: str) -> None:
    """Write to a temporary file, push it to the disk, then rename it over `path` in one step."""
    partial = path.with_name(f"{path.name}.partial")  # the next save overwrites one a crash left
    with partial.open("wb") as f:
        write(f)
        if crash == f"during {what}":  # the simulated crash: the process stops here, as on Ctrl-C
            f.truncate(f.tell() // 2)  # with half the file written
            raise KeyboardInterrupt
        f.flush()
        os.fsync(f.fileno())  # the bytes are on the disk, not only in the OS's cache
    os.replace(partial, path)  # noqa: PTH105 -- atomic: the name holds the old file or the new one
    if os.name == "posix":  # the rename itself survives a power cut once the folder is synced
        folder_fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(folder_fd)
        os.close(folder_fd)
    if crash == f"after {what}":
        raise KeyboardInterrupt


def save_checkpoint(run: Path, state: dict, crash_at: str | None) -> None:  # each step once the last is safe
    path = run / f"checkpoint-{state['step']:06d}.pth"  # zero-padded: sorted names are in step order
    write_atomically(path, lambda f: torch.save(state, f), crash_at, "the save")
    write_atomically(run / "latest", lambda f: f.write(path.name.encode()), crash_at, "the pointer update")
    for old in sorted(run.glob("checkpoint-*.pth"))[:-K]:  # only now; never the newest, which `latest` names
        old.unlink()


def train(run: Path, crash_at: str | None = None) -> list[torch.Tensor]:  # to STEPS, from `latest` if any
    torch.manual_seed(1)  # every run starts from the same weights
    model = Multiclass()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    start = 0
    if (run / "latest").exists():
        checkpoint = torch.load(run / (run / "latest").read_text(), weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start = checkpoint["step"]
    for step in range(start + 1, STEPS + 1):
        optimizer.zero_grad()
        nn.functional.nll_loss(model(X), y).backward()
        optimizer.step()
        if step % SAVE_EVERY == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step}
            save_checkpoint(run, state, crash_at if step == CRASH_STEP else None)
    moments = [t for per_param in optimizer.state_dict()["state"].values() for t in per_param.values()]
    return [*model.state_dict().values(), *moments]  # every weight, and every Adam step count and moment


expected = train(folder)  # the run that never crashes
for point in POINTS:
    run = Path(tempfile.mkdtemp(dir=folder))  # an empty folder for this run
    with contextlib.suppress(KeyboardInterrupt):  # the process dies at `point`
        train(run, crash_at=point)
    step = torch.load(run / (run / "latest").read_text(), weights_only=True)["step"]  # loads after any crash
    assert step < STEPS and len(list(run.glob("checkpoint-*.pth"))) <= K + 1  # it did crash
    resumed = train(run)  # the restart: resumes from what `latest` names and trains on to STEPS
    assert all(torch.equal(a, b) for a, b in zip(resumed, expected, strict=True))
    assert len(list(run.glob("checkpoint-*.pth"))) == K  # the older ones deleted
    print(f"crash {point}: latest named step {step}, resumed from there bit-identical")
workdir.cleanup()
print(f"ok: after a crash at each of {len(POINTS)} points, latest loaded and resumed exactly; {K} files kept")

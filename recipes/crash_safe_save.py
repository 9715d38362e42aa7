"""RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory.

torch.save(obj, path) overwrites the file in place. A crash, a kill or a full disk halfway through
leaves a truncated zip archive without its central directory (stored at the end), and the previous
good checkpoint is gone with it. (A crash before the first byte leaves an empty file: EOFError.)

Fix: save to a temporary file in the same folder, flush and os.fsync it, then rename it onto the
final name (atomic: the name always holds the old file or the new one) and fsync the folder.

Run: python crash_safe_save.py
Needs: torch
Chapter: checkpoint_resume.py, "Saving so that a crash cannot ruin the last checkpoint"
"""

import errno
import io
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO
from unittest import mock

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
old, new = Multiclass().state_dict(), Multiclass().state_dict()  # two different checkpoints
path = folder / "checkpoint.pth"

# The problem: what an interrupted torch.save(new, path) leaves behind, for real: half its bytes.
torch.save(new, path)
path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
try:
    torch.load(path, weights_only=True)
except RuntimeError as err:
    print(f"problem: {type(err).__name__}: {str(err).split('. ')[0]}")
    assert "failed finding central directory" in str(err)
else:
    raise AssertionError("torch.load accepted a checkpoint cut in half")


# The fix.
def save_atomic(obj: Any, path: Path) -> None:
    """torch.save(obj, path), but a crash leaves the previous file intact."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")  # same folder: same file system
    try:
        with temporary.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on the disk, not only in the OS's cache
        temporary.replace(path)  # os.replace: atomic, also over an existing file on Windows
    finally:
        temporary.unlink(missing_ok=True)  # a failed save leaves no half file behind
    if os.name == "posix":  # make the rename itself survive a power cut
        fd = os.open(path.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)


def crashing_save(obj: Any, f: BinaryIO) -> None:
    """torch.save that dies halfway through writing, as on a full disk."""
    buffer = io.BytesIO()
    torch.serialization.save(obj, buffer)  # the real torch.save, which the test below replaces
    f.write(buffer.getvalue()[: buffer.tell() // 2])
    raise OSError(errno.ENOSPC, "No space left on device")


save_atomic(old, path)
with mock.patch.object(torch, "save", crashing_save):
    try:
        save_atomic(new, path)
    except OSError as err:
        print(f"simulated crash while saving: {err.strerror}")
    else:
        raise AssertionError("the simulated crash did not happen")
survivor = torch.load(path, weights_only=True)
assert survivor.keys() == old.keys() and all(torch.equal(survivor[k], old[k]) for k in old)
assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pth"]  # no half file left over

save_atomic(new, path)
replaced = torch.load(path, weights_only=True)
assert replaced.keys() == new.keys() and all(torch.equal(replaced[k], new[k]) for k in new)
workdir.cleanup()
print("ok: a crash mid-save leaves the old checkpoint loadable and equal; a complete save replaces it")

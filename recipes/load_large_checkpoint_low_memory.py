"""Out of memory loading a large checkpoint ("DefaultCPUAllocator: can't allocate memory", or Killed).

A plain load needs twice the checkpoint's size: the model's weights in RAM, then torch.load reads
every tensor of the file into RAM too, and load_state_dict copies one into the other. The meta
device makes a model with no memory for its weights; mmap=True maps the file instead of reading
it; assign=True makes the mapped tensors the model's parameters instead of copying into them.

Fix: build the model under torch.device("meta"), torch.load(path, mmap=True, weights_only=True),
then model.load_state_dict(state, assign=True).

Run: python load_large_checkpoint_low_memory.py
Needs: torch
Chapter: load_tips.py, "6. Large models: mmap, the meta device and assign=True"
"""

import multiprocessing
import resource  # Linux and macOS: the peak memory of a process
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn


def build() -> nn.Sequential:  # big enough to measure: four 2048x2048 layers, 64 MiB of float32 weights
    return nn.Sequential(*[nn.Linear(2048, 2048) for _ in range(4)])


def load_plain(path: Path) -> nn.Module:
    model = build()  # initialised weights: the model's size in RAM
    model.load_state_dict(torch.load(path, weights_only=True))  # plus the file's tensors: twice
    return model


def load_low_memory(path: Path) -> nn.Module:  # THE FIX
    with torch.device("meta"):
        model = build()  # shapes only: no memory for the weights, no time spent initialising them
    state = torch.load(path, mmap=True, weights_only=True)  # maps the file: read when first used
    model.load_state_dict(state, assign=True)  # the mapped tensors become the parameters
    return model


def peak_rss() -> int:  # this process's peak resident memory; ru_maxrss is KiB on Linux, bytes on macOS
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def extra_peaks(load: Callable[[Path], nn.Module], path: Path) -> tuple[float, float]:
    """Runs in a child: how far its peak grows (MiB) while loading, then after one forward pass."""
    before = peak_rss()
    model = load(path)
    after_load = peak_rss()
    model(torch.ones(1, 2048))  # reads every weight: mapped pages of the file come into memory now
    return (after_load - before) / 2**20, (peak_rss() - before) / 2**20


workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
torch.manual_seed(0)
model = build()
path = folder / "large.pth"
torch.save(model.state_dict(), path)

# Each load in a fresh child (maxtasksperchild=1), forked: its peak starts at its own size and it need not
# import torch again (a child started with subprocess would inherit this process's peak on Linux).
with multiprocessing.get_context("fork").Pool(1, maxtasksperchild=1) as pool:
    loads = [(load_plain, path), (load_low_memory, path)]
    (plain, _), (low, used) = pool.starmap(extra_peaks, loads, chunksize=1)
print(f"plain load: peak +{plain:.0f} MiB for 64 MiB of weights")
print(f"meta + mmap + assign: peak +{low:.0f} MiB, +{used:.0f} MiB once a forward pass has read the file")
assert low < plain / 2, (low, plain)
loaded = load_low_memory(path)
original, reloaded = model.state_dict(), loaded.state_dict()
assert reloaded.keys() == original.keys() and all(torch.equal(reloaded[k], v) for k, v in original.items())
X = torch.randn(8, 2048)
with torch.no_grad():
    assert torch.equal(loaded(X), model(X))
workdir.cleanup()
print("ok: meta + mmap + assign=True loads with less than half the plain peak, every tensor equal")

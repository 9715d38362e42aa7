"""Measurement and demonstration scaffolding, shared by the chapters, the tests and the benchmarks.

Not a lesson either: the tools the chapters use to *show* a lesson for real.

- `run_fresh_python`: the one way to run a Python program in a new, isolated process (the
  programs a chapter runs that way are real files in `fresh_process/`, for the reader to open);
- `private_folder`: a temporary folder only this user can enter, for files that a
  deliberate unsafe load will read (nobody else can swap them in between);
- `Hostile`: a harmless stand-in for a malicious pickle, which creates a marker file;
- memory probes: the peak resident set of this process while it loads a file (Linux).
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import Tensor

PAGE = 4096  # touching one value per page pulls every page into memory
# The small programs the chapters run in a fresh Python process: real files a reader can open.
FRESH_PROCESS = Path(__file__).resolve().parent / "fresh_process"


# %%
# # Child processes


def run_fresh_python(
    program: Path, *args: object, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `python -I program args...` in `cwd`: a new interpreter that ignores PYTHONPATH,
    the user's site-packages and the current folder, so it cannot import this project."""
    return subprocess.run(
        [sys.executable, "-I", str(program), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextmanager
def private_folder(parent: Path | None = None, prefix: str = "private-") -> Iterator[Path]:
    """A fresh folder with mode 0700, removed afterwards."""
    with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as folder:  # mkdtemp makes it 0700
        yield Path(folder)


# %%
# # A hostile file that does no harm


class Hostile:
    """Unpickling this runs `exec`, which creates `marker`: harmless, and plain to see."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker).resolve()

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


# %%
# # Memory and time


def touch(tensors: Iterable[Tensor]) -> None:
    """Read one value per memory page of each tensor, so lazily mapped bytes are really loaded."""
    for tensor in tensors:
        flat = tensor.reshape(-1)
        flat[:: max(1, PAGE // tensor.element_size())].sum()


def memory_mb(field: str) -> float | None:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is none."""
    try:
        with Path("/proc/self/status").open() as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def make_memory_measurable() -> None:
    """Have glibc give each large block back to the system as soon as it is freed.

    By default glibc raises its threshold for using separate mappings after large frees,
    and keeps later freed memory for reuse: a second load would then seem to need no
    memory at all. A fixed threshold keeps every measurement honest.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: peak memory is measured as the system reports it
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)


def reset_peak_memory() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set
    except OSError:
        return False
    return True


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def timed_with_peak_memory(action: Callable[[], Any]) -> tuple[Any, float, float | None]:
    """Run `action`; return its result, the seconds it took, and how far the peak resident set
    of this process rose above where it started, in MiB (None where that cannot be measured)."""
    can_track = reset_peak_memory()
    before = memory_mb("VmRSS")
    start = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - start
    peak = memory_mb("VmHWM") if can_track else None
    return result, seconds, None if peak is None or before is None else max(0.0, peak - before)


def available_memory_mb() -> float | None:
    """MemAvailable from /proc/meminfo in MiB: what can be allocated without swapping (Linux)."""
    try:
        with Path("/proc/meminfo").open() as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None

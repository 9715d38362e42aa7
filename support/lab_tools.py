"""Measurement and demonstration scaffolding, shared by the chapters, the tests and the benchmarks.

Not a lesson either: the tools the chapters use to *show* a lesson for real.

- `run_fresh_python`: the one way to run a Python program in a new, isolated process (the
  programs a chapter runs that way are real files in `fresh_process/`, for the reader to open);
- `run_in_child`: run one function of the chapter in a forked child process, so that what it
  does (a hostile file's code) happens outside the chapter's own process;
- `private_folder`: a temporary folder only this user can enter, for files that a
  deliberate unsafe load will read (nobody else can swap them in between);
- `Hostile`: a harmless stand-in for a malicious pickle, which creates a marker file;
- memory probes: the peak resident set of this process while it loads a file (Linux);
- `start_ranks` and `run_under_torchrun`: the ranks of a distributed run, whose failure
  ends the run in one line naming the rank.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor

from support.cli import ChapterError, error_line

PAGE = 4096  # touching one value per page pulls every page into memory
# The small programs the chapters run in a fresh Python process: real files a reader can open.
FRESH_PROCESS = Path(__file__).resolve().parent.parent / "fresh_process"


# ---- Child processes ----


def run_fresh_python(
    program: Path, *args: object, cwd: Path, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run `python -I program args...` in `cwd`: a new interpreter that ignores PYTHONPATH,
    the user's site-packages and the current folder, so it cannot import this project.
    With `check`, a program that fails ends the chapter in one line naming it."""
    child = subprocess.run(
        [sys.executable, "-I", str(program), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and child.returncode != 0:
        last_line = (child.stderr.strip().splitlines() or ["no message"])[-1]
        raise ChapterError(f"{program.parent.name}/{program.name} failed: {last_line}")
    return child


def resume_in_new_process(script: Path, *args: str) -> list[str]:
    """Run `python -u SCRIPT ARGS`, a new interpreter, printing each line it prints, indented,
    as it comes; return its lines. A run that fails ends the chapter in one line."""
    with subprocess.Popen(  # -u: each line arrives as the new process prints it
        [sys.executable, "-u", str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as run:
        lines = []
        for line in run.stdout or ():
            lines.append(line)
            print(f"  {line}", end="")
        errors = (run.stderr.read() if run.stderr else "").strip().splitlines()
    if run.returncode != 0:
        raise ChapterError(f"the resumed run failed: {errors[-1] if errors else 'no message'}")
    return lines


def run_in_child(work: Callable[..., object], *args: object, timeout: float = 120) -> None:
    """Call `work(*args)` in a forked child process and wait for it. The child inherits what
    this process has imported, so it starts in milliseconds rather than the second or two a
    new interpreter needs for torch. It runs in a process group of its own: Ctrl-C at the
    terminal does not reach it, and whatever it starts in that group is killed when it ends.
    A failure, a death or a hang in the child ends the chapter in one line."""
    name = getattr(getattr(work, "func", work), "__name__", "the work")  # a partial: its function
    receive, send = os.pipe()
    sys.stdout.flush()  # a fork copies unwritten output: write it once, here
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(receive)
        report_failure(send, work, args)  # never returns
    os.close(send)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)  # also done in the child: whichever runs first
    ended = False
    try:
        ended = wait_for(pid, timeout)
    finally:  # the child is not reaped yet, so its group id cannot have gone to another process
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)  # the child on a timeout or Ctrl-C, and what it left
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # in case it never got a group of its own
        _, status = os.waitpid(pid, 0)
        message = read_what_is_there(receive)
    exit_code = os.waitstatus_to_exitcode(status)
    if ended and exit_code == 0:
        return
    if not ended:
        failure = f"still running after {timeout:g} s, stopped"
    else:
        failure = message if exit_code > 0 and message else how_it_ended(exit_code)
    raise ChapterError(f"{name} failed in a child process: {failure}")


def how_it_ended(exit_code: int) -> str:
    """A child's exit code in words: negative means killed by that signal."""
    return f"killed by {signal.Signals(-exit_code).name}" if exit_code < 0 else f"exit code {exit_code}"


def read_what_is_there(fd: int) -> str:
    """The child's one line, if it wrote one, without waiting: a process it started outside its
    group may still hold the pipe open."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 4096).decode(errors="replace")
    except BlockingIOError:
        return ""
    finally:
        os.close(fd)


def wait_for(pid: int, timeout: float) -> bool:
    """Whether the child ended within `timeout` seconds; it is left to be reaped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.005)
    return False


def report_failure(send: int, work: Callable[..., object], args: tuple) -> NoReturn:
    """In the child: run `work`; if it fails, write one line saying how to `send`; then leave
    at once, skipping the exit-time clean-up of what is a copy of the chapter's process."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # not the chapter's handler, in this copy
    code, failure = 1, ""
    with contextlib.suppress(BaseException):  # nothing the work does may print a traceback here
        try:
            work(*args)
            code = 0
        except SystemExit as stop:  # as Python exits: None and 0 are success
            code = 0 if stop.code in (None, 0) else 1
            failure = error_line(stop) if code else ""
        except BaseException as err:
            failure = error_line(err)
    with contextlib.suppress(BaseException):
        os.write(send, failure.encode(errors="replace"))
    with contextlib.suppress(BaseException):
        sys.stdout.flush()  # what `work` printed: os._exit would drop it
    os._exit(code)


@contextmanager
def private_folder(parent: Path | None = None, prefix: str = "private-") -> Iterator[Path]:
    """A fresh folder with mode 0700, removed afterwards."""
    with tempfile.TemporaryDirectory(dir=parent, prefix=prefix) as folder:  # mkdtemp makes it 0700
        yield Path(folder)


# ---- A hostile file that does no harm ----


class Hostile:
    """Unpickling this runs `exec`, which creates `marker`: harmless, and plain to see."""

    def __init__(self, marker: Path) -> None:
        self.marker = Path(marker).resolve()

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


# ---- Memory and time ----


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


# ---- Ranks of a distributed run: started, watched, and ended in one line ----
#
# What a chapter needs to start its own ranks (forked, on one machine) or to run as one
# of torchrun's, so that a failure ends the whole run with one line naming the rank: a
# rank that raises, dies, or stops responding (the others wait `timeout` seconds for it
# in a collective). No rank outlives its launcher.


GLOO_LINE = b"[Gloo] Rank "  # what gloo's C++ code prints when a rank joins a group


def copy_all_but_gloo_lines(source: int, sink: int) -> None:
    with open(source, "rb") as lines:
        for line in lines:
            if not line.startswith(GLOO_LINE):
                os.write(sink, line)


@contextmanager
def without_gloo_lines() -> Iterator[None]:
    """While this rank is in its process groups: gloo (as built into torch 2.10) prints
    `[Gloo] Rank 0 is connected to 1 peer ranks...` on stdout for every group, from C++ and
    under no log level, which is no lesson. This rank's stdout goes through a pipe that drops
    those lines and passes on the rest, whole lines in order; later torches print none."""
    sys.stdout.flush()
    sink = os.dup(1)
    source, pipe_in = os.pipe()
    os.dup2(pipe_in, 1)
    os.close(pipe_in)
    pump = threading.Thread(target=copy_all_but_gloo_lines, args=(source, sink), daemon=True)
    pump.start()
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(sink, 1)  # closes the pipe's input: the pump copies what is left, then ends
        pump.join(timeout=5)
        if not pump.is_alive():
            os.close(sink)


def run_rank(
    rank: int,
    world_size: int,
    work: Callable[[int, int], None],
    init_method: str,
    reports: Path,
    timeout: float,
) -> None:
    """One rank, from joining the group to leaving it; a failure becomes one line in `reports`."""
    import torch.distributed as dist

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the launcher's to report
    die_with_parent()
    torch.set_num_threads(1)  # ranks sharing a machine must not each use every core
    failure = None
    with without_gloo_lines():
        dist.init_process_group(
            "gloo",
            init_method=init_method,
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout),
        )
        try:
            work(rank, world_size)
        except (
            BaseException
        ) as err:  # any failure ends the run (DCP's CheckpointException is a BaseException)
            failure = root_error_line(err)
            (reports / f"rank-{rank}.txt").write_text(failure)
        if failure is None:
            dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(1 if failure else 0)  # a failed rank skips the group's clean-up, which could wait on the others


def die_with_parent() -> None:
    """Have the kernel kill this rank when its launcher dies (Linux), so no rank runs on orphaned."""
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the launcher's clean-up must do
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def root_error_line(err: BaseException) -> str:
    """error_line of the root cause (DCP wraps each rank's), without gloo's source paths in brackets."""
    while type(err).__name__ == "CheckpointException" and getattr(err, "failures", None):
        err = err.failures[min(err.failures)][0]  # DCP's wrapper of every rank's exception
    return re.sub(r"\[/?[^\]]*\.(?:cc|cpp|h):\d+\] ", "", error_line(err))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ranks(work: Callable[[int, int], None], world_size: int, timeout: float) -> str | None:
    """Run `work` on `world_size` forked ranks; None when all succeed, else one line naming the rank."""
    init_method = f"tcp://127.0.0.1:{free_port()}"
    context = multiprocessing.get_context("fork")
    import torch._dynamo  # noqa: F401 -- each rank's first optimizer imports it: once here instead

    sys.stdout.flush()  # a fork copies unwritten output: write it once, here
    with tempfile.TemporaryDirectory() as folder:
        reports = Path(folder)
        ranks = [
            context.Process(target=run_rank, args=(rank, world_size, work, init_method, reports, timeout))
            for rank in range(world_size)
        ]
        try:
            for process in ranks:
                process.start()
            return watch_ranks(ranks, reports, timeout)
        finally:
            for process in ranks:  # on success they are gone; on failure or Ctrl-C, stop the rest
                if process.is_alive():
                    process.kill()
                process.join()


def watch_ranks(ranks: list[multiprocessing.Process], reports: Path, timeout: float) -> str | None:
    """Wait for the ranks; on the first failure, say which rank caused it."""
    while any(process.is_alive() for process in ranks):
        multiprocessing.connection.wait(
            [process.sentinel for process in ranks if process.is_alive()], timeout=1
        )
        failed = [rank for rank, process in enumerate(ranks) if process.exitcode not in (None, 0)]
        if failed:
            time.sleep(0.2)  # let a rank that failed in the same collective write its report
            return blame(ranks, reports, failed, timeout)
    return None


def blame(ranks: list[multiprocessing.Process], reports: Path, failed: list[int], timeout: float) -> str:
    said = {int(path.stem.split("-")[1]): path.read_text() for path in reports.iterdir()}
    for rank in failed:
        if rank not in said and ranks[rank].exitcode < 0:
            return f"rank {rank} was {how_it_ended(ranks[rank].exitcode)}"
    waited = [rank for rank, line in said.items() if "timed out" in line.lower() or "timeout" in line.lower()]
    silent = [rank for rank, process in enumerate(ranks) if process.is_alive() and rank not in said]
    if waited and silent:
        return (
            f"rank {silent[0]} stopped responding: rank {waited[0]} waited {timeout:g} s for it "
            "in a collective (--timeout)"
        )
    first = (
        min(said, key=lambda rank: (reports / f"rank-{rank}.txt").stat().st_mtime_ns) if said else failed[0]
    )
    return f"rank {first} failed: {said.get(first, f'exit status {ranks[first].exitcode}')}"


def run_under_torchrun(work: Callable[[int, int], None], timeout: float) -> None:
    """Under torchrun: this process is one rank. A failure: one line, exit status 1."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    die_with_parent()
    torch.set_num_threads(1)
    with without_gloo_lines():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout))
        try:
            work(rank, int(os.environ["WORLD_SIZE"]))
        except BaseException as err:
            print(f"error: rank {rank} failed: {root_error_line(err)}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            os._exit(1)
        dist.destroy_process_group()
    if rank != 0:
        sys.exit(0)  # what follows runs on one process

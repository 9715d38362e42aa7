"""Writing files so that a crash cannot ruin them, and saying what was written."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from support.cli import error_line, fail, record_saved


def save_atomically(obj: object, path: Path, what: str = "") -> Path:
    """`torch.save(obj, path)`, crash-safe: the path always holds the old file or the new one.

    Written to a temporary file of this process's own in the same folder, flushed and
    fsynced, then renamed over `path` (atomic on POSIX), and the folder fsynced. A temporary
    file left by a killed writer is removed by the next save. Failure: one line, exit 2.
    """
    remove_abandoned_partials(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with partial.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)  # noqa: PTH105 -- the atomic rename is the point
        record_saved(path, what)  # at once, so a Ctrl-C from here on reports this save
        fsync_folder(path.parent)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        partial.unlink(missing_ok=True)
        reason = getattr(err, "strerror", None) or error_line(err)
        fail(f"cannot write {path}: {reason}; the previous file, if any, is unchanged")
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


@contextmanager
def writing(path: Path, what: str = "") -> Iterator[Path]:
    """Around a plain `torch.save(obj, path)` (or any write of `path`) that a chapter teaches.

    A failure to write (a full disk: torch.save raises RuntimeError there, not OSError) ends
    the chapter in one line, exit 2; a write cut short (Ctrl-C) leaves no half-written file;
    a finished one is named in the Ctrl-C line. Not crash-safe: that is `save_atomically`.
    """
    try:
        yield path
    except (OSError, RuntimeError) as err:
        path.unlink(missing_ok=True)
        fail(f"cannot write {path}: {getattr(err, 'strerror', None) or error_line(err)}")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    record_saved(path, what)


def remove_abandoned_partials(path: Path) -> None:
    """Delete temporary files that writers which no longer run left next to `path`."""
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        pid = partial.name.removeprefix(f".{path.name}.").removesuffix(".partial")
        if pid.isdigit() and not process_exists(int(pid)):
            partial.unlink(missing_ok=True)


def remove_abandoned_partials_in(folder: Path) -> None:
    """Delete every `.NAME.PID.partial` in `folder` whose writer no longer runs."""
    for partial in folder.glob(".*.partial"):
        pid = partial.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not process_exists(int(pid)):
            partial.unlink(missing_ok=True)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

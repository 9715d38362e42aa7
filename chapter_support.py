"""Support code for the chapters: the command line, one-line errors, writing files, pictures.

None of this is a lesson. The chapters teach the PyTorch calls in their own cells; this
module holds what would clutter them:

- the command line: `--out-dir` and the other flags, parsed so that a chapter also runs
  cell by cell in a notebook kernel, and a bad flag refused in one line;
- one-line errors: bad input ends a chapter with `error: ...` on stderr and exit status 2,
  Ctrl-C with one line saying what was saved and exit status 130, never a traceback;
- writing files: `save_atomically` (crash-safe, which chapter 5 explains) and `writing`
  (around a plain save a chapter teaches);
- pictures: matplotlib where it is installed, one line saying how to get it where not.

The checks a file you did not make goes through are in untrusted_files.py.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import torch

DEFAULT_OUT_DIR = Path("artifacts")  # where every chapter reads and writes its files
EXIT_BAD_INPUT = 2  # the status argparse uses for bad usage; we use it for bad files too
EXIT_INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)
MAX_SEED = 2**32 - 1  # the largest seed NumPy accepts


class ChapterError(Exception):
    """Bad input a chapter refuses in one line: a file, a folder or a flag."""


# ---- Printing what came from outside ----


def safe_text(text: object, limit: int = 200) -> str:
    """`text` with control characters escaped, so a name from a file cannot drive the terminal."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def error_line(err: BaseException, max_lines: int = 1) -> str:
    """'ExceptionType: the first lines of its message', on one line, escaped."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    message = " ".join(lines[:max_lines])
    return safe_text(f"{type(err).__name__}: {message}" if message else type(err).__name__, limit=400)


def fail(message: object) -> NoReturn:
    """Report bad input in one line on stderr and exit with status 2, without a traceback."""
    print(f"error: {safe_text(message, limit=600)}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


def heading(title: str) -> None:
    print(f"\n## {title}")


# ---- The command line ----


def whole_number(text: str, low: int, high: int) -> int:
    """`text` as an int in low..high, or the argparse error that says what was wrong."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        wanted = "a positive whole number" if (low, high) == (1, sys.maxsize) else f"between {low} and {high}"
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
    return value


def positive_int(text: str) -> int:
    return whole_number(text, 1, sys.maxsize)


def seed(text: str) -> int:
    return whole_number(text, 0, MAX_SEED)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr and exit status 2, like every refusal."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def chapter_parser(docstring: str, out_dir: bool = True) -> argparse.ArgumentParser:
    """A chapter's command line: its docstring's first line as description, and --out-dir."""
    parser = OneLineParser(description=docstring.splitlines()[0])
    if out_dir:
        parser.add_argument(
            "--out-dir",
            type=Path,
            default=DEFAULT_OUT_DIR,
            help=f"folder the chapter reads and writes its files in (default: {DEFAULT_OUT_DIR})",
        )
    return parser


def in_notebook() -> bool:
    """True inside a running Jupyter kernel, whose command line is the kernel's, not the chapter's.

    (Having ipykernel imported is not enough: jupyter_client imports it in any process.)
    """
    kernel_app = sys.modules.get("ipykernel.kernelapp")
    return kernel_app is not None and kernel_app.IPKernelApp.initialized()


def parse_chapter_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The flags, or the defaults in a notebook; run as a script, Ctrl-C also ends it in one line."""
    args = parser.parse_args([] if in_notebook() else None)
    if not in_notebook():
        exit_quietly_on_ctrl_c()
    return args


def prepare_out_dir(out_dir: Path) -> Path:
    """Create the output folder and make sure it takes files, or fail in one line."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as err:
        fail(f"cannot use {out_dir} as the output folder: {err.strerror or err}")
    return out_dir


def check_writable_file(path: Path) -> None:
    """Fail in one line, before any work, unless a file can be written at `path`."""
    if path.is_dir():
        fail(f"cannot write {path}: it is a folder")
    if not path.parent.is_dir():
        fail(f"cannot write {path}: folder {path.parent} does not exist")
    existed = path.exists()
    try:
        with path.open("a"):  # appends nothing: an existing file keeps its bytes
            pass
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror or err}")
    if not existed:
        path.unlink(missing_ok=True)


# ---- Writing files so that a crash cannot ruin them, and saying what was written ----

SAVED: list[str] = []  # what this process has written, for the Ctrl-C line


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


def record_saved(path: Path, what: str = "") -> None:
    """Note `path` for the Ctrl-C line; a newer note on the same path replaces the older one."""
    kept = [entry for entry in SAVED if entry != str(path) and not entry.startswith(f"{path} (")]
    SAVED[:] = [*kept, f"{path}{f' ({what})' if what else ''}"]  # one step: a Ctrl-C sees old or new


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


def exit_quietly_on_ctrl_c() -> None:
    """Ctrl-C ends the chapter with one line saying what it saved, and exit status 130."""

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        saved = f"saved before that: {', '.join(SAVED)}" if SAVED else "nothing was saved"
        print(f"interrupted (Ctrl-C); {saved}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, on_interrupt)


# ---- Pictures, where matplotlib is installed ----

PLOTS_INSTALL = 'pip install -c constraints.txt ".[plots]"'


def import_pyplot(picture: Path) -> Any:
    """matplotlib.pyplot, or None after one line saying where `picture` would be and how to get it.

    Run as a script, figures go to files only (no window); in a notebook they also show inline.
    """
    try:
        import matplotlib
    except ImportError:
        print(f"(No picture: {picture} needs matplotlib. To draw it: {PLOTS_INSTALL})")
        return None
    if not in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write `fig` as a PNG (one line on failure); show it too when running in a notebook."""
    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        path.unlink(missing_ok=True)  # no half-written picture
        fail(f"cannot write {path}: {err.strerror or err}")
    print(f"Drew {path}")
    if in_notebook():
        import matplotlib.pyplot as plt

        plt.show()
    else:
        import matplotlib.pyplot as plt

        plt.close(fig)

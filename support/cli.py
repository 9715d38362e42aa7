"""The command line, one-line errors and Ctrl-C: set up once, in a chapter's first cell.

None of this is a lesson. `parse_chapter_args` parses a chapter's flags (or takes the
defaults inside a notebook kernel) and, run as a script, installs two handlers, so the
lessons below need no wrapping:

- an exception hook: bad input (`ChapterError`), a failed write (a full or read-only disk:
  `OSError`, or torch.save's `RuntimeError`) end the chapter with one `error: ...` line on
  stderr and exit status 2, never a traceback. Any other exception is a bug, and shows its
  traceback as usual;
- a Ctrl-C handler: one line saying what was saved, and exit status 130.

Inside a notebook kernel neither is installed: errors show as they normally do there.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import math
import os
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from types import FrameType, TracebackType

from model_inspector.process import skip_final_collection
from model_inspector.text import (
    EXIT_BAD_INPUT,
    OneLineError,
    OneLineParser,
    error_line,
    fail,
    not_found,
    print_error,
    safe_text,
)

DEFAULT_OUT_DIR = Path("artifacts")  # where every chapter reads and writes its files
EXIT_INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C (128 + SIGINT)
MAX_SEED = 2**32 - 1  # the largest seed NumPy accepts


class ChapterError(OneLineError):
    """Bad input a chapter refuses in one line: a file, a folder or a flag."""


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


def chapter_prose(script: Path) -> str:
    """The first `# %% [markdown]` cell of a chapter, as text: its title and what it does.

    A chapter's prose is written once, in that cell; `--help` shows it from there."""
    try:
        lines = script.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    if not lines or lines[0].strip() != "# %% [markdown]":
        return ""
    prose = []
    for line in lines[1:]:
        if not line.startswith("#") or line.startswith("# %%"):
            break
        prose.append(line[2:] if line.startswith("# ") else line[1:])
    title, *rest = [*prose, ""]
    return "\n".join([title.lstrip("# "), *rest]).strip().replace("**", "")


def chapter_parser(out_dir: bool = True) -> argparse.ArgumentParser:
    """A chapter's command line: the chapter's first markdown cell as description, and --out-dir.

    The script is the one being run (`sys.argv[0]`), as argparse takes its name from there."""
    parser = OneLineParser(
        description=chapter_prose(Path(sys.argv[0])) or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
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
        install_one_line_errors()
    if getattr(args, "out_dir", None) is not None:
        args.out_dir = as_named_for_reader(args.out_dir)
        watch_for_saves(args.out_dir)
    return args


def as_named_for_reader(folder: Path) -> Path:
    """The folder as the reader should read it in every line: relative when it lies under the
    current directory, so `artifacts` stays `artifacts`; absolute when it does not, so that
    `--out-dir ../elsewhere` is not mistaken for a folder in here."""
    if folder.is_absolute():
        return folder
    here = Path.cwd()
    absolute = Path(os.path.normpath(here / folder))
    return absolute.relative_to(here) if absolute.is_relative_to(here) else absolute


def require_inputs(*paths: Path, made_by: str = "") -> None:
    """Fail in one line if an input file is missing: a cheap check, made before torch is
    imported, so a reader who skipped a chapter hears it at once. What is in the files is
    checked later, when they are read."""
    for path in paths:
        if not os.path.lexists(path):
            fail(not_found(path, made_by))


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


def clear_the_way(path: Path) -> None:
    """Before a plain `torch.save(obj, path)`: whatever stands at `path` is replaced, never
    followed or blocked on. A link (to your .bashrc?), a FIFO, a device, or a file with
    other names too is removed now, so the save makes a new file; a folder is refused in one
    line. A plain file stays until the save overwrites it."""
    try:
        found = path.lstat()
    except FileNotFoundError:
        return
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror}")
    if stat.S_ISDIR(found.st_mode):
        fail(f"cannot write {path}: it is a folder")
    if not stat.S_ISREG(found.st_mode) or found.st_nlink > 1:
        path.unlink()


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


# ---- What was saved, for the Ctrl-C line ----

# The lessons save with plain torch.save, so what they saved is read off the output folder:
# every file written there since the chapter started. `record_saved` adds a description.
SAVED: list[str] = []  # described saves, "path (what)"
WATCHED: dict[Path, float] = {}  # output folder -> when this run started watching it
PARTIAL_SUFFIXES = (".partial", ".tmp")  # files still being written, by crash-safe saves


def watch_for_saves(out_dir: Path) -> None:
    WATCHED[out_dir] = time.time()


def record_saved(path: Path, what: str = "") -> None:
    """Describe `path` in the Ctrl-C line; a newer note on the same path replaces the older one."""
    kept = [entry for entry in SAVED if entry != str(path) and not entry.startswith(f"{path} (")]
    SAVED[:] = [*kept, f"{path}{f' ({what})' if what else ''}"]  # one step: a Ctrl-C sees old or new


TEMPORARY: list[Path] = []  # private folders removed at exit, and on Ctrl-C: never "saved"


def temporary_folder(prefix: str, parent: Path | None = None) -> Path:
    """A new folder only this user can enter (mode 0700), removed when the chapter ends, however
    it ends: at exit, on a one-line error, or on Ctrl-C."""
    folder = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    TEMPORARY.append(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def saved_so_far() -> list[str]:
    """The described saves, then every other file written into a watched folder since the start."""
    described = {entry.split(" (", 1)[0] for entry in SAVED}
    found = []
    for folder, started in WATCHED.items():
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            written = path.is_file() and path.stat().st_mtime >= started
            temporary = any(path.is_relative_to(folder) for folder in TEMPORARY)
            if (
                written
                and not temporary
                and not path.name.startswith(".")
                and not path.name.endswith(PARTIAL_SUFFIXES)
            ):
                found.append(str(path))
    return [*SAVED, *(path for path in found if path not in described)]


def discard_half_written() -> list[Path]:
    """Delete, and return, the torch.save files this run began in a watched folder but did
    not finish (empty, or a zip without its end record): what a failed or interrupted save
    leaves."""
    discarded = []
    for folder, started in WATCHED.items():
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if not path.is_file() or path.stat().st_mtime < started:
                continue
            with path.open("rb") as f:
                begun = f.read(4)
            if begun in (b"", b"PK\x03\x04") and not zipfile.is_zipfile(path):  # nothing, or no end
                path.unlink(missing_ok=True)
                discarded.append(path)
    return discarded


INTERRUPTED = threading.Event()  # set once Ctrl-C has been reported: say nothing more after it
GRACE_SECONDS = 3  # for the exit to run its clean-up, should something swallow the SystemExit


def exit_quietly_on_ctrl_c() -> None:
    """Ctrl-C ends the chapter with one line saying what it saved, and exit status 130.

    The line comes first, then nothing more: later output goes nowhere, and an exception that
    an interrupted step leaves behind ends the process quietly. Raised in the middle of an
    import, SystemExit can be caught and dropped (torch's start-up drops one raised while it
    imports numpy) or leave modules half made: there, with nothing to clean up yet, the
    handler leaves at once with os._exit. Elsewhere it raises SystemExit, so that `finally`
    blocks and exit handlers run, and a watchdog ends the process if that exception is
    swallowed too (a hook that os.fork calls, for one)."""

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C cannot cut this short
        discard_half_written()
        saved_files = saved_so_far()
        saved = f"saved before that: {', '.join(saved_files)}" if saved_files else "nothing was saved"
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.write(2, f"interrupted (Ctrl-C); {safe_text(saved, limit=2000)}\n".encode())
        INTERRUPTED.set()
        nowhere = os.open(os.devnull, os.O_WRONLY)
        os.dup2(nowhere, 1)  # what the chapter would still print goes nowhere
        sys.unraisablehook = lambda unraisable: None  # "Exception ignored in ..." included
        if importing(frame):
            for folder in TEMPORARY:
                shutil.rmtree(folder, ignore_errors=True)
            os._exit(EXIT_INTERRUPTED)
        watchdog = threading.Timer(GRACE_SECONDS, os._exit, (EXIT_INTERRUPTED,))
        watchdog.daemon = True
        watchdog.start()
        raise SystemExit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, on_interrupt)


def importing(frame: FrameType | None) -> bool:
    """True if Python is importing a module at `frame` (its import machinery is on the stack)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


# ---- One line for bad input and failed writes, wherever in the chapter they happen ----

# How torch.save reports a write that failed (a full disk): a RuntimeError, not an OSError;
# "basic_ios::clear" when it was given a path and opened the file itself.
TORCH_WRITE_FAILURES = (
    "PytorchStreamWriter failed",
    "file write failed",
    "unexpected pos",
    "basic_ios::clear",
)


def one_line_error(err: BaseException) -> str | None:
    """The one line a chapter ends with for `err`, or None if `err` is a bug (show it all)."""
    if isinstance(err, OneLineError):  # a ChapterError, or a file a reader refused
        return str(err)
    if isinstance(err, OSError):
        half_written = discard_half_written()
        reason = err.strerror or error_line(err)
        if err.filename:
            return f"cannot use {err.filename}: {reason}"
        return (
            f"cannot write {half_written[0]}: {reason}" if half_written else f"cannot write a file: {reason}"
        )
    if isinstance(err, RuntimeError) and any(words in str(err) for words in TORCH_WRITE_FAILURES):
        half_written = discard_half_written()
        if half_written:
            return f"cannot write {half_written[0]}: {error_line(err)}"
        return f"cannot write a file (is the disk full?): {error_line(err)}"
    return None


def report_in_one_line(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    """sys.excepthook for a chapter run as a script: one line and exit status 2 for bad input."""
    if INTERRUPTED.is_set():  # what an interrupted step left behind: Ctrl-C's line said it all
        os._exit(EXIT_INTERRUPTED)
    line = one_line_error(err)
    if line is None:
        sys.__excepthook__(kind, err, tb)
        return
    print_error(line)
    sys.stdout.flush()
    atexit._run_exitfuncs()  # what a normal exit would run, before leaving with our own status
    os._exit(EXIT_BAD_INPUT)


def install_one_line_errors() -> None:
    """Run as a script: bad input and failed writes end in one line (exit 2), Ctrl-C too (130)."""
    sys.excepthook = report_in_one_line
    exit_quietly_on_ctrl_c()
    # Registered before the chapter's own exit handlers, these run after them, the last last.
    atexit.register(end_as_interrupted)
    atexit.register(skip_final_collection)


def end_as_interrupted() -> None:
    """Exit status 130 after a Ctrl-C, even where its SystemExit was swallowed and the chapter
    ran on to its end (its output going nowhere)."""
    if INTERRUPTED.is_set():
        os._exit(EXIT_INTERRUPTED)

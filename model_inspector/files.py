"""Opening a file you did not make: one regular file, opened once, and the errors that
name it. Every reader works on one snapshot of its bytes (`snapshot_of`)."""

from __future__ import annotations

import os
import pickletools
import re
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from model_inspector.text import OneLineError, error_line, not_found, safe_text

MAX_FILE_BYTES = 64 * 2**20  # no file of this walkthrough's models comes near this


CHUNK = 2**20  # bytes read at a time when checking a file


# What zipfile raises for a damaged archive (RuntimeError, NotImplementedError: flags it cannot read)
ZIP_ERRORS = (
    zipfile.BadZipFile,
    OSError,
    ValueError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    zlib.error,
)


MAX_PICKLE_BYTES = 2**20  # a state_dict's pickle holds names and shapes only; tensors have their own records


MAX_PICKLE_OPS = 200_000  # opcodes read from one pickle; a state_dict takes some 25 a tensor


class ModelFileError(OneLineError):
    """A model file that is missing, unreadable, unsafe, damaged or made for another model."""


ZIP_MAGIC = b"PK\x03\x04"  # how torch.save's files (and every zip archive) begin


LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."  # torch.save before PyTorch 1.6


PICKLE_PROTOCOL = 0x80  # a pickle of protocol 2 or later starts with this byte


FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def open_regular_file(path: Path, made_by: str = "") -> IO[bytes]:
    """Open `path` for reading if it is a regular file (after links); never block on a FIFO.

    The type is checked before opening (opening a FIFO or a device can block or have
    effects) and again on what was opened, in case the path changed in between.
    """
    try:
        mode = Path(path).stat().st_mode
        if stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                os.close(fd)
    except FileNotFoundError:
        raise ModelFileError(not_found(path, made_by)) from None
    except OSError as err:
        raise ModelFileError(f"{path} cannot be read: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = FILE_KINDS.get(stat.S_IFMT(mode), "not a file")
        raise ModelFileError(f"{path} cannot be read: Is {kind}, not a regular file")
    return os.fdopen(fd, "rb")


@contextmanager
def refusing(path: Path) -> Iterator[None]:
    """Re-raise a ModelFileError from the block as one that names `path`."""
    try:
        yield
    except ModelFileError as err:
        raise ModelFileError(f"{path} refused: {err}") from None


def describe_load_error(err: Exception) -> str:
    """Turn torch.load's long, multi-line errors into one short reason."""
    text = str(err)
    if found := re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (.+?)(?: was not|\n|$)", text):
        name = safe_text(found.group(1), limit=80)
        return f"it refers to {name}, not just tensors; weights_only loading ran none of it"
    if isinstance(err, EOFError):
        return "the file is empty or cut short"
    if isinstance(err, RecursionError):
        return "its data is nested too deeply"
    if "does not match expected size" in text:
        return "a tensor claims more bytes than the file stores for it (the file is damaged or forged)"
    if isinstance(err, OSError) or "central directory" in text or "zip archive" in text:
        return "the file is truncated or corrupted (its zip archive is incomplete)"
    if found := re.search(r"Unsupported operand (\d+)", text):
        return unreadable_opcode(int(found.group(1)))
    if "must be imported to load DTensors" in text:
        return "its tensors are DTensors, which weights_only reads once torch.distributed.tensor is imported"
    if found := re.search(r"``(torch[\w.]*)`` and ``(torch[\w.]*)`` must be imported", text):
        return f"torch allows what it holds only once {found[1]} and {found[2]} are imported"
    if "Weights only load failed" in text:
        return "not a PyTorch weights file (unreadable pickle data)"
    return f"not a PyTorch weights file ({error_line(err)})"


def unreadable_opcode(code: int) -> str:
    """Why weights_only's unpickler stopped at opcode `code`: the protocol the file was pickled with."""
    opcode = pickletools.code2op.get(chr(code)) if 0 <= code < 256 else None
    if opcode is None:
        return f"not a PyTorch weights file (byte {code} is no pickle opcode)"
    if opcode.proto <= 2:  # torch.save's own protocol: an opcode it never writes
        return (
            f"its pickle uses {opcode.name}, an opcode that torch.save never writes "
            "and weights_only's unpickler lacks"
        )
    return (
        f"its pickle uses {opcode.name}, an opcode of pickle protocol {opcode.proto} that weights_only's "
        f"unpickler lacks; torch.save writes protocol 2 unless given pickle_protocol={opcode.proto} or "
        "higher: save it again without that argument"
    )


MAX_COPY_BYTES = 256 * 2**20  # files up to this size are copied; larger ones are watched instead
CHANGED = "it changed while it was being read: inspect it once nothing writes to it"


@contextmanager
def snapshot_of(file: IO[bytes]) -> Iterator[Path]:
    """A path to one version of the bytes `file` reads, for every reader (zipfile, torch.load,
    safe_open): every verdict is then about that version, even if the file's name is pointed
    at another file meanwhile, or the file is rewritten in place.

    A file of up to MAX_COPY_BYTES is copied into a private folder, and the copy compared with
    a second reading of the file and its size and times with those before. A larger one is
    read where it is, through its open descriptor (/proc/self/fd/N opens the same inode), and
    its size and times are compared when the readers are done: a write in place is then
    caught unless it fell within the same tick of the file system's clock. A file that
    changed is refused, not reported on."""
    fd = file.fileno()
    before = os.fstat(fd)
    same_inode = Path(f"/proc/self/fd/{fd}")
    if before.st_size > MAX_COPY_BYTES and same_inode.exists():
        yield same_inode
        if changed(before, os.fstat(fd)):
            raise ModelFileError(CHANGED)
        return
    with tempfile.TemporaryDirectory() as private:  # mode 0700: nobody else can swap it
        copy = Path(private) / "snapshot"
        with copy.open("wb") as out:
            offset = 0
            while chunk := os.pread(fd, CHUNK, offset):
                out.write(chunk)
                offset += len(chunk)
        if not same_bytes(fd, copy) or changed(before, os.fstat(fd)):
            raise ModelFileError(CHANGED)
        yield copy


def same_bytes(fd: int, copy: Path) -> bool:
    """Whether the open file still holds exactly the bytes of `copy`."""
    offset = 0
    with copy.open("rb") as kept:
        while chunk := kept.read(CHUNK):
            if os.pread(fd, len(chunk), offset) != chunk:
                return False
            offset += len(chunk)
    return not os.pread(fd, 1, offset)  # and nothing after them


def changed(before: os.stat_result, after: os.stat_result) -> bool:
    fields = ("st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")
    return any(getattr(before, name) != getattr(after, name) for name in fields)

"""The checks a model file you did not make goes through before anything uses it.

`read_untrusted` opens only regular files, bounds what a load may allocate by the file's
real size and how deeply its data may nest, checks every zip record's CRC32, and only then
loads with `torch.load(..., weights_only=True)`. `check_state_dict_fits` and
`check_checkpoint` check what was loaded against the model. Every refusal is one
`ModelFileError` of one line, with anything taken from the file printed escaped.
"""

from __future__ import annotations

import io
import itertools
import math
import os
import pickletools
import random
import re
import stat
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn

from support.cli import ChapterError, error_line, fail, not_found, safe_text

MAX_WIDTH = 4096  # refuse constructor arguments that would build an absurdly large model
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


class ModelFileError(ChapterError):
    """A model file that is missing, unreadable, unsafe, damaged or made for another model."""


# ---- Reading a file you did not make ----

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


EOCD = b"PK\x05\x06"  # the end-of-central-directory record, the last 22 bytes of a zip without a comment
ZIP64_EOCD, ZIP64_LOCATOR = b"PK\x06\x06", b"PK\x06\x07"  # torch.save writes both, before it
DESCRIPTOR = b"PK\x07\x08"  # the optional signature of a data descriptor (sizes after the data)
LOCAL_HEADER = struct.Struct(
    "<4s5H3L2H"
)  # signature, version, flags, method, time, date, CRC, sizes, lengths


def directory_end(file: IO[bytes], size: int) -> tuple[int, int, int, int] | str:
    """(records counted, directory offset, directory size, where the directory's end records
    begin) from the zip's last bytes, zip64 included; or what is wrong with them."""
    if size < 22:
        return "it is too short to end in a zip directory"
    file.seek(size - 22)
    end = file.read(22)
    if end[:4] != EOCD or end[20:22] != b"\0\0":
        return "bytes follow its end-of-central-directory record: torch.save writes none"
    _, _, _, count, directory_size, offset = struct.unpack("<4H2L", end[4:20])
    ends_at = size - 22
    file.seek(max(0, size - 42))
    locator = file.read(20)
    if size >= 42 and locator[:4] == ZIP64_LOCATOR:
        (record_at,) = struct.unpack("<Q", locator[8:16])
        file.seek(record_at)
        record = file.read(56)
        if record[:4] != ZIP64_EOCD or record_at + 12 + struct.unpack("<Q", record[4:12])[0] != size - 42:
            return "its zip64 end records do not point at each other"
        count64, size64, offset64 = struct.unpack("<3Q", record[32:56])
        for short, full, limit in (
            (count, count64, 0xFFFF),
            (directory_size, size64, 2**32 - 1),
            (offset, offset64, 2**32 - 1),
        ):
            if short not in (full, limit):
                return f"its zip64 end record says {full} where its end record says {short}"
        count, directory_size, offset, ends_at = count64, size64, offset64, record_at
    elif count == 0xFFFF or 2**32 - 1 in (offset, directory_size):
        return "its end record defers to a zip64 record that is not there"
    return count, offset, directory_size, ends_at


def zip_structure_problems(file: IO[bytes], size: int, archive: zipfile.ZipFile) -> list[str]:
    """What would make this zip mean different things to different readers.

    Python's zipfile, torch's reader and a streaming unzip each trust a different part of
    a zip: the first or the last of two records with one name, the directory or the local
    headers, the end record or its zip64 twin. torch.save writes none of these shapes: one
    record per name, each local header naming what the directory names, records back to
    back from byte 0, then the directory and its end records, nothing after.
    """
    infos = archive.infolist()
    seen: set[str] = set()
    for info in infos:
        if info.filename in seen:
            return [
                f"it has two records named {safe_text(info.filename, 80)}: "
                "readers disagree on which one counts"
            ]
        seen.add(info.filename)
    end = directory_end(file, size)
    if isinstance(end, str):
        return [end]
    count, offset, directory_size, ends_at = end
    if count != len(infos):
        return [f"its end record counts {count} records, its directory lists {len(infos)}"]
    if offset + directory_size != ends_at or offset != archive.start_dir:
        return ["its zip directory is not where its end record says (bytes were added or removed)"]
    position = 0
    for info in sorted(infos, key=lambda i: i.header_offset):
        if info.header_offset != position:
            return [f"bytes {position}..{info.header_offset} belong to no record, or records overlap"]
        position = record_end(file, info)
        if position < 0:
            return [f"the local header of record {safe_text(info.filename, 80)} disagrees with the directory"]
    if position != offset:
        return [f"bytes {position}..{offset} belong to no record, or records overlap the directory"]
    return []


def record_end(file: IO[bytes], info: zipfile.ZipInfo) -> int:
    """Where the record's bytes (and its data descriptor) end; -1 if its local header says
    something other than its directory entry: another name, method, CRC32 or size."""
    file.seek(info.header_offset)
    header = file.read(LOCAL_HEADER.size)
    if len(header) < LOCAL_HEADER.size:
        return -1
    magic, _, flags, method, _, _, crc, packed, inflated, name_length, extra_length = LOCAL_HEADER.unpack(
        header
    )
    name = file.read(name_length)
    if (
        magic != ZIP_MAGIC
        or method != info.compress_type
        or name != info.orig_filename.encode("utf-8" if flags & 0x800 else "cp437", errors="replace")
    ):
        return -1
    data_end = info.header_offset + LOCAL_HEADER.size + name_length + extra_length + info.compress_size
    expected = (info.CRC, info.compress_size, info.file_size)
    if not flags & 0x08:  # sizes in the local header: they must be the directory's (or zip64's)
        same = crc == info.CRC and all(
            short in (full, 2**32 - 1)
            for short, full in ((packed, info.compress_size), (inflated, info.file_size))
        )
        return data_end if same else -1
    if (crc, packed, inflated) != (0, 0, 0) and (crc, packed, inflated) != expected:
        return -1
    file.seek(data_end)
    descriptor = file.read(24)
    for start, fmt in ((4, "<L2L"), (4, "<L2Q"), (0, "<L2L"), (0, "<L2Q")):  # with or without its signature
        if start and descriptor[:4] != DESCRIPTOR:
            continue
        length = struct.calcsize(fmt)
        if (
            len(descriptor) >= start + length
            and struct.unpack(fmt, descriptor[start : start + length]) == expected
        ):
            return data_end + start + length
    return -1


def check_zip_records(file: IO[bytes], size: int) -> None:
    """For a torch.save zip: its layout, every record stored (not compressed), inside the file, CRC32 right.

    `torch.load` checks none of this: a flipped bit in the weights loads silently, and a
    compressed record may inflate to far more than the file's size.
    """
    try:
        archive = zipfile.ZipFile(file)
    except ZIP_ERRORS:
        raise ModelFileError("the file is truncated or corrupted (its zip archive is incomplete)") from None
    records = archive.infolist()
    folders = {info.filename.partition("/")[0] for info in records}
    folder = folders.pop() if len(folders) == 1 else ""
    if f"{folder}/data.pkl" not in archive.namelist():
        raise ModelFileError("it is a zip archive, but not one that torch.save wrote (no folder/data.pkl)")
    pickle_size = archive.getinfo(f"{folder}/data.pkl").file_size
    if pickle_size > MAX_PICKLE_BYTES:
        raise ModelFileError(
            f"its data.pkl has {pickle_size} bytes, more than the {MAX_PICKLE_BYTES} allowed for "
            "names and shapes (unpickled, each byte can cost 64)"
        )
    if any(info.compress_type != zipfile.ZIP_STORED for info in records):
        raise ModelFileError("it has compressed records; torch.save never writes them (a zip bomb?)")
    if sum(info.file_size for info in records) > size:
        raise ModelFileError("its records claim more bytes than the file holds")
    if all(info.CRC == 0 for info in records if info.file_size):
        raise ModelFileError("it carries no CRC32 checksums, so it cannot be verified")
    if any(info.flag_bits & 0x41 for info in records):  # bits 0 and 6: encrypted
        raise ModelFileError("it has encrypted records; torch.save never writes them")
    for info in records:
        try:
            with archive.open(info) as record:
                while record.read(CHUNK):
                    pass
        except ZIP_ERRORS:
            raise ModelFileError(
                f"record {safe_text(info.filename)} fails its CRC32 check: the file is damaged"
            ) from None
    from support.torch_archives import torch_zip_problems  # it reads pickles with this module's checks

    if problems := zip_structure_problems(file, size, archive) or torch_zip_problems(archive, folder):
        raise ModelFileError(problems[0])


def pickle_globals(data: bytes, limit: int = 20, pickles: int = 1) -> list[str]:
    """The `module.name` globals the first `pickles` pickles in `data` would import, found by
    reading their opcodes, not running them (all of them: pass a large `pickles`).

    Reading stops at the first malformed opcode, and after MAX_PICKLE_OPS opcodes. GLOBAL and
    INST (protocols 0 to 3) carry their names; a STACK_GLOBAL takes its two from the stack,
    so the strings pushed (or fetched from the memo) before it are tracked, as pickle
    scanners do; anything else pushed counts as a non-string.
    """
    found: list[str] = []
    start, count = 0, 0
    for _ in range(pickles):
        end = scan_one_pickle(data, start, found, limit, MAX_PICKLE_OPS - count)
        if end < 0 or end >= len(data) or len(found) >= limit:
            break
        count += end - start  # at least one byte an opcode: a bound on the opcodes read
        start = end
    return list(dict.fromkeys(found))


def scan_one_pickle(data: bytes, start: int, found: list[str], limit: int, budget: int) -> int:
    """Add the globals of the pickle at `data[start:]` to `found`; where it ends, or -1 if it does not."""
    pushed: list[str | None] = []  # what each opcode left on the stack, if it was a string
    memo: dict[int, str | None] = {}
    try:
        for count, (opcode, arg, position) in enumerate(pickletools.genops(data[start:])):
            name = opcode.name
            if name in ("GLOBAL", "INST"):  # two lines follow: the module, then the name
                module, attribute = data[start + position + 1 :].split(b"\n", 2)[:2]
                found.append(f"{module.decode(errors='replace')}.{attribute.decode(errors='replace')}")
            elif name == "STACK_GLOBAL" and len(pushed) >= 2 and None not in pushed[-2:]:
                found.append(f"{pushed[-2]}.{pushed[-1]}")
            if name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = pushed[-1] if pushed else None
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                pushed.append(memo.get(int(arg)))
            elif name not in ("PROTO", "FRAME"):
                is_string = isinstance(arg, str) and ("UNICODE" in name or "STRING" in name)
                pushed.append(arg if is_string else None)
            if name == "STOP":
                return start + position + 1
            if len(found) >= limit or count >= budget:
                break
    except (ValueError, EOFError):  # a malformed or cut-short pickle: report what was found so far
        pass
    return -1


def is_pickle(data: bytes) -> bool:
    """Whether `data` is one whole pickle of any protocol (0 and 1 start with no PROTO byte)."""
    try:
        for count, (opcode, _, position) in enumerate(pickletools.genops(data)):
            if opcode.name == "STOP":
                return count > 0 and position + 1 == len(data.rstrip(b"\n"))
            if count >= MAX_PICKLE_OPS:
                return False
    except (ValueError, EOFError):
        pass
    return False


def too_many_ops() -> str:
    return (
        f"its pickle has more than {MAX_PICKLE_OPS} opcodes, far more than names and shapes need "
        "(a pickle bomb?)"
    )


def pickle_budget_problem(data: bytes) -> str:
    """Why `data`'s first pickle is too much to read through (too many opcodes), or ''."""
    try:
        for count, _ in enumerate(pickletools.genops(data)):
            if count >= MAX_PICKLE_OPS:
                return too_many_ops()
    except (ValueError, EOFError):  # malformed: whatever reads it next says so
        pass
    return ""


def refuse_other_formats(head: bytes, file: IO[bytes], size: int) -> None:
    """Refuse, in one line, any file that is not torch.save's zip format."""
    if size == 0:
        raise ModelFileError("the file is empty or cut short (0 bytes)")
    if head.startswith(LEGACY_MAGIC[:4]):
        raise ModelFileError(
            "it is in the legacy torch.save format (before PyTorch 1.6), which carries no checksums; "
            "re-save it with a current PyTorch"
        )
    file.seek(0)
    data = file.read(min(size, MAX_PICKLE_BYTES))
    if head[:1] == bytes([PICKLE_PROTOCOL]) or is_pickle(data):
        names = pickle_globals(data, pickles=100)
        imports = f"; unpickling it would import {safe_text(', '.join(names), 120)}" if names else ""
        raise ModelFileError(f"it is a plain pickle, not a torch.save file{imports}; nothing in it was run")
    raise ModelFileError("not a PyTorch weights file (it is not a torch.save zip archive)")


MAX_NESTING = 200  # containers inside containers; a checkpoint here nests about ten levels deep
LEGACY_PICKLES = 5  # a pre-zip torch.save file: magic number, protocol, sys info, data, storage keys
MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}  # add to the object below


def check_pickle_nesting(file: IO[bytes], is_zip: bool, limit: int = MAX_NESTING) -> None:
    """Refuse pickled data that nests containers more than `limit` deep, before unpickling it.

    `torch.load` rebuilds any depth without complaint, but Python hashes and compares
    nested tuples recursively in C: a dict key nested a few hundred thousand levels deep
    crashes the process (SIGSEGV) instead of raising. The opcodes are only read, not run.
    """
    if is_zip:
        archive = zipfile.ZipFile(file)
        pickles = [name for name in archive.namelist() if name == "data.pkl" or name.endswith("/data.pkl")]
        streams = [io.BytesIO(archive.read(name)) for name in pickles[:1]]
        count = 1
    else:
        streams, count = [file], LEGACY_PICKLES
    for stream in streams:
        for _ in range(count):
            try:
                deepest = pickle_nesting(stream, limit)
            except (ValueError, IndexError, KeyError, EOFError):
                return  # not a well-formed pickle: torch.load reports that itself
            if deepest > limit:
                raise ModelFileError(f"its data is nested more than {limit} levels deep")


def pickle_nesting(stream: IO[bytes], limit: int) -> int:
    """How deeply the next pickle in `stream` nests its containers (stops counting past `limit`)."""
    depth: dict[int, int] = {}  # per object made, the containers nested in it, itself included
    stack: list[int | None] = []  # object numbers; None for a MARK
    memo: dict[object, int] = {}
    deepest = 0
    for count, (opcode, arg, _) in enumerate(pickletools.genops(stream)):
        name = opcode.name
        if name == "STOP":
            break
        if count >= MAX_PICKLE_OPS:
            raise ModelFileError(too_many_ops())
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
            continue
        if name in ("GET", "BINGET", "LONG_BINGET", "DUP"):
            stack.append(memo[arg] if name != "DUP" else stack[-1])
            continue
        if name == "MARK":
            stack.append(None)
            continue
        before = opcode.stack_before
        popped: list[int] = []
        if pickletools.markobject in before:
            while (item := stack.pop()) is not None:
                popped.append(item)
            below = before.index(pickletools.markobject)
        else:
            below = len(before)
        popped += [stack.pop() for _ in range(below)]  # the object below the mark comes last
        if not opcode.stack_after:
            continue
        inner = max((depth[item] for item in popped[:-1] if item is not None), default=0)
        if name in MUTATORS:  # the container stays the same object, now holding more
            target = popped[-1]
            depth[target] = max(depth[target], inner + 1)
        else:
            target = len(depth)
            depth[target] = 1 + max((depth[item] for item in popped if item is not None), default=-1)
        stack.append(target)
        deepest = max(deepest, depth[target])
        if deepest > limit:
            break
    return deepest


def read_untrusted(path: Path, made_by: str = "", max_bytes: int = MAX_FILE_BYTES) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)`, after checking the file.

    A regular file of at most `max_bytes` in torch.save's zip format, every record intact;
    then PyTorch's restricted unpickler, which rebuilds tensors and plain containers only
    and runs nothing from the file. What the load may allocate is bounded by the file's real
    size: no record is compressed, and together they fit in the file. Every failure is one
    ModelFileError that names the file.
    """
    with open_regular_file(path, made_by) as file:
        size = os.fstat(file.fileno()).st_size
        if size > max_bytes:
            raise ModelFileError(
                f"{path} refused: it has {size} bytes, more than the {max_bytes} this load allows"
            )
        with refusing(path):
            head = file.read(len(LEGACY_MAGIC))
            if not head.startswith(ZIP_MAGIC):
                refuse_other_formats(head, file, size)
            file.seek(0)
            check_zip_records(file, size)
            file.seek(0)
            check_pickle_nesting(file, is_zip=True)
            file.seek(0)
        saved_on: set[str] = set()

        def onto_cpu(storage: Any, location: str) -> Any:  # what map_location="cpu" does, noting the tag
            saved_on.add(location)
            return storage

        with warnings.catch_warnings():  # the one-line reason below says all that matters
            warnings.simplefilter("ignore")
            try:
                loaded = torch.load(file, map_location=onto_cpu, weights_only=True)
            except Exception as err:  # a file from anywhere can fail in any way; all are refusals
                raise ModelFileError(f"{path} refused: {describe_load_error(err)}") from None
    if problem := device_problem(saved_on):
        raise ModelFileError(f"{path} refused: {problem}")
    return loaded


def device_problem(tags: set[str]) -> str | None:
    """Why tensors saved with these device tags do not load here with a plain
    `torch.load(path, weights_only=True)`, as the lessons load them; None if they do."""
    for tag in sorted(tags - {"cpu"}):  # "cpu" loads anywhere; "cpu:7" does not
        shown = safe_text(tag, 30)
        try:
            device = torch.device(tag)
        except (RuntimeError, ValueError):
            return f"its tensors are tagged {shown}, which is not a device"
        if device.type == "meta":
            return "its tensors were saved on the meta device: they hold no values"
        if (
            device.type == "cuda"
            and device.index is not None
            and 0 <= device.index < torch.cuda.device_count()
        ):
            continue
        return (
            f"its tensors were saved on {shown}, which this machine does not have: load it with"
            ' map_location="cpu" (chapter 6), and save it again'
        )
    return None


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


@contextmanager
def refusing(path: Path) -> Iterator[None]:
    """Re-raise a ModelFileError from the block as one that names `path`."""
    try:
        yield
    except ModelFileError as err:
        raise ModelFileError(f"{path} refused: {err}") from None


def check_plain_tensor(name: str, tensor: object, like: Tensor | None = None) -> None:
    """A dense, CPU tensor of a plain type; with `like`, of its shape and dtype, and finite."""
    if type(tensor) not in (Tensor, nn.Parameter):
        raise ModelFileError(f"{safe_text(name)} is a {safe_text(type(tensor).__name__)}, not a tensor")
    assert isinstance(tensor, Tensor)
    if tensor.layout != torch.strided or tensor.is_nested or tensor.device.type != "cpu":
        kind = "nested" if tensor.is_nested else f"{tensor.layout}, on {tensor.device}"
        raise ModelFileError(f"{safe_text(name)} is not a plain dense CPU tensor ({kind})")
    if like is None:
        return
    if tensor.shape != like.shape:
        raise ModelFileError(
            f"{safe_text(name)} has shape {tuple(tensor.shape)}, expected {tuple(like.shape)}"
        )
    if tensor.dtype != like.dtype:
        raise ModelFileError(f"{safe_text(name)} is {tensor.dtype}, expected {like.dtype}")
    if not tensor.is_contiguous():  # a stride-0 view shows one value many times, for one
        raise ModelFileError(
            f"{safe_text(name)} is not contiguous (a view with strides {tensor.stride()}): not its own values"
        )
    if tensor.is_floating_point() and not torch.isfinite(tensor).all():
        raise ModelFileError(f"{safe_text(name)} contains NaN or infinite values")


def check_state_dict_fits(state: Any, model: nn.Module) -> None:
    """Raise ModelFileError (without a path) unless `state` is exactly `model`'s state_dict."""
    name = type(model).__name__
    if not isinstance(state, Mapping) or not all(isinstance(key, str) for key in state):
        raise ModelFileError(f"it holds a {safe_text(type(state).__name__)}, not a state_dict")
    metadata = getattr(state, "_metadata", None)
    if metadata is not None and not (
        isinstance(metadata, Mapping) and all(isinstance(v, Mapping) for v in metadata.values())
    ):
        raise ModelFileError("its state_dict metadata is malformed")
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise ModelFileError(
            f"its keys do not fit {name}: missing {key_list(missing)}, unexpected {key_list(unexpected)}"
        )
    for key, tensor in state.items():
        try:
            check_plain_tensor(key, tensor, like=expected[key])
        except ModelFileError as err:
            raise ModelFileError(str(err).replace(", expected ", f", {name} expects ")) from None
    if overlap := overlapping(state):
        raise ModelFileError(f"{safe_text(overlap[0])} and {safe_text(overlap[1])} share their values")


def overlapping(state: Mapping[str, Tensor]) -> tuple[str, str] | None:
    """Two tensors whose bytes overlap in memory: one weight seen twice, which this walkthrough's
    models never hold (a model with tied weights would)."""
    spans = sorted(
        (t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), key)
        for key, t in state.items()
        if t.numel()
    )
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            return first, second
    return None


def key_list(keys: list[str], shown: int = 5) -> str:
    """['a', 'b', ... 3 more], each key escaped once; or 'none'."""
    if not keys:
        return "none"
    more = [f"... {len(keys) - shown} more"] if len(keys) > shown else []
    return "[" + ", ".join([f"'{safe_text(key, 60)}'" for key in keys[:shown]] + more) + "]"


def file_bytes_for(model: nn.Module) -> int:
    """The most a torch.save file of `model`'s state_dict can reasonably take: twice its
    tensors' bytes, plus room for the zip's headers and the pickle (generously)."""
    state = model.state_dict()
    return 2 * sum(t.numel() * t.element_size() for t in state.values()) + 64 * 1024 + 1024 * len(state)


def load_untrusted_model(path: Path, model_class: Callable[[], nn.Module], made_by: str = "") -> nn.Module:
    """A model in eval mode with the checked weights from `path`, or ModelFileError.

    The file may be no larger than a state_dict of this model needs, so a forged one cannot
    make the load build much more than the model itself.
    """
    model = model_class()
    state = read_untrusted(path, made_by, max_bytes=min(MAX_FILE_BYTES, file_bytes_for(model)))
    with refusing(path):
        check_state_dict_fits(state, model)
    model.load_state_dict(dict(state))
    return model.eval()


def load_model_or_exit(path: Path, model_class: Callable[[], nn.Module], made_by: str = "") -> nn.Module:
    """`load_untrusted_model` for a chapter: a bad file ends it in one line, exit status 2."""
    try:
        return load_untrusted_model(path, model_class, made_by)
    except ModelFileError as err:
        fail(err)


# ---- Checking a training checkpoint before anything uses it ----

CHECKPOINT_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "loss", "model_args", "rng_state")


def check_model_args(args: Any, expected: Mapping[str, int]) -> dict[str, int]:
    if (
        not isinstance(args, Mapping)
        or set(args) != set(expected)
        or not all(type(v) is int and 1 <= v <= MAX_WIDTH for v in args.values())
    ):
        raise ModelFileError(f"its model_args are not {sorted(expected)} in 1..{MAX_WIDTH}")
    return dict(args)


ADAM_SETTINGS = {"lr", "betas", "eps", "weight_decay", "params"}  # what Adam's step reads from a group
ADAM_FLAGS = (
    "amsgrad",
    "maximize",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
)


def is_number(value: object) -> bool:
    """An int or float (not a bool, not a tensor) that is finite."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


def check_adam_settings(group: Mapping[Any, Any], n_params: int) -> None:
    """One Adam parameter group: plain Adam over `n_params` parameters, with sane numbers."""
    if not ADAM_SETTINGS <= set(group) <= ADAM_SETTINGS | set(ADAM_FLAGS):
        raise ModelFileError("its optimizer settings are not Adam's")
    params = group["params"]
    if (
        type(params) is not list
        or [type(i) for i in params] != [int] * n_params
        or params != [*range(n_params)]
    ):
        raise ModelFileError(f"its optimizer state is not for this model's {n_params} parameters")
    lr, betas, eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if not (is_number(lr) and 0 < lr <= 1):
        raise ModelFileError("its optimizer's lr is not a number in (0, 1]")
    if (
        type(betas) not in (tuple, list)
        or len(betas) != 2
        or not all(is_number(b) and 0 <= b < 1 for b in betas)
    ):
        raise ModelFileError("its optimizer's betas are not two numbers in [0, 1)")
    if not (is_number(eps) and 0 < eps < 1):
        raise ModelFileError("its optimizer's eps is not a number in (0, 1)")
    if not (is_number(weight_decay) and 0 <= weight_decay < 1):
        raise ModelFileError("its optimizer's weight_decay is not a number in [0, 1)")
    for flag in ADAM_FLAGS:
        value = group.get(flag)
        if value is not None and value is not False:  # identity: a tensor here must not be compared
            raise ModelFileError(f"its optimizer asks for {flag} (plain Adam, as saved here, has it off)")


def check_optimizer_state(state: Any, model: nn.Module, steps: int | None = None) -> None:
    """An Adam state_dict for exactly `model`'s parameters: settings sane, and for every
    parameter its step count and both moving averages, of the right shape and dtype, finite.

    Everything Adam's step reads is checked, since a wrong shape, an aliased or negative
    second moment, or a NaN setting would fail in the middle of training or, worse, train
    on and save NaN weights; and a missing entry or a step count that does not fit the
    epoch would resume, but not exactly. `steps`: the step count every parameter must have.
    """
    params = list(model.parameters())
    if not isinstance(state, Mapping) or set(state) != {"state", "param_groups"}:
        raise ModelFileError("its optimizer state is not an optimizer's state_dict")
    groups = state["param_groups"]
    if type(groups) is not list or len(groups) != 1 or not isinstance(groups[0], Mapping):
        raise ModelFileError("its optimizer state does not have one parameter group")
    check_adam_settings(groups[0], len(params))
    per_param = state["state"]
    if not isinstance(per_param, Mapping) or not all(
        type(index) is int and 0 <= index < len(params) for index in per_param
    ):
        raise ModelFileError("its optimizer state refers to parameters this model does not have")
    missing = [index for index in range(len(params)) if index not in per_param]
    if missing:
        raise ModelFileError(
            f"its optimizer state has no entry for parameter {missing[0]}: Adam would restart it"
        )
    storages = set()
    for index, entry in sorted(per_param.items()):
        if not isinstance(entry, Mapping) or set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
            raise ModelFileError(f"its optimizer state for parameter {index} is not Adam's")
        for moment in ("exp_avg", "exp_avg_sq"):
            tensor = entry[moment]
            check_plain_tensor(f"optimizer state[{index}].{moment}", tensor, like=params[index])
            if not tensor.is_contiguous() or tensor.requires_grad:
                raise ModelFileError(f"optimizer state[{index}].{moment} is not a plain contiguous tensor")
            storages.add(tensor.untyped_storage().data_ptr())
        if (entry["exp_avg_sq"] < 0).any():
            raise ModelFileError(f"optimizer state[{index}].exp_avg_sq has negative values")
        check_adam_step(index, entry["step"], steps)  # after the shapes: a step says less about a misfit
    if len(storages) != 2 * len(per_param):
        raise ModelFileError("its optimizer state has tensors that share memory")


ADAM_STEP = torch.tensor(0.0)  # what Adam keeps its step count in: a float32 scalar
MAX_STEPS = 2**24  # float32, which Adam counts its steps in, counts exactly up to here


def check_adam_step(index: int, step: Any, steps: int | None) -> None:
    """Parameter `index`'s step count: a whole number, as Adam keeps it, equal to `steps`."""
    check_plain_tensor(f"optimizer state[{index}].step", step)
    if step.shape != ADAM_STEP.shape or step.dtype != ADAM_STEP.dtype:
        raise ModelFileError(f"its optimizer step for parameter {index} is not a count (a float32 scalar)")
    count = step.item()
    if not (math.isfinite(count) and count == int(count) and 1 <= count < MAX_STEPS):
        raise ModelFileError(f"its optimizer step for parameter {index} is not a count")
    if steps is not None and count != steps:
        raise ModelFileError(
            f"its optimizer step for parameter {index} is {int(count)}, but its epoch needs {steps}"
        )


MT19937_WORDS = 624  # the Mersenne Twister state behind NumPy's and Python's generators
WORD_VALUES = 2**32  # each of its words is 32 bits


def check_rng_state(rng: Any) -> None:
    """The generator states chapter 5 saves: torch's bytes, NumPy's and Python's as tensors.

    Each is checked for its layout and then tried on a fresh generator of its kind, which
    rejects a state it cannot use, so restoring the real generators cannot fail later.
    Values a generator would silently truncate (a word beyond 32 bits) are refused too:
    the restore would not be the state saved.
    """
    if not isinstance(rng, Mapping) or set(rng) != {"torch", "numpy", "python"}:
        raise ModelFileError("its rng_state is not the torch, NumPy and Python generator states")
    for name, check in (("torch", check_torch_rng), ("numpy", check_numpy_rng), ("python", check_python_rng)):
        try:
            ok = check(rng[name])
        except (TypeError, KeyError, AttributeError, ValueError, OverflowError, RuntimeError, IndexError):
            ok = False
        if not ok:
            raise ModelFileError(f"its rng_state has no usable {name} generator state")


def is_words(tensor: Any, count: int) -> bool:
    """A plain int64 tensor of `count` Mersenne Twister words, each in 0 .. 2**32 - 1."""
    if type(tensor) is not Tensor or tensor.dtype != torch.int64 or tensor.shape != (count,):
        return False
    check_plain_tensor("rng_state words", tensor)
    return bool(((tensor >= 0) & (tensor < WORD_VALUES)).all())


def check_torch_rng(state: Any) -> bool:
    if type(state) is not Tensor or state.dtype != torch.uint8 or state.shape != torch.get_rng_state().shape:
        return False
    check_plain_tensor("rng_state.torch", state)
    if not state.is_contiguous():
        return False
    torch.Generator().set_state(state)  # refuses a state it cannot use
    return True


def check_numpy_rng(state: Any) -> bool:
    if not isinstance(state, Mapping) or set(state) != {"keys", "pos", "has_gauss", "cached_gaussian"}:
        return False
    keys, pos, has_gauss, gaussian = state["keys"], state["pos"], state["has_gauss"], state["cached_gaussian"]
    if not (
        is_words(keys, MT19937_WORDS)
        and type(pos) is int
        and 0 <= pos <= MT19937_WORDS  # NumPy does not check: it would read past its keys
        and type(has_gauss) is int
        and has_gauss in (0, 1)
        and type(gaussian) is float
        and is_number(gaussian)
    ):
        return False
    np.random.RandomState().set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gaussian))
    return True


def check_python_rng(state: Any) -> bool:
    if not isinstance(state, Mapping) or set(state) != {"version", "internal", "gauss_next"}:
        return False
    version, internal, gauss_next = state["version"], state["internal"], state["gauss_next"]
    if not (
        type(version) is int
        and version == 3
        and is_words(internal, MT19937_WORDS + 1)  # the words, then the position in them
        and internal[-1].item() <= MT19937_WORDS
        and (gauss_next is None or (type(gauss_next) is float and is_number(gauss_next)))
    ):
        return False
    random.Random().setstate((version, tuple(internal.tolist()), gauss_next))
    return True


def check_checkpoint(
    checkpoint: Any,
    model_class: Callable[..., nn.Module],
    max_epoch: int,
    fixed_args: Mapping[str, int] | None = None,
    steps_per_epoch: int | None = None,
) -> None:
    """Raise ModelFileError unless `checkpoint` is a chapter-5 checkpoint that fits the model.

    Everything is checked before use: an optimizer state of the wrong shapes would make a
    fused optimizer write past its buffers and crash the process, not raise; a missing or
    inconsistent piece would resume, but not bit-identically. `max_epoch` is the last
    epoch training may reach; `fixed_args` are constructor arguments the data decides (the
    number of features and classes), which the file must not change; `steps_per_epoch`,
    the optimizer steps an epoch takes, fixes the step count the epoch needs.
    """
    try:
        check_checkpoint_fields(checkpoint, model_class, max_epoch, fixed_args or {}, steps_per_epoch)
    except RecursionError:
        raise ModelFileError("its data is nested too deeply") from None


def check_checkpoint_fields(
    checkpoint: Any,
    model_class: Callable[..., nn.Module],
    max_epoch: int,
    fixed_args: Mapping[str, int],
    steps_per_epoch: int | None = None,
) -> None:
    if not isinstance(checkpoint, Mapping) or set(checkpoint) != set(CHECKPOINT_KEYS):
        raise ModelFileError(f"not a training checkpoint (it needs the keys {', '.join(CHECKPOINT_KEYS)})")
    epoch = checkpoint["epoch"]
    if type(epoch) is not int or epoch < 1:
        raise ModelFileError("its epoch is not a whole number >= 1")
    if epoch > max_epoch:
        raise ModelFileError(f"it is at epoch {epoch}, beyond the {max_epoch} epochs asked for")
    loss = checkpoint["loss"]
    if type(loss) is not float or not math.isfinite(loss):
        raise ModelFileError("its loss is not a finite number")
    args = check_model_args(checkpoint["model_args"], model_class().constructor_args())
    if any(args[name] != value for name, value in fixed_args.items()):
        raise ModelFileError(f"its model_args {args} do not fit the data, which needs {dict(fixed_args)}")
    model = model_class(**args)
    check_state_dict_fits(checkpoint["model_state_dict"], model)
    steps = None if steps_per_epoch is None else epoch * steps_per_epoch
    check_optimizer_state(checkpoint["optimizer_state_dict"], model, steps)
    check_rng_state(checkpoint["rng_state"])


def read_checkpoint(
    path: Path,
    model_class: Callable[..., nn.Module],
    max_epoch: int,
    fixed_args: Mapping[str, int] | None = None,
    steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """A chapter-5 checkpoint read from `path` (`read_untrusted`) and checked field by field
    (`check_checkpoint`); otherwise a one-line ModelFileError that names the file."""
    checkpoint = read_untrusted(path)
    with refusing(path):
        check_checkpoint(checkpoint, model_class, max_epoch, fixed_args, steps_per_epoch)
    return dict(checkpoint)

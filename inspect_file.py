# %% [markdown]
# # Chapter 9, a tool: inspect any model file without running it
#
# A `.pth` from a colleague, last month's checkpoint (legacy format, Lightning, saved on a
# GPU), a `.safetensors` download or a sharded Hugging Face folder, a TorchScript or `.pt2`
# program, or a DCP folder: what is it, what does it hold, what would loading it import, is
# it intact, and does it fit your model? ONNX, GGUF, NumPy, HDF5/Keras, TensorFlow Lite and
# ExecuTorch files are named, with what reads them; so are the formats that carry code
# (TorchScript, torch.package, AOTInductor packages), with what would run it. Everything
# here is read from the bytes.
# Nothing in the file is executed: a plain pickle is never unpickled, and `torch.load` is
# only ever called with `weights_only=True`, after the file's checksums and sizes have been
# checked. The readers of each format are in support/ (torch_archives, other_formats,
# model_folders, checkpoints).
#
# Unlike the other chapters, this one is a tool to run on your own files rather than a
# lesson to step through cell by cell: its sections below answer one question each, and
# the report at the end puts the answers together.
#
# Run:
#
#     python inspect_file.py [PATH] [--model Multiclass [--model-args n_hidden=8]] [--json]
#     python inspect_file.py PATH --model-file my_model.py --model-class Net [--model-args ...]
#
# PATH defaults to artifacts/iris-model.pth (chapter 2's model); a DCP checkpoint or a
# sharded model is a folder. Reads PATH only and writes nothing. Exit status 0: intact, and
# loads as the report says (`torch.load(weights_only=True)`, with `map_location="cpu"` for
# a file saved on a device this machine lacks; safetensors, or every shard of a sharded
# folder) and fits the model if one was named; 2: anything else, with the reasons listed.

# %%
from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.util
import io
import itertools
import json
import logging
import math
import os
import pickletools
import shutil
import stat
import struct
import sys
import tempfile
import warnings
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# The command line first, before torch is imported: --help, a bad flag, a missing file and
# Ctrl-C are answered at once, in one line.
from support.cli import (
    DEFAULT_OUT_DIR,
    EXIT_BAD_INPUT,
    OneLineParser,
    chapter_prose,
    error_line,
    fail,
    parse_chapter_args,
    require_inputs,
    safe_text,
)
from support.settings import MODEL_FILE

parser = OneLineParser(
    description=chapter_prose(Path(__file__)),
    formatter_class=argparse.RawDescriptionHelpFormatter,
    epilog="--model-file imports and runs that Python file: it must be your own code. "
    "The file being inspected is never run.",
)
parser.add_argument(
    "path", nargs="?", type=Path, default=DEFAULT_OUT_DIR / MODEL_FILE, help="file or DCP folder to inspect"
)
parser.add_argument("--model", choices=["Multiclass"], help="check the file against this walkthrough's model")
parser.add_argument("--model-file", type=Path, help="YOUR Python file defining the model class (it is run)")
parser.add_argument("--model-class", help="the class in --model-file to check against")
parser.add_argument(
    "--model-args", nargs="*", default=[], metavar="NAME=VALUE", help="constructor arguments, e.g. n_hidden=8"
)
parser.add_argument("--json", action="store_true", help="print the report as JSON, for scripts")

if __name__ == "__main__":
    args = parse_chapter_args(parser)
    require_inputs(args.path)

import torch
from torch import Tensor, nn

from build_model import Multiclass
from support import known_allowlists, other_formats, torch_archives
from support.checkpoints import note_devices, note_training_framework
from support.model_folders import find_index, inspect_sharded
from support.untrusted_files import (
    CHUNK,
    LEGACY_MAGIC,
    LEGACY_PICKLES,
    MAX_PICKLE_BYTES,
    ZIP_ERRORS,
    ZIP_MAGIC,
    ModelFileError,
    check_pickle_nesting,
    describe_load_error,
    open_regular_file,
    pickle_budget_problem,
    pickle_globals,
    refusing,
    zip_structure_problems,
)

MAX_HEADER_BYTES = 16 * 2**20  # a JSON header this tool parses; a large model's takes well under 1 MiB
MAX_DEPTH = 32  # containers nested deeper than this are not listed
MAX_ROWS = 60  # tensors listed in the readable report (all of them in --json)
MAX_OBJECTS = torch_archives.MAX_OBJECTS  # containers walked when listing a loaded file's tensors
# What runs code when unpickled: never allowlist these with safe_globals, whatever the file says.
RUNS_CODE_MODULES = (
    "os.", "posix.", "nt.", "subprocess.", "sys.", "importlib.", "runpy.", "shutil.", "socket.",
    "pickle.", "_pickle.", "code.", "pty.", "webbrowser.", "ctypes.", "marshal.", "types.",
)  # fmt: skip
RUNS_CODE_BUILTINS = {
    "exec", "eval", "compile", "getattr", "setattr", "delattr", "__import__", "open",
    "breakpoint", "input", "globals", "vars", "apply", "execfile",
}  # fmt: skip
# numpy's own pickle rebuilders, outside weights_only's list. Each rebuilds an array, a dtype
# or a scalar from the shape, dtype and bytes the file gives, and calls nothing the file
# names: `_reconstruct(ndarray, shape, dtype)` makes an empty array of a class the unpickler
# already allowed, ndarray.__setstate__ copies the file's bytes in (an object array's items
# come from the same restricted unpickler), `dtype(...)` parses a dtype's description, and
# `scalar(dtype, bytes)` makes one number. So they are no way to run code of the file's
# choosing, unlike os.system; but numpy's C code parses the file's bytes, and has crashed
# on malformed ones (numpy 2.4.6 segfaults on an object array with fewer items than its
# shape): allow them only for a file whose source you trust. numpy.dtypes holds DType classes.
NUMPY_DATA_REBUILDERS = frozenset(
    {f"numpy.{core}.multiarray.{name}" for core in ("core", "_core") for name in ("_reconstruct", "scalar")}
    | {"numpy.ndarray", "numpy.dtype"}
)
# Every dtype of the safetensors format (its Rust crate's Dtype, 22 of them in 0.8) -> torch's
# name for it ("" where torch has none), and bits per value: safetensors counts bits, so a
# tensor of 4- or 6-bit values must fill whole bytes. torch packs two F4 values in one
# float4_e2m1fn_x2 element: the header's last dimension is twice torch's.
SAFETENSORS_DTYPES = {
    "F64": ("float64", 64), "F32": ("float32", 32), "F16": ("float16", 16), "BF16": ("bfloat16", 16),
    "I64": ("int64", 64), "I32": ("int32", 32), "I16": ("int16", 16), "I8": ("int8", 8),
    "U64": ("uint64", 64), "U32": ("uint32", 32), "U16": ("uint16", 16), "U8": ("uint8", 8),
    "BOOL": ("bool", 8), "C64": ("complex64", 64),
    "F8_E4M3": ("float8_e4m3fn", 8), "F8_E5M2": ("float8_e5m2", 8),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 8), "F8_E5M2FNUZ": ("float8_e5m2fnuz", 8),
    "F8_E8M0": ("float8_e8m0fnu", 8), "F4": ("float4_e2m1fn_x2", 4),
    "F6_E2M3": ("", 6), "F6_E3M2": ("", 6),
}  # fmt: skip
PT2_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32"}
PT2_DTYPES |= {8: "float64", 12: "bool", 13: "bfloat16"}
AOTI_FOLDER = "data/aotinductor/"  # where a .pt2 keeps AOTInductor's compiled model, one folder a model
NATIVE_CODE = (".so", ".dll", ".dylib", ".pyd", ".cubin", ".hsaco", ".spv", ".o")  # loaded, then run

# ---- What kind of file is it? ----
#
# The first bytes decide, not the extension: a zip archive (torch.save since PyTorch 1.6,
# TorchScript and torch.export's .pt2 are all zips, told apart by their records), the
# legacy torch.save magic number, a pickle's protocol byte, or safetensors' 8-byte header
# length followed by JSON. A DCP checkpoint is a folder with a `.metadata` file.


def zip_layout(archive: zipfile.ZipFile) -> tuple[str, str]:
    """(kind, top folder) of a zip: torch-package, aoti, pt2, torchscript, torch-zip, or zip
    (someone else's). The formats that carry code are told first, whatever else they hold."""
    names = archive.namelist()
    folders = {name.partition("/")[0] for name in names}
    folder = folders.pop() if len(folders) == 1 else ""
    if f"{folder}/.data/extern_modules" in names:  # torch.package.PackageExporter always writes it
        return "torch-package", folder
    if f"{folder}/archive_format" in names:
        compiled = any(name.startswith(f"{folder}/{AOTI_FOLDER}") for name in names)
        return ("aoti" if compiled else "pt2"), folder
    if f"{folder}/constants.pkl" in names or any(name.startswith(f"{folder}/code/") for name in names):
        return "torchscript", folder
    if f"{folder}/data.pkl" in names:
        return "torch-zip", folder
    return "zip", folder


def is_safetensors(head: bytes) -> bool:
    """8 bytes of header length, then the JSON header: '{', after any whitespace JSON allows
    (its length is checked later)."""
    return len(head) >= 10 and head[8:].lstrip(b" \t\r\n")[:1] == b"{"


def sniff(head: bytes) -> str:
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        return "legacy-torch"
    if other_formats.flatbuffer_kind(head):  # an identifier says more than a pickle's first 2 bytes
        return "other"
    if is_safetensors(head):
        return "safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


# ---- Is it intact? ----
#
# torch.load never checks a zip record's CRC32: one flipped bit loads silently. Every record
# is read in 1 MiB pieces and checked; compressed records (torch.save never writes them) are
# listed but not inflated, so a zip bomb costs nothing. A safetensors header must describe
# tensors that tile its data area exactly; anything past the end means the file was cut short.


def stored_bytes(file: Any, info: zipfile.ZipInfo) -> bytes:
    """A stored record's bytes as they are, whatever its CRC32 says (that is checked apart)."""
    if info.header_offset < 0:  # a damaged directory can point before the file's start
        return b""
    file.seek(info.header_offset)
    header = file.read(30)
    if len(header) < 30 or header[:4] != ZIP_MAGIC:
        return b""
    name_length, extra_length = struct.unpack("<2H", header[26:30])
    file.seek(info.header_offset + 30 + name_length + extra_length)
    return file.read(info.file_size)


def check_records(archive: zipfile.ZipFile, size: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Each record's name, size and CRC32 verdict, and the reasons the archive is not intact."""
    records, problems = [], []
    infos = archive.infolist()
    if sum(info.file_size for info in infos) > size:
        problems.append("its records claim more bytes than the file holds")
    if all(info.CRC == 0 for info in infos if info.file_size):
        problems.append("it carries no CRC32 checksums (saved with set_crc32_options(False))")
        return [
            {"name": safe_text(i.filename, 120), "bytes": i.file_size, "crc32": "none"} for i in infos
        ], problems
    for info in infos:
        name = safe_text(info.filename, 120)
        record = {"name": name, "bytes": info.file_size, "crc32": "ok"}
        if info.compress_type != zipfile.ZIP_STORED:
            record["crc32"] = "not checked (compressed; not inflated)"
            problems.append(f"record {name} is compressed ({info.file_size} bytes once inflated)")
        elif info.file_size > size:
            record["crc32"] = "not checked (larger than the file)"
        else:
            try:
                with archive.open(info) as stream:
                    while stream.read(CHUNK):
                        pass
            except ZIP_ERRORS:
                record["crc32"] = "MISMATCH"
                problems.append(f"record {name} fails its CRC32 check: the file is damaged")
        records.append(record)
    return records, problems


def safetensors_entry_problem(shape: list[int], begin: int, end: int) -> str:
    """What is wrong with a tensor's shape or data offsets on their own, or ''."""
    if any(n < 0 for n in shape):
        return f"has a negative dimension in its shape {shape}"
    if begin < 0 or end < begin:
        return f"has data offsets [{begin}, {end}]: a span must start at 0 or later and not end before it"
    return ""


def safetensors_header(file: Any, size: int) -> tuple[dict[str, Any], list[str]]:
    """The parsed JSON header, and what is wrong with it or with the data it describes."""
    header_size = struct.unpack("<Q", file.read(8))[0]
    if header_size > size - 8:
        return {}, [f"its header claims {header_size} bytes; the file has {size}"]
    if header_size > MAX_HEADER_BYTES:
        return {}, [f"its header has {header_size} bytes, more than the {MAX_HEADER_BYTES} this tool parses"]
    try:
        header = json.loads(file.read(header_size))
    except (ValueError, UnicodeDecodeError) as err:
        return {}, [f"its JSON header is malformed ({safe_text(err, 80)})"]
    if not isinstance(header, dict):
        return {}, ["its header is not a JSON object"]
    data_size, problems, spans = size - 8 - header_size, [], []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shown = safe_text(name, 80)
        try:
            bits = SAFETENSORS_DTYPES[entry["dtype"]][1]
            begin, end = entry["data_offsets"]
            shape = list(entry["shape"])
            numel = math.prod(shape)
            whole = all(type(n) is int for n in [*shape, begin, end])
        except (KeyError, TypeError, ValueError):
            problems.append(f"tensor {shown} has a malformed entry")
            continue
        if problem := safetensors_entry_problem(shape, begin, end) if whole else "has a malformed entry":
            problems.append(f"tensor {shown} {problem}")
        elif numel * bits % 8:
            problems.append(f"tensor {shown}: {numel} values of {bits} bits do not fill whole bytes")
        elif end - begin != numel * bits // 8:
            problems.append(
                f"tensor {shown}: its shape and dtype need {numel * bits // 8} bytes, not {end - begin}"
            )
        elif end > data_size:
            problems.append(f"tensor {shown} ends at byte {end} of a data area of {data_size}: truncated")
        if whole and 0 <= begin <= end:
            spans.append((begin, end))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            problems.append(f"its tensors overlap or leave a gap at byte {covered} of the data area")
            break
        covered = end
    if not problems and covered != data_size:
        problems.append(f"{data_size - covered} bytes after the last tensor belong to none")
    return header, problems


# ---- What does it hold? ----
#
# For a torch.save file, `torch.load(weights_only=True, mmap=True)` rebuilds tensors and
# plain containers only, and maps the weights from the file instead of reading them in;
# a `map_location` function notes the device each storage was saved from. For safetensors
# and .pt2 the JSON describes every tensor, so no tensor is loaded at all.


def tensor_row(name: str, shape: list[int], dtype: str, device: str, nbytes: int) -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype, "device": device, "bytes": nbytes, "shares": None}


@dataclass
class Listing:
    """The tensors found in a loaded file, and the storages they view."""

    locations: dict[int, str]  # storage address -> the device it was saved from
    rows: list[dict[str, Any]] = field(default_factory=list)
    storages: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    odd: list[str] = field(default_factory=list)  # tensors that are not plain, dense, with data
    malformed: list[str] = field(default_factory=list)  # sparse tensors whose indices do not check out
    non_finite: list[str] = field(default_factory=list)
    sparse: list[str] = field(default_factory=list)
    component_bytes: dict[int, int] = field(
        default_factory=dict
    )  # a sparse tensor's index and value storages
    too_deep: bool = False
    walked: set[int] = field(default_factory=set)  # containers already listed: each is walked once
    spans: dict[int, list[tuple]] = field(default_factory=dict)  # storage -> (start, end, strides, name)
    cut_off: bool = False

    def add(self, obj: Any, name: str = "", depth: int = 0) -> None:
        """List the tensors under `obj`. A container met again (shared, as pickles allow) is
        not walked again: 1 KB of lists of the same list would otherwise have 8**30 paths."""
        if isinstance(obj, Tensor):
            self.add_tensor(obj, name)
        elif depth >= MAX_DEPTH:
            self.too_deep = True
        elif isinstance(obj, Mapping | list | tuple) and id(obj) not in self.walked:
            if len(self.walked) >= MAX_OBJECTS:
                self.cut_off = True
                return
            self.walked.add(id(obj))
            items = obj.items() if isinstance(obj, Mapping) else enumerate(obj)
            for key, value in items:
                shown = safe_text(key if isinstance(key, str) else repr(key), 80)
                self.add(value, f"{name}.{shown}" if name else shown, depth + 1)

    def add_tensor(self, tensor: Tensor, name: str) -> None:
        dtype = str(tensor.dtype).removeprefix("torch.")
        if tensor.layout in SPARSE_LAYOUTS and not tensor.is_nested and tensor.device.type != "meta":
            self.add_sparse(tensor, name, dtype)
            return
        if is_dtensor(tensor):  # its values are its local shard; the row shows the global shape
            self.add_tensor(tensor.to_local(), name)
            self.rows[-1].update(shape=list(tensor.shape), dtype=f"{dtype} (DTensor)")
            return
        if tensor.is_nested or tensor.layout != torch.strided or tensor.device.type == "meta":
            kind = "nested" if tensor.is_nested else "meta" if tensor.device.type == "meta" else tensor.layout
            shape = [] if tensor.is_nested else list(tensor.shape)
            self.rows.append(tensor_row(name, shape, f"{dtype} ({str(kind).removeprefix('torch.')})", "", 0))
            self.odd.append(f"{name} ({str(kind).removeprefix('torch.')})")
            return
        address = tensor.untyped_storage().data_ptr()
        row = tensor_row(name, list(tensor.shape), dtype, self.locations.get(address, str(tensor.device)), 0)
        row["bytes"] = tensor.numel() * tensor.element_size()
        self.rows.append(row)
        if any(stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape, strict=True)):
            self.odd.append(f"{name} (one value repeated: a view with strides {tuple(tensor.stride())})")
        start = tensor.storage_offset() * tensor.element_size()
        self.spans.setdefault(address, []).append((start, start + row["bytes"], tensor.stride(), name))
        if address and tensor.untyped_storage().nbytes():
            self.storages.setdefault(address, []).append(row)
        if not finite(tensor):
            self.non_finite.append(name)

    def add_sparse(self, tensor: Tensor, name: str, dtype: str) -> None:
        """A sparse tensor: its index and value tensors, and whether they make a valid tensor.

        torch.load rebuilds sparse tensors without checking their indices (unless asked to,
        with torch.sparse.check_sparse_tensor_invariants): an index past the shape would make
        later use read or write out of bounds. They are checked here, the way torch would."""
        layout = str(tensor.layout).removeprefix("torch.")
        parts = sparse_parts(tensor)
        values = parts[-1]
        address = values.untyped_storage().data_ptr()
        row = tensor_row(name, list(tensor.shape), f"{dtype} ({layout})", self.locations.get(address, ""), 0)
        row["device"] = row["device"] or str(tensor.device)
        row["bytes"] = sum(part.numel() * part.element_size() for part in parts)
        self.rows.append(row)
        self.sparse.append(name or "the file's one tensor")
        for part in parts:
            self.component_bytes[part.untyped_storage().data_ptr()] = part.untyped_storage().nbytes()
        try:
            if tensor.layout == torch.sparse_coo:
                torch.sparse_coo_tensor(*parts, tensor.shape, check_invariants=True)
            else:
                torch.sparse_compressed_tensor(
                    *parts, tensor.shape, layout=tensor.layout, check_invariants=True
                )
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            self.malformed.append(f"{name or 'the file'} ({error_line(err)})")
            return
        if not finite(values):
            self.non_finite.append(name)


SPARSE_LAYOUTS = (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


def sparse_parts(tensor: Tensor) -> list[Tensor]:
    """The tensors a sparse tensor is made of: its indices, then its values."""
    if tensor.layout == torch.sparse_coo:
        return [tensor._indices(), tensor._values()]
    if tensor.layout in (torch.sparse_csr, torch.sparse_bsr):
        return [tensor.crow_indices(), tensor.col_indices(), tensor.values()]
    return [tensor.ccol_indices(), tensor.row_indices(), tensor.values()]


def is_dtensor(tensor: Tensor) -> bool:
    """A torch.distributed.tensor.DTensor (found by its class, without importing torch.distributed)."""
    return any(
        cls.__name__ == "DTensor" and cls.__module__.startswith("torch.distributed.")
        for cls in type(tensor).__mro__
    )


def overlapping_views(spans: dict[int, list[tuple]]) -> tuple[str, str] | None:
    """Two tensors over partly the same bytes of one storage. Tied weights, the same view
    twice, are fine; views that overlap otherwise are not weights of their own."""
    for views in spans.values():
        ordered = sorted(views)
        for (start, end, strides, name), (other_start, other_end, other_strides, other) in itertools.pairwise(
            ordered
        ):
            same_view = (start, end, strides) == (other_start, other_end, other_strides)
            if other_start < end and not same_view:
                return name, other
    return None


def summary(value: Any) -> str:
    """A checkpoint value in a few words: small values as they are."""
    if isinstance(value, torch.dtype):  # a quantized module's packed-params dtype, say
        return str(value)
    if isinstance(value, Tensor):
        return f"tensor {tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, Mapping):
        tensors = sum(isinstance(v, Tensor) for v in value.values())
        return f"dict of {len(value)} ({tensors} tensors)" if tensors else f"dict of {len(value)}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__} of {len(value)}"
    if value is None or isinstance(value, bool | int | float | str):
        text = repr(value)
        return safe_text(text, 60) if len(text) <= 60 else f"{type(value).__name__} of {len(text)} characters"
    return safe_text(type(value).__name__)


STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model")  # the usual names, preferred on a tie


def is_state_dict(value: Any) -> bool:
    """A non-empty mapping of names to tensors, as nn.Module.state_dict() returns."""
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(key, str) for key in value)
        and all(isinstance(tensor, Tensor) for tensor in value.values())
    )


def state_dict_in(
    obj: Any, expected: Mapping[str, tuple] | None = None
) -> tuple[str, Mapping[str, Tensor] | None, list[str]]:
    """The state_dict in a loaded file: the file itself, or the top-level entry of a checkpoint
    that is one, under whatever key; of several, the one that fits `expected` (the model's
    names -> shape and dtype) best. (key, state_dict, the keys of the others)."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return "", obj, []
    if not isinstance(obj, Mapping):
        return "", None, []
    found = [(key, value) for key, value in obj.items() if isinstance(key, str) and is_state_dict(value)]
    if not found:
        return "", None, []
    wanted = expected or {}
    shapes = sorted(map(repr, wanted.values()))

    def fit(item: tuple[str, Mapping[str, Tensor]]) -> tuple:
        key, state = item
        named = sum(wanted.get(name) == shape_and_dtype(t) for name, t in state.items())
        same_shapes = len(multiset_overlap(shapes, sorted(repr(shape_and_dtype(t)) for t in state.values())))
        usual = STATE_DICT_KEYS.index(key) if key in STATE_DICT_KEYS else len(STATE_DICT_KEYS)
        return -named, -same_shapes, usual

    key, state = min(found, key=fit)  # the first of equals: the order the file keeps them in
    return key, state, [other for other, _ in found if other != key]


def multiset_overlap(first: list[str], second: list[str]) -> list[str]:
    """The items two sorted lists share, each as often as both hold it."""
    shared, i, j = [], 0, 0
    while i < len(first) and j < len(second):
        if first[i] == second[j]:
            shared.append(first[i])
            i, j = i + 1, j + 1
        elif first[i] < second[j]:
            i += 1
        else:
            j += 1
    return shared


def expected_shapes(model: nn.Module | None) -> dict[str, tuple]:
    """The model's state_dict names -> (shape, dtype), as the fit check compares them."""
    if model is None:
        return {}
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}


LOAD_REFUSES = "torch.load(weights_only=True) refuses it: "


@contextmanager
def quiet_distributed_logs() -> Iterator[None]:
    """Unpickling a DeviceMesh outside a process group logs a warning meant for torch.compile
    users (no process group is needed to read the tensors): kept out of the report."""
    logger = logging.getLogger("torch.distributed")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def refuse_once(report: dict[str, Any], reason: str) -> None:
    """Add a reason unless it is there already (the scan and the load can fail the same way)."""
    if reason not in report["reasons"]:
        report["reasons"].append(reason)


def torch_contents(
    path: Path,
    report: dict[str, Any],
    standins: Callable[[], None] | None = None,
    subclasses: bool = False,
    model: nn.Module | None = None,
) -> dict[str, tuple]:
    """Load with weights_only=True (safe: nothing runs), fill in the contents; its state_dict's shapes.

    Where torch's unpickler cannot read the pickle at all (a protocol it lacks), `standins`
    lists the tensors from the pickle's opcodes instead, loading nothing. A file of tensor
    subclasses (DTensors) is loaded without the map_location function that notes each
    storage's device: torch rebuilds subclasses only without one."""
    locations: dict[int, str] = {}

    def note_device(storage: Any, location: str) -> Any:
        locations[storage.data_ptr()] = location
        return storage

    try:
        with warnings.catch_warnings(), quiet_distributed_logs():
            warnings.simplefilter("ignore")
            mmap = report["kind"] != "legacy-torch"  # torch maps zip archives only
            where = None if subclasses else note_device
            obj = torch.load(path, map_location=where, weights_only=True, mmap=mmap)
    except Exception as err:  # any failure of a file from anywhere is a finding, not a crash
        report["needs"]["weights_only"] = f"refused: {describe_load_error(err)}"
        refuse_once(report, LOAD_REFUSES + describe_load_error(err))
        if standins is not None and UNREADABLE_OPCODE in str(err):
            standins()
        return {}
    report["needs"]["weights_only"] = "loads"
    listing = Listing(locations)
    listing.add(obj)
    for group in listing.storages.values():
        for row in group:
            row["shares"] = [other["name"] for other in group if other is not row] or None
    report["contents"]["tensors"] = listing.rows
    # a view's bytes are part of its storage's; the largest view stands for the storage
    report["contents"]["storage_bytes"] = sum(
        max(r["bytes"] for r in group) for group in listing.storages.values()
    ) + sum(n for address, n in listing.component_bytes.items() if address not in listing.storages)
    if listing.too_deep:
        report["contents"]["note"] = f"containers nested deeper than {MAX_DEPTH} levels are not listed"
    if listing.cut_off:
        report["contents"]["note"] = f"only the first {MAX_OBJECTS} containers were walked"
    if listing.odd:
        report["reasons"].append(f"not plain dense tensors with data: {', '.join(listing.odd[:5])}")
    if listing.malformed:
        report["reasons"].append(f"malformed sparse tensors: {', '.join(listing.malformed[:3])}")
    elif listing.sparse:
        report["caveats"].append(
            f"sparse tensors ({', '.join(listing.sparse[:5])}): their indices were checked here; "
            "torch 2.13 checks them only inside "
            "`with torch.sparse.check_sparse_tensor_invariants():` (2.15 always does), so load it that way"
        )
    if overlap := overlapping_views(listing.spans):
        report["reasons"].append(
            f"{overlap[0]} and {overlap[1]} overlap in memory: one weight's values seen twice"
        )
    if listing.non_finite:
        report["reasons"].append(f"NaN or infinite values in {', '.join(listing.non_finite[:5])}")
    key, state, others = state_dict_in(obj, expected_shapes(model))
    if isinstance(obj, Mapping) and (state is None or key):
        report["contents"]["top_level"] = {safe_text(k, 60): summary(v) for k, v in list(obj.items())[:40]}
    for holder in (obj, state):
        args = holder.get("model_args") if isinstance(holder, Mapping) else None
        if isinstance(args, Mapping):
            report["metadata"]["model_args"] = {safe_text(k, 40): summary(v) for k, v in args.items()}
        versions = getattr(holder, "_metadata", None)
        if isinstance(versions, Mapping) and all(isinstance(v, Mapping) for v in versions.values()):
            report["metadata"]["_metadata"] = f"module versions for {len(versions)} modules"
        elif versions is not None:
            report["reasons"].append("its state_dict's _metadata is malformed: load_state_dict would fail")
    if key:
        report["contents"]["state_dict_key"] = key
    if others:
        report["contents"]["other_state_dicts"] = [safe_text(other, 60) for other in others]
    return {k: shape_and_dtype(v) for k, v in (state or {}).items()}


def shape_and_dtype(tensor: Tensor) -> tuple[tuple[int, ...], str]:
    """Shape and dtype as the fit check compares them; a layout other than a dense tensor's is
    part of the dtype, since load_state_dict cannot copy a sparse tensor into a dense parameter."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    if tensor.is_nested:
        return (), f"{dtype} (nested)"
    if tensor.layout != torch.strided:
        return tuple(tensor.shape), f"{dtype} ({str(tensor.layout).removeprefix('torch.')})"
    return tuple(tensor.shape), f"{dtype} (DTensor)" if is_dtensor(tensor) else dtype


def safetensors_contents(header: dict[str, Any], report: dict[str, Any]) -> dict[str, tuple]:
    """Rows for the well-formed entries of a safetensors header (the others are problems already)."""
    rows, shapes = [], {}
    for name, entry in header.items():
        if name == "__metadata__" and isinstance(entry, dict):
            report["metadata"]["__metadata__"] = {
                safe_text(k, 40): safe_text(v, 80) for k, v in entry.items()
            }
            continue
        try:
            shape = [int(n) for n in entry["shape"] if type(n) is int]
            dtype = torch_dtype_of(entry["dtype"], shape)
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            continue
        if safetensors_entry_problem(shape, begin, end):
            continue  # a negative size or span: not a tensor to list
        rows.append(tensor_row(safe_text(name, 80), shape, dtype, "cpu", end - begin))
        shapes[name] = (tuple(shape), dtype)
    report["contents"]["tensors"] = rows
    report["contents"]["storage_bytes"] = sum(row["bytes"] for row in rows)
    return shapes


def torch_dtype_of(code: str, shape: list[int]) -> str:
    """torch's name for a safetensors dtype (its own where torch has none); an F4 tensor's
    `shape` is made torch's, two values to an element, in place."""
    name = SAFETENSORS_DTYPES[code][0]
    if code == "F4" and shape and shape[-1] % 2 == 0:
        shape[-1] //= 2
    elif code == "F4":
        return code  # an odd last dimension: torch cannot pack it (safe_open says so)
    return name or code


def safetensors_opens(path: Path, report: dict[str, Any]) -> None:
    """Let safetensors itself validate the header (it reads no tensor data to do so)."""
    from safetensors import safe_open  # the `formats` extra; without it, the checks above stand alone

    non_finite = []
    try:
        with safe_open(path, framework="pt") as opened:
            for name in sorted(opened.keys()):  # one tensor in memory at a time
                if not finite(opened.get_tensor(name)):
                    non_finite.append(safe_text(name, 80))
    except Exception as err:  # safetensors raises its own error types for a bad header
        report["reasons"].append(f"safetensors refuses it: {error_line(err)}")
    if non_finite:  # the rule torch.save files meet too
        report["reasons"].append(f"NaN or infinite values in {', '.join(non_finite[:5])}")


def finite(tensor: Tensor) -> bool:
    """False for a floating-point or complex tensor holding NaN or infinity, or a quantized
    tensor whose scales are (a dtype isfinite lacks: True)."""
    if tensor.is_quantized:
        per_channel = tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric)
        scales = tensor.q_per_channel_scales() if per_channel else torch.tensor(tensor.q_scale())
        return bool(torch.isfinite(scales).all())
    try:
        checked = tensor.is_floating_point() or tensor.is_complex()
        return not checked or bool(torch.isfinite(tensor).all())
    except RuntimeError:  # float8, float4: not checked
        return True


def pt2_contents(archive: zipfile.ZipFile, folder: str, report: dict[str, Any]) -> dict[str, tuple]:
    """torch.export's weights, from the JSON config that describes them."""
    name = f"{folder}/data/weights/model_weights_config.json"
    if name not in archive.namelist() or archive.getinfo(name).file_size > MAX_HEADER_BYTES:
        return {}
    try:
        config = dict(json.loads(archive.read(name))["config"])
    except (KeyError, TypeError, *ZIP_ERRORS):
        report["reasons"].append("its weights config is malformed")
        return {}
    rows, shapes, pickled = [], {}, []
    for key, entry in config.items():
        try:
            meta = entry["tensor_meta"]
            shape = [int(size["as_int"]) for size in meta["sizes"]]
            dtype = PT2_DTYPES.get(meta["dtype"], safe_text(f"code {meta['dtype']}", 20))
            device = safe_text(meta["device"]["type"], 20)
            record = f"{folder}/data/weights/{entry['path_name']}"
        except (KeyError, TypeError, ValueError):
            report["reasons"].append(f"its weights config entry for {safe_text(key, 80)} is malformed")
            continue
        if any(n < 0 for n in shape):
            report["reasons"].append(
                f"its weights config gives {safe_text(key, 80)} a negative dimension: shape {shape}"
            )
            continue
        nbytes = archive.getinfo(record).file_size if record in archive.namelist() else 0
        rows.append(tensor_row(safe_text(key, 80), shape, dtype, device, nbytes))
        shapes[key] = (tuple(shape), dtype)
        if entry.get("use_pickle"):
            pickled.append(safe_text(key, 80))
    report["contents"]["tensors"] = rows
    report["contents"]["storage_bytes"] = sum(row["bytes"] for row in rows)
    if pickled:
        report["needs"]["pickled_weights"] = pickled
    return shapes


# ---- What would loading it need? ----
#
# `torch.serialization.get_unsafe_globals_in_checkpoint` lists, without running anything,
# the classes and functions a torch.save file names beyond what `weights_only=True`
# allows; those are what `torch.serialization.safe_globals([...])` would have to allow.
# Only allow classes you trust: a name like `builtins.exec` is code, not data, and so is
# any function a file can call with arguments of its choosing. numpy's array and dtype
# rebuilders are neither: they rebuild data, and are allowed only for a file whose source
# you trust. The one allowlist given as such is a library's own, for a file it writes and
# loads itself (accelerate's random_states_0.pkl, transformers' rng_state.pth), named as
# that library's (support/known_allowlists.py). A plain pickle gets the same answer from a
# scan of its opcodes.


def weights_only_names() -> frozenset[str]:
    """The globals `weights_only=True` allows: the tensor, storage and dtype rebuilders."""
    try:  # a private table: fall back to the names every torch.save file of tensors uses
        from torch._weights_only_unpickler import _get_allowed_globals

        return frozenset(_get_allowed_globals())
    except (ImportError, AttributeError, TypeError):
        return frozenset(torch_archives.TENSOR_REBUILDERS | {"collections.OrderedDict", "torch.Size"})


KNOWN_DATA_GLOBALS = weights_only_names()


def as_torch_reads(name: str) -> str:
    """The name as torch's unpickler looks it up: a protocol-2 pickle's Python 2 names are
    mapped first, as pickle does (`__builtin__.set` is `builtins.set`, `commands.getoutput`
    is `subprocess.getoutput`)."""
    module, _, attribute = name.rpartition(".")
    module, attribute = NAME_MAPPING.get((module, attribute), (IMPORT_MAPPING.get(module, module), attribute))
    return f"{module}.{attribute}" if module else attribute


def rebuilds_data(name: str) -> bool:
    """True for numpy's rebuilders of arrays, dtypes and scalars (NUMPY_DATA_REBUILDERS)."""
    module, _, attribute = as_torch_reads(name).rpartition(".")
    return f"{module}.{attribute}" in NUMPY_DATA_REBUILDERS or (
        module == "numpy.dtypes" and attribute.isidentifier() and attribute.endswith("DType")
    )


def registered_by_torch(name: str) -> str | None:
    """The torch module whose import allows `name` for weights_only (it calls add_safe_globals)."""
    return known_allowlists.TORCH_REGISTERS_ON_IMPORT.get(as_torch_reads(name))


def runs_code(name: str) -> bool:
    """True for a function, a gadget or anything but a class outside the names weights_only
    allows and numpy's data rebuilders: unpickling calls it with arguments the file chooses,
    so any such function (`timeit.timeit`, `pydoc.locate`, `operator.methodcaller`, ...) can
    run code. A class (a CapWords name outside the modules that run commands) is listed for
    safe_globals instead."""
    if as_torch_reads(name) in KNOWN_DATA_GLOBALS or rebuilds_data(name) or registered_by_torch(name):
        return False
    module, _, attribute = as_torch_reads(name).rpartition(".")
    if not all(part.isidentifier() for part in name.split(".")) or not module:
        return True
    if module == "builtins" and attribute in RUNS_CODE_BUILTINS:
        return True
    if any(f"{part}." in RUNS_CODE_MODULES for part in module.split(".")):  # pathlib.os.system too
        return True
    return not attribute.lstrip("_")[:1].isupper()  # _StorageInfo is a class too


def note_globals(
    report: dict[str, Any], found: list[str], unsafe: list[str] | None, file_name: str = ""
) -> None:
    """Record the globals found; `unsafe` (those weights_only would refuse) is None where
    weights_only does not apply at all (a plain pickle, DCP's .metadata). For a file that a
    known library writes and loads with names of its own allowed (support/known_allowlists),
    the names on that library's list are its advice, not a guess of this tool's."""
    needs = report["needs"]
    needs["globals"] = sorted(safe_text(name, 100) for name in found)
    library = known_allowlists.library_load(file_name, unsafe) if unsafe is not None else None
    if library:
        needs["library_load"] = {**library, "refuses": [safe_text(name, 100) for name in library["refuses"]]}
    covered = set(library["allows"]) if library and not library["refuses"] else set()
    named = [name for name in (found if unsafe is None else unsafe) if name not in covered]
    needs["never_allow"] = [safe_text(name, 100) for name in named if runs_code(name)]
    needs["data_only"] = [safe_text(name, 100) for name in named if rebuilds_data(name)]
    if unsafe is not None:
        needs["not_allowed_by_weights_only"] = [safe_text(name, 100) for name in unsafe]
        needs["safe_globals_needed"] = [
            safe_text(name, 100)
            for name in named
            if not runs_code(name) and not rebuilds_data(name) and not registered_by_torch(name)
        ]
        for name in unsafe:  # torch allows these itself, once the module that registers them is imported
            if module := registered_by_torch(name):
                needs.setdefault("import_first", {}).setdefault(module, []).append(safe_text(name, 100))


def distributed_names(data_pkl: bytes) -> list[str]:
    """The torch.distributed classes a pickle names (DTensor's), beyond what weights_only allows
    by default: importing torch.distributed.tensor allows DTensor's, in any later load."""
    names = pickle_globals(data_pkl, limit=200, pickles=100)
    return [
        name for name in names if name.startswith("torch.distributed.") and name not in KNOWN_DATA_GLOBALS
    ]


def import_distributed_tensor() -> bool:
    """Import torch.distributed.tensor, torch's own code (not the file's): it registers DTensor,
    DeviceMesh and their placements with torch.serialization.add_safe_globals, so that
    weights_only loads can rebuild them. False where this torch has no torch.distributed."""
    if not torch.distributed.is_available():
        return False
    try:
        importlib.import_module("torch.distributed.tensor")
    except ImportError:
        return False
    return True


def note_distributed(report: dict[str, Any], names: list[str]) -> None:
    """A file of DTensors that loaded once torch.distributed.tensor was imported: that import is
    what its reader needs, since a plain torch.load(weights_only=True) refuses it without.
    Whether this process imported it before does not matter: the names are judged against
    what weights_only allows by default."""
    needs = report["needs"]
    if needs.get("weights_only") != "loads":
        return  # refused even so: its reasons say why
    beyond = needs.get("not_allowed_by_weights_only") or []
    needs["not_allowed_by_weights_only"] = sorted({*beyond, *(safe_text(name, 100) for name in names)})
    needs["import_first"] = {"torch.distributed.tensor": sorted(safe_text(name, 100) for name in names)}
    needs["weights_only"] = "loads once torch.distributed.tensor is imported (tried); not before"
    classes = sorted({safe_text(name.rpartition(".")[2], 40) for name in names})
    report["reasons"].append(
        f"it holds DTensors: torch.load(weights_only=True) refuses their classes ({', '.join(classes[:6])}) "
        "unless torch.distributed.tensor is imported first, which allows them; "
        "`import torch.distributed.tensor` and then torch.load(path, weights_only=True) loads it (tried)"
    )


UNREADABLE_OPCODE = "Unsupported operand"  # what torch's weights_only unpickler says of an opcode it lacks


def torch_needs(path: Path, data_pkl: bytes, report: dict[str, Any], file_name: str) -> None:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # it parses the pickle itself: a damaged one can fail in any way
        if UNREADABLE_OPCODE in str(err):  # the load stops at the same opcode: one reason for both
            refuse_once(report, LOAD_REFUSES + describe_load_error(err))
        else:
            report["reasons"].append(f"its pickle cannot be scanned: {describe_load_error(err)}")
        note_globals(report, pickle_globals(data_pkl, limit=200, pickles=100), None)
        report["needs"]["not_allowed_by_weights_only"] = None  # unknown: never "nothing"
        return
    note_globals(report, pickle_globals(data_pkl, limit=200, pickles=100), sorted(unsafe), file_name)


# ---- Does it fit your model? ----
#
# The report `load_state_dict` would give, without loading anything into the model: the
# model is built on the meta device (shapes only, no memory), and the file's names and
# shapes are compared with the model's. When every name differs by the same prefix, such
# as `module.` (DataParallel/DDP) or `_orig_mod.` (torch.compile), the report says which
# prefix to strip or add.


def model_to_check(args: argparse.Namespace) -> tuple[str, nn.Module | None]:
    """The model named on the command line, built on the meta device; fails in one line."""
    kwargs = {}
    for item in args.model_args:
        name, equals, text = item.partition("=")
        if not equals or not name.isidentifier():
            fail(f"--model-args takes NAME=VALUE, got {item!r}")
        try:
            kwargs[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            kwargs[name] = text
    if args.model_args and not (args.model or args.model_file):
        fail("--model-args needs --model or --model-file")
    if args.model_file:
        if not args.model_class:
            fail("--model-file needs --model-class NAME")
        model_class = load_model_class(args.model_file, args.model_class)
    elif args.model:
        model_class = Multiclass
    else:
        return "", None
    described = f"{model_class.__name__}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        with torch.device("meta"):
            return described, model_class(**kwargs)
    except Exception as err:  # the reader's own constructor, with the reader's arguments
        fail(f"cannot build {safe_text(described)}: {error_line(err)}")


def load_model_class(path: Path, name: str) -> type[nn.Module]:
    """Import the reader's own model file (this runs it) and return the class `name`."""
    spec = importlib.util.spec_from_file_location("reader_model", path)
    if spec is None or spec.loader is None or not path.is_file():
        fail(f"--model-file {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.resolve().parent))  # so it can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as err:  # the reader's code: report its failure in one line
        fail(f"--model-file {path} failed: {error_line(err)}")
    finally:
        sys.path.pop(0)
    model_class = getattr(module, name, None)
    if not (isinstance(model_class, type) and issubclass(model_class, nn.Module)):
        fail(f"{path} defines no nn.Module class named {name}")
    return model_class


def prefix_fix(file_keys: set[Any], model_keys: set[str]) -> tuple[str, str] | None:
    """('strip', 'module.') or ('add', 'net.') if that one change to the file's names makes them match."""
    if not all(isinstance(key, str) for key in file_keys):  # a key a module could never have
        return None
    for keys, others, verb in ((file_keys, model_keys, "strip"), (model_keys, file_keys, "add")):
        first = next(iter(keys), "").split(".")
        for parts in range(1, min(4, len(first))):
            prefix = ".".join(first[:parts]) + "."
            if all(k.startswith(prefix) for k in keys) and {k.removeprefix(prefix) for k in keys} == others:
                return verb, safe_text(prefix, 60)
    return None


def tensor_text(shape: tuple[int, ...], dtype: str) -> str:
    return f"{shape_text(list(shape))} {dtype}"


def check_fit(shapes: dict[str, tuple], described: str, model: nn.Module, report: dict[str, Any]) -> None:
    expected = {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()
    }
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    mismatched = [
        {"name": safe_text(k, 80), "file": tensor_text(*shapes[k]), "model": tensor_text(*v)}
        for k, v in expected.items()
        if k in shapes and (tuple(shapes[k][0]), shapes[k][1]) != v
    ]
    fix, how = None, None
    if missing and unexpected and (found := prefix_fix(set(shapes), set(expected))):
        verb, prefix = found
        fix = f"{verb} the prefix '{prefix}'"
        renamed = f"k.removeprefix('{prefix}')" if verb == "strip" else f"'{prefix}' + k"
        how = f"state = {{{renamed}: v for k, v in state.items()}}"
    report["fit"] = {
        "model": described,
        "fits": not (missing or unexpected or mismatched),
        "missing": [safe_text(k, 80) for k in missing],
        "unexpected": [safe_text(k, 80) for k in unexpected],
        "mismatched": mismatched,
        "prefix_fix": fix,
        "prefix_code": how,
    }
    if not report["fit"]["fits"]:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mismatched"
        report["reasons"].append(f"it does not fit {described}: {counts}{f'; {fix}' if fix else ''}")


# ---- Putting the report together ----


def new_report(path: Path, size: int) -> dict[str, Any]:
    return {
        "path": safe_text(path, 300),
        "bytes": size,
        "format": "",
        "kind": "",
        "integrity": {"records": [], "problems": [], "notes": []},
        "contents": {},
        "metadata": {},
        "needs": {},
        "fit": None,
        "reasons": [],
        "caveats": [],
    }


def inspect_zip(
    path: Path, file: Any, size: int, report: dict[str, Any], name: str, model: nn.Module | None = None
) -> dict[str, tuple]:
    """A zip archive; `path` is the snapshot to read, `name` the file's own name."""
    try:
        archive = zipfile.ZipFile(file)
    except ZIP_ERRORS:
        report["kind"], report["format"] = "zip", "a zip archive, cut short or damaged (no central directory)"
        report["reasons"].append("the file is truncated or corrupted (its zip archive is incomplete)")
        return {}
    kind, folder = zip_layout(archive)
    kind = other_formats.zip_kind(archive) if kind == "zip" else kind
    deflates = kind in ("torchscript", "npz", "keras")  # their writers compress records on purpose
    records, problems = (torch_archives.inflated_records if deflates else check_records)(archive, size)
    problems += zip_structure_problems(file, size, archive)
    report["integrity"].update(records=records, problems=problems)
    report["reasons"] += problems

    def text_of(name: str) -> str:
        full = f"{folder}/{name}"
        try:
            if archive.getinfo(full).file_size <= 64:
                return safe_text(
                    stored_bytes(file, archive.getinfo(full)).decode(errors="replace").strip(), 20
                )
        except (KeyError, *ZIP_ERRORS):
            pass  # absent, or damaged: the integrity check reports it
        return ""

    report["kind"] = kind
    version = text_of("version") or text_of(".data/version") or "?"
    byteorder = text_of("byteorder") or "not recorded (little-endian assumed)"
    if kind == "torch-zip":
        report["format"] = f"torch.save zip archive, format version {version}, byte order {byteorder}"
        pickle_info = archive.getinfo(f"{folder}/data.pkl")
        if pickle_info.file_size > MAX_PICKLE_BYTES or pickle_info.compress_type != zipfile.ZIP_STORED:
            report["reasons"].append(f"its data.pkl has {pickle_info.file_size} bytes: not scanned or loaded")
            report["needs"]["weights_only"] = f"not tried: data.pkl is over {MAX_PICKLE_BYTES} bytes"
            return {}
        data_pkl = stored_bytes(file, pickle_info)
        if too_much := pickle_budget_problem(data_pkl):  # not even scanned: reading it would take long
            report["reasons"].append(too_much)
            report["needs"]["weights_only"] = "not tried: its pickle is too large to scan"
            return {}
        try:
            forged = torch_archives.torch_zip_problems(archive, folder)
        except ModelFileError as err:
            forged = [str(err)]
        except ZIP_ERRORS:
            forged = []  # a damaged record: its CRC32 check above says so
        problems += forged
        report["reasons"] += forged
        if distributed := distributed_names(data_pkl):  # DTensors: torch's own module allows them
            import_distributed_tensor()
        torch_needs(path, data_pkl, report, name)
        if problems:
            report["needs"]["weights_only"] = "not tried: the file failed the integrity checks"
            return {}
        try:  # a pickle nested thousands of levels deep would crash the load itself
            check_pickle_nesting(file, is_zip=True)
        except ModelFileError as err:
            report["needs"]["weights_only"] = f"not tried: {err}"
            report["reasons"].append(str(err))
            return {}
        shapes = torch_contents(
            path,
            report,
            standins=lambda: standin_contents(archive, folder, report),
            subclasses=bool(distributed),
            model=model,
        )
        if distributed:
            note_distributed(report, distributed)
        return shapes
    if kind == "torch-package":
        return package_contents(archive, folder, report)
    if kind == "aoti":
        report["format"] = (
            f"AOTInductor package (.pt2 with compiled code), archive format {text_of('archive_format')}"
        )
        aoti_contents(archive, folder, report)
        return pt2_contents(archive, folder, report)
    if kind == "pt2":
        report["format"] = f"torch.export program (.pt2), archive format {text_of('archive_format')}"
        report["reasons"].append(
            "a torch.export program, not a weights file: torch.export.load may fall back to "
            "torch.load(weights_only=False) on its pickled parts; load it only if you trust its source"
        )
        report["needs"]["weights_only"] = "not applicable: torch.export.load reads it, not torch.load"
        return pt2_contents(archive, folder, report)
    if kind == "torchscript":
        report["format"] = "TorchScript archive (torch.jit.save)"
        report["reasons"].append("TorchScript: torch.jit.load runs the code stored in it")
        report["needs"]["weights_only"] = "not applicable: torch.jit.load reads it, not torch.load"
        return torchscript_contents(archive, folder, report)
    if kind == "npz":
        other_formats.inspect_numpy(file, size, report, archive)
        return {}
    if kind == "keras":
        other_formats.inspect_keras(report)
        return {}
    report["format"] = "a zip archive, but not one that torch.save wrote"
    report["reasons"].append("not a model file")
    return {}


def listed(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def package_contents(archive: zipfile.ZipFile, folder: str, report: dict[str, Any]) -> dict[str, tuple]:
    """A torch.package archive: the Python source it carries, its pickles and what they import.

    torch.package.PackageImporter imports the packaged modules from their source in the
    archive, and unpickles each object with them: loading it runs that code, and the pickles
    may name any function besides. Nothing here is imported or unpickled."""
    report["format"] = "torch.package archive (torch.package.PackageExporter)"
    inside = [name.removeprefix(f"{folder}/") for name in archive.namelist()]
    sources = sorted(safe_text(name, 100) for name in inside if name.endswith(".py"))
    pickles = sorted(name for name in inside if name.endswith(".pkl"))
    found: list[str] = []
    for name in pickles:
        info = archive.getinfo(f"{folder}/{name}")
        if info.file_size <= MAX_PICKLE_BYTES and info.compress_type == zipfile.ZIP_STORED:
            with contextlib.suppress(*ZIP_ERRORS):  # a damaged record: its CRC32 check says so
                found += pickle_globals(archive.read(info), limit=200)
    note_globals(report, list(dict.fromkeys(found)), None)
    report["metadata"]["code"] = f"{len(sources)} Python files: {listed(sources, 6) or 'none'}"
    report["metadata"]["pickles"] = listed([safe_text(name, 100) for name in pickles], 6) or "none"
    report["needs"]["weights_only"] = "not applicable: torch.package.PackageImporter reads it, not torch.load"
    report["reasons"].append(
        f"a torch.package archive, a format that carries code: torch.package.PackageImporter imports the "
        f"Python source in it ({listed(sources) or 'none'}) and unpickles "
        f"{listed([safe_text(name, 100) for name in pickles]) or 'its objects'} with it, running that code; "
        "there is no safe way to load it: read its source, and load it only if you trust where it came from"
    )
    return {}


def aoti_contents(archive: zipfile.ZipFile, folder: str, report: dict[str, Any]) -> None:
    """An AOTInductor package: the compiled libraries it carries, and what could read the rest.

    torch._inductor.aoti_load_package (and torch.export.pt2_archive's load_pt2) extract each
    model's shared library and load it into the process: its code runs, with the process's
    rights. torch.export.load reads only an exported program (models/*.json), which
    aoti_compile_and_package does not store."""
    inside = [name.removeprefix(f"{folder}/") for name in archive.namelist()]
    compiled = [name for name in inside if name.startswith(AOTI_FOLDER)]
    native = [safe_text(name, 100) for name in compiled if name.endswith(NATIVE_CODE)]
    sources = [safe_text(name, 100) for name in compiled if name.endswith((".cpp", ".h", ".py"))]
    models = sorted({safe_text(name.removeprefix(AOTI_FOLDER).partition("/")[0], 60) for name in compiled})
    programs = [
        safe_text(name, 100) for name in inside if name.startswith("models/") and name.endswith(".json")
    ]
    report["metadata"]["code"] = (
        f"{len(native)} compiled files: {listed(native) or 'none'}; "
        f"{len(sources)} sources: {listed(sources) or 'none'}"
    )
    report["metadata"]["aoti_models"] = ", ".join(models)
    report["needs"]["weights_only"] = (
        "not applicable: torch._inductor.aoti_load_package reads it, not torch.load"
    )
    report["reasons"].append(
        f"an AOTInductor package, a format that carries code: torch._inductor.aoti_load_package loads "
        f"its compiled library ({listed(native) or 'none found'}) into the process, and that runs; "
        "there is no safe way to load it: use it only if you trust where it came from"
    )
    if programs:
        report["reasons"].append(
            f"it also holds an exported program ({listed(programs)}), which torch.export.load reads; "
            "torch.export.load may fall back to torch.load(weights_only=False) on its pickled parts"
        )
    else:
        report["reasons"].append(
            "it holds no exported program (models/*.json): torch.export.load cannot read it"
        )


def inspect_pickle_file(data: bytes, report: dict[str, Any]) -> None:
    names = pickle_globals(data, limit=200)
    note_globals(report, names, None)
    complete = any(op.name == "STOP" for op, _, _ in safe_ops(data))
    if not complete:
        report["integrity"]["problems"].append("the pickle is cut short or malformed (no STOP)")
    else:
        report["integrity"]["notes"].append("the pickle reads through to its STOP opcode: not cut short")
    report["needs"]["weights_only"] = "no: torch.load cannot read a plain pickle; pickle.load would run it"
    report["reasons"] += report["integrity"]["problems"]
    report["reasons"].append("a plain pickle: only pickle.load reads it, and that runs whatever it names")


def inspect_legacy(
    path: Path, file: Any, size: int, report: dict[str, Any], model: nn.Module | None = None
) -> dict[str, tuple]:
    """Its pickles read with stand-ins, every storage record checked against them, then loaded."""
    caveat = "the legacy format has no checksums: damage inside the weights cannot be detected"
    report["integrity"]["notes"].append(caveat)
    report["caveats"].append(f"{caveat}; re-save it with torch.save to get them")
    try:
        layout = torch_archives.read_legacy(file, size)
    except ModelFileError as err:
        report["needs"]["weights_only"] = f"not tried: {err}"
        report["reasons"].append(str(err))
        return {}
    report["integrity"]["problems"] += layout.problems
    report["reasons"] += layout.problems
    if layout.problems:
        report["needs"]["weights_only"] = "not tried: the file failed the layout checks"
        return {}
    report["integrity"]["notes"].append(
        f"its {len(layout.storages)} storage records hold exactly the values its data declares"
    )
    return torch_contents(path, report, model=model)


def torchscript_contents(archive: zipfile.ZipFile, folder: str, report: dict[str, Any]) -> dict[str, tuple]:
    """The tensors a TorchScript archive's data.pkl names, read with stand-ins; its code files."""
    try:
        found, code = torch_archives.read_torchscript(archive, folder)
    except ModelFileError as err:
        report["reasons"].append(str(err))
        return {}
    storages = {t.storage.key: t.storage for t in found.tensors}
    for key, ref in storages.items():
        record = f"{folder}/data/{key}"
        held = archive.getinfo(record).file_size if record in archive.namelist() else 0
        if held < ref.nbytes:
            report["reasons"].append(f"storage {key} needs {ref.nbytes} bytes; its record holds {held}")
    list_standins(found, report)
    report["metadata"]["code"] = f"{len(code)} files: {', '.join(code[:6])}{', ...' if len(code) > 6 else ''}"
    return {t.name: (tuple(t.shape), t.storage.dtype) for t in found.tensors}


def list_standins(found: torch_archives.Found, report: dict[str, Any]) -> None:
    """The contents, from tensors named in a pickle read with stand-ins."""
    storages = {t.storage.key: t.storage for t in found.tensors}
    report["contents"]["tensors"] = [
        tensor_row(t.name, t.shape, t.storage.dtype, t.storage.location, math.prod(t.shape) * t.storage.width)
        for t in found.tensors
    ]
    report["contents"]["storage_bytes"] = sum(ref.nbytes for ref in storages.values())
    if found.cut_off:
        report["contents"]["note"] = f"only the first {torch_archives.MAX_OBJECTS} objects were walked"


def standin_contents(archive: zipfile.ZipFile, folder: str, report: dict[str, Any]) -> None:
    """The tensors a torch.save file's data.pkl names, read with stand-ins: for a pickle that
    torch.load(weights_only=True) cannot read, what it holds all the same (nothing is loaded)."""
    try:
        obj, _ = torch_archives.read_pickle(io.BytesIO(archive.read(f"{folder}/data.pkl")))
    except (ModelFileError, *ZIP_ERRORS):
        return  # its integrity checks read it already: not reached for a malformed one
    list_standins(torch_archives.name_tensors(obj), report)
    report["contents"].setdefault("note", "read from data.pkl with stand-ins, not loaded")


def legacy_globals(data: bytes) -> list[str]:
    """The globals of every pickle in a legacy file (magic, protocol, sys info, object, keys):
    a payload may sit in any of them, not only the object's."""
    return pickle_globals(data, limit=200, pickles=LEGACY_PICKLES)


def safe_ops(data: bytes) -> list[tuple]:
    """The opcodes of the first pickle in `data`, up to the first malformed one."""
    ops = []
    try:
        for op in pickletools.genops(data):
            ops.append(op)
            if op[0].name == "STOP":
                break
    except (ValueError, EOFError):
        pass
    return ops


def inspect_dcp(folder: Path, report: dict[str, Any]) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    report["kind"], report["format"] = "dcp", "torch.distributed.checkpoint folder"
    report["integrity"]["records"] = [
        {"name": safe_text(p.name, 80), "bytes": p.stat().st_size} for p in files
    ]
    report["bytes"] = sum(p.stat().st_size for p in files)
    metadata = folder / ".metadata"
    if metadata.stat().st_size <= MAX_PICKLE_BYTES:
        with open_regular_file(metadata) as f:
            names = pickle_globals(f.read(MAX_PICKLE_BYTES), limit=200)
        note_globals(report, names, None)
    report["needs"]["weights_only"] = "no: torch.distributed.checkpoint reads .metadata with pickle.load"
    report["integrity"]["notes"].append("DCP stores no checksums: damage cannot be detected")
    report["reasons"].append(
        "DCP reads its .metadata with pickle.load, which runs any code in it; "
        "load it only if you trust its source"
    )


@contextmanager
def snapshot_of(file: IO[bytes]) -> Iterator[Path]:
    """A path to the very file `file` has open, for the readers that open a path themselves
    (zipfile, torch.load, safe_open): every verdict is then about one version of its bytes,
    even if the name is pointed at another file meanwhile. On Linux, /proc/self/fd/N opens
    the same inode again; elsewhere, a private copy of what the descriptor reads."""
    same_inode = Path(f"/proc/self/fd/{file.fileno()}")
    if same_inode.exists():
        yield same_inode
        return
    with tempfile.TemporaryDirectory() as private:  # mode 0700: nobody else can swap it
        copy = Path(private) / "snapshot"
        with copy.open("wb") as out, os.fdopen(os.dup(file.fileno()), "rb") as source:
            source.seek(0)
            shutil.copyfileobj(source, out)
        file.seek(0)  # the duplicate shares its position
        yield copy


def inspect_path(path: Path, described: str = "", model: nn.Module | None = None) -> dict[str, Any]:
    """The whole report for `path`, as a dict; raises ModelFileError only if it cannot be read."""
    try:
        is_folder = stat.S_ISDIR(path.stat().st_mode)
    except OSError:
        is_folder = False  # open_regular_file below says why in one line
    if is_folder:
        return inspect_folder(path, described, model)
    shapes: dict[str, tuple] = {}
    with open_regular_file(path) as file, refusing(path), snapshot_of(file) as snapshot:
        size = os.fstat(file.fileno()).st_size
        report = new_report(path, size)
        head = file.read(16)
        file.seek(0)
        kind = sniff(head)
        if kind == "zip":
            shapes = inspect_zip(snapshot, file, size, report, path.name, model)
        elif kind == "safetensors":
            report["kind"], report["format"] = (
                "safetensors",
                "safetensors (a JSON header, then raw tensor bytes)",
            )
            header, problems = safetensors_header(file, size)
            report["integrity"]["problems"] = problems
            report["reasons"] += problems
            shapes = safetensors_contents(header, report) if header else {}
            report["needs"] = {"globals": [], "weights_only": "not needed: safetensors holds no code"}
            if not problems:
                safetensors_opens(snapshot, report)
        elif kind == "legacy-torch":
            report["kind"], report["format"] = kind, "legacy torch.save format (before PyTorch 1.6)"
            note_globals(report, legacy_globals(file.read(min(size, MAX_PICKLE_BYTES))), None)
            file.seek(0)
            shapes = inspect_legacy(snapshot, file, size, report, model)
        elif kind == "pickle":
            report["kind"], report["format"] = kind, f"plain pickle, protocol {head[1]}"
            inspect_pickle_file(file.read(min(size, MAX_PICKLE_BYTES)), report)
        elif (other := other_formats.sniff_other(head, path)) == "gguf":
            other_formats.inspect_gguf(file, size, report)
        elif other == "npy":
            other_formats.inspect_numpy(file, size, report, None)
        elif other == "hdf5":
            other_formats.inspect_hdf5(report)
        elif other == "onnx":
            shapes = other_formats.inspect_onnx(path, file, size, report)
        elif other == "tflite":
            other_formats.inspect_tflite(file, size, report)
        elif other == "pte":
            other_formats.inspect_executorch(file, size, report)
        else:
            report["kind"] = "unknown"
            report["format"] = (
                "empty" if size == 0 else f"not a model file (it starts with {safe_text(head[:8])})"
            )
            report["reasons"].append("not a model file")
        if report["kind"] in ("torch-zip", "legacy-torch"):
            note_devices(snapshot, report)
    return with_fit(report, shapes, described, model)


def with_fit(
    report: dict[str, Any], shapes: dict[str, tuple], described: str, model: nn.Module | None
) -> dict:
    if model is not None and shapes:
        check_fit(shapes, described, model, report)
    elif model is not None and not report["reasons"]:
        report["reasons"].append(f"it holds no state_dict to check against {described}")
    note_training_framework(report)
    return report


def inspect_folder(path: Path, described: str, model: nn.Module | None) -> dict[str, Any]:
    """A DCP checkpoint (a .metadata file) or sharded weights (an index JSON and its shards)."""
    report = new_report(path, 0)
    if os.path.lexists(path / ".metadata"):
        inspect_dcp(path, report)
        return report
    index = find_index(path)
    if index is None:
        raise ModelFileError(
            f"{path} is a folder with neither a .metadata file (DCP) nor an *.index.json (sharded weights)"
        )
    with refusing(path):  # a forged index is refused in one line that names the folder
        shapes = inspect_sharded(path, index, report, inspect_path)
    return with_fit(report, shapes, described, model)


# ---- The readable report ----


def show(text: str = "") -> None:
    """Print a part of the report with everything in it made inert on a terminal: a control
    character, an escape sequence or a bidirectional mark taken from the file is shown
    escaped, so a name or a device tag cannot forge a line, clear the screen or reorder text."""
    body = text.lstrip("\n")  # blank lines before a heading are the report's own; nothing else is
    print("\n" * (len(text) - len(body)) + safe_text(body, limit=10_000))


def shape_text(shape: list[int]) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else f"({', '.join(map(str, shape))})"


def aligned(cells: list[list[str]], right: tuple[int, ...] = ()) -> list[str]:
    """Rows of cells as lines with aligned columns; columns in `right` right-aligned."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    return lines


def print_contents(contents: dict[str, Any]) -> None:
    rows = contents.get("tensors")
    if rows is not None:
        print_tensors(contents, rows)


def print_tensors(contents: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    where = (
        f" (the state_dict is under '{contents['state_dict_key']}'" if contents.get("state_dict_key") else ""
    )
    if where and contents.get("other_state_dicts"):
        others = ", ".join(f"'{key}'" for key in contents["other_state_dicts"][:3])
        where += f"; {others} {'holds' if len(contents['other_state_dicts']) == 1 else 'hold'} another"
    where += ")" if where else ""
    show(f"\nContents   {len(rows)} tensors{where}")
    if contents.get("checkpoint_of"):
        show(f"  {contents['checkpoint_of']}")
    cells = [["name", "shape", "dtype", "device", "bytes", ""]]
    for row in rows[:MAX_ROWS]:
        shares = f"shares storage with {', '.join(row['shares'][:3])}" if row["shares"] else ""
        cells.append(
            [row["name"], shape_text(row["shape"]), row["dtype"], row["device"], str(row["bytes"]), shares]
        )
    for line in aligned(cells, right=(4,)):
        show(f"  {line}")
    if len(rows) > MAX_ROWS:
        show(f"  ... {len(rows) - MAX_ROWS} more (all of them with --json)")
    values = sum(math.prod(row["shape"]) for row in rows)
    show(f"  total: {values} values in {contents['storage_bytes']} bytes")
    if contents.get("note"):
        show(f"  ({contents['note']})")
    if contents.get("top_level"):
        show("\nTop-level keys")
        for line in aligned([[f"{key}:", value] for key, value in contents["top_level"].items()]):
            show(f"  {line}")


def print_metadata(metadata: dict[str, Any]) -> None:
    """What the file says of itself, shown whether or not its tensors are listed."""
    if metadata:
        show("\nMetadata")
        for key, value in metadata.items():
            shown = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
            show(f"  {key}: {shown}")


def print_needs(needs: dict[str, Any]) -> None:
    show("\nNeeds")
    lines = []
    if "globals" in needs:
        lines.append(["imports:", ", ".join(needs["globals"]) or "nothing"])
    if "not_allowed_by_weights_only" in needs:
        beyond = needs["not_allowed_by_weights_only"]
        shown = "not known: torch's own scan failed" if beyond is None else ", ".join(beyond) or "nothing"
        lines.append(["beyond weights_only:", shown])
    if needs.get("safe_globals_needed"):
        names = ", ".join(needs["safe_globals_needed"])
        lines.append(["safe_globals needed:", f"{names} (allow them only if you trust their code)"])
    for module, names in needs.get("import_first", {}).items():
        lines.append(
            ["import first:", f"{module} (importing it allows {', '.join(names)}: torch's own list)"]
        )
    if library := needs.get("library_load"):
        lines.append(["library's own list:", library_advice(library)])
    if needs.get("data_only"):
        names = ", ".join(needs["data_only"])
        lines.append(
            [
                "rebuild data only:",
                f"{names} (numpy's array and dtype rebuilders: they run no code of the file's choosing, "
                "but numpy parses its bytes; allow them only if you trust the file's source)",
            ]
        )
    if needs.get("never_allow"):
        lines.append(["never allow:", f"{', '.join(needs['never_allow'])} (these run code)"])
    if needs.get("import_first"):
        lines.append(["import first:", f"{', '.join(needs['import_first'])} (torch's own code)"])
    if needs.get("pickled_weights"):
        lines.append(["pickled weights:", ", ".join(needs["pickled_weights"])])
    lines.append(["weights_only=True:", needs.get("weights_only", "not applicable")])
    for line in aligned(lines):
        show(f"  {line}")


def library_advice(library: dict[str, Any]) -> str:
    """What the library that writes a file of this name allows when it loads it, in its words."""
    name, listed_in = library["library"], library["listed_in"]
    if not library["refuses"]:
        return (
            f"{name} loads this file with weights_only=True, allowing: {', '.join(library['allows'])} "
            f"(its own list, {listed_in}); numpy parses the file's bytes: "
            "allow them only if you trust the file's source"
        )
    refused = ", ".join(library["refuses"])
    if library["other_numpy_only"]:  # it builds its list from numpy.core or numpy._core, by version
        other = "2" if str(library["numpy"]).startswith("1.") else "1"
        return (
            f"{name} allows {refused} only under numpy {other}: with numpy {library['numpy']} here, "
            f"its own load refuses this file too ({listed_in})"
        )
    return f"{name}'s own load refuses this file too: {refused} is not on its list ({listed_in})"


INTACT_KINDS = (
    "torch-zip",
    "pt2",
    "aoti",
    "torch-package",
    "safetensors",
    "torchscript",
    "legacy-torch",
    "sharded-safetensors",
    "sharded-torch",
)


def print_integrity(report: dict[str, Any]) -> None:
    show("\nIntegrity")
    records, problems = report["integrity"]["records"], report["integrity"]["problems"]
    if records and "crc32" in records[0]:
        passed = sum(r["crc32"] == "ok" for r in records)
        show(f"  {len(records)} zip records, {passed} pass their CRC32 check")
    elif records and "verdict" in records[0]:
        show(f"  {len(records)} shards:")
        for line in aligned([[r["name"], f"{r['bytes']} bytes", r["verdict"]] for r in records]):
            show(f"    {line}")
    elif records:
        show(f"  {len(records)} files: {', '.join(r['name'] for r in records[:6])}")
    for note in report["integrity"]["notes"]:
        show(f"  {note}")
    for problem in problems:
        show(f"  problem: {problem}")
    if not problems and report["kind"] in INTACT_KINDS:
        show("  intact" if report["kind"] != "legacy-torch" else "  intact, as far as its layout shows")


def print_fit(fit: dict[str, Any] | None) -> None:
    if not fit:
        return
    show(f"\nFit        {fit['model']}: {'fits' if fit['fits'] else 'does NOT fit'}")
    lines = [[f"{label}:", ", ".join(fit[label])] for label in ("missing", "unexpected") if fit[label]]
    for item in fit["mismatched"]:
        lines.append(
            ["mismatch:", f"{item['name']} is {item['file']} in the file, {item['model']} in the model"]
        )
    if fit["prefix_fix"]:
        lines += [["fix:", fit["prefix_fix"]], *([["", fit["state_from"]]] if fit.get("state_from") else [])]
        lines.append(["", fit["prefix_code"]])
    elif fit.get("state_from"):  # the weights are under a key of the checkpoint: how to take them
        lines.append(["weights:", fit["state_from"]])
    for line in aligned(lines) if lines else []:
        show(f"  {line}")


def print_report(report: dict[str, Any]) -> None:
    show(f"File       {report['path']} ({report['bytes']} bytes)")
    show(f"Format     {report['format']}")
    print_contents(report["contents"])
    print_metadata(report["metadata"])
    print_needs(report["needs"])
    print_integrity(report)
    print_fit(report["fit"])
    if report["reasons"]:
        named_only = set(report["reasons"]) == {report.get("other_format")}
        show(f"\nVerdict    {'not for torch.load' if named_only else 'refused'} (exit {EXIT_BAD_INPUT}):")
        for reason in dict.fromkeys(report["reasons"]):
            show(f"  - {reason}")
    else:
        show(f"\nVerdict    intact, and loads {loads_with(report)} (exit 0)")
        for caveat in report["caveats"]:
            show(f"  - caveat: {caveat}")


def loads_with(report: dict[str, Any]) -> str:
    if report.get("loads_with"):
        return f"with {report['loads_with']}"
    if report["kind"] in ("safetensors", "sharded-safetensors"):
        return "with safetensors" + (", shard by shard" if report["kind"] != "safetensors" else "")
    return "with torch.load(weights_only=True)" + (
        ", shard by shard" if report["kind"] == "sharded-torch" else ""
    )


# ---- Inspect the file named on the command line ----

if __name__ == "__main__":
    described, model = model_to_check(args)
    try:
        report = inspect_path(args.path, described, model)
    except ModelFileError as err:
        fail(err)
    except (OSError, RecursionError, MemoryError) as err:
        fail(f"cannot inspect {args.path}: {error_line(err)}")
    report["ok"] = not report["reasons"]
    try:
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print_report(report)
        sys.stdout.flush()
    except BrokenPipeError:  # `python inspect_file.py FILE | head`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    if not report["ok"]:
        raise SystemExit(EXIT_BAD_INPUT)

"""safetensors: a JSON header, then raw tensor bytes. The header must describe tensors that
tile the data area exactly; anything past the end means the file was cut short. Then
safetensors itself opens it, reading each tensor once, to check its values."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from model_inspector.report import Report, TensorRow
from model_inspector.text import error_line, safe_text
from model_inspector.torch_files import finite

MAX_HEADER_BYTES = 16 * 2**20  # a JSON header this tool parses; a large model's takes well under 1 MiB


# Every dtype of the safetensors format (its Rust crate's Dtype, 22 of them in 0.8) -> torch's
# name for it ("" where torch has none), and bits per value: safetensors counts bits, so a
# tensor of 4- or 6-bit values must fill whole bytes. torch packs two F4 values in one
# float4_e2m1fn_x2 element: the header's last dimension is twice torch's.
MAX_DIMS = 64  # dimensions of one tensor; a model's weights have a few
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
            if len(shape) > MAX_DIMS:  # a product of a million sizes would take minutes to compute
                problems.append(
                    f"tensor {shown} has {len(shape)} dimensions, more than the {MAX_DIMS} this tool reads"
                )
                continue
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


def safetensors_contents(header: dict[str, Any], report: Report) -> dict[str, tuple]:
    """Rows for the well-formed entries of a safetensors header (the others are problems already)."""
    rows, shapes = [], {}
    for name, entry in header.items():
        if name == "__metadata__" and isinstance(entry, dict):
            report.metadata["__metadata__"] = {safe_text(k, 40): safe_text(v, 80) for k, v in entry.items()}
            continue
        try:
            if len(entry["shape"]) > MAX_DIMS:
                continue  # refused by the header check: not a tensor to list
            shape = [int(n) for n in entry["shape"] if type(n) is int]
            dtype = torch_dtype_of(entry["dtype"], shape)
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            continue
        if safetensors_entry_problem(shape, begin, end):
            continue  # a negative size or span: not a tensor to list
        rows.append(TensorRow(safe_text(name, 80), shape, dtype, end - begin, "cpu"))
        shapes[name] = (tuple(shape), dtype)
    report.contents.tensors = rows
    report.contents.storage_bytes = sum(row.bytes for row in rows)
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


def safetensors_opens(path: Path, report: Report) -> None:
    """Let safetensors itself validate the header (it reads no tensor data to do so)."""
    from safetensors import safe_open  # the `formats` extra; without it, the checks above stand alone

    non_finite = []
    try:
        with safe_open(path, framework="pt") as opened:
            for name in sorted(opened.keys()):  # one tensor in memory at a time
                if not finite(opened.get_tensor(name)):
                    non_finite.append(safe_text(name, 80))
    except Exception as err:  # safetensors raises its own error types for a bad header
        report.reasons.append(f"safetensors refuses it: {error_line(err)}")
    if non_finite:  # the rule torch.save files meet too
        report.reasons.append(f"NaN or infinite values in {', '.join(non_finite[:5])}")

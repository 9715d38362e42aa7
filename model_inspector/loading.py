"""The one safe load every chapter uses on a file it did not make: the checks, then
`torch.load(weights_only=True)`, with its device tags noted and judged."""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from model_inspector.checkpoints import device_problem
from model_inspector.files import (
    LEGACY_MAGIC,
    MAX_FILE_BYTES,
    MAX_PICKLE_BYTES,
    PICKLE_PROTOCOL,
    ZIP_MAGIC,
    ModelFileError,
    describe_load_error,
    open_regular_file,
    refusing,
)
from model_inspector.pickles import check_pickle_nesting, is_pickle, pickle_globals
from model_inspector.text import safe_text
from model_inspector.zips import check_zip_records


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

"""torch.save files, zip and legacy, and plain pickles: what they hold and need.

`torch.load(weights_only=True, mmap=True)` rebuilds tensors and plain containers only,
and maps the weights from the file instead of reading them in; a `map_location` function
notes the device each storage was saved from. It is called only after the file's
checksums, sizes and pickle have been checked."""

from __future__ import annotations

import importlib
import importlib.util
import io
import itertools
import logging
import math
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from model_inspector import standins
from model_inspector.files import ZIP_ERRORS, ModelFileError, describe_load_error
from model_inspector.fit import expected_shapes
from model_inspector.pickles import KNOWN_DATA_GLOBALS, note_globals, pickle_globals, safe_ops
from model_inspector.report import Report, TensorRow, refuse_once
from model_inspector.text import error_line, safe_text

MAX_DEPTH = 32  # containers nested deeper than this are not listed


MAX_OBJECTS = standins.MAX_OBJECTS  # containers walked when listing a loaded file's tensors


@dataclass
class Listing:
    """The tensors found in a loaded file, and the storages they view."""

    locations: dict[int, str]  # storage address -> the device it was saved from
    rows: list[TensorRow] = field(default_factory=list)
    storages: dict[int, list[TensorRow]] = field(default_factory=dict)
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
            self.rows[-1].shape, self.rows[-1].dtype = list(tensor.shape), f"{dtype} (DTensor)"
            return
        if hasattr(type(tensor), "__tensor_flatten__"):  # a wrapper of other tensors: torchao's, say
            self.add_wrapper(tensor, name, dtype)
            return
        if tensor.is_nested or tensor.layout != torch.strided or tensor.device.type == "meta":
            kind = "nested" if tensor.is_nested else "meta" if tensor.device.type == "meta" else tensor.layout
            shape = [] if tensor.is_nested else list(tensor.shape)
            self.rows.append(TensorRow(name, shape, f"{dtype} ({str(kind).removeprefix('torch.')})", 0))
            self.odd.append(f"{name} ({str(kind).removeprefix('torch.')})")
            return
        address = tensor.untyped_storage().data_ptr()
        row = TensorRow(name, list(tensor.shape), dtype, 0, self.locations.get(address, str(tensor.device)))
        row.bytes = tensor.numel() * tensor.element_size()
        self.rows.append(row)
        repeated = any(
            stride == 0 and size > 1 for stride, size in zip(tensor.stride(), tensor.shape, strict=True)
        )
        if repeated:
            self.odd.append(f"{name} (one value repeated: a view with strides {tuple(tensor.stride())})")
        start = tensor.storage_offset() * tensor.element_size()
        self.spans.setdefault(address, []).append((start, start + row.bytes, tensor.stride(), name))
        if address and tensor.untyped_storage().nbytes():
            self.storages.setdefault(address, []).append(row)
        if not finite(whole_storage(tensor) if repeated else tensor):  # a view's values may be billions
            self.non_finite.append(name)

    def add_wrapper(self, tensor: Tensor, name: str, dtype: str) -> None:
        """A tensor subclass made of other tensors (torchao's int8 weights: values and scales),
        listed as one row of its class, its parts' bytes counted and their values checked."""
        attributes, _ = tensor.__tensor_flatten__()
        parts = [part for part in (getattr(tensor, a, None) for a in attributes) if isinstance(part, Tensor)]
        address = parts[0].untyped_storage().data_ptr() if parts else 0
        kind = safe_text(type(tensor).__name__, 40)
        row = TensorRow(name, list(tensor.shape), f"{dtype} ({kind})", 0, self.locations.get(address, ""))
        row.device = row.device or str(tensor.device)
        row.bytes = sum(part.numel() * part.element_size() for part in parts)
        self.rows.append(row)
        for part in parts:
            self.component_bytes[part.untyped_storage().data_ptr()] = part.untyped_storage().nbytes()
        if not all(finite(part) for part in parts):
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
        row = TensorRow(name, list(tensor.shape), f"{dtype} ({layout})", 0, self.locations.get(address, ""))
        row.device = row.device or str(tensor.device)
        row.bytes = sum(part.numel() * part.element_size() for part in parts)
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


def torch_contents(
    path: Path,
    report: Report,
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
            mmap = report.kind != "legacy-torch"  # torch maps zip archives only
            where = None if subclasses else note_device
            obj = torch.load(path, map_location=where, weights_only=True, mmap=mmap)
    except Exception as err:  # any failure of a file from anywhere is a finding, not a crash
        report.needs.weights_only = f"refused: {describe_load_error(err)}"
        refuse_once(report, LOAD_REFUSES + describe_load_error(err))
        if standins is not None and UNREADABLE_OPCODE in str(err):
            standins()
        return {}
    report.needs.weights_only = "loads"
    listing = Listing(locations)
    listing.add(obj)
    for group in listing.storages.values():
        for row in group:
            row.shares = [other.name for other in group if other is not row] or None
    report.contents.tensors = listing.rows
    # a view's bytes are part of its storage's; the largest view stands for the storage
    report.contents.storage_bytes = sum(
        max(r.bytes for r in group) for group in listing.storages.values()
    ) + sum(n for address, n in listing.component_bytes.items() if address not in listing.storages)
    if listing.too_deep:
        report.contents.note = f"containers nested deeper than {MAX_DEPTH} levels are not listed"
    if listing.cut_off:
        report.contents.note = f"only the first {MAX_OBJECTS} containers were walked"
    if listing.odd:
        report.reasons.append(f"not plain dense tensors with data: {', '.join(listing.odd[:5])}")
    if listing.malformed:
        report.reasons.append(f"malformed sparse tensors: {', '.join(listing.malformed[:3])}")
    elif listing.sparse:
        report.caveats.append(
            f"sparse tensors ({', '.join(listing.sparse[:5])}): their indices were checked here; "
            "torch 2.13 checks them only inside "
            "`with torch.sparse.check_sparse_tensor_invariants():` (2.15 always does), so load it that way"
        )
    if overlap := overlapping_views(listing.spans):
        report.reasons.append(
            f"{overlap[0]} and {overlap[1]} overlap in memory: one weight's values seen twice"
        )
    if listing.non_finite:
        report.reasons.append(f"NaN or infinite values in {', '.join(listing.non_finite[:5])}")
    key, state, others = state_dict_in(obj, expected_shapes(model))
    if isinstance(obj, Mapping) and (state is None or key):
        report.contents.top_level = {safe_text(k, 60): summary(v) for k, v in list(obj.items())[:40]}
    for holder in (obj, state):
        args = holder.get("model_args") if isinstance(holder, Mapping) else None
        if isinstance(args, Mapping):
            report.metadata["model_args"] = {safe_text(k, 40): summary(v) for k, v in args.items()}
        versions = getattr(holder, "_metadata", None)
        if isinstance(versions, Mapping) and all(isinstance(v, Mapping) for v in versions.values()):
            report.metadata["_metadata"] = f"module versions for {len(versions)} modules"
        elif versions is not None:
            report.reasons.append("its state_dict's _metadata is malformed: load_state_dict would fail")
    if key:
        report.contents.state_dict_key = key
    if others:
        report.contents.other_state_dicts = [safe_text(other, 60) for other in others]
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


def whole_storage(tensor: Tensor) -> Tensor:
    """Every value of the storage a view reads, once each: a view that repeats one value a
    billion times is checked in as many values as the file stores."""
    flat = tensor.new_empty(0)
    return flat.set_(
        tensor.untyped_storage(), 0, (tensor.untyped_storage().nbytes() // tensor.element_size(),)
    )


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


# Libraries whose import registers their own tensor classes with weights_only (through
# torch.serialization.add_safe_globals): the prefix of the names a file pickles -> the module
# to import, and what the file then holds. Importing one runs that installed library's code,
# never the file's.
REGISTERS_ON_IMPORT = {
    "torch.distributed.": ("torch.distributed.tensor", "DTensors"),
    "torchao.": ("torchao", "torchao's quantized tensors"),
}


def library_names(data_pkl: bytes) -> tuple[str, str, list[str]]:
    """(module to import, what it allows, the names) for a pickle that names classes of a library
    in REGISTERS_ON_IMPORT beyond what weights_only allows by default; ("", "", []) for none."""
    names = [
        name for name in pickle_globals(data_pkl, limit=200, pickles=100) if name not in KNOWN_DATA_GLOBALS
    ]
    for prefix, (module, what) in REGISTERS_ON_IMPORT.items():
        if found := [name for name in names if name.startswith(prefix)]:
            return module, what, found
    return "", "", []


def import_registering(module: str) -> bool:
    """Import `module`, an installed library (not the file): it allows its classes in any later
    weights_only load. False where it is not installed, or this torch has no torch.distributed.
    What the import logs (torchao warns about torch.compile) is kept out of the report."""
    if module.startswith("torch.distributed") and not torch.distributed.is_available():
        return False
    loggers = [logging.getLogger(name) for name in ("torch", module.partition(".")[0])]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)  # torchao logs the CUDA kernels a CPU-only torch cannot load
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module(module)
    except ImportError:
        return False
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
    return True


def note_library(report: Report, module: str, what: str, names: list[str]) -> None:
    """A file that loaded once `module` was imported: that import is what its reader needs,
    since a plain torch.load(weights_only=True) refuses it without. Whether this process
    imported it before does not matter: the names are judged against what weights_only allows
    by default."""
    needs = report.needs
    if needs.weights_only != "loads":
        return  # refused even so: its reasons say why
    beyond = needs.not_allowed_by_weights_only or []
    needs.not_allowed_by_weights_only = sorted({*beyond, *(safe_text(name, 100) for name in names)})
    needs.safe_globals_needed = [name for name in needs.safe_globals_needed if name not in names]
    needs.import_first = {module: sorted(safe_text(name, 100) for name in names)}
    needs.weights_only = f"loads once {module} is imported (tried); not before"
    classes = sorted({safe_text(name.rpartition(".")[2], 40) for name in names})
    report.reasons.append(
        f"it holds {what}: torch.load(weights_only=True) refuses their classes ({', '.join(classes[:6])}) "
        f"unless {module} is imported first, which allows them; "
        f"`import {module}` and then torch.load(path, weights_only=True) loads it (tried)"
    )


UNREADABLE_OPCODE = "Unsupported operand"  # what torch's weights_only unpickler says of an opcode it lacks


def torch_needs(path: Path, data_pkl: bytes, report: Report, file_name: str) -> None:
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as err:  # it parses the pickle itself: a damaged one can fail in any way
        if UNREADABLE_OPCODE in str(err):  # the load stops at the same opcode: one reason for both
            refuse_once(report, LOAD_REFUSES + describe_load_error(err))
        else:
            report.reasons.append(f"its pickle cannot be scanned: {describe_load_error(err)}")
        note_globals(report, pickle_globals(data_pkl, limit=200, pickles=100), None)
        report.needs.scanned_by_torch = True
        report.needs.not_allowed_by_weights_only = None  # unknown: never "nothing"
        return
    note_globals(report, pickle_globals(data_pkl, limit=200, pickles=100), sorted(unsafe), file_name)


def inspect_pickle_file(data: bytes, report: Report) -> None:
    names = pickle_globals(data, limit=200)
    note_globals(report, names, None)
    complete = any(op.name == "STOP" for op, _, _ in safe_ops(data))
    if not complete:
        report.integrity.problems.append("the pickle is cut short or malformed (no STOP)")
    else:
        report.integrity.notes.append("the pickle reads through to its STOP opcode: not cut short")
    report.needs.weights_only = "no: torch.load cannot read a plain pickle; pickle.load would run it"
    report.reasons += report.integrity.problems
    report.reasons.append("a plain pickle: only pickle.load reads it, and that runs whatever it names")


def inspect_legacy(
    path: Path, file: Any, size: int, report: Report, model: nn.Module | None = None
) -> dict[str, tuple]:
    """Its pickles read with stand-ins, every storage record checked against them, then loaded."""
    caveat = "the legacy format has no checksums: damage inside the weights cannot be detected"
    report.integrity.notes.append(caveat)
    report.caveats.append(f"{caveat}; re-save it with torch.save to get them")
    try:
        layout = standins.read_legacy(file, size)
    except ModelFileError as err:
        report.needs.weights_only = f"not tried: {err}"
        report.reasons.append(str(err))
        return {}
    report.integrity.problems += layout.problems
    report.reasons += layout.problems
    if layout.problems:
        report.needs.weights_only = "not tried: the file failed the layout checks"
        return {}
    report.integrity.notes.append(
        f"its {len(layout.storages)} storage records hold exactly the values its data declares"
    )
    return torch_contents(path, report, model=model)


def list_standins(found: standins.Found, report: Report) -> None:
    """The contents, from tensors named in a pickle read with stand-ins."""
    storages = {t.storage.key: t.storage for t in found.tensors}
    report.contents.tensors = [
        TensorRow(t.name, t.shape, t.storage.dtype, math.prod(t.shape) * t.storage.width, t.storage.location)
        for t in found.tensors
    ]
    report.contents.storage_bytes = sum(ref.nbytes for ref in storages.values())
    if found.cut_off:
        report.contents.note = f"only the first {standins.MAX_OBJECTS} objects were walked"


def standin_contents(archive: zipfile.ZipFile, folder: str, report: Report) -> None:
    """The tensors a torch.save file's data.pkl names, read with stand-ins: for a pickle that
    torch.load(weights_only=True) cannot read, what it holds all the same (nothing is loaded)."""
    try:
        obj, _ = standins.read_pickle(io.BytesIO(archive.read(f"{folder}/data.pkl")))
    except (ModelFileError, *ZIP_ERRORS):
        return  # its integrity checks read it already: not reached for a malformed one
    list_standins(standins.name_tensors(obj), report)
    report.contents.note = report.contents.note or "read from data.pkl with stand-ins, not loaded"

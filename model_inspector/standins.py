"""Reading torch's own formats from their bytes, without running anything in them.

Two formats torch.load cannot be asked about safely in one call:

- the legacy torch.save format (before PyTorch 1.6): five pickles one after another (magic
  number, protocol, system info, the object, the storage keys), then each storage's element
  count and raw bytes. It has no checksums, but its layout can be checked: every storage the
  object declares must be there, with the size it declares, and nothing after the last.
- TorchScript (`torch.jit.save`): a zip whose code records are deflated on purpose. Those
  are inflated (within a budget) so that their CRC32s are checked too (the same check
  serves NumPy's compressed .npz), and the tensors are named from its data.pkl.

A pickle is read by `read_pickle`: an unpickler whose every class and function is a stand-in
that only records its name and arguments. Nothing named in the file is imported or called.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
import zipfile
from dataclasses import dataclass, field
from typing import IO, Any

from model_inspector.files import CHUNK, MAX_PICKLE_BYTES, ZIP_ERRORS, ModelFileError
from model_inspector.pickles import MAX_NESTING, TENSOR_REBUILDERS, pickle_nesting
from model_inspector.text import safe_text

MAX_INFLATED_BYTES = 64 * 2**20  # a TorchScript archive's code and debug records, inflated, all together
MAX_OBJECTS = 100_000  # objects walked when naming tensors; a pickle that shares more is cut off
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {  # torch's typed storage classes, as pickles name them -> dtype and bytes per value
    "DoubleStorage": ("float64", 8), "FloatStorage": ("float32", 4), "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2), "LongStorage": ("int64", 8), "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2), "CharStorage": ("int8", 1), "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1), "ComplexFloatStorage": ("complex64", 8),
    "ComplexDoubleStorage": ("complex128", 16), "UntypedStorage": ("uint8", 1),
    "Float8_e4m3fnStorage": ("float8_e4m3fn", 1), "Float8_e5m2Storage": ("float8_e5m2", 1),
    # quantized tensors (torch.ao.quantization): one stored integer a value, scale and zero point apart
    "QInt8Storage": ("qint8", 1), "QUInt8Storage": ("quint8", 1), "QInt32Storage": ("qint32", 4),
    "QUInt4x2Storage": ("quint4x2", 1), "QUInt2x4Storage": ("quint2x4", 1),
}  # fmt: skip
PARAMETER_REBUILDERS = {"torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"}


# ---- A pickle read with stand-ins ----


class Named(type):
    """The type of every stand-in class: shown as the name the pickle gave, never as this module's."""

    global_name = "?"

    def __repr__(cls) -> str:
        return cls.global_name


class StandIn(metaclass=Named):
    """What every class or function a pickle names becomes: a record of how it was called."""

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> StandIn:
        made = object.__new__(cls)
        made.args, made.state, made.entries, made.listed = args, None, {}, []
        return made

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # an OrderedDict's items
        self.entries[key] = value

    def append(self, value: Any) -> None:
        self.listed.append(value)

    def extend(self, values: Any) -> None:
        self.listed.extend(values)

    def __repr__(self) -> str:
        return f"{self.global_name}(...)"


@dataclass(frozen=True)
class StorageRef:
    """A storage a pickle declares: its dtype, its key (record name), saved device, element count."""

    dtype: str
    key: str
    location: str
    numel: int
    width: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.width


class StandInUnpickler(pickle.Unpickler):
    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(stream)
        self.classes: dict[str, type[StandIn]] = {}
        self.storages: dict[str, StorageRef] = {}

    def find_class(self, module: str, name: str) -> type[StandIn]:
        full = f"{module}.{name}"
        if full not in self.classes:
            self.classes[full] = type("StandIn", (StandIn,), {"global_name": full})
        return self.classes[full]

    def persistent_load(self, pid: Any) -> StorageRef:
        """torch's storage references: ('storage', StorageClass, key, location, numel[, view])."""
        try:
            kind, storage_class, key, location, numel = pid[:5]
        except (TypeError, ValueError):
            raise ModelFileError(
                f"it refers to storage data in a form torch does not write: {safe_text(repr(pid), 80)}"
            ) from None
        full_name = getattr(storage_class, "global_name", repr(storage_class))
        if full_name.rpartition(".")[2] not in STORAGE_DTYPES:
            raise ModelFileError(
                f"it refers to storage data of a type torch does not write: {safe_text(full_name, 80)}"
            )
        dtype, width = STORAGE_DTYPES[full_name.rpartition(".")[2]]
        if kind != "storage" or type(numel) is not int or not isinstance(location, str | bytes):
            raise ModelFileError("it refers to storage data in a form torch does not write")
        if numel < 0:
            raise ModelFileError(f"storage {safe_text(key, 60)} declares a negative size: {numel} values")
        location = location.decode(errors="replace") if isinstance(location, bytes) else location
        ref = StorageRef(dtype, safe_text(key, 60), safe_text(location, 30), numel, width)
        if self.storages.setdefault(ref.key, ref) != ref:  # torch.load keeps the first, a scanner may not
            raise ModelFileError(f"storage {ref.key} is declared twice, with different types or sizes")
        return ref


def read_pickle(stream: IO[bytes]) -> tuple[Any, StandInUnpickler]:
    """The next pickle in `stream`, built from stand-ins; ModelFileError if it is malformed or too deep.

    Its nesting is measured first, from the opcodes alone: Python compares and hashes nested
    tuples recursively in C, so a dict key nested far enough would crash the process.
    """
    start = stream.tell()
    try:
        deepest = pickle_nesting(stream, MAX_NESTING)
    except (ValueError, IndexError, KeyError, EOFError):
        raise ModelFileError("one of its pickles is malformed or cut short") from None
    if deepest > MAX_NESTING:
        raise ModelFileError(f"its data is nested more than {MAX_NESTING} levels deep")
    stream.seek(start)
    unpickler = StandInUnpickler(stream)
    try:
        return unpickler.load(), unpickler
    except ModelFileError:
        raise
    except Exception as err:  # any malformed pickle: a finding, not a crash
        raise ModelFileError(f"one of its pickles is malformed ({safe_text(type(err).__name__)})") from None


# ---- Naming the tensors in what was read ----


@dataclass
class TensorRef:
    name: str
    storage: StorageRef
    shape: list[int]


@dataclass
class Found:
    tensors: list[TensorRef] = field(default_factory=list)
    cut_off: bool = False


def tensor_from(value: Any) -> tuple[StorageRef, list[int]] | None:
    """(storage, shape) when `value` is torch's tensor rebuild call, else None."""
    if not isinstance(value, StandIn):
        return None
    if value.global_name in PARAMETER_REBUILDERS and value.args:
        return tensor_from(value.args[0])
    if value.global_name in TENSOR_REBUILDERS and len(value.args) >= 3:
        storage, _, shape = value.args[:3]
        if (
            isinstance(storage, StorageRef)
            and isinstance(shape, tuple)
            and all(type(n) is int for n in shape)
        ):
            return storage, list(shape)
    return None


def name_tensors(obj: Any, limit: int = MAX_OBJECTS) -> Found:
    """Every tensor under `obj` with its dotted name (module attributes, dict keys, list indexes)."""
    found, seen, stack = Found(), set(), [("", obj)]
    while stack:
        name, value = stack.pop()
        if len(seen) >= limit:
            found.cut_off = True
            break
        if id(value) in seen and not isinstance(value, str | int | float):
            continue
        seen.add(id(value))
        if tensor := tensor_from(value):
            found.tensors.append(TensorRef(name, *tensor))
            continue
        if isinstance(value, StandIn):
            scripted = value.global_name.startswith("__torch__.")  # a scripted module: its attributes
            attributes = value.state if scripted and isinstance(value.state, dict) else {}
            items = [*attributes.items(), *value.entries.items(), *enumerate(value.listed)]
        elif isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, list | tuple):
            items = list(enumerate(value))
        else:
            continue
        for key, child in reversed(items):
            shown = safe_text(key if isinstance(key, str) else repr(key), 80)
            stack.append((f"{name}.{shown}" if name else shown, child))
    return found


# ---- The legacy format ----


@dataclass
class LegacyLayout:
    storages: dict[str, StorageRef]
    tensors: Found
    problems: list[str]


def read_legacy(file: IO[bytes], size: int) -> LegacyLayout:
    """The legacy file's pickles read with stand-ins, and its storage records checked against them.

    Raises ModelFileError when its pickles cannot be read at all.
    """
    head = io.BytesIO(file.read(min(size, 4 * MAX_PICKLE_BYTES)))
    magic, _ = read_pickle(head)
    protocol, _ = read_pickle(head)
    sys_info, _ = read_pickle(head)
    if magic != LEGACY_MAGIC_NUMBER or protocol != LEGACY_PROTOCOL or not isinstance(sys_info, dict):
        raise ModelFileError("its first pickles are not torch's legacy header (magic, protocol, system info)")
    if sys_info.get("little_endian") is not True:
        raise ModelFileError("it was saved on a big-endian machine; this tool reads little-endian files")
    obj, unpickler = read_pickle(head)
    keys, _ = read_pickle(head)
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise ModelFileError("its list of storage keys is malformed")
    storages = unpickler.storages
    problems = []
    if set(keys) != set(storages) or len(keys) != len(set(keys)):
        problems.append("its list of storage records does not match the storages its data refers to")
    position = head.tell()
    for key in keys:
        ref = storages.get(safe_text(key, 60))
        file.seek(position)
        count = file.read(8)
        if len(count) < 8:
            problems.append(f"the file ends before storage {safe_text(key, 60)}: truncated")
            break
        (numel,) = struct.unpack("<q", count)
        if numel < 0:
            problems.append(f"storage {safe_text(key, 60)} gives a negative count of values: {numel}")
            break
        if ref is None or numel != ref.numel:
            problems.append(f"storage {safe_text(key, 60)} holds {numel} values, not the {ref and ref.numel}")
            break
        position += 8 + ref.nbytes
        if position > size:
            problems.append(f"storage {safe_text(key, 60)} ends at byte {position} of {size}: truncated")
            break
    else:
        if position < size:
            problems.append(f"{size - position} bytes after the last storage belong to none")
    return LegacyLayout(storages, name_tensors(obj), problems)


# ---- TorchScript ----


def inflated_records(archive: zipfile.ZipFile, size: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Each record's CRC32, deflated ones inflated within MAX_INFLATED_BYTES in all.

    For the zips whose writers deflate records on purpose: TorchScript (its code), NumPy's
    savez_compressed, Keras. Nothing inflated is kept: each record is read through once.
    """
    records, problems = [], []
    infos = archive.infolist()
    if sum(info.compress_size for info in infos) > size:
        problems.append("its records claim more bytes than the file holds")
    budget = MAX_INFLATED_BYTES
    for info in infos:
        name = safe_text(info.filename, 120)
        record = {"name": name, "bytes": info.file_size, "crc32": "ok"}
        records.append(record)
        compressed = info.compress_type != zipfile.ZIP_STORED
        if compressed and info.compress_type != zipfile.ZIP_DEFLATED:
            record["crc32"] = "not checked (compressed, but not with deflate)"
            problems.append(f"record {name} is compressed, but not with deflate: not inflated")
            continue
        if (compressed and info.file_size > budget) or (not compressed and info.file_size > size):
            record["crc32"] = "not checked (too large)"
            problems.append(f"record {name} claims {info.file_size} bytes: more than this tool inflates")
            continue
        budget -= info.file_size if compressed else 0
        try:
            with archive.open(info) as stream:
                read = 0
                while chunk := stream.read(CHUNK):
                    read += len(chunk)
                    if read > info.file_size:
                        raise zipfile.BadZipFile("longer than its size")
        except ZIP_ERRORS:
            record["crc32"] = "MISMATCH"
            problems.append(f"record {name} fails its CRC32 check: the file is damaged")
    return records, problems


def read_torchscript(archive: zipfile.ZipFile, folder: str) -> tuple[Found, list[str]]:
    """The tensors TorchScript's data.pkl names, and the code files the archive carries."""
    try:
        info = archive.getinfo(f"{folder}/data.pkl")
        if info.file_size > MAX_PICKLE_BYTES:
            raise ModelFileError(f"its data.pkl has {info.file_size} bytes: not read")
        data = archive.read(info)
    except (KeyError, *ZIP_ERRORS):
        raise ModelFileError("its data.pkl is missing or damaged: its tensors cannot be listed") from None
    obj, _ = read_pickle(io.BytesIO(data))
    code = sorted(
        safe_text(name.removeprefix(f"{folder}/code/__torch__/"), 100)
        for name in archive.namelist()
        if name.startswith(f"{folder}/code/") and name.endswith(".py")
    )
    return name_tensors(obj), code


# ---- torch.save's zip format: what torch.load and every other reader agree on ----

# Every record torch.save (PyTorch 1.6 to 2.x) writes under its archive folder
TORCH_ZIP_RECORDS = re.compile(
    r"data\.pkl|data/\d+|version|\.data/version|byteorder|\.data/serialization_id"
    r"|\.format_version|\.storage_alignment"
)


def torch_zip_problems(archive: zipfile.ZipFile, folder: str) -> list[str]:
    """Records torch.save never writes, bytes after data.pkl's STOP, and storage records that
    do not hold exactly what data.pkl declares, each tensor's view inside its storage.

    torch.load reads data.pkl's first pickle and the storage records it names, nothing
    else; with `mmap=True` it does not even check a record's size, so a tensor declaring
    more than its record holds would read the bytes of whatever follows in the file.
    data.pkl is read with stand-ins: nothing in it runs.
    """
    names = archive.namelist()
    data = archive.read(f"{folder}/data.pkl")
    stream = io.BytesIO(data)
    obj, unpickler = read_pickle(stream)
    for name in names:
        inside = name.removeprefix(f"{folder}/")
        if inside == name or not TORCH_ZIP_RECORDS.fullmatch(inside):
            return [unknown_record(name, inside, unpickler.storages)]
    if stream.tell() != len(data):
        return [f"{len(data) - stream.tell()} bytes follow data.pkl's STOP opcode (a second pickle?)"]
    problems = []
    for key, ref in sorted(unpickler.storages.items()):
        record = f"{folder}/data/{key}"
        held = archive.getinfo(record).file_size if record in names else 0
        if held != ref.nbytes:
            claims = "more" if ref.nbytes > held else "fewer"
            problems.append(
                f"a tensor claims {claims} bytes than the file stores for it: storage {key} declares "
                f"{ref.nbytes}, its record holds {held}"
            )
    for name in names:
        key = name.removeprefix(f"{folder}/data/")
        if key != name and key not in unpickler.storages:
            problems.append(f"record {safe_text(name, 80)} belongs to no tensor in data.pkl")
    return problems + view_problems(obj)


def unknown_record(name: str, inside: str, storages: dict[str, StorageRef]) -> str:
    """Why a record torch.save never writes is there. torch.load reads `data/<key>` for every
    storage key data.pkl names, whatever the key (`../../x` too: the name is looked up in the
    archive as it is, never resolved as a path); any other record it never opens."""
    key = inside.removeprefix("data/")
    if key != inside and safe_text(key, 60) in storages:
        return (
            f"it has a record torch.save never writes: {safe_text(name, 80)}, which torch.load reads, "
            f"as data.pkl names storage {safe_text(key, 60)} (torch.save numbers its storages 0, 1, 2, ...)"
        )
    return f"it has a record torch.save never writes: {safe_text(name, 80)} (torch.load ignores it)"


def view_problems(obj: Any, limit: int = MAX_OBJECTS) -> list[str]:
    """Tensors whose shape, strides and offset reach outside the storage they view."""
    problems, seen, stack = [], set(), [obj]
    while stack and len(seen) < limit:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, StandIn):
            if value.global_name in TENSOR_REBUILDERS and (problem := view_problem(value.args)):
                problems.append(problem)
            stack += [*value.args, value.state, *value.entries.keys(), *value.entries.values(), *value.listed]
        elif isinstance(value, dict):
            stack += [*value.keys(), *value.values()]
        elif isinstance(value, list | tuple):
            stack += value
    if stack:
        problems.append(f"it holds more than {limit} objects: not every tensor could be checked")
    return problems[:5]


def view_problem(args: tuple) -> str:
    """What is wrong with one `_rebuild_tensor_v2(storage, offset, size, stride, ...)` call, or ''."""
    if len(args) < 4 or not isinstance(args[0], StorageRef):
        return "a tensor is rebuilt from something other than a storage"
    storage, offset, shape, stride = args[:4]
    numbers = [offset, *shape, *stride] if isinstance(shape, tuple) and isinstance(stride, tuple) else [None]
    if not all(type(n) is int for n in numbers) or len(shape) != len(stride):
        return f"a tensor over storage {storage.key} has a malformed shape, stride or offset"
    for label, values in (("size", shape), ("stride", stride), ("offset", (offset,))):
        if any(n < 0 for n in values):
            shown = offset if label == "offset" else list(values)
            return f"a tensor over storage {storage.key} has a negative {label}: {shown}"
    extent = (
        0 if 0 in shape else offset + sum((n - 1) * step for n, step in zip(shape, stride, strict=True)) + 1
    )
    if extent > storage.numel:
        return (
            f"a tensor claims more values than its storage holds: shape {list(shape)} at offset {offset} "
            f"reaches value {extent}, storage {storage.key} has {storage.numel}"
        )
    return ""

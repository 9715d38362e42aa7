"""Model files torch.load does not read, named for what they are: ONNX, GGUF, NumPy, HDF5, Keras,
TensorFlow Lite and ExecuTorch.

Each reader fills the same report as the others, from the file's bytes, and says
what does read the file. An ONNX model is parsed with the `onnx` package (never by hand),
and its external data is checked but never read. A GGUF header is read field by field,
every count checked against the file's size before anything is allocated for it. NumPy's
headers are read with NumPy's own header parser, which evaluates literals only.

Every refusal is one ModelFileError line; nothing in any file is run.
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Any

from model_inspector.files import ZIP_ERRORS, ModelFileError
from model_inspector.report import Report, TensorRow
from model_inspector.text import error_line, safe_text

NUMPY_MAGIC = b"\x93NUMPY"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
GGUF_MAGIC = b"GGUF"
MAX_ONNX_BYTES = 2**31 - 1  # protobuf's own limit for one message: ONNX keeps larger weights outside
ONNX_FIRST_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}  # producer, version, domain, ..., graph, opset
MAX_ROWS = 10_000  # tensors listed from a GGUF or ONNX file
MAX_GGUF_STRING = 2**20  # a GGUF key or string value longer than this is not read
# FlatBuffer formats, told by the file identifier at bytes 4..8 (after the root table's offset):
TFLITE_IDENTIFIER = b"TFL3"  # TensorFlow Lite's schema.fbs
EXECUTORCH_PREFIX = b"ET"  # ExecuTorch's program.fbs says "ET12"; its runtime takes any other
# "ET" and two more characters for a program of another schema version
EXECUTORCH_HEADER = b"eh00"  # ExecuTorch's optional extended header, at byte 8


def flatbuffer_kind(head: bytes) -> str:
    """'tflite' or 'pte' (ExecuTorch) from a FlatBuffer's file identifier, or ''."""
    if len(head) < 8:
        return ""
    if head[4:8] == TFLITE_IDENTIFIER:
        return "tflite"
    if head[4:6] == EXECUTORCH_PREFIX and head[6:8].isdigit():
        return "pte"
    return ""


def sniff_other(head: bytes, path: Path) -> str:
    """'tflite', 'pte', 'gguf', 'npy', 'hdf5', 'onnx' (a protobuf that begins as ONNX models
    do), or ''."""
    if kind := flatbuffer_kind(head):
        return kind
    if head.startswith(GGUF_MAGIC):
        return "gguf"
    if head.startswith(NUMPY_MAGIC):
        return "npy"
    if head.startswith(HDF5_MAGIC):
        return "hdf5"
    looks_onnx = len(head) >= 3 and head[0] == 0x08 and 1 <= head[1] <= 30 and head[2] in ONNX_FIRST_FIELDS
    if looks_onnx or path.suffix == ".onnx":
        return "onnx"
    return ""


def zip_kind(archive: zipfile.ZipFile) -> str:
    """'npz' (NumPy's savez), 'keras' (Keras 3's .keras), or 'zip' for another zip."""
    names = archive.namelist()
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    if {"config.json", "metadata.json"} <= set(names) and any(name.endswith(".h5") for name in names):
        return "keras"
    return "zip"


def not_for_torch(report: Report, kind: str, format_text: str, reader: str) -> None:
    """Name the format and what reads it; it is not a torch file, so the verdict is exit 2."""
    report.kind, report.format = kind, format_text
    report.needs.weights_only = f"not applicable: {reader} reads it, not torch.load"
    report.other_format = f"{format_text}, not a torch file: read it with {reader}"
    report.reasons.append(report.other_format)


# ---- NumPy and HDF5 ----


def numpy_header(stream: IO[bytes], name: str) -> tuple[TensorRow, bool]:
    """One .npy header, read with NumPy's own parser (it evaluates literals only, size-limited),
    and whether its array holds Python objects (which only unpickling rebuilds)."""
    import numpy as np

    try:
        version = np.lib.format.read_magic(stream)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(stream)
    except Exception as err:  # NumPy's parser evaluates literals only, but bad bytes fail in many ways
        raise ModelFileError(
            f"{safe_text(name, 80)} has a malformed NumPy header ({error_line(err)})"
        ) from None
    if any(n < 0 for n in shape):  # NumPy's parser lets it through; numpy.load then fails
        raise ModelFileError(f"{safe_text(name, 80)} has a negative dimension in its shape {list(shape)}")
    row = TensorRow(safe_text(name, 80), list(shape), safe_text(dtype, 40), math.prod(shape) * dtype.itemsize)
    return row, dtype.hasobject


def inspect_numpy(file: IO[bytes], size: int, report: Report, archive: zipfile.ZipFile | None) -> None:
    if archive is None:
        arrays = [numpy_header(file, "array")]
        if arrays[0][0].bytes > size:
            report.reasons.append(f"its header describes {arrays[0][0].bytes} bytes; the file has {size}")
        report.integrity.notes.append("NumPy keeps no checksums: damage cannot be detected")
        fmt = "NumPy array (.npy)"
    else:
        arrays = []
        for info in archive.infolist()[:MAX_ROWS]:
            try:
                with archive.open(info) as stream:
                    arrays.append(numpy_header(stream, info.filename.removesuffix(".npy")))
            except ZIP_ERRORS:
                raise ModelFileError(f"its record {safe_text(info.filename, 80)} is damaged") from None
        compressed = any(info.compress_type != zipfile.ZIP_STORED for info in archive.infolist())
        fmt = f"NumPy archive (.npz{', compressed' if compressed else ''}) of {len(arrays)} array"
        fmt += "s" if len(arrays) != 1 else ""
    rows = [row for row, _ in arrays]
    report.contents.tensors = rows
    report.contents.storage_bytes = sum(row.bytes for row in rows)
    pickled = [row.name for row, holds_objects in arrays if holds_objects]
    if pickled:
        report.needs.never_allow = ["allow_pickle=True"]
        report.reasons.append(
            f"arrays of Python objects ({', '.join(pickled[:5])}): numpy.load needs allow_pickle=True, "
            "which unpickles them and runs whatever they name"
        )
    not_for_torch(report, "numpy", fmt, "numpy.load(path, allow_pickle=False)")


def inspect_hdf5(report: Report) -> None:
    not_for_torch(
        report,
        "hdf5",
        "HDF5 file (Keras .h5 models and weights are HDF5)",
        "h5py, or keras.models.load_model(path) for a Keras model",
    )


def inspect_keras(report: Report) -> None:
    not_for_torch(
        report,
        "keras",
        "Keras 3 model archive (.keras: config.json, metadata.json and HDF5 weights)",
        "keras.saving.load_model(path, safe_mode=True)",
    )


# ---- TensorFlow Lite and ExecuTorch: FlatBuffers ----


def flatbuffer_root_problem(head: bytes, size: int) -> str:
    """Why the root table's offset, the first 4 bytes, cannot be right ('' if it can)."""
    root = int.from_bytes(head[:4], "little")
    if root < 8 or root + 4 > size:
        return (
            f"its FlatBuffer root table offset, {root}, lies outside its {size} bytes: cut short or damaged"
        )
    return ""


def inspect_tflite(file: IO[bytes], size: int, report: Report) -> None:
    if problem := flatbuffer_root_problem(file.read(8), size):
        report.reasons.append(problem)
    report.integrity.notes.append("a FlatBuffer keeps no checksums: damage cannot be detected")
    not_for_torch(
        report,
        "tflite",
        "TensorFlow Lite model (.tflite: a FlatBuffer, identifier TFL3)",
        "LiteRT's ai_edge_litert.interpreter.Interpreter(model_path=path), or tf.lite.Interpreter",
    )


def inspect_executorch(file: IO[bytes], size: int, report: Report) -> None:
    """An ExecuTorch program: its identifier, and its extended header's sizes against the file's."""
    head = file.read(64)
    identifier = safe_text(head[4:8].decode("ascii", errors="replace"), 8)
    if problem := flatbuffer_root_problem(head, size):
        report.reasons.append(problem)
    if head[8:12] == EXECUTORCH_HEADER:
        length, program, segments = struct.unpack_from("<IQQ", head.ljust(32, b"\0"), 12)
        if len(head) < 32 or length < 24:  # magic, length and the two sizes: 24 bytes at least
            report.reasons.append("its extended header is cut short or corrupt")
        elif program > size or segments > size:
            report.reasons.append(
                f"its header says the program takes {program} bytes and its data starts at byte "
                f"{segments}; the file has {size}: cut short"
            )
        else:
            report.metadata["executorch"] = {
                "program": f"{program} bytes",
                "data segments": f"from byte {segments}" if segments else "none",
            }
    report.integrity.notes.append("a FlatBuffer keeps no checksums: damage cannot be detected")
    not_for_torch(
        report,
        "executorch",
        f"ExecuTorch program (.pte: a FlatBuffer, identifier {identifier})",
        "the ExecuTorch runtime, executorch.runtime.Runtime.get().load_program(path)",
    )


# ---- GGUF ----

GGUF_VALUE_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
GGUF_VALUE_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
GGUF_VALUE_FORMATS |= {10: "<Q", 11: "<q", 12: "<d"}
GGUF_STRING, GGUF_ARRAY = 8, 9
GGUF_TYPES = {  # ggml's tensor types -> name, (values per block, bytes per block) for the plain ones
    0: ("F32", (1, 4)), 1: ("F16", (1, 2)), 2: ("Q4_0", (32, 18)), 3: ("Q4_1", (32, 20)),
    6: ("Q5_0", (32, 22)), 7: ("Q5_1", (32, 24)), 8: ("Q8_0", (32, 34)), 9: ("Q8_1", (32, 36)),
    10: ("Q2_K", (256, 84)), 11: ("Q3_K", (256, 110)), 12: ("Q4_K", (256, 144)), 13: ("Q5_K", (256, 176)),
    14: ("Q6_K", (256, 210)), 15: ("Q8_K", (256, 292)), 24: ("I8", (1, 1)), 25: ("I16", (1, 2)),
    26: ("I32", (1, 4)), 27: ("I64", (1, 8)), 28: ("F64", (1, 8)), 30: ("BF16", (1, 2)),
}  # fmt: skip
MIN_TENSOR_INFO = 8 + 4 + 4 + 8  # name length, dimensions, type, offset: the least one tensor takes
MIN_KEY_VALUE = 8 + 4 + 1  # key length, value type, a one-byte value


class GGUFReader:
    """Reads a GGUF header from a file, refusing any length that runs past the file's end."""

    def __init__(self, file: IO[bytes], size: int) -> None:
        self.file, self.size = file, size

    def take(self, count: int) -> bytes:
        if count < 0 or self.file.tell() + count > self.size:
            raise ModelFileError("its header runs past the end of the file: truncated or forged")
        return self.file.read(count)

    def number(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        length = self.number("<Q")
        if length > MAX_GGUF_STRING:
            self.take(length)  # checks it fits in the file, without reading it
            return f"({length} bytes)"
        return self.take(length).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind == GGUF_STRING:
            return self.string()
        if kind in GGUF_VALUE_FORMATS:
            return self.number(GGUF_VALUE_FORMATS[kind])
        if kind != GGUF_ARRAY:
            raise ModelFileError(f"its header has a value of unknown type {kind}")
        inner, count = self.number("<I"), self.number("<Q")
        if inner in GGUF_VALUE_BYTES:
            self.take_skipped(count * GGUF_VALUE_BYTES[inner])
            return f"array of {count}"
        if inner != GGUF_STRING or count * 8 > self.size - self.file.tell():
            raise ModelFileError("its header has an array that cannot fit in the file")
        for _ in range(count):
            self.take_skipped(self.number("<Q"))
        return f"array of {count} strings"

    def take_skipped(self, count: int) -> None:
        if count < 0 or self.file.tell() + count > self.size:
            raise ModelFileError("its header runs past the end of the file: truncated or forged")
        self.file.seek(self.file.tell() + count)


def inspect_gguf(file: IO[bytes], size: int, report: Report) -> None:
    """GGUF: version, metadata and tensor list; every count checked against the file's size first."""
    reader = GGUFReader(file, size)
    reader.take(4)
    version = reader.number("<I")
    if version not in (2, 3):
        raise ModelFileError(f"it is GGUF version {version}; this tool reads versions 2 and 3")
    n_tensors, n_values = reader.number("<Q"), reader.number("<Q")
    room = size - file.tell()
    if n_tensors * MIN_TENSOR_INFO + n_values * MIN_KEY_VALUE > room:
        raise ModelFileError(
            f"its GGUF header claims {n_tensors} tensors and {n_values} metadata entries; "
            f"the {size} bytes of the file cannot describe that many"
        )
    metadata = {}
    for _ in range(n_values):
        key = safe_text(reader.string(), 80)
        metadata[key] = reader.value(reader.number("<I"))
    rows, ends = [], []
    for _ in range(n_tensors):
        name = safe_text(reader.string(), 80)
        n_dims = reader.number("<I")
        if n_dims > 8:
            raise ModelFileError(f"tensor {name} claims {n_dims} dimensions")
        shape = [reader.number("<Q") for _ in range(n_dims)]
        kind, offset = reader.number("<I"), reader.number("<Q")
        type_name, (per_block, block_bytes) = GGUF_TYPES.get(kind, (f"type {kind}", (1, 0)))
        nbytes = math.prod(shape) // per_block * block_bytes
        ends.append(offset + nbytes)
        if len(rows) < MAX_ROWS:
            rows.append(TensorRow(name, shape[::-1], type_name, nbytes))  # ggml lists dims innermost first
    alignment = metadata.get("general.alignment", 32)
    alignment = alignment if type(alignment) is int and alignment > 0 else 32
    data_start = -(-file.tell() // alignment) * alignment
    if ends and data_start + max(ends) > size:
        report.reasons.append(
            f"its tensors end at byte {data_start + max(ends)} of a {size}-byte file: truncated"
        )
    report.contents.tensors = rows
    report.contents.storage_bytes = sum(row.bytes for row in rows)
    report.integrity.notes.append("GGUF keeps no checksums; its tensors lie within the file")
    shown = ("general.architecture", "general.name", "general.file_type", "general.quantization_version")
    report.metadata["gguf"] = {key: safe_text(metadata[key], 80) for key in shown if key in metadata}
    report.metadata["gguf"]["entries"] = str(n_values)
    not_for_torch(
        report,
        "gguf",
        f"GGUF model file (llama.cpp / ggml), version {version}",
        "llama.cpp, or the gguf package's GGUFReader",
    )


# ---- ONNX ----


def external_data_problem(location: str, folder: Path) -> str:
    """Why an ONNX external-data location is refused ('' if it is a file inside the model's folder)."""
    if not location:
        return "has no location"
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute() or ":" in location:
        return f"is the absolute path {safe_text(location, 80)}"
    if ".." in PurePosixPath(location.replace("\\", "/")).parts:
        return f"is {safe_text(location, 80)}, which leaves the model's folder"
    try:
        target = (folder / location).resolve()
    except (RuntimeError, OSError):  # a link loop: RuntimeError before Python 3.13
        return f"is {safe_text(location, 80)}, a link that leads round in a loop"
    if not target.is_relative_to(folder.resolve()):
        return f"is {safe_text(location, 80)}, a link that leaves the model's folder"
    return ""


def all_graphs(model: Any) -> Iterator[Any]:
    """The model's graph and every graph nested in a node's attributes (If, Loop and Scan
    bodies), its local functions' included. protobuf's parser caps nesting at 100 levels."""

    def nested(nodes: Any) -> list[Any]:
        return [
            g
            for node in nodes
            for a in node.attribute
            for g in (*([a.g] if a.HasField("g") else []), *a.graphs)
        ]

    pending = [model.graph, *nested(node for function in model.functions for node in function.node)]
    while pending:
        graph = pending.pop()
        yield graph
        pending += nested(graph.node)


def all_nodes(model: Any) -> Iterator[Any]:
    for graph in all_graphs(model):
        yield from graph.node
    for function in model.functions:
        yield from function.node


def stored_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """Every TensorProto in the model, named for a message: initializers (sparse ones' values
    and indices too) and the tensors in node attributes, a Constant's value among them."""
    for graph in all_graphs(model):
        for tensor in graph.initializer:
            yield f"initializer {safe_text(tensor.name, 80)}", tensor
        for sparse in graph.sparse_initializer:
            name = f"sparse initializer {safe_text(sparse.values.name, 80)}"
            yield name, sparse.values
            yield name, sparse.indices
    for node in all_nodes(model):
        for attribute in node.attribute:
            name = f"node {safe_text(node.name or node.op_type, 60)}'s {safe_text(attribute.name, 40)}"
            sparse = [*([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []),
                      *attribute.sparse_tensors]  # fmt: skip
            for tensor in (
                *([attribute.t] if attribute.HasField("t") else []),
                *attribute.tensors,
                *(part for s in sparse for part in (s.values, s.indices)),
            ):
                yield name, tensor


def check_external_data(model: Any, folder: Path, report: Report) -> None:
    """Every tensor kept outside the .onnx file: a file inside its folder, its bytes there."""
    import onnx

    files: dict[str, int] = {}
    for name, tensor in stored_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        if problem := external_data_problem(location, folder):
            raise ModelFileError(f"{name}'s external data {problem}")
        target = folder / location
        try:
            offset, length = int(entries.get("offset", 0)), int(entries.get("length", -1))
        except ValueError:
            raise ModelFileError(f"{name} has a malformed offset") from None
        if not target.is_file():
            report.reasons.append(f"its external data file {safe_text(location, 80)} is missing")
            continue
        end = offset + max(length, 0)
        if offset < 0 or end > target.stat().st_size:
            report.reasons.append(f"{name} reaches past the end of {safe_text(location, 80)}")
        files[safe_text(location, 80)] = target.stat().st_size
    if files:
        report.metadata["external data"] = {name: f"{size} bytes" for name, size in sorted(files.items())}


# ONNX packs these types' values into bytes, as many as fit (its helper.make_tensor does):
# a tensor of them takes its count times the bits, rounded up to whole bytes.
ONNX_PACKED_BITS = {
    "UINT4": 4,
    "INT4": 4,
    "FLOAT4E2M1": 4,
    "UINT2": 2,
    "INT2": 2,
    "FLOAT6E2M3": 6,
    "FLOAT6E3M2": 6,
}


def onnx_dtype(code: int) -> tuple[str, int]:
    """(NumPy's name for an ONNX element type, as torch names them too, and its bits per
    value; 0 for strings, whose values have lengths of their own)."""
    import onnx

    if code == onnx.TensorProto.STRING:
        return "string", 0
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(code)
    except (KeyError, ValueError, TypeError):
        return safe_text(f"onnx type {code}", 30), 0
    packed = {getattr(onnx.TensorProto, name, None): bits for name, bits in ONNX_PACKED_BITS.items()}
    return dtype.name, packed.get(code, dtype.itemsize * 8)


def onnx_bytes(tensor: Any) -> int:
    """The bytes a TensorProto's values take: packed types rounded up to whole bytes, a string
    tensor's strings their lengths."""
    dtype, bits = onnx_dtype(tensor.data_type)
    if dtype == "string":
        return sum(len(value) for value in tensor.string_data)
    return -(-math.prod(tensor.dims) * bits // 8)


def value_info_text(value: Any) -> str:
    """'[batch, 4] float32' for one graph input or output."""
    kind = value.type.tensor_type
    dims = [d.dim_param or str(d.dim_value) for d in kind.shape.dim]
    dtype = onnx_dtype(kind.elem_type)[0] if kind.elem_type else "?"
    return f"[{', '.join(dims)}] {dtype}"


def same_file(path: Path, opened: os.stat_result) -> bool:
    """Whether `path` still names the file that was opened, unchanged since."""
    try:
        now = path.stat()
    except OSError:
        return False
    fields = ("st_dev", "st_ino", "st_size", "st_mtime_ns")
    return all(getattr(now, name) == getattr(opened, name) for name in fields)


def check_onnx(path: Path, opened: os.stat_result, report: Report) -> None:
    """onnx.checker on the model's path, as onnxruntime reads it: the checker finds external
    data next to the model only when given its path (given the parsed model, it looks in the
    current folder and calls a valid file "not regular file"). It reads the file again, so
    the name must still lead to the very file parsed, before and after."""
    import onnx

    if not same_file(path, opened):
        raise ModelFileError("it changed while it was being read")
    try:
        onnx.checker.check_model(os.fspath(path))
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as err:
        report.reasons.append(f"onnx.checker refuses it: {error_line(err)}")
    else:
        report.integrity.notes.append("onnx.checker.check_model passes (ONNX keeps no checksums)")
    if not same_file(path, opened):
        raise ModelFileError("it changed while it was being read")


CONSTANT_VALUES = {  # a Constant node's attribute -> (dtype, bytes per value, a list?)
    "value_float": ("float32", 4, False), "value_floats": ("float32", 4, True),
    "value_int": ("int64", 8, False), "value_ints": ("int64", 8, True),
}  # fmt: skip


def constant_row(node: Any) -> TensorRow | None:
    """The tensor a Constant node outputs, as a row (None for a malformed node): from its
    `value` or `sparse_value` tensor, or from value_float(s), value_int(s), value_string(s)."""
    if len(node.attribute) != 1 or len(node.output) != 1:
        return None  # onnx.checker refuses it: a Constant has exactly one of them
    attribute, name = node.attribute[0], safe_text(node.output[0], 80)
    if attribute.name == "value":
        return TensorRow(
            name, list(attribute.t.dims), onnx_dtype(attribute.t.data_type)[0], onnx_bytes(attribute.t)
        )
    if attribute.name == "sparse_value":
        sparse = attribute.sparse_tensor
        dtype = f"{onnx_dtype(sparse.values.data_type)[0]} (sparse)"
        return TensorRow(
            name, list(sparse.dims), dtype, onnx_bytes(sparse.values) + onnx_bytes(sparse.indices)
        )
    if attribute.name in CONSTANT_VALUES:
        dtype, width, is_list = CONSTANT_VALUES[attribute.name]
        count = len(attribute.floats if dtype == "float32" else attribute.ints) if is_list else 1
        return TensorRow(name, [count] if is_list else [], dtype, count * width)
    if attribute.name in ("value_string", "value_strings"):
        strings = list(attribute.strings) if attribute.name == "value_strings" else [attribute.s]
        shape = [len(strings)] if attribute.name == "value_strings" else []
        return TensorRow(name, shape, "string", sum(len(s) for s in strings))
    return None


def onnx_contents(model: Any, report: Report) -> dict[str, tuple]:
    """Rows for the initializers and for the Constant nodes' values (some exporters keep the
    weights as Constants); shapes, for the fit check, of the initializers, whose names are
    the state_dict's: a Constant's output is named by the exporter."""
    rows, shapes, constants = [], {}, 0
    for graph in all_graphs(model):
        for tensor in graph.initializer:
            if len(rows) >= MAX_ROWS:
                break
            dtype, shape = onnx_dtype(tensor.data_type)[0], list(tensor.dims)
            rows.append(TensorRow(safe_text(tensor.name, 80), shape, dtype, onnx_bytes(tensor)))
            if graph is model.graph:
                shapes[tensor.name] = (tuple(shape), dtype)
    for node in all_nodes(model):
        constant = node.op_type == "Constant" and node.domain in ("", "ai.onnx")
        if constant and len(rows) < MAX_ROWS and (row := constant_row(node)) is not None:
            rows.append(row)
            constants += 1
    report.contents.tensors = rows
    report.contents.storage_bytes = sum(row.bytes for row in rows)
    if constants:
        report.contents.note = f"{constants} of them are the values of Constant nodes, not initializers"
    return shapes


def inspect_onnx(
    path: Path, file: IO[bytes], size: int, report: Report, opened: os.stat_result
) -> dict[str, tuple]:
    """Producer, opset, inputs, outputs, initializers and Constants, with onnx's parser and
    checker. The model is parsed from the snapshot `file`; `opened` is the file `path` named
    when it was opened, which the checker must still find there to read external data."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        not_for_torch(report, "onnx", "ONNX model (by its first bytes; the onnx package is not installed)",
                      "onnx or onnxruntime (pip install onnx)")  # fmt: skip
        return {}
    if size > MAX_ONNX_BYTES:
        raise ModelFileError(
            f"it has {size} bytes, more than the {MAX_ONNX_BYTES} one ONNX protobuf may hold"
        )
    try:  # protobuf's parser refuses nesting deeper than 100 levels itself, so this cannot overflow
        model = onnx.load_model_from_string(file.read(size))
    except (DecodeError, ValueError, RuntimeError, RecursionError, MemoryError) as err:
        raise ModelFileError(f"it is not a well-formed ONNX model ({error_line(err)})") from None
    if not model.HasField("graph"):
        raise ModelFileError("it is not an ONNX model (a protobuf without a graph)")
    check_external_data(model, path.parent, report)
    check_onnx(path, opened, report)
    shapes = onnx_contents(model, report)
    opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
    producer = f"{model.producer_name} {model.producer_version}".strip() or "not recorded"
    report.metadata["onnx"] = {
        "producer": safe_text(producer, 80),
        "opset": safe_text(opsets, 120),
        "nodes": str(len(model.graph.node)),
    }
    for label, values in (("inputs", model.graph.input), ("outputs", model.graph.output)):
        report.metadata[label] = {safe_text(v.name, 60): safe_text(value_info_text(v), 80) for v in values}
    not_for_torch(
        report,
        "onnx",
        f"ONNX model (IR version {model.ir_version})",
        "onnxruntime.InferenceSession(path), or onnx.load(path)",
    )
    return shapes

"""The checks a DCP checkpoint folder goes through before any rank reads it, and its checksums.

`dcp.load` trusts its folder: it unpickles `.metadata` with plain `pickle`, seeks to any
offset and reads any length `.metadata` names, and narrows each chunk into place without
checking that it fits. DCP keeps no checksums, so a flipped bit in a weight loads silently.
`check_dcp_checkpoint` reads the folder as a stranger's, on one process, before any rank
starts, and refuses it in one `ModelFileError` line unless:

- the folder holds only `.metadata` and `__R_N.distcp` files, regular ones, each within a size
  cap, and every one of them matches the SHA-256 manifest written beside the folder at save
  time (`dcp-checkpoint.sha256`, in `sha256sum`'s format, so `sha256sum -c` checks it too);
- `.metadata` nests no deeper than a torch.save file may (hashing a deeper dict key crashes
  Python), and unpickles through an allowlist of DCP's own metadata classes into DCP's index;
- every item's offset and length lie inside the real file it names;
- every tensor has the shape and dtype the model (and its optimizer) gives it, its chunks lie
  inside it and cover it exactly, and each chunk's bytes hold a plain tensor of the chunk's
  shape; every other item loads with `torch.load(weights_only=True)`.

Memory and time are bounded by the files' sizes, which are capped. Not a lesson: the chapter
teaches the plain version (its allowlist reader, weights-only planner and manifest).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from itertools import combinations
from math import prod
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorStorageMetadata,
)

from model_inspector.files import (
    CHUNK,
    MAX_FILE_BYTES,
    MAX_PICKLE_BYTES,
    ModelFileError,
    open_regular_file,
    refusing,
)
from model_inspector.loading import check_plain_tensor, read_untrusted
from model_inspector.pickles import MAX_NESTING, note_globals, pickle_globals, pickle_nesting
from model_inspector.report import Report
from model_inspector.text import error_line, safe_text

MAX_METADATA_BYTES = 64 * 1024  # an index of names and shapes: this one is 9 KB; room for some 200 items
MAX_MANIFEST_BYTES = 64 * 1024  # one 80-byte line per file
MAX_FILES = 1024  # a .distcp file per rank and save: far more than any run here writes
METADATA = ".metadata"
SHARD_NAME = re.compile(r"__\d{1,6}_\d{1,6}\.distcp")
MANIFEST_LINE = re.compile(r"([0-9a-f]{64})  (\.metadata|__\d{1,6}_\d{1,6}\.distcp)")
# What `.metadata` may name when unpickled: DCP's own index classes, torch.Size and dtypes.
DCP_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
}


def manifest_path(folder: Path) -> Path:
    """Where the checksums of `folder` live: beside it, `dcp-checkpoint` -> `dcp-checkpoint.sha256`."""
    return folder.with_name(f"{folder.name}.sha256")


def check_dcp_checkpoint(folder: Path, expected: Mapping[str, Tensor], made_by: str = "") -> str:
    """Check the DCP checkpoint in `folder` against the tensors `expected` (flat DCP names, such as
    `model.hidden.weight`, to the tensor a load fills); return the manifest it matched."""
    sizes = checkpoint_files(folder, made_by)
    with refusing(folder):
        manifest = verify_manifest(folder, sizes)
        metadata = read_metadata(folder / METADATA)
        storage = check_storage(metadata, sizes)
        check_tensors_fit(metadata, storage, expected)
        check_items(folder, metadata, storage, expected)
    return manifest


# ---- The files, and their checksums ----


def checkpoint_files(folder: Path, made_by: str) -> dict[str, int]:
    """Every file in `folder` by name, with its size: only DCP's, regular, and within the caps."""
    if not folder.is_dir():
        hint = f"; create it with: {made_by}" if made_by else ""
        what = "is not a folder" if folder.exists() else "not found"
        raise ModelFileError(f"{folder} {what}{hint}")
    names = sorted(path.name for _, path in zip(range(MAX_FILES + 1), folder.iterdir(), strict=False))
    if len(names) > MAX_FILES:
        raise ModelFileError(f"{folder} refused: it holds more than {MAX_FILES} files")
    if METADATA not in names:
        open_regular_file(folder / METADATA, made_by)  # says "not found", with the hint
    sizes = {}
    for name in names:
        if name != METADATA and not SHARD_NAME.fullmatch(name):
            raise ModelFileError(f"{folder} refused: it holds {safe_text(name, 80)}, not a DCP file")
        with open_regular_file(folder / name) as file:  # a regular file, not a FIFO that would block
            sizes[name] = os.fstat(file.fileno()).st_size
        limit = MAX_METADATA_BYTES if name == METADATA else MAX_FILE_BYTES
        if sizes[name] > limit:
            raise ModelFileError(
                f"{folder} refused: {name} has {sizes[name]} bytes, more than the {limit} allowed"
            )
    return sizes


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular_file(path) as file:
        while block := file.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path) -> Path:
    """The manifest the chapter writes at save time, for checkpoints made elsewhere (tests, probes)."""
    lines = [f"{sha256_of(path)}  {path.name}\n" for path in sorted(folder.iterdir())]
    manifest = manifest_path(folder)
    manifest.write_text("".join(lines))
    return manifest


def verify_manifest(folder: Path, sizes: Mapping[str, int]) -> str:
    """The manifest beside `folder`, if it lists exactly its files and each one's SHA-256 matches."""
    path = manifest_path(folder)
    if not path.exists():
        raise ModelFileError(
            f"it has no checksum manifest {path.name} beside it, so a changed weight would go unnoticed "
            f"(if you trust these files: cd {folder} && sha256sum {METADATA} *.distcp > ../{path.name})"
        )
    with open_regular_file(path) as file:
        text = file.read(MAX_MANIFEST_BYTES + 1).decode("utf-8", errors="replace")
    if len(text) > MAX_MANIFEST_BYTES:
        raise ModelFileError(f"its manifest {path.name} is larger than {MAX_MANIFEST_BYTES} bytes")
    listed = {}
    for line in text.splitlines():
        if not (found := MANIFEST_LINE.fullmatch(line)):
            raise ModelFileError(f"its manifest {path.name} has a line that is not `sha256  name`")
        listed[found[2]] = found[1]
    if sorted(listed) != sorted(sizes):
        raise ModelFileError(f"its manifest {path.name} does not list exactly the files in the folder")
    for name in sorted(listed):
        if sha256_of(folder / name) != listed[name]:
            raise ModelFileError(
                f"{name} does not match its SHA-256 in {path.name}: it changed since it was saved"
            )
    return text


# ---- .metadata ----


class DCPMetadataUnpickler(pickle.Unpickler):
    """Unpickles `.metadata`, admitting only DCP's metadata classes, torch.Size and dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in DCP_METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise ModelFileError(
            f".metadata refers to {safe_text(module, 80)}.{safe_text(name, 80)}, not DCP metadata"
        )


def read_metadata(path: Path) -> Metadata:
    """`.metadata` (already size-capped), its nesting counted before it is unpickled, as DCP's index."""
    with open_regular_file(path) as file:
        data = file.read(MAX_METADATA_BYTES + 1)
    try:
        too_deep = pickle_nesting(io.BytesIO(data), MAX_NESTING) > MAX_NESTING
    except (ValueError, IndexError, KeyError, EOFError):
        too_deep = False  # not a well-formed pickle: the unpickler below says so
    if too_deep:
        raise ModelFileError(f".metadata is nested more than {MAX_NESTING} levels deep")
    try:
        metadata = DCPMetadataUnpickler(io.BytesIO(data)).load()
    except ModelFileError:
        raise
    except Exception as err:  # a damaged pickle can fail in many ways
        raise ModelFileError(f".metadata is damaged ({error_line(err)})") from None
    if not (
        isinstance(metadata, Metadata)
        and isinstance(metadata.state_dict_metadata, dict)
        and isinstance(metadata.storage_data, dict)
        and all(type(name) is str for name in metadata.state_dict_metadata)
        and all(
            isinstance(item, (TensorStorageMetadata, BytesStorageMetadata))
            for item in metadata.state_dict_metadata.values()
        )
        and all(isinstance(index, MetadataIndex) for index in metadata.storage_data)
    ):
        raise ModelFileError(".metadata is not DCP's index")
    return metadata


def whole_numbers(values: object) -> tuple[int, ...] | None:
    """`values` as a tuple of non-negative ints, or None if it is anything else."""
    if not isinstance(values, (tuple, list)) or not all(type(v) is int and v >= 0 for v in values):
        return None
    return tuple(values)


def check_storage(metadata: Metadata, sizes: Mapping[str, int]) -> dict[tuple[str, tuple[int, ...]], Any]:
    """Every item's place: a .distcp file of the folder, and offset + length inside that file's real size.
    Returns the items by (name, chunk offsets)."""
    storage = {}
    for index, info in metadata.storage_data.items():
        name, offsets = index.fqn, whole_numbers(index.offset or ())
        path = getattr(info, "relative_path", None)
        if type(name) is not str or offsets is None or name not in metadata.state_dict_metadata:
            raise ModelFileError(".metadata has an index entry that names no item it describes")
        if not (isinstance(path, str) and SHARD_NAME.fullmatch(path) and path in sizes):
            raise ModelFileError(f"{safe_text(name)} is stored in a file that is not in the folder")
        if not (
            type(info.offset) is int and type(info.length) is int and info.offset >= 0 and info.length >= 0
        ):
            raise ModelFileError(f"{safe_text(name)} has a bad offset or length")
        if info.offset + info.length > sizes[path]:
            raise ModelFileError(
                f"{safe_text(name)} claims bytes {info.offset} to {info.offset + info.length} of {path}, "
                f"which has {sizes[path]}: the file is truncated or the index forged"
            )
        if getattr(info, "transform_descriptors", None):
            raise ModelFileError(f"{safe_text(name)} is stored transformed, which this check cannot read")
        storage[name, offsets] = info
    return storage


# ---- The tensors, against the model ----


def check_tensors_fit(
    metadata: Metadata, storage: Mapping[tuple[str, tuple[int, ...]], Any], expected: Mapping[str, Tensor]
) -> None:
    """Every expected tensor present, of its shape and dtype, its chunks inside it, covering it once."""
    items = metadata.state_dict_metadata
    unexpected = [
        name
        for name, item in items.items()
        if isinstance(item, TensorStorageMetadata) and name not in expected
    ]
    if unexpected:
        raise ModelFileError(f"it holds tensor {safe_text(unexpected[0])}, which the model does not have")
    for name, like in expected.items():
        item = items.get(name)
        if not isinstance(item, TensorStorageMetadata):
            raise ModelFileError(f"it has no tensor {safe_text(name)}")
        shape = whole_numbers(item.size)
        if shape != tuple(like.shape):
            shown = shape if shape is not None else safe_text(item.size, 60)
            raise ModelFileError(f"{safe_text(name)} has shape {shown}, expected {tuple(like.shape)}")
        dtype = getattr(item.properties, "dtype", None)
        if dtype != like.dtype:
            raise ModelFileError(f"{safe_text(name)} is {safe_text(dtype, 40)}, expected {like.dtype}")
        check_chunks(name, shape, item.chunks, storage)


def check_chunks(
    name: str, shape: tuple[int, ...], chunks: object, storage: Mapping[tuple[str, tuple[int, ...]], Any]
) -> None:
    if not isinstance(chunks, list) or not all(isinstance(chunk, ChunkStorageMetadata) for chunk in chunks):
        raise ModelFileError(f"{safe_text(name)} has no list of chunks")
    boxes = []
    for chunk in chunks:
        offsets, sizes = whole_numbers(chunk.offsets), whole_numbers(chunk.sizes)
        if (
            offsets is None
            or sizes is None
            or len(offsets) != len(shape)
            or len(sizes) != len(shape)
            or any(start + size > dim for start, size, dim in zip(offsets, sizes, shape, strict=True))
        ):
            raise ModelFileError(f"{safe_text(name)} has a chunk that does not fit its shape {shape}")
        if (name, offsets) not in storage:
            raise ModelFileError(f"{safe_text(name)} has a chunk at {offsets} that no file stores")
        boxes.append((offsets, sizes))
    for (a_start, a_size), (b_start, b_size) in combinations(boxes, 2):
        if all(
            a < b + bs and b < a + as_ for a, as_, b, bs in zip(a_start, a_size, b_start, b_size, strict=True)
        ):
            raise ModelFileError(f"{safe_text(name)} has chunks that overlap")
    if sum(prod(sizes) for _, sizes in boxes) != prod(shape):
        raise ModelFileError(f"{safe_text(name)}'s chunks do not cover its shape {shape}")


def check_items(
    folder: Path,
    metadata: Metadata,
    storage: Mapping[tuple[str, tuple[int, ...]], Any],
    expected: Mapping[str, Tensor],
) -> None:
    """Each item's bytes through the checks for untrusted torch.save files; each chunk a plain
    tensor of its chunk's shape and the model's dtype (finite), as `dcp.load` will narrow it."""
    chunk_sizes = {
        (name, tuple(chunk.offsets)): tuple(chunk.sizes)
        for name, item in metadata.state_dict_metadata.items()
        if isinstance(item, TensorStorageMetadata)
        for chunk in item.chunks
    }
    with tempfile.TemporaryDirectory(prefix="dcp-item-") as scratch:  # mkdtemp: mode 0700
        item_file = Path(scratch) / "item.pt"
        for (name, offsets), info in sorted(
            storage.items(), key=lambda entry: (entry[1].relative_path, entry[1].offset)
        ):
            with open_regular_file(folder / info.relative_path) as file:
                file.seek(info.offset)
                item_file.write_bytes(file.read(info.length))  # at most the file's size, itself capped
            try:
                value = read_untrusted(item_file, max_bytes=info.length)
            except ModelFileError as err:
                reason = str(err).split(" refused: ", 1)[-1]
                raise ModelFileError(f"{safe_text(name)} in {info.relative_path}: {reason}") from None
            if (name, offsets) in chunk_sizes:
                like = torch.empty(chunk_sizes[name, offsets], dtype=expected[name].dtype)
                check_plain_tensor(f"{name} (chunk at {offsets})", value, like=like)


def inspect_dcp(folder: Path, report: Report) -> None:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())
    report.kind, report.format = "dcp", "torch.distributed.checkpoint folder"
    report.integrity.records = [{"name": safe_text(p.name, 80), "bytes": p.stat().st_size} for p in files]
    report.bytes = sum(p.stat().st_size for p in files)
    metadata = folder / ".metadata"
    if metadata.stat().st_size <= MAX_PICKLE_BYTES:
        with open_regular_file(metadata) as f:
            names = pickle_globals(f.read(MAX_PICKLE_BYTES), limit=200)
        note_globals(report, names, None)
    report.needs.weights_only = "no: torch.distributed.checkpoint reads .metadata with pickle.load"
    report.integrity.notes.append("DCP stores no checksums: damage cannot be detected")
    report.reasons.append(
        "DCP reads its .metadata with pickle.load, which runs any code in it; "
        "load it only if you trust its source"
    )

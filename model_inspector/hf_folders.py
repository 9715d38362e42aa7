"""Sharded weights: a folder of shards and the index JSON that maps each tensor to its shard.

Hugging Face saves a large model as `model-00001-of-00003.safetensors`, ... (or
`pytorch_model-00001-of-00003.bin`, ... from torch.save) plus `model.safetensors.index.json`
(`pytorch_model.bin.index.json`), whose `weight_map` names each tensor's shard, and usually a
`config.json` naming the architecture. Every shard is inspected as a file of its own; the
index is then checked against what the shards hold. A shard the index names outside the
folder is refused before anything is opened.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from model_inspector.files import ModelFileError, open_regular_file
from model_inspector.loading import key_list
from model_inspector.report import Report
from model_inspector.text import safe_text

MAX_INDEX_BYTES = 64 * 2**20  # an index for a model of 100,000 tensors is a few MiB
MAX_CONFIG_BYTES = 2**20
MAX_SHARDS = 10_000
MAX_FILES = 10_000  # files in a folder that are looked at for code
# Weights files that unpickle: a loader picks one of these up beside the safetensors shards
# (transformers, with use_safetensors=False or where safetensors is not installed).
PICKLE_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib")


def find_index(folder: Path) -> Path | None:
    """The folder's `*.index.json` (one only), or None."""
    found = sorted(p for p in folder.iterdir() if p.name.endswith(".index.json"))
    if len(found) > 1:
        raise ModelFileError(f"{folder} holds {len(found)} index files; inspect a folder with one")
    return found[0] if found else None


def read_json(path: Path, limit: int) -> Any:
    """A JSON file of at most `limit` bytes, or ModelFileError."""
    with open_regular_file(path) as file:
        size = os.fstat(file.fileno()).st_size
        if size > limit:
            raise ModelFileError(f"{path.name} has {size} bytes, more than the {limit} this tool reads")
        data = file.read()
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ModelFileError(f"{path.name} is not valid JSON ({safe_text(err, 80)})") from None


def hub_cache_blobs(folder: Path) -> Path | None:
    """The `blobs/` folder of a Hugging Face cache, if `folder` is one of its snapshots
    (`models--org--name/snapshots/REVISION/`), where every file links to `../../blobs/HASH`."""
    blobs = folder.parent.parent / "blobs"
    if folder.parent.name == "snapshots" and blobs.is_dir() and not blobs.is_symlink():  # a link could be "/"
        return blobs
    return None


def outside_problem(folder: Path, path: Path) -> str | None:
    """Why `path` in `folder` may not be followed: a link loop, or links that lead out of the
    folder (and out of its Hugging Face cache's blobs/); None if it may."""
    try:
        target = path.resolve()
    except (RuntimeError, OSError):  # a link loop: RuntimeError before Python 3.13
        return "a link loop"
    allowed = [folder.resolve(), *([blobs.resolve()] if (blobs := hub_cache_blobs(folder)) else [])]
    if not any(target.is_relative_to(place) for place in allowed):
        return "a link out of the folder"
    return None


def shard_path(folder: Path, name: Any) -> Path:
    """The shard `name` in `folder`: a plain file name whose links lead to a file in the folder
    or in its Hugging Face cache's blobs/, or refused in one line (a link loop included)."""
    text = name if isinstance(name, str) else ""
    outside = (
        not text
        or PurePosixPath(text).name != text
        or PureWindowsPath(text).name != text
        or text in (".", "..")
        or ":" in text
    )
    if outside:
        raise ModelFileError(
            f"its index names the shard {safe_text(name, 80)}, which is not a file in the folder"
        )
    if problem := outside_problem(folder, folder / text):
        raise ModelFileError(
            f"its index names the shard {safe_text(name, 80)}, which is not a file in the folder ({problem})"
        )
    return folder / text


def code_in_folder(folder: Path, taken: set[str]) -> list[str]:
    """What in the folder, besides the files `taken` into account already, a loader would run
    or unpickle: Python files (run with trust_remote_code=True), native libraries, an
    `auto_map` in any JSON file (which names such code), and pickle-based weights beside the
    shards, known by their first bytes whatever their names."""
    found = []
    for count, path in enumerate(sorted(folder.rglob("*"))):
        if count >= MAX_FILES:
            found.append(f"more than {MAX_FILES} files: the rest were not looked at")
            break
        name = safe_text(path.relative_to(folder), 80)
        if path.is_symlink() and (problem := outside_problem(folder, path)):
            found.append(f"{name} is not followed: {problem}")
            continue
        if str(path.relative_to(folder)) in taken or path.is_dir():
            continue
        if problem := code_in_file(path):
            found.append(f"{name} {problem}")
    return found


NATIVE_MAGIC = (
    b"\x7fELF",
    b"MZ",
    b"\xcf\xfa\xed\xfe",
    b"\xce\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",
)  # ELF, PE, Mach-O


def code_in_file(path: Path) -> str:
    """What in one file of a model folder a loader would run or unpickle, in words; or ''."""
    suffix = path.suffix.lower()
    if suffix in (".py", ".pyc", ".pyw"):
        return "is Python code, which transformers runs with trust_remote_code=True"
    try:
        with open_regular_file(path) as file:
            head = file.read(16)
    except ModelFileError:
        return ""  # not a regular file: nothing a loader reads
    if suffix in (".so", ".dll", ".dylib", ".pyd") or head.startswith(NATIVE_MAGIC):
        return "is a native library: code that runs once it is loaded"
    if suffix in PICKLE_WEIGHTS or head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "is a pickle-based weights file (torch.save's, or a pickle) beside the shards: inspect it"
    if suffix == ".json":
        try:
            config = read_json(path, MAX_CONFIG_BYTES)
        except ModelFileError:
            return ""  # not a config (a tokenizer's vocabulary is megabytes): no loader takes code from it
        if has_auto_map(config):
            return "has an auto_map, naming Python code that transformers runs with trust_remote_code=True"
    return ""


def has_auto_map(value: Any, depth: int = 0) -> bool:
    """An `auto_map` key anywhere in a JSON value (a multimodal config nests its parts' configs)."""
    if depth > 32:
        return True  # deeper than any config: not looked into, so not cleared
    if isinstance(value, dict):
        return "auto_map" in value or any(has_auto_map(v, depth + 1) for v in value.values())
    if isinstance(value, list):
        return any(has_auto_map(v, depth + 1) for v in value)
    return False


def read_index(index_path: Path) -> tuple[dict[str, str], int | None]:
    """The index's weight_map (tensor -> shard file name) and its metadata's total_size."""
    index = read_json(index_path, MAX_INDEX_BYTES)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(k, str) for k in weight_map):
        raise ModelFileError(f"{index_path.name} has no weight_map of tensor names to shard files")
    metadata = index.get("metadata")
    total = metadata.get("total_size") if isinstance(metadata, dict) else None
    return weight_map, total if type(total) is int else None


def model_config(folder: Path) -> dict[str, str]:
    """What config.json beside the shards says the model is (its architectures, type, dtype)."""
    path = folder / "config.json"
    if not path.is_file():
        return {}
    config = read_json(path, MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        return {"config.json": "not a JSON object"}
    shown = {}
    for key in ("architectures", "model_type", "torch_dtype", "dtype", "transformers_version"):
        value = config.get(key)
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        if value is not None:
            shown[key] = safe_text(value, 80)
    if not shown:  # a config of constructor arguments (PyTorchModelHubMixin's): a few of them
        scalars = [(k, v) for k, v in config.items() if isinstance(v, str | int | float | bool)]
        shown = {safe_text(key, 40): safe_text(value, 40) for key, value in scalars[:8]}
    return shown


def inspect_sharded(
    folder: Path, index_path: Path, report: Report, inspect_shard: Callable[[Path], Report]
) -> dict[str, tuple]:
    """Every shard, the index against them, totals and config.json; the shapes of all tensors."""
    weight_map, total = read_index(index_path)
    names = list(dict.fromkeys(weight_map.values()))
    if len(names) > MAX_SHARDS:
        raise ModelFileError(
            f"its index names {len(names)} shards, more than the {MAX_SHARDS} this tool reads"
        )
    shards = {name: shard_path(folder, name) for name in names}  # refuses a path outside before any opens
    safetensors = all(name.endswith(".safetensors") for name in names)
    report.kind = "sharded-safetensors" if safetensors else "sharded-torch"
    report.format = (
        f"sharded {'safetensors' if safetensors else 'torch.save'} folder: {len(names)} shards "
        f"and {safe_text(index_path.name, 80)}"
    )
    missing = [name for name, path in shards.items() if not path.exists()]
    if missing:
        report.reasons.append(f"shards the index names are not in the folder: {key_list(missing)}")
    rows, shapes, records, held = [], {}, [], {}
    globals_found: set[str] = set()
    loads: set[str] = set()
    for name, path in shards.items():
        if name in missing:
            records.append({"name": safe_text(name, 80), "bytes": 0, "verdict": "missing"})
            continue
        try:
            shard = inspect_shard(path)
        except ModelFileError as err:  # a shard that cannot be read at all is one reason among the others
            records.append({"name": safe_text(name, 80), "bytes": path.stat().st_size, "verdict": "refused"})
            report.reasons.append(f"shard {safe_text(name, 80)}: {err}")
            continue
        verdict = "refused" if shard.reasons else "ok"
        tensors = len(shard.contents.tensors or [])
        records.append(
            {"name": safe_text(name, 80), "bytes": shard.bytes, "verdict": verdict, "tensors": tensors}
        )
        shown = safe_text(name, 80)
        report.reasons += [f"shard {shown}: {reason}" for reason in shard.reasons]
        report.integrity.problems += [f"shard {shown}: {p}" for p in shard.integrity.problems]
        report.integrity.notes += [f"shard {shown}: {note}" for note in shard.integrity.notes]
        globals_found.update(shard.needs.globals or [])
        loads.add(shard.needs.weights_only)
        report.needs.map_location = shard.needs.map_location or report.needs.map_location
        if shard.loads_with:
            report.loads_with = f"{shard.loads_with}, shard by shard"
        for row in shard.contents.tensors or []:
            rows.append(row)
            held[row.name] = name
            shapes[row.name] = (tuple(row.shape), row.dtype)
    report.integrity.records = records
    report.bytes = sum(record["bytes"] for record in records)
    report.contents.tensors = rows
    report.contents.storage_bytes = sum(row.bytes for row in rows)
    present = [name for name in names if name not in missing]
    absent = [t for t, shard in weight_map.items() if shard in present and held.get(t) != shard]
    unlisted = [t for t in held if t not in weight_map]
    if absent:
        report.reasons.append(f"tensors the index names are not in their shard: {key_list(absent)}")
    if unlisted:
        report.reasons.append(f"tensors in the shards that the index does not name: {key_list(unlisted)}")
    if not missing and total is not None:
        taken = report.contents.storage_bytes
        report.integrity.notes.append(
            f"the index's total_size, {total} bytes, matches the shards' tensors"
            if total == taken
            else f"the index's total_size says {total} bytes; the shards' tensors take {taken}"
        )
    if config := model_config(folder):
        report.metadata["config.json"] = config
    report.reasons += code_in_folder(folder, {*names, index_path.name})
    report.needs.globals = sorted(globals_found)
    if safetensors:
        report.needs.weights_only = "not needed: safetensors holds no code"
    else:
        report.needs.weights_only = (
            f"{loads.pop()}, every shard"
            if len(loads) == 1
            else "differs from shard to shard (see the reasons)"
        )
    return shapes


WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # what save_pretrained writes, unsharded


def weights_file(folder: Path) -> str | None:
    """The one unsharded weights file of a Hugging Face-style folder, by its usual name, or None."""
    found = [name for name in WEIGHTS_FILES if os.path.lexists(folder / name)]
    if len(found) > 1:
        raise ModelFileError(f"{folder} holds both {found[0]} and {found[1]}; inspect each on its own")
    return found[0] if found else None


def inspect_model_folder(
    folder: Path, name: str, report: Report, inspect_file: Callable[[Path], Report]
) -> dict[str, tuple]:
    """A Hugging Face-style folder with one weights file and its config.json, as save_pretrained
    (or PyTorchModelHubMixin) writes a small model: the file's report, every other file in the
    folder accounted for, and what config.json says the model is; the shapes of its tensors."""
    inner = inspect_file(shard_path(folder, name))  # refuses a link out of the folder before it opens
    report.kind = "hf-folder"
    report.format = f"Hugging Face-style model folder: {safe_text(name, 80)} ({inner.format})"
    report.bytes = inner.bytes
    report.contents, report.needs, report.integrity = inner.contents, inner.needs, inner.integrity
    report.metadata = inner.metadata
    report.reasons += inner.reasons
    report.caveats += inner.caveats
    default = "safetensors" if inner.kind == "safetensors" else "torch.load(weights_only=True)"
    report.loads_with = inner.loads_with or default
    if config := model_config(folder):
        report.metadata["config.json"] = config
    report.reasons += code_in_folder(folder, {name})
    return {row.name: (tuple(row.shape), row.dtype) for row in inner.contents.tensors or []}

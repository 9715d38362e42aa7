"""The formats that carry code: torch.export's .pt2, AOTInductor packages, torch.package
archives and TorchScript. Each is read from its records; nothing in it is loaded or run."""

from __future__ import annotations

import contextlib
import json
import zipfile

from model_inspector import standins
from model_inspector.files import MAX_PICKLE_BYTES, ZIP_ERRORS, ModelFileError
from model_inspector.pickles import note_globals, pickle_globals
from model_inspector.report import Report, TensorRow, listed
from model_inspector.safetensors_files import MAX_HEADER_BYTES
from model_inspector.sniff import AOTI_FOLDER
from model_inspector.text import safe_text
from model_inspector.torch_files import list_standins

PT2_DTYPES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float16", 7: "float32"}


PT2_DTYPES |= {8: "float64", 12: "bool", 13: "bfloat16"}


NATIVE_CODE = (".so", ".dll", ".dylib", ".pyd", ".cubin", ".hsaco", ".spv", ".o")  # loaded, then run


def pt2_contents(archive: zipfile.ZipFile, folder: str, report: Report) -> dict[str, tuple]:
    """torch.export's weights, from the JSON config that describes them."""
    name = f"{folder}/data/weights/model_weights_config.json"
    if name not in archive.namelist() or archive.getinfo(name).file_size > MAX_HEADER_BYTES:
        return {}
    try:
        config = dict(json.loads(archive.read(name))["config"])
    except (KeyError, TypeError, *ZIP_ERRORS):
        report.reasons.append("its weights config is malformed")
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
            report.reasons.append(f"its weights config entry for {safe_text(key, 80)} is malformed")
            continue
        if any(n < 0 for n in shape):
            report.reasons.append(
                f"its weights config gives {safe_text(key, 80)} a negative dimension: shape {shape}"
            )
            continue
        nbytes = archive.getinfo(record).file_size if record in archive.namelist() else 0
        rows.append(TensorRow(safe_text(key, 80), shape, dtype, nbytes, device))
        shapes[key] = (tuple(shape), dtype)
        if entry.get("use_pickle"):
            pickled.append(safe_text(key, 80))
    report.contents.tensors = rows
    report.contents.storage_bytes = sum(row.bytes for row in rows)
    if pickled:
        report.needs.pickled_weights = pickled
    return shapes


def package_contents(archive: zipfile.ZipFile, folder: str, report: Report) -> dict[str, tuple]:
    """A torch.package archive: the Python source it carries, its pickles and what they import.

    torch.package.PackageImporter imports the packaged modules from their source in the
    archive, and unpickles each object with them: loading it runs that code, and the pickles
    may name any function besides. Nothing here is imported or unpickled."""
    report.format = "torch.package archive (torch.package.PackageExporter)"
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
    report.metadata["code"] = f"{len(sources)} Python files: {listed(sources, 6) or 'none'}"
    report.metadata["pickles"] = listed([safe_text(name, 100) for name in pickles], 6) or "none"
    report.needs.weights_only = "not applicable: torch.package.PackageImporter reads it, not torch.load"
    report.reasons.append(
        f"a torch.package archive, a format that carries code: torch.package.PackageImporter imports the "
        f"Python source in it ({listed(sources) or 'none'}) and unpickles "
        f"{listed([safe_text(name, 100) for name in pickles]) or 'its objects'} with it, running that code; "
        "there is no safe way to load it: read its source, and load it only if you trust where it came from"
    )
    return {}


def aoti_contents(archive: zipfile.ZipFile, folder: str, report: Report) -> None:
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
    report.metadata["code"] = (
        f"{len(native)} compiled files: {listed(native) or 'none'}; "
        f"{len(sources)} sources: {listed(sources) or 'none'}"
    )
    report.metadata["aoti_models"] = ", ".join(models)
    report.needs.weights_only = "not applicable: torch._inductor.aoti_load_package reads it, not torch.load"
    report.reasons.append(
        f"an AOTInductor package, a format that carries code: torch._inductor.aoti_load_package loads "
        f"its compiled library ({listed(native) or 'none found'}) into the process, and that runs; "
        "there is no safe way to load it: use it only if you trust where it came from"
    )
    if programs:
        report.reasons.append(
            f"it also holds an exported program ({listed(programs)}), which torch.export.load reads; "
            "torch.export.load may fall back to torch.load(weights_only=False) on its pickled parts"
        )
    else:
        report.reasons.append(
            "it holds no exported program (models/*.json): torch.export.load cannot read it"
        )


def torchscript_contents(archive: zipfile.ZipFile, folder: str, report: Report) -> dict[str, tuple]:
    """The tensors a TorchScript archive's data.pkl names, read with stand-ins; its code files."""
    try:
        found, code = standins.read_torchscript(archive, folder)
    except ModelFileError as err:
        report.reasons.append(str(err))
        return {}
    storages = {t.storage.key: t.storage for t in found.tensors}
    for key, ref in storages.items():
        record = f"{folder}/data/{key}"
        held = archive.getinfo(record).file_size if record in archive.namelist() else 0
        if held < ref.nbytes:
            report.reasons.append(f"storage {key} needs {ref.nbytes} bytes; its record holds {held}")
    list_standins(found, report)
    report.metadata["code"] = f"{len(code)} files: {', '.join(code[:6])}{', ...' if len(code) > 6 else ''}"
    return {t.name: (tuple(t.shape), t.storage.dtype) for t in found.tensors}

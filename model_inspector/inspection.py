"""The whole report for a path: sniff the format, read it with its reader, check the fit."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path
from typing import Any

from torch import nn

from model_inspector import other_formats, standins
from model_inspector.checkpoints import note_devices
from model_inspector.code_formats import aoti_contents, package_contents, pt2_contents, torchscript_contents
from model_inspector.files import (
    MAX_PICKLE_BYTES,
    ZIP_ERRORS,
    ModelFileError,
    open_regular_file,
    refusing,
    snapshot_of,
)
from model_inspector.fit import with_fit
from model_inspector.hf_folders import (
    WEIGHTS_FILES,
    find_index,
    inspect_model_folder,
    inspect_sharded,
    weights_file,
)
from model_inspector.pickles import check_pickle_nesting, legacy_globals, note_globals, pickle_budget_problem
from model_inspector.report import Needs, Report, new_report
from model_inspector.safetensors_files import safetensors_contents, safetensors_header, safetensors_opens
from model_inspector.sniff import sniff, zip_layout
from model_inspector.text import safe_text
from model_inspector.torch_files import (
    import_registering,
    inspect_legacy,
    inspect_pickle_file,
    library_names,
    note_library,
    standin_contents,
    torch_contents,
    torch_needs,
)
from model_inspector.zips import check_records, stored_bytes, zip_structure_problems


def inspect_zip(
    path: Path, file: Any, size: int, report: Report, name: str, model: nn.Module | None = None
) -> dict[str, tuple]:
    """A zip archive; `path` is the snapshot to read, `name` the file's own name."""
    try:
        archive = zipfile.ZipFile(file)
    except ZIP_ERRORS:
        report.kind, report.format = "zip", "a zip archive, cut short or damaged (no central directory)"
        report.reasons.append("the file is truncated or corrupted (its zip archive is incomplete)")
        return {}
    kind, folder = zip_layout(archive)
    kind = other_formats.zip_kind(archive) if kind == "zip" else kind
    deflates = kind in ("torchscript", "npz", "keras")  # their writers compress records on purpose
    records, problems = (standins.inflated_records if deflates else check_records)(archive, size)
    problems += zip_structure_problems(file, size, archive)
    report.integrity.records, report.integrity.problems = records, problems
    report.reasons += problems

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

    report.kind = kind
    version = text_of("version") or text_of(".data/version") or "?"
    byteorder = text_of("byteorder") or "not recorded (little-endian assumed)"
    if kind == "torch-zip":
        report.format = f"torch.save zip archive, format version {version}, byte order {byteorder}"
        pickle_info = archive.getinfo(f"{folder}/data.pkl")
        if pickle_info.file_size > MAX_PICKLE_BYTES or pickle_info.compress_type != zipfile.ZIP_STORED:
            report.reasons.append(f"its data.pkl has {pickle_info.file_size} bytes: not scanned or loaded")
            report.needs.weights_only = f"not tried: data.pkl is over {MAX_PICKLE_BYTES} bytes"
            return {}
        data_pkl = stored_bytes(file, pickle_info)
        if too_much := pickle_budget_problem(data_pkl):  # not even scanned: reading it would take long
            report.reasons.append(too_much)
            report.needs.weights_only = "not tried: its pickle is too large to scan"
            return {}
        try:
            forged = standins.torch_zip_problems(archive, folder)
        except ModelFileError as err:
            forged = [str(err)]
        except ZIP_ERRORS:
            forged = []  # a damaged record: its CRC32 check above says so
        problems += forged
        report.reasons += forged
        module, what, library = library_names(data_pkl)  # DTensors, say: torch's own module allows them
        imported = bool(library) and import_registering(module)
        torch_needs(path, data_pkl, report, name)
        if problems:
            report.needs.weights_only = "not tried: the file failed the integrity checks"
            return {}
        try:  # a pickle nested thousands of levels deep would crash the load itself
            check_pickle_nesting(file, is_zip=True)
        except ModelFileError as err:
            report.needs.weights_only = f"not tried: {err}"
            report.reasons.append(str(err))
            return {}
        shapes = torch_contents(
            path,
            report,
            standins=lambda: standin_contents(archive, folder, report),
            subclasses=imported,
            model=model,
        )
        if imported:
            note_library(report, module, what, library)
        return shapes
    if kind == "torch-package":
        return package_contents(archive, folder, report)
    if kind == "aoti":
        report.format = (
            f"AOTInductor package (.pt2 with compiled code), archive format {text_of('archive_format')}"
        )
        aoti_contents(archive, folder, report)
        return pt2_contents(archive, folder, report)
    if kind == "pt2":
        report.format = f"torch.export program (.pt2), archive format {text_of('archive_format')}"
        report.reasons.append(
            "a torch.export program, not a weights file: torch.export.load may fall back to "
            "torch.load(weights_only=False) on its pickled parts; load it only if you trust its source"
        )
        report.needs.weights_only = "not applicable: torch.export.load reads it, not torch.load"
        return pt2_contents(archive, folder, report)
    if kind == "torchscript":
        report.format = "TorchScript archive (torch.jit.save)"
        report.reasons.append("TorchScript: torch.jit.load runs the code stored in it")
        report.needs.weights_only = "not applicable: torch.jit.load reads it, not torch.load"
        return torchscript_contents(archive, folder, report)
    if kind == "npz":
        other_formats.inspect_numpy(file, size, report, archive)
        return {}
    if kind == "keras":
        other_formats.inspect_keras(report)
        return {}
    report.format = "a zip archive, but not one that torch.save wrote"
    report.reasons.append("not a model file")
    return {}


def inspect_path(path: Path, described: str = "", model: nn.Module | None = None) -> Report:
    """The whole report for `path`, as a dict; raises ModelFileError only if it cannot be read."""
    try:
        is_folder = stat.S_ISDIR(path.stat().st_mode)
    except OSError:
        is_folder = False  # open_regular_file below says why in one line
    if is_folder:
        return inspect_folder(path, described, model)
    shapes: dict[str, tuple] = {}
    with (
        open_regular_file(path) as original,
        refusing(path),
        snapshot_of(original) as snapshot,
        snapshot.open("rb") as file,  # every reader reads the snapshot, never the file again
    ):
        size = os.fstat(file.fileno()).st_size
        report = new_report(path, size)
        head = file.read(16)
        file.seek(0)
        kind = sniff(head)
        if kind == "zip":
            shapes = inspect_zip(snapshot, file, size, report, path.name, model)
        elif kind == "safetensors":
            report.kind, report.format = (
                "safetensors",
                "safetensors (a JSON header, then raw tensor bytes)",
            )
            header, problems = safetensors_header(file, size)
            report.integrity.problems = problems
            report.reasons += problems
            shapes = safetensors_contents(header, report) if header else {}
            report.needs = Needs(globals=[], weights_only="not needed: safetensors holds no code")
            if not problems:
                safetensors_opens(snapshot, report)
        elif kind == "legacy-torch":
            report.kind, report.format = kind, "legacy torch.save format (before PyTorch 1.6)"
            note_globals(report, legacy_globals(file.read(min(size, MAX_PICKLE_BYTES))), None)
            file.seek(0)
            shapes = inspect_legacy(snapshot, file, size, report, model)
        elif kind == "pickle":
            report.kind, report.format = kind, f"plain pickle, protocol {head[1]}"
            inspect_pickle_file(file.read(min(size, MAX_PICKLE_BYTES)), report)
        elif (other := other_formats.sniff_other(head, path)) == "gguf":
            other_formats.inspect_gguf(file, size, report)
        elif other == "npy":
            other_formats.inspect_numpy(file, size, report, None)
        elif other == "hdf5":
            other_formats.inspect_hdf5(report)
        elif other == "onnx":
            shapes = other_formats.inspect_onnx(path, file, size, report, os.fstat(original.fileno()))
        elif other == "tflite":
            other_formats.inspect_tflite(file, size, report)
        elif other == "pte":
            other_formats.inspect_executorch(file, size, report)
        else:
            report.kind = "unknown"
            report.format = (
                "empty" if size == 0 else f"not a model file (it starts with {safe_text(head[:8])})"
            )
            report.reasons.append("not a model file")
        if report.kind in ("torch-zip", "legacy-torch"):
            note_devices(snapshot, report)
    return with_fit(report, shapes, described, model)


def inspect_folder(path: Path, described: str, model: nn.Module | None) -> Report:
    """A DCP checkpoint (a .metadata file), sharded weights (an index JSON and its shards), or a
    Hugging Face-style folder of one weights file beside its config.json."""
    report = new_report(path, 0)
    if os.path.lexists(path / ".metadata"):
        from model_inspector.dcp import inspect_dcp  # it imports torch.distributed: 0.5 s, for DCP only

        inspect_dcp(path, report)
        return report
    index = find_index(path)
    single = weights_file(path) if index is None else None
    if index is None and single is None:
        raise ModelFileError(
            f"{path} is a folder with no .metadata file (DCP), *.index.json (sharded weights), "
            f"or {' or '.join(WEIGHTS_FILES)} (a Hugging Face-style folder)"
        )
    with refusing(path):  # a forged index is refused in one line that names the folder
        if index is not None:
            shapes = inspect_sharded(path, index, report, inspect_path)
        else:
            shapes = inspect_model_folder(path, single, report, inspect_path)
    return with_fit(report, shapes, described, model)

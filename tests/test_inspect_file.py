"""inspect_file.py states facts about any model file, and each fact it states is true.

One file of each format, good, hostile and damaged, is built once; the report on each is
checked against what went into it. The reports come from inspect_path in this process,
the printed output from the script run as a reader runs it.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import pickletools
import re
import resource
import shutil
import subprocess
import sys
import threading
import warnings
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from build_model import Multiclass
from model_inspector import files as inspector_files
from model_inspector import inspection, pickles, render, safetensors_files, text, torch_files
from model_inspector.files import MAX_PICKLE_BYTES, ModelFileError
from model_inspector.loading import read_untrusted
from model_inspector.report import new_report
from support.cli import EXIT_BAD_INPUT
from support.lab_tools import Hostile
from support.settings import MODEL_FILE
from tests.bad_files import (
    ESCAPES,
    EXIT_TOO_MUCH_MEMORY,
    DeclaredStorage,
    DeclaredTensor,
    build_corpus,
    damaged_copies,
    gadget_pickle,
    gadgets,
    global_pickle,
    grew_too_much,
    limit_memory,
    make_flipped_byte,
    make_no_crc,
    make_zip_bomb,
    many_lists_pickle,
    nested_dict_pickle,
    probes,
    save_tagged,
    stored,
    torch_like_zip,
    torch_pickle,
    write_zip,
)
from tests.helpers import REPO, run_chapter_here, run_in_fork, run_script, run_script_for_real

# A reader's own model file, for --model-file: the walkthrough's model wrapped in another module.
READER_MODEL = """
from torch import nn
from build_model import Multiclass
from support.settings import MODEL_FILE

class Wrapped(nn.Module):
    def __init__(self, n_hidden=8):
        super().__init__()
        self.net = Multiclass(n_hidden=n_hidden)
"""


def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return Multiclass().state_dict()


def write_dcp(folder: Path) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "no process group: saving as a single process" is the point
        warnings.simplefilter("ignore")
        dcp.save(state(), checkpoint_id=folder)


def write_pt2(path: Path) -> None:
    program = torch.export.export(Multiclass().eval(), (torch.randn(2, 4),))
    torch.export.save(program, path)


def write_checkpoint(path: Path) -> None:
    model = Multiclass()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    checkpoint = {
        "epoch": 7,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": 0.25,
        "model_args": model.constructor_args(),
    }
    torch.save(checkpoint, path)


def cut(path: Path, to: int) -> None:
    path.write_bytes(path.read_bytes()[:to])


def write_safetensors_header_overflow(path: Path) -> None:
    save_file(state(), path)
    data = bytearray(path.read_bytes())
    data[:8] = (len(data) * 2).to_bytes(8, "little")
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("marker") / "code-ran"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, marker: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("files")
    view = torch.arange(6.0)
    makers = {
        "state_dict.pth": lambda p: torch.save(state(), p),
        "checkpoint.pth": write_checkpoint,
        "shared.pth": lambda p: torch.save({"full": view, "view": view[2:]}, p),
        "ddp.pth": lambda p: torch.save({f"module.{k}": v for k, v in state().items()}, p),
        "compiled.pth": lambda p: torch.save(torch.compile(Multiclass()).state_dict(), p),
        "cuda.pth": lambda p: torch_like_zip(
            p, torch_pickle({"weight": DeclaredTensor(4, "cuda:0")}), [stored("archive/data/0", bytes(16))]
        ),
        "whole_model.pth": lambda p: torch.save(Multiclass(), p),
        "hostile.pth": lambda p: torch.save({"hidden.weight": Hostile(marker)}, p),
        "hostile.pkl": lambda p: p.write_bytes(pickle.dumps(Hostile(marker))),
        "legacy.pth": lambda p: torch.save(state(), p, _use_new_zipfile_serialization=False),
        "model.safetensors": lambda p: save_file(state(), p, metadata={"trained_by": "chapter 2"}),
        "cut.safetensors": lambda p: (save_file(state(), p), cut(p, p.stat().st_size - 10)),
        "overflow.safetensors": write_safetensors_header_overflow,
        "model.pt2": write_pt2,
        "dcp": write_dcp,
        "flipped.pth": make_flipped_byte,
        "no_crc.pth": make_no_crc,
        "bomb.pth": make_zip_bomb,
        "pickle_bomb.pth": lambda p: torch_like_zip(p, many_lists_pickle(MAX_PICKLE_BYTES + 1)),
        "deep.pth": lambda p: torch_like_zip(p, nested_dict_pickle(100)),
        "escapes.pth": lambda p: torch_like_zip(p, global_pickle(ESCAPES, "x")),
        "nan.pth": lambda p: torch.save({**state(), "hidden.bias": torch.full((8,), float("nan"))}, p),
        "meta.pth": lambda p: torch.save({k: v.to("meta") for k, v in state().items()}, p),
        "cut.pth": lambda p: (torch.save(state(), p), cut(p, p.stat().st_size // 2)),
        "notes.txt": lambda p: p.write_text("hidden.weight = [[0.1, 0.2]]\n"),
        "fifo": lambda p: __import__("os").mkfifo(p),
        "wrapped.py": lambda p: p.write_text(READER_MODEL),
    }
    paths = {}
    for name, make in makers.items():
        make(root / name)
        paths[name] = root / name
    return paths


def report_on(path: Path, model: nn.Module | None = None, described: str = "") -> dict:
    """The report on `path`, as plain data: what --json prints."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return inspection.inspect_path(path, described, model).as_dict()


def on_meta(model_class: type[nn.Module], **kwargs: int) -> nn.Module:
    with torch.device("meta"):
        return model_class(**kwargs)


# %%
# What the report says of a good file, printed as a reader sees it


@pytest.mark.slow
def test_a_good_state_dict_is_reported_exactly_and_exits_0(files, tmp_path):
    result = run_script(
        "inspect_file.py", str(files["state_dict.pth"]), "--model", "Multiclass", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Format     torch.save zip archive, format version 3, byte order little" in out
    for name, tensor in state().items():
        shape = f"({tensor.shape[0]},)" if tensor.dim() == 1 else str(tuple(tensor.shape))
        assert any(
            line.split() == [name, *shape.split(), "float32", "cpu", str(tensor.nbytes)]
            for line in out.splitlines()
        ), name
    assert f"total: {sum(t.numel() for t in state().values())} values in 268 bytes" in out
    with zipfile.ZipFile(files["state_dict.pth"]) as archive:
        records = len(archive.namelist())
    assert f"{records} zip records, {records} pass their CRC32 check" in out
    assert "beyond weights_only:  nothing" in out
    assert "weights_only=True:    loads" in out
    assert "Fit        Multiclass(): fits" in out
    assert out.endswith("Verdict    intact, and loads with torch.load(weights_only=True) (exit 0)\n")


def test_the_report_names_every_tensor_with_shape_dtype_and_bytes(files):
    report = report_on(files["state_dict.pth"])
    expected = [[k, list(v.shape), "float32", "cpu", v.nbytes] for k, v in state().items()]
    assert [
        [r["name"], r["shape"], r["dtype"], r["device"], r["bytes"]] for r in report["contents"]["tensors"]
    ] == (expected)
    assert report["contents"]["storage_bytes"] == sum(v.nbytes for v in state().values())
    assert report["metadata"]["_metadata"] == "module versions for 5 modules"
    assert report["reasons"] == []


def test_a_checkpoint_shows_its_keys_small_values_and_where_the_state_dict_is(files):
    report = report_on(files["checkpoint.pth"], on_meta(Multiclass), "Multiclass()")
    top = report["contents"]["top_level"]
    assert top["epoch"] == "7" and top["loss"] == "0.25"
    assert top["model_state_dict"] == "dict of 4 (4 tensors)"
    assert report["contents"]["state_dict_key"] == "model_state_dict"
    assert report["metadata"]["model_args"] == {"n_features": "4", "n_hidden": "8", "n_classes": "3"}
    names = [row["name"] for row in report["contents"]["tensors"]]
    assert "optimizer_state_dict.state.0.exp_avg" in names
    assert report["fit"]["fits"] and report["reasons"] == []


def test_shared_storage_is_named_and_counted_once(files):
    report = report_on(files["shared.pth"])
    rows = {row["name"]: row for row in report["contents"]["tensors"]}
    assert rows["full"]["shares"] == ["view"] and rows["view"]["shares"] == ["full"]
    assert report["contents"]["storage_bytes"] == 6 * 4  # one storage of 6 floats, not 6 + 4


def test_the_device_a_tensor_was_saved_from_is_read_without_that_device(files):
    report = report_on(files["cuda.pth"])
    assert [row["device"] for row in report["contents"]["tensors"]] == ["cuda:0"]


# %%
# Needs: what loading would import, and what must never be allowed


def test_a_whole_model_needs_its_classes_in_safe_globals(files):
    report = report_on(files["whole_model.pth"])
    needs = report["needs"]
    assert "build_model.Multiclass" in needs["not_allowed_by_weights_only"]
    assert "build_model.Multiclass" in needs["safe_globals_needed"]
    assert needs["never_allow"] == []
    assert needs["weights_only"].startswith("refused: it refers to build_model.Multiclass")


@pytest.mark.parametrize("name", ["hostile.pth", "hostile.pkl"])
def test_a_hostile_file_is_reported_never_run_and_exits_2(name, files, marker, tmp_path):
    result = run_chapter_here("inspect_file.py", str(files[name]), "--json", cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    report = json.loads(result.stdout)
    assert report["needs"]["never_allow"] == ["builtins.exec"]
    assert report["kind"] == ("torch-zip" if name.endswith(".pth") else "pickle")
    assert report["ok"] is False and report["reasons"]
    assert not marker.exists()


def test_numpys_rebuilders_are_data_to_trust_not_code_never_to_allow(tmp_path):
    """A NumPy scalar and array in a checkpoint name numpy's rebuilders: they rebuild data,
    they run nothing the file chooses, so they are not "never allow"; but weights_only
    refuses them, and allowing them is a matter of trusting the file's source."""
    path = tmp_path / "checkpoint.pt"
    torch.save({"w": torch.ones(2), "best_acc": np.float64(0.9), "order": np.arange(3)}, path)
    result = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT  # torch.load(weights_only=True) does refuse it
    needs = report_on(path)["needs"]
    assert needs["not_allowed_by_weights_only"]
    assert all(name.startswith("numpy.") for name in needs["not_allowed_by_weights_only"])
    assert needs["data_only"] == needs["not_allowed_by_weights_only"]
    assert needs["never_allow"] == [] and needs["safe_globals_needed"] == []
    assert "never allow" not in result.stdout
    assert "allow them only if you trust the file's source" in result.stdout


def test_a_set_in_a_legacy_file_is_what_weights_only_allows_not_code(tmp_path):
    """Protocol 2 pickles name builtins as __builtin__; torch reads __builtin__.set as
    builtins.set, which weights_only allows: the file loads, and nothing is "never allow"."""
    path = tmp_path / "legacy-set.pth"
    torch.save({"w": torch.ones(2), "labels": {1, 2}}, path, _use_new_zipfile_serialization=False)
    assert torch.load(path, weights_only=True)["labels"] == {1, 2}
    report = report_on(path)
    assert "__builtin__.set" in report["needs"]["globals"]
    assert report["needs"]["never_allow"] == []
    assert report["needs"]["weights_only"] == "loads"


def nested_jagged_file(path: Path) -> Path:
    """A nested jagged tensor: its pickle names torch._dynamo.decorators._DimRange, which torch
    allows itself (add_safe_globals in torch/_dynamo/__init__.py) once torch._dynamo is imported."""
    torch.save({"njt": torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=torch.jagged)}, path)
    return path


@contextmanager
def torch_dynamo_not_imported() -> Iterator[None]:
    """This process's weights_only allowlist as in one that has not imported torch._dynamo."""
    before = torch.serialization.get_safe_globals()
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals([g for g in before if g is not torch._dynamo.decorators._DimRange])
    try:
        yield
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def test_names_torch_allows_once_its_own_module_is_imported_are_that_advice(tmp_path):
    path = nested_jagged_file(tmp_path / "njt.pth")
    with torch_dynamo_not_imported():
        result = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
        with pytest.raises(pickle.UnpicklingError) as refused:
            torch.load(path, weights_only=True)
    if "must be imported" not in str(refused.value):  # torch 2.15 says no such thing of nested tensors
        pytest.skip(f"torch {torch.__version__} names no import that lets weights_only load a nested tensor")
    assert result.returncode == EXIT_BAD_INPUT
    assert "import first:         torch._dynamo (importing it allows torch._dynamo.decorators._DimRange" in (
        result.stdout
    )
    assert "safe_globals needed" not in result.stdout and "never allow" not in result.stdout
    assert "only once torch.nested and torch._dynamo are imported" in result.stdout
    assert type(torch.load(path, weights_only=True)["njt"]).__name__ == "NestedTensor"  # imported here


@pytest.mark.slow
def test_a_fresh_interpreter_gets_the_import_advice_and_loads_once_it_imports(tmp_path):
    path = nested_jagged_file(tmp_path / "njt.pth")
    result = run_script_for_real("inspect_file.py", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT, result.stderr
    plain = (
        "import sys, torch\ntry: torch.load(sys.argv[1], weights_only=True)\nexcept Exception as e: print(e)"
    )
    said = subprocess.run([sys.executable, "-c", plain, str(path)], capture_output=True, text=True).stdout
    if "must be imported" not in said:  # torch 2.15 says no such thing of nested tensors
        pytest.skip(f"torch {torch.__version__} names no import that lets weights_only load a nested tensor")
    assert "import first:         torch._dynamo" in result.stdout
    load = "import sys, torch, torch._dynamo; print(type(torch.load(sys.argv[1], weights_only=True)['njt']))"
    loaded = subprocess.run(
        [sys.executable, "-c", load, str(path)], capture_output=True, text=True, check=True
    )
    assert "NestedTensor" in loaded.stdout


def test_a_function_torch_registers_itself_is_not_never_allow_in_a_legacy_file():
    report = new_report(Path("legacy.pth"), 0)
    pickles.note_globals(report, ["torch.nested._internal.nested_tensor._rebuild_njt"], None)
    assert report.needs.never_allow == []


def test_a_dcp_folder_lists_its_files_and_the_classes_its_metadata_pickle_imports(files):
    report = report_on(files["dcp"])
    assert report["kind"] == "dcp"
    assert {".metadata", "__0_0.distcp"} <= {r["name"] for r in report["integrity"]["records"]}
    assert "torch.distributed.checkpoint.metadata.Metadata" in report["needs"]["globals"]
    assert report["needs"]["never_allow"] == []  # its classes are data, named no function
    assert any("pickle.load" in reason for reason in report["reasons"])


# %%
# Other formats: safetensors, .pt2, legacy


def test_safetensors_tensors_and_metadata_come_from_its_header(files):
    report = report_on(files["model.safetensors"], on_meta(Multiclass), "Multiclass()")
    assert report["kind"] == "safetensors"
    rows = {r["name"]: (r["shape"], r["dtype"], r["bytes"]) for r in report["contents"]["tensors"]}
    assert rows == {k: (list(v.shape), "float32", v.nbytes) for k, v in state().items()}
    assert report["metadata"]["__metadata__"] == {"trained_by": "chapter 2"}
    assert report["fit"]["fits"] and report["reasons"] == []


def test_a_cut_safetensors_file_is_truncated_and_a_forged_header_is_out_of_bounds(files):
    assert any("truncated" in p for p in report_on(files["cut.safetensors"])["integrity"]["problems"])
    assert report_on(files["overflow.safetensors"])["integrity"]["problems"][0].startswith(
        "its header claims"
    )


def test_a_pt2_program_lists_its_weights_and_is_not_a_weights_file(files):
    report = report_on(files["model.pt2"], on_meta(Multiclass), "Multiclass()")
    assert report["kind"] == "pt2"
    assert {r["name"]: r["shape"] for r in report["contents"]["tensors"]} == {
        k: list(v.shape) for k, v in state().items()
    }
    assert report["fit"]["fits"]
    assert any("torch.export program" in reason for reason in report["reasons"])


def test_a_legacy_file_is_read_fully_and_loads_with_its_missing_checksums_a_caveat(files):
    report = report_on(files["legacy.pth"], on_meta(Multiclass), "Multiclass()")
    assert report["kind"] == "legacy-torch"
    assert "collections.OrderedDict" in report["needs"]["globals"]
    expected = [[k, list(v.shape), "float32", "cpu", v.nbytes] for k, v in state().items()]
    rows = report["contents"]["tensors"]
    assert [[r["name"], r["shape"], r["dtype"], r["device"], r["bytes"]] for r in rows] == expected
    assert report["needs"]["weights_only"] == "loads"
    assert report["fit"]["fits"] and report["reasons"] == []
    assert any("no checksums" in caveat for caveat in report["caveats"])
    assert "its 4 storage records hold exactly the values its data declares" in report["integrity"]["notes"]


def legacy_with(storage_count: int, tail: bytes = b"") -> bytes:
    """A legacy file of one 4-float storage whose record claims `storage_count` values, then `tail`."""
    buffer = __import__("io").BytesIO()
    torch.save({"w": torch.ones(4)}, buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    record = (4).to_bytes(8, "little") + torch.ones(4).numpy().tobytes()
    assert data.endswith(record)
    return data[: -len(record)] + storage_count.to_bytes(8, "little", signed=True) + record[8:] + tail


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (legacy_with(4)[:-3], "ends at byte"),
        (legacy_with(4, tail=b"extra"), "5 bytes after the last storage belong to none"),
        (legacy_with(2**40), "holds 1099511627776 values, not the 4"),
    ],
    ids=["cut short", "bytes after the end", "a record claiming 2**40 values"],
)
def test_a_damaged_legacy_file_fails_its_layout_check_and_is_not_loaded(data, problem, tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(data)
    report = report_on(path)
    assert any(problem in reason for reason in report["reasons"]), report["reasons"]
    assert report["needs"]["weights_only"] == "not tried: the file failed the layout checks"


def pickle_ends(data: bytes, count: int) -> list[int]:
    """Where each of the first `count` pickles in `data`, back to back, ends."""
    ends = [0]
    for _ in range(count):
        ends.append(
            next(ends[-1] + p + 1 for op, _, p in pickletools.genops(data[ends[-1] :]) if op.name == "STOP")
        )
    return ends[1:]


def test_every_pickle_of_a_legacy_file_is_scanned_not_only_the_objects(marker, tmp_path):
    data = legacy_with(4)
    protocol_end, sys_info_end = pickle_ends(data, 3)[1:]  # magic number, protocol, sys info
    path = tmp_path / "legacy.pth"
    path.write_bytes(data[:protocol_end] + pickle.dumps(Hostile(marker), protocol=2) + data[sys_info_end:])
    report = report_on(path)
    assert report["needs"]["never_allow"] == ["__builtin__.exec"]
    assert not marker.exists()


# %%
# Integrity and damage


def test_a_flipped_byte_fails_the_crc_of_its_record_only(files):
    report = report_on(files["flipped.pth"])
    verdicts = {r["name"].rpartition("/")[2]: r["crc32"] for r in report["integrity"]["records"]}
    assert verdicts.pop("0") == "MISMATCH"
    assert set(verdicts.values()) == {"ok"}
    assert report["needs"]["weights_only"].startswith("not tried")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("no_crc.pth", "no CRC32 checksums"),
        ("cut.pth", "truncated or corrupted"),
        ("notes.txt", "not a model file"),
        ("pickle_bomb.pth", "its data.pkl has"),
        ("nan.pth", "NaN or infinite values in hidden.bias"),
        ("meta.pth", "not plain dense tensors with data: hidden.weight (meta)"),
    ],
)
def test_each_kind_of_damage_is_a_reason_to_refuse(name, problem, files):
    reasons = report_on(files[name])["reasons"]
    assert any(problem in reason for reason in reasons), reasons


def bomb_in_child(path: Path) -> int:
    before = limit_memory()
    report = inspection.inspect_path(path)
    print(report.integrity.problems, file=sys.stderr)
    return EXIT_TOO_MUCH_MEMORY if grew_too_much(before) else 0


def test_a_zip_bomb_is_listed_not_inflated(files, tmp_path):
    code, stderr = run_in_fork(bomb_in_child, files["bomb.pth"], cwd=tmp_path, timeout=60)
    assert code == 0, stderr
    assert "record archive/data/0 is compressed (1073741824 bytes once inflated)" in stderr


def test_deep_nesting_is_cut_off_not_a_crash(files):
    report = report_on(files["deep.pth"])
    assert (
        report["contents"]["note"]
        == f"containers nested deeper than {torch_files.MAX_DEPTH} levels are not listed"
    )


# %%
# Fit: the load_state_dict report, and the prefix that fixes it


@pytest.mark.parametrize(("name", "prefix"), [("ddp.pth", "module."), ("compiled.pth", "_orig_mod.")])
def test_a_wrapped_models_file_gets_the_prefix_to_strip(name, prefix, files):
    fit = report_on(files[name], on_meta(Multiclass), "Multiclass()")["fit"]
    assert fit["missing"] == list(state())
    assert fit["unexpected"] == [f"{prefix}{k}" for k in state()]
    assert fit["prefix_fix"] == f"strip the prefix '{prefix}'"


def test_a_wider_model_gets_every_shape_mismatch(files):
    fit = report_on(files["state_dict.pth"], on_meta(Multiclass, n_hidden=16), "Multiclass(n_hidden=16)")[
        "fit"
    ]
    assert fit["mismatched"][0] == {
        "name": "hidden.weight",
        "file": "(8, 4) float32",
        "model": "(16, 4) float32",
    }
    assert [m["name"] for m in fit["mismatched"]] == ["hidden.weight", "hidden.bias", "output.weight"]


def test_a_readers_own_model_file_is_checked_and_told_the_prefix_to_add(files, tmp_path):
    args = [
        "--model-file",
        str(files["wrapped.py"]),
        "--model-class",
        "Wrapped",
        "--model-args",
        "n_hidden=8",
    ]
    result = run_chapter_here("inspect_file.py", str(files["state_dict.pth"]), *args, cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert "Fit        Wrapped(n_hidden=8): does NOT fit" in result.stdout
    assert "  fix:         add the prefix 'net.'" in result.stdout


# %%
# The command line: one line for what it cannot inspect, no escape codes, no hang


def test_help_says_that_a_model_file_is_run(tmp_path):
    result = run_chapter_here("inspect_file.py", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "--model-file imports and runs that Python file" in " ".join(result.stdout.split())


def test_names_with_escape_codes_are_printed_escaped(files, tmp_path):
    result = run_chapter_here("inspect_file.py", str(files["escapes.pth"]), cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert "\x1b" not in result.stdout
    assert f"never allow:          {text.safe_text(ESCAPES)}.x (these run code)" in result.stdout


def inspect_in_child(path: Path, cwd: Path) -> int:
    result = run_chapter_here("inspect_file.py", str(path), cwd=cwd)
    sys.stderr.write(result.stderr)
    return result.returncode


def test_a_fifo_is_refused_in_one_line_without_hanging(files, tmp_path):
    code, stderr = run_in_fork(inspect_in_child, files["fifo"], tmp_path, cwd=tmp_path, timeout=60)
    assert (code, stderr) == (
        EXIT_BAD_INPUT,
        f"error: {files['fifo']} cannot be read: Is a FIFO, not a regular file\n",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "Multiclass", "--model-args", "n_hidden"], "--model-args takes NAME=VALUE"),
        (["--model-args", "n_hidden=8"], "--model-args needs --model or --model-file"),
        (["--model", "Multiclass", "--model-args", "n_hidden=-1"], "cannot build Multiclass(n_hidden=-1)"),
        (["--model-file", "nowhere.py", "--model-class", "Net"], "is not a Python file"),
    ],
)
def test_bad_model_flags_get_one_line(args, message, files, tmp_path):
    result = run_chapter_here("inspect_file.py", str(files["state_dict.pth"]), *args, cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr


def inspect_probe_in_child(path: Path, cwd: Path) -> int:
    """Inspect `path` against Multiclass in this forked child; report and refusal both on stderr."""
    before = limit_memory()
    result = run_chapter_here("inspect_file.py", str(path), "--model", "Multiclass", cwd=cwd)
    sys.stderr.write(result.stdout + result.stderr)
    return EXIT_TOO_MUCH_MEMORY if grew_too_much(before) else result.returncode


@pytest.fixture(scope="module")
def probe_corpus(tmp_path_factory: pytest.TempPathFactory, marker: Path) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("probes"), marker)


# The chapters' loader refuses these (for want of checksums; saved on a device the lessons' plain
# torch.load cannot restore); this tool reads them, and names the caveat or the load that works.
READ_WITH_A_CAVEAT = {
    "legacy format": "caveat: the legacy format has no checksums",
    **{
        f"storages tagged {tag}": 'map_location="cpu", weights_only=True) (exit 0)'
        for tag in ("xla:0", "privateuseone:0", "cpu:7")
    },
}


@pytest.mark.parametrize("probe", list(probes(Path("unused"))))
def test_every_bad_input_of_the_loader_gets_a_refusal_and_nothing_worse(
    probe, probe_corpus, marker, tmp_path
):
    """The bad-input corpus of the safe loader: exit 2, no traceback, no escape codes, no code
    run, bounded memory, no hang. A good file in a format the loader refuses (legacy) is read,
    and the report names the caveat."""
    path = probe_corpus[probe] / MODEL_FILE
    code, output = run_in_fork(inspect_probe_in_child, path, tmp_path, cwd=tmp_path, timeout=60)
    assert "Traceback" not in output
    assert "\x1b" not in output
    assert not marker.exists()
    if probe in READ_WITH_A_CAVEAT:
        assert code == 0, output
        assert READ_WITH_A_CAVEAT[probe] in output
        return
    assert code == EXIT_BAD_INPUT, output
    assert "Verdict    refused" in output or output.startswith("error: ")


@pytest.mark.parametrize("name", ["checkpoint.pth", "model.safetensors", "model.pt2", "hostile.pkl"])
def test_damaged_copies_of_each_format_get_a_report_or_one_line(name, files, tmp_path, capsys):
    damaged_copies_get_a_report_or_one_line(files[name], tmp_path, capsys)


def damaged_copies_get_a_report_or_one_line(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """50 copies of `path`, each damaged a little: each gets a printable report or one error line."""
    copy = tmp_path / path.name
    for damaged in damaged_copies(path.read_bytes(), 50):
        copy.write_bytes(damaged)
        try:
            report = inspection.inspect_path(copy)
        except ModelFileError as err:
            assert "\n" not in str(err)
            continue
        render.render(report)
        render.render(report, as_json=True)
    assert "Traceback" not in capsys.readouterr().out


def test_safetensors_gets_the_nan_rule_of_torch_files_and_a_header_may_start_with_whitespace(tmp_path):
    nan = tmp_path / "nan.safetensors"
    save_file({**state(), "hidden.bias": torch.full((8,), float("nan"))}, nan)
    assert "NaN or infinite values in hidden.bias" in report_on(nan)["reasons"]
    spaced = tmp_path / "spaced.safetensors"
    save_file(state(), spaced)
    data = spaced.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = b" " + data[8 : 8 + length].rstrip(b" ")  # the same JSON, one space moved to the front
    spaced.write_bytes(len(header).to_bytes(8, "little") + header + data[8 + length :])
    from safetensors.torch import load_file

    assert torch.equal(load_file(spaced)["hidden.weight"], state()["hidden.weight"])
    report = report_on(spaced)
    assert report["kind"] == "safetensors" and report["reasons"] == []


def test_a_safetensors_header_over_the_limit_is_refused_naming_the_limit(tmp_path):
    path = tmp_path / "huge.safetensors"
    header = b"{}" + b" " * safetensors_files.MAX_HEADER_BYTES
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    assert report_on(path)["reasons"] == [
        f"its header has {len(header)} bytes, "
        f"more than the {safetensors_files.MAX_HEADER_BYTES} this tool parses"
    ]


# Every torch dtype safetensors 0.8 writes (its TensorSpec's list), and the format code it
# writes for each: the header says the code, the report says torch's name.
SAFETENSORS_WRITES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint64: "U64", torch.uint32: "U32", torch.uint16: "U16", torch.uint8: "U8",
    torch.bool: "BOOL", torch.complex64: "C64",
    torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.float8_e4m3fnuz: "F8_E4M3FNUZ", torch.float8_e5m2fnuz: "F8_E5M2FNUZ",
    torch.float8_e8m0fnu: "F8_E8M0", torch.float4_e2m1fn_x2: "F4",
}  # fmt: skip


def some_tensor(dtype: torch.dtype) -> torch.Tensor:
    """A (2, 4) tensor of `dtype` with finite values; float4 is packed bytes, as torch holds it."""
    if dtype == torch.float4_e2m1fn_x2:  # torch converts nothing to it: its bytes are viewed
        return torch.full((2, 4), 0x22, dtype=torch.uint8).view(dtype)
    return torch.ones(2, 4).to(dtype)


def header_of(path: Path) -> dict:
    data = path.read_bytes()
    return json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])


@pytest.mark.parametrize("dtype", list(SAFETENSORS_WRITES), ids=str)
def test_every_dtype_safetensors_writes_is_named_as_torch_names_it_sized_and_loads(dtype, tmp_path):
    path = tmp_path / "weights.safetensors"
    tensor = some_tensor(dtype)
    save_file({"w": tensor}, path)
    assert header_of(path)["w"]["dtype"] == SAFETENSORS_WRITES[dtype]
    report = report_on(path)
    assert report["reasons"] == [], report["reasons"]
    [row] = report["contents"]["tensors"]
    assert (row["dtype"], row["shape"], row["bytes"]) == (
        str(dtype).removeprefix("torch."),
        list(tensor.shape),  # float4: torch's packed shape, half the header's last dimension
        tensor.numel() * tensor.element_size(),
    )
    assert report["contents"]["storage_bytes"] == row["bytes"]


def test_complex_and_e8m0_safetensors_exit_0_and_a_complex_nan_is_refused(tmp_path):
    path = tmp_path / "scales.safetensors"
    weights = {
        "spectrum": torch.randn(3, 5, dtype=torch.complex64),
        "scales": torch.ones(7).to(torch.float8_e8m0fnu),
    }
    save_file(weights, path)
    run = run_chapter_here("inspect_file.py", str(path), "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stdout
    rows = {row["name"]: row for row in json.loads(run.stdout)["contents"]["tensors"]}
    assert (rows["spectrum"]["dtype"], rows["spectrum"]["shape"], rows["spectrum"]["bytes"]) == (
        "complex64",
        [3, 5],
        120,
    )
    assert (rows["scales"]["dtype"], rows["scales"]["shape"], rows["scales"]["bytes"]) == (
        "float8_e8m0fnu",
        [7],
        7,
    )
    nan = tmp_path / "nan.safetensors"
    save_file({"spectrum": torch.tensor([complex(float("nan"), 1.0)], dtype=torch.complex64)}, nan)
    assert report_on(nan)["reasons"] == ["NaN or infinite values in spectrum"]


def sub_byte_safetensors(path: Path, dtype: str, shape: list[int], nbytes: int) -> Path:
    """A header as safetensors' Rust writer lays it out (JSON padded with spaces to 8 bytes):
    safetensors 0.8 reads F6_E2M3 and F6_E3M2 but no Python writer of it writes them, and
    none writes a tensor of 4-bit values that leaves half a byte."""
    header = json.dumps({"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(nbytes))
    return path


def test_six_bit_safetensors_are_sized_in_bits_and_refused_only_because_torch_has_no_dtype(tmp_path):
    for dtype in ("F6_E2M3", "F6_E3M2"):
        report = report_on(sub_byte_safetensors(tmp_path / "six.safetensors", dtype, [4, 4], 12))
        assert report["integrity"]["problems"] == []
        assert report["contents"]["tensors"][0] | {"name": "t"} == {
            "name": "t", "shape": [4, 4], "dtype": dtype, "device": "cpu", "bytes": 12, "shares": None
        }  # fmt: skip
        [reason] = report["reasons"]
        assert reason.startswith("safetensors refuses it:") and dtype in reason
    half_byte = report_on(sub_byte_safetensors(tmp_path / "f4.safetensors", "F4", [3], 2))
    assert half_byte["integrity"]["problems"] == ["tensor t: 3 values of 4 bits do not fill whole bytes"]


def test_when_torchs_own_scan_fails_the_report_never_says_nothing_is_beyond_weights_only(tmp_path):
    path = tmp_path / "pop.pth"
    torch_like_zip(path, b"\x80\x020cos\nsystem\n)R.")  # a POP on an empty stack: torch's scan fails
    needs = report_on(path)["needs"]
    assert needs["not_allowed_by_weights_only"] is None
    assert needs["never_allow"] == ["os.system"]


@pytest.mark.parametrize("name", ["timeit.timeit", "pathlib.os.system"])
def test_each_gadget_probe_runs_code_when_unpickled(name, tmp_path):
    made = tmp_path / "made"
    pickle.loads(gadget_pickle(*gadgets(made)[name]))  # harmless: it only creates `made`
    assert made.exists()


@pytest.mark.parametrize("kind", ["torch-zip", "pickle"])
@pytest.mark.parametrize("name", list(gadgets(Path("unused"))))
def test_every_function_outside_weights_only_is_named_as_running_code(name, kind, marker, tmp_path):
    path = tmp_path / "gadget.pth"
    data = gadget_pickle(*gadgets(marker)[name])
    torch_like_zip(path, data) if kind == "torch-zip" else path.write_bytes(data)
    report = report_on(path)
    assert report["kind"] == kind
    assert report["needs"]["never_allow"] == [name]
    assert not report["needs"].get("safe_globals_needed")  # a function is never safe_globals advice
    assert report["reasons"]
    assert not marker.exists()


def test_the_tensor_rebuilders_of_a_real_file_are_not_named_as_running_code(files):
    needs = report_on(files["state_dict.pth"])["needs"]
    assert "torch._utils._rebuild_tensor_v2" in needs["globals"]
    assert needs["never_allow"] == [] and needs["not_allowed_by_weights_only"] == []


def test_a_file_with_non_string_keys_is_a_misfit_not_a_crash(tmp_path):
    path = tmp_path / "int-keys.pth"
    torch.save({0: torch.zeros(1)}, path)
    result = run_chapter_here("inspect_file.py", str(path), "--model", "Multiclass", "--json", cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT and "Traceback" not in result.stderr
    fit = json.loads(result.stdout)["fit"]
    assert fit["fits"] is False and fit["unexpected"] == ["0"] and fit["prefix_fix"] is None


class ForeignStoragePickler(pickle.Pickler):
    """Pickles a DeclaredStorage the way torch.save would, but naming a class that is no storage."""

    def persistent_id(self, obj: object) -> tuple | None:
        if isinstance(obj, DeclaredStorage):
            return ("storage", collections.OrderedDict, obj.key, obj.location, obj.numel)
        return None


def test_a_storage_of_a_type_torch_never_writes_is_named_by_the_files_own_name(tmp_path):
    """The stand-ins a pickle is read with are this tool's own: the report names what the file names."""
    path = tmp_path / "foreign-storage.pth"
    buffer = io.BytesIO()
    ForeignStoragePickler(buffer, protocol=2).dump({"w": DeclaredTensor(4)})
    torch_like_zip(path, buffer.getvalue(), [stored("archive/data/0", bytes(16))])
    result = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert "refers to storage data of a type torch does not write: collections.OrderedDict" in result.stdout
    assert "StandIn" not in result.stdout and "support." not in result.stdout


# %%
# A negative size, and a record torch.save never writes: each message says what is true


def write_safetensors(path: Path, header: dict, body: bytes) -> None:
    """A safetensors file with this header, as it is (safetensors' writer refuses a bad one)."""
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)


class NegativeView(DeclaredTensor):
    """Pickles a tensor of size (-4,) over a good 4-value storage."""

    def __reduce__(self) -> tuple:
        return (
            torch._utils._rebuild_tensor_v2,
            (self.storage, 0, (-4,), (1,), False, collections.OrderedDict()),
        )


def pt2_with_negative_size(path: Path) -> None:
    """torch.export.save's .pt2, its weights config then giving hidden.weight 8 -> -8 rows."""
    write_pt2(path)
    with zipfile.ZipFile(path) as archive:
        records = [(info.filename, archive.read(info)) for info in archive.infolist()]
    for index, (name, data) in enumerate(records):
        if name.endswith("/data/weights/model_weights_config.json"):
            config = json.loads(data)
            config["config"]["hidden.weight"]["tensor_meta"]["sizes"][0]["as_int"] = -8
            records[index] = (name, json.dumps(config).encode())
    write_zip(path, [stored(name, data) for name, data in records])


def npy_with_negative_shape(path: Path) -> None:
    np.save(path, np.zeros((3, 4), np.float32))
    path.write_bytes(path.read_bytes().replace(b"(3, 4)", b"(-3,4)"))  # the same header length


F32 = {"dtype": "F32"}
NEGATIVE_SIZES = {
    "safetensors shape": (
        lambda p: write_safetensors(
            p, {"w": {**F32, "shape": [-4, -8], "data_offsets": [0, 128]}}, bytes(128)
        ),
        "tensor w has a negative dimension in its shape [-4, -8]",
    ),
    "safetensors offsets": (
        lambda p: write_safetensors(p, {"w": {**F32, "shape": [4, 8], "data_offsets": [128, 0]}}, bytes(128)),
        "tensor w has data offsets [128, 0]: a span must start at 0 or later and not end before it",
    ),
    "torch.save storage": (
        lambda p: torch_like_zip(
            p, torch_pickle({"w": DeclaredTensor(-4)}), [stored("archive/data/0", bytes(16))]
        ),
        "storage 0 declares a negative size: -4 values",
    ),
    "torch.save tensor": (
        lambda p: torch_like_zip(
            p, torch_pickle({"w": NegativeView(4)}), [stored("archive/data/0", bytes(16))]
        ),
        "a tensor over storage 0 has a negative size: [-4]",
    ),
    "legacy storage": (
        lambda p: p.write_bytes(legacy_with(-4)),
        "gives a negative count of values: -4",  # storage <its address when saved>
    ),
    "pt2 weight": (
        pt2_with_negative_size,
        "its weights config gives hidden.weight a negative dimension: shape [-8, 4]",
    ),
    "npy array": (npy_with_negative_shape, "array has a negative dimension in its shape [-3, 4]"),
}


@pytest.mark.parametrize("kind", list(NEGATIVE_SIZES))
def test_a_negative_size_is_named_as_such(kind, tmp_path):
    make, message = NEGATIVE_SIZES[kind]
    path = tmp_path / f"negative.{'npy' if 'npy' in kind else 'pt2' if 'pt2' in kind else 'bin'}"
    make(path)
    try:
        reasons = report_on(path)["reasons"]
    except ModelFileError as err:  # a header NumPy's own parser reads, but no array has
        reasons = [str(err)]
    assert any(reason.endswith(message) for reason in reasons), reasons
    assert not any(re.search(r"need (\d+) bytes, not \1\b", reason) for reason in reasons)


def storage_named(path: Path, key: str, records: list[tuple[str, int]]) -> None:
    """data.pkl naming storage `key` of 4 values; the records that follow it (name, values)."""
    tensor = DeclaredTensor(4)
    tensor.storage = DeclaredStorage(key, 4)
    values = [stored(name, torch.arange(float(n)).numpy().tobytes()) for name, n in records]
    torch_like_zip(path, torch_pickle({"w": tensor}), values)


def test_a_storage_record_named_with_dots_is_read_by_torch_load_and_the_message_says_so(tmp_path):
    """torch.load reads data/<key> for the key data.pkl names, `../../x` as well: not a path to it."""
    named = tmp_path / "named.pth"
    storage_named(named, "../../x", [("archive/data/../../x", 4)])
    assert torch.equal(torch.load(named, weights_only=True)["w"], torch.arange(4.0))
    (reason,) = report_on(named)["reasons"]
    assert reason == (
        "it has a record torch.save never writes: archive/data/../../x, which torch.load reads, as data.pkl "
        "names storage ../../x (torch.save numbers its storages 0, 1, 2, ...)"
    )
    unnamed = tmp_path / "unnamed.pth"
    storage_named(unnamed, "0", [("archive/data/0", 4), ("archive/data/../../x", 4)])
    assert torch.equal(torch.load(unnamed, weights_only=True)["w"], torch.arange(4.0))  # the record unread
    assert report_on(unnamed)["reasons"] == [
        "it has a record torch.save never writes: archive/data/../../x (torch.load ignores it)"
    ]


# %%
# Strings from a file are inert on a terminal

TERMINAL_TRICKS = (
    "cpu\nVerdict    intact, and loads with torch.load(weights_only=True) (exit 0)\x1b]0;t\x07\x1b[2J\u202e"
)


@pytest.mark.parametrize("as_json", [False, True])
def test_a_device_tag_with_control_characters_is_shown_escaped_and_the_file_refused(as_json, tmp_path):
    path = tmp_path / "tricky.pth"
    save_tagged(Multiclass().state_dict(), path, TERMINAL_TRICKS)
    run = run_chapter_here("inspect_file.py", str(path), *(["--json"] if as_json else []), cwd=tmp_path)
    assert run.returncode == EXIT_BAD_INPUT
    for raw in ("\x1b", "\x07", "\u202e"):
        assert raw not in run.stdout and raw not in run.stderr
    assert not any(line.startswith("Verdict    intact") for line in run.stdout.splitlines())
    if not as_json:
        assert "\\x1b" in run.stdout and "\\u202e" in run.stdout  # shown, escaped
        assert "\nVerdict    refused (exit 2):" in run.stdout


# %%
# One snapshot: a file swapped while the tool runs


def test_a_file_swapped_while_it_is_inspected_is_reported_as_it_was_when_opened(tmp_path, monkeypatch):
    """The name is pointed at another file (an atomic rename) between the zip checks and the
    load: every part of the report is still about the file first opened."""
    path, other = tmp_path / "model.pth", tmp_path / "other.pth"
    torch.save(Multiclass().state_dict(), path)
    torch.save({"hidden.weight": torch.zeros(16, 4), "exec": Hostile(tmp_path / "marker")}, other)
    real_load, loaded_from = torch.load, []

    def swap_then_load(source, *args, **kwargs):
        if other.exists():
            other.replace(path)  # what an attacker's rename loop does, at the worst moment
        loaded_from.append(source)
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(torch, "load", swap_then_load)
    report = inspection.inspect_path(path, "Multiclass()", Multiclass()).as_dict()
    assert loaded_from and not other.exists()  # the swap happened before the load
    assert report["reasons"] == []
    assert [row["shape"] for row in report["contents"]["tensors"]] == [[8, 4], [8], [3, 8], [3]]
    assert report["fit"]["fits"]
    assert not (tmp_path / "marker").exists()


def test_the_snapshot_is_a_private_copy_that_outlives_the_files_name(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(Multiclass().state_dict(), path)
    with path.open("rb") as file, inspector_files.snapshot_of(file) as snapshot:
        assert snapshot != path and snapshot.read_bytes() == path.read_bytes()
        assert file.tell() == 0
        path.unlink()  # the name can go: the copy is what is read
        assert torch.load(snapshot, weights_only=True).keys() == Multiclass().state_dict().keys()
    assert not snapshot.exists()


@pytest.mark.parametrize("tag", ["meta", "cuda:-1", "not a device"])
def test_a_tag_no_load_can_use_is_refused_by_the_inspector_and_the_chapters_for_one_reason(tag, tmp_path):
    path = tmp_path / "tagged.pth"
    save_tagged(state(), path, tag)
    reasons = report_on(path)["reasons"]
    with pytest.raises(ModelFileError) as refused:
        read_untrusted(path)
    assert reasons == [str(refused.value).removeprefix(f"{path} refused: ")]
    assert ("meta device" if tag == "meta" else "which is not a device") in reasons[0]


@pytest.mark.slow  # a fresh interpreter, start-up and all
def test_the_installed_inspect_model_command_is_the_same_tool(trained_model_path, tmp_path):
    command = Path(sys.executable).parent / "inspect-model"
    assert command.is_file(), "the project is not installed: pip install -e . adds inspect-model"
    shutil.copy(trained_model_path, tmp_path / "model.pth")
    installed = subprocess.run(
        [str(command), "model.pth", "--model", "Multiclass"], cwd=tmp_path, capture_output=True, text=True
    )
    script = run_script("inspect_file.py", "model.pth", "--model", "Multiclass", cwd=tmp_path)
    assert (installed.returncode, installed.stderr) == (0, "")
    assert installed.stdout == script.stdout
    assert installed.stdout.endswith("(exit 0)\n")
    helped = subprocess.run([str(command), "--help"], capture_output=True, text=True)
    assert helped.stdout.startswith("usage: inspect-model ")


MAX_CPU_SECONDS = 5  # the most CPU the inspector may spend on any one file, start-up included
MAX_MEMORY_BYTES = 2**30


def cpu_and_peak(path: Path, cwd: Path) -> tuple[int, float, int]:
    """`python inspect_file.py PATH` in a real process that the kernel stops at MAX_CPU_SECONDS
    of CPU (SIGXCPU): its exit status (negative: the signal), CPU seconds and peak RSS in bytes."""

    def cap_cpu() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (MAX_CPU_SECONDS, MAX_CPU_SECONDS + 1))

    process = subprocess.Popen(
        [sys.executable, str(REPO / "inspect_file.py"), str(path)],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=cap_cpu,
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


@pytest.mark.slow
def test_no_file_costs_the_inspector_5_s_of_cpu_or_1_gib_of_memory(files, marker, tmp_path):
    (tmp_path / "corpus").mkdir()
    corpus = build_corpus(tmp_path / "corpus", marker)
    paths = [*files.values(), *(folder / MODEL_FILE for folder in corpus.values())]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # one process a core
        costs = dict(zip(paths, pool.map(lambda path: cpu_and_peak(path, tmp_path), paths), strict=True))
    for path, (status, cpu, peak) in costs.items():
        assert status in (0, EXIT_BAD_INPUT), (path, status)  # not -SIGXCPU, nor a crash
        assert cpu < MAX_CPU_SECONDS and peak < MAX_MEMORY_BYTES, (path, cpu, peak)
    assert not marker.exists()
    print(f"most CPU: {max(cpu for _, cpu, _ in costs.values()):.2f} s, ", end="")
    print(
        f"largest peak: {max(peak for *_, peak in costs.values()) / 2**20:.0f} MiB, over {len(paths)} files"
    )


def reasons_in_child(path: Path) -> int:
    """In a fork with its memory capped: the report's reasons on stderr; EXIT_TOO_MUCH_MEMORY if it grew."""
    before = limit_memory()
    print(inspection.inspect_path(path).reasons, file=sys.stderr)
    return EXIT_TOO_MUCH_MEMORY if grew_too_much(before) else 0


def test_a_view_of_one_value_seen_billions_of_times_is_refused_without_reading_them(tmp_path):
    path = tmp_path / "expanded.pth"
    torch.save({"w": torch.zeros(1).expand(40_000, 40_000)}, path)  # 1.6e9 values, 4 bytes stored
    code, stderr = run_in_fork(reasons_in_child, path, cwd=tmp_path, timeout=60)
    assert code == 0, stderr
    assert "w (one value repeated: a view with strides (0, 0))" in stderr


def test_a_safetensors_shape_of_a_million_dimensions_is_refused_before_multiplying_them(tmp_path):
    header = json.dumps({"a": {"dtype": "F32", "shape": [2**32 - 1] * 1_000_000, "data_offsets": [0, 4]}})
    path = tmp_path / "dims.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + bytes(4))
    assert report_on(path)["reasons"] == ["tensor a has 1000000 dimensions, more than the 64 this tool reads"]


def test_a_file_rewritten_in_place_while_inspected_gets_one_versions_report_or_a_refusal(tmp_path):
    """A writer flips the file between two models in place (same inode): each exit-0 report is
    all of one of them; the others are refusals (the file changed, or was caught half written)."""
    first, second = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(state(), first)
    torch.save({**state(), "extra.weight": torch.zeros(3)}, second)
    versions = [first.read_bytes(), second.read_bytes()]
    consistent = {(10, 4, len(versions[0])), (11, 5, len(versions[1]))}  # records, tensors, bytes
    path = tmp_path / "flipping.pth"
    path.write_bytes(versions[0])
    stop = threading.Event()

    def flip() -> None:
        fd = os.open(path, os.O_RDWR)
        while not stop.is_set():
            for data in versions:
                os.pwrite(fd, data, 0)
                os.ftruncate(fd, len(data))
        os.close(fd)

    flipper = threading.Thread(target=flip)
    flipper.start()
    outcomes = collections.Counter()
    try:
        for _ in range(40):
            try:
                report = inspection.inspect_path(path)
            except ModelFileError as err:
                assert "it changed while it was being read" in str(err), err
                outcomes["refused"] += 1
                continue
            seen = (len(report.integrity.records), len(report.contents.tensors or []), report.bytes)
            if report.reasons:  # caught between the write and the truncation: a real, damaged state
                outcomes["damaged"] += 1
                continue
            assert seen in consistent, seen
            outcomes["one version"] += 1
    finally:
        stop.set()
        flipper.join()
    assert outcomes["refused"] + outcomes["damaged"], outcomes  # the flipping was seen, not missed


def test_a_large_file_read_in_place_is_refused_if_written_while_read(tmp_path, monkeypatch):
    """Above MAX_COPY_BYTES the file is read where it is; a write meanwhile is caught after."""
    path = tmp_path / "model.pth"
    torch.save(state(), path)
    monkeypatch.setattr(inspector_files, "MAX_COPY_BYTES", 0)  # this small file counts as large
    real_load = torch.load

    def load_then_write(*args: object, **kwargs: object) -> object:
        with path.open("r+b") as file:  # in place: the same inode
            file.seek(0, 2)
            file.write(b"more")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load_then_write)
    with pytest.raises(ModelFileError, match="it changed while it was being read"):
        inspection.inspect_path(path)

"""Chapter 11: what it finds inside chapter 2's file by hand is what the file holds, found
here another way, and its last section is the inspector's own report on that file."""

from __future__ import annotations

import ast
import collections
import io
import json
import pickle
import re
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from build_model import Multiclass
from tests.helpers import run_script

WHOLE_MODEL_CLASSES = [
    "build_model.Multiclass",
    "torch.nn.modules.activation.LogSoftmax",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.linear.Linear",
]


def line_after(stdout: str, label: str) -> str:
    found = re.search(rf"^{re.escape(label)}(.*)$", stdout, flags=re.MULTILINE)
    assert found, (label, stdout)
    return found.group(1).strip()


class NamesOnly(pickle.Unpickler):
    """Unpickles chapter 2's own file (trusted: this test suite made it) and records every global."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.names: set[str] = set()

    def find_class(self, module: str, name: str) -> object:
        self.names.add(f"{module}.{name}")
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict  # the container: filled in as the pickle says
        return lambda *args, **kwargs: None

    def persistent_load(self, pid: object) -> None:
        return None


def test_the_records_and_their_checksums_are_the_archives(look_inside_run, trained_model_path):
    with zipfile.ZipFile(trained_model_path) as archive:
        infos = archive.infolist()
        assert archive.testzip() is None
    stdout = look_inside_run.stdout
    for info in infos:
        assert re.search(rf"^  {re.escape(info.filename)} +{info.file_size} bytes  stored$", stdout, re.M)
    assert f"{len(infos)} records, every CRC32 checked: all intact" in stdout


def test_the_imports_read_from_the_opcodes_are_those_unpickling_asks_for(look_inside_run, trained_model_path):
    with zipfile.ZipFile(trained_model_path) as archive:
        data_pkl = next(archive.read(n) for n in archive.namelist() if n.endswith("/data.pkl"))
    unpickler = NamesOnly(io.BytesIO(data_pkl))
    unpickler.load()
    printed = ast.literal_eval(line_after(look_inside_run.stdout, "It would import:"))
    assert printed == sorted(unpickler.names)
    names = ast.literal_eval(line_after(look_inside_run.stdout, "Tensor names in it:"))
    assert names == list(torch.load(trained_model_path, weights_only=True))


def test_the_whole_models_unsafe_globals_are_exactly_what_its_load_needs(look_inside_run):
    stdout = look_inside_run.stdout
    assert line_after(stdout, "iris-model.pth:") == "nothing"
    listed = ast.literal_eval(line_after(stdout, "look-whole-model.pth:"))
    assert listed == WHOLE_MODEL_CLASSES
    whole = look_inside_run.artifacts / "look-whole-model.pth"
    with pytest.raises(pickle.UnpicklingError, match=re.escape("build_model.Multiclass")):
        torch.load(whole, weights_only=True)
    allowed = [Multiclass, nn.LogSoftmax, nn.ReLU, nn.Linear]  # the listed names, and nothing more
    with torch.serialization.safe_globals(allowed):
        model = torch.load(whole, weights_only=True)
    assert isinstance(model, Multiclass)


def test_the_safetensors_header_printed_is_the_files(look_inside_run, trained_model_path):
    pytest.importorskip("safetensors", reason="the formats extra is not installed")
    from safetensors.torch import load_file

    path = look_inside_run.artifacts / "look-iris.safetensors"
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8 : 8 + header_length])
    for name, entry in header.items():
        assert ast.literal_eval(line_after(look_inside_run.stdout, f"  {name}")) == entry
    loaded, trained = load_file(path), torch.load(trained_model_path, weights_only=True)
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
    assert "safe_open: 4 tensors, equal to the state_dict's: True" in look_inside_run.stdout


def test_the_last_section_is_the_inspectors_report_on_the_same_file(look_inside_run, tmp_path):
    shutil.copytree(look_inside_run.artifacts, tmp_path / "artifacts")
    tool = run_script("inspect_file.py", "artifacts/iris-model.pth", "--model", "Multiclass", cwd=tmp_path)
    assert tool.returncode == 0, tool.stderr
    section = look_inside_run.stdout.split("--model Multiclass\n\n", 1)[1]
    assert section.startswith(tool.stdout)
    whole = line_after(look_inside_run.stdout, "And on look-whole-model.pth:")
    assert whole.startswith("torch.load(weights_only=True) refuses it: it refers to build_model.Multiclass")


def test_its_run_prints_nothing_on_stderr(look_inside_run):
    assert look_inside_run.result.returncode == 0
    assert look_inside_run.result.stderr == ""


def test_it_writes_what_its_help_says(look_inside_run):
    written = {path.name for path in Path(look_inside_run.artifacts).iterdir()}
    assert {"look-whole-model.pth", "look-iris.safetensors"} <= written

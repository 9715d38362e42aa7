"""Chapter 4: every round trip is exact, and the whole-model pitfall fails as printed.

The chapter's real process (`save_load_run`) gives what a reader sees and the files it
leaves; one more run in this process (`chapter`) gives the objects its cells built and
records every unsafe load it makes. Each printed claim is checked against facts computed
here, independently of the chapter.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import shutil
import signal
import stat
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

from build_model import Multiclass, load_iris_split, same_outputs, same_state
from support import lab_tools
from support.cli import chapter_prose
from support.lab_tools import private_folder
from support.settings import SPECIES
from tests.helpers import REPO, ChapterResult, assert_one_line_refusal, run_chapter_here, run_in_fork

LAYERS = [
    "torch.nn.modules.activation.LogSoftmax",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.linear.Linear",
]
WRITTEN = ["demo-state.pth", "demo-whole-model-main.pth", "demo-whole-model.pth", "iris-model.pth"]


def artifacts_with(tmp_path: Path, model_file: Path | None = None) -> Path:
    """A reader's folder whose artifacts/ holds `model_file` as iris-model.pth (or nothing)."""
    (tmp_path / "artifacts").mkdir()
    if model_file is not None:
        shutil.copy(model_file, tmp_path / "artifacts" / "iris-model.pth")
    return tmp_path


@dataclass(frozen=True)
class UnsafeRead:
    """A file read by pickle.load, or handed to a fresh process's weights_only=False load."""

    how: str
    path: Path
    folder_mode: int  # the folder's permission bits at the time of the read
    folder_owner: int
    written_by: str  # who wrote the file: "this process" or the fresh program that saved it


@dataclass
class Spy:
    unsafe_reads: list[UnsafeRead] = field(default_factory=list)
    fresh_runs: list[tuple[str, list[str]]] = field(default_factory=list)
    saved_by_fresh: dict[Path, str] = field(default_factory=dict)
    folders: list[Path] = field(default_factory=list)
    out_dir: Path = Path()


def record(spy: Spy, how: str, path: Path, written_by: str) -> None:
    info = path.parent.stat()
    spy.unsafe_reads.append(UnsafeRead(how, path, stat.S_IMODE(info.st_mode), info.st_uid, written_by))
    spy.folders.append(path.parent)


@pytest.fixture(scope="module")
def chapter(tmp_path_factory: pytest.TempPathFactory, trained_model_path: Path) -> tuple[ChapterResult, Spy]:
    """save_load_demo.py run in this process, in a reader's folder, with its unsafe loads recorded."""
    cwd = artifacts_with(tmp_path_factory.mktemp("save_load"), trained_model_path)
    spy = Spy(out_dir=(cwd / "artifacts").resolve())
    real_pickle_load, real_run_fresh_python = pickle.load, lab_tools.run_fresh_python

    depth = [0]  # unpickling tensors calls pickle.load again on bytes from the same file

    def pickle_load(file, *args, **kwargs):
        if depth[0] == 0:
            record(spy, "pickle.load", Path(file.name), "this process")
        depth[0] += 1
        try:
            return real_pickle_load(file, *args, **kwargs)
        finally:
            depth[0] -= 1

    def run_fresh(program: Path, *args: object, cwd: Path, timeout: float = 120, check: bool = False):
        arguments = [str(arg) for arg in args]
        spy.fresh_runs.append((Path(program).name, arguments))
        if Path(program).name == "load_whole_model.py":  # it loads its argument with weights_only=False
            path = Path(arguments[0])
            record(spy, "weights_only=False", path, spy.saved_by_fresh.get(path, "nobody seen"))
        result = real_run_fresh_python(program, *args, cwd=cwd, timeout=timeout, check=check)
        if Path(program).name == "save_whole_model.py" and result.returncode == 0:
            spy.saved_by_fresh[Path(arguments[1])] = "save_whole_model.py"
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pickle, "load", pickle_load)
        patch.setattr(lab_tools, "run_fresh_python", run_fresh)
        result = run_chapter_here("save_load_demo.py", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result, spy


@pytest.fixture(scope="module")
def trained(trained_model_path: Path) -> Multiclass:
    model = Multiclass()
    model.load_state_dict(torch.load(trained_model_path, weights_only=True))
    return model.eval()


X_TEST = load_iris_split().X_test


@pytest.mark.slow
def test_the_cells_print_what_the_real_process_prints(chapter, save_load_run):
    result, _ = chapter
    assert result.stdout == save_load_run.stdout
    assert save_load_run.result.stderr == ""
    headings = re.findall(r"^## (.*)$", save_load_run.stdout, flags=re.MULTILINE)
    assert headings == [
        "1. pickle",
        "2. torch.save / torch.load(weights_only=True)",
        "3. Saving the whole model",
        "The ways out",
        "4. Load and predict",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["from_pickle", "from_torch"])
def test_round_trips_give_the_same_tensors_and_predictions(name, chapter, trained):
    restored = chapter[0].namespace[name]
    assert isinstance(restored, Multiclass)
    assert restored is not chapter[0].namespace["trained"]
    for key, tensor in trained.state_dict().items():
        assert torch.equal(restored.state_dict()[key], tensor), key
    assert list(restored.state_dict()) == list(trained.state_dict())
    assert same_outputs(restored, trained, X_TEST)


def test_each_round_trip_is_printed_exact(save_load_run):
    for call in ["pickle.dump / pickle.load", "torch.save / torch.load"]:
        assert f"{call}: same tensors True, same predictions True" in save_load_run.stdout.splitlines()


def test_the_saved_state_dict_loads_with_weights_only(save_load_run, trained):
    state = torch.load(save_load_run.artifacts / "demo-state.pth", weights_only=True)
    assert same_state(state, trained.state_dict())


def test_the_zip_holds_one_record_per_storage(save_load_run, trained):
    path = save_load_run.artifacts / "demo-state.pth"
    with zipfile.ZipFile(path) as archive:
        names = [name.split("/", 1)[1] for name in archive.namelist()]
    assert f"artifacts/demo-state.pth is a zip archive of: {', '.join(names)}" in save_load_run.stdout
    storages = {tensor.untyped_storage().data_ptr() for tensor in trained.state_dict().values()}
    assert sorted(name for name in names if name.startswith("data/")) == [
        f"data/{i}" for i in range(len(storages))
    ]
    assert "data.pkl" in names

    def data_records(obj: object) -> int:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        with zipfile.ZipFile(buffer) as archive:
            return sum("/data/" in name for name in archive.namelist())

    weight = trained.hidden.weight.detach()
    assert data_records({"weight": weight, "first_row": weight[0]}) == 1
    assert data_records({"weight": weight, "first_row": weight[0].clone()}) == 2  # the count can differ
    assert "A weight and a view of its first row, saved together: 1 data record" in save_load_run.stdout


def global_names(whole_model_file: Path) -> set[str]:
    """The module.name of every GLOBAL in the file's pickle, read with pickletools: nothing is run."""
    with zipfile.ZipFile(whole_model_file) as archive:
        data = archive.read(next(name for name in archive.namelist() if name.endswith("/data.pkl")))
    return {arg.replace(" ", ".") for opcode, arg, _ in pickletools.genops(data) if opcode.name == "GLOBAL"}


def test_the_article_style_file_really_records_main_multiclass(save_load_run):
    path = save_load_run.artifacts / "demo-whole-model-main.pth"
    assert "__main__.Multiclass" in global_names(path)
    assert "build_model.Multiclass" not in global_names(path)
    assert sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path)) == [
        "__main__.Multiclass",
        *LAYERS,
    ]
    with pytest.raises(pickle.UnpicklingError, match=r"Unsupported global: GLOBAL __main__\.Multiclass"):
        torch.load(path, weights_only=True)
    program = (REPO / "fresh_process" / "save_whole_model.py").read_text()
    assert "\nclass Multiclass(nn.Module):" in program
    assert "torch.save(model, whole_model_file)" in program
    assert "import build_model" not in program and "from build_model" not in program


def test_the_whole_model_fails_in_a_fresh_process_as_printed(save_load_run):
    stdout = save_load_run.stdout.splitlines()
    assert (
        "fresh_process/save_whole_model.py, which defines Multiclass: "
        "Saved the whole model, class __main__.Multiclass"
    ) in stdout
    assert (
        "  torch.load(path)                      -> UnpicklingError: WeightsUnpickler error: "
        "Unsupported global: GLOBAL __main__.Multiclass was not an allowed global by default"
    ) in stdout
    assert (
        "  torch.load(path, weights_only=False)  -> AttributeError: "
        "Can't get attribute 'Multiclass' on <module '__main__' from 'load_whole_model.py'>"
    ) in stdout


@pytest.mark.slow
def test_the_failures_are_what_a_fresh_process_really_gets(save_load_run):
    """The same two loads, made here in our own fresh process, on a copy in a private folder."""
    attempt = (
        "import sys, torch\n"
        "for kwargs in ({}, {'weights_only': False}):\n"
        "    try:\n"
        "        torch.load(sys.argv[1], **kwargs)\n"
        "        print('loaded')\n"
        "    except Exception as err:\n"
        "        print(type(err).__name__, str(err).replace(chr(10), ' '))\n"
    )
    with private_folder() as private:
        copy = private / "whole.pth"
        shutil.copyfile(save_load_run.artifacts / "demo-whole-model-main.pth", copy)
        result = subprocess.run(
            [sys.executable, "-I", "-c", attempt, str(copy)],
            capture_output=True,
            text=True,
            cwd=private,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    weights_only, unsafe = result.stdout.splitlines()
    assert weights_only.startswith("UnpicklingError ")
    assert "Unsupported global: GLOBAL __main__.Multiclass" in weights_only
    assert unsafe.startswith("AttributeError ")
    assert "Can't get attribute 'Multiclass'" in unsafe


def test_the_ways_out_load_the_same_model(save_load_run, trained):
    whole_path = save_load_run.artifacts / "demo-whole-model.pth"
    assert "build_model.Multiclass" in global_names(whole_path)
    assert sorted(torch.serialization.get_unsafe_globals_in_checkpoint(whole_path)) == [
        "build_model.Multiclass",
        *LAYERS,
    ]
    with pytest.raises(pickle.UnpicklingError, match=r"Unsupported global: GLOBAL build_model\.Multiclass"):
        torch.load(whole_path, weights_only=True)
    with torch.serialization.safe_globals([Multiclass, nn.Linear, nn.ReLU, nn.LogSoftmax]):
        whole = torch.load(whole_path, weights_only=True)
    assert type(whole) is Multiclass
    assert same_state(whole.state_dict(), trained.state_dict())
    assert same_outputs(whole, trained, X_TEST)

    article_path = save_load_run.artifacts / "demo-whole-model-main.pth"
    with torch.serialization.safe_globals(
        [(Multiclass, "__main__.Multiclass"), nn.Linear, nn.ReLU, nn.LogSoftmax]
    ):
        rescued = torch.load(article_path, weights_only=True)
    assert type(rescued) is Multiclass
    assert same_state(rescued.state_dict(), trained.state_dict())
    assert same_outputs(rescued, trained, X_TEST)

    stdout = save_load_run.stdout
    names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(whole_path))
    assert (
        f"artifacts/demo-whole-model.pth, saved from code that imports the class, refers to: {names}"
        in stdout
    )
    assert (
        "  torch.load inside safe_globals([Multiclass, nn.Linear, nn.ReLU, nn.LogSoftmax]): "
        "Multiclass, same predictions True"
    ) in stdout
    assert (
        '  the article\'s file, with (Multiclass, "__main__.Multiclass") allowlisted: '
        "Multiclass, same predictions True"
    ) in stdout


@pytest.mark.slow
def test_unsafe_loads_read_only_files_just_written_in_private_folders(chapter):
    result, spy = chapter
    out_dir = spy.out_dir
    assert Path(result.namespace["out_dir"]) == Path("artifacts")  # the chapter ran with its default
    assert [read.how for read in spy.unsafe_reads] == ["pickle.load", "weights_only=False"]
    assert [name for name, _ in spy.fresh_runs] == ["save_whole_model.py", "load_whole_model.py"]
    for read in spy.unsafe_reads:
        assert read.folder_mode == 0o700, read
        assert read.folder_owner == os.getuid(), read
        assert not read.path.resolve().is_relative_to(out_dir), read
        assert not read.path.parent.exists(), read  # the private folder is gone afterwards
    assert spy.unsafe_reads[0].written_by == "this process"
    assert spy.unsafe_reads[1].written_by == "save_whole_model.py"  # the file the saver had just written
    assert len(set(spy.folders)) == 2  # each lesson its own fresh folder
    assert "weights_only=False" in (REPO / "fresh_process" / "load_whole_model.py").read_text()


def test_the_load_and_predict_program_scores_the_training_split(save_load_run, trained):
    split = load_iris_split()
    with torch.no_grad():
        predicted = trained(split.X_test).argmax(dim=1)
    accuracy = (predicted == split.y_test).float().mean().item()
    lines = save_load_run.stdout.split("## 4. Load and predict\n")[1].splitlines()
    assert lines[0] == f"Accuracy: {accuracy:.2f}"
    expected = [
        f"  [{', '.join(f'{v:.1f}' for v in split.X_test[i].tolist())}] -> "
        f"{SPECIES[predicted[i]]:<10} (actual: {SPECIES[split.y_test[i]]})"
        for i in range(5)
    ]
    assert lines[1:] == expected


def test_the_chapter_writes_what_its_first_cell_says(save_load_run, trained_model_path):
    assert sorted(path.name for path in save_load_run.artifacts.iterdir()) == WRITTEN
    assert [path.name for path in save_load_run.cwd.iterdir()] == ["artifacts"]
    assert (save_load_run.artifacts / "iris-model.pth").read_bytes() == trained_model_path.read_bytes()
    prose = " ".join(chapter_prose(REPO / "save_load_demo.py").split())
    for name in WRITTEN:
        assert name in prose


def run_with_failing_save(cwd: Path, file_name: str, failure) -> ChapterResult:
    """Run the chapter here, with `failure()` called when torch.save writes `file_name`."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, Path) and f.name == file_name:
            failure(f)
        return real_save(obj, f, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", save)
        return run_chapter_here("save_load_demo.py", cwd=cwd)


def test_a_full_disk_is_one_line_and_leaves_no_half_written_file(tmp_path, trained_model_path):
    cwd = artifacts_with(tmp_path, trained_model_path)

    def disk_full(path: Path) -> None:
        path.write_bytes(b"PK\x03\x04 half")  # what a write cut short leaves behind
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing")

    result = run_with_failing_save(cwd, "demo-state.pth", disk_full)
    assert_one_line_refusal(result, "cannot write artifacts/demo-state.pth: RuntimeError:")
    assert sorted(p.name for p in (cwd / "artifacts").iterdir()) == ["iris-model.pth"]


@pytest.mark.slow
def test_ctrl_c_names_what_was_saved_and_leaves_no_half_written_file(tmp_path, trained_model_path):
    cwd = artifacts_with(tmp_path, trained_model_path)

    def ctrl_c(path: Path) -> None:
        path.write_bytes(b"PK\x03\x04 half")
        os.kill(os.getpid(), signal.SIGINT)  # the chapter's handler runs at the next bytecode

    def interrupted_chapter() -> int:  # in a fork: the handler ends its process with os._exit(130)
        return run_with_failing_save(cwd, "demo-whole-model.pth", ctrl_c).returncode

    code, stderr = run_in_fork(interrupted_chapter, cwd=tmp_path)
    assert code == 130
    assert stderr.strip() == (
        "interrupted (Ctrl-C); saved before that: "
        "artifacts/demo-state.pth, artifacts/demo-whole-model-main.pth"
    )
    written = sorted(p.name for p in (cwd / "artifacts").iterdir())
    assert written == ["demo-state.pth", "demo-whole-model-main.pth", "iris-model.pth"]


def test_a_missing_out_dir_is_refused_without_creating_it(tmp_path):
    result = run_chapter_here("save_load_demo.py", "--out-dir", "nowhere", cwd=tmp_path)
    assert_one_line_refusal(result, "nowhere/iris-model.pth not found; create it with: python train_iris.py")
    assert list(tmp_path.iterdir()) == []

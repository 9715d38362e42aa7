"""Chapter 1: the model, the shared helpers, and the loader that refuses bad files."""

from __future__ import annotations

import importlib
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import build_model
from build_model import (
    EXIT_BAD_INPUT,
    SPECIES,
    ModelFileError,
    Multiclass,
    accuracy,
    load_iris_split,
    load_model,
    predict,
    same_outputs,
    same_state,
    seed_everything,
)
from tests.conftest import run_script


class ArticleMulticlass(nn.Module):
    """A reader's own copy of the article's class, written independently of build_model."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.output = nn.Linear(8, 3)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x):
        x = self.act(self.hidden(x))
        x = self.output(x)
        x = self.logsoftmax(x)
        return x


def test_state_dict_keys_and_shapes_are_the_articles():
    state = Multiclass().state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "hidden.weight": (8, 4),
        "hidden.bias": (8,),
        "output.weight": (3, 8),
        "output.bias": (3,),
    }


def test_files_move_both_ways_between_our_class_and_the_articles(trained_model_path):
    state = torch.load(trained_model_path, weights_only=True)
    theirs = ArticleMulticlass()
    theirs.load_state_dict(state)  # strict: every key must match
    ours = Multiclass()
    ours.load_state_dict(theirs.state_dict())
    X = load_iris_split().X_test
    assert same_outputs(theirs, ours, X)
    assert same_state(ours.state_dict(), state)


def test_forward_gives_log_probabilities_per_flower():
    log_probs = Multiclass()(load_iris_split().X_train[:5])
    assert log_probs.shape == (5, 3)
    torch.testing.assert_close(log_probs.exp().sum(dim=1), torch.ones(5))


def test_split_is_stratified_70_30_and_reproducible():
    split = load_iris_split()
    assert split.X_train.shape == (105, 4) and split.X_test.shape == (45, 4)
    assert split.X_train.dtype == torch.float32 and split.y_train.dtype == torch.long
    assert torch.bincount(split.y_train).tolist() == [35, 35, 35]
    assert torch.bincount(split.y_test).tolist() == [15, 15, 15]
    again = load_iris_split()
    assert torch.equal(split.X_test, again.X_test) and torch.equal(split.y_test, again.y_test)
    assert len(SPECIES) == 3


def test_seed_everything_seeds_python_numpy_and_torch():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    seed_everything(7)
    first = draw()
    seed_everything(7)
    assert draw() == first
    seed_everything(8)
    assert draw() != first


def test_predict_switches_to_eval_mode_and_accuracy_counts_matches():
    model = Multiclass()
    model.train()
    X, y = load_iris_split().X_test, load_iris_split().y_test
    predicted = predict(model, X)
    assert not model.training
    assert predicted.shape == (45,)
    assert accuracy(model, X, y) == pytest.approx((predicted == y).float().mean().item())
    assert accuracy(model, X, predicted) == 1.0


def test_main_shows_the_model_as_a_reader_runs_it(walkthrough):
    stdout = walkthrough.stdout("build_model.py")
    assert "(hidden): Linear(in_features=4, out_features=8, bias=True)" in stdout
    assert "Trainable parameters: 67" in stdout
    assert "Input shape:  (5, 4)" in stdout
    assert "Output shape: (5, 3)" in stdout


def test_chapter_1_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert build_model.main([]) == 0
    assert list(tmp_path.iterdir()) == []


# %%
# The loader: every bad file refused with one line that names it, nothing executed.

MARKER = "code-ran.txt"


class Hostile:
    """Unpickling this creates a marker file: a harmless stand-in for any code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",))


def write_bad_file(kind: str, path: Path, good: Path) -> None:
    marker = path.parent / MARKER
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "text":
        path.write_text("hidden.weight = [[1, 2], [3, 4]]\n")
    elif kind == "hostile torch.save":
        torch.save({"hidden.weight": Hostile(marker)}, path)
    elif kind == "hostile plain pickle":
        path.write_bytes(pickle.dumps(Hostile(marker), protocol=2))
    elif kind == "whole model":
        torch.save(Multiclass(), path)
    elif kind == "list of tensors":
        torch.save(list(Multiclass().state_dict().values()), path)
    elif kind == "wider hidden layer":
        torch.save(Multiclass(n_hidden=16).state_dict(), path)
    elif kind == "missing key":
        state = Multiclass().state_dict()
        del state["output.bias"]
        torch.save(state, path)
    elif kind == "extra key":
        torch.save({**Multiclass().state_dict(), "extra.weight": torch.zeros(2)}, path)
    elif kind == "nan weights":
        state = Multiclass().state_dict()
        state["hidden.bias"][0] = float("nan")
        torch.save(state, path)
    elif kind == "integer weights":
        state = {k: v.long() for k, v in Multiclass().state_dict().items()}
        torch.save(state, path)
    elif kind == "a directory":
        path.mkdir()
    else:
        raise AssertionError(kind)


BAD_FILES = {
    "empty": "empty or cut short",
    "truncated": "truncated or corrupted",
    "random bytes": "not a PyTorch weights file",
    "text": "not a PyTorch weights file",
    "hostile torch.save": "it refers to exec, not just tensors",
    "hostile plain pickle": "it refers to exec, not just tensors",
    "whole model": "it refers to build_model.Multiclass",
    "list of tensors": "holds a list, not a state_dict",
    "wider hidden layer": "hidden.weight has shape (16, 4), Multiclass expects (8, 4)",
    "missing key": "missing ['output.bias']",
    "extra key": "unexpected ['extra.weight']",
    "nan weights": "hidden.bias contains NaN",
    "integer weights": "torch.int64",
    "a directory": "cannot be read: Is a directory",
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_load_model_refuses_bad_files_in_one_line(kind, tmp_path, trained_model_path):
    path = tmp_path / "iris-model.pth"
    write_bad_file(kind, path, trained_model_path)
    with pytest.raises(ModelFileError) as refused:
        load_model(path)
    message = str(refused.value)
    assert message.startswith(f"{path} refused: ") or message.startswith(f"{path} cannot be read: ")
    assert BAD_FILES[kind] in message
    assert "\n" not in message
    assert not (tmp_path / MARKER).exists()


def test_hostile_file_really_would_run_code_if_unpickled(tmp_path):
    """Guards the test above: its hostile file is not harmless by accident."""
    path = tmp_path / "hostile.pkl"
    write_bad_file("hostile plain pickle", path, path)
    pickle.loads(path.read_bytes())
    assert (tmp_path / MARKER).exists()


def test_missing_model_names_the_command_that_creates_it(tmp_path):
    with pytest.raises(ModelFileError, match=r"not found; create it with: python train_iris.py"):
        load_model(tmp_path / "iris-model.pth")


def test_load_model_accepts_the_trained_file(trained_model_path):
    model = load_model(trained_model_path)
    assert not model.training
    assert same_state(model.state_dict(), torch.load(trained_model_path, weights_only=True))


@pytest.mark.parametrize("chapter", ["inspect_state", "save_load_demo", "load_tips"])
def test_chapters_refuse_a_bad_model_file_in_one_line(chapter, tmp_path, trained_model_path, capsys):
    out_dir = tmp_path / "artifacts"
    out_dir.mkdir()
    write_bad_file("hostile torch.save", out_dir / "iris-model.pth", trained_model_path)
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(chapter).main(["--out-dir", str(out_dir)])
    assert stopped.value.code == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {out_dir / 'iris-model.pth'} refused: it refers to exec")
    assert captured.err.count("\n") == 1
    assert not (out_dir / MARKER).exists()
    assert [path.name for path in out_dir.iterdir()] == ["iris-model.pth"]


def test_real_command_refuses_a_bad_model_file_without_a_traceback(tmp_path, trained_model_path):
    out_dir = tmp_path / "artifacts"
    out_dir.mkdir()
    write_bad_file("truncated", out_dir / "iris-model.pth", trained_model_path)
    result = run_script("save_load_demo.py", cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert result.stdout == ""
    assert result.stderr == (
        "error: artifacts/iris-model.pth refused: the file is truncated or corrupted "
        "(its zip archive is incomplete)\n"
    )

"""Chapter 1: the article's model, the data split, and the helpers every chapter shares."""

from __future__ import annotations

import contextlib
import io
import random
import runpy

import numpy as np
import pytest
import torch
from torch import nn

from build_model import (
    Multiclass,
    accuracy,
    load_iris_split,
    predict,
    same_outputs,
    same_state,
    seed_everything,
)
from support.settings import SPECIES
from tests.helpers import REPO, assert_one_line_refusal, run_chapter_here


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


def test_running_it_shows_the_model_as_a_reader_runs_it(model_run):
    stdout = model_run.stdout
    assert "(hidden): Linear(in_features=4, out_features=8, bias=True)" in stdout
    assert "Trainable parameters: 67" in stdout
    assert "Input shape:  (5, 4)" in stdout
    assert "Output shape: (5, 3)" in stdout


def test_chapter_1_writes_nothing_and_importing_it_runs_nothing(tmp_path, model_run):
    run = run_chapter_here("build_model.py", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout == model_run.stdout
    assert list(tmp_path.iterdir()) == []
    assert list(model_run.artifacts.iterdir()) == []
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        runpy.run_path(
            str(REPO / "build_model.py"), run_name="build_model"
        )  # as `import build_model` runs it
    assert printed.getvalue() == ""


def test_the_seed_flag_is_checked(tmp_path):
    assert_one_line_refusal(run_chapter_here("build_model.py", "--seed", "-3", cwd=tmp_path), "--seed")

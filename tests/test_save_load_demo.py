"""Chapter 4: every round trip is exact, and the whole-model pitfall fails as claimed."""

from __future__ import annotations

import pickle

import pytest
import torch

import save_load_demo
from build_model import load_iris_split, load_model, same_outputs, same_state


@pytest.fixture
def trained(trained_model_path):
    return load_model(trained_model_path)


@pytest.mark.parametrize("round_trip", [save_load_demo.pickle_round_trip, save_load_demo.torch_round_trip])
def test_round_trips_are_exact(round_trip, trained, tmp_path):
    restored = round_trip(trained, tmp_path / "copy")
    assert same_state(restored.state_dict(), trained.state_dict())
    assert same_outputs(restored, trained, load_iris_split().X_test)


def test_torch_save_writes_a_zip_of_a_pickle_and_raw_tensors(trained, tmp_path):
    save_load_demo.torch_round_trip(trained, tmp_path / "copy.pth")
    members = save_load_demo.zip_members(tmp_path / "copy.pth")
    assert "data.pkl" in members
    assert {"data/0", "data/1", "data/2", "data/3"} <= set(members)


def test_whole_model_fails_in_a_fresh_process_as_the_article_shows(walkthrough):
    stdout = walkthrough.stdout("save_load_demo.py")
    assert (
        "torch.load(path)                      -> UnpicklingError: WeightsUnpickler error: "
        "Unsupported global: GLOBAL __main__.Multiclass was not an allowed global by default"
    ) in stdout
    assert (
        "torch.load(path, weights_only=False)  -> AttributeError: "
        "Can't get attribute 'Multiclass' on <module '__main__'"
    ) in stdout
    assert "'__main__.Multiclass'" in stdout


def test_article_style_file_really_records_main_and_loads_only_when_allowlisted(walkthrough, trained):
    article_file = walkthrough.artifacts / "demo-whole-model-main.pth"
    assert "__main__.Multiclass" in save_load_demo.unsafe_globals(article_file)
    with pytest.raises(pickle.UnpicklingError, match=r"Unsupported global: GLOBAL __main__\.Multiclass"):
        torch.load(article_file, weights_only=True)
    rescued = save_load_demo.load_whole_model(article_file, saved_as="__main__.Multiclass")
    assert same_outputs(rescued, trained, load_iris_split().X_test)


def test_importable_whole_model_loads_with_allowlist_only(trained, tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(trained, path)
    assert save_load_demo.unsafe_globals(path) == [
        "build_model.Multiclass",
        "torch.nn.modules.activation.LogSoftmax",
        "torch.nn.modules.activation.ReLU",
        "torch.nn.modules.linear.Linear",
    ]
    with pytest.raises(pickle.UnpicklingError, match=r"Unsupported global: GLOBAL build_model\.Multiclass"):
        torch.load(path, weights_only=True)
    whole = save_load_demo.load_whole_model(path)
    assert same_state(whole.state_dict(), trained.state_dict())
    assert same_outputs(whole, trained, load_iris_split().X_test)


def test_load_and_predict_program_matches_training(walkthrough, trained_model_path, trained):
    test_accuracy, examples = save_load_demo.predict_species(trained_model_path)
    split = load_iris_split()
    assert test_accuracy == (trained(split.X_test).argmax(1) == split.y_test).float().mean().item()
    assert len(examples) == save_load_demo.N_FLOWERS_SHOWN
    assert f"Accuracy: {test_accuracy:.2f}" in walkthrough.stdout("save_load_demo.py")
    assert f"Accuracy: {test_accuracy:.2f}" in walkthrough.stdout("train_iris.py")


def test_walkthrough_reports_every_round_trip_exact(walkthrough):
    stdout = walkthrough.stdout("save_load_demo.py")
    assert stdout.count("same tensors True, same predictions True") == 2
    assert stdout.count("same predictions True") == 4
    assert " False" not in stdout.replace("weights_only=False", "")
    written = {path.name for path in walkthrough.artifacts.glob("demo-*")}
    assert written == {
        "demo-state.pickle",
        "demo-state.pth",
        "demo-whole-model-main.pth",
        "demo-whole-model.pth",
    }

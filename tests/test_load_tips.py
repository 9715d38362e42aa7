"""Chapter 6: each loading problem raises the error shown, and each fix works."""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

import load_tips
from build_model import (
    SEED,
    Multiclass,
    accuracy,
    load_iris_split,
    load_model,
    same_outputs,
    same_state,
    seed_everything,
)


@pytest.fixture
def trained(trained_model_path) -> Multiclass:
    return load_model(trained_model_path)


@pytest.fixture
def state(trained) -> dict[str, torch.Tensor]:
    return dict(trained.state_dict())


def test_walkthrough_shows_every_fix_working(walkthrough):
    stdout = walkthrough.stdout("load_tips.py")
    assert stdout.count("same predictions True") == 4
    assert "same tensors True" in stdout
    assert "every tensor identical: True" in stdout
    assert "Optimizer created before the load -> training changes weights: False" in stdout
    assert "Optimizer created after the load  -> training changes weights: True" in stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the cuda:0 file loads without error")
def test_gpu_file_fails_on_cpu_only_machine_and_map_location_fixes_it(state, tmp_path):
    path = tmp_path / "gpu.pth"
    load_tips.save_as_if_on_gpu(state, path)
    with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
        torch.load(path, weights_only=True)
    loaded = load_tips.load_on_cpu(path)
    assert same_state(loaded, state)
    assert all(tensor.device.type == "cpu" for tensor in loaded.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: no CUDA device on this machine")
def test_real_gpu_round_trip(state, tmp_path):
    assert load_tips.real_gpu_round_trip(state, tmp_path / "gpu.pth") is True


def test_strict_load_names_missing_and_unexpected_keys(state):
    file_state = load_tips.renamed(state, "output.", "head.")
    with pytest.raises(RuntimeError) as refused:
        Multiclass().load_state_dict(file_state)
    assert 'Missing key(s) in state_dict: "output.weight", "output.bias"' in str(refused.value)
    assert 'Unexpected key(s) in state_dict: "head.weight", "head.bias"' in str(refused.value)


def test_ignoring_strict_false_result_leaves_a_layer_untrained(state, trained):
    seed_everything(SEED)
    partial = Multiclass()
    result = partial.load_state_dict(load_tips.renamed(state, "output.", "head."), strict=False)
    assert result.missing_keys == ["output.weight", "output.bias"]
    assert result.unexpected_keys == ["head.weight", "head.bias"]
    split = load_iris_split()
    assert not torch.equal(partial.output.weight, trained.output.weight)
    assert accuracy(partial, split.X_test, split.y_test) < accuracy(trained, split.X_test, split.y_test)


def test_renaming_back_restores_the_model(state, trained):
    file_state = load_tips.renamed(state, "output.", "head.")
    fixed = load_tips.load_into(Multiclass(), load_tips.renamed(file_state, "head.", "output."))
    assert same_outputs(fixed, trained, load_iris_split().X_test)


def test_warm_start_loads_what_fits_and_reports_the_rest(state):
    model = Multiclass(n_classes=4)
    with pytest.raises(RuntimeError, match=r"size mismatch for output\.weight"):
        model.load_state_dict(state)
    untouched_output = model.output.weight.detach().clone()
    loaded, left = load_tips.warm_start(state, model)
    assert loaded == ["hidden.weight", "hidden.bias"]
    assert left == ["output.weight", "output.bias"]
    assert torch.equal(model.hidden.weight, state["hidden.weight"])
    assert torch.equal(model.output.weight, untouched_output)


@pytest.mark.parametrize("strict", [True, False])
def test_size_mismatch_is_an_error_even_with_strict_false(state, strict):
    pattern = re.escape("size mismatch for hidden.weight: copying a param with shape torch.Size([8, 4])")
    with pytest.raises(RuntimeError, match=pattern):
        Multiclass(n_hidden=16).load_state_dict(state, strict=strict)


@pytest.mark.parametrize(
    ("wrapper", "prefix"), [("DataParallel", "module."), ("torch.compile", "_orig_mod.")]
)
def test_wrapper_prefixes_and_their_removal(wrapper, prefix, trained):
    wrapped = load_tips.wrapped_state(trained, wrapper)
    assert all(key.startswith(prefix) for key in wrapped)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\)"):
        Multiclass().load_state_dict(wrapped)
    consume_prefix_in_state_dict_if_present(wrapped, prefix)
    assert same_state(wrapped, trained.state_dict())


def test_meta_device_and_assign_share_the_loaded_tensors(trained_model_path, trained):
    model, state = load_tips.load_without_copies(trained_model_path)
    assert all(param.device.type == "cpu" for param in model.parameters())
    assert model.hidden.weight.data_ptr() == state["hidden.weight"].data_ptr()
    assert same_outputs(model, trained, load_iris_split().X_test)


def test_optimizer_created_before_assign_never_trains_the_model(trained_model_path):
    with torch.device("meta"):
        model = Multiclass()
    too_early = torch.optim.Adam(model.parameters())
    _, state = load_tips.load_without_copies(trained_model_path)
    model.load_state_dict(state, assign=True)
    assert too_early.param_groups[0]["params"][0] is not model.hidden.weight
    assert load_tips.learns(model, too_early) is False
    assert load_tips.learns(model, torch.optim.Adam(model.parameters())) is True


def test_several_models_and_optimizers_round_trip_exactly(tmp_path):
    assert load_tips.pair_round_trip_is_exact(tmp_path / "pair.pth") is True
    saved = torch.load(tmp_path / "pair.pth", weights_only=True)
    assert list(saved) == ["model_a", "model_b", "optimizer_a", "optimizer_b"]
    assert saved["optimizer_a"]["state"][0]["step"].item() == 21

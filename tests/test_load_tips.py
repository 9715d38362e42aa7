"""Chapter 7: each loading problem raises the error shown, and each fix works."""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from build_model import Multiclass, accuracy, load_iris_split, same_outputs, same_state, seed_everything
from support.settings import SEED
from tests.helpers import ChapterResult, run_chapter_here

NO_GPU = "needs a GPU: no CUDA device on this machine"
HAS_GPU = "on a GPU machine the cuda:0 file loads without an error"


@pytest.fixture(scope="module")
def chapter_cwd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tips")


@pytest.fixture(scope="module")
def chapter(trained_model_path: Path, chapter_cwd: Path) -> ChapterResult:
    """The chapter run in this process, for its objects; the real process is `tips_run`."""
    cwd = chapter_cwd
    (cwd / "artifacts").mkdir()
    shutil.copy(trained_model_path, cwd / "artifacts")
    result = run_chapter_here("load_tips.py", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def ns(chapter: ChapterResult) -> dict:
    return chapter.namespace


@pytest.fixture
def trained(trained_model_path: Path) -> Multiclass:
    model = Multiclass()
    model.load_state_dict(torch.load(trained_model_path, weights_only=True))
    return model.eval()


@pytest.fixture
def state(trained: Multiclass) -> dict[str, torch.Tensor]:
    return dict(trained.state_dict())


def test_real_run_shows_every_fix_working(tips_run):
    stdout = tips_run.stdout
    assert stdout.count("same predictions True") == 5
    assert "same tensors True" in stdout
    assert "  accuracy with the output layer left untrained: 0.67 (trained: 1.00)" in stdout
    assert "every tensor identical: True" in stdout
    assert "Optimizer created before the load -> training changes weights: False" in stdout
    assert "Optimizer created after the load  -> training changes weights: True" in stdout
    assert sorted(path.name for path in tips_run.artifacts.iterdir()) == sorted(
        ["iris-model.pth", "tips-saved-on-gpu.pth", "tips-two-models.pth"]
        + ["tips-lightning.ckpt", "tips-lightning-hparams.ckpt"]
        + (["tips-real-gpu.pth"] if torch.cuda.is_available() else [])
    )


def test_the_in_process_run_prints_what_the_real_one_does(chapter, tips_run):
    # paths are relative to the run's folder, so the two runs print the same text
    assert chapter.stdout == tips_run.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason=HAS_GPU)
def test_gpu_file_fails_on_a_cpu_only_machine_and_map_location_fixes_it(ns, chapter_cwd, state):
    gpu_file = chapter_cwd / ns["gpu_file"]
    with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
        torch.load(gpu_file, weights_only=True)
    loaded = torch.load(gpu_file, map_location="cpu", weights_only=True)
    assert same_state(loaded, state)
    assert all(tensor.device.type == "cpu" for tensor in loaded.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_real_gpu_round_trip(ns, state):
    assert all(tensor.device.type == "cpu" for tensor in ns["from_gpu"].values())
    assert same_state(ns["from_gpu"], state)


def test_strict_load_names_missing_and_unexpected_keys(ns):
    assert list(ns["file_state"]) == ["hidden.weight", "hidden.bias", "head.weight", "head.bias"]
    with pytest.raises(RuntimeError) as refused:
        Multiclass().load_state_dict(ns["file_state"])
    assert 'Missing key(s) in state_dict: "output.weight", "output.bias"' in str(refused.value)
    assert 'Unexpected key(s) in state_dict: "head.weight", "head.bias"' in str(refused.value)


def test_ignoring_strict_false_result_leaves_a_layer_untrained(ns, trained):
    result, partial = ns["result"], ns["partial"]
    assert result.missing_keys == ["output.weight", "output.bias"]
    assert result.unexpected_keys == ["head.weight", "head.bias"]
    assert torch.equal(partial.hidden.weight, trained.hidden.weight)
    assert not torch.equal(partial.output.weight, trained.output.weight)
    split = load_iris_split()
    assert round(accuracy(partial, split.X_test, split.y_test), 2) == 0.67
    assert accuracy(trained, split.X_test, split.y_test) == 1.0


def test_the_untrained_layer_is_the_seeded_initial_one(ns, state):
    seed_everything(SEED)  # as the chapter does before building its fresh models
    Multiclass()
    again = Multiclass()
    again.load_state_dict(ns["file_state"], strict=False)
    assert same_state(again.state_dict(), ns["partial"].state_dict())


def test_renaming_back_restores_the_model(ns, trained, state):
    assert same_state(ns["renamed_back"], state)
    assert same_outputs(ns["fixed"], trained, load_iris_split().X_test)


def test_warm_start_loads_what_fits_and_reports_the_rest(ns, state):
    with pytest.raises(RuntimeError, match=r"size mismatch for output\.weight"):
        Multiclass(n_classes=4).load_state_dict(state)
    assert list(ns["fits"]) == ["hidden.weight", "hidden.bias"]
    assert ns["warm"].missing_keys == ["output.weight", "output.bias"]
    new_model = ns["new_model"]
    assert torch.equal(new_model.hidden.weight, state["hidden.weight"])
    assert torch.equal(new_model.hidden.bias, state["hidden.bias"])
    assert new_model.output.weight.shape == (4, 8)


@pytest.mark.parametrize("strict", [True, False])
def test_size_mismatch_is_an_error_even_with_strict_false(state, strict):
    pattern = re.escape("size mismatch for hidden.weight: copying a param with shape torch.Size([8, 4])")
    with pytest.raises(RuntimeError, match=pattern):
        Multiclass(n_hidden=16).load_state_dict(state, strict=strict)


def test_the_model_rebuilt_from_the_shapes_predicts_the_same(ns, trained):
    assert ns["n_hidden"] == 8
    assert same_outputs(ns["rebuilt"], trained, load_iris_split().X_test)


@pytest.mark.parametrize(
    ("wrap", "prefix"),
    [(nn.DataParallel, "module."), (torch.compile, "_orig_mod.")],
    ids=["DataParallel", "torch.compile"],
)
def test_wrapper_prefixes_and_their_removal(wrap, prefix, trained, state):
    wrapped = wrap(trained).state_dict()
    assert list(wrapped) == [prefix + key for key in state]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\)"):
        Multiclass().load_state_dict(wrapped)
    consume_prefix_in_state_dict_if_present(wrapped, prefix)
    assert same_state(wrapped, state)


def test_the_chapter_strips_both_prefixes(ns, state):
    for _, stripped in ns["wrapped_states"].values():
        assert same_state(stripped, state)


def test_meta_device_and_assign_share_the_loaded_tensors(ns, trained):
    big_model, mapped = ns["big_model"], ns["mapped"]
    assert all(param.device.type == "cpu" for param in big_model.parameters())
    assert all(param.data_ptr() == mapped[name].data_ptr() for name, param in big_model.named_parameters())
    assert same_outputs(big_model, trained, load_iris_split().X_test)


def test_optimizer_created_before_assign_never_trains_the_model(trained_model_path, ns):
    too_early_model, too_early = ns["too_early_model"], ns["too_early"]
    held = too_early.param_groups[0]["params"]
    assert all(param.device.type == "meta" for param in held)
    assert not any(param is model_param for param in held for model_param in too_early_model.parameters())
    assert torch.equal(
        too_early_model.hidden.weight, torch.load(trained_model_path, weights_only=True)["hidden.weight"]
    )
    in_time_model, in_time = ns["in_time_model"], ns["in_time"]
    assert in_time.param_groups[0]["params"] == list(in_time_model.parameters())
    assert not torch.equal(in_time_model.hidden.weight, too_early_model.hidden.weight)


def test_training_the_mapped_model_leaves_the_file_unchanged(ns, chapter_cwd, state):
    assert not torch.equal(ns["in_time_model"].hidden.weight, state["hidden.weight"])  # it did train
    assert same_state(torch.load(chapter_cwd / ns["model_path"], weights_only=True), state)


def test_several_models_and_optimizers_round_trip_exactly(ns, chapter_cwd):
    saved = torch.load(chapter_cwd / ns["pair_path"], weights_only=True)
    assert list(saved) == ["model_a", "model_b", "optimizer_a", "optimizer_b"]
    assert saved["optimizer_a"]["state"][0]["step"].item() == 21  # 105 flowers in batches of 5
    for name in ("a", "b"):
        assert same_state(ns[f"model_{name}"].state_dict(), ns[f"loaded_{name}"].state_dict())
        original, loaded = ns[f"optimizer_{name}"].state_dict(), ns[f"loaded_optimizer_{name}"].state_dict()
        assert original["param_groups"] == loaded["param_groups"]
        for index, entry in original["state"].items():
            assert all(torch.equal(tensor, loaded["state"][index][key]) for key, tensor in entry.items())
    assert not torch.equal(ns["model_a"].hidden.weight, ns["model_b"].hidden.weight)
    assert ns["exact"] is True


# Lightning is too heavy to install for a test: the chapter writes its documented checkpoint
# layout with torch.save (Trainer.save_checkpoint's keys; weights under "state_dict", named
# after the LightningModule's attribute), and these tests check that file and the load.
LIGHTNING_KEYS = [
    "epoch",
    "global_step",
    "pytorch-lightning_version",
    "state_dict",
    "loops",
    "callbacks",
    "optimizer_states",
    "lr_schedulers",
    "hparams_name",
    "hyper_parameters",
]


def test_the_lightning_checkpoint_has_the_documented_layout_and_loads_weights_only(ns, chapter_cwd, state):
    checkpoint = torch.load(chapter_cwd / ns["lightning_file"], weights_only=True)
    assert list(checkpoint) == LIGHTNING_KEYS
    assert list(checkpoint["state_dict"]) == [f"model.{key}" for key in state]
    assert type(checkpoint["optimizer_states"]) is list and type(checkpoint["lr_schedulers"]) is list
    with pytest.raises(RuntimeError, match=r"(?s)Missing key\(s\).*Unexpected key\(s\)"):
        Multiclass().load_state_dict(checkpoint["state_dict"])


def test_the_lightning_weights_load_into_the_plain_model_exactly(ns, chapter_cwd, trained, state):
    loaded = ns["from_lightning"].state_dict()
    assert list(loaded) == list(state)
    assert all(torch.equal(loaded[key], state[key]) for key in state)
    # And again here, from the file alone, as the cell teaches it.
    weights = torch.load(chapter_cwd / ns["lightning_file"], weights_only=True)["state_dict"]
    consume_prefix_in_state_dict_if_present(weights, "model.")
    model = Multiclass()
    model.load_state_dict(weights)
    X_test = load_iris_split().X_test
    assert same_outputs(model, trained, X_test) and same_outputs(ns["from_lightning"], trained, X_test)


def test_hyper_parameters_holding_an_object_are_refused_by_weights_only(ns, chapter_cwd, chapter):
    path = chapter_cwd / ns["hparams_file"]
    with pytest.raises(pickle.UnpicklingError, match=r"torch\.nn\.modules\.loss\.NLLLoss"):
        torch.load(path, weights_only=True)
    assert "UnpicklingError" in chapter.stdout and "torch.nn.modules.loss.NLLLoss" in chapter.stdout
    with torch.serialization.safe_globals([nn.NLLLoss]):
        assert isinstance(torch.load(path, weights_only=True)["hyper_parameters"]["loss_fn"], nn.NLLLoss)

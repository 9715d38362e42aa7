"""Chapter 3: each fact printed about parameters, buffers and state_dicts holds.

The chapter's real process (`inspect_run`) gives what a reader sees; one more run in this
process (`chapter`) gives the objects its cells built. Each printed claim is checked against
facts computed here, independently of the chapter.
"""

from __future__ import annotations

import copy
import inspect
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from build_model import Multiclass, load_iris_split, seed_everything, train_one_epoch
from tests.helpers import SCRIPT_ENV, ChapterResult, run_chapter_here, script_command

BUFFERS = ["norm.running_mean", "norm.running_var", "norm.num_batches_tracked"]


def artifacts_with(tmp_path: Path, model_file: Path | None = None) -> Path:
    """A reader's folder whose artifacts/ holds `model_file` as iris-model.pth (or nothing)."""
    (tmp_path / "artifacts").mkdir()
    if model_file is not None:
        shutil.copy(model_file, tmp_path / "artifacts" / "iris-model.pth")
    return tmp_path


@pytest.fixture(scope="module")
def chapter(tmp_path_factory: pytest.TempPathFactory, trained_model_path: Path) -> ChapterResult:
    """inspect_state.py run in this process, in a reader's folder, for its objects."""
    cwd = artifacts_with(tmp_path_factory.mktemp("inspect"), trained_model_path)
    try:
        result = run_chapter_here("inspect_state.py", cwd=cwd)
    finally:
        torch.set_printoptions(profile="default")  # the chapter sets 4 decimals for its reader
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def trained_state(trained_model_path: Path) -> dict[str, torch.Tensor]:
    return torch.load(trained_model_path, weights_only=True)


def printed(stdout: str, label: str) -> str:
    """The rest of the line that starts with `label`."""
    found = re.search(rf"^{re.escape(label)}(.*)$", stdout, flags=re.MULTILINE)
    assert found, (label, stdout)
    return found.group(1).strip()


def test_the_cells_print_what_the_real_process_prints(chapter, inspect_run):
    assert chapter.stdout == inspect_run.stdout
    assert inspect_run.result.stderr == ""
    headings = re.findall(r"^## (.*)$", inspect_run.stdout, flags=re.MULTILINE)
    assert headings == [
        "Parameters",
        "Buffers",
        "The state_dict",
        "The optimizer's state_dict",
        "state_dict() returns references",
    ]


def test_parameters_are_a_generator_and_copying_them_reproduces_the_model(inspect_run, trained_state):
    stdout = inspect_run.stdout
    assert inspect.isgenerator(Multiclass().parameters())
    assert "model.parameters() is a generator:" in stdout
    shapes = [tuple(tensor.shape) for tensor in trained_state.values()]
    assert re.findall(r"^  Parameter shape (\(.*\))$", stdout, flags=re.MULTILINE) == [str(s) for s in shapes]

    trained, fresh = Multiclass().eval(), Multiclass().eval()
    trained.load_state_dict(trained_state)
    X_test = load_iris_split().X_test
    with torch.no_grad():
        before = torch.equal(trained(X_test), fresh(X_test))
        for fresh_param, trained_param in zip(fresh.parameters(), trained.parameters(), strict=True):
            fresh_param.copy_(trained_param)
        after = torch.equal(trained(X_test), fresh(X_test))
    assert (before, after) == (False, True)
    assert printed(stdout, "Fresh untrained model predicts the same:") == str(before)
    assert printed(stdout, "After copying the parameters, same outputs:") == str(after)


def test_buffers_are_state_but_not_parameters_and_only_load_state_dict_copies_them(chapter):
    names = chapter.namespace
    bn_model, params_only, full_copy = names["bn_model"], names["params_only"], names["full_copy"]
    parameters = [name for name, _ in bn_model.named_parameters()]
    buffers = [name for name, _ in bn_model.named_buffers()]
    assert buffers == BUFFERS
    assert set(buffers).isdisjoint(parameters)
    assert set(buffers) <= set(bn_model.state_dict())
    assert printed(chapter.stdout, "parameters():") == str(parameters)
    assert printed(chapter.stdout, "buffers():") == str(buffers)
    assert printed(chapter.stdout, "state_dict():") == str(list(bn_model.state_dict()))

    # Training moved the statistics; a parameters-only copy still has BatchNorm's initial ones.
    assert not torch.equal(bn_model.norm.running_mean, torch.zeros(8))
    assert torch.equal(params_only.norm.running_mean, torch.zeros(8))
    assert torch.equal(params_only.norm.running_var, torch.ones(8))
    assert int(params_only.norm.num_batches_tracked) == 0
    assert int(bn_model.norm.num_batches_tracked) == 20 * 21  # BN_EPOCHS epochs of 21 batches
    for name, tensor in bn_model.named_parameters():
        assert torch.equal(tensor, params_only.get_parameter(name))
    for key, tensor in bn_model.state_dict().items():
        assert torch.equal(tensor, full_copy.state_dict()[key])

    X_test = load_iris_split().X_test
    for model in (bn_model, params_only, full_copy):
        model.eval()
    with torch.no_grad():
        reference, params_out, full_out = bn_model(X_test), params_only(X_test), full_copy(X_test)
    differ = int((reference.argmax(1) != params_out.argmax(1)).sum())
    assert differ > 0
    assert printed(chapter.stdout, "Parameters copied, buffers not -> same eval outputs:") == "False"
    assert not torch.equal(reference, params_out)
    assert f"  ...and {differ} of {len(X_test)} predicted species differ" in chapter.stdout
    assert printed(chapter.stdout, "load_state_dict(state_dict())  -> same eval outputs:") == "True"
    assert torch.equal(reference, full_out)


@pytest.mark.slow
def test_the_buffers_lesson_prints_the_same_on_any_number_of_threads(
    inspect_run, trained_model_path, tmp_path
):
    """Threads change the order of float sums; the lesson's numbers must not hang on them."""
    cwd = artifacts_with(tmp_path, trained_model_path)
    four_threads = subprocess.run(
        script_command("inspect_state.py"),
        cwd=cwd,
        env={**SCRIPT_ENV, "OMP_NUM_THREADS": "4"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert four_threads.returncode == 0, four_threads.stderr
    assert SCRIPT_ENV["OMP_NUM_THREADS"] == "1"  # what inspect_run ran with
    assert printed(four_threads.stdout, "  ...and") == printed(inspect_run.stdout, "  ...and")


def test_the_state_dict_printed_is_the_trained_files(inspect_run, trained_state):
    stdout = inspect_run.stdout
    assert f"OrderedDict with {len(trained_state)} entries:" in stdout
    torch.set_printoptions(precision=4, sci_mode=False)  # as the chapter prints them
    try:
        shown = "\n".join(f"{name}:\n{tensor}" for name, tensor in trained_state.items())
    finally:
        torch.set_printoptions(profile="default")
    assert shown in stdout


def test_the_optimizer_state_is_per_parameter_position(inspect_run, trained_state):
    shapes = [tuple(tensor.shape) for tensor in trained_state.values()]
    steps = -(-len(load_iris_split().X_train) // 5)  # one Adam step per batch of 5
    assert steps == 21
    assert "optimizer.state_dict() keys: ['state', 'param_groups']" in inspect_run.stdout
    for index, shape in enumerate(shapes):
        line = f"  state[{index}]: step {steps}, exp_avg {shape}, exp_avg_sq {shape}"
        assert line in inspect_run.stdout
    model = Multiclass()
    group = torch.optim.Adam(model.parameters(), lr=0.001).state_dict()["param_groups"][0]
    expected = (
        f"  param_groups[0]: lr={group['lr']}, betas={group['betas']}, params={list(range(len(shapes)))}"
    )
    assert expected in inspect_run.stdout


def test_state_dict_holds_references_until_deep_copied(inspect_run):
    seed_everything(0)
    split = load_iris_split()
    model = Multiclass()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.001)
    before = model.hidden.weight.detach().clone()
    reference = model.state_dict()
    snapshot = copy.deepcopy(model.state_dict())
    train_one_epoch(model, optimizer, split.X_train, split.y_train)
    assert not torch.equal(before, model.hidden.weight)  # training did change the weights
    assert torch.equal(reference["hidden.weight"], model.hidden.weight)
    assert reference["hidden.weight"].data_ptr() == model.hidden.weight.data_ptr()
    assert not torch.equal(snapshot["hidden.weight"], model.hidden.weight)
    stdout = inspect_run.stdout
    assert printed(stdout, "  state_dict() kept in a variable still equals the model:") == "True"
    assert printed(stdout, "    (it shares the model's memory:") == "True)"
    assert printed(stdout, "  copy.deepcopy(state_dict()) still equals the model:") == "False"


def test_the_chapter_changes_nothing_on_disk(inspect_run, trained_model_path):
    assert [path.name for path in inspect_run.artifacts.iterdir()] == ["iris-model.pth"]
    assert (inspect_run.artifacts / "iris-model.pth").read_bytes() == trained_model_path.read_bytes()


@pytest.mark.parametrize("flag", ["--seed=-1", f"--seed={2**32}", "--seed=forty-two"])
def test_a_bad_seed_exits_2(flag, tmp_path):
    result = run_chapter_here("inspect_state.py", flag, cwd=artifacts_with(tmp_path))
    assert result.returncode == 2
    assert "error: argument --seed" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_names_every_flag(tmp_path):
    result = run_chapter_here("inspect_state.py", "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "Chapter 3: what is inside a model" in text
    assert "--out-dir OUT_DIR" in text and "(default: artifacts)" in text
    assert "--seed SEED" in text and "not the train/test split (default: 42)" in text

"""Chapter 5: exact resume in a new process, the cost of leaving pieces out, crash-safe saving,
and bad checkpoints, flags, folders and Ctrl-C each ending in one line."""

from __future__ import annotations

import functools
import itertools
import multiprocessing
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pytest
import torch

from build_model import (
    Multiclass,
    flat_tensors,
    load_iris_split,
    make_optimizer,
    same_state,
    seed_everything,
    train_one_epoch,
)
from model_inspector.files import ModelFileError
from support import pictures
from support.cli import EXIT_INTERRUPTED
from support.saving import remove_abandoned_partials
from support.settings import SEED
from support.untrusted_files import check_checkpoint, read_checkpoint
from tests.helpers import (
    SCRIPT_ENV,
    ChapterResult,
    assert_one_line_refusal,
    run_chapter_here,
    script_command,
)

CHAPTER = "checkpoint_resume.py"
CHECKPOINT = "iris-checkpoint.pth"
DATA_ARGS = {"n_features": 4, "n_classes": 3}
SMALL = ["--epochs", "12", "--interrupt-at", "8", "--save-every", "5"]  # the demonstration, shorter
STEPS_PER_EPOCH = 21  # 105 training flowers in batches of 5


@functools.cache
def independent_run(epochs: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The uninterrupted run, computed here with build_model alone: losses and every tensor."""
    split = load_iris_split()
    seed_everything(SEED)
    model = Multiclass()
    optimizer = make_optimizer(model)
    losses = [train_one_epoch(model, optimizer, split.X_train, split.y_train) for _ in range(epochs)]
    return losses, flat_tensors({"model": model.state_dict(), "optimizer": optimizer.state_dict()})


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(path, weights_only=True)
    return flat_tensors(
        {"model": checkpoint["model_state_dict"], "optimizer": checkpoint["optimizer_state_dict"]}
    )


def assert_valid_checkpoint(path: Path, max_epoch: int) -> dict:
    return read_checkpoint(path, Multiclass, max_epoch, fixed_args=DATA_ARGS, steps_per_epoch=STEPS_PER_EPOCH)


# %%
# The reader's run (a real process, with the defaults).


def test_resumed_in_a_new_process_is_bit_identical_to_uninterrupted(checkpoint_run):
    stdout = checkpoint_run.stdout
    command = "$ python checkpoint_resume.py --resume --epochs 30 --save-every 5 --out-dir artifacts"
    assert command in stdout.splitlines()
    losses, uninterrupted = independent_run(30)
    assert f"  Resumed from artifacts/iris-checkpoint.pth at epoch 20 (loss {losses[19]:.4f})" in stdout
    assert "  Training epochs 21 to 30, saving a checkpoint every 5" in stdout
    assert f"  epoch  25: loss {losses[24]:.4f}, checkpoint saved" in stdout  # said by the new process
    assert "Every model and optimizer tensor bit-identical: True (16 tensors)" in stdout
    assert "Same epoch and loss: True" in stdout
    # The file the new process left, against an uninterrupted run computed here independently.
    final = torch.load(checkpoint_run.artifacts / CHECKPOINT, weights_only=True)
    assert final["epoch"] == 30 and final["loss"] == losses[-1]
    assert same_state(checkpoint_tensors(checkpoint_run.artifacts / CHECKPOINT), uninterrupted)
    assert len(uninterrupted) == 4 + 4 * 3  # 4 weights; step, exp_avg, exp_avg_sq for each


def test_the_checkpoint_has_the_tutorials_keys_and_loads_weights_only(checkpoint_run):
    checkpoint = torch.load(checkpoint_run.artifacts / "iris-checkpoint-epoch20.pth", weights_only=True)
    assert list(checkpoint) == [
        "epoch",
        "model_state_dict",
        "optimizer_state_dict",
        "loss",
        "model_args",
        "rng_state",
    ]
    assert checkpoint["epoch"] == 20 and type(checkpoint["loss"]) is float
    assert checkpoint["model_args"] == {"n_features": 4, "n_hidden": 8, "n_classes": 3}
    assert set(checkpoint["rng_state"]) == {"torch", "numpy", "python"}
    group = checkpoint["optimizer_state_dict"]["param_groups"][0]
    assert group["lr"] == 0.001 and not group["fused"] and not group["foreach"]  # the article's plain Adam
    assert_valid_checkpoint(checkpoint_run.artifacts / "iris-checkpoint-epoch20.pth", max_epoch=30)
    steps = {int(entry["step"]) for entry in checkpoint["optimizer_state_dict"]["state"].values()}
    assert steps == {20 * 21}  # 105 flowers in batches of 5, every epoch


def test_leaving_a_piece_out_diverges_as_printed(checkpoint_run):
    rows = dict(
        re.findall(
            r"^(Everything restored|Without the \w+ state) +[\d.]+ +(\S+)$", checkpoint_run.stdout, re.M
        )
    )
    assert float(rows["Everything restored"]) == 0
    assert float(rows["Without the optimizer state"]) > 1e-2
    assert float(rows["Without the RNG state"]) > 1e-3


def test_the_reader_run_writes_its_files_and_a_real_picture(checkpoint_run):
    import matplotlib.image

    assert sorted(path.name for path in checkpoint_run.artifacts.iterdir()) == [
        "iris-checkpoint-epoch20.pth",
        CHECKPOINT,
        "resume.png",
    ]
    assert "Drew artifacts/resume.png" in checkpoint_run.stdout
    pixels = matplotlib.image.imread(checkpoint_run.artifacts / "resume.png")
    assert pixels.shape == (770, 880, 4)  # 8 x 7 inches at 110 dpi
    assert pixels[..., :3].std() > 0.05  # not blank
    ink = (pixels[..., :3].max(axis=2) - pixels[..., :3].min(axis=2)) > 0.3
    assert ink.mean() > 0.005  # coloured lines, not only grey axes


def test_help_says_what_each_flag_does(tmp_path):
    result = run_chapter_here(CHAPTER, "--help", cwd=tmp_path)
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for flag in ("--epochs", "--interrupt-at", "--save-every", "--resume", "--seed", "--out-dir"):
        assert flag in text
    assert "the epoch to reach, counting those already in the checkpoint" in text
    assert "not the train/test split" in text
    assert "checkpoints that resume training exactly" in text


# %%
# A shorter demonstration in this process: the numbers behind the picture, and no matplotlib.


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> tuple[Path, ChapterResult]:
    """The demonstration with 12 epochs, interrupted at 8, saving every 5, without matplotlib."""
    folder = tmp_path_factory.mktemp("small")
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
        result = run_chapter_here(CHAPTER, *SMALL, "--out-dir", "out", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder / "out", result


@pytest.mark.slow
def test_the_numbers_behind_the_picture(small_run):
    _, result = small_run
    names = result.namespace
    losses, _ = independent_run(12)
    assert names["uninterrupted_losses"] == losses  # the reference is the real uninterrupted run
    resumes = names["resumes"]
    assert resumes["Everything restored"][0] == losses[8:]  # exactly, at every epoch after the stop
    for control in ("Without the optimizer state", "Without the RNG state"):
        control_losses = resumes[control][0]
        assert len(control_losses) == 4
        assert all(a != b for a, b in zip(control_losses, losses[8:], strict=True)), control
    # The printed table says what these runs did to the weights, against the independent run.
    _, uninterrupted = independent_run(12)
    for name, (run_losses, weights) in resumes.items():
        difference = max((weights[key] - uninterrupted[f"model.{key}"]).abs().max().item() for key in weights)
        assert f"{name:<28}{run_losses[-1]:>20.4f}{difference:>26.2e}" in result.stdout.splitlines()
        assert (difference == 0) == (name == "Everything restored")


@pytest.mark.slow
def test_the_printed_resume_command_is_the_one_run(small_run):
    out_dir, result = small_run
    assert "$ python checkpoint_resume.py --resume --epochs 12 --save-every 5 --out-dir out" in result.stdout
    assert "  Training epochs 9 to 12, saving a checkpoint every 5" in result.stdout  # said by the child
    assert "Every model and optimizer tensor bit-identical: True (16 tensors)" in result.stdout
    assert (out_dir / "iris-checkpoint-epoch8.pth").exists()


@pytest.mark.slow
def test_without_matplotlib_one_line_and_everything_else(small_run):
    out_dir, result = small_run
    no_picture = [line for line in result.stdout.splitlines() if "resume.png" in line]
    assert no_picture == [
        f"(No picture: out/resume.png needs matplotlib. To draw it: {pictures.PLOTS_INSTALL})"
    ]
    assert not (out_dir / "resume.png").exists()
    assert result.stderr == ""


# %%
# --resume: starting, carrying on, and telling the truth when there is nothing to do.


def test_resume_starts_fresh_then_carries_on_exactly(tmp_path):
    first = run_chapter_here(CHAPTER, "--resume", "--epochs", "3", "--out-dir", str(tmp_path), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"No checkpoint at {tmp_path / CHECKPOINT}: starting from epoch 0 with --seed 42" in first.stdout
    second = run_chapter_here(CHAPTER, "--resume", "--epochs", "5", "--out-dir", str(tmp_path), cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"Resumed from {tmp_path / CHECKPOINT} at epoch 3" in second.stdout
    assert f"Trained to epoch 5 (loss {independent_run(5)[0][-1]:.4f})" in second.stdout
    assert same_state(checkpoint_tensors(tmp_path / CHECKPOINT), independent_run(5)[1])


def resume_to(epochs: int, folder: Path) -> ChapterResult:
    """`python checkpoint_resume.py --resume --epochs EPOCHS --out-dir FOLDER`, in this process."""
    flags = ["--resume", "--epochs", str(epochs), "--out-dir", str(folder)]
    return run_chapter_here(CHAPTER, *flags, cwd=folder)


def test_resume_at_the_last_epoch_trains_and_writes_nothing(tmp_path):
    assert resume_to(2, tmp_path).returncode == 0
    before = (tmp_path / CHECKPOINT).stat()
    again = resume_to(2, tmp_path)
    assert again.returncode == 0
    assert "Nothing to train: the checkpoint is already at epoch 2. Nothing was written." in again.stdout
    assert "Trained" not in again.stdout
    after = (tmp_path / CHECKPOINT).stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)


def test_resume_refuses_a_checkpoint_beyond_epochs(tmp_path):
    assert resume_to(3, tmp_path).returncode == 0
    data = (tmp_path / CHECKPOINT).read_bytes()
    result = resume_to(2, tmp_path)
    assert_one_line_refusal(result, "it is at epoch 3, beyond the 2 epochs asked for")
    assert "Trained" not in result.stdout
    assert (tmp_path / CHECKPOINT).read_bytes() == data


def test_a_checkpoint_of_another_width_is_rebuilt_from_model_args(good_checkpoint, tmp_path):
    seed_everything(0)
    model = Multiclass(n_hidden=16)
    optimizer = make_optimizer(model)
    split = load_iris_split()
    loss = train_one_epoch(model, optimizer, split.X_train, split.y_train)
    wide = {
        **good_checkpoint,
        "epoch": 1,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": loss,
        "model_args": model.constructor_args(),
    }
    torch.save(wide, tmp_path / CHECKPOINT)
    result = run_chapter_here(CHAPTER, "--resume", "--epochs", "2", "--out-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["model_args"]["n_hidden"] == 16


# %%
# Bad checkpoints: every field checked before use; one line, exit 2, nothing written, no crash.


def with_optimizer(good: dict, change: Callable[[dict], None]) -> dict:
    """`good` with a changed copy of its optimizer state."""
    optimizer = {
        "state": {index: dict(entry) for index, entry in good["optimizer_state_dict"]["state"].items()},
        "param_groups": [dict(group) for group in good["optimizer_state_dict"]["param_groups"]],
    }
    change(optimizer)
    return {**good, "optimizer_state_dict": optimizer}


def with_rng(good: dict, part: str, key: str, value: object) -> dict:
    rng = {
        name: dict(state) if isinstance(state, dict) else state for name, state in good["rng_state"].items()
    }
    if key:
        rng[part][key] = value
    else:
        rng[part] = value
    return {**good, "rng_state": rng}


def with_weights(good: dict, change: Callable[[OrderedDict], None]) -> dict:
    weights = OrderedDict(good["model_state_dict"])
    change(weights)
    return {**good, "model_state_dict": weights}


def another_models_optimizer(good: dict) -> dict:
    model = Multiclass(n_hidden=2)
    optimizer = make_optimizer(model)
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    return {**good, "optimizer_state_dict": optimizer.state_dict()}


def consistent_checkpoint_for_five_features(good: dict) -> dict:
    model = Multiclass(n_features=5)
    optimizer = make_optimizer(model)
    return {
        **good,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "model_args": model.constructor_args(),
    }


def bad_metadata(weights: OrderedDict) -> None:
    weights._metadata = [1, 2, 3]  # type: ignore[attr-defined]


def set_moment(index: int, moment: str, value: Callable[[torch.Tensor], torch.Tensor]):
    def change(optimizer: dict) -> None:
        entry = optimizer["state"][index]
        entry[moment] = value(entry[moment])

    return change


def set_group(key: str, value: object):
    return lambda optimizer: optimizer["param_groups"][0].__setitem__(key, value)


def shared_moments(optimizer: dict) -> None:
    optimizer["state"][0]["exp_avg"] = optimizer["state"][0]["exp_avg_sq"]


def deeply_nested_pickle(depth: int) -> bytes:
    """A pickle of {((((),),),): 1} whose key is a tuple nested `depth` levels deep: Python
    hashes it recursively in C, so unchecked it crashes torch.load itself (SIGSEGV)."""
    return b"\x80\x02}" + b")" + b"\x85" * depth + b"K\x01s."


def deeply_nested(depth: int) -> bytes:
    """The same pickle as the data of a torch.save zip file."""
    import io
    import zipfile

    plain = io.BytesIO()
    torch.save({"k": 1}, plain)
    body = deeply_nested_pickle(depth)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(plain.getvalue())) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            data = body if info.filename.endswith("/data.pkl") else source.read(info)
            target.writestr(info.filename, data)
    return out.getvalue()


BAD_CHECKPOINTS: dict[str, tuple[Callable[[dict], object], str]] = {
    "a plain state_dict": (lambda good: good["model_state_dict"], "not a training checkpoint"),
    "a list": (lambda good: [1, 2, 3], "not a training checkpoint"),
    "a missing key": (
        lambda good: {k: v for k, v in good.items() if k != "rng_state"},
        "not a training checkpoint",
    ),
    "an extra key": (lambda good: {**good, "note": "hi"}, "not a training checkpoint"),
    "epoch True": (lambda good: {**good, "epoch": True}, "epoch"),
    "epoch -1": (lambda good: {**good, "epoch": -1}, "epoch"),
    "epoch 1.0": (lambda good: {**good, "epoch": 1.0}, "epoch"),
    "epoch 500": (lambda good: {**good, "epoch": 500}, "it is at epoch 500, beyond the 100 epochs asked for"),
    "loss NaN": (lambda good: {**good, "loss": float("nan")}, "loss"),
    "loss as a tensor": (lambda good: {**good, "loss": torch.tensor(0.3)}, "loss"),
    "huge model_args": (
        lambda good: {**good, "model_args": {**good["model_args"], "n_hidden": 10**9}},
        "model_args",
    ),
    "model_args of bools": (
        lambda good: {**good, "model_args": {**good["model_args"], "n_hidden": True}},
        "model_args",
    ),
    "model_args of another width": (
        lambda good: {**good, "model_args": {**good["model_args"], "n_hidden": 16}},
        "hidden.weight has shape (8, 4), Multiclass expects (16, 4)",
    ),
    "a model for other data": (consistent_checkpoint_for_five_features, "do not fit the data"),
    "half-precision weights": (
        lambda good: with_weights(good, lambda w: w.__setitem__("output.bias", w["output.bias"].half())),
        "torch.float16",
    ),
    "a sparse weight": (
        lambda good: with_weights(
            good, lambda w: w.__setitem__("hidden.weight", w["hidden.weight"].to_sparse())
        ),
        "not a plain dense CPU tensor",
    ),
    "a meta weight": (
        lambda good: with_weights(
            good, lambda w: w.__setitem__("hidden.bias", torch.zeros(8, device="meta"))
        ),
        "not a plain dense CPU tensor",
    ),
    "a NaN weight": (
        lambda good: with_weights(
            good, lambda w: w.__setitem__("output.bias", torch.full((3,), float("nan")))
        ),
        "NaN",
    ),
    "malformed _metadata": (lambda good: with_weights(good, bad_metadata), "metadata is malformed"),
    "the optimizer state of another model": (another_models_optimizer, "has shape (2, 4), expected (8, 4)"),
    "exp_avg of shape (3, 3)": (
        lambda good: with_optimizer(good, set_moment(0, "exp_avg", lambda t: torch.zeros(3, 3))),
        "has shape (3, 3)",
    ),
    "negative exp_avg_sq": (
        lambda good: with_optimizer(good, set_moment(1, "exp_avg_sq", lambda t: -t - 1)),
        "negative",
    ),
    "moments sharing memory": (lambda good: with_optimizer(good, shared_moments), "share memory"),
    "a strided exp_avg": (
        lambda good: with_optimizer(good, set_moment(0, "exp_avg", lambda t: t.t().contiguous().t())),
        "contiguous",
    ),
    "a NaN step": (
        lambda good: with_optimizer(good, set_moment(0, "step", lambda t: torch.tensor(float("nan")))),
        "step",
    ),
    "a step of two values": (
        lambda good: with_optimizer(good, set_moment(0, "step", lambda t: torch.ones(2))),
        "step",
    ),
    "lr NaN": (lambda good: with_optimizer(good, set_group("lr", float("nan"))), "lr"),
    "lr as text": (lambda good: with_optimizer(good, set_group("lr", "0.1")), "lr"),
    "lr as a tensor": (lambda good: with_optimizer(good, set_group("lr", torch.ones(3))), "lr"),
    "betas above 1": (lambda good: with_optimizer(good, set_group("betas", (1.5, 0.9))), "betas"),
    "eps 0": (lambda good: with_optimizer(good, set_group("eps", 0.0)), "eps"),
    "weight_decay NaN": (
        lambda good: with_optimizer(good, set_group("weight_decay", float("nan"))),
        "weight_decay",
    ),
    "fused Adam": (lambda good: with_optimizer(good, set_group("fused", True)), "fused"),
    "amsgrad": (lambda good: with_optimizer(good, set_group("amsgrad", True)), "amsgrad"),
    "foreach as a tensor": (
        lambda good: with_optimizer(good, set_group("foreach", torch.ones(3))),
        "foreach",
    ),
    "params as a tensor": (
        lambda good: with_optimizer(good, set_group("params", torch.arange(4))),
        "parameters",
    ),
    "an unknown setting": (lambda good: with_optimizer(good, set_group("momentum", 0.9)), "not Adam's"),
    "rng_state a list": (lambda good: {**good, "rng_state": [1, 2]}, "rng_state"),
    "torch RNG state too short": (
        lambda good: with_rng(good, "torch", "", torch.zeros(10, dtype=torch.uint8)),
        "rng_state",
    ),
    "torch RNG state invalid": (
        lambda good: with_rng(good, "torch", "", torch.zeros(5056, dtype=torch.uint8)),
        "rng_state",
    ),
    "torch RNG state not contiguous": (
        lambda good: with_rng(good, "torch", "", torch.stack([good["rng_state"]["torch"]] * 2, dim=1)[:, 0]),
        "rng_state",
    ),
    "NumPy position past its keys": (lambda good: with_rng(good, "numpy", "pos", 700), "rng_state"),
    "NumPy keys out of range": (
        lambda good: with_rng(good, "numpy", "keys", torch.full((624,), -1, dtype=torch.int64)),
        "rng_state",
    ),
    "Python state out of range": (
        lambda good: with_rng(good, "python", "internal", torch.full((625,), 2**40, dtype=torch.int64)),
        "rng_state",
    ),
    "Python version as a tensor": (
        lambda good: with_rng(good, "python", "version", torch.ones(3)),
        "rng_state",
    ),
    # A resume that would not be exact: a piece of the state missing, or not the state saved.
    "epoch 0": (lambda good: {**good, "epoch": 0}, "epoch"),
    "no optimizer entry for a parameter": (
        lambda good: with_optimizer(good, lambda optimizer: optimizer["state"].pop(3)),
        "no entry for parameter 3",
    ),
    "no optimizer state at all": (
        lambda good: with_optimizer(good, lambda optimizer: optimizer["state"].clear()),
        "no entry for parameter 0",
    ),
    "a step that does not fit the epoch": (
        lambda good: {**good, "epoch": 1},
        "step for parameter 0 is 42, but its epoch needs 21",
    ),
    "steps that differ between parameters": (
        lambda good: with_optimizer(good, set_moment(2, "step", lambda t: t + 21)),
        "step for parameter 2 is 63",
    ),
    "a fractional step": (
        lambda good: with_optimizer(good, set_moment(0, "step", lambda t: t + 0.5)),
        "step for parameter 0 is not a count",
    ),
    "a float64 step": (
        lambda good: with_optimizer(good, set_moment(1, "step", lambda t: t.double())),
        "not a count (a float32 scalar)",
    ),
    "a step of shape (1,)": (
        lambda good: with_optimizer(good, set_moment(0, "step", lambda t: t.reshape(1))),
        "not a count (a float32 scalar)",
    ),
    "an infinite exp_avg": (
        lambda good: with_optimizer(
            good, set_moment(2, "exp_avg", lambda t: torch.full_like(t, float("inf")))
        ),
        "optimizer state[2].exp_avg contains NaN or infinite values",
    ),
    "a NaN exp_avg_sq": (
        lambda good: with_optimizer(
            good, set_moment(3, "exp_avg_sq", lambda t: torch.full_like(t, float("nan")))
        ),
        "optimizer state[3].exp_avg_sq contains NaN or infinite values",
    ),
    "a float64 exp_avg": (
        lambda good: with_optimizer(good, set_moment(0, "exp_avg", lambda t: t.double())),
        "optimizer state[0].exp_avg is torch.float64",
    ),
    "an extra moment (amsgrad's)": (
        lambda good: with_optimizer(
            good, lambda optimizer: optimizer["state"][0].__setitem__("max_exp_avg_sq", torch.zeros(8, 4))
        ),
        "for parameter 0 is not Adam's",
    ),
    "param_groups without lr": (
        lambda good: with_optimizer(good, lambda optimizer: optimizer["param_groups"][0].pop("lr")),
        "not Adam's",
    ),
    "two param_groups": (
        lambda good: with_optimizer(
            good, lambda optimizer: optimizer["param_groups"].append(dict(optimizer["param_groups"][0]))
        ),
        "one parameter group",
    ),
    "no Python generator state": (
        lambda good: {**good, "rng_state": {k: v for k, v in good["rng_state"].items() if k != "python"}},
        "rng_state",
    ),
    "no NumPy position": (
        lambda good: with_rng(
            good, "numpy", "", {k: v for k, v in good["rng_state"]["numpy"].items() if k != "pos"}
        ),
        "no usable numpy generator state",
    ),
    "Python words beyond 32 bits": (  # Python would keep only their low 32 bits: another state
        lambda good: with_rng(
            good,
            "python",
            "internal",
            torch.cat([good["rng_state"]["python"]["internal"][:-1] + 2**32, torch.tensor([624])]),
        ),
        "no usable python generator state",
    ),
    "Python position past its words": (
        lambda good: with_rng(
            good,
            "python",
            "internal",
            torch.cat([good["rng_state"]["python"]["internal"][:-1], torch.tensor([625])]),
        ),
        "no usable python generator state",
    ),
    "a NaN cached Gaussian": (
        lambda good: with_rng(good, "python", "gauss_next", float("nan")),
        "no usable python generator state",
    ),
    "torch RNG state as int64": (
        lambda good: with_rng(good, "torch", "", good["rng_state"]["torch"].long()),
        "no usable torch generator state",
    ),
}
RAW_FILES: dict[str, tuple[bytes, str]] = {
    "an empty file": (b"", "empty or cut short"),
    "a text file": (b"hello\n", "not a PyTorch weights file"),
    "a deeply nested key": (deeply_nested(300_000), "nested more than 200 levels deep"),
    "a deeply nested key, not zipped": (
        deeply_nested_pickle(300_000),
        "a plain pickle, not a torch.save file",
    ),
}


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("good")
    assert (
        run_chapter_here(
            CHAPTER, "--resume", "--epochs", "2", "--out-dir", str(folder), cwd=folder
        ).returncode
        == 0
    )
    return torch.load(folder / CHECKPOINT, weights_only=True)


def resume_in_fork(folder: Path, *flags: str, max_file_bytes: int | None = None) -> ChapterResult:
    """`--resume` on `folder`, run by the chapter in a forked process: a crash (a signal)
    shows as a negative return code instead of taking the test run down with it. With
    `max_file_bytes`, a write past that size fails (EFBIG) as on a full disk."""
    receive, send = multiprocessing.get_context("fork").Pipe(duplex=False)

    def child(connection: Connection) -> None:
        if max_file_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
        result = run_chapter_here(CHAPTER, "--resume", *flags, "--out-dir", str(folder), cwd=folder)
        connection.send((result.returncode, result.stdout, result.stderr))

    process = multiprocessing.get_context("fork").Process(target=child, args=(send,))
    process.start()
    send.close()
    outcome = receive.recv() if receive.poll(60) else None
    process.join(60)
    if outcome is None:
        return ChapterResult(process.exitcode or -1, "", f"no result; exit code {process.exitcode}", {})
    return ChapterResult(*outcome, namespace={})


def assert_refused_and_untouched(folder: Path, words: str) -> None:
    data = (folder / CHECKPOINT).read_bytes()
    result = resume_in_fork(folder, "--epochs", "100")
    assert_one_line_refusal(result, f"{folder / CHECKPOINT} refused", words)
    assert "Trained" not in result.stdout
    assert (folder / CHECKPOINT).read_bytes() == data  # nothing written from the bad state
    assert sorted(path.name for path in folder.iterdir()) == [CHECKPOINT]


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_bad_checkpoint_is_refused_in_one_line(name, good_checkpoint, tmp_path):
    make, words = BAD_CHECKPOINTS[name]
    torch.save(make(good_checkpoint), tmp_path / CHECKPOINT)
    assert_refused_and_untouched(tmp_path, words)


@pytest.mark.parametrize("name", RAW_FILES)
def test_bad_file_is_refused_in_one_line(name, tmp_path):
    data, words = RAW_FILES[name]
    (tmp_path / CHECKPOINT).write_bytes(data)
    assert_refused_and_untouched(tmp_path, words)


def test_truncated_checkpoint_is_refused_in_one_line(good_checkpoint, tmp_path):
    torch.save(good_checkpoint, tmp_path / CHECKPOINT)
    data = (tmp_path / CHECKPOINT).read_bytes()
    (tmp_path / CHECKPOINT).write_bytes(data[: len(data) // 3])
    assert_refused_and_untouched(tmp_path, "truncated")


def test_a_failing_save_is_one_line_and_keeps_the_previous_checkpoint(good_checkpoint, tmp_path):
    torch.save(good_checkpoint, tmp_path / CHECKPOINT)
    data = (tmp_path / CHECKPOINT).read_bytes()
    result = resume_in_fork(tmp_path, "--epochs", "3", max_file_bytes=len(data) // 2)
    assert_one_line_refusal(
        result, f"cannot write {tmp_path / CHECKPOINT}", "the previous checkpoint is unchanged"
    )
    assert (tmp_path / CHECKPOINT).read_bytes() == data
    assert sorted(path.name for path in tmp_path.iterdir()) == [CHECKPOINT]  # the partial file removed


@pytest.mark.parametrize("kind", ["a folder", "a FIFO"])
def test_not_a_regular_file_is_refused_in_one_line(kind, tmp_path):
    if kind == "a folder":
        (tmp_path / CHECKPOINT).mkdir()
    else:
        os.mkfifo(tmp_path / CHECKPOINT)
    result = resume_in_fork(tmp_path, "--epochs", "3")
    assert_one_line_refusal(result, "not a regular file")


def test_the_good_checkpoint_passes(good_checkpoint, tmp_path):
    """The corpus above is refused for what was changed, not for what it started from."""
    torch.save(good_checkpoint, tmp_path / CHECKPOINT)
    result = resume_in_fork(tmp_path, "--epochs", "3")
    assert result.returncode == 0, result.stderr
    assert "Trained to epoch 3" in result.stdout


@pytest.mark.slow
def test_rng_state_round_trip_restores_every_generator(small_run):
    names = small_run[1].namespace
    saved = names["rng_state"]()
    first = (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)])
    names["restore_rng_state"](saved)
    again = (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)])
    assert again == first


# %%
# Bad flags and folders: one line, exit 2, before any training.


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--seed", "-1"], "argument --seed: must be between 0 and 4294967295"),
        (["--seed", str(2**32)], "argument --seed: must be between 0 and 4294967295"),
        (["--epochs", "0"], "argument --epochs: must be a positive whole number"),
        (["--save-every", "0"], "argument --save-every: must be a positive whole number"),
        (["--interrupt-at", "many"], "argument --interrupt-at: must be a whole number"),
        (["--epochs", "10", "--interrupt-at", "10"], "--interrupt-at (10) must be below --epochs (10)"),
    ],
)
def test_bad_flags_exit_2_with_one_error_line(flags, words, tmp_path):
    result = run_chapter_here(CHAPTER, *flags, "--out-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and words in errors[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("mode", [[], ["--resume"]])
@pytest.mark.parametrize("where", ["under a file", "/proc", "/sys"])
def test_unwritable_out_dir_is_one_line(mode, where, tmp_path):
    (tmp_path / "a-file").write_text("")
    out_dir = {
        "under a file": tmp_path / "a-file" / "out",
        "/proc": Path("/proc/ch5"),
        "/sys": Path("/sys/ch5"),
    }
    result = run_chapter_here(CHAPTER, *mode, "--out-dir", str(out_dir[where]), cwd=tmp_path)
    assert_one_line_refusal(result, f"cannot use {out_dir[where]} as the output folder")
    assert result.stdout == ""


# %%
# Crash safety: a real process killed in the middle of a save, and two writers on one folder.

CHECKPOINT_BYTES = 2**27  # 128 MiB: a save long enough to be interrupted


def save_versions_forever(save: Callable[[dict, Path], None], path: Path, progress: Connection) -> None:
    """The saver process: writes version 1, 2, 3, ... of a checkpoint with `save`, announcing each."""
    for version in itertools.count(1):
        checkpoint = {"version": version, "weights": torch.full((CHECKPOINT_BYTES // 4,), float(version))}
        progress.send(version)
        save(checkpoint, path)


def kill_during_second_save(path: Path, save: Callable[[dict, Path], None] | None) -> bool:
    """Start a saver (`save`, or plain torch.save if None), SIGKILL it while it writes version 2;
    True if the kill hit mid-write."""
    atomic = save is not None
    progress, child_end = multiprocessing.get_context("fork").Pipe()
    saver = multiprocessing.get_context("fork").Process(
        target=save_versions_forever, args=(save or torch.save, path, child_end)
    )
    saver.start()
    being_written = path.with_name(f".{path.name}.{saver.pid}.partial") if atomic else path
    try:
        for version in (1, 2):  # once 2 is announced, version 1 is complete on disk
            assert progress.poll(30) and progress.recv() == version
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            size = being_written.stat().st_size if being_written.exists() else 0
            if 0 < size < CHECKPOINT_BYTES:  # part of version 2 written, not all of it
                os.kill(saver.pid, signal.SIGKILL)
                saver.join()
                return True
            time.sleep(0.0005)
        return False
    finally:
        saver.kill()
        saver.join()


def kill_mid_save(path: Path, save: Callable[[dict, Path], None] | None) -> None:
    for _ in range(5):  # the kill must land inside a write; retry if it missed one
        if kill_during_second_save(path, save):
            return
        path.unlink(missing_ok=True)
    pytest.fail("could not kill the saver in the middle of a save in 5 tries")


@pytest.mark.slow
def test_killed_mid_save_the_previous_checkpoint_survives(small_run, tmp_path):
    """The chapter's own `save_checkpoint`, killed in the middle of writing."""
    path = tmp_path / "checkpoint.pth"
    kill_mid_save(path, small_run[1].namespace["save_checkpoint"])
    [partial] = tmp_path.glob(".checkpoint.pth.*.partial")  # the half-written version 2
    assert partial.stat().st_size < CHECKPOINT_BYTES
    survivor = torch.load(path, weights_only=True)
    assert survivor["version"] == 1
    assert torch.equal(survivor["weights"], torch.full((CHECKPOINT_BYTES // 4,), 1.0))
    remove_abandoned_partials(path)  # what the chapter's next run does first
    assert list(tmp_path.glob("*.partial")) == []


@pytest.mark.slow
def test_killed_mid_plain_torch_save_the_checkpoint_is_lost(tmp_path):
    """The problem the atomic save solves is real: torch.save in place loses both versions."""
    path = tmp_path / "checkpoint.pth"
    kill_mid_save(path, None)
    with pytest.raises(RuntimeError, match="failed finding central directory"):
        torch.load(path, weights_only=True)


def resume_writer(folder: Path, epochs: int) -> multiprocessing.Process:
    """A real process (a fork of this one) running `checkpoint_resume.py --resume` on `folder`."""

    def child() -> None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        result = run_chapter_here(
            CHAPTER,
            "--resume",
            "--epochs",
            str(epochs),
            "--save-every",
            "1",
            "--out-dir",
            str(folder),
            cwd=folder,
        )
        sys.stderr.write(result.stderr)
        os._exit(result.returncode)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    return process


@pytest.mark.slow
def test_two_writers_on_one_folder_leave_a_good_checkpoint(tmp_path):
    writers = [resume_writer(tmp_path, 40) for _ in range(2)]
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    assert assert_valid_checkpoint(tmp_path / CHECKPOINT, max_epoch=40)["epoch"] == 40
    assert sorted(path.name for path in tmp_path.iterdir()) == [CHECKPOINT]  # no temporary file left


@pytest.mark.slow
def test_two_writers_killed_at_random_leave_a_good_checkpoint(tmp_path):
    rng = random.Random(5)
    for _ in range(4):
        writers = [resume_writer(tmp_path, 10_000) for _ in range(2)]
        deadline = time.monotonic() + 60
        while not (tmp_path / CHECKPOINT).exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        for writer in writers:
            os.kill(writer.pid, signal.SIGKILL)
            writer.join()
        assert assert_valid_checkpoint(tmp_path / CHECKPOINT, max_epoch=10_000)["epoch"] >= 1
    # Whatever temporary files the kills left, the next run removes them when it saves.
    epoch = torch.load(tmp_path / CHECKPOINT, weights_only=True)["epoch"]
    result = run_chapter_here(
        CHAPTER, "--resume", "--epochs", str(epoch + 1), "--out-dir", str(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == [CHECKPOINT]


# %%
# Ctrl-C: a real SIGINT to a real process ends it with one line saying what was saved.


def start_chapter(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        script_command(CHAPTER, *args),
        cwd=cwd,
        env={**SCRIPT_ENV, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a command started from a shell
    )


def interrupt_after(process: subprocess.Popen[str], line_start: str) -> tuple[str, str]:
    """Press Ctrl-C once the process has printed a line starting with `line_start`: SIGINT to
    its whole process group, as a terminal sends it."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(line_start):
            break
    else:
        pytest.fail(f"never printed {line_start!r}: {''.join(seen)}")
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    return "".join(seen) + stdout, stderr


@pytest.mark.slow
def test_ctrl_c_during_the_demonstration(tmp_path):
    process = start_chapter(*SMALL, "--out-dir", "out", cwd=tmp_path)
    _, stderr = interrupt_after(process, "$ python checkpoint_resume.py --resume")
    assert process.returncode == EXIT_INTERRUPTED
    assert stderr.strip() == (
        "interrupted (Ctrl-C); saved before that: out/iris-checkpoint-epoch8.pth, out/iris-checkpoint.pth"
    )
    assert_valid_checkpoint(tmp_path / "out" / CHECKPOINT, max_epoch=12)
    assert processes_in(tmp_path) == []  # the resuming child was stopped with its parent


def processes_in(folder: Path) -> list[int]:
    """The processes whose working folder is `folder` (Linux: /proc/PID/cwd)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cwd").readlink() == folder:
                found.append(int(entry.name))
        except OSError:
            pass
    return found


@pytest.mark.slow
def test_ctrl_c_during_resume_names_the_checkpoint_whose_epoch_was_said(tmp_path):
    """The Ctrl-C line names the file; the epoch in it is the last one the run said it saved."""
    process = start_chapter(
        "--resume", "--epochs", "100000", "--save-every", "1", "--out-dir", "out", cwd=tmp_path
    )
    stdout, stderr = interrupt_after(process, "epoch   3: ")
    assert process.returncode == EXIT_INTERRUPTED
    assert stderr.strip() == "interrupted (Ctrl-C); saved before that: out/iris-checkpoint.pth", stderr
    last_said = int(re.findall(r"^epoch +(\d+): loss [\d.]+, checkpoint saved$", stdout, re.M)[-1])
    on_disk = assert_valid_checkpoint(tmp_path / "out" / CHECKPOINT, max_epoch=100000)["epoch"]
    assert on_disk in (last_said, last_said + 1)  # a save may finish between the kill and its line


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_check_checkpoint_raises_only_model_file_error(name, good_checkpoint):
    """In-process, the same corpus: the checks raise a one-line ModelFileError, nothing else."""
    make, words = BAD_CHECKPOINTS[name]
    with pytest.raises(ModelFileError) as refused:
        check_checkpoint(
            make(good_checkpoint),
            Multiclass,
            max_epoch=100,
            fixed_args=DATA_ARGS,
            steps_per_epoch=STEPS_PER_EPOCH,
        )
    assert words in str(refused.value) and "\n" not in str(refused.value)

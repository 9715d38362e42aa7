"""Chapter 5: exact resume, the cost of leaving pieces out, crash-safe saving, bad checkpoints."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import re
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
import torch

import checkpoint_resume as ckpt
from build_model import EXIT_BAD_INPUT, SEED, ModelFileError, load_iris_split, same_state


@pytest.fixture(scope="module")
def straight_run() -> ckpt.TrainingState:
    """The uninterrupted 100-epoch run, computed here independently of the chapter."""
    return ckpt.train_until(ckpt.start_training(SEED), load_iris_split(), ckpt.EPOCHS)


def test_resumed_in_new_process_is_bit_identical_to_uninterrupted(walkthrough, straight_run):
    stdout = walkthrough.stdout("checkpoint_resume.py")
    assert "Resumed from artifacts/iris-checkpoint.pth at epoch 60" in stdout
    assert "Every model and optimizer tensor bit-identical: True" in stdout
    # The file the resumed process left, checked here against our own uninterrupted run.
    resumed = ckpt.resume_training(walkthrough.artifacts / ckpt.CHECKPOINT_FILE)
    assert resumed.epoch == ckpt.EPOCHS
    assert same_state(ckpt.full_state(resumed), ckpt.full_state(straight_run))
    assert len(ckpt.full_state(resumed)) == 4 + 4 * 3  # 4 weights; step, exp_avg, exp_avg_sq each


@pytest.mark.parametrize("piece", ["optimizer", "rng"])
def test_leaving_a_piece_out_diverges(piece, walkthrough, straight_run):
    interrupted = walkthrough.artifacts / "iris-checkpoint-epoch60.pth"
    model = ckpt.resume_without(piece, interrupted, load_iris_split(), ckpt.EPOCHS, SEED)
    difference = ckpt.max_weight_difference(model, straight_run.model)
    assert difference > 0
    label = {"optimizer": "the optimizer state:", "rng": "the RNG state:"}[piece]
    printed = re.search(
        rf"without {label}\s+max \|weight difference\| (\S+)", walkthrough.stdout("checkpoint_resume.py")
    )
    assert printed and float(printed.group(1)) == pytest.approx(difference, rel=0.01)


def test_checkpoint_has_the_tutorials_keys_and_loads_weights_only(walkthrough):
    checkpoint = torch.load(walkthrough.artifacts / ckpt.CHECKPOINT_FILE, weights_only=True)
    assert list(checkpoint) == list(ckpt.CHECKPOINT_KEYS)
    assert checkpoint["model_args"] == {"n_features": 4, "n_hidden": 8, "n_classes": 3}
    assert set(checkpoint["rng_state"]) == {"torch", "numpy", "python"}


def test_rng_state_round_trip_restores_every_generator():
    import random

    import numpy as np

    saved = ckpt.capture_rng_state()
    first = (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)])
    ckpt.restore_rng_state(saved)
    again = (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)])
    assert again == first


def test_resume_flag_starts_fresh_without_a_checkpoint_then_continues(tmp_path, capsys):
    assert ckpt.main(["--resume", "--epochs", "3", "--out-dir", str(tmp_path)]) == 0
    assert ckpt.main(["--resume", "--epochs", "5", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "No checkpoint at" in out and "starting from epoch 0" in out
    assert "at epoch 3" in out and "Trained to epoch 5" in out
    straight = ckpt.train_until(ckpt.start_training(SEED), load_iris_split(), 5)
    resumed = ckpt.resume_training(tmp_path / ckpt.CHECKPOINT_FILE)
    assert same_state(ckpt.full_state(resumed), ckpt.full_state(straight))


# %%
# Bad checkpoints: one line, exit 2.


def damaged_checkpoints(good: dict) -> dict[str, tuple[object, str]]:
    return {
        "a plain state_dict": (good["model_state_dict"], "not a training checkpoint"),
        "huge model_args": ({**good, "model_args": {**good["model_args"], "n_hidden": 10**9}}, "model_args"),
        "model_args of another model": (
            {**good, "model_args": {**good["model_args"], "n_hidden": 16}},
            "hidden.weight has shape (8, 4), Multiclass expects (16, 4)",
        ),
        "negative epoch": ({**good, "epoch": -1}, "epoch"),
        "optimizer of another model": (
            {**good, "optimizer_state_dict": {"state": {}, "param_groups": [{"params": [0]}]}},
            "optimizer or RNG state is unusable",
        ),
        "broken rng state": (
            {**good, "rng_state": {"torch": torch.zeros(3)}},
            "optimizer or RNG state is unusable",
        ),
    }


def test_damaged_checkpoints_are_refused_in_one_line(walkthrough, tmp_path):
    good = torch.load(walkthrough.artifacts / ckpt.CHECKPOINT_FILE, weights_only=True)
    for name, (content, reason) in damaged_checkpoints(good).items():
        path = tmp_path / ckpt.CHECKPOINT_FILE
        torch.save(content, path)
        with pytest.raises(ModelFileError) as refused:
            ckpt.resume_training(path)
        message = str(refused.value)
        assert message.startswith(f"{path} refused:"), name
        assert reason in message, name
        assert "\n" not in message, name


def test_resume_from_a_truncated_checkpoint_exits_2_in_one_line(walkthrough, tmp_path, capsys):
    data = (walkthrough.artifacts / ckpt.CHECKPOINT_FILE).read_bytes()
    (tmp_path / ckpt.CHECKPOINT_FILE).write_bytes(data[: len(data) // 3])
    with pytest.raises(SystemExit) as stopped:
        ckpt.main(["--resume", "--out-dir", str(tmp_path)])
    assert stopped.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / ckpt.CHECKPOINT_FILE} refused: the file is truncated")
    assert err.count("\n") == 1


def test_interrupt_must_come_before_the_end(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        ckpt.main(["--epochs", "10", "--interrupt-at", "10", "--out-dir", str(tmp_path)])
    assert stopped.value.code == EXIT_BAD_INPUT
    assert "--interrupt-at (10) must be below --epochs (10)" in capsys.readouterr().err


# %%
# Crash safety, tested by killing a real process in the middle of a save.

CHECKPOINT_BYTES = 2**27  # 128 MiB: a save long enough to be interrupted


def save_versions_forever(path: Path, atomic: bool, progress: Connection) -> None:
    """The saver process: writes version 1, 2, 3, ... of a checkpoint, announcing each."""
    save = ckpt.save_atomically if atomic else torch.save
    for version in itertools.count(1):
        checkpoint = {"version": version, "weights": torch.full((CHECKPOINT_BYTES // 4,), float(version))}
        progress.send(version)
        save(checkpoint, path)


def kill_during_second_save(path: Path, atomic: bool) -> bool:
    """Start a saver, SIGKILL it while it writes version 2; True if the kill hit mid-write."""
    being_written = path.with_name(f".{path.name}.partial") if atomic else path
    progress, child_end = multiprocessing.get_context("fork").Pipe()
    saver = multiprocessing.get_context("fork").Process(
        target=save_versions_forever, args=(path, atomic, child_end)
    )
    saver.start()
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


def kill_mid_save(path: Path, atomic: bool) -> None:
    for _ in range(5):  # the kill must land inside a write; retry if it missed one
        if kill_during_second_save(path, atomic):
            return
        path.unlink(missing_ok=True)
    pytest.fail("could not kill the saver in the middle of a save in 5 tries")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX only")
def test_killed_mid_save_the_previous_checkpoint_survives(tmp_path):
    path = tmp_path / "checkpoint.pth"
    kill_mid_save(path, atomic=True)
    assert path.with_name(f".{path.name}.partial").stat().st_size < CHECKPOINT_BYTES  # the kill was mid-save
    survivor = torch.load(path, weights_only=True)
    assert survivor["version"] == 1
    assert torch.equal(survivor["weights"], torch.full((CHECKPOINT_BYTES // 4,), 1.0))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX only")
def test_killed_mid_plain_torch_save_the_checkpoint_is_lost(tmp_path):
    """The problem the atomic save solves is real: torch.save in place loses both versions."""
    path = tmp_path / "checkpoint.pth"
    kill_mid_save(path, atomic=False)
    with pytest.raises(RuntimeError, match="failed finding central directory"):
        torch.load(path, weights_only=True)

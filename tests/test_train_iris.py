"""Chapter 2: training reaches the accuracy it claims, saves a safe file, reruns exactly, and
refuses bad flags, bad folders and Ctrl-C in one line without losing the previous model."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from build_model import (
    Multiclass,
    accuracy,
    load_iris_split,
    make_optimizer,
    same_state,
    seed_everything,
    train_one_epoch,
)
from support import cli, pictures, saving
from tests.helpers import (
    SCRIPT_ENV,
    assert_one_line_refusal,
    run_chapter_here,
    run_in_fork,
    run_script,
    script_command,
)


def printed_accuracy(stdout: str) -> float:
    found = re.search(r"^Accuracy: (\d\.\d\d)$", stdout, flags=re.MULTILINE)
    assert found, stdout
    return float(found.group(1))


def test_default_run_reaches_its_accuracy_and_saves_a_plain_state_dict(train_run, trained_model_path):
    stdout = train_run.stdout
    assert printed_accuracy(stdout) >= 0.9
    progress = re.findall(r"^epoch +(\d+) +loss [\d.]+ +train acc [\d.]+ +test acc [\d.]+$", stdout, re.M)
    assert [int(epoch) for epoch in progress] == list(range(10, 101, 10))
    assert "Saved the state_dict to artifacts/iris-model.pth" in stdout

    state = torch.load(trained_model_path, weights_only=True)
    model = Multiclass()
    model.load_state_dict(state)
    split = load_iris_split()
    assert round(accuracy(model, split.X_test, split.y_test), 2) == printed_accuracy(stdout)


def test_the_chapters_loop_is_the_one_every_chapter_shares(tmp_path):
    """Chapter 2 writes the training loop out; build_model.train_one_epoch must compute the same."""
    run = run_chapter_here("train_iris.py", "--epochs", "3", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    seed_everything(42)
    split = load_iris_split()
    model = Multiclass()
    optimizer = make_optimizer(model)
    losses = [train_one_epoch(model, optimizer, split.X_train, split.y_train) for _ in range(3)]
    assert same_state(
        model.state_dict(), torch.load(tmp_path / "artifacts/iris-model.pth", weights_only=True)
    )
    assert run.namespace["history"]["loss"] == losses


def test_each_epoch_covers_the_training_set_exactly_once():
    """The article's loop ran over len(X) and took empty batches; this one must not."""
    split = load_iris_split()
    seed_everything(0)
    model = Multiclass()
    seen: list[torch.Tensor] = []
    model.hidden.register_forward_hook(lambda _module, inputs, _output: seen.append(inputs[0]))
    loss = train_one_epoch(model, make_optimizer(model), split.X_train, split.y_train, batch_size=5)
    assert len(seen) == 21 and all(len(batch) == 5 for batch in seen)
    assert sorted(map(tuple, torch.cat(seen).tolist())) == sorted(map(tuple, split.X_train.tolist()))
    assert torch.isfinite(torch.tensor(loss))


def test_same_seed_gives_a_byte_identical_file(tmp_path, trained_model_path):
    run = run_chapter_here("train_iris.py", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "artifacts/iris-model.pth").read_bytes() == trained_model_path.read_bytes()


def test_the_seed_decides_the_weights_but_not_the_split(tmp_path):
    weights = {}
    for name, seed in [("a", "42"), ("b", "42"), ("c", "1")]:
        run = run_chapter_here(
            "train_iris.py", "--epochs", "1", "--seed", seed, "--out-dir", name, cwd=tmp_path
        )
        assert run.returncode == 0, run.stderr
        weights[name] = torch.load(tmp_path / name / "iris-model.pth", weights_only=True)
        assert run.namespace["X_test"].shape == (45, 4)
    assert same_state(weights["a"], weights["b"])
    assert not same_state(weights["a"], weights["c"])


BAD_FLAGS = {
    "--epochs=0": "--epochs",
    "--batch-size=-1": "--batch-size",
    "--lr=fast": "--lr",
    "--lr=inf": "--lr",
    "--lr=nan": "--lr",
    "--lr=0": "--lr",
    "--lr=-0.1": "--lr",
    "--seed=-1": "--seed",
    f"--seed={2**32}": "--seed",
    "--seed=1.5": "--seed",
    "--no-such-flag": "unrecognized arguments",
}


@pytest.mark.parametrize("flag", BAD_FLAGS)
def test_bad_flags_are_one_line_and_exit_2(flag, tmp_path):
    run = run_chapter_here("train_iris.py", flag, cwd=tmp_path)
    assert_one_line_refusal(run, BAD_FLAGS[flag])
    assert run.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_bad_flag_from_the_real_command_is_one_line(tmp_path):
    result = run_script("train_iris.py", "--lr", "inf", cwd=tmp_path)
    assert_one_line_refusal(result, "--lr", "positive finite number")


@pytest.fixture
def tiny_mount(tmp_path):
    """A 64 KiB tmpfs of its own, to fill up or make read-only; needs root (CI runs as root)."""
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("mounting a small tmpfs needs root; it stands in for a full or read-only disk")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_a_full_disk_is_one_line_and_leaves_no_half_written_file(tmp_path, tiny_mount):
    out_dir = tiny_mount / "artifacts"
    out_dir.mkdir()
    filler = tiny_mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last byte
        while os.write(fd, b"x" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    run = run_chapter_here("train_iris.py", "--epochs", "1", "--out-dir", str(out_dir), cwd=tmp_path)
    # The plain torch.save of chapter 2 writes over the old file: the chapter says so, and
    # points to chapter 5's crash-safe save. What it must not leave is a half-written file.
    assert_one_line_refusal(run, f"cannot write {out_dir / 'iris-model.pth'}")
    assert list(out_dir.iterdir()) == []


def test_a_read_only_folder_is_one_line(tmp_path, tiny_mount):
    (tiny_mount / "artifacts").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_mount)], check=True)
    run = run_chapter_here(
        "train_iris.py", "--epochs", "1", "--out-dir", str(tiny_mount / "artifacts"), cwd=tmp_path
    )
    assert_one_line_refusal(run, "cannot use", "Read-only file system")


@pytest.mark.parametrize("out_dir", ["a-file/artifacts", "/proc/artifacts", "/sys/artifacts"])
def test_an_unusable_out_dir_is_one_line(out_dir, tmp_path):
    (tmp_path / "a-file").write_text("")
    run = run_chapter_here("train_iris.py", "--epochs", "1", "--out-dir", out_dir, cwd=tmp_path)
    assert_one_line_refusal(run, f"cannot use {out_dir} as the output folder")


def slow_save_then_wait(path: Path, ready: Path) -> int:
    """Save a model atomically, but stall halfway through writing it, as a dying process would."""
    real_save = torch.save

    def stalling_save(obj, f):
        real_save(obj, f)
        f.flush()
        ready.touch()
        time.sleep(60)

    torch.save = stalling_save
    saving.save_atomically(Multiclass().state_dict(), path)
    return 0


@pytest.mark.slow
def test_killed_while_saving_leaves_the_previous_model_and_the_next_save_cleans_up(
    tmp_path, trained_model_path
):
    model_path = tmp_path / "iris-model.pth"
    model_path.write_bytes(trained_model_path.read_bytes())
    ready = tmp_path / "ready"
    import multiprocessing

    child = multiprocessing.get_context("fork").Process(target=slow_save_then_wait, args=(model_path, ready))
    child.start()
    for _ in range(1000):
        if ready.exists():
            break
        time.sleep(0.01)
    assert ready.exists(), "the saver never got to writing"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    partials = list(tmp_path.glob(".iris-model.pth.*.partial"))
    assert len(partials) == 1  # the dead writer's half-written file
    assert model_path.read_bytes() == trained_model_path.read_bytes()  # the model is untouched
    torch.load(model_path, weights_only=True)

    saving.save_atomically(Multiclass().state_dict(), model_path)
    assert not partials[0].exists()  # the abandoned file is gone
    assert cli.SAVED[-1] == str(model_path)


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    model_path = tmp_path / "iris-model.pth"
    live = tmp_path / f".iris-model.pth.{os.getppid()}.partial"  # our parent process is alive
    live.write_bytes(b"being written")
    saving.save_atomically(Multiclass().state_dict(), model_path)
    assert live.read_bytes() == b"being written"


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_exit_130(tmp_path):
    process = subprocess.Popen(
        script_command("train_iris.py", "--epochs", "100000"),
        cwd=tmp_path,
        env=SCRIPT_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    while not process.stdout.readline().startswith("epoch"):  # training has started
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == cli.EXIT_INTERRUPTED
    assert stderr == "interrupted (Ctrl-C); nothing was saved\n"
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_fork_helper_reports_exit_status(tmp_path):
    """run_in_fork, used by the kill tests across the suite, must report what the child did."""
    status, stderr = run_in_fork(lambda: cli.fail("refused"), cwd=tmp_path)
    assert status == cli.EXIT_BAD_INPUT
    assert stderr == "error: refused\n"


def test_without_matplotlib_one_line_says_where_the_picture_would_be(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    run = run_chapter_here("train_iris.py", "--epochs", "2", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    expected = (
        f"(No picture: artifacts/training-curves.png needs matplotlib. To draw it: {pictures.PLOTS_INSTALL})"
    )
    assert run.stdout.splitlines().count(expected) == 1
    assert sorted(path.name for path in (tmp_path / "artifacts").iterdir()) == ["iris-model.pth"]


def test_with_matplotlib_the_curves_are_a_real_picture(train_run):
    pytest.importorskip("matplotlib", reason="the picture needs the plots extra")
    from PIL import Image

    assert "Drew artifacts/training-curves.png" in train_run.stdout
    with Image.open(train_run.artifacts / "training-curves.png") as image:
        assert image.size == (990, 396)  # figsize (9, 3.6) at 110 dpi
        low, high = image.convert("L").getextrema()
        assert high - low > 200  # lines and text drawn on a light background: not blank


@pytest.mark.parametrize("lr", ["1e30", "1e9"])  # a NaN loss; finite but huge weights, loss far up
def test_a_diverged_run_is_refused_and_keeps_the_previous_model(lr, tmp_path, trained_model_path):
    (tmp_path / "artifacts").mkdir()
    previous = trained_model_path.read_bytes()
    (tmp_path / "artifacts" / "iris-model.pth").write_bytes(previous)
    run = run_chapter_here("train_iris.py", "--epochs", "3", "--lr", lr, cwd=tmp_path)
    assert_one_line_refusal(run, "training diverged (mean loss", "try a smaller --lr; nothing was saved")
    untrained, last = re.search(r"mean loss (\S+) untrained, (\S+) in the last epoch", run.stderr).groups()
    assert not float(last) <= float(untrained)  # NaN, or higher than the untrained model's
    assert (tmp_path / "artifacts" / "iris-model.pth").read_bytes() == previous


def test_a_slow_learning_rate_still_saves(tmp_path):
    run = run_chapter_here("train_iris.py", "--epochs", "3", "--lr", "1e-6", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "artifacts" / "iris-model.pth").exists()

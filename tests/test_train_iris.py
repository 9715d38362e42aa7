"""Chapter 2: training reaches the accuracy it claims, saves a safe file, and reruns exactly."""

from __future__ import annotations

import re

import pytest
import torch

import train_iris
from build_model import (
    EXIT_BAD_INPUT,
    Multiclass,
    accuracy,
    load_iris_split,
    make_optimizer,
    same_state,
    seed_everything,
    train_one_epoch,
)


def printed_accuracy(stdout: str) -> float:
    found = re.search(r"^Accuracy: (\d\.\d\d)$", stdout, flags=re.MULTILINE)
    assert found, stdout
    return float(found.group(1))


def test_default_run_reaches_its_accuracy_and_saves_a_plain_state_dict(walkthrough, trained_model_path):
    stdout = walkthrough.stdout("train_iris.py")
    assert printed_accuracy(stdout) >= 0.9
    progress = re.findall(r"^epoch +(\d+) +loss [\d.]+ +train acc [\d.]+ +test acc [\d.]+$", stdout, re.M)
    assert [int(epoch) for epoch in progress] == list(range(10, 101, 10))
    assert f"Saved the state_dict to {'artifacts/iris-model.pth'}" in stdout

    state = torch.load(trained_model_path, weights_only=True)
    model = Multiclass()
    model.load_state_dict(state)
    split = load_iris_split()
    assert round(accuracy(model, split.X_test, split.y_test), 2) == printed_accuracy(stdout)


def trained_weights(out_dir, *flags: str) -> dict[str, torch.Tensor]:
    assert train_iris.main(["--out-dir", str(out_dir), *flags]) == 0
    return torch.load(out_dir / "iris-model.pth", weights_only=True)


def test_same_seed_gives_bit_identical_weights_across_processes(tmp_path, trained_model_path, capsys):
    in_process = trained_weights(tmp_path / "default")
    assert same_state(in_process, torch.load(trained_model_path, weights_only=True))
    assert (tmp_path / "default" / "iris-model.pth").read_bytes() == trained_model_path.read_bytes()


def test_the_seed_decides_the_weights(tmp_path, capsys):
    seed_42 = trained_weights(tmp_path / "a", "--epochs", "1", "--seed", "42")
    seed_42_again = trained_weights(tmp_path / "b", "--epochs", "1", "--seed", "42")
    seed_1 = trained_weights(tmp_path / "c", "--epochs", "1", "--seed", "1")
    assert same_state(seed_42, seed_42_again)
    assert not same_state(seed_42, seed_1)


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


@pytest.mark.parametrize("flag", ["--epochs=0", "--batch-size=-1", "--lr=fast"])
def test_bad_flags_exit_2(flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        train_iris.main([flag, "--out-dir", str(tmp_path)])
    assert stopped.value.code == EXIT_BAD_INPUT
    assert "error:" in capsys.readouterr().err


def test_unusable_out_dir_is_one_line_and_exit_2(tmp_path, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(SystemExit) as stopped:
        train_iris.main(["--epochs", "1", "--out-dir", str(not_a_folder)])
    assert stopped.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err == f"error: cannot use {not_a_folder} as the output folder: File exists\n"

"""Chapter 8: DCP writes a file per rank, loads on a different world size, converts to one file."""

from __future__ import annotations

import re

import torch

import distributed_checkpoint as dc
from build_model import accuracy, flat_tensors, load_iris_split, load_model, same_state
from tests.conftest import run_in_fork


def test_two_ranks_write_one_file_each_plus_metadata(walkthrough):
    files = sorted(path.name for path in (walkthrough.artifacts / dc.DCP_DIR).iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert "Training on 2 ranks: DistributedDataParallel, gloo, CPU" in walkthrough.stdout(
        "distributed_checkpoint.py"
    )


def test_resharded_load_on_one_process_equals_the_saved_state(walkthrough):
    stdout = walkthrough.stdout("distributed_checkpoint.py")
    assert "Every model and optimizer tensor equals rank 0's at save time: True" in stdout
    # and independently of the chapter's own check:
    model, _, state = dc.resume_on_one_process(walkthrough.artifacts)
    saved = torch.load(walkthrough.artifacts / dc.RANK0_FILE, weights_only=True)
    flat = flat_tensors(state)
    assert same_state(flat, flat_tensors(saved))
    assert len(flat) == 4 + 4 * 3  # the model's 4 tensors, and Adam's step, exp_avg, exp_avg_sq for each
    assert same_state(model.state_dict(), saved["model"])


def test_converted_file_is_a_plain_state_dict_with_the_same_accuracy(walkthrough):
    path = walkthrough.artifacts / dc.MODEL_FROM_DCP
    state = torch.load(path, weights_only=True)
    assert sorted(state) == ["hidden.bias", "hidden.weight", "output.bias", "output.weight"]
    converted = load_model(path)  # chapter 4's loader accepts it
    saved = torch.load(walkthrough.artifacts / dc.RANK0_FILE, weights_only=True)
    assert same_state(converted.state_dict(), saved["model"])
    split = load_iris_split()
    printed = re.search(
        r"Test accuracy: (\S+) \(the distributed model's: (\S+)\)",
        walkthrough.stdout("distributed_checkpoint.py"),
    )
    assert printed and printed.group(1) == printed.group(2)
    assert f"{accuracy(converted, split.X_test, split.y_test):.2f}" == printed.group(1)


def test_plain_tensors_under_one_key_keep_only_one_ranks_value(walkthrough):
    assert (
        "Each rank saved its rank number under one key; loaded back on each rank: [0, 0]"
        in walkthrough.stdout("distributed_checkpoint.py")
    )
    assert (
        walkthrough.artifacts / dc.PITFALL_DIR / "__1_0.distcp"
    ).stat().st_size == 0  # rank 1 wrote nothing


def test_shards_are_equal_so_no_rank_waits_for_a_missing_step():
    X = torch.arange(105)
    shards = [dc.shard(X, rank, 2) for rank in range(2)]
    assert [len(s) for s in shards] == [52, 52]
    assert set(torch.cat(shards).tolist()) <= set(X.tolist())
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_a_failing_rank_fails_the_run_in_one_line_without_hanging(tmp_path):
    argv = ["--fail-rank", "1", "--epochs", "1"]
    exit_status, stderr = run_in_fork(dc.main, argv, cwd=tmp_path)  # fails the test if it hangs
    assert exit_status == 1
    assert stderr.startswith("error: rank 1 failed: RuntimeError: simulated crash on rank 1 (--fail-rank)")
    assert stderr.count("\n") == 1
    assert "Traceback" not in stderr
    assert not (tmp_path / "artifacts" / dc.DCP_DIR).exists()  # nothing was saved

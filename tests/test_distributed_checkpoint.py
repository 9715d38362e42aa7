"""Chapter 10: a sharded model saved by every rank, resharded, saved async, read safely, run by torchrun."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import runpy
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.distributed.fsdp  # what the chapter imports, once here: each forked run starts warm
from torch.distributed.checkpoint.state_dict import get_state_dict

from build_model import Multiclass, flat_tensors
from model_inspector.dcp import check_dcp_checkpoint, manifest_path
from support import cli
from support.lab_tools import Hostile, run_fresh_python
from support.untrusted_files import load_untrusted_model
from tests.bad_files import (
    EXIT_TOO_MUCH_MEMORY,
    build_dcp_probe,
    dcp_probes,
    dcp_state,
    grew_too_much,
    limit_memory,
)
from tests.helpers import REPO, SCRIPT_ENV, assert_one_line_refusal, run_chapter_here, run_in_fork, run_script

CHAPTER = "distributed_checkpoint.py"
FAILED_RANK_LINE = "error: rank 1 failed: RuntimeError: simulated crash on rank 1 (--fail-rank)\n"
MODEL_KEYS = ["hidden.weight", "hidden.bias", "output.weight", "output.bias"]


def lines(text: str) -> list[str]:
    return text.splitlines()


def fresh_state() -> dict:
    """The plain model's and Adam's state, the shape a one-process dcp.load fills."""
    model = Multiclass()
    return {
        "model": model.state_dict(),
        "optimizer": get_state_dict(model, torch.optim.Adam(model.parameters()))[1],
    }


def load_plainly(folder: Path) -> dict[str, torch.Tensor]:
    state = fresh_state()
    with pytest.warns(UserWarning, match="single process"):
        dcp.load(state, checkpoint_id=folder)
    return flat_tensors(state)


# %%
# The real run: sharded training, the chunk table, the reshards, async, conversion.


def test_each_rank_holds_half_the_rows_of_hidden_weight(distributed_run):
    out = distributed_run.stdout
    assert "Training on 2 ranks: FSDP2 (fully_shard), gloo, CPU" in out
    assert "hidden.weight is a DTensor of shape (8, 4); each rank has rows:" in out
    assert "  rank 0 holds (4, 4)\n  rank 1 holds (4, 4)\n" in out


def test_each_weight_is_stored_as_one_chunk_per_rank_file(distributed_run):
    folder = distributed_run.artifacts / "dcp-checkpoint"
    assert sorted(path.name for path in folder.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    metadata = dcp.FileSystemReader(folder).read_metadata()  # our own file: plain pickle is fine here
    chunks = metadata.state_dict_metadata["model.hidden.weight"].chunks
    assert [(tuple(c.offsets), tuple(c.sizes)) for c in chunks] == [((0, 0), (4, 4)), ((4, 0), (4, 4))]
    files = {(i.fqn, tuple(i.offset)): s.relative_path for i, s in metadata.storage_data.items() if i.offset}
    assert files["model.hidden.weight", (0, 0)] == "__0_0.distcp"
    assert files["model.hidden.weight", (4, 0)] == "__1_0.distcp"
    assert "model.hidden.weight  (8, 4)   (0, 0)        (4, 4)      __0_0.distcp" in distributed_run.stdout
    assert re.search(
        r"\n +\(2, 0\) +\(1, 8\) +__1_0\.distcp\n", distributed_run.stdout
    )  # output.weight: 2 + 1 rows


def test_the_checksums_beside_each_checkpoint_are_ones_sha256sum_checks(distributed_run):
    out = distributed_run.stdout
    for name in ("dcp-checkpoint", "dcp-async"):
        folder = distributed_run.artifacts / name
        manifest = (distributed_run.artifacts / f"{name}.sha256").read_text()
        expected = "".join(
            f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
            for path in sorted(folder.iterdir())
        )
        assert manifest == expected and manifest.count("\n") == 3
        assert f"{name}.sha256: 3 files, each matches its SHA-256" in out
        if shutil.which("sha256sum"):  # the format a reader's own tool reads, where there is one
            checked = subprocess.run(
                ["sha256sum", "-c", f"../{name}.sha256"],
                cwd=folder,
                capture_output=True,
                text=True,
                check=False,
            )
            assert checked.returncode == 0 and checked.stdout.count(": OK") == 3, checked.stdout


def test_the_run_shows_the_reader_only_its_own_lines(distributed_run):
    assert distributed_run.result.returncode == 0
    assert distributed_run.result.stderr == ""  # no warning from torch, gloo or DCP
    assert "[Gloo]" not in distributed_run.stdout


def test_the_checkpoint_loads_onto_three_ranks_and_one_process_tensor_for_tensor(distributed_run):
    out = distributed_run.stdout
    assert "## Loaded onto 3 ranks\nhidden.weight rows per rank: [3, 3, 2]" in out
    assert out.count("Tensors equal to the full ones at save time: 16 of 16 (model and optimizer)") == 2
    # the one more step after each resharded load: the same loss on 3 ranks as on 1 process
    losses = re.findall(r"One more training step on (?:3 ranks|1 process): loss (\S+)", out)
    assert len(losses) == 2 and losses[0] == losses[1]
    # and independently, with plain dcp.load on one process:
    at_save = torch.load(distributed_run.artifacts / "dcp-full-state.pth", weights_only=True)["at_save"]
    loaded = load_plainly(distributed_run.artifacts / "dcp-checkpoint")
    assert (
        sorted(loaded) == sorted(at_save) and len(at_save) == 4 + 4 * 3
    )  # model, and Adam's 3 per parameter
    assert all(torch.equal(loaded[name], at_save[name]) for name in at_save)


def test_the_async_checkpoint_holds_the_state_at_the_call(distributed_run):
    out = distributed_run.stdout
    assert "It holds the state at the call: True (16 of 16 tensors changed since)" in out
    assert re.search(r"Training loop blocked: \d+ ms by dcp\.save, \d+ ms by dcp\.async_save", out)
    full = torch.load(distributed_run.artifacts / "dcp-full-state.pth", weights_only=True)
    written = load_plainly(distributed_run.artifacts / "dcp-async")
    assert all(torch.equal(written[name], full["at_save"][name]) for name in full["at_save"])
    assert not any(torch.equal(written[name], full["after_async"][name]) for name in full["after_async"])


def test_the_safetensors_files_hold_every_weight_equal_to_the_dcp_load(distributed_run):
    from safetensors import safe_open
    from safetensors.torch import load_file

    folder = distributed_run.artifacts / "dcp-safetensors"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {
        "hidden.weight": "model-00001-of-00002.safetensors",
        "hidden.bias": "model-00001-of-00002.safetensors",
        "output.weight": "model-00002-of-00002.safetensors",
        "output.bias": "model-00002-of-00002.safetensors",
    }
    assert sorted(path.name for path in (folder / "sharded").iterdir()) == [
        f"shard-0000{rank}-model-0000{part}-of-00002.safetensors" for rank in (1, 2) for part in (1, 2)
    ]
    published = {}
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        published |= load_file(folder / name)
    with safe_open(folder / "sharded" / "shard-00001-model-00001-of-00002.safetensors", "pt") as f:
        rank0_rows = f.get_slice("hidden.weight").get_shape()
    assert rank0_rows == [4, 4]  # each rank wrote its own rows; the consolidated file holds all 8
    loaded = load_plainly(distributed_run.artifacts / "dcp-checkpoint")  # the DCP load, independently
    assert sorted(published) == sorted(MODEL_KEYS)
    assert all(torch.equal(published[key], loaded[f"model.{key}"]) for key in MODEL_KEYS)
    assert published["hidden.weight"].shape == (8, 4)
    out = distributed_run.stdout
    assert "Read with safetensors' load_file: 4 of 4 tensors equal to the DCP load's" in out


def test_the_converted_file_is_a_plain_state_dict_the_untrusted_loader_accepts(distributed_run):
    artifacts = distributed_run.artifacts
    converted = torch.load(artifacts / "dcp-checkpoint.pth", weights_only=True)
    assert sorted(converted) == ["model", "optimizer"]
    model = load_untrusted_model(artifacts / "iris-model-from-dcp.pth", Multiclass)
    at_save = torch.load(artifacts / "dcp-full-state.pth", weights_only=True)["at_save"]
    assert all(torch.equal(model.state_dict()[key], at_save[f"model.{key}"]) for key in MODEL_KEYS)
    printed = re.search(
        r"Test accuracy: (\S+) \(the model loaded onto 1 process: (\S+)\)", distributed_run.stdout
    )
    assert printed and printed.group(1) == printed.group(2)


def test_dcp_save_on_rank_0_alone_waits_for_the_others_and_writes_nothing(distributed_run):
    out = distributed_run.stdout
    assert "dcp.save on rank 0 only: timed out after 1 s, waiting for the other ranks; 0 files written" in out
    full = torch.load(distributed_run.artifacts / "dcp-full-state.pth", weights_only=True)
    assert "Timed out" in full["rank0_alone"]  # gloo's own words
    assert list((distributed_run.artifacts / "dcp-rank0-only").iterdir()) == []


@pytest.mark.filterwarnings("ignore:.*in a single process")
def test_plain_tensors_under_one_key_keep_only_one_ranks_value(distributed_run):
    out = distributed_run.stdout
    assert "2 ranks saved their rank number under one key; the checkpoint holds 1 chunk, rank_id = [0]" in out
    pitfall = distributed_run.artifacts / "dcp-pitfall"
    assert (pitfall / "__1_0.distcp").stat().st_size == 0  # rank 1 wrote nothing
    kept = {"rank_id": torch.tensor([-1])}
    dcp.load(kept, checkpoint_id=pitfall, no_dist=True)
    assert kept["rank_id"].tolist() == [0]


@pytest.mark.slow
def test_an_fsdp2_state_dict_saved_with_torch_save_is_not_a_model_file(distributed_run, tmp_path):
    out = distributed_run.stdout
    assert (
        "model.state_dict() saved on rank 0: DTensors; hidden.weight (8, 4) with rows (4, 4) in the file"
        in out
    )
    assert "Multiclass().load_state_dict(it): RuntimeError: ... got mixed torch.Tensor and DTensor" in out
    program = tmp_path / "load.py"  # a fresh process, which has not imported torch.distributed.tensor
    program.write_text(
        "import sys, torch\n"
        "try:\n    torch.load(sys.argv[1], weights_only=True)\n"
        "except Exception as err:\n    print(type(err).__name__, str(err).splitlines()[0])\n"
    )
    result = run_fresh_python(program, distributed_run.artifacts / "fsdp-state-dict-rank0.pth", cwd=tmp_path)
    assert "UnpicklingError" in result.stdout
    assert "torch.distributed.tensor`` must be imported to load DTensors" in result.stdout


# %%
# Reading a checkpoint you did not make: plain DCP runs its code, the chapter refuses it.


def hostile_metadata(folder: Path, marker: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(pickle.dumps(Hostile(marker)))
    return folder


def hostile_learning_rate(folder: Path, marker: Path) -> Path:
    """A well-formed DCP checkpoint whose optimizer lr unpickles into code."""
    state = fresh_state()
    state["optimizer"]["param_groups"][0]["lr"] = Hostile(marker)
    with pytest.warns(UserWarning, match="single process"):
        dcp.save(state, checkpoint_id=folder, no_dist=True)
    return folder


@pytest.mark.parametrize("make", [hostile_metadata, hostile_learning_rate])
def test_plain_dcp_load_runs_the_files_code(tmp_path, make):
    marker = tmp_path / "marker"
    folder = make(tmp_path / "dcp", marker)
    assert not marker.exists()
    with contextlib.suppress(BaseException):  # whatever happens after the code ran does not matter
        load_plainly(folder)
    assert marker.exists()  # the claim the chapter warns of: weights_only does not cover DCP


# %%
# The probe corpus: every bad checkpoint folder is refused by the first cell, before any rank
# starts, in one line, exit status 2, running none of it, in bounded time and memory.

DCP_PROBES = dcp_probes(Path("marker-not-used"))  # names and words only; each test builds its own


def load_only_in_child(cwd: Path) -> int:
    """In a forked child: `distributed_checkpoint.py --load-only` under a memory limit; its stderr
    passed on. Exit 3 if memory grew too much, 5 if anything was printed (a lesson ran)."""
    before = limit_memory()
    result = run_chapter_here(CHAPTER, "--load-only", cwd=cwd)
    sys.stderr.write(result.stderr)
    if grew_too_much(before):
        return EXIT_TOO_MUCH_MEMORY
    return 5 if result.stdout else result.returncode


@pytest.mark.parametrize("probe", DCP_PROBES)
def test_the_load_only_run_refuses_each_bad_checkpoint_before_any_rank_starts(tmp_path, probe):
    marker = tmp_path / "code-ran"
    damage, manifest_after, words = dcp_probes(marker)[probe]
    build_dcp_probe(tmp_path / "artifacts", damage, manifest_after)
    status, stderr = run_in_fork(load_only_in_child, tmp_path, cwd=tmp_path, timeout=60)
    assert status == cli.EXIT_BAD_INPUT, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "dcp-checkpoint" in stderr and words in stderr, stderr
    assert not marker.exists()


def test_a_good_checkpoint_with_its_manifest_passes_every_check(tmp_path):
    folder = build_dcp_probe(tmp_path, lambda folder: None, manifest_after=False)
    assert check_dcp_checkpoint(folder, flat_tensors(dcp_state())) == manifest_path(folder).read_text()
    assert manifest_path(folder).read_text().count("\n") == 2  # .metadata and __0_0.distcp


@pytest.mark.slow
def test_a_flipped_bit_is_refused_by_a_real_load_only_process_before_any_rank(tmp_path):
    damage, manifest_after, words = DCP_PROBES["flipped bit in a weight"]
    build_dcp_probe(tmp_path / "artifacts", damage, manifest_after)
    result = run_script(CHAPTER, "--load-only", cwd=tmp_path)
    assert_one_line_refusal(result, "dcp-checkpoint refused", words)
    assert result.stdout == ""  # no lesson ran, no rank started


@pytest.mark.slow
def test_the_load_only_run_reshards_and_its_reader_and_planner_refuse_hostile_files(
    distributed_run, tmp_path
):
    shutil.copytree(distributed_run.artifacts, tmp_path / "artifacts")
    result = run_chapter_here(CHAPTER, "--load-only", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Tensors equal to the full ones at save time: 16 of 16" in result.stdout
    assert "Training on" not in result.stdout
    # the reader and planner the ranks use, against files swapped in after the check:
    # (each torch words the failure its own way, wrapped or not: the fact is that it was refused
    # and none of the file ran)
    reader, planner = result.namespace["AllowlistMetadataReader"], result.namespace["WeightsOnlyLoadPlanner"]
    marker = tmp_path / "marker"
    for make in (hostile_metadata, hostile_learning_rate):
        folder = make(tmp_path / make.__name__, marker)
        with pytest.raises((pickle.UnpicklingError, dcp.api.CheckpointException)):
            dcp.load(fresh_state(), storage_reader=reader(folder), planner=planner(), no_dist=True)
        assert not marker.exists()


# %%
# Bad flags and folders: one line, exit status 2.


def test_a_fail_rank_outside_the_ranks_is_refused(tmp_path):
    assert_one_line_refusal(
        run_chapter_here(CHAPTER, "--fail-rank", "2", cwd=tmp_path), "not a rank", "0 to 1"
    )
    assert_one_line_refusal(run_chapter_here(CHAPTER, "--fail-rank", "-1", cwd=tmp_path), "not a rank")


def test_nproc_under_torchrun_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert_one_line_refusal(
        run_chapter_here(CHAPTER, "--nproc", "3", cwd=tmp_path), "torchrun --nproc-per-node"
    )


def test_an_unwritable_out_dir_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("")
    result = run_chapter_here(CHAPTER, "--out-dir", str(tmp_path / "a-file" / "out"), cwd=tmp_path)
    assert_one_line_refusal(result, "cannot use", "output folder")


# %%
# Failures end the whole run in one line naming the rank, and leave no process behind.


def start_in_fork(cwd: Path, *args: str) -> tuple[int, Path, Path]:
    """`python distributed_checkpoint.py ARGS` as a forked copy of this process; its pid, stdout, stderr."""
    out, err = cwd / "stdout.txt", cwd / "stderr.txt"
    pid = os.fork()
    if pid == 0:  # the child: become the chapter, never return to pytest
        code = 1
        try:
            os.chdir(cwd)
            os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT), 1)
            os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT), 2)
            sys.stdout, sys.stderr = open(1, "w", closefd=False), open(2, "w", closefd=False)  # noqa: SIM115
            sys.argv = [str(REPO / CHAPTER), *args]
            cli.SAVED.clear()  # what earlier tests in this process saved is not ours
            runpy.run_path(str(REPO / CHAPTER), run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    FORKED.append(pid)
    return pid, out, err


def ranks_of(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


@pytest.fixture(autouse=True)
def no_process_left_behind():
    """Whatever a test forked is gone after it, even when the test failed half-way."""
    yield
    for pid in FORKED:
        for rank in ranks_of(pid) if not gone(pid) else []:
            os.kill(rank, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    FORKED.clear()


FORKED: list[int] = []


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def exit_status(pid: int, timeout: float) -> int:
    """Wait for the forked chapter; kill it and fail the test if it outlives `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"still running after {timeout} s: it hung")


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except FileNotFoundError:
        return True


def started_training(tmp_path: Path, *args: str) -> tuple[int, list[int], Path]:
    pid, out, err = start_in_fork(tmp_path, "--epochs", "100000", *args)
    wait_for(lambda: out.exists() and "rank 1 holds" in out.read_text())
    ranks = ranks_of(pid)
    assert len(ranks) == 2
    return pid, ranks, err


@pytest.mark.slow
def test_a_failing_rank_ends_the_run_in_one_line(tmp_path):
    pid, _, err = start_in_fork(tmp_path, "--fail-rank", "1", "--epochs", "1")
    assert exit_status(pid, timeout=60) == 1
    stderr = err.read_text()
    assert stderr == FAILED_RANK_LINE  # as in the README
    assert not (tmp_path / "artifacts" / "dcp-checkpoint").exists()  # nothing was saved


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stop", "said", "within"),
    [
        (signal.SIGKILL, "error: rank 1 was killed by SIGKILL\n", 5),
        (signal.SIGSTOP, "error: rank 1 stopped responding: rank 0 waited 2 s for it in a collective", 2 + 5),
    ],
)
def test_a_killed_or_stopped_rank_ends_the_run_naming_it(tmp_path, stop, said, within):
    pid, ranks, err = started_training(tmp_path, "--timeout", "2")
    os.kill(ranks[1], stop)
    assert exit_status(pid, timeout=within) == 1
    assert err.read_text().startswith(said) and err.read_text().count("\n") == 1
    assert all(gone(rank) for rank in ranks)


@pytest.mark.slow
def test_ctrl_c_ends_the_run_with_status_130_and_one_line(tmp_path):
    pid, ranks, err = started_training(tmp_path)
    for process in [pid, *ranks]:  # what a terminal does: the signal goes to the whole group
        os.kill(process, signal.SIGINT)
    assert exit_status(pid, timeout=10) == 130
    assert err.read_text().strip() == "interrupted (Ctrl-C); nothing was saved"
    wait_for(lambda: all(gone(rank) for rank in ranks), timeout=5)


@pytest.mark.slow
def test_killing_the_launcher_stops_its_ranks(tmp_path):
    pid, ranks, _ = started_training(tmp_path)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    wait_for(lambda: all(gone(rank) for rank in ranks), timeout=2)


# %%
# The two-machine torchrun command of the README, as two launches on this machine.


def readme_section() -> str:
    readme = (REPO / "README.md").read_text()
    return readme[readme.index("## Chapter 10 across machines") : readme.index("## The inspector, on files")]


def torchrun_nodes(cwd: Path, *args: str) -> list[subprocess.Popen[str]]:
    """The README's two-machine command, run twice here: NODE 0 and 1, FIRST_MACHINE this one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    shown = re.search(r"# on every machine.*?\n(torchrun .*?)\n```", readme_section(), re.DOTALL)[1]
    command = " ".join(shown.replace("\\\n", " ").split())
    assert command.endswith(" distributed_checkpoint.py --out-dir /shared/artifacts")
    command = command.removesuffix(" --out-dir /shared/artifacts")  # here: the test's own folder
    command = command.replace("FIRST_MACHINE", "127.0.0.1").replace("29500", port)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return [
        subprocess.Popen(
            [torchrun, *command.replace("NODE", str(node)).split()[1:-1], str(REPO / CHAPTER), *args],
            cwd=cwd,
            env=SCRIPT_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in (0, 1)
    ]


def test_the_readme_shows_the_commands_tested_here_and_the_failing_ranks_line():
    section = readme_section()
    blocks = re.findall(r"```text\n(.*?)```", section, flags=re.DOTALL)
    assert blocks == [FAILED_RANK_LINE]  # what test_a_failing_rank_... reads off stderr
    assert "\ntorchrun --nproc-per-node 2 distributed_checkpoint.py\n" in section


@pytest.fixture(scope="module")
def torchrun_started(tmp_path_factory):
    """The README's two torchrun commands, started together so they overlap: on two
    machines, and on one with rank 1 failing."""
    two, one = tmp_path_factory.mktemp("torchrun-two-nodes"), tmp_path_factory.mktemp("torchrun-one-node")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    single = [torchrun, "--nproc-per-node", "2", str(REPO / CHAPTER), "--epochs", "1", "--fail-rank", "1"]
    launched = [
        *torchrun_nodes(two, "--epochs", "1"),
        subprocess.Popen(
            single, cwd=one, env=SCRIPT_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ),
    ]
    yield two, launched
    for process in launched:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def torchrun_runs(torchrun_started):
    two, launched = torchrun_started
    results = [(*process.communicate(timeout=120), process.returncode) for process in launched]
    return two, results[:2], results[2]


@pytest.mark.slow
def test_the_two_machine_torchrun_command_trains_and_saves(torchrun_runs):
    cwd, ((first, first_err, first_status), (second, second_err, second_status)), _ = torchrun_runs
    assert (first_status, second_status) == (0, 0), first_err + second_err
    assert "  rank 0 holds (4, 4)\n  rank 1 holds (4, 4)\n" in first
    assert "Tensors equal to the full ones at save time: 16 of 16" in first
    assert "torchrun fixed the number of ranks; to load onto more: run this script with --load-only" in first
    assert second == ""  # what runs on one process runs on global rank 0 only
    files = sorted(path.name for path in (cwd / "artifacts" / "dcp-checkpoint").iterdir())
    assert files == [".metadata", "__0_0.distcp", "__1_0.distcp"]


@pytest.mark.slow
def test_a_failing_rank_under_torchrun_ends_the_run_with_its_line(torchrun_runs):
    _, _, (_, stderr, status) = torchrun_runs
    assert status == 1
    ours = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert "error: rank 1 failed: RuntimeError: simulated crash on rank 1 (--fail-rank)" in ours
    assert f'{CHAPTER}", line' not in stderr  # no traceback of ours; torchrun adds its own report

"""Shared fixtures: the walkthrough run once, as a reader runs it, in a temporary folder."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# README order. Each runs with its default flags, so it writes to ./artifacts of its cwd.
CHAPTERS = [
    "build_model.py",
    "train_iris.py",
    "inspect_state.py",
    "save_load_demo.py",
    "checkpoint_resume.py",
    "load_tips.py",
    "compare_formats.py",
    "distributed_checkpoint.py",
]
# Flags some chapters get in the test run, beyond the reader's defaults.
EXTRA_ARGS = {"compare_formats.py": ["--json", "artifacts/formats.json"]}


# What each chapter reads from an earlier one (README order guarantees it for a reader).
READS_FROM = {
    "inspect_state.py": "train_iris.py",
    "save_load_demo.py": "train_iris.py",
    "load_tips.py": "train_iris.py",
    "compare_formats.py": "train_iris.py",
}


def script_command(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / script), *args]


SCRIPT_ENV = {
    **os.environ,
    "PYTHONDONTWRITEBYTECODE": "1",  # leave nothing behind in the repo
    "OMP_NUM_THREADS": "1",  # chapters run side by side: one thread each, no oversubscription
}
torch.set_num_threads(1)  # the same for the tests run in this process


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a chapter the way a reader does: `python SCRIPT.py ARGS` in a folder of theirs."""
    return subprocess.run(
        script_command(script, *args), cwd=cwd, env=SCRIPT_ENV, capture_output=True, text=True, timeout=300
    )


def run_in_fork(
    function: Callable[..., object], *args: object, cwd: Path, timeout: float = 120
) -> tuple[int, str]:
    """Run `function(*args)` in a forked copy of this process (a real process that needs no
    fresh imports), in `cwd`; return its exit status and what it wrote to stderr. A child
    still running after `timeout` seconds is killed and the test fails: it hung."""
    stderr_path = cwd / "stderr.txt"

    def child() -> None:
        os.chdir(cwd)
        stderr_fd = os.open(stderr_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(stderr_fd, 2)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 -- lives as long as the child
        sys.exit(function(*args))

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        pytest.fail(f"{function.__name__} still running after {timeout} s: it hung")
    stderr = stderr_path.read_text()
    stderr_path.unlink()
    return process.exitcode, stderr


def run_chapters(cwd: Path, slots: int) -> dict[str, subprocess.CompletedProcess[str]]:
    """Start the chapters in README order, each once the chapter it reads from has finished,
    with up to `slots` running side by side: on a multi-core machine the suite stays fast."""
    waiting, running, done = list(CHAPTERS), {}, {}
    while waiting or running:
        next_up = waiting[0] if waiting else None
        if next_up and len(running) < slots and READS_FROM.get(next_up, "nothing") in {*done, "nothing"}:
            command = script_command(next_up, *EXTRA_ARGS.get(next_up, []))
            running[next_up] = subprocess.Popen(
                command, cwd=cwd, env=SCRIPT_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            waiting.pop(0)
            continue
        finished = [script for script, process in running.items() if process.poll() is not None]
        if not finished:
            time.sleep(0.02)
        for script in finished:
            process = running.pop(script)
            stdout, stderr = process.communicate()
            done[script] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return done


@dataclass(frozen=True)
class Walkthrough:
    cwd: Path
    results: dict[str, subprocess.CompletedProcess[str]]

    @property
    def artifacts(self) -> Path:
        return self.cwd / "artifacts"

    def stdout(self, script: str) -> str:
        return self.results[script].stdout


@pytest.fixture(scope="session")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Walkthrough:
    """Every chapter run as a reader runs it, each a real process, sharing one folder."""
    cwd = tmp_path_factory.mktemp("reader")
    results = run_chapters(cwd, slots=os.cpu_count() or 1)
    for script, result in results.items():
        assert result.returncode == 0, f"{script} failed:\n{result.stderr}"
    return Walkthrough(cwd, results)


@pytest.fixture(scope="session")
def trained_model_path(walkthrough: Walkthrough) -> Path:
    """The state_dict chapter 2 wrote with the default settings. Tests must not change it."""
    return walkthrough.artifacts / "iris-model.pth"

"""Shared fixtures: the walkthrough run once, as a reader runs it, in a temporary folder."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# README order. Each runs with its default flags, so it writes to ./artifacts of its cwd.
CHAPTERS = [
    "build_model.py",
    "train_iris.py",
    "inspect_state.py",
    "save_load_demo.py",
    "checkpoint_resume.py",
    "load_tips.py",
]


def run_script(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a chapter the way a reader does: `python SCRIPT.py ARGS` in a folder of theirs."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # leave nothing behind in the repo
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


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
    """Every chapter run in reading order, each a real process, sharing one folder."""
    cwd = tmp_path_factory.mktemp("reader")
    results = {}
    for script in CHAPTERS:
        result = run_script(script, cwd=cwd)
        assert result.returncode == 0, f"{script} failed:\n{result.stderr}"
        results[script] = result
    return Walkthrough(cwd, results)


@pytest.fixture(scope="session")
def trained_model_path(walkthrough: Walkthrough) -> Path:
    """The state_dict chapter 2 wrote with the default settings. Tests must not change it."""
    return walkthrough.artifacts / "iris-model.pth"

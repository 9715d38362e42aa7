"""Fixtures: each chapter run once, as a reader runs it, in a folder of its own.

Each chapter gets a folder holding only the files it reads, copied from the chapter that
writes them. The runs start as early as their inputs exist and overlap, one CPU thread
each, so the suite stays fast; a chapter that fails fails its own tests only.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import CHAPTERS, READS, SCRIPT_ENV, script_command

torch.set_num_threads(1)  # as the chapters run by the tests: one thread each

# Flags some chapters get in the test run, beyond the reader's defaults.
EXTRA_ARGS = {"compare_formats.py": ["--json", "artifacts/formats.json"]}


@dataclass(frozen=True)
class ChapterRun:
    """One chapter's real process: the folder it ran in, and what it printed."""

    cwd: Path
    result: subprocess.CompletedProcess[str]

    @property
    def artifacts(self) -> Path:
        return self.cwd / "artifacts"

    @property
    def stdout(self) -> str:
        return self.result.stdout


class ChapterRuns:
    """Starts every chapter once its inputs exist, up to `slots` side by side."""

    def __init__(self, root: Path, slots: int) -> None:
        self.root, self.slots = root, slots
        self.waiting = list(CHAPTERS)
        self.running: dict[str, tuple[Path, subprocess.Popen[str]]] = {}
        self.done: dict[str, ChapterRun] = {}
        self.pump()

    def inputs_ready(self, script: str) -> bool:
        return not READS.get(script) or "train_iris.py" in self.done

    def start(self, script: str) -> None:
        cwd = self.root / script.removesuffix(".py")
        (cwd / "artifacts").mkdir(parents=True)
        for name in READS.get(script, []):
            source = self.done["train_iris.py"].artifacts / name
            if source.exists():
                shutil.copy(source, cwd / "artifacts" / name)
        command = script_command(script, *EXTRA_ARGS.get(script, []))
        process = subprocess.Popen(
            command, cwd=cwd, env=SCRIPT_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.running[script] = (cwd, process)

    def pump(self) -> None:
        """Collect finished runs, then start what can start."""
        for script, (cwd, process) in list(self.running.items()):
            if process.poll() is not None:
                stdout, stderr = process.communicate()
                result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
                self.done[script] = ChapterRun(cwd, result)
                del self.running[script]
        for script in list(self.waiting):
            if len(self.running) >= self.slots:
                break
            if self.inputs_ready(script):
                self.waiting.remove(script)
                self.start(script)

    def get(self, script: str) -> ChapterRun:
        while script not in self.done:
            self.pump()
            time.sleep(0.02)
        run = self.done[script]
        assert run.result.returncode == 0, f"{script} failed:\n{run.result.stderr}"
        return run


@pytest.fixture(scope="session")
def chapter_runs(tmp_path_factory: pytest.TempPathFactory) -> ChapterRuns:
    return ChapterRuns(tmp_path_factory.mktemp("reader"), slots=os.cpu_count() or 1)


@pytest.fixture(scope="session")
def trained_model_path(chapter_runs: ChapterRuns) -> Path:
    """The state_dict chapter 2 wrote with the default settings. Tests must not change it."""
    return chapter_runs.get("train_iris.py").artifacts / "iris-model.pth"


def chapter_fixture(script: str):
    @pytest.fixture(scope="session")
    def run(chapter_runs: ChapterRuns) -> ChapterRun:
        return chapter_runs.get(script)

    run.__doc__ = f"The real `python {script}` run, in a folder holding only what it reads."
    return run


model_run = chapter_fixture("build_model.py")
train_run = chapter_fixture("train_iris.py")
inspect_run = chapter_fixture("inspect_state.py")
save_load_run = chapter_fixture("save_load_demo.py")
checkpoint_run = chapter_fixture("checkpoint_resume.py")
tips_run = chapter_fixture("load_tips.py")
formats_run = chapter_fixture("compare_formats.py")
distributed_run = chapter_fixture("distributed_checkpoint.py")

"""Fixtures: each chapter run once, as a reader runs it, in a folder of its own.

Each chapter gets a folder holding only the files it reads, copied from the chapter that
writes them. The runs go on beside the tests, one CPU thread each, on every CPU but the one
this process keeps busy (and on that one too while a test waits for a run); each starts as
soon as its inputs exist and a CPU is free, in the order the tests first need them. A
chapter that fails fails its own tests only. Each run is a process forked from a server
that has imported torch and the rest already (tests/chapter_server.py), with the reader's
command line, folder and exit; the slow step (tests/test_real_processes.py) shows that
fresh interpreters print and write the same.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import ARGS, CHAPTER_SERVER, CHAPTERS, READS, REPO, ForkedRun, missing_for

torch.set_num_threads(1)  # as the chapters run by the tests: one thread each

# The chapters whose runs take longest: the test files that need them run last.
LONG_CHAPTERS = {
    "checkpoint_resume.py",
    "resume_training_run.py",
    "compare_formats.py",
    "distributed_checkpoint.py",
}
# Flags some chapters get in the test run, beyond the reader's defaults.
EXTRA_ARGS = {"compare_formats.py": ["--json", "artifacts/formats.json"]}


@dataclass(frozen=True)
class ChapterRun:
    """One chapter's run: the folder it ran in, and what it printed."""

    cwd: Path
    result: subprocess.CompletedProcess[str]

    @property
    def artifacts(self) -> Path:
        return self.cwd / "artifacts"

    @property
    def stdout(self) -> str:
        return self.result.stdout


class ChapterRuns:
    """Starts the chapters the selected tests need, in the order they first need them, each
    once its inputs exist, up to `slots` side by side."""

    def __init__(self, root: Path, slots: int, needed: list[str]) -> None:
        self.root, self.slots = root, slots
        if READS.keys() & set(needed):  # chapter 2 writes what they read: it goes first
            needed = ["train_iris.py", *(script for script in needed if script != "train_iris.py")]
        self.waiting = list(needed)
        self.running: dict[str, tuple[Path, ForkedRun]] = {}
        self.done: dict[str, ChapterRun] = {}
        self.pump()

    def inputs_ready(self, script: str) -> bool:
        return not READS.get(script) or "train_iris.py" in self.done

    def start(self, script: str) -> None:
        if script.startswith("recipes/"):  # a recipe runs copied alone into an empty folder
            cwd = self.root / script.removesuffix(".py").replace("/", "-")
            cwd.mkdir()
            alone = cwd / Path(script).name
            shutil.copy(REPO / script, alone)
            self.running[script] = (cwd, CHAPTER_SERVER.start(str(alone), cwd=cwd))
            return
        cwd = self.root / script.removesuffix(".py")
        (cwd / "artifacts").mkdir(parents=True)
        for name in READS.get(script, []):
            source = self.done["train_iris.py"].artifacts / name
            if source.exists():
                shutil.copy(source, cwd / "artifacts" / name)
        args = [*ARGS.get(script, []), *EXTRA_ARGS.get(script, [])]
        self.running[script] = (cwd, CHAPTER_SERVER.start(script, *args, cwd=cwd))

    def pump(self, slots: int | None = None) -> None:
        """Collect finished runs, then start what can start, up to `slots` (default: the usual)."""
        for script, (cwd, process) in list(self.running.items()):
            if process.poll() is not None:
                self.done[script] = ChapterRun(cwd, process.wait(timeout=0))
                del self.running[script]
        for script in list(self.waiting):  # the first that can start, in the order needed
            if len(self.running) >= (slots or self.slots):
                break
            if self.inputs_ready(script):
                self.waiting.remove(script)
                self.start(script)

    def get(self, script: str) -> ChapterRun:
        if script not in self.done and script not in self.running and script not in self.waiting:
            self.waiting.append(script)  # asked for by a test the collection did not foresee
        while script not in self.done:
            self.pump(slots=self.slots + 1)  # this process waits: its CPU is free for one more
            time.sleep(0.02)
        run = self.done[script]
        assert run.result.returncode == 0, f"{script} failed:\n{run.result.stderr}"
        assert run.result.stderr == "", f"{script} wrote to stderr on a good run:\n{run.result.stderr}"
        return run


FIXTURE_OF = {}  # fixture name -> chapter script, filled in by chapter_fixture below
NEEDED: list[str] = []  # the chapters the collected tests use, in the order they first do


def chapters_used(item: pytest.Item) -> set[str]:
    used = set()
    for name in getattr(item, "fixturenames", ()):
        if name in FIXTURE_OF:
            used.add(FIXTURE_OF[name])
        elif name == "trained_model_path":
            used.add("train_iris.py")
        elif name == "all_runs":
            used.update(CHAPTERS)
        elif name == "recipe_run" and not missing_for(item.callspec.params["recipe"]):
            used.add(f"recipes/{item.callspec.params['recipe']}")
    return used


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the test files that need the long chapters last (each file's tests still together,
    in their order), so that nobody waits for them; note which chapters the tests need, and
    in what order."""
    last_files = {item.path for item in items if chapters_used(item) & LONG_CHAPTERS}
    items.sort(key=lambda item: item.path in last_files)
    for item in items:
        NEEDED.extend(sorted(chapters_used(item) - set(NEEDED)))


CHAPTER_SERVER.warm_up()  # while the tests are collected


RUNS: list[ChapterRuns] = []  # the session's, for the hook below


@pytest.fixture(scope="session", autouse=True)
def chapter_runs(tmp_path_factory: pytest.TempPathFactory) -> ChapterRuns:
    """Autouse, so that the runs start before the first test, not when a test first needs one."""
    slots = max(1, (os.cpu_count() or 1) - 1)  # this process, running the tests, keeps one CPU busy
    RUNS.append(ChapterRuns(tmp_path_factory.mktemp("reader"), slots=slots, needed=NEEDED))
    return RUNS[0]


def pytest_runtest_logfinish() -> None:
    """After every test, start the runs whose slot or inputs have come free: waiting for a test
    to ask would leave a CPU idle while the in-process tests go on."""
    if RUNS:
        RUNS[0].pump()


@pytest.fixture(scope="session")
def trained_model_path(chapter_runs: ChapterRuns) -> Path:
    """The state_dict chapter 2 wrote with the default settings. Tests must not change it."""
    return chapter_runs.get("train_iris.py").artifacts / "iris-model.pth"


def chapter_fixture(name: str, script: str):
    FIXTURE_OF[name] = script

    @pytest.fixture(scope="session", name=name)
    def run(chapter_runs: ChapterRuns) -> ChapterRun:
        return chapter_runs.get(script)

    run.__doc__ = f"The real `python {script}` run, in a folder holding only what it reads."
    return run


model_run = chapter_fixture("model_run", "build_model.py")
train_run = chapter_fixture("train_run", "train_iris.py")
inspect_run = chapter_fixture("inspect_run", "inspect_state.py")
save_load_run = chapter_fixture("save_load_run", "save_load_demo.py")
checkpoint_run = chapter_fixture("checkpoint_run", "checkpoint_resume.py")
run_resume_run = chapter_fixture("run_resume_run", "resume_training_run.py")
tips_run = chapter_fixture("tips_run", "load_tips.py")
formats_run = chapter_fixture("formats_run", "compare_formats.py")
share_run = chapter_fixture("share_run", "share_model.py")
distributed_run = chapter_fixture("distributed_run", "distributed_checkpoint.py")
look_inside_run = chapter_fixture("look_inside_run", "look_inside.py")


@pytest.fixture
def recipe_run(chapter_runs: ChapterRuns, recipe: str) -> ChapterRun:
    """The recipe's real run, `python NAME.py` in a folder that held only that file; a skip
    that names the extra where the recipe needs one that is not installed."""
    if reason := missing_for(recipe):
        pytest.skip(reason)
    return chapter_runs.get(f"recipes/{recipe}")


@pytest.fixture(scope="session")
def all_runs(chapter_runs: ChapterRuns) -> dict[str, ChapterRun]:
    """Every chapter's run, for the tests that compare the README with all of them."""
    return {script: chapter_runs.get(script) for script in CHAPTERS}


def pytest_collection_finish(session: pytest.Session) -> None:
    # torch, the test modules and their parameters are here for the whole run: frozen, the
    # collector stops walking them again and again (and at exit), a few seconds of CPU.
    gc.freeze()

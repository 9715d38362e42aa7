"""What the tests share: running a chapter as a reader does, in a process or in this one."""

from __future__ import annotations

import ast
import atexit
import contextlib
import functools
import importlib.util
import io
import json
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import cli

REPO = Path(__file__).resolve().parent.parent
# The torch whose numbers the README and the committed pictures show (constraints.txt's pin).
# README order: what walkthrough.sh runs.
CHAPTERS = [
    "build_model.py",
    "train_iris.py",
    "inspect_state.py",
    "save_load_demo.py",
    "checkpoint_resume.py",
    "resume_training_run.py",
    "load_tips.py",
    "compare_formats.py",
    "share_model.py",
    "distributed_checkpoint.py",
    "look_inside.py",
]
# What each chapter reads from an earlier one (README order guarantees it for a reader).
READS = {
    "inspect_state.py": ["iris-model.pth"],
    "save_load_demo.py": ["iris-model.pth"],
    "load_tips.py": ["iris-model.pth"],
    "compare_formats.py": ["iris-model.pth"],
    "share_model.py": ["iris-model.pth"],
    "look_inside.py": ["iris-model.pth"],
}
# The arguments walkthrough.sh gives a chapter, where it gives any.
ARGS: dict[str, list[str]] = {}
SCRIPT_ENV = {
    **os.environ,
    "PYTHONDONTWRITEBYTECODE": "1",  # leave nothing behind in the repo
    "OMP_NUM_THREADS": "1",  # chapters run side by side: one thread each, no oversubscription
    "MPLBACKEND": "Agg",  # no window, whatever the machine has
}


def script_command(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO / script), *args]


class ForkedRun:
    """One `python SCRIPT ARGS` run by the chapter server: a real process of its own."""

    def __init__(self, server: ChapterServer, run_id: int, command: list[str], output: Path) -> None:
        self.server, self.id, self.args = server, run_id, command
        self.stdout_path, self.stderr_path = output / f"{run_id}.out", output / f"{run_id}.err"

    def poll(self) -> int | None:
        self.server.pump(wait=0)
        return self.returncode

    def wait(self, timeout: float) -> subprocess.CompletedProcess[str]:
        """Wait for the end, as subprocess.run(capture_output=True, text=True) would."""
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.server.pids[self.id], signal.SIGKILL)
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.server.pump(wait=0.05)
        stdout, stderr = self.stdout_path.read_text(), self.stderr_path.read_text()
        self.stdout_path.unlink()
        self.stderr_path.unlink()
        return subprocess.CompletedProcess(self.args, self.returncode, stdout, stderr)

    @property
    def returncode(self) -> int | None:
        return self.server.returncodes.get(self.id)


class ChapterServer:
    """tests/chapter_server.py, started on first use: it forks a child per script run, each
    with torch, scikit-learn and torch._dynamo already imported, so a test's run of a
    chapter costs the chapter's own work, not Python's start-up (see that file)."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.returncodes: dict[int, int] = {}
        self.pids: dict[int, int] = {}
        self.pending = b""
        self.next_id = 0

    def warm_up(self) -> None:
        """Start the server, without waiting for it: its imports take a few seconds."""
        if self.process is None:
            self.output = Path(tempfile.mkdtemp(prefix="chapter-runs-"))
            self.process = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "chapter_server.py")],
                cwd=self.output,
                env=SCRIPT_ENV,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=(self.output / "server.err").open("wb"),
            )
            self.ready = False
            atexit.register(self.close)

    def started(self) -> subprocess.Popen[bytes]:
        self.warm_up()
        while not self.ready:
            self.ready = bool(self.messages(wait=1))  # its first message says it is warm
        return self.process

    def start(self, script: str, *args: str, cwd: Path) -> ForkedRun:
        process = self.started()
        self.next_id += 1
        run = ForkedRun(self, self.next_id, script_command(script, *args), self.output)
        request = {
            "id": run.id,
            "script": str(REPO / script),
            "args": list(args),
            "cwd": str(cwd),
            "stdout": str(run.stdout_path),
            "stderr": str(run.stderr_path),
        }
        process.stdin.write(json.dumps(request).encode() + b"\n")
        process.stdin.flush()
        while run.id not in self.pids:
            self.pump(wait=0.05)
        return run

    def messages(self, wait: float) -> list[dict]:
        """What the server has said, waiting up to `wait` seconds for something."""
        out = self.process.stdout.fileno()
        if not select.select([out], [], [], wait)[0]:
            return []
        chunk = os.read(out, 65536)
        if not chunk:
            raise RuntimeError(f"the chapter server ended: {(self.output / 'server.err').read_text()}")
        self.pending += chunk
        *lines, self.pending = self.pending.split(b"\n")
        return [json.loads(line) for line in lines]

    def pump(self, wait: float) -> None:
        for message in self.messages(wait):
            if "pid" in message:
                self.pids[message["id"]] = message["pid"]
            elif "returncode" in message:
                self.returncodes[message["id"]] = message["returncode"]

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()  # the server kills what still runs, and ends
            self.process.wait()
            shutil.rmtree(self.output, ignore_errors=True)
            self.process = None


CHAPTER_SERVER = ChapterServer()


def run_script(script: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a chapter the way a reader does, `python SCRIPT.py ARGS` in a folder of theirs, in a
    process forked from the chapter server (its imports already done)."""
    return CHAPTER_SERVER.start(script, *args, cwd=cwd).wait(timeout)


def run_script_for_real(
    script: str, *args: str, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`python SCRIPT.py ARGS` in a fresh interpreter, start-up and all."""
    return subprocess.run(
        script_command(script, *args),
        cwd=cwd,
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass(frozen=True)
class ChapterResult:
    returncode: int
    stdout: str
    stderr: str
    namespace: dict  # the chapter's top-level names after it ran (empty if it exited early)


@functools.cache
def chapter_code(script: str) -> types.CodeType:
    """The chapter compiled once in this process: the forked children that run it on a bad
    file inherit the code instead of compiling it again, which was most of their own work
    (13 ms for the longest chapter) and touched memory they then had to copy."""
    path = REPO / script
    return compile(path.read_bytes(), str(path), "exec", dont_inherit=True)


def run_as_main(script: str) -> dict:
    """What `runpy.run_path(SCRIPT, run_name="__main__")` does for a script, with its code
    compiled once: run it as the `__main__` module, and return a copy of its names."""
    module = types.ModuleType("__main__")
    module.__file__, module.__cached__ = str(REPO / script), None
    saved = sys.modules["__main__"]
    sys.modules["__main__"] = module  # what the chapter's classes name as their module
    try:
        exec(chapter_code(script), module.__dict__)
    finally:
        sys.modules["__main__"] = saved
    return dict(module.__dict__)


def run_chapter_here(script: str, *args: str, cwd: Path) -> ChapterResult:
    """Run a chapter in this process, as `python SCRIPT.py ARGS` in `cwd` would, and capture
    what it prints and its exit status. Faster than a process where a process proves nothing."""
    out, err = io.StringIO(), io.StringIO()
    old_argv, old_cwd, old_sigint = sys.argv, Path.cwd(), signal.getsignal(signal.SIGINT)
    cli.SAVED.clear()
    cli.WATCHED.clear()
    sys.argv = [str(REPO / script), *args]
    namespace: dict = {}
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                namespace = run_as_main(script)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            except Exception as error:  # what the chapter's exception hook does, run as a script
                line = cli.one_line_error(error)
                if line is None:
                    raise
                cli.print_error(line)
                code = cli.EXIT_BAD_INPUT
    finally:
        sys.argv = old_argv
        os.chdir(old_cwd)
        signal.signal(signal.SIGINT, old_sigint)
        cli.SAVED.clear()  # the chapter's record of what it saved ends with it
        cli.WATCHED.clear()
    return ChapterResult(code, out.getvalue(), err.getvalue(), namespace)


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


def assert_one_line_refusal(result: ChapterResult | subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 2, nothing on stdout after the refusal, one `error:` line naming `words`."""
    assert result.returncode == cli.EXIT_BAD_INPUT, result.stderr
    assert result.stderr.startswith("error: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in result.stderr, (word, result.stderr)


# ---- Recipes: files a copier takes whole ----

RECIPES = sorted(path.name for path in (REPO / "recipes").glob("*.py"))
# A C++ compile of a minute or more on two cores: run in the slow step only, in a fresh interpreter.
SLOW_RECIPES = {"export_aot_inductor_package.py"}
EXTRA_OF = {
    "safetensors": "the formats extra",
    "torchao": "the quantize extra",
    "huggingface_hub": "the realworld extra",
    "numpy": "a dependency of this project",
}


def recipe_needs(recipe: str) -> list[str]:
    """The modules a recipe's docstring says it needs, from its `Needs:` line."""
    doc = ast.get_docstring(ast.parse((REPO / "recipes" / recipe).read_text())) or ""
    line = next((line for line in doc.splitlines() if line.startswith("Needs: ")), "Needs: ")
    return [name.strip() for name in line.removeprefix("Needs: ").split(",") if name.strip()]


def missing_for(recipe: str) -> str | None:
    """Why a recipe cannot run here (an extra not installed), or None."""
    for module in recipe_needs(recipe):
        if importlib.util.find_spec(module) is None:
            extra = EXTRA_OF.get(module, "not in any extra of this project")
            return f"{recipe} needs {module} ({extra}), which is not installed"
    return None

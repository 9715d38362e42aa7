"""Every chapter answers --help, refuses an unknown or abbreviated flag in one line, and names
its output folder so that the reader knows where it is."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jupytext
import pytest

from support.cli import EXIT_INTERRUPTED
from tests.helpers import (
    CHAPTERS,
    READS,
    REPO,
    SCRIPT_ENV,
    assert_one_line_refusal,
    run_chapter_here,
    script_command,
)


@pytest.mark.parametrize("script", CHAPTERS)
def test_every_chapter_has_help(script, tmp_path):
    run = run_chapter_here(script, "--help", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: ")
    # The chapter's prose, written once in its first markdown cell, is its --help.
    first_cell = jupytext.reads((REPO / script).read_text(), fmt="py:percent").cells[0]
    assert first_cell.cell_type == "markdown"
    title, *prose = first_cell.source.replace("**", "").splitlines()
    assert run.stdout.split("\n\n")[1] == title.removeprefix("# ")
    assert " ".join("\n".join(prose).split()) in " ".join(run.stdout.split())
    if script != "build_model.py":  # it writes no files
        assert "--out-dir OUT_DIR" in run.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", CHAPTERS)
def test_every_chapter_refuses_an_unknown_flag_in_one_line(script, tmp_path):
    run = run_chapter_here(script, "--no-such-flag", cwd=tmp_path)
    assert_one_line_refusal(run, "unrecognized arguments: --no-such-flag")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", ["build_model.py", "train_iris.py"])
def test_an_abbreviated_flag_is_refused_not_guessed(script, tmp_path):
    run = run_chapter_here(script, "--out", "elsewhere", cwd=tmp_path)
    assert_one_line_refusal(run, "unrecognized arguments: --out")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_outside_the_current_one_is_named_in_full(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    run = run_chapter_here("inspect_state.py", "--out-dir", "../elsewhere", cwd=here)
    assert run.returncode == 2
    assert run.stderr.startswith(f"error: {tmp_path / 'elsewhere' / 'iris-model.pth'} not found")
    assert f"--out-dir {tmp_path / 'elsewhere'}\n" in run.stderr


def test_a_folder_under_the_current_one_keeps_its_short_name(tmp_path):
    run = run_chapter_here("inspect_state.py", "--out-dir", "./runs/../artifacts", cwd=tmp_path)
    assert run.stderr.startswith("error: artifacts/iris-model.pth not found; ")
    assert run.stderr.endswith(" --out-dir artifacts\n")


FRESH_PROCESS_PROGRAMS = ["load_whole_model.py", "run_pt2.py", "save_whole_model.py"]


def no_torch(script: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """Run `script` in a fresh interpreter in which importing torch fails: what it answers there,
    it answers before importing torch."""
    guard = (
        "import runpy, sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] == 'torch': raise ImportError('torch was imported')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        f"sys.argv = {[script, *args]!r}\n"
        f"runpy.run_path({script!r}, run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", guard], cwd=cwd, env=SCRIPT_ENV, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("script", [*CHAPTERS, "inspect_file.py"])
def test_help_a_bad_flag_and_a_missing_file_are_answered_before_torch_is_imported(script, tmp_path):
    helped = no_torch(script, "--help")
    assert (helped.returncode, helped.stderr) == (0, ""), helped.stderr
    assert helped.stdout.startswith("usage: ")
    refused = no_torch(script, "--no-such-flag")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: unrecognized arguments: --no-such-flag"), refused.stderr
    if script in READS or script == "inspect_file.py":  # its input, in an empty folder
        where = ["--out-dir", str(tmp_path)] if script in READS else [str(tmp_path / "x.pth")]
        missing = no_torch(script, *where)
        assert missing.returncode == 2
        assert missing.stderr.startswith("error: ") and " not found" in missing.stderr, missing.stderr
        assert missing.stderr.count("\n") == 1


@pytest.mark.parametrize("program", FRESH_PROCESS_PROGRAMS)
def test_the_fresh_process_programs_take_help_and_refuse_bad_arguments_in_one_line(program, tmp_path):
    path = str(REPO / "fresh_process" / program)
    helped = no_torch(path, "--help")
    assert (helped.returncode, helped.stderr) == (0, "") and helped.stdout.startswith("usage: ")
    refused = no_torch(path, "--no-such-flag")
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and refused.stderr.endswith(f"(see {program} --help)\n")
    assert refused.stderr.count("\n") == 1
    arguments = {"load_whole_model.py": 1, "save_whole_model.py": 2, "run_pt2.py": 3}[program]
    missing = no_torch(path, *["nothere.pt"] * arguments, cwd=tmp_path)  # no such input: before torch
    assert (missing.returncode, missing.stderr) == (2, "error: nothere.pt is not a file\n")


@pytest.mark.slow
@pytest.mark.parametrize("command", [["build_model.py"], ["train_iris.py"], ["inspect_file.py", "model.pth"]])
def test_ctrl_c_while_torch_is_being_imported_is_one_line_exit_130(command, trained_model_path, tmp_path):
    shutil.copy(trained_model_path, tmp_path / "model.pth")  # what the inspector reads
    process = subprocess.Popen(
        script_command(*command), cwd=tmp_path, env=SCRIPT_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    maps = Path(f"/proc/{process.pid}/maps")
    for _ in range(6000):  # torch's shared library is mapped early in `import torch`
        if process.poll() is not None or "libtorch" in maps.read_text():
            break
        time.sleep(0.005)
    assert process.poll() is None, "it ended before torch was being imported"
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED
    assert (stdout, stderr) == (b"", b"interrupted (Ctrl-C); nothing was saved\n")


SWALLOWS_CTRL_C = """
import os, signal, time
try:  # what torch's start-up did with the SystemExit of a Ctrl-C during its import of numpy
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(1)
except BaseException:
    pass
"""


def run_swallowing(tmp_path: Path, where: str) -> subprocess.CompletedProcess[str]:
    """A chapter-like script whose Ctrl-C lands in code that catches every exception: inside a
    module being imported, or in the script itself. Then it would print and exit 0."""
    (tmp_path / "swallow.py").write_text(SWALLOWS_CTRL_C)
    script = (
        f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
        "from support.cli import chapter_parser, parse_chapter_args\n"
        "parse_chapter_args(chapter_parser(out_dir=False))\n"
        + ("import swallow\n" if where == "import" else SWALLOWS_CTRL_C)
        + ("import time; time.sleep(20)\n" if where == "script, then long work" else "")
        + "print('went on after Ctrl-C')\n"
    )
    (tmp_path / "chapter.py").write_text(script)
    return subprocess.run(
        [sys.executable, "chapter.py"],
        cwd=tmp_path,
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ctrl_c_inside_an_import_that_catches_everything_still_ends_the_chapter(tmp_path):
    result = run_swallowing(tmp_path, "import")
    assert (result.returncode, result.stdout) == (EXIT_INTERRUPTED, "")
    assert result.stderr == "interrupted (Ctrl-C); nothing was saved\n"


@pytest.mark.slow
@pytest.mark.parametrize("where", ["script", "script, then long work"])  # ends at exit; the watchdog
def test_ctrl_c_swallowed_elsewhere_still_ends_the_chapter_and_nothing_more_is_printed(where, tmp_path):
    result = run_swallowing(tmp_path, where)
    assert (result.returncode, result.stdout) == (EXIT_INTERRUPTED, "")
    assert result.stderr == "interrupted (Ctrl-C); nothing was saved\n"

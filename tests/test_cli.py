"""Every chapter answers --help, refuses an unknown or abbreviated flag in one line, and names
its output folder so that the reader knows where it is."""

from __future__ import annotations

import jupytext
import pytest

from tests.helpers import CHAPTERS, REPO, assert_one_line_refusal, run_chapter_here


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
    if script not in ("build_model.py", "inspect_file.py"):  # these write no files
        assert "--out-dir OUT_DIR" in run.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", CHAPTERS)
def test_every_chapter_refuses_an_unknown_flag_in_one_line(script, tmp_path):
    run = run_chapter_here(script, "--no-such-flag", cwd=tmp_path)
    assert_one_line_refusal(run, "unrecognized arguments: --no-such-flag")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", ["train_iris.py", "inspect_state.py"])
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

"""Every chapter answers --help and refuses an unknown flag in one line, as the README says."""

from __future__ import annotations

import pytest

from tests.helpers import CHAPTERS, REPO, assert_one_line_refusal, run_chapter_here


@pytest.mark.parametrize("script", CHAPTERS)
def test_every_chapter_has_help(script, tmp_path):
    run = run_chapter_here(script, "--help", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: ")
    docstring = (REPO / script).read_text().split('"""')[1]
    assert docstring.splitlines()[0] in " ".join(run.stdout.split())
    if script not in ("build_model.py", "inspect_file.py"):  # these write no files
        assert "--out-dir OUT_DIR" in run.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("script", CHAPTERS)
def test_every_chapter_refuses_an_unknown_flag_in_one_line(script, tmp_path):
    run = run_chapter_here(script, "--no-such-flag", cwd=tmp_path)
    assert_one_line_refusal(run, "unrecognized arguments: --no-such-flag")
    assert list(tmp_path.iterdir()) == []

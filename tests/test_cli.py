"""Every chapter is `main(argv)` with `--help`, as the README promises."""

from __future__ import annotations

import importlib

import pytest

from tests.conftest import CHAPTERS


@pytest.mark.parametrize("script", CHAPTERS)
def test_every_chapter_has_help(script, capsys):
    chapter = importlib.import_module(script.removesuffix(".py"))
    with pytest.raises(SystemExit) as stopped:
        chapter.main(["--help"])
    assert stopped.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith("usage: ")
    assert chapter.__doc__.splitlines()[0] in " ".join(help_text.split())
    if script != "build_model.py":  # chapter 1 reads and writes no files
        assert "--out-dir OUT_DIR" in help_text

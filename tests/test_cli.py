"""Every chapter is `main(argv)` with `--help`, and writes only where the README says."""

from __future__ import annotations

import importlib

import pytest
import torch

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


def test_walkthrough_writes_only_into_artifacts(walkthrough):
    assert [path.name for path in walkthrough.cwd.iterdir()] == ["artifacts"]
    written = sorted(path.name for path in walkthrough.artifacts.iterdir())
    assert written == [
        "dcp-checkpoint",
        "dcp-checkpoint.pth",
        "dcp-pitfall",
        "demo-state.pickle",
        "demo-state.pth",
        "demo-whole-model-main.pth",
        "demo-whole-model.pth",
        "formats.json",
        "iris-checkpoint-epoch60.pth",
        "iris-checkpoint.pth",
        "iris-ddp-rank0.pth",
        "iris-model-from-dcp.pth",
        "iris-model.pth",
        "tips-saved-on-gpu.pth",
        *(["tips-real-gpu.pth"] if torch.cuda.is_available() else []),
        "tips-two-models.pth",
    ]

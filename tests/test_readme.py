"""The README tells the truth: it is a front page a reader gets through in ten minutes, its
chapter table runs the chapters in the order walkthrough.sh does, each chapter's excerpt is
printed by that chapter, its error lines are the chapters' refusals, and every ```python
block runs when pasted into a new file."""

from __future__ import annotations

import re
from unittest import mock

import pytest
import torch

from build_model import Multiclass
from model_inspector.files import ModelFileError
from support.lab_tools import Hostile
from support.untrusted_files import load_untrusted_model
from tests.helpers import ARGS, CHAPTERS, REPO
from tests.test_distributed_checkpoint import FAILED_RANK_LINE

README = (REPO / "README.md").read_text()
TEXT_BLOCKS = re.findall(r"```text\n(.*?)```", README, flags=re.DOTALL)
MAX_WORDS = 2500  # about ten minutes of reading
# | 2 | `python train_iris.py` | what it teaches | `a line it prints`<br>`another` |
TABLE_ROW = re.compile(r"^\| (\d+) \| `python ([^`]+)` \| ([^|]+) \| (.+) \|$", re.MULTILINE)


def table_rows() -> list[tuple[int, list[str], str, list[str]]]:
    """(number, command, what it teaches, the excerpt's lines) for each chapter in the table."""
    return [
        (int(number), command.split(), teaches.strip(), re.findall(r"`([^`]+)`", excerpt))
        for number, command, teaches, excerpt in TABLE_ROW.findall(README)
    ]


def test_the_readme_is_a_front_page_of_at_most_2500_words():
    words = len(README.split())
    assert 1000 < words <= MAX_WORDS, f"{words} words"


def test_the_chapter_table_runs_the_chapters_in_walkthrough_order():
    rows = table_rows()
    assert [number for number, *_ in rows] == list(range(1, len(CHAPTERS) + 1))
    runs = re.findall(r"^run (.*)$", (REPO / "walkthrough.sh").read_text(), flags=re.MULTILINE)
    expected = [[script, *ARGS.get(script, [])] for script in CHAPTERS]
    assert [command for _, command, _, _ in rows] == expected
    assert [run.split() for run in runs] == expected
    for number, _, teaches, excerpt in rows:
        assert len(teaches.split()) >= 5, f"chapter {number} does not say what it teaches"
        assert excerpt, f"chapter {number} has no excerpt"


def test_each_chapters_excerpt_is_what_that_chapter_prints(all_runs):
    for number, command, _, excerpt in table_rows():
        printed = all_runs[command[0]].stdout.splitlines()
        for shown in excerpt:
            assert any(shown == line.strip() for line in printed), (
                f"chapter {number} ({command[0]}) never prints {shown!r}"
            )


def test_every_output_line_the_readme_shows_is_real(tmp_path, monkeypatch, trained_model_path):
    """The README's text blocks show one-line errors: chapter 10's failed rank, which its own
    tests read off real runs, and the three a reader meets first, produced here for real."""
    monkeypatch.chdir(tmp_path)
    lines = [line for block in TEXT_BLOCKS for line in block.splitlines()]
    rank_lines = [line for line in lines if "rank 1 failed" in line]
    assert rank_lines == [FAILED_RANK_LINE.strip()]
    shown = [line for line in lines if line not in rank_lines]
    model_path = tmp_path / "artifacts" / "iris-model.pth"
    made_by = "python train_iris.py --out-dir artifacts"
    bad_contents = [
        None,
        {"hidden.weight": Hostile(tmp_path / "marker")},
        Multiclass(n_hidden=16).state_dict(),
    ]
    produced = []
    for content in bad_contents:
        if content is not None:
            model_path.parent.mkdir(exist_ok=True)
            torch.save(content, model_path)
        with pytest.raises(ModelFileError) as refused:
            load_untrusted_model(model_path.relative_to(tmp_path), Multiclass, made_by=made_by)
        produced.append(f"error: {refused.value}")
    assert shown == produced
    assert not (tmp_path / "marker").exists()


def error_table() -> dict[str, str]:
    section = README[README.index("## Errors you will meet") :]
    return dict(re.findall(r"^\| `([^`]+)` \| (.+) \|$", section, flags=re.MULTILINE))


def test_the_error_table_shows_what_pytorch_prints():
    table = list(error_table())
    state = Multiclass().state_dict()
    del state["output.bias"]
    state["extra.weight"] = torch.zeros(2)
    with pytest.raises(RuntimeError) as mismatched_names:
        Multiclass().load_state_dict(state)
    with pytest.raises(RuntimeError) as mismatched_sizes:  # chapter 7's case: a file of 8 into 16
        Multiclass(n_hidden=16).load_state_dict(Multiclass().state_dict())
    names = next(line for line in table if "Missing key(s)" in line)
    sizes = next(line for line in table if "size mismatch" in line)
    said = " ".join(str(mismatched_names.value).split())  # torch breaks it into tab-led lines
    for part in names.removeprefix("RuntimeError: ").split(" ... "):
        assert part in said, part
    assert 'Missing key(s) in state_dict: "output.bias"' in str(mismatched_names.value)
    assert 'Unexpected key(s) in state_dict: "extra.weight"' in str(mismatched_names.value)
    # the two shapes in the order torch prints them: the file's first, then the model's
    assert sizes.removeprefix("RuntimeError: ... ") in str(mismatched_sizes.value)
    assert "torch.Size([8, 4]) from checkpoint" in sizes


def test_the_error_tables_size_mismatch_is_what_chapter_6_prints(tips_run):
    sizes = next(line for line in error_table() if "size mismatch" in line)
    assert sizes.removeprefix("RuntimeError: ... ") in tips_run.stdout


def test_the_error_tables_load_errors_are_what_torch_load_raises(tmp_path):
    table = list(error_table())
    whole_model = tmp_path / "whole-model.pth"
    torch.save(Multiclass(), whole_model)
    with pytest.raises(Exception) as refused:
        torch.load(whole_model, weights_only=True)
    unsupported = next(line for line in table if line.startswith("UnpicklingError"))
    assert type(refused.value).__name__ == "UnpicklingError"
    for part in unsupported.removeprefix("UnpicklingError: ").split(" ... "):
        assert part.replace("__main__", Multiclass.__module__) in str(refused.value), part
    cuda = next(line for line in table if "CUDA" in line)
    gpu_saved = tmp_path / "gpu-saved.pth"
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(Multiclass().state_dict(), gpu_saved)  # what a save on cuda:0 writes
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so a GPU-saved file loads without map_location")
    with pytest.raises(RuntimeError, match=re.escape(cuda.removeprefix("RuntimeError: "))):
        torch.load(gpu_saved, weights_only=True)
    fix = re.search(r"`(torch\.load\(path, map_location=\"cpu\", weights_only=True\))`", error_table()[cuda])
    assert fix, "the table gives the map_location fix"
    assert (
        torch.load(gpu_saved, map_location="cpu", weights_only=True).keys()
        == Multiclass().state_dict().keys()
    )


def test_readme_states_the_python_the_pins_need():
    requires = re.search(r'requires-python = ">=(\S+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"Python {requires} or newer" in README

"""The README shows real output: its excerpts must match what the chapters print."""

from __future__ import annotations

import re

import pytest
import torch

from build_model import ModelFileError, Multiclass, load_model
from tests.conftest import CHAPTERS, REPO
from tests.test_build_model import write_bad_file

README = (REPO / "README.md").read_text()
TEXT_BLOCKS = re.findall(r"```text\n(.*?)```", README, flags=re.DOTALL)
VERIFIED_TORCH = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)


def test_readme_has_output_excerpts():
    assert len(TEXT_BLOCKS) >= 8


@pytest.mark.skipif(
    torch.__version__.split("+")[0] != VERIFIED_TORCH,
    reason=f"the README shows the numbers torch {VERIFIED_TORCH} computes; other versions may differ",
)
def test_output_excerpts_are_real(walkthrough):
    printed = "\n".join(result.stdout for result in walkthrough.results.values())
    for block in TEXT_BLOCKS:
        for line in block.splitlines():
            if line and not line.startswith("error: "):
                assert line in printed, f"README line not in any chapter's output: {line!r}"


def test_error_excerpts_are_real(tmp_path, monkeypatch, trained_model_path):
    monkeypatch.chdir(tmp_path)
    shown = [line for block in TEXT_BLOCKS for line in block.splitlines() if line.startswith("error: ")]
    model_path = tmp_path / "artifacts" / "iris-model.pth"
    produced = []
    for kind in ["missing", "hostile torch.save", "wider hidden layer"]:
        if kind != "missing":
            model_path.parent.mkdir(exist_ok=True)
            write_bad_file(kind, model_path, trained_model_path)
        with pytest.raises(ModelFileError) as refused:
            load_model(model_path.relative_to(tmp_path))
        produced.append(f"error: {refused.value}")
    assert shown == produced


def test_error_table_messages_are_pytorchs():
    state = Multiclass().state_dict()
    del state["output.bias"]
    state["extra.weight"] = torch.zeros(2)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "output.bias"') as raised:
        Multiclass().load_state_dict(state)
    assert 'Unexpected key(s) in state_dict: "extra.weight"' in str(raised.value)
    wider = Multiclass(n_hidden=16).state_dict()
    with pytest.raises(
        RuntimeError,
        match=re.escape(
            "size mismatch for hidden.weight: copying a param with shape torch.Size([16, 4]) "
            "from checkpoint, the shape in current model is torch.Size([8, 4])"
        ),
    ):
        Multiclass().load_state_dict(wider)


def test_readme_and_walkthrough_sh_run_the_chapters_in_the_same_order():
    in_readme = re.findall(r"^### \d+\. .* — `python (\S+\.py)`$", README, flags=re.MULTILINE)
    script = (REPO / "walkthrough.sh").read_text()
    loop = re.search(r"for chapter in (.*?); do", script, flags=re.DOTALL).group(1)
    assert in_readme == CHAPTERS
    assert loop.replace("\\", " ").split() == CHAPTERS

"""The README tells the truth: its output excerpts are printed by the chapters, its error lines
are the chapters' refusals, and every ```python block runs when pasted into a new file."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import torch

from build_model import Multiclass
from support.lab_tools import Hostile
from support.untrusted_files import ModelFileError, load_untrusted_model
from tests.helpers import ARGS, CHAPTERS, REPO, SCRIPT_ENV

README = (REPO / "README.md").read_text()
TEXT_BLOCKS = re.findall(r"```text\n(.*?)```", README, flags=re.DOTALL)
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
VERIFIED_TORCH = re.search(r"^torch==(\S+)$", (REPO / "constraints.txt").read_text(), re.M).group(1)


def test_readme_has_output_excerpts_and_snippets():
    assert len(TEXT_BLOCKS) >= 8
    assert len(PYTHON_BLOCKS) >= 2


@pytest.mark.skipif(
    torch.__version__.split("+")[0] != VERIFIED_TORCH,
    reason=f"the README shows the numbers torch {VERIFIED_TORCH} computes; other versions may differ",
)
def test_output_excerpts_are_real(all_runs):
    printed = "\n".join(run.stdout for run in all_runs.values())
    for block in TEXT_BLOCKS:
        for line in block.splitlines():
            if line and not line.startswith("error: "):
                assert line in printed, f"README line not in any chapter's output: {line!r}"


def test_error_excerpts_are_real(tmp_path, monkeypatch, trained_model_path):
    monkeypatch.chdir(tmp_path)
    shown = [line for block in TEXT_BLOCKS for line in block.splitlines() if line.startswith("error: ")]
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


@pytest.fixture(scope="module")
def readers_folder(tmp_path_factory, all_runs):
    """An empty folder outside the repository, next to a copy of what the walkthrough wrote."""
    folder = tmp_path_factory.mktemp("readers-project")
    for run in all_runs.values():
        shutil.copytree(run.artifacts, folder / "artifacts", dirs_exist_ok=True)
    return folder


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_every_python_block_runs_when_pasted_into_a_new_file(index, readers_folder):
    snippet = readers_folder / f"snippet_{index}.py"
    snippet.write_text(PYTHON_BLOCKS[index])
    result = subprocess.run(  # -I: the repository is not importable, as in the reader's own project
        [sys.executable, "-I", snippet.name],
        cwd=readers_folder,
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, (
        f"README python block {index} failed:\n{PYTHON_BLOCKS[index]}\n{result.stderr}"
    )


def test_readme_and_walkthrough_sh_run_the_chapters_in_the_same_order():
    in_readme = re.findall(r"^### \d+\. .* — `python (\S+\.py)`$", README, flags=re.MULTILINE)
    runs = re.findall(r"^run (.*)$", (REPO / "walkthrough.sh").read_text(), flags=re.MULTILINE)
    assert in_readme == CHAPTERS
    assert [run.split() for run in runs] == [[script, *ARGS.get(script, [])] for script in CHAPTERS]


def test_readme_states_the_python_the_pins_need():
    requires = re.search(r'requires-python = ">=(\S+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"Python {requires} or newer" in README

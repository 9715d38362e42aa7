"""Every chapter, turned into a notebook by jupytext and executed cell by cell in a real
Jupyter kernel, prints what it prints as a script: the cells carry the lesson.

Slow (a kernel per chapter), so marked `notebooks` and run apart:
    .venv/bin/python -m pytest -m notebooks
"""

from __future__ import annotations

import re
import shutil

import jupytext
import pytest
from nbclient import NotebookClient

from tests.helpers import CHAPTERS, READS, REPO

pytestmark = pytest.mark.notebooks

# Lines whose numbers are measured, not computed, and so differ between two runs.
VARYING = re.compile(r"\d+\.\d{4}\b|\d\.\d\dx\b|blocked|seconds| s\b|ms\b|MB|peak|x raw|^Rows written")


def notebook_output(script: str, cwd) -> tuple[str, int]:
    """Execute the chapter as a notebook in `cwd`; its cells' printed output, and how many
    cells printed or drew something."""
    notebook = jupytext.read(REPO / script)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    printed, showing = [], 0
    for cell in notebook.cells:
        outputs = cell.get("outputs", [])
        showing += any(
            output.get("output_type") in {"stream", "display_data", "execute_result"} for output in outputs
        )
        printed += [
            output["text"]
            for output in outputs
            if output.get("output_type") == "stream" and output["name"] == "stdout"
        ]
    return "".join(printed), showing


def stable_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not VARYING.search(line)]


# The chapters made of `# %%` cells, a few at least: every one of them.
CELL_CHAPTERS = [script for script in CHAPTERS if (REPO / script).read_text().count("\n# %%") >= 3]


def test_every_chapter_is_made_of_cells():
    assert CHAPTERS == CELL_CHAPTERS


@pytest.mark.parametrize("script", CELL_CHAPTERS)
def test_chapter_runs_as_a_notebook_and_prints_what_the_script_prints(
    script, tmp_path, chapter_runs, monkeypatch
):
    # The kernel runs in tmp_path and finds the chapters' modules as a notebook beside them would.
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = chapter_runs.get(script)
    (tmp_path / "artifacts").mkdir()
    for name in READS.get(script, []):
        shutil.copy(chapter_runs.get("train_iris.py").artifacts / name, tmp_path / "artifacts" / name)
    printed, showing = notebook_output(script, tmp_path)
    assert stable_lines(printed) == stable_lines(run.stdout)
    code_cells = [cell for cell in jupytext.read(REPO / script).cells if cell.cell_type == "code"]
    assert showing >= len(code_cells) // 2, "most cells should show the reader something"

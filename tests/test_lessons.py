"""The chapters read as tutorials: plain PyTorch in every teaching cell, and notebooks whose
prose is markdown.

A reader copies a teaching cell (any code cell after the first) into their own project.
There it has torch, the usual libraries, a model of their own and the names the chapter
defined in earlier cells, but none of this project's support code. These tests read the
chapters' cells the way jupytext does and check just that.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

from tests.helpers import CHAPTERS, REPO

NOTEBOOK_CHAPTERS = CHAPTERS
README = (REPO / "README.md").read_text()


def notebook(script: str):
    return jupytext.reads((REPO / script).read_text(), fmt="py:percent")


def code_cells(script: str) -> list[str]:
    return [cell.source for cell in notebook(script).cells if cell.cell_type == "code"]


def support_names(tree: ast.Module) -> dict[str, str]:
    """Names the chapter imports from support/, apart from the demonstration tools and the
    article's settings (a seed, a file name: a copier has values of their own)."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "support":
            if node.module not in ("support.lab_tools", "support.settings"):
                names.update({alias.asname or alias.name: node.module for alias in node.names})
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "support":
                    names[alias.asname or alias.name.split(".")[0]] = alias.name
    return names


def loaded_names(source: str) -> set[str]:
    return {
        node.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)
    }


@pytest.mark.parametrize("script", NOTEBOOK_CHAPTERS)
def test_teaching_cells_use_no_support_code(script):
    support = support_names(ast.parse((REPO / script).read_text()))
    cells = code_cells(script)
    assert len(cells) >= 3, script
    leaning = {
        f"cell {number}": sorted(loaded_names(cell) & support.keys())
        for number, cell in enumerate(cells[1:], start=2)
        if loaded_names(cell) & support.keys()
    }
    assert not leaning, f"{script}: teaching cells use support code: {leaning}"


def test_the_check_catches_a_cell_that_leans_on_support_code():
    source = "from support.cli import fail\n\n# %%\nx = 1\n\n# %%\nfail('no')\n"
    support = support_names(ast.parse(source))
    cells = [c.source for c in jupytext.reads(source, fmt="py:percent").cells if c.cell_type == "code"]
    assert loaded_names(cells[-1]) & support.keys() == {"fail"}


def is_bare_string(source: str) -> bool:
    body = ast.parse(source).body
    return len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)


def shows_something(source: str) -> bool:
    """True if running the cell prints or displays: a call or expression at top level, or a
    loop, with or if block (whose body prints)."""
    shows = ast.Expr | ast.For | ast.While | ast.With | ast.If | ast.Try
    return any(isinstance(node, shows) for node in ast.parse(source).body)


@pytest.mark.parametrize("script", NOTEBOOK_CHAPTERS)
def test_the_notebook_reads_like_a_tutorial(script):
    cells = notebook(script).cells
    opening = cells[0]
    assert opening.cell_type == "markdown", f"{script}: the notebook opens with code"
    assert opening.source.lstrip().startswith("# "), f"{script}: the first cell has no title"
    assert re.search(r"[Cc]hapter \d", opening.source), f"{script}: the first cell does not give its number"
    assert sum(cell.cell_type == "markdown" for cell in cells) >= 3
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        assert not is_bare_string(cell.source), f"{script} cell {index}: a bare string"
        first_line = cell.source.lstrip().splitlines()[0] if cell.source.strip() else ""
        assert not re.match(r"# #+ ", first_line), f"{script} cell {index}: a heading in a code comment"
        first_code = index == next(i for i, c in enumerate(cells) if c.cell_type == "code")
        if not first_code and not shows_something(cell.source):
            assert cells[index - 1].cell_type == "markdown", (
                f"{script} cell {index} shows nothing and no markdown above it says what it defines"
            )


@pytest.mark.parametrize("script", CHAPTERS)
def test_the_docstring_names_the_chapter_and_the_next(script):
    doc = ast.get_docstring(ast.parse((REPO / script).read_text())) or ""
    text = doc + "\n" + notebook(script).cells[0].source
    number = CHAPTERS.index(script) + 1
    assert f"hapter {number}" in text, script
    if number < len(CHAPTERS):
        assert CHAPTERS[number] in text, f"{script} does not name the next chapter, {CHAPTERS[number]}"


def test_the_readmes_jupytext_command_makes_notebooks_that_name_their_kernel(tmp_path):
    install = re.search(r"^\.venv/bin/python -m ipykernel install .*$", README, re.M).group(0)
    convert = re.search(r"^\.venv/bin/jupytext .*?(?<!\\)$", README, re.M | re.S).group(0)
    kernel = re.search(r"--name (\S+)", install).group(1)
    assert f"--set-kernel {kernel}" in convert
    env = {**os.environ, "JUPYTER_DATA_DIR": str(tmp_path / "jupyter"), "HOME": str(tmp_path)}
    bin_dir = Path(sys.executable).parent
    install_args = shlex.split(install)[1:]
    subprocess.run([sys.executable, *install_args], env=env, check=True, capture_output=True)
    convert_args = shlex.split(convert.replace("\\\n", " "))
    chapter_files = [arg for arg in convert_args if arg.endswith(".py")]
    assert chapter_files == NOTEBOOK_CHAPTERS
    options = [arg for arg in convert_args[1:] if not arg.endswith(".py")]
    (tmp_path / "train_iris.py").write_text((REPO / "train_iris.py").read_text())
    subprocess.run(
        [bin_dir / "jupytext", *options, "train_iris.py"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
    )
    made = jupytext.read(tmp_path / "train_iris.ipynb")
    assert made.metadata["kernelspec"]["name"] == kernel

"""The recipes: files a copier takes whole, run the way a copier runs them.

Each recipe is copied alone into an empty folder and started as `python NAME.py` there, where
nothing of this project can be imported: forked from the chapter server in the default step
(its sys.path is what a fresh interpreter in that folder has), and in a fresh interpreter in
the slow step. Each must exit 0 with nothing on stderr, leave the folder as it found it, and
end with the `ok: ...` line that recipes/README.md shows for it.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import CHAPTER_SERVER, RECIPES, REPO, SCRIPT_ENV, SLOW_RECIPES, missing_for, recipe_needs

INDEX = (REPO / "recipes" / "README.md").read_text()
# | the problem, in the words a user searches for | [NAME.py](NAME.py) | `ok: what it proved` |
INDEX_ROW = re.compile(r"^\| (.+?) \| \[([\w.]+\.py)\]\(\2\) \| `(ok: [^`]+)` \|$", re.MULTILINE)
MAX_LINES = 95  # beside the docstring: a copier sees the lines they came for without scrolling far


def index_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for problem, recipe, printed in INDEX_ROW.findall(INDEX):
        assert recipe not in rows, f"{recipe} has two rows"
        rows[recipe] = (problem, printed)
    return rows


def source(recipe: str) -> str:
    return (REPO / "recipes" / recipe).read_text()


def check_run(recipe: str, stdout: str, folder: Path) -> None:
    lines = stdout.splitlines()
    assert lines, f"{recipe} printed nothing"
    assert lines[-1].startswith("ok: "), f"{recipe} does not end with its ok line: {lines[-1]!r}"
    assert lines[-1] == index_rows()[recipe][1], f"{recipe}'s ok line differs from recipes/README.md"
    assert [path.name for path in folder.iterdir()] == [recipe], f"{recipe} left files behind"


def test_there_are_recipes_for_the_problems_users_meet_most():
    assert len(RECIPES) >= 20


@pytest.mark.parametrize("recipe", sorted(set(RECIPES) - SLOW_RECIPES))  # the others: the slow step
def test_the_recipe_runs_alone_and_proves_what_it_teaches(recipe, recipe_run):
    check_run(recipe, recipe_run.stdout, recipe_run.cwd)
    if recipe.startswith("fix_"):  # a problem recipe reproduces the real error before fixing it
        assert any(line.startswith("problem: ") for line in recipe_run.stdout.splitlines()), recipe


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_recipe_imports_only_the_standard_library_torch_and_what_it_names(recipe):
    allowed = {"torch", *recipe_needs(recipe)}
    tree = ast.parse(source(recipe))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{recipe}: a relative import"
            modules = [node.module or ""]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            assert top in sys.stdlib_module_names or top in allowed, f"{recipe} imports {module}"
    assert "torch" in recipe_needs(recipe)


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_docstring_gives_the_problem_the_fix_the_command_and_the_chapter(recipe):
    doc = ast.get_docstring(ast.parse(source(recipe))) or ""
    lines = doc.splitlines()
    assert len(lines[0]) > 20, f"{recipe}: no first line saying the problem or task"
    assert f"Run: python {recipe}" in lines, recipe
    chapter = next(line for line in lines if line.startswith("Chapter: "))
    script = chapter.removeprefix("Chapter: ").split(",")[0].split()[0]
    assert (REPO / script).is_file(), f"{recipe} names {script}, which is not a chapter"
    if recipe.startswith("fix_"):
        assert any(line.startswith("Fix: ") for line in lines), recipe
    body = source(recipe).split('"""', 2)[2]
    assert len(body.strip().splitlines()) <= MAX_LINES, f"{recipe} is long for a recipe"
    assert re.search(r"^\s*assert ", body, re.MULTILINE), f"{recipe} asserts nothing"


def test_every_recipe_has_one_row_in_the_index_and_every_row_a_recipe():
    assert sorted(index_rows()) == RECIPES
    for recipe, (problem, _) in index_rows().items():
        assert len(problem.split()) >= 4, f"{recipe}: the index does not say what problem it solves"


def test_the_front_readme_points_to_the_index():
    readme = (REPO / "README.md").read_text()
    assert "(recipes/README.md)" in readme


def test_a_copied_recipe_cannot_import_this_project(tmp_path):
    """What the default step promises: the fork a recipe runs in sees none of this project."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib.util, sys\n"
        "project = ('build_model', 'support', 'tests', 'train_iris')\n"
        "print([name for name in project if importlib.util.find_spec(name)], sys.path[0])\n"
    )
    result = CHAPTER_SERVER.start(str(probe), cwd=tmp_path).wait(60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"[] {tmp_path}\n"


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_the_recipe_runs_in_a_fresh_interpreter_copied_alone_into_an_empty_folder(recipe, tmp_path):
    if reason := missing_for(recipe):
        pytest.skip(reason)
    (tmp_path / recipe).write_text(source(recipe))
    env = {key: value for key, value in SCRIPT_ENV.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        # a temporary folder left to be cleaned up at exit would warn here: each recipe removes its own
        [sys.executable, "-W", "error::ResourceWarning", recipe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    check_run(recipe, result.stdout, tmp_path)

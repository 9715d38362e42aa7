"""The benchmarks measure real processes and print their tables; what the numbers are is the
machine's business, the arithmetic is theirs."""

from __future__ import annotations

import re
import sys

import pytest

from tests.helpers import REPO, run_script

RATIO = r"\d+\.\d\dx"


@pytest.fixture
def benchmarks(monkeypatch):
    """The benchmarks' modules, imported as the scripts import each other."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import chapters_vs_floor
    import floor

    return chapters_vs_floor, floor


def test_the_table_gives_each_chapter_and_the_total_in_floors(benchmarks):
    chapters_vs_floor, floor = benchmarks
    costs = {
        "floor": floor.Cost(cpu=2.0, wall=4.0),
        "build_model.py": floor.Cost(cpu=1.0, wall=2.0),
        "train_iris.py": floor.Cost(cpu=5.0, wall=6.0),
    }
    assert [line.split() for line in chapters_vs_floor.table(costs, rounds=3)] == [
        ["chapter", "CPU", "x", "floor", "wall", "x", "floor"],
        ["build_model.py", "0.50x", "0.50x"],
        ["train_iris.py", "2.50x", "1.50x"],
        ["total", "(2", "chapters)", "3.00x", "2.00x"],
        ["floor:", "median", "2.00", "s", "CPU,", "4.00", "s", "wall,", "over", "3", "rounds"],
    ]


def test_the_median_is_taken_of_cpu_and_of_wall_separately(benchmarks):
    _, floor = benchmarks
    rounds = [floor.Cost(cpu=3.0, wall=1.0), floor.Cost(cpu=1.0, wall=9.0), floor.Cost(cpu=2.0, wall=5.0)]
    assert floor.median_cost(rounds) == floor.Cost(cpu=2.0, wall=5.0)


def test_a_measured_process_costs_cpu_and_a_failing_one_stops_the_benchmark(benchmarks, tmp_path):
    _, floor = benchmarks
    cost = floor.measure([sys.executable, "-c", "sum(range(10**6))"], tmp_path)
    assert cost.cpu > 0 and cost.wall > 0
    with pytest.raises(SystemExit, match=r"failed \(exit 3\): boom"):
        floor.measure([sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"], tmp_path)


@pytest.mark.slow
def test_chapters_vs_floor_prints_one_row_per_chapter_then_the_total_and_the_floor(tmp_path):
    result = run_script(
        "benchmarks/chapters_vs_floor.py", "--rounds", "1", "--only", "build_model.py", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["chapter", "CPU", "x", "floor", "wall", "x", "floor"]
    assert re.fullmatch(rf"build_model\.py +{RATIO} +{RATIO}", lines[1]), lines[1]
    assert re.fullmatch(rf"total \(1 chapters\) +{RATIO} +{RATIO}", lines[2]), lines[2]
    assert re.fullmatch(r"floor: median \d+\.\d\d s CPU, \d+\.\d\d s wall, over 1 rounds", lines[3])
    assert len(lines) == 4
    assert list(tmp_path.iterdir()) == []  # it wrote only into its own temporary folder


def test_chapters_vs_floor_refuses_a_name_that_is_not_a_chapter_before_timing_anything(tmp_path):
    result = run_script("benchmarks/chapters_vs_floor.py", "--only", "train.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("error: argument --only: invalid choice: 'train.py'")
    assert result.stderr.count("\n") == 1

"""The benchmarks run and print their tables; what the numbers are is the machine's business."""

from __future__ import annotations

import re

from tests.helpers import run_script

RATIO = r"\d+\.\d\dx"


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

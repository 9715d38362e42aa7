"""The default suite runs each chapter in a process forked from a warmed-up server (its imports
already done). This slow check runs all eleven, in reading order, both ways, and shows that a
fresh interpreter prints the same lines and writes the same files: only numbers that measure
time or memory may differ. Both print nothing on stderr.
"""

from __future__ import annotations

import re

import pytest

from tests.helpers import ARGS, CHAPTERS, run_script, run_script_for_real

pytestmark = pytest.mark.slow


# compare_formats.py prints this line only when a mapped load beat the raw read: a measurement.
MEASURED_ONLY = re.compile(r"\n\nLoads below 1x raw [^\n]*")  # with its blank line


def masked(output: str) -> list[str]:
    """The lines, with every number replaced and runs of spaces (a table's padding) collapsed."""
    numbers = re.sub(r"\d+(\.\d+)?", "#", MEASURED_ONLY.sub("", output))
    return [re.sub(r" +", " ", line).strip() for line in numbers.splitlines()]


def test_a_fresh_interpreter_prints_and_writes_what_the_forked_run_does(tmp_path):
    forked_folder, real_folder = tmp_path / "forked", tmp_path / "real"
    forked_folder.mkdir()
    real_folder.mkdir()
    for script in CHAPTERS:
        args = ARGS.get(script, [])
        forked = run_script(script, *args, cwd=forked_folder)
        real = run_script_for_real(script, *args, cwd=real_folder)
        assert (real.returncode, forked.returncode) == (0, 0), f"{script}:\n{real.stderr}\n{forked.stderr}"
        assert masked(real.stdout) == masked(forked.stdout), script
        # Nothing the reader did not ask for: no warning, and nothing printed as the process ends
        # (what a forked run, which leaves with os._exit, could not show).
        assert real.stderr == forked.stderr == "", f"{script}:\n{real.stderr}"
    written = sorted(p.relative_to(real_folder) for p in real_folder.rglob("*"))
    assert written == sorted(p.relative_to(forked_folder) for p in forked_folder.rglob("*"))
    assert len(written) > 10  # every chapter's files, not an empty folder twice

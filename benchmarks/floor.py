"""What the benchmarks share: the floor every chapter pays, and whole processes timed.

The floor is starting Python with what every training script needs before its first step:
`import torch`, scikit-learn's data helpers, and building one `torch.optim` optimizer
(whose first construction imports `torch._dynamo`). A chapter's cost is read in floors:
wall time on a shared machine is noisy, the ratio much less so.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from support.cli import OneLineParser, positive_int  # noqa: E402 -- after the path that finds it

FLOOR = (
    "import torch\n"
    "from sklearn.datasets import load_iris\n"
    "from sklearn.model_selection import train_test_split\n"
    "torch.optim.Adam([torch.zeros(1, requires_grad=True)])\n"
)
FLOOR_COMMAND = [sys.executable, "-c", FLOOR]
# Every process gets one thread (as the tests run the chapters), no window, and writes no
# bytecode next to the sources: the benchmarks write only into their temporary folder.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}


@dataclass(frozen=True)
class Cost:
    """One whole process: CPU seconds (user + sys, its children included) and wall seconds."""

    cpu: float
    wall: float


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(command: list[str], cwd: Path) -> Cost:
    """Run `command` to the end in `cwd`; fail with what it printed on stderr if it fails.

    RUSAGE_CHILDREN counts every process this one waited for, and their own waited-for
    children (a chapter's ranks), so its growth over one run is that run's CPU time."""
    cpu_before, start = children_cpu(), time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command[1:])} failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return Cost(children_cpu() - cpu_before, wall)


def median_cost(costs: list[Cost]) -> Cost:
    """The median CPU and the median wall time, each over all the rounds."""
    return Cost(statistics.median(c.cpu for c in costs), statistics.median(c.wall for c in costs))


def rounds_parser(description: str, default: int) -> OneLineParser:
    parser = OneLineParser(description=description)
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=default,
        help=f"alternating runs of each, at least 1 (default: {default})",
    )
    return parser

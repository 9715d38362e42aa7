"""How much does training cost on top of starting Python with torch and scikit-learn?

Every training script pays a floor before its first step: `import torch`, scikit-learn's
data helpers, and building one `torch.optim` optimizer (whose first construction imports
`torch._dynamo`). This benchmark times whole processes -- the floor and `train_iris.py`
with its default settings -- alternately, and reports the median of each and their ratio.
Wall time on a shared machine is noisy: compare the ratio, not the seconds.

    python benchmarks/train_vs_floor.py [--rounds 7]

Writes only into a temporary folder.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
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


def wall_time(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds", type=positive_int, default=7, help="alternating runs of each, at least 1 (default: 7)"
    )
    args = parser.parse_args(argv)

    commands = {
        "floor (imports + one optimizer)": [sys.executable, "-c", FLOOR],
        "train_iris.py (defaults)": [sys.executable, str(REPO / "train_iris.py")],
        "train_iris.py --epochs 1": [sys.executable, str(REPO / "train_iris.py"), "--epochs", "1"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(wall_time(command, Path(scratch)))

    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, median in medians.items():
        print(f"{name:<34} median {median:6.2f} s  (min {min(times[name]):.2f} s)")
    floor, train, one_epoch = medians.values()
    print(f"ratio train_iris.py / floor: {train / floor:.2f}x over {args.rounds} rounds")
    rest = (train - one_epoch) / floor
    print(f"of which fixed costs (1 epoch): {one_epoch / floor:.2f}x, the other 99 epochs: {rest:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much does training cost on top of starting Python with torch and scikit-learn?

Every training script pays a floor before its first step (see benchmarks/floor.py). This
benchmark times whole processes -- the floor and `train_iris.py` with its default settings
-- alternately, and reports the median of each and their ratio. Wall time on a shared
machine is noisy: compare the ratio, not the seconds.

    python benchmarks/train_vs_floor.py [--rounds 7]

Writes only into a temporary folder.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from floor import FLOOR_COMMAND, REPO, measure, rounds_parser


def main(argv: list[str] | None = None) -> int:
    args = rounds_parser(__doc__.splitlines()[0], default=7).parse_args(argv)

    commands = {
        "floor (imports + one optimizer)": FLOOR_COMMAND,
        "train_iris.py (defaults)": [sys.executable, str(REPO / "train_iris.py")],
        "train_iris.py --epochs 1": [sys.executable, str(REPO / "train_iris.py"), "--epochs", "1"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(measure(command, Path(scratch)).wall)

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

"""What does each chapter cost, in floors (starting Python with torch and scikit-learn)?

Runs the floor (see benchmarks/floor.py) and the eleven chapters in reading order, as whole
processes with their default settings and one thread each, round after round, each round in
a fresh temporary folder (so every chapter does its first run, and the later chapters read
what train_iris.py wrote in that round). For each chapter it prints the median CPU time
(user + sys, its child processes included) and the median wall time, both in floors, and
the eleven chapters' total: what `bash walkthrough.sh` costs after its setup.

    python benchmarks/chapters_vs_floor.py [--rounds 3] [--only train_iris.py ...]

Writes only into a temporary folder.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from floor import FLOOR_COMMAND, REPO, Cost, measure, median_cost, rounds_parser

# Reading order, with the arguments walkthrough.sh gives each chapter.
CHAPTERS = {
    "build_model.py": [],
    "train_iris.py": [],
    "inspect_state.py": [],
    "save_load_demo.py": [],
    "checkpoint_resume.py": [],
    "resume_training_run.py": [],
    "load_tips.py": [],
    "compare_formats.py": [],
    "share_model.py": [],
    "distributed_checkpoint.py": [],
    "look_inside.py": [],
}
# The chapters that read the model train_iris.py saves: with --only, it runs first, untimed.
READ_THE_TRAINED_MODEL = {
    "inspect_state.py",
    "save_load_demo.py",
    "load_tips.py",
    "compare_formats.py",
    "share_model.py",
    "look_inside.py",
}


def chapter_command(script: str) -> list[str]:
    return [sys.executable, str(REPO / script), *CHAPTERS[script]]


def one_round(chosen: list[str]) -> dict[str, Cost]:
    """The floor, then each chosen chapter in reading order, in a fresh folder."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        costs = {"floor": measure(FLOOR_COMMAND, folder)}
        if READ_THE_TRAINED_MODEL & set(chosen) and "train_iris.py" not in chosen:
            measure(chapter_command("train_iris.py"), folder)
        for script in chosen:
            costs[script] = measure(chapter_command(script), folder)
    return costs


def table(medians: dict[str, Cost], rounds: int) -> list[str]:
    floor = medians.pop("floor")

    def row(name: str, cost: Cost) -> str:
        return f"{name:<28} {cost.cpu / floor.cpu:>11.2f}x {cost.wall / floor.wall:>12.2f}x"

    total = Cost(sum(c.cpu for c in medians.values()), sum(c.wall for c in medians.values()))
    return [
        f"{'chapter':<28} {'CPU x floor':>12} {'wall x floor':>13}",
        *(row(script, cost) for script, cost in medians.items()),
        row(f"total ({len(medians)} chapters)", total),
        f"floor: median {floor.cpu:.2f} s CPU, {floor.wall:.2f} s wall, over {rounds} rounds",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = rounds_parser(__doc__.splitlines()[0], default=3)
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(CHAPTERS),
        metavar="CHAPTER",
        help="time only these chapters (still in reading order)",
    )
    args = parser.parse_args(argv)
    chosen = [script for script in CHAPTERS if args.only is None or script in args.only]

    runs = [one_round(chosen) for _ in range(args.rounds)]
    medians = {name: median_cost([run[name] for run in runs]) for name in runs[0]}
    print("\n".join(table(medians, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Regenerate the README's pictures: run the chapters that draw them, copy the PNGs here.

    python docs/make_pictures.py [--into FOLDER]

Runs train_iris.py, checkpoint_resume.py and compare_formats.py with their default settings
in a temporary folder, as a reader would, and copies the pictures they draw into docs/ (or
FOLDER). The training and resume pictures come out the same on every run; the formats
picture shows this machine's timings, which change from run to run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PICTURES = {  # picture -> the chapter that draws it; run in this order
    "training-curves.png": "train_iris.py",
    "resume.png": "checkpoint_resume.py",
    "formats.png": "compare_formats.py",  # reads the model train_iris.py saved
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--into", type=Path, default=REPO / "docs", help="where the pictures go (default: docs/)"
    )
    args = parser.parse_args()
    if not args.into.is_dir():
        parser.error(f"--into {args.into} is not a folder")
    with tempfile.TemporaryDirectory(prefix="pictures-") as scratch:
        for picture, chapter in PICTURES.items():
            result = subprocess.run(
                [sys.executable, str(REPO / chapter)],
                cwd=scratch,
                capture_output=True,
                text=True,
                check=False,
            )
            drawn = Path(scratch) / "artifacts" / picture
            if result.returncode != 0 or not drawn.exists():
                last = result.stderr.strip().splitlines()[-1:] or [
                    f"{picture} was not drawn (is matplotlib installed?)"
                ]
                print(f"error: {chapter}: {last[0]}", file=sys.stderr)
                return 1
            shutil.copy(drawn, args.into / picture)
            print(f"{args.into / picture}  (from python {chapter})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

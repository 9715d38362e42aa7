"""The article's settings, shared by every chapter, and the names of the files they pass on.

Nothing here imports torch: a chapter reads its flags' defaults from here, so `--help`, a
bad flag and a missing input file are answered before torch is imported.
"""

from __future__ import annotations

import shlex
from pathlib import Path

SEED = 42  # seeds weight initialisation and batch order in every chapter
DATA_SEED = 42  # fixes the train/test split (not moved by --seed): every chapter scores the same 45 flowers
TEST_FRACTION = 0.3  # the article's 70/30 split
MODEL_FILE = "iris-model.pth"  # the trained state_dict that chapter 2 writes
SPECIES = ("setosa", "versicolor", "virginica")  # class index -> name, as in load_iris()
LEARNING_RATE = 0.001  # the article's Adam learning rate
BATCH_SIZE = 5  # the article's mini-batch size


def train_command(out_dir: Path) -> str:
    """The command that writes OUT_DIR/iris-model.pth, for a chapter that finds it missing."""
    return f"python train_iris.py --out-dir {shlex.quote(str(out_dir))}"

"""Chapter 2: train the Multiclass network on iris and save its state_dict.

The article's training script, with its bugs fixed:
- it looped over `len(X)` instead of `len(X_train)`, so a third of its steps were empty
  batches with a nan loss; here each epoch covers the training set exactly once;
- it scored the model without `model.eval()` and `torch.no_grad()`; here `predict` does both;
- it set no seed, so accuracy swung from run to run; here the same `--seed` gives
  bit-identical weights.

Run:

    python train_iris.py [--epochs 100] [--batch-size 5] [--lr 0.001] [--seed 42]

Writes OUT_DIR/iris-model.pth (default artifacts/iris-model.pth), a plain state_dict that
loads with `torch.load(path, weights_only=True)`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from build_model import (
    MODEL_FILE,
    SEED,
    IrisSplit,
    Multiclass,
    accuracy,
    chapter_parser,
    fail,
    load_iris_split,
    make_optimizer,
    positive_int,
    prepare_out_dir,
    seed_everything,
    train_one_epoch,
)

EPOCHS = 100  # the article's setting; accuracy settles well before the end
BATCH_SIZE = 5  # small batches: 21 optimizer steps per epoch on 105 flowers
LEARNING_RATE = 0.001  # Adam's usual default, as in the article
REPORT_EVERY = 10  # epochs between progress lines


# %%
# # Training
#
# Each epoch shuffles the 105 training flowers with the seeded torch generator and takes
# one Adam step per mini-batch. Every few epochs we score both sets; `accuracy` switches
# the model to eval mode and `train_one_epoch` switches it back.


def train(split: IrisSplit, epochs: int, batch_size: int, lr: float) -> Multiclass:
    model = Multiclass()
    optimizer = make_optimizer(model, lr)
    for epoch in range(1, epochs + 1):
        loss = train_one_epoch(model, optimizer, split.X_train, split.y_train, batch_size)
        if epoch % REPORT_EVERY == 0 or epoch == epochs:
            train_acc = accuracy(model, split.X_train, split.y_train)
            test_acc = accuracy(model, split.X_test, split.y_test)
            print(f"epoch {epoch:4d}  loss {loss:.4f}  train acc {train_acc:.3f}  test acc {test_acc:.3f}")
    return model


# %%
# # Saving
#
# Save the state_dict, not the model object: the file then holds only names and tensors,
# loads with `weights_only=True`, and does not depend on where the class was defined
# (chapter 4 shows what goes wrong otherwise).


def save_state_dict(model: Multiclass, path: Path) -> None:
    try:
        torch.save(model.state_dict(), path)
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = chapter_parser(__doc__)
    parser.add_argument("--epochs", type=positive_int, default=EPOCHS, help=f"(default: {EPOCHS})")
    parser.add_argument(
        "--batch-size", type=positive_int, default=BATCH_SIZE, help=f"(default: {BATCH_SIZE})"
    )
    parser.add_argument("--lr", type=float, default=LEARNING_RATE, help=f"(default: {LEARNING_RATE})")
    parser.add_argument("--seed", type=int, default=SEED, help=f"(default: {SEED})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = prepare_out_dir(args.out_dir)
    seed_everything(args.seed)
    split = load_iris_split()

    model = train(split, args.epochs, args.batch_size, args.lr)
    print(f"Accuracy: {accuracy(model, split.X_test, split.y_test):.2f}")

    path = out_dir / MODEL_FILE
    save_state_dict(model, path)
    print(f"Saved the state_dict to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

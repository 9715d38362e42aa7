"""Chapter 5: checkpoints that resume training exactly, saved so that a crash cannot ruin them.

A state_dict is enough to *use* a model. To stop training and carry on later you need more:
the optimizer's state, the epoch, and the state of every random number generator. This
chapter saves all of it, proves that a run resumed in a new process ends bit-identical to
one that never stopped, and measures what goes wrong when a piece is left out.

Run the chapter (an uninterrupted run, an interrupted one, a resume, and the comparison):

    python checkpoint_resume.py [--epochs 100] [--interrupt-at 60] [--save-every 10]

Use it on your own training, stopping and resuming as you like:

    python checkpoint_resume.py --resume [--epochs 100]

Writes OUT_DIR/iris-checkpoint.pth (default artifacts/iris-checkpoint.pth) every
`--save-every` epochs and at the end; `--resume` reads it. The demonstration also keeps the
interrupted run's checkpoint as OUT_DIR/iris-checkpoint-epoch60.pth.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from build_model import (
    SEED,
    IrisSplit,
    ModelFileError,
    Multiclass,
    chapter_parser,
    check_state_dict_fits,
    fail,
    flat_tensors,
    heading,
    load_iris_split,
    make_optimizer,
    positive_int,
    prepare_out_dir,
    read_weights_file,
    refusing,
    same_state,
    seed_everything,
    train_one_epoch,
)

CHECKPOINT_FILE = "iris-checkpoint.pth"
EPOCHS = 100  # as in chapter 2
INTERRUPT_AT = 60  # the demonstration stops here, as if the machine had died
SAVE_EVERY = 10  # epochs between checkpoints; a crash loses at most this much work
BATCH_SIZE = 5  # as in chapter 2
MAX_WIDTH = 4096  # refuse model_args that would build an absurdly large model
CHECKPOINT_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "loss", "model_args", "rng_state")


# %%
# # What a checkpoint holds
#
# The official tutorial's keys (`epoch`, `model_state_dict`, `optimizer_state_dict`,
# `loss`), so code written from it reads these files, plus two it leaves out: the model's
# constructor arguments, so the file alone can rebuild the model, and the random number
# generators' states, so shuffling continues where it stopped. Everything is a tensor, a
# number, a string or a container of those: the file loads with `weights_only=True`.
# NumPy's and Python's generator states are converted to tensors for that reason.


def capture_rng_state() -> dict[str, Any]:
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": py_version, "internal": torch.tensor(py_internal), "gauss_next": py_gauss},
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"].tolist()), py_state["gauss_next"]))


def make_checkpoint(
    model: Multiclass, optimizer: torch.optim.Optimizer, epoch: int, loss: float
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": optimizer.state_dict(),
        "loss": loss,
        "model_args": model.constructor_args(),
        "rng_state": capture_rng_state(),
    }


# %%
# # Saving so that a crash cannot ruin the last good checkpoint
#
# `torch.save(checkpoint, path)` overwrites the file in place: a crash or a full disk in
# the middle leaves half a file, and the previous checkpoint is gone too. Instead, write a
# temporary file in the same folder, flush it and `fsync` it to disk, then `os.replace` it
# over the old one. The rename is atomic: at every moment the path holds either the
# complete old checkpoint or the complete new one.


def save_atomically(obj: object, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    try:
        with partial.open("wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)  # noqa: PTH105 -- the atomic rename is the point
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


# %%
# # Training with checkpoints
#
# One loop serves a fresh run and a resumed one: it runs from `start_epoch` to `end_epoch`,
# saving every `save_every` epochs and after the last. Saving uses no random numbers, so a
# run with checkpoints computes exactly what a run without them does.


@dataclass
class TrainingState:
    model: Multiclass
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    loss: float = float("nan")


def start_training(seed: int) -> TrainingState:
    seed_everything(seed)
    model = Multiclass()
    return TrainingState(model, make_optimizer(model))


def train_until(
    state: TrainingState,
    split: IrisSplit,
    end_epoch: int,
    checkpoint_path: Path | None = None,
    save_every: int = SAVE_EVERY,
) -> TrainingState:
    while state.epoch < end_epoch:
        state.loss = train_one_epoch(state.model, state.optimizer, split.X_train, split.y_train, BATCH_SIZE)
        state.epoch += 1
        if checkpoint_path and (state.epoch % save_every == 0 or state.epoch == end_epoch):
            save_atomically(
                make_checkpoint(state.model, state.optimizer, state.epoch, state.loss), checkpoint_path
            )
    return state


# %%
# # Resuming from a file you did not necessarily write
#
# The checkpoint is read with `weights_only=True` and checked before anything is built from
# it: a damaged or foreign file is refused in one line, like the model files of chapter 4.
# Order matters when resuming: build the model, load its weights, create the optimizer over
# *those* parameters and load its state, and restore the generators last, since building
# a model draws random numbers.


def check_checkpoint(checkpoint: Any) -> None:
    """Raise ModelFileError unless `checkpoint` has this chapter's layout."""
    if not isinstance(checkpoint, Mapping) or not all(key in checkpoint for key in CHECKPOINT_KEYS):
        raise ModelFileError(f"not a training checkpoint (it needs the keys {', '.join(CHECKPOINT_KEYS)})")
    if not isinstance(checkpoint["epoch"], int) or checkpoint["epoch"] < 0:
        raise ModelFileError("its epoch is not a whole number >= 0")
    args = checkpoint["model_args"]
    expected_args = Multiclass().constructor_args()
    if (
        not isinstance(args, Mapping)
        or set(args) != set(expected_args)
        or not all(isinstance(v, int) and 1 <= v <= MAX_WIDTH for v in args.values())
    ):
        raise ModelFileError(f"its model_args are not {sorted(expected_args)} in 1..{MAX_WIDTH}")
    check_state_dict_fits(checkpoint["model_state_dict"], Multiclass(**args))


def resume_training(checkpoint_path: Path) -> TrainingState:
    made_by = f"python checkpoint_resume.py --out-dir {checkpoint_path.parent}"
    checkpoint = read_weights_file(checkpoint_path, made_by)
    with refusing(checkpoint_path):
        check_checkpoint(checkpoint)
        model = Multiclass(**checkpoint["model_args"])
        model.load_state_dict(checkpoint["model_state_dict"])
        optimizer = make_optimizer(model)
        try:
            optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
            restore_rng_state(checkpoint["rng_state"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as err:
            raise ModelFileError(f"its optimizer or RNG state is unusable ({type(err).__name__})") from None
    return TrainingState(model, optimizer, checkpoint["epoch"], checkpoint["loss"])


# %%
# # Why each piece matters, measured
#
# Resume from the interrupted run's checkpoint while leaving one piece out, train to the
# end, and compare the weights with the uninterrupted run. Without the optimizer state,
# Adam restarts its moment estimates from zero; without the generator states, the batches
# come in a different order (a naive resume re-seeds at start-up).


def max_weight_difference(a: Multiclass, b: Multiclass) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[key] - sb[key]).abs().max().item() for key in sa)


def resume_without(
    piece: str, checkpoint_path: Path, split: IrisSplit, end_epoch: int, seed: int
) -> Multiclass:
    """Resume as `resume_training` does, but leave out 'optimizer' or 'rng' state."""
    state = resume_training(checkpoint_path)
    if piece == "optimizer":
        state.optimizer = make_optimizer(state.model)
    elif piece == "rng":
        seed_everything(seed)
    else:
        raise ValueError(piece)
    return train_until(state, split, end_epoch).model


def full_state(state: TrainingState) -> dict[str, torch.Tensor]:
    """Every tensor of the model and the optimizer, under one flat set of names."""
    return flat_tensors({"model": state.model.state_dict(), "optimizer": state.optimizer.state_dict()})


def resume_in_new_process(args: argparse.Namespace) -> str:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--resume",
        f"--epochs={args.epochs}",
        f"--save-every={args.save_every}",
        f"--out-dir={args.out_dir}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        fail(f"the resumed run failed: {result.stderr.strip()}")
    return result.stdout


def demonstrate(args: argparse.Namespace) -> None:
    checkpoint_path = args.out_dir / CHECKPOINT_FILE
    interrupted_path = args.out_dir / f"iris-checkpoint-epoch{args.interrupt_at}.pth"
    split = load_iris_split()

    heading(f"1. Uninterrupted: {args.epochs} epochs")
    straight = train_until(start_training(args.seed), split, args.epochs)
    print(f"epoch {straight.epoch}, loss {straight.loss:.4f}")

    heading(f"2. The same run, interrupted after epoch {args.interrupt_at}")
    train_until(start_training(args.seed), split, args.interrupt_at, checkpoint_path, args.save_every)
    checkpoint = read_weights_file(checkpoint_path, made_by="")
    save_atomically(checkpoint, interrupted_path)  # kept for step 4
    print(f"{checkpoint_path}: epoch {checkpoint['epoch']}, keys {', '.join(checkpoint)}")
    print(f"model_args: {checkpoint['model_args']}")

    heading("3. Resumed in a new Python process")
    print(f"$ python checkpoint_resume.py --resume --epochs {args.epochs} --out-dir {args.out_dir}")
    print("".join(f"  {line}\n" for line in resume_in_new_process(args).splitlines()), end="")

    heading("4. Resumed vs uninterrupted")
    resumed = resume_training(checkpoint_path)
    identical = same_state(full_state(resumed), full_state(straight))
    print(f"Every model and optimizer tensor bit-identical: {identical}")
    for piece, label in [("optimizer", "the optimizer state"), ("rng", "the RNG state")]:
        model = resume_without(piece, interrupted_path, split, args.epochs, args.seed)
        difference = max_weight_difference(model, straight.model)
        print(f"Resumed without {label + ':':<20} max |weight difference| {difference:.2e}")


def resume_command(args: argparse.Namespace) -> None:
    checkpoint_path = args.out_dir / CHECKPOINT_FILE
    if checkpoint_path.exists():
        state = resume_training(checkpoint_path)
        print(f"Resumed from {checkpoint_path} at epoch {state.epoch} (loss {state.loss:.4f})")
    else:
        print(f"No checkpoint at {checkpoint_path}: starting from epoch 0")
        state = start_training(args.seed)
    train_until(state, load_iris_split(), args.epochs, checkpoint_path, args.save_every)
    print(f"Trained to epoch {state.epoch} (loss {state.loss:.4f}); checkpoint saved to {checkpoint_path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = chapter_parser(__doc__)
    parser.add_argument("--epochs", type=positive_int, default=EPOCHS, help=f"(default: {EPOCHS})")
    parser.add_argument(
        "--interrupt-at",
        type=positive_int,
        default=INTERRUPT_AT,
        help=f"epoch after which the demonstration's run stops (default: {INTERRUPT_AT})",
    )
    parser.add_argument(
        "--save-every",
        type=positive_int,
        default=SAVE_EVERY,
        help=f"epochs between checkpoints (default: {SAVE_EVERY})",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue training from OUT_DIR/iris-checkpoint.pth if it exists, up to --epochs",
    )
    parser.add_argument("--seed", type=int, default=SEED, help=f"for a fresh start (default: {SEED})")
    args = parser.parse_args(argv)
    if not args.resume and args.interrupt_at >= args.epochs:
        parser.error(f"--interrupt-at ({args.interrupt_at}) must be below --epochs ({args.epochs})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_out_dir(args.out_dir)
    try:
        if args.resume:
            resume_command(args)
        else:
            demonstrate(args)
    except ModelFileError as err:
        fail(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())

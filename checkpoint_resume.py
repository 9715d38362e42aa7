# %% [markdown]
# # Chapter 5: checkpoints that resume training exactly
#
# A state_dict is enough to *use* a model. To stop training and carry on later you need
# more: the optimizer's state, the epoch, and the state of every random number generator.
# This chapter saves all of it in the official tutorial's layout, saves it so that a crash
# cannot ruin the last good file, shows that a run resumed in a new process ends
# bit-identical to one that never stopped, and measures what goes wrong when a piece is
# left out.
#
#     python checkpoint_resume.py [--epochs 30] [--interrupt-at 20] [--save-every 5]
#     python checkpoint_resume.py --resume [--epochs 30] [--save-every 5]
#
# The second command is a training run of your own that you can stop (Ctrl-C) and resume
# as often as you like.
#
# **Writes** `OUT_DIR/iris-checkpoint.pth` (default `artifacts/`) every `--save-every`
# epochs and after the last; the demonstration also keeps the checkpoint of the epoch it
# was interrupted at as `OUT_DIR/iris-checkpoint-epoch20.pth` and draws
# `OUT_DIR/resume.png` when matplotlib is installed (the `plots` extra). **Reads**
# `OUT_DIR/iris-checkpoint.pth` with `--resume`, if it exists.
#
# Next: chapter 6, `python resume_training_run.py`, a real run's schedule, scaler and EMA resumed.

# %%
from __future__ import annotations

import math
import os
import random
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

# The command line first, before torch is imported: --help, a bad flag and Ctrl-C are
# answered at once, in one line.
from support.cli import chapter_parser, parse_chapter_args, positive_int, prepare_out_dir, seed
from support.settings import BATCH_SIZE, LEARNING_RATE, SEED, SPECIES

CHECKPOINT_FILE = "iris-checkpoint.pth"
EPOCHS = 30  # long enough to see a resume that leaves a piece out drift away
INTERRUPT_AT = 20  # the demonstration pretends the machine died after this epoch
SAVE_EVERY = 5  # epochs between checkpoints: a crash loses at most this much work

parser = chapter_parser()
parser.add_argument(
    "--epochs",
    type=positive_int,
    default=EPOCHS,
    help=f"epochs to train in all; with --resume, the epoch to reach, counting those already in the "
    f"checkpoint (default: {EPOCHS})",
)
parser.add_argument(
    "--interrupt-at",
    type=positive_int,
    default=INTERRUPT_AT,
    help=f"the demonstration pretends the machine died after this epoch; must be below --epochs "
    f"(default: {INTERRUPT_AT})",
)
parser.add_argument(
    "--save-every",
    type=positive_int,
    default=SAVE_EVERY,
    help=f"epochs between checkpoints, one is also saved after the last epoch (default: {SAVE_EVERY})",
)
parser.add_argument(
    "--resume",
    action="store_true",
    help="instead of the demonstration, train up to --epochs, carrying on from OUT_DIR/iris-checkpoint.pth "
    "if it exists (starting fresh otherwise) and saving a checkpoint every --save-every epochs",
)
parser.add_argument(
    "--seed",
    type=seed,
    default=SEED,
    help=f"seeds the initial weights and the batch order of a run that starts fresh, not the train/test "
    f"split; a resumed run continues from the generator states in its checkpoint (default: {SEED})",
)
args = parse_chapter_args(parser)
if not args.resume and args.interrupt_at >= args.epochs:
    parser.error(f"--interrupt-at ({args.interrupt_at}) must be below --epochs ({args.epochs})")
out_dir = prepare_out_dir(args.out_dir)

import numpy as np
import torch

import build_model
from build_model import (
    Multiclass,
    flat_tensors,
    load_iris_split,
    same_state,
    seed_everything,
    train_one_epoch,
)
from support.lab_tools import resume_in_new_process
from support.pictures import import_pyplot
from support.saving import remove_abandoned_partials
from support.untrusted_files import read_checkpoint

SCRIPT = Path(build_model.__file__).with_name("checkpoint_resume.py")  # this file, in a notebook too
checkpoint_path = out_dir / CHECKPOINT_FILE
split = load_iris_split()
DATA_ARGS = {"n_features": split.X_train.shape[1], "n_classes": len(SPECIES)}  # what the data fixes
STEPS_PER_EPOCH = math.ceil(len(split.X_train) / BATCH_SIZE)  # Adam steps once per batch
remove_abandoned_partials(checkpoint_path)  # temporary files of runs that were killed while saving

# The one file this chapter reads, checked before any lesson uses it: a bad one ends the
# chapter here in one line (see "Resuming from a file you did not make" below).
checkpoint = None
if args.resume and checkpoint_path.exists():
    checkpoint = read_checkpoint(
        checkpoint_path,
        Multiclass,
        max_epoch=args.epochs,
        fixed_args=DATA_ARGS,
        steps_per_epoch=STEPS_PER_EPOCH,
    )
picture = out_dir / "resume.png"
plt = None if args.resume else import_pyplot(picture)  # None, after one line, without matplotlib

# %% [markdown]
# ## What a checkpoint holds
#
# The official tutorial's keys, `epoch`, `model_state_dict`, `optimizer_state_dict` and
# `loss`, so that code written from it reads these files, plus two it leaves out:
# `model_args`, the constructor arguments, so that the file alone rebuilds the model (as
# nanoGPT's checkpoints do), and `rng_state`, the state of every random number generator,
# so that a resumed run shuffles its batches exactly as the uninterrupted run would have.
#
# Everything in it is a tensor, a number, None, or a dict, list or tuple of those, so it
# loads with `torch.load(path, weights_only=True)`. That is why NumPy's and Python's
# generator states are turned into tensors here, and back when they are restored. The
# cell defines both directions, `rng_state()` and `restore_rng_state(state)`.
#
# To copy: `recipes/resume_training_checkpoint.py`; a NumPy number or a class of your own
# in a checkpoint: `recipes/fix_weights_only_numpy_scalar.py` and
# `recipes/fix_weights_only_custom_class.py`.

# %%


def rng_state() -> dict[str, Any]:
    """torch's, NumPy's and Python's generator states, as tensors and plain numbers."""
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),  # (5056,) uint8
        "numpy": {
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),  # (624,)
            "pos": int(numpy_pos),
            "has_gauss": int(numpy_has_gauss),
            "cached_gaussian": float(numpy_gauss),
        },
        "python": {
            "version": python_version,
            "internal": torch.tensor(python_internal),  # (625,)
            "gauss_next": python_gauss,
        },
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["internal"].tolist()), python_state["gauss_next"])
    )


# %% [markdown]
# ## Saving so that a crash cannot ruin the last checkpoint
#
# `torch.save(checkpoint, path)` overwrites the file in place: a crash, a kill or a full
# disk in the middle leaves half a file, and the previous checkpoint is gone with it. So
# write the new one under a temporary name of this process's own, in the same folder (two
# runs saving into one folder then never write the same file), push it to the disk, and
# only then rename it over the old one. `os.replace` is atomic: `path` is always the old
# file or the new one, never half of either. The cell defines `save_checkpoint`.
#
# To copy: `recipes/crash_safe_save.py`; keeping the last few and a `latest` pointer:
# `recipes/keep_last_k_checkpoints.py`.

# %%


def save_checkpoint(checkpoint: dict[str, Any], path: Path) -> None:
    """`torch.save(checkpoint, path)`, crash-safe."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with temporary.open("wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on the disk, not only in the OS's cache
        os.replace(temporary, path)  # noqa: PTH105 -- the atomic rename this cell teaches
    except (OSError, RuntimeError) as err:  # a full disk: torch.save reports it as a RuntimeError
        reason = err.strerror if isinstance(err, OSError) else str(err).splitlines()[0]
        print(f"error: cannot write {path}: {reason}; the previous checkpoint is unchanged", file=sys.stderr)
        sys.exit(2)
    finally:
        temporary.unlink(missing_ok=True)  # a save that failed, or was cut short, leaves nothing behind
    if os.name == "posix":  # make the rename itself survive a power cut
        folder = os.open(path.parent, os.O_RDONLY)
        os.fsync(folder)
        os.close(folder)


# %% [markdown]
# ## Training that saves a checkpoint every few epochs
#
# The loop of chapter 2, one epoch at a time (`train_one_epoch`), and every `--save-every`
# epochs and after the last one the checkpoint, written out as a dict. Saving draws no
# random numbers, so a run that saves computes exactly what a run that does not would.
# The cell defines `train`, which says each save as it makes it.

# %%


def train(
    model: Multiclass,
    optimizer: torch.optim.Optimizer,
    first_epoch: int,
    last_epoch: int,
    save_to: Path | None = None,
) -> list[float]:
    """Train epochs first_epoch + 1 to last_epoch and return each one's loss; with `save_to`,
    save a checkpoint there every --save-every epochs and after the last one."""
    losses = []
    for epoch in range(first_epoch + 1, last_epoch + 1):
        loss = train_one_epoch(model, optimizer, split.X_train, split.y_train)
        losses.append(loss)
        if save_to and (epoch % args.save_every == 0 or epoch == last_epoch):
            checkpoint = {
                "epoch": epoch,
                "model_state_dict": model.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "loss": loss,
                "model_args": model.constructor_args(),  # {'n_features': 4, 'n_hidden': 8, 'n_classes': 3}
                "rng_state": rng_state(),  # where the next epoch's shuffle starts
            }
            save_checkpoint(checkpoint, save_to)
            print(f"epoch {epoch:>3}: loss {loss:.4f}, checkpoint saved")
    return losses


# %% [markdown]
# ## Resuming: the official recipe
#
# Resuming undoes the save, in an order that matters. Build the model from `model_args`
# and load its weights. Then create the optimizer over *those* parameters and load its
# state: an optimizer created earlier, over another model's parameters, would go on
# updating tensors nobody uses (a bug that slips into tutorials). Restore the generators
# last, because building a model draws random numbers. The cell defines `resume_from`.

# %%


def resume_from(checkpoint: dict[str, Any]) -> tuple[Multiclass, torch.optim.Optimizer, int]:
    """The model, the optimizer and the epoch a checkpoint holds, with the generators restored."""
    model = Multiclass(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["model_state_dict"])
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    restore_rng_state(checkpoint["rng_state"])
    return model, optimizer, checkpoint["epoch"]


# %% [markdown]
# ## Resuming from a file you did not make
#
# `weights_only=True` guarantees that loading runs no code from the file, not that what
# it loads makes sense. A checkpoint can hold an optimizer state made for another model,
# a NaN learning rate, half-precision weights or an epoch of 500. Fed to the recipe, such
# a file fails halfway through training, or trains on into NaN and saves that; with a
# fused optimizer, wrong shapes can even crash the process. And a file that lacks part of
# the state (an optimizer entry, a generator) would resume, but not exactly.
#
# So the first cell checks the file before the recipe touches it: a regular file of a
# sane size, every record's CRC32 (`torch.load` checks none), data not nested absurdly
# deep, loaded with `weights_only=True`; then every field against the model: the keys,
# the epoch (a whole number, at most `--epochs`), the loss, `model_args`, the shape,
# dtype and layout of every tensor, the optimizer's settings and its state for every
# parameter (step counts that fit the epoch, finite moments), and all three generator
# states. A bad file gets one line and exit 2.
#
# ## Your own run: `--resume`
#
# With `--resume` the chapter is a training run you can stop at any moment (Ctrl-C, a
# crash, a power cut) and start again with the same command. It carries on from the
# last checkpoint, or starts fresh if there is none, up to `--epochs` in all; Ctrl-C ends
# it with one line naming the checkpoint on disk. The demonstration below runs exactly
# this in a new process.

# %%
if args.resume:
    if checkpoint is not None:  # read and checked in the first cell
        model, optimizer, start_epoch = resume_from(checkpoint)
        print(f"Resumed from {checkpoint_path} at epoch {start_epoch} (loss {checkpoint['loss']:.4f})")
    else:
        print(f"No checkpoint at {checkpoint_path}: starting from epoch 0 with --seed {args.seed}")
        seed_everything(args.seed)
        model = Multiclass()
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        start_epoch = 0
    if start_epoch == args.epochs:
        print(f"Nothing to train: the checkpoint is already at epoch {args.epochs}. Nothing was written.")
    else:
        print(
            f"Training epochs {start_epoch + 1} to {args.epochs}, saving a checkpoint every {args.save_every}"
        )
        losses = train(model, optimizer, start_epoch, args.epochs, save_to=checkpoint_path)
        print(
            f"Trained to epoch {args.epochs} (loss {losses[-1]:.4f}); checkpoint saved to {checkpoint_path}"
        )
    sys.exit(0)

print(
    f"The demonstration: {args.epochs} epochs, a checkpoint every {args.save_every}, "
    f"the machine 'dies' after epoch {args.interrupt_at}"
)

# %% [markdown]
# ## 1. Training until the machine "dies"
#
# Seed, build the model and the optimizer, and train, saving a checkpoint every
# `--save-every` epochs, until the machine "dies" after `--interrupt-at` epochs. The file
# on disk is then what a crash would have left. It loads with `weights_only=True`; a copy
# is kept for step 5.

# %%
print(f"\n## 1. Training, until the machine 'dies' after epoch {args.interrupt_at}")
seed_everything(args.seed)
model = Multiclass()
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
losses_before = train(model, optimizer, 0, args.interrupt_at, save_to=checkpoint_path)

checkpoint = torch.load(checkpoint_path, weights_only=True)
interrupted_path = out_dir / f"iris-checkpoint-epoch{args.interrupt_at}.pth"
shutil.copyfile(checkpoint_path, interrupted_path)
weights = checkpoint["model_state_dict"].values()
adam_step = checkpoint["optimizer_state_dict"]["state"][0]["step"]
print(f"{checkpoint_path} holds:")
for key, value in {
    "epoch": checkpoint["epoch"],
    "model_state_dict": f"{len(weights)} tensors, {sum(tensor.numel() for tensor in weights)} numbers",
    "optimizer_state_dict": f"Adam's step count ({int(adam_step)}) and two moving averages per weight",
    "loss": f"{checkpoint['loss']:.4f}",
    "model_args": checkpoint["model_args"],
    "rng_state": ", ".join(checkpoint["rng_state"]),
}.items():
    print(f"  {key:<21} {value}")
print(f"Kept a copy as {interrupted_path}")

# %% [markdown]
# ## 2. The run that never stopped
#
# The machine did not really die: this process trains the same model on to `--epochs`,
# without saving, exactly as a run that never stopped would. That is the reference. Every
# tensor of its model and optimizer is kept for the comparison in step 4.

# %%
print(f"\n## 2. The run that never stopped: on to epoch {args.epochs}")
uninterrupted_losses = losses_before + train(model, optimizer, args.interrupt_at, args.epochs)
uninterrupted = flat_tensors({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
print(f"epoch {args.epochs}: loss {uninterrupted_losses[-1]:.4f}")

# %% [markdown]
# ## 3. Resumed in a new process
#
# The real test of a checkpoint is a process that knows nothing but the file. The chapter
# runs itself again with `--resume`, exactly the command printed, as you would after a
# crash, and shows what that process prints as it prints it.

# %%
print("\n## 3. Resumed in a new Python process")
resume_flags = ["--resume", "--epochs", str(args.epochs), "--save-every", str(args.save_every)]
resume_flags += ["--out-dir", str(out_dir)]
print(f"$ python {SCRIPT.name} {shlex.join(resume_flags)}")
resume_in_new_process(SCRIPT, *resume_flags)

# %% [markdown]
# ## 4. Resumed vs uninterrupted
#
# The checkpoint the new process left against the run that never stopped: every weight,
# every Adam moment and step count, compared bit for bit with `torch.equal`.

# %%
print("\n## 4. Resumed vs uninterrupted")
final = torch.load(checkpoint_path, weights_only=True)
resumed = flat_tensors({"model": final["model_state_dict"], "optimizer": final["optimizer_state_dict"]})
identical = same_state(resumed, uninterrupted)
print(f"Every model and optimizer tensor bit-identical: {identical} ({len(resumed)} tensors)")
print(f"Same epoch and loss: {(final['epoch'], final['loss']) == (args.epochs, uninterrupted_losses[-1])}")

# %% [markdown]
# ## 5. Why each piece matters, measured
#
# Resume from the kept checkpoint again, in this process, three ways: with everything;
# without the optimizer state (a fresh Adam, whose moving averages restart from zero);
# and without the generator states (a naive resume that seeds at start-up, so the batches
# come in another order). Each trains to the end and is compared with the uninterrupted
# run, one row as each finishes.
#
# A real run carries more state: chapter 6 resumes it exactly; the recipes
# `recipes/resume_lr_scheduler_and_gradscaler.py`, `recipes/resume_mid_epoch.py` and
# `recipes/keep_ema_weights.py` take one piece each.

# %%
print(f"\n## 5. Resumed from epoch {args.interrupt_at} again, in this process")
checkpoint = torch.load(interrupted_path, weights_only=True)
resumes: dict[str, tuple[list[float], dict[str, torch.Tensor]]] = {}
print(f"{'':<28}{f'loss at epoch {args.epochs}':>20}{'max |weight difference|':>26}")


def compare(name: str, model: Multiclass, losses: list[float]) -> None:
    """Keep one resume's losses and weights, and print its row against the uninterrupted run."""
    weights = model.state_dict()
    resumes[name] = (losses, weights)
    difference = max((weights[key] - uninterrupted[f"model.{key}"]).abs().max().item() for key in weights)
    print(f"{name:<28}{losses[-1]:>20.4f}{difference:>26.2e}")


model, optimizer, start_epoch = resume_from(checkpoint)
compare("Everything restored", model, train(model, optimizer, start_epoch, args.epochs))

model = Multiclass(**checkpoint["model_args"])
model.load_state_dict(checkpoint["model_state_dict"])
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)  # its state not loaded
restore_rng_state(checkpoint["rng_state"])
compare("Without the optimizer state", model, train(model, optimizer, start_epoch, args.epochs))

model, optimizer, start_epoch = resume_from(checkpoint)
seed_everything(args.seed)  # instead of the saved generator states
compare("Without the RNG state", model, train(model, optimizer, start_epoch, args.epochs))

# %% [markdown]
# ## 6. The picture
#
# The loss per epoch of all four runs. The resumed run, dashed, lies exactly on the
# uninterrupted one: below, its difference from it is zero at every epoch, which a log
# scale cannot draw. The two runs that left a piece out leave it right after the
# interruption and never come back to it.

# %%
if plt:
    first_shown = max(1, args.interrupt_at - 10)  # zoom in on the epochs around the interruption
    after = range(args.interrupt_at + 1, args.epochs + 1)
    styles = {  # Okabe-Ito colours that survive greyscale, each with its own line style
        "Everything restored": {"color": "#E69F00", "linestyle": (0, (4, 3)), "linewidth": 2.4},
        "Without the optimizer state": {"color": "#D55E00", "linestyle": ":", "linewidth": 2.4},
        "Without the RNG state": {"color": "#009E73", "linestyle": "-.", "linewidth": 1.6},
    }
    fig, (loss_axes, gap_axes) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, layout="constrained")
    loss_axes.plot(
        range(first_shown, args.epochs + 1),
        uninterrupted_losses[first_shown - 1 :],
        color="#0072B2",
        linewidth=5,
        alpha=0.45,
        label="Uninterrupted",
    )
    for name, (losses, _) in resumes.items():
        label = f"Resumed: {name[0].lower()}{name[1:]}"
        loss_axes.plot(after, losses, label=label, **styles[name])
        gaps = [
            abs(loss - straight)
            for loss, straight in zip(losses, uninterrupted_losses[args.interrupt_at :], strict=True)
        ]
        if any(gaps):  # the complete resume's are all exactly 0, which a log scale cannot draw
            gap_axes.plot(after, gaps, label=label, **styles[name])
    gap_axes.text(
        0.02,
        0.05,
        "Resumed with everything restored: exactly 0 at every epoch (no line)",
        transform=gap_axes.transAxes,
        color="#8A5A00",
    )
    for axes in (loss_axes, gap_axes):
        axes.axvline(args.interrupt_at, color="#555555", linestyle="--", linewidth=1)
        axes.grid(alpha=0.3)
    loss_axes.text(
        args.interrupt_at + 0.2,
        0.97,
        f"interrupted after epoch {args.interrupt_at}",
        transform=loss_axes.get_xaxis_transform(),
        va="top",
        color="#555555",
    )
    loss_axes.set(
        title="Training loss: the resumed run (dashed) lies exactly on the uninterrupted one",
        ylabel="mean NLL loss",
    )
    loss_axes.legend(loc="lower left")
    gap_axes.set(
        title="Difference from the uninterrupted run (log scale)",
        xlabel="epoch",
        yscale="log",
        ylabel="|loss - uninterrupted loss|",
        xlim=(first_shown - 0.5, args.epochs + 0.5),
    )
    fig.savefig(picture, dpi=110)
    print(f"Drew {picture}")

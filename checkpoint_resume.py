"""Chapter 5: checkpoints that resume training exactly, saved so that a crash cannot ruin them.

A state_dict is enough to *use* a model. To stop training and carry on later you need more:
the optimizer's state, the epoch, and the state of every random number generator. This
chapter saves all of it in the official tutorial's layout, shows that a run resumed in a
new process ends bit-identical to one that never stopped, and measures what goes wrong
when a piece is left out.

Run the demonstration (or run it cell by cell in VS Code or Jupyter):

    python checkpoint_resume.py [--epochs 100] [--interrupt-at 60] [--save-every 10]

Or train a run of your own that you can stop (Ctrl-C) and resume as often as you like:

    python checkpoint_resume.py --resume [--epochs 100] [--save-every 10]

Writes OUT_DIR/iris-checkpoint.pth (default artifacts/iris-checkpoint.pth) every
--save-every epochs and after the last; --resume reads it and carries on from it. The
demonstration also keeps the interrupted run's checkpoint as
OUT_DIR/iris-checkpoint-epoch60.pth, and draws OUT_DIR/resume.png when matplotlib is
installed (the `plots` extra).
"""

# %%
from __future__ import annotations

import random
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import build_model
from build_model import (
    LEARNING_RATE,
    SEED,
    SPECIES,
    Multiclass,
    flat_tensors,
    load_iris_split,
    same_state,
    seed_everything,
    train_one_epoch,
)
from support.cli import (
    chapter_parser,
    fail,
    heading,
    parse_chapter_args,
    positive_int,
    prepare_out_dir,
    record_saved,
    seed,
)
from support.pictures import import_pyplot, save_figure
from support.saving import save_atomically
from support.untrusted_files import ModelFileError, check_checkpoint, read_untrusted, refusing

CHECKPOINT_FILE = "iris-checkpoint.pth"
EPOCHS = 100  # as in chapter 2
INTERRUPT_AT = 60  # the demonstration's second run stops here, as if the machine had died
SAVE_EVERY = 10  # epochs between checkpoints: a crash loses at most this much work
SCRIPT = Path(build_model.__file__).with_name("checkpoint_resume.py")  # this file, in a notebook too

parser = chapter_parser(__doc__)
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
    help=f"the demonstration's second run stops after this epoch, as if the machine had died; "
    f"must be below --epochs (default: {INTERRUPT_AT})",
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
checkpoint_path = out_dir / CHECKPOINT_FILE
split = load_iris_split()
DATA_ARGS = {"n_features": split.X_train.shape[1], "n_classes": len(SPECIES)}  # what the data fixes

# %%
# # What a checkpoint holds
#
# The official tutorial's keys, `epoch`, `model_state_dict`, `optimizer_state_dict` and
# `loss`, so that code written from it reads these files, plus two it leaves out:
# `model_args`, the constructor arguments, so that the file alone rebuilds the model (as
# nanoGPT's checkpoints do), and `rng_state`, the state of every random number generator,
# so that a resumed run shuffles its batches exactly as the uninterrupted run would have.
#
# Everything in it is a tensor, a number, None, or a dict, list or tuple of those, so it
# loads with `torch.load(path, weights_only=True)`. That is why NumPy's and Python's
# generator states are turned into tensors here, and back when they are restored.


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
            "internal": torch.tensor(python_internal),
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


# %%
# # Training that saves a checkpoint every few epochs
#
# The loop of chapter 2, one epoch at a time (`train_one_epoch`), and every `--save-every`
# epochs and after the last one the checkpoint, written out as a dict. Saving draws no
# random numbers, so a run that saves computes exactly what a run that does not would.
#
# In your own project the save is `torch.save(checkpoint, path)`. That call overwrites the
# file in place: a crash or a full disk in the middle leaves half a file, and the previous
# checkpoint is gone with it. `save_atomically` makes the same call crash-safe:
#
#     with open(temporary, "wb") as f:  # a name of this process's own, in the same folder
#         torch.save(checkpoint, f)
#         f.flush()
#         os.fsync(f.fileno())  # the bytes are on the disk, not just in the OS's cache
#     os.replace(temporary, path)  # atomic: `path` is the old file or the new, never half
#
# (then the folder is fsynced too, so the rename itself survives a power cut). Two runs
# saving into one folder each write their own temporary file, so neither can clobber the
# other's half-written one, and a temporary file left by a killed run is removed by the
# next save.


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
            save_atomically(checkpoint, save_to, what=f"epoch {epoch}")
    return losses


# %%
# # Resuming: the official recipe
#
# Resuming undoes the save, in an order that matters. Build the model from `model_args` and
# load its weights. Then create the optimizer over *those* parameters and load its state:
# an optimizer created earlier, over another model's parameters, would go on updating
# tensors nobody uses (a bug that slips into tutorials). Restore the generators last,
# because building a model draws random numbers.


def resume_from(checkpoint: dict[str, Any]) -> tuple[Multiclass, torch.optim.Optimizer, int]:
    """The model, the optimizer and the epoch a checkpoint holds, with the generators restored."""
    model = Multiclass(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["model_state_dict"])
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])
    restore_rng_state(checkpoint["rng_state"])
    return model, optimizer, checkpoint["epoch"]


# %%
# # Resuming from a file you did not make
#
# `weights_only=True` guarantees that loading runs no code from the file, not that what it
# loads makes sense. A checkpoint can hold an optimizer state made for another model, a
# NaN learning rate, half-precision weights or an epoch of 500. Fed to the recipe, such a
# file fails halfway through training, or trains on into NaN and saves that; with a fused
# optimizer, wrong shapes can even crash the process.
#
# So a file you did not make is checked before the recipe touches it. `read_untrusted`
# opens only a regular file of a sane size, checks every record's CRC32 (`torch.load`
# does not) and that its data is not nested absurdly deep, and loads it with
# `weights_only=True`. `check_checkpoint` then checks every
# field against the model: the keys, the epoch (a whole number, at most --epochs), the
# loss, `model_args`, the shape, dtype and layout of every tensor, the optimizer's
# settings and moments, and the generator states. A bad file gets one line and exit 2.


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at `path`, checked field by field; otherwise one line and exit status 2."""
    try:
        checkpoint = read_untrusted(path)
        with refusing(path):
            check_checkpoint(checkpoint, Multiclass, max_epoch=args.epochs, fixed_args=DATA_ARGS)
    except ModelFileError as err:
        fail(err)
    return checkpoint


# %%
# # Your own run: `--resume`
#
# With `--resume` the chapter is a training run you can stop at any moment (Ctrl-C, a
# crash, a power cut) and start again with the same command. It carries on from the last
# checkpoint, or starts fresh if there is none, up to `--epochs` in all; Ctrl-C ends it
# with one line saying which epoch's checkpoint is on disk. The demonstration
# below runs exactly this in a new process. Without `--resume`, this cell does nothing.

if args.resume:
    if checkpoint_path.exists():
        checkpoint = read_checkpoint(checkpoint_path)
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

# %%
# # 1. A run that never stops
#
# The reference: seed, build the model and the optimizer, train every epoch in one go.
# Every tensor of the model and the optimizer is kept for the comparison in step 4.

heading(f"1. Uninterrupted: epochs 1 to {args.epochs}")
seed_everything(args.seed)
model = Multiclass()
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
uninterrupted_losses = train(model, optimizer, 0, args.epochs)
uninterrupted = flat_tensors({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
print(f"epoch {args.epochs}: loss {uninterrupted_losses[-1]:.4f}")

# %%
# # 2. The same run, stopped halfway
#
# The same seed and the same training, saving a checkpoint every `--save-every` epochs,
# until the "machine dies" after `--interrupt-at` epochs. The last checkpoint loads with
# `weights_only=True`; a copy is kept for step 5.

heading(f"2. The same run, stopped after epoch {args.interrupt_at}")
seed_everything(args.seed)
model = Multiclass()
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
train(model, optimizer, 0, args.interrupt_at, save_to=checkpoint_path)

checkpoint = torch.load(checkpoint_path, weights_only=True)
interrupted_path = save_atomically(
    checkpoint, out_dir / f"iris-checkpoint-epoch{args.interrupt_at}.pth", what="a copy"
)
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

# %%
# # 3. Resumed in a new process
#
# The real test of a checkpoint is a process that knows nothing but the file. The chapter
# runs itself again with `--resume`, exactly the command printed, as you would after a
# crash, and shows what that process printed.

heading("3. Resumed in a new Python process")
resume_flags = ["--resume", "--epochs", str(args.epochs), "--save-every", str(args.save_every)]
resume_flags += ["--out-dir", str(out_dir)]
record_saved(checkpoint_path, f"epoch {args.interrupt_at}, or later if the resumed run saved")
print(f"$ python {SCRIPT.name} {shlex.join(resume_flags)}")
resumed_run = subprocess.run(
    [sys.executable, str(SCRIPT), *resume_flags], capture_output=True, text=True, check=False
)
if resumed_run.returncode != 0:
    fail(f"the resumed run failed: {(resumed_run.stderr.strip().splitlines() or ['no message'])[-1]}")
for line in resumed_run.stdout.splitlines():
    print(f"  {line}")

# %%
# # 4. Resumed vs uninterrupted
#
# The checkpoint the new process left against the run that never stopped: every weight,
# every Adam moment and step count, compared bit for bit with `torch.equal`.

heading("4. Resumed vs uninterrupted")
final = torch.load(checkpoint_path, weights_only=True)
resumed = flat_tensors({"model": final["model_state_dict"], "optimizer": final["optimizer_state_dict"]})
identical = same_state(resumed, uninterrupted)
print(f"Every model and optimizer tensor bit-identical: {identical} ({len(resumed)} tensors)")
print(f"Same epoch and loss: {(final['epoch'], final['loss']) == (args.epochs, uninterrupted_losses[-1])}")

# %%
# # 5. Why each piece matters, measured
#
# Resume from the kept checkpoint again, in this process, three ways: with everything;
# without the optimizer state (a fresh Adam, whose moving averages restart from zero);
# and without the generator states (a naive resume that seeds at start-up, so the batches
# come in another order). Each trains to the end and is compared with the uninterrupted run.

heading(f"5. Resumed from epoch {args.interrupt_at} again, in this process")
checkpoint = torch.load(interrupted_path, weights_only=True)
resumes: dict[str, tuple[list[float], dict[str, torch.Tensor]]] = {}

model, optimizer, start_epoch = resume_from(checkpoint)
resumes["Everything restored"] = (train(model, optimizer, start_epoch, args.epochs), model.state_dict())

model = Multiclass(**checkpoint["model_args"])
model.load_state_dict(checkpoint["model_state_dict"])
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)  # its state not loaded
restore_rng_state(checkpoint["rng_state"])
resumes["Without the optimizer state"] = (
    train(model, optimizer, start_epoch, args.epochs),
    model.state_dict(),
)

model, optimizer, start_epoch = resume_from(checkpoint)
seed_everything(args.seed)  # instead of the saved generator states
resumes["Without the RNG state"] = (train(model, optimizer, start_epoch, args.epochs), model.state_dict())

print(f"{'':<28}{f'loss at epoch {args.epochs}':>20}{'max |weight difference|':>26}")
for name, (losses, weights) in resumes.items():
    difference = max((weights[key] - uninterrupted[f"model.{key}"]).abs().max().item() for key in weights)
    print(f"{name:<28}{losses[-1]:>20.4f}{difference:>26.2e}")

# %%
# # 6. The picture
#
# The loss per epoch of all four runs. The resumed run, dashed, lies exactly on the
# uninterrupted one: below, its difference from it is zero at every epoch, which a log
# scale cannot draw. The two runs that left a piece out leave it right after the
# interruption and never come back to it.

picture = out_dir / "resume.png"
plt = import_pyplot(picture)
if plt:
    first_shown = max(1, args.interrupt_at - 20)  # zoom in on the epochs around the interruption
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
        args.interrupt_at + 0.4,
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
    save_figure(fig, picture)

# %% [markdown]
# # Chapter 2: train the network and save its state_dict
#
# The article's training script, with its bugs fixed:
# - it looped over `len(X)` instead of `len(X_train)`, so a third of its steps were empty
#   batches with a nan loss; here each epoch covers the training set exactly once;
# - it scored the model without `model.eval()` and `torch.no_grad()`; here scoring does both;
# - it set no seed, so accuracy swung from run to run; here the same `--seed` gives
#   bit-identical weights.
#
#     python train_iris.py [--epochs 100] [--batch-size 5] [--lr 0.001] [--seed 42]
#
# **Reads** nothing. **Writes** `OUT_DIR/iris-model.pth` (default `artifacts/`), a plain
# state_dict that loads with `torch.load(path, weights_only=True)`, and
# `OUT_DIR/training-curves.png` when matplotlib is installed (the `plots` extra).
#
# Next: chapter 3, `python inspect_state.py`, what is inside that file.

# %%
from __future__ import annotations

import math
import sys

# The command line first, before torch is imported: --help, a bad flag and Ctrl-C are
# answered at once, in one line.
from support.cli import (
    chapter_parser,
    clear_the_way,
    parse_chapter_args,
    positive_float,
    positive_int,
    prepare_out_dir,
    seed,
)
from support.settings import BATCH_SIZE, LEARNING_RATE, MODEL_FILE, SEED

EPOCHS = 100  # the article's setting; accuracy settles well before the end
REPORT_EVERY = 10  # epochs between progress lines

parser = chapter_parser()
parser.add_argument(
    "--epochs", type=positive_int, default=EPOCHS, help=f"epochs to train (default: {EPOCHS})"
)
parser.add_argument(
    "--batch-size",
    type=positive_int,
    default=BATCH_SIZE,
    help=f"flowers per Adam step (default: {BATCH_SIZE})",
)
parser.add_argument(
    "--lr",
    type=positive_float,
    default=LEARNING_RATE,
    help=f"Adam's learning rate (default: {LEARNING_RATE})",
)
parser.add_argument(
    "--seed",
    type=seed,
    default=SEED,
    help=f"seeds the initial weights and the batch order, not the train/test split (default: {SEED})",
)
args = parse_chapter_args(parser)
out_dir = prepare_out_dir(args.out_dir)
clear_the_way(out_dir / MODEL_FILE)  # a link or a FIFO there is removed, not followed; a folder refused

import torch
from torch import nn

from build_model import Multiclass, load_iris_split, seed_everything
from support.pictures import import_pyplot

plt = import_pyplot(out_dir / "training-curves.png")  # None, after a line saying how to get it

# %% [markdown]
# ## The data, the model, the loss and the optimizer
#
# Seed first: building the model draws its initial weights from torch's generator. The
# LogSoftmax output goes with NLLLoss (together they are cross-entropy). Adam gets the
# model's parameters, so create it after the model.

# %%
seed_everything(args.seed)
split = load_iris_split()
X_train, y_train, X_test, y_test = split.X_train, split.y_train, split.X_test, split.y_test
print(f"{len(X_train)} training flowers, {len(X_test)} test flowers; batches of {args.batch_size}")
model = Multiclass()
loss_fn = nn.NLLLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)  # the first one imports torch._dynamo: a second
with torch.no_grad():
    untrained_loss = loss_fn(model(X_train), y_train).item()
print(f"untrained: mean loss {untrained_loss:.4f} (guessing each species with probability 1/3 gives 1.0986)")

# %% [markdown]
# ## Training
#
# Each epoch shuffles the training flowers with the seeded generator and takes one Adam
# step per mini-batch. After it, the model is scored on both sets in eval mode and without
# autograd, as inference should be; `model.train()` switches back before the next epoch.

# %%
history: dict[str, list[float]] = {"loss": [], "train_acc": [], "test_acc": []}
for epoch in range(1, args.epochs + 1):
    model.train()
    epoch_loss = 0.0
    for batch in torch.randperm(len(X_train)).split(args.batch_size):
        optimizer.zero_grad()
        loss = loss_fn(model(X_train[batch]), y_train[batch])
        loss.backward()
        optimizer.step()
        epoch_loss += loss.item() * len(batch)

    model.eval()
    with torch.no_grad():
        train_acc = (model(X_train).argmax(dim=1) == y_train).float().mean().item()
        test_acc = (model(X_test).argmax(dim=1) == y_test).float().mean().item()
    mean_loss = epoch_loss / len(X_train)
    history["loss"].append(mean_loss)
    history["train_acc"].append(train_acc)
    history["test_acc"].append(test_acc)
    if epoch % REPORT_EVERY == 0 or epoch == args.epochs:
        print(f"epoch {epoch:4d}  loss {mean_loss:.4f}  train acc {train_acc:.3f}  test acc {test_acc:.3f}")
print(f"Accuracy: {history['test_acc'][-1]:.2f}")

# %% [markdown]
# ## Saving the state_dict
#
# Save the state_dict, not the model object: the file then holds only names and tensors,
# loads with `torch.load(path, weights_only=True)`, and does not depend on where the class
# was defined (chapter 4 shows what goes wrong otherwise). It is one line,
# `torch.save(model.state_dict(), path)`.
#
# One check comes first. A run that diverged is not saved: it would only replace a good
# model with a useless one. Diverged means the loss is not a number, or is higher in the
# last epoch than the untrained model's (try `--lr 1e9`: the weights grow huge but stay
# finite, so a check for NaN alone would save them).
#
# The plain save writes over the old file as it goes: a full disk or a run killed mid-save
# leaves neither the old model nor the new one. The chapter then ends in one line, set up
# in its first cell, and removes the half-written file. Chapter 5 saves so that the old file
# survives (`recipes/crash_safe_save.py` is the same few lines, to copy).

# %%
model_path = out_dir / MODEL_FILE
last_loss = history["loss"][-1]
if not math.isfinite(last_loss) or last_loss > 1.01 * untrained_loss:  # above it, beyond rounding
    print(
        f"error: training diverged (mean loss {untrained_loss:.4g} untrained, {last_loss:.4g} in the last"
        " epoch): try a smaller --lr; nothing was saved",
        file=sys.stderr,
    )
    sys.exit(2)
torch.save(model.state_dict(), model_path)
print(f"Saved the state_dict to {model_path}")

# %% [markdown]
# ## The training curves
#
# Easier to read than the progress lines: the loss falls steadily, while the accuracy
# jumps about for the first 50 epochs (one test flower is a step of 0.022), then settles.
# The test curve does not fall away from the training curve: no sign of overfitting.

# %%
if plt:  # matplotlib, imported in the first cell where it is installed
    epochs = range(1, len(history["loss"]) + 1)
    fig, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    loss_axes.plot(epochs, history["loss"], color="#0072B2")
    loss_axes.set(title="Training loss", xlabel="epoch", ylabel="mean NLL loss")
    acc_axes.plot(epochs, history["train_acc"], color="#E69F00", label="train (105 flowers)")
    acc_axes.plot(epochs, history["test_acc"], color="#0072B2", linestyle="--", label="test (45 flowers)")
    acc_axes.set(title="Accuracy", xlabel="epoch", ylabel="fraction correct", ylim=(0, 1.02))
    acc_axes.legend(loc="lower right")
    fig.suptitle(f"Multiclass on iris: Adam, lr {args.lr}, batches of {args.batch_size}, seed {args.seed}")
    fig.savefig(out_dir / "training-curves.png", dpi=110)
    print(f"Drew {out_dir / 'training-curves.png'}")

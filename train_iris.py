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
"""Chapter 2: train the Multiclass network on iris and save its state_dict.

The article's training script, with its bugs fixed:
- it looped over `len(X)` instead of `len(X_train)`, so a third of its steps were empty
  batches with a nan loss; here each epoch covers the training set exactly once;
- it scored the model without `model.eval()` and `torch.no_grad()`; here scoring does both;
- it set no seed, so accuracy swung from run to run; here the same `--seed` gives
  bit-identical weights.

Run (or run it cell by cell in VS Code or Jupyter):

    python train_iris.py [--epochs 100] [--batch-size 5] [--lr 0.001] [--seed 42]

Writes OUT_DIR/iris-model.pth (default artifacts/iris-model.pth), a plain state_dict that
loads with `torch.load(path, weights_only=True)`, and OUT_DIR/training-curves.png when
matplotlib is installed (the `plots` extra). Next: inspect_state.py.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

from build_model import (
    BATCH_SIZE,
    LEARNING_RATE,
    MODEL_FILE,
    SEED,
    Multiclass,
    load_iris_split,
    seed_everything,
)
from support.cli import (
    chapter_parser,
    parse_chapter_args,
    positive_float,
    positive_int,
    prepare_out_dir,
    seed,
)
from support.pictures import import_pyplot

EPOCHS = 100  # the article's setting; accuracy settles well before the end
REPORT_EVERY = 10  # epochs between progress lines

parser = chapter_parser(__doc__)
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
# was defined (chapter 4 shows what goes wrong otherwise). In your own project it is one
# line, `torch.save(model.state_dict(), path)`. Here the same call is made crash-safe: a
# run killed while saving, or a full disk, leaves the previous file intact (chapter 5
# shows how). A run that diverged (a too-large `--lr` makes every weight NaN) is not saved
# at all: it would only replace a good model with a useless one.

# %%
model_path = out_dir / MODEL_FILE
if not all(torch.isfinite(tensor).all() for tensor in model.state_dict().values()):
    print(
        f"error: training diverged (loss {history['loss'][-1]}): try a smaller --lr; nothing was saved",
        file=sys.stderr,
    )
    sys.exit(2)
# Crash-safe: write a temporary file beside the model, then rename it over the model.
# One fixed name: what a run killed mid-save leaves there, the next save overwrites and renames.
partial = model_path.with_name(f".{model_path.name}.partial")
try:
    with partial.open("wb") as f:  # through a file object, the zip's records get a fixed name
        torch.save(model.state_dict(), f)
    os.replace(partial, model_path)  # noqa: PTH105 -- the atomic rename this cell teaches
except (OSError, RuntimeError) as err:  # a full disk: torch.save reports it as a RuntimeError
    reason = err.strerror if isinstance(err, OSError) else str(err).splitlines()[0]
    print(
        f"error: cannot write {model_path}: {reason}; the previous file, if any, is unchanged",
        file=sys.stderr,
    )
    sys.exit(2)
finally:
    partial.unlink(missing_ok=True)  # a save that failed, or was cut short, leaves nothing behind
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

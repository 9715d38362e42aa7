# %% [markdown]
# # Chapter 1: the Multiclass network
#
# The network of the article "Save and Load Your PyTorch Models": four flower measurements
# in, eight hidden units, log-probabilities of the three iris species out. Every later
# chapter imports the class from here, together with the iris data, the seeding, one
# training epoch and the scoring, so each is defined exactly once.
#
#     python build_model.py
#
# **Reads** nothing. **Writes** nothing.
#
# Next: chapter 2, `python train_iris.py`, which trains it and saves its state_dict.

# %%
from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from support.settings import BATCH_SIZE, DATA_SEED, LEARNING_RATE, SEED, TEST_FRACTION

if __name__ == "__main__":  # run as chapter 1; the other chapters import what follows
    # The command line first, before torch is imported: --help and a bad flag are answered at once.
    from support.cli import chapter_parser, parse_chapter_args
    from support.cli import seed as seed_number

    parser = chapter_parser(out_dir=False)
    parser.add_argument(
        "--seed", type=seed_number, default=SEED, help=f"seeds the initial weights (default: {SEED})"
    )
    args = parse_chapter_args(parser)

import numpy as np
import torch
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

# %% [markdown]
# ## The model
#
# The attribute names decide the keys of the state_dict (`hidden.weight`, `hidden.bias`,
# `output.weight`, `output.bias`), so they are kept exactly as in the article: a file
# trained here loads into the article's class, and the other way round. The activation and
# the LogSoftmax have no weights, so they have no keys.


# %%
class Multiclass(nn.Module):
    """The article's network: 4 measurements -> 8 hidden units -> 3 log-probabilities."""

    def __init__(self, n_features: int = 4, n_hidden: int = 8, n_classes: int = 3) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, n_hidden)
        self.act = nn.ReLU()
        self.output = nn.Linear(n_hidden, n_classes)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act(self.hidden(x))  # (batch, 8)
        return self.logsoftmax(self.output(x))  # (batch, 3) log-probabilities

    def constructor_args(self) -> dict[str, int]:
        """The arguments that rebuild this architecture; store them next to the weights."""
        return {
            "n_features": self.hidden.in_features,
            "n_hidden": self.hidden.out_features,
            "n_classes": self.output.out_features,
        }


# %% [markdown]
# ## Data, seeds, training and scoring
#
# Iris ships inside scikit-learn, so nothing is downloaded. The split is stratified and
# seeded with its own seed, so every chapter, whatever its `--seed`, trains on the same
# 105 flowers and scores the same 45.


# %%
@dataclass(frozen=True)
class IrisSplit:
    """The iris data as tensors: float32 measurements, int64 class indices."""

    X_train: Tensor  # (105, 4)
    X_test: Tensor  # (45, 4)
    y_train: Tensor  # (105,)
    y_test: Tensor  # (45,)


def load_iris_split(seed: int = DATA_SEED) -> IrisSplit:
    """Iris, split 70/30 by species."""
    X, y = load_iris(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_FRACTION, stratify=y, random_state=seed
    )
    return IrisSplit(
        X_train=torch.tensor(X_train, dtype=torch.float32),
        X_test=torch.tensor(X_test, dtype=torch.float32),
        y_train=torch.tensor(y_train, dtype=torch.long),
        y_test=torch.tensor(y_test, dtype=torch.long),
    )


def seed_everything(seed: int) -> None:
    """Seed every random number generator a chapter uses: Python's, NumPy's and torch's."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, lr: float = LEARNING_RATE) -> torch.optim.Adam:
    """The article's optimizer, plain Adam. Create it after the model's weights are in place."""
    return torch.optim.Adam(model.parameters(), lr=lr)


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, X: Tensor, y: Tensor, batch_size: int = BATCH_SIZE
) -> float:
    """One pass over (X, y) in shuffled mini-batches, as chapter 2 teaches; the mean NLL loss."""
    model.train()
    loss_fn = nn.NLLLoss()
    total_loss = 0.0
    for batch in torch.randperm(len(X)).split(batch_size):
        optimizer.zero_grad()
        loss = loss_fn(model(X[batch]), y[batch])
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(batch)
    return total_loss / len(X)


def predict(model: nn.Module, X: Tensor) -> Tensor:
    """Class indices, computed the way inference should be: eval mode, no autograd."""
    model.eval()
    with torch.no_grad():
        return model(X).argmax(dim=1)


def accuracy(model: nn.Module, X: Tensor, y: Tensor) -> float:
    return (predict(model, X) == y).float().mean().item()


def same_outputs(a: nn.Module, b: nn.Module, X: Tensor) -> bool:
    """True when both models, in eval mode, give bit-identical outputs on X."""
    a.eval()
    b.eval()
    with torch.no_grad():
        return torch.equal(a(X), b(X))


def same_state(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> bool:
    """True when two state_dicts have the same names and bit-identical tensors."""
    return list(a) == list(b) and all(torch.equal(a[key], b[key]) for key in a)


def flat_tensors(state: Mapping[Any, Any], prefix: str = "") -> dict[str, Tensor]:
    """Every tensor in a nested state dict (an optimizer's, a checkpoint's), by dotted name."""
    tensors = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Tensor):
            tensors[name] = value
        elif isinstance(value, Mapping):
            tensors |= flat_tensors(value, f"{name}.")
    return tensors


# %% [markdown]
# ## Looking at the model
#
# `print(model)` lists the layers in the order they were assigned. The parameters are the
# weights and biases of the two Linear layers: 4*8 + 8 + 8*3 + 3 = 67 numbers in all.

# %%
if __name__ == "__main__":
    torch.manual_seed(args.seed)
    torch.set_printoptions(precision=4, sci_mode=False)
    model = Multiclass()
    print(model)
    print("\nLayer shapes:")
    for name, param in model.named_parameters():
        print(f"  {name:<14} {tuple(param.shape)}")
    print(f"Trainable parameters: {sum(param.numel() for param in model.parameters())}")

# %% [markdown]
# ## One forward pass
#
# Five flowers in, one row of three log-probabilities out per flower. Exponentiating gives
# probabilities that sum to 1. Untrained, the model's guesses mean nothing yet.

# %%
if __name__ == "__main__":
    flowers = load_iris_split().X_train[:5]  # (5, 4)
    with torch.no_grad():
        log_probs = model(flowers)  # (5, 3)
    print(f"\nInput shape:  {tuple(flowers.shape)}")
    print(f"Output shape: {tuple(log_probs.shape)}")
    print(f"Probabilities (untrained):\n{log_probs.exp()}")

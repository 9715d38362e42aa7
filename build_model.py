"""Chapter 1: the Multiclass network, and the helpers every chapter shares.

The network is the one from the article "Save and Load Your PyTorch Models": four flower
measurements in, eight hidden units, log-probabilities of the three iris species out.
Every other chapter imports the class and the helpers from this file, so each is defined
exactly once.

Run it to look at the model:

    python build_model.py

Reads nothing and writes nothing.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from sklearn.datasets import load_iris
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

SEED = 42  # seeds weight initialisation and batch order in every chapter
DATA_SEED = 42  # fixes the train/test split, so every chapter scores the same 45 flowers
TEST_FRACTION = 0.3  # the article's 70/30 split
DEFAULT_OUT_DIR = Path("artifacts")  # where every chapter reads and writes its files
MODEL_FILE = "iris-model.pth"  # the trained state_dict that chapter 2 writes
SPECIES = ("setosa", "versicolor", "virginica")  # class index -> name, as in load_iris()
EXIT_BAD_INPUT = 2  # the status argparse uses for bad usage; we use it for bad files too


# %%
# # The model
#
# The attribute names decide the keys of the state_dict (`hidden.weight`, `hidden.bias`,
# `output.weight`, `output.bias`), so they are kept exactly as in the article: a file
# trained here loads into the article's class, and the other way round. The activation and
# the LogSoftmax have no weights, so they have no keys.


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


# %%
# # Data, seeds and scoring


@dataclass(frozen=True)
class IrisSplit:
    """The iris data as tensors: float32 measurements, int64 class indices."""

    X_train: Tensor  # (105, 4)
    X_test: Tensor  # (45, 4)
    y_train: Tensor  # (105,)
    y_test: Tensor  # (45,)


def load_iris_split(seed: int = DATA_SEED) -> IrisSplit:
    """Iris (shipped inside scikit-learn, nothing is downloaded), split 70/30 by species."""
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


def make_optimizer(model: nn.Module, lr: float = 0.001) -> torch.optim.Adam:
    """The article's optimizer. Create it after the model's weights are in place.

    `fused=True` updates all parameters in one kernel call: on a model this small the
    per-step overhead is most of the cost, and fusing cuts a training run by about a fifth.
    """
    return torch.optim.Adam(model.parameters(), lr=lr, fused=True)


def train_one_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, X: Tensor, y: Tensor, batch_size: int
) -> float:
    """One pass over (X, y) in shuffled mini-batches; returns the mean NLL loss."""
    model.train()
    loss_fn = nn.NLLLoss()  # expects log-probabilities, which the model's LogSoftmax gives
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


# %%
# # Loading a model file without trusting it
#
# A model file can come from anywhere, so it is read with `weights_only=True`: PyTorch's
# restricted unpickler then rebuilds tensors and plain containers only and refuses anything
# else, so nothing in the file is executed. Every way a file can be wrong becomes one
# `ModelFileError` whose message names the file and the reason.


class ModelFileError(Exception):
    """A model file that is missing, unreadable, unsafe or made for another model."""


def train_command(out_dir: Path) -> str:
    return f"python train_iris.py --out-dir {out_dir}"


def read_weights_file(path: Path, made_by: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, every failure one ModelFileError."""
    if not path.exists():
        raise ModelFileError(f"{path} not found; create it with: {made_by}")
    try:
        file = path.open("rb")
    except OSError as err:
        raise ModelFileError(f"{path} cannot be read: {err.strerror}") from None
    with file, warnings.catch_warnings():  # the one-line reason below says all that matters
        warnings.simplefilter("ignore")
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except Exception as err:  # a file from anywhere can fail in any way; all are refusals
            raise ModelFileError(f"{path} refused: {describe_load_error(err)}") from None


def describe_load_error(err: Exception) -> str:
    """Turn torch.load's long, multi-line errors into one short reason."""
    text = str(err)
    if found := re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", text):
        return f"it refers to {found.group(1)}, not just tensors; weights_only loading ran none of it"
    if isinstance(err, EOFError):
        return "the file is empty or cut short"
    if isinstance(err, OSError) or "central directory" in text or "zip archive" in text:
        return "the file is truncated or corrupted (its zip archive is incomplete)"
    if "Weights only load failed" in text:
        return "not a PyTorch weights file (unreadable pickle data)"
    first_line = text.strip().splitlines()[0][:120] if text.strip() else ""
    return f"not a PyTorch weights file ({type(err).__name__}: {first_line})".replace(": )", ")")


def check_state_dict_fits(state: Any, model: nn.Module) -> None:
    """Raise ModelFileError (without a path) unless `state` is exactly `model`'s state_dict."""
    name = type(model).__name__
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ModelFileError(f"it holds a {type(state).__name__}, not a state_dict of tensors")
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise ModelFileError(
            f"its keys do not fit {name}: missing {missing or 'none'}, unexpected {unexpected or 'none'}"
        )
    for key, tensor in state.items():
        wanted = expected[key]
        if tensor.shape != wanted.shape:
            raise ModelFileError(
                f"{key} has shape {tuple(tensor.shape)}, {name} expects {tuple(wanted.shape)}"
            )
        if tensor.is_floating_point() != wanted.is_floating_point():
            raise ModelFileError(f"{key} is {tensor.dtype}, {name} expects {wanted.dtype}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFileError(f"{key} contains NaN or infinite values")


def load_model(path: Path, made_by: str | None = None) -> Multiclass:
    """A Multiclass in eval mode with the weights from `path`, or ModelFileError."""
    state = read_weights_file(path, made_by or train_command(path.parent))
    model = Multiclass()
    with refusing(path):
        check_state_dict_fits(state, model)
    model.load_state_dict(state)
    return model.eval()


@contextmanager
def refusing(path: Path) -> Iterator[None]:
    """Re-raise a ModelFileError from the block as one that names `path`."""
    try:
        yield
    except ModelFileError as err:
        raise ModelFileError(f"{path} refused: {err}") from None


# %%
# # Command-line helpers


def fail(message: object) -> NoReturn:
    """Report bad input in one line on stderr and exit with status 2, without a traceback."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def load_model_or_exit(path: Path) -> Multiclass:
    """`load_model` for a script's main(): a bad file ends the script in one line."""
    try:
        return load_model(path)
    except ModelFileError as err:
        fail(err)


def heading(title: str) -> None:
    print(f"\n## {title}")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def chapter_parser(docstring: str) -> argparse.ArgumentParser:
    """A chapter's command line: its docstring's first line as description, and --out-dir."""
    parser = argparse.ArgumentParser(description=docstring.splitlines()[0])
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT_DIR,
        help=f"folder the chapter reads and writes its files in (default: {DEFAULT_OUT_DIR})",
    )
    return parser


def prepare_out_dir(out_dir: Path) -> Path:
    """Create the output folder, or fail in one line if it cannot be."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fail(f"cannot use {out_dir} as the output folder: {err.strerror}")
    return out_dir


# %%
# # Looking at the model
#
# `print(model)` lists the layers in the order they were assigned. The parameters are the
# weights and biases of the two Linear layers: 4*8 + 8 + 8*3 + 3 = 67 numbers in all.


def describe_model(model: nn.Module) -> None:
    print(model)
    print("\nLayer shapes:")
    for name, param in model.named_parameters():
        print(f"  {name:<14} {tuple(param.shape)}")
    n_params = sum(param.numel() for param in model.parameters())
    print(f"Trainable parameters: {n_params}")


# %%
# # One forward pass
#
# Five flowers in, one row of three log-probabilities out per flower. Exponentiating gives
# probabilities that sum to 1. Untrained, the model's guesses mean nothing yet.


def show_forward_pass(model: nn.Module, flowers: Tensor) -> Tensor:
    with torch.no_grad():
        log_probs = model(flowers)  # (5, 3)
    print(f"\nInput shape:  {tuple(flowers.shape)}")
    print(f"Output shape: {tuple(log_probs.shape)}")
    print(f"Probabilities (untrained):\n{log_probs.exp()}")
    return log_probs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED, help=f"(default: {SEED})")
    args = parser.parse_args(argv)

    seed_everything(args.seed)
    torch.set_printoptions(precision=4, sci_mode=False)
    model = Multiclass()
    describe_model(model)
    show_forward_pass(model, load_iris_split().X_train[:5])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Chapter 6: when the file and the model don't quite match -- the errors, and the fixes.

Each section sets the problem up for real, shows the exact error PyTorch raises, then the
fix: files saved on another device, missing and unexpected keys, warm-starting a
different model, size mismatches, the prefixes that DataParallel and torch.compile add,
loading large models without copying them, and several models in one file.

Run (after `python train_iris.py`):

    python load_tips.py

Reads OUT_DIR/iris-model.pth (default artifacts/iris-model.pth). Writes tips-*.pth files
into OUT_DIR.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from build_model import (
    MODEL_FILE,
    SEED,
    Multiclass,
    accuracy,
    chapter_parser,
    flat_tensors,
    heading,
    load_iris_split,
    load_model_or_exit,
    make_optimizer,
    prepare_out_dir,
    same_outputs,
    same_state,
    seed_everything,
    train_one_epoch,
)

BATCH_SIZE = 5  # as in chapter 2

State = Mapping[str, Tensor]


def error_of(action: Callable[[], object], max_lines: int = 2) -> str:
    """Run `action` and return 'ExceptionType: the first lines of its message'."""
    try:
        action()
    except Exception as err:  # shown to the reader, whatever it is
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        return f"{type(err).__name__}: {' '.join(lines[:max_lines])}"
    return "no error"


def load_into(model: nn.Module, state: State, strict: bool = True) -> nn.Module:
    model.load_state_dict(state, strict=strict)
    return model


# %%
# # 1. A file saved on another device: map_location
#
# `torch.save` records the device of every tensor. A file saved from a GPU says `cuda:0`,
# and `torch.load` puts the tensors back there, which fails on a machine without one.
# `map_location="cpu"` (or a dict such as `{"cuda:0": "cpu"}`) moves them while loading.
# Where this machine has no GPU, we write the file a GPU machine would write: the same
# format, with the device tag `cuda:0`. Where it has one, the round trip is also done
# for real.


def save_as_if_on_gpu(state: State, path: Path) -> None:
    """torch.save, recording every tensor's device as 'cuda:0' as a GPU machine does."""
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(dict(state), path)


def load_on_cpu(path: Path) -> dict[str, Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def real_gpu_round_trip(state: State, path: Path) -> bool | None:
    """Save from the GPU and load on the CPU; None where there is no GPU."""
    if not torch.cuda.is_available():
        return None
    torch.save({key: tensor.to("cuda") for key, tensor in state.items()}, path)
    loaded = load_on_cpu(path)
    return all(tensor.device.type == "cpu" for tensor in loaded.values()) and same_state(loaded, state)


def show_devices(state: State, out_dir: Path) -> None:
    gpu_file = out_dir / "tips-saved-on-gpu.pth"
    save_as_if_on_gpu(state, gpu_file)
    if torch.cuda.is_available():
        print("torch.load(path): loads onto the GPU, as this machine has one")
    else:
        print(f"torch.load(path)                    -> {error_of(lambda: torch.load(gpu_file))}")
    loaded = load_on_cpu(gpu_file)
    print(f"torch.load(path, map_location='cpu') -> same tensors {same_state(loaded, state)}")
    real = real_gpu_round_trip(state, out_dir / "tips-real-gpu.pth")
    print("Real GPU round trip: " + ("skipped, no GPU on this machine" if real is None else f"exact {real}"))


# %%
# # 2. Missing and unexpected keys
#
# Rename a layer (here `output` became `head`) and the file's names no longer match:
# `load_state_dict` refuses in strict mode, the default. `strict=False` loads what matches
# and *returns* the names it skipped. Ignore that return value and the skipped layer keeps
# its random initial weights: the model loads without error and predicts badly. The fix is
# to rename the keys.


def renamed(state: State, old_prefix: str, new_prefix: str) -> dict[str, Tensor]:
    return {
        new_prefix + key.removeprefix(old_prefix) if key.startswith(old_prefix) else key: tensor
        for key, tensor in state.items()
    }


def show_missing_and_unexpected(state: State, trained: Multiclass) -> None:
    split = load_iris_split()
    file_state = renamed(state, "output.", "head.")  # what a model with a `head` layer saved
    print(f"strict (default)  -> {error_of(lambda: load_into(Multiclass(), file_state), max_lines=3)}")
    partial = Multiclass()
    result = partial.load_state_dict(file_state, strict=False)
    print(
        f"strict=False      -> missing_keys={result.missing_keys}, unexpected_keys={result.unexpected_keys}"
    )
    untrained_head = accuracy(partial, split.X_test, split.y_test)
    print(
        f"  accuracy with the output layer left untrained: {untrained_head:.2f}"
        f" (trained: {accuracy(trained, split.X_test, split.y_test):.2f})"
    )
    fixed = load_into(Multiclass(), renamed(file_state, "head.", "output."))
    print(f"keys renamed back -> same predictions {same_outputs(fixed, trained, split.X_test)}")


# %%
# # 3. Warm-starting a different model
#
# A new model that shares some layers with the trained one, here the same hidden layer
# with a new output head for four classes, can start from the trained weights: keep the
# entries whose name and shape fit, load them with `strict=False`, and report the rest.


def fitting_entries(state: State, model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """The entries of `state` that `model` can take, and the names of those it cannot."""
    target = model.state_dict()
    fits = {key: t for key, t in state.items() if key in target and target[key].shape == t.shape}
    return fits, [key for key in state if key not in fits]


def warm_start(state: State, model: nn.Module) -> tuple[list[str], list[str]]:
    """Load what fits; returns (names loaded, names left at their initial values)."""
    fits, _ = fitting_entries(state, model)
    result = model.load_state_dict(fits, strict=False)
    return list(fits), result.missing_keys


def show_warm_start(state: State) -> None:
    new_model = Multiclass(n_classes=4)
    loaded, left = warm_start(state, new_model)
    print(f"Multiclass(n_classes=4): loaded {loaded}, left at initial values {left}")
    kept = torch.equal(new_model.hidden.weight, state["hidden.weight"])
    print(f"  hidden layer equals the trained one: {kept}")


# %%
# # 4. Size mismatch
#
# Same names, different shapes: the file was trained with another architecture (here 8
# hidden units, loaded into a model with 16). `strict=False` does not help: it forgives
# names, never shapes. Build the model the file describes, from constructor arguments
# saved next to the weights (chapter 5) or read off the tensors' shapes.


def show_size_mismatch(state: State, trained: Multiclass) -> None:
    print(f"strict (default)  -> {error_of(lambda: load_into(Multiclass(n_hidden=16), state))}")
    print(f"strict=False      -> {error_of(lambda: load_into(Multiclass(n_hidden=16), state, strict=False))}")
    n_hidden = state["hidden.weight"].shape[0]
    rebuilt = load_into(Multiclass(n_hidden=n_hidden), state)
    same = same_outputs(rebuilt, trained, load_iris_split().X_test)
    print(
        f"Multiclass(n_hidden=state['hidden.weight'].shape[0]) -> {n_hidden} hidden, same predictions {same}"
    )


# %%
# # 5. Prefixes: `module.` and `_orig_mod.`
#
# Wrappers rename everything inside them. `nn.DataParallel` and `DistributedDataParallel`
# keep the model as `.module`, so their state_dict keys start with `module.`;
# `torch.compile` keeps it as `._orig_mod`. A plain model does not know those names.
# Strip the prefix with `consume_prefix_in_state_dict_if_present` (it edits the dict in
# place), or avoid it: save `wrapper.module.state_dict()` or
# `compiled._orig_mod.state_dict()`.


def wrapped_state(trained: Multiclass, wrapper: str) -> dict[str, Tensor]:
    """The state_dict a training script using `wrapper` would have saved."""
    if wrapper == "DataParallel":
        return dict(nn.DataParallel(trained).state_dict())  # on a CPU it only wraps
    if wrapper == "torch.compile":
        return dict(torch.compile(trained).state_dict())  # compiles lazily: nothing runs here
    raise ValueError(wrapper)


def show_prefixes(trained: Multiclass) -> None:
    X = load_iris_split().X_test
    for wrapper, prefix in [("DataParallel", "module."), ("torch.compile", "_orig_mod.")]:
        state = wrapped_state(trained, wrapper)
        print(f"{wrapper}: keys {list(state)[:2]} ...")
        refusal = error_of(lambda state=state: load_into(Multiclass(), state), max_lines=3)
        print(f"  into a plain model -> {refusal}")
        consume_prefix_in_state_dict_if_present(state, prefix)
        fixed = load_into(Multiclass(), state)
        print(f"  prefix stripped    -> same predictions {same_outputs(fixed, trained, X)}")


# %%
# # 6. Large models: mmap, the meta device and assign=True
#
# For a model too large to hold twice in memory, avoid every copy. `torch.load(...,
# mmap=True)` maps the file instead of reading it: bytes are paged in when first used.
# Building the model under `torch.device("meta")` allocates no memory for its weights.
# `load_state_dict(..., assign=True)` then makes the loaded tensors the model's
# parameters instead of copying into them.
#
# The catch: `assign=True` replaces the parameter objects. An optimizer created before
# the load still holds the old (meta) ones, so it updates nothing the model uses: the
# model silently never learns. Create the optimizer after loading.


def load_without_copies(path: Path) -> tuple[Multiclass, dict[str, Tensor]]:
    state = torch.load(path, mmap=True, weights_only=True)
    with torch.device("meta"):
        model = Multiclass()  # no memory for the weights yet
    model.load_state_dict(state, assign=True)
    return model, state


def learns(model: Multiclass, optimizer: torch.optim.Optimizer) -> bool:
    """Does one epoch of training with this optimizer change the model's weights?"""
    split = load_iris_split()
    before = model.hidden.weight.detach().clone()
    train_one_epoch(model, optimizer, split.X_train, split.y_train, BATCH_SIZE)
    return not torch.equal(before, model.hidden.weight)


def show_large_model_loading(path: Path, trained: Multiclass) -> None:
    with torch.device("meta"):
        print(f"Built under torch.device('meta'): hidden.weight on {Multiclass().hidden.weight.device}")
    model, state = load_without_copies(path)
    shares = model.hidden.weight.data_ptr() == state["hidden.weight"].data_ptr()
    device = model.hidden.weight.device
    print(f"After load_state_dict(assign=True): on {device}, shares the mmap'd tensor: {shares}")
    print(
        f"  same predictions as the trained model: {same_outputs(model, trained, load_iris_split().X_test)}"
    )

    with torch.device("meta"):
        too_early_model = Multiclass()
    too_early = make_optimizer(too_early_model)  # created before the load: wrong
    too_early_model.load_state_dict(state, assign=True)
    print(
        f"Optimizer created before the load -> training changes weights: {learns(too_early_model, too_early)}"
    )
    model, _ = load_without_copies(path)
    in_time = make_optimizer(model)
    print(f"Optimizer created after the load  -> training changes weights: {learns(model, in_time)}")


# %%
# # 7. Several models and their optimizers in one file
#
# One dict, one key per piece. On loading, create each model, load its weights, then
# create its optimizer over that model's parameters and load the optimizer's state.


def train_pair(seed: int) -> tuple[list[Multiclass], list[torch.optim.Optimizer]]:
    seed_everything(seed)
    split = load_iris_split()
    models = [Multiclass(), Multiclass()]
    optimizers = [make_optimizer(model) for model in models]
    for model, optimizer in zip(models, optimizers, strict=True):
        train_one_epoch(model, optimizer, split.X_train, split.y_train, BATCH_SIZE)
    return models, optimizers


def save_pair(models: list[Multiclass], optimizers: list[torch.optim.Optimizer], path: Path) -> None:
    torch.save(
        {
            "model_a": models[0].state_dict(),
            "model_b": models[1].state_dict(),
            "optimizer_a": optimizers[0].state_dict(),
            "optimizer_b": optimizers[1].state_dict(),
        },
        path,
    )


def load_pair(path: Path) -> tuple[list[Multiclass], list[torch.optim.Optimizer]]:
    saved = torch.load(path, weights_only=True)
    models, optimizers = [], []
    for name in ("a", "b"):
        model = load_into(Multiclass(), saved[f"model_{name}"])
        optimizer = make_optimizer(model)
        optimizer.load_state_dict(saved[f"optimizer_{name}"])
        models.append(model)
        optimizers.append(optimizer)
    return models, optimizers


def pair_round_trip_is_exact(path: Path) -> bool:
    models, optimizers = train_pair(SEED)
    save_pair(models, optimizers, path)
    loaded_models, loaded_optimizers = load_pair(path)
    return all(
        same_state(a.state_dict(), b.state_dict()) for a, b in zip(models, loaded_models, strict=True)
    ) and all(
        same_state(flat_tensors(a.state_dict()), flat_tensors(b.state_dict()))
        for a, b in zip(optimizers, loaded_optimizers, strict=True)
    )


def show_several_models(out_dir: Path) -> None:
    path = out_dir / "tips-two-models.pth"
    exact = pair_round_trip_is_exact(path)
    print(f"{path}: keys {list(torch.load(path, weights_only=True))}")
    print(f"  both models and both optimizers back, every tensor identical: {exact}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = chapter_parser(__doc__)
    parser.add_argument("--seed", type=int, default=SEED, help=f"for the fresh models (default: {SEED})")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_path = args.out_dir / MODEL_FILE
    trained = load_model_or_exit(model_path)
    out_dir = prepare_out_dir(args.out_dir)
    seed_everything(args.seed)  # fresh models start from the same random weights every run
    state = trained.state_dict()

    heading("1. A file saved on another device")
    show_devices(state, out_dir)
    heading("2. Missing and unexpected keys")
    show_missing_and_unexpected(state, trained)
    heading("3. Warm-starting a different model")
    show_warm_start(state)
    heading("4. Size mismatch")
    show_size_mismatch(state, trained)
    heading("5. Prefixes from DataParallel and torch.compile")
    show_prefixes(trained)
    heading("6. Large models: mmap, meta device, assign=True")
    show_large_model_loading(model_path, trained)
    heading("7. Several models and optimizers in one file")
    show_several_models(out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

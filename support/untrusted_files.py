"""What a chapter checks in a model file it did not make, beyond the file itself.

The file is read by the inspector's own reader (`model_inspector.loading.read_untrusted`):
only regular files, loads bounded by the file's real size and how deeply its data may
nest, every zip record's CRC32 checked, then `torch.load(..., weights_only=True)`, so a
file a chapter refuses is refused by `inspect_file.py` for the same reason. Here,
`check_state_dict_fits` and `check_checkpoint` check what was loaded against the model and
the training loop. Every refusal is one `ModelFileError` of one line, with anything taken
from the file printed escaped.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from model_inspector.files import MAX_FILE_BYTES, ModelFileError, refusing
from model_inspector.loading import check_plain_tensor, key_list, overlapping, read_untrusted
from model_inspector.text import fail, safe_text

MAX_WIDTH = 4096  # refuse constructor arguments that would build an absurdly large model


def check_state_dict_fits(state: Any, model: nn.Module) -> None:
    """Raise ModelFileError (without a path) unless `state` is exactly `model`'s state_dict."""
    name = type(model).__name__
    if not isinstance(state, Mapping) or not all(isinstance(key, str) for key in state):
        raise ModelFileError(f"it holds a {safe_text(type(state).__name__)}, not a state_dict")
    metadata = getattr(state, "_metadata", None)
    if metadata is not None and not (
        isinstance(metadata, Mapping) and all(isinstance(v, Mapping) for v in metadata.values())
    ):
        raise ModelFileError("its state_dict metadata is malformed")
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise ModelFileError(
            f"its keys do not fit {name}: missing {key_list(missing)}, unexpected {key_list(unexpected)}"
        )
    for key, tensor in state.items():
        try:
            check_plain_tensor(key, tensor, like=expected[key])
        except ModelFileError as err:
            raise ModelFileError(str(err).replace(", expected ", f", {name} expects ")) from None
    if overlap := overlapping(state):
        raise ModelFileError(f"{safe_text(overlap[0])} and {safe_text(overlap[1])} share their values")


def file_bytes_for(model: nn.Module) -> int:
    """The most a torch.save file of `model`'s state_dict can reasonably take: twice its
    tensors' bytes, plus room for the zip's headers and the pickle (generously)."""
    state = model.state_dict()
    return 2 * sum(t.numel() * t.element_size() for t in state.values()) + 64 * 1024 + 1024 * len(state)


def load_untrusted_model(path: Path, model_class: Callable[[], nn.Module], made_by: str = "") -> nn.Module:
    """A model in eval mode with the checked weights from `path`, or ModelFileError.

    The file may be no larger than a state_dict of this model needs, so a forged one cannot
    make the load build much more than the model itself.
    """
    model = model_class()
    state = read_untrusted(path, made_by, max_bytes=min(MAX_FILE_BYTES, file_bytes_for(model)))
    with refusing(path):
        check_state_dict_fits(state, model)
    model.load_state_dict(dict(state))
    return model.eval()


def load_model_or_exit(path: Path, model_class: Callable[[], nn.Module], made_by: str = "") -> nn.Module:
    """`load_untrusted_model` for a chapter: a bad file ends it in one line, exit status 2."""
    try:
        return load_untrusted_model(path, model_class, made_by)
    except ModelFileError as err:
        fail(err)


# ---- Checking a training checkpoint before anything uses it ----

CHECKPOINT_KEYS = ("epoch", "model_state_dict", "optimizer_state_dict", "loss", "model_args", "rng_state")


def check_model_args(args: Any, expected: Mapping[str, int]) -> dict[str, int]:
    if (
        not isinstance(args, Mapping)
        or set(args) != set(expected)
        or not all(type(v) is int and 1 <= v <= MAX_WIDTH for v in args.values())
    ):
        raise ModelFileError(f"its model_args are not {sorted(expected)} in 1..{MAX_WIDTH}")
    return dict(args)


ADAM_SETTINGS = {"lr", "betas", "eps", "weight_decay", "params"}  # what Adam's step reads from a group
ADAM_FLAGS = (
    "amsgrad",
    "maximize",
    "foreach",
    "capturable",
    "differentiable",
    "fused",
    "decoupled_weight_decay",
)


def is_number(value: object) -> bool:
    """An int or float (not a bool, not a tensor) that is finite."""
    return type(value) is int or (type(value) is float and math.isfinite(value))


def check_adam_settings(group: Mapping[Any, Any], n_params: int) -> None:
    """One Adam parameter group: plain Adam over `n_params` parameters, with sane numbers."""
    if not ADAM_SETTINGS <= set(group) <= ADAM_SETTINGS | set(ADAM_FLAGS):
        raise ModelFileError("its optimizer settings are not Adam's")
    params = group["params"]
    if (
        type(params) is not list
        or [type(i) for i in params] != [int] * n_params
        or params != [*range(n_params)]
    ):
        raise ModelFileError(f"its optimizer state is not for this model's {n_params} parameters")
    lr, betas, eps, weight_decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    if not (is_number(lr) and 0 < lr <= 1):
        raise ModelFileError("its optimizer's lr is not a number in (0, 1]")
    if (
        type(betas) not in (tuple, list)
        or len(betas) != 2
        or not all(is_number(b) and 0 <= b < 1 for b in betas)
    ):
        raise ModelFileError("its optimizer's betas are not two numbers in [0, 1)")
    if not (is_number(eps) and 0 < eps < 1):
        raise ModelFileError("its optimizer's eps is not a number in (0, 1)")
    if not (is_number(weight_decay) and 0 <= weight_decay < 1):
        raise ModelFileError("its optimizer's weight_decay is not a number in [0, 1)")
    for flag in ADAM_FLAGS:
        value = group.get(flag)
        if value is not None and value is not False:  # identity: a tensor here must not be compared
            raise ModelFileError(f"its optimizer asks for {flag} (plain Adam, as saved here, has it off)")


def check_optimizer_state(state: Any, model: nn.Module, steps: int | None = None) -> None:
    """An Adam state_dict for exactly `model`'s parameters: settings sane, and for every
    parameter its step count and both moving averages, of the right shape and dtype, finite.

    Everything Adam's step reads is checked, since a wrong shape, an aliased or negative
    second moment, or a NaN setting would fail in the middle of training or, worse, train
    on and save NaN weights; and a missing entry or a step count that does not fit the
    epoch would resume, but not exactly. `steps`: the step count every parameter must have.
    """
    params = list(model.parameters())
    if not isinstance(state, Mapping) or set(state) != {"state", "param_groups"}:
        raise ModelFileError("its optimizer state is not an optimizer's state_dict")
    groups = state["param_groups"]
    if type(groups) is not list or len(groups) != 1 or not isinstance(groups[0], Mapping):
        raise ModelFileError("its optimizer state does not have one parameter group")
    check_adam_settings(groups[0], len(params))
    per_param = state["state"]
    if not isinstance(per_param, Mapping) or not all(
        type(index) is int and 0 <= index < len(params) for index in per_param
    ):
        raise ModelFileError("its optimizer state refers to parameters this model does not have")
    missing = [index for index in range(len(params)) if index not in per_param]
    if missing:
        raise ModelFileError(
            f"its optimizer state has no entry for parameter {missing[0]}: Adam would restart it"
        )
    storages = set()
    for index, entry in sorted(per_param.items()):
        if not isinstance(entry, Mapping) or set(entry) != {"step", "exp_avg", "exp_avg_sq"}:
            raise ModelFileError(f"its optimizer state for parameter {index} is not Adam's")
        for moment in ("exp_avg", "exp_avg_sq"):
            tensor = entry[moment]
            check_plain_tensor(f"optimizer state[{index}].{moment}", tensor, like=params[index])
            if not tensor.is_contiguous() or tensor.requires_grad:
                raise ModelFileError(f"optimizer state[{index}].{moment} is not a plain contiguous tensor")
            storages.add(tensor.untyped_storage().data_ptr())
        if (entry["exp_avg_sq"] < 0).any():
            raise ModelFileError(f"optimizer state[{index}].exp_avg_sq has negative values")
        check_adam_step(index, entry["step"], steps)  # after the shapes: a step says less about a misfit
    if len(storages) != 2 * len(per_param):
        raise ModelFileError("its optimizer state has tensors that share memory")


ADAM_STEP = torch.tensor(0.0)  # what Adam keeps its step count in: a float32 scalar
MAX_STEPS = 2**24  # float32, which Adam counts its steps in, counts exactly up to here


def check_adam_step(index: int, step: Any, steps: int | None) -> None:
    """Parameter `index`'s step count: a whole number, as Adam keeps it, equal to `steps`."""
    check_plain_tensor(f"optimizer state[{index}].step", step)
    if step.shape != ADAM_STEP.shape or step.dtype != ADAM_STEP.dtype:
        raise ModelFileError(f"its optimizer step for parameter {index} is not a count (a float32 scalar)")
    count = step.item()
    if not (math.isfinite(count) and count == int(count) and 1 <= count < MAX_STEPS):
        raise ModelFileError(f"its optimizer step for parameter {index} is not a count")
    if steps is not None and count != steps:
        raise ModelFileError(
            f"its optimizer step for parameter {index} is {int(count)}, but its epoch needs {steps}"
        )


MT19937_WORDS = 624  # the Mersenne Twister state behind NumPy's and Python's generators
WORD_VALUES = 2**32  # each of its words is 32 bits


def check_rng_state(rng: Any) -> None:
    """The generator states chapter 5 saves: torch's bytes, NumPy's and Python's as tensors.

    Each is checked for its layout and then tried on a fresh generator of its kind, which
    rejects a state it cannot use, so restoring the real generators cannot fail later.
    Values a generator would silently truncate (a word beyond 32 bits) are refused too:
    the restore would not be the state saved.
    """
    if not isinstance(rng, Mapping) or set(rng) != {"torch", "numpy", "python"}:
        raise ModelFileError("its rng_state is not the torch, NumPy and Python generator states")
    for name, check in (("torch", check_torch_rng), ("numpy", check_numpy_rng), ("python", check_python_rng)):
        try:
            ok = check(rng[name])
        except (TypeError, KeyError, AttributeError, ValueError, OverflowError, RuntimeError, IndexError):
            ok = False
        if not ok:
            raise ModelFileError(f"its rng_state has no usable {name} generator state")


def is_words(tensor: Any, count: int) -> bool:
    """A plain int64 tensor of `count` Mersenne Twister words, each in 0 .. 2**32 - 1."""
    if type(tensor) is not Tensor or tensor.dtype != torch.int64 or tensor.shape != (count,):
        return False
    check_plain_tensor("rng_state words", tensor)
    return bool(((tensor >= 0) & (tensor < WORD_VALUES)).all())


def check_torch_rng(state: Any) -> bool:
    if type(state) is not Tensor or state.dtype != torch.uint8 or state.shape != torch.get_rng_state().shape:
        return False
    check_plain_tensor("rng_state.torch", state)
    if not state.is_contiguous():
        return False
    torch.Generator().set_state(state)  # refuses a state it cannot use
    return True


def check_numpy_rng(state: Any) -> bool:
    if not isinstance(state, Mapping) or set(state) != {"keys", "pos", "has_gauss", "cached_gaussian"}:
        return False
    keys, pos, has_gauss, gaussian = state["keys"], state["pos"], state["has_gauss"], state["cached_gaussian"]
    if not (
        is_words(keys, MT19937_WORDS)
        and type(pos) is int
        and 0 <= pos <= MT19937_WORDS  # NumPy does not check: it would read past its keys
        and type(has_gauss) is int
        and has_gauss in (0, 1)
        and type(gaussian) is float
        and is_number(gaussian)
    ):
        return False
    np.random.RandomState().set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gaussian))
    return True


def check_python_rng(state: Any) -> bool:
    if not isinstance(state, Mapping) or set(state) != {"version", "internal", "gauss_next"}:
        return False
    version, internal, gauss_next = state["version"], state["internal"], state["gauss_next"]
    if not (
        type(version) is int
        and version == 3
        and is_words(internal, MT19937_WORDS + 1)  # the words, then the position in them
        and internal[-1].item() <= MT19937_WORDS
        and (gauss_next is None or (type(gauss_next) is float and is_number(gauss_next)))
    ):
        return False
    random.Random().setstate((version, tuple(internal.tolist()), gauss_next))
    return True


def check_checkpoint(
    checkpoint: Any,
    model_class: Callable[..., nn.Module],
    max_epoch: int,
    fixed_args: Mapping[str, int] | None = None,
    steps_per_epoch: int | None = None,
) -> None:
    """Raise ModelFileError unless `checkpoint` is a chapter-5 checkpoint that fits the model.

    Everything is checked before use: an optimizer state of the wrong shapes would make a
    fused optimizer write past its buffers and crash the process, not raise; a missing or
    inconsistent piece would resume, but not bit-identically. `max_epoch` is the last
    epoch training may reach; `fixed_args` are constructor arguments the data decides (the
    number of features and classes), which the file must not change; `steps_per_epoch`,
    the optimizer steps an epoch takes, fixes the step count the epoch needs.
    """
    try:
        check_checkpoint_fields(checkpoint, model_class, max_epoch, fixed_args or {}, steps_per_epoch)
    except RecursionError:
        raise ModelFileError("its data is nested too deeply") from None


def check_checkpoint_fields(
    checkpoint: Any,
    model_class: Callable[..., nn.Module],
    max_epoch: int,
    fixed_args: Mapping[str, int],
    steps_per_epoch: int | None = None,
) -> None:
    if not isinstance(checkpoint, Mapping) or set(checkpoint) != set(CHECKPOINT_KEYS):
        raise ModelFileError(f"not a training checkpoint (it needs the keys {', '.join(CHECKPOINT_KEYS)})")
    epoch = checkpoint["epoch"]
    if type(epoch) is not int or epoch < 1:
        raise ModelFileError("its epoch is not a whole number >= 1")
    if epoch > max_epoch:
        raise ModelFileError(f"it is at epoch {epoch}, beyond the {max_epoch} epochs asked for")
    loss = checkpoint["loss"]
    if type(loss) is not float or not math.isfinite(loss):
        raise ModelFileError("its loss is not a finite number")
    args = check_model_args(checkpoint["model_args"], model_class().constructor_args())
    if any(args[name] != value for name, value in fixed_args.items()):
        raise ModelFileError(f"its model_args {args} do not fit the data, which needs {dict(fixed_args)}")
    model = model_class(**args)
    check_state_dict_fits(checkpoint["model_state_dict"], model)
    steps = None if steps_per_epoch is None else epoch * steps_per_epoch
    check_optimizer_state(checkpoint["optimizer_state_dict"], model, steps)
    check_rng_state(checkpoint["rng_state"])


def read_checkpoint(
    path: Path,
    model_class: Callable[..., nn.Module],
    max_epoch: int,
    fixed_args: Mapping[str, int] | None = None,
    steps_per_epoch: int | None = None,
) -> dict[str, Any]:
    """A chapter-5 checkpoint read from `path` (`read_untrusted`) and checked field by field
    (`check_checkpoint`); otherwise a one-line ModelFileError that names the file."""
    checkpoint = read_untrusted(path)
    with refusing(path):
        check_checkpoint(checkpoint, model_class, max_epoch, fixed_args, steps_per_epoch)
    return dict(checkpoint)

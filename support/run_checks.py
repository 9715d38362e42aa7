"""Checking a whole training run's checkpoint (chapter 6) before anything uses it.

Chapter 5's checks cover the model, Adam and the generators; a real run's checkpoint adds
the learning-rate scheduler, the GradScaler, the EMA weights, the position inside the epoch
and the best score so far. Each is checked against a fresh object of the chapter's own
settings (same keys, same kinds of value, finite numbers) and against the step the file
says it is at, so a missing or mismatched piece is refused in one line before the resume.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from model_inspector.files import ModelFileError, refusing
from model_inspector.loading import read_untrusted
from support.untrusted_files import (
    check_model_args,
    check_optimizer_state,
    check_state_dict_fits,
    check_torch_rng,
)

RUN_KEYS = (
    "step",
    "model_state_dict",
    "ema_state_dict",
    "optimizer_state_dict",
    "scheduler_state_dict",
    "scaler_state_dict",
    "sampler",
    "generators",
    "best",
    "model_args",
)
POINTER_TEXT = re.compile(r"run-step\d{5}\.pth")  # what the `latest` pointer may name


def read_latest(folder: Path) -> Path | None:
    """The checkpoint `folder/latest` names, or None if there is no pointer."""
    pointer = folder / "latest"
    if not pointer.exists():
        return None
    try:
        name = (
            pointer.read_text(encoding="ascii", errors="strict").strip()
            if pointer.stat().st_size < 64
            else ""
        )
    except (OSError, UnicodeDecodeError):
        name = ""
    if not POINTER_TEXT.fullmatch(name):
        raise ModelFileError(f"{pointer} refused: it does not name a run-stepNNNNN.pth checkpoint")
    return folder / name


def fresh_states(
    model: nn.Module, steps: int, warmup: int, peak_lr: float, growth_interval: int, ema_decay: float
) -> dict[str, Any]:
    """What chapter 6's run holds before its first step: what a file's pieces are compared with."""
    optimizer = torch.optim.Adam(model.parameters(), lr=peak_lr)
    warm = LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
    cosine = CosineAnnealingLR(optimizer, T_max=steps - warmup)
    return {
        "ema_state_dict": AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay)).state_dict(),
        "scheduler_state_dict": SequentialLR(optimizer, [warm, cosine], milestones=[warmup]).state_dict(),
        "scaler_state_dict": torch.amp.GradScaler("cpu", growth_interval=growth_interval).state_dict(),
    }


def same_layout(value: Any, reference: Any) -> bool:
    """The same keys and kinds of value as `reference`, all the way down; numbers finite."""
    if isinstance(reference, Mapping):
        return (
            isinstance(value, Mapping)
            and set(value) == set(reference)
            and all(same_layout(value[key], reference[key]) for key in reference)
        )
    if isinstance(reference, list | tuple):
        return (
            type(value) is type(reference)
            and len(value) == len(reference)
            and all(same_layout(v, r) for v, r in zip(value, reference, strict=True))
        )
    if type(value) is not type(reference):
        return False
    return not isinstance(value, float) or math.isfinite(value)


def check_run_checkpoint(
    checkpoint: Any,
    model_class: Callable[..., nn.Module],
    fresh: Mapping[str, Any],
    max_step: int,
    steps_per_epoch: int,
) -> None:
    """Raise ModelFileError unless `checkpoint` is a chapter-6 checkpoint that fits.

    `fresh` holds what the chapter's own objects give: `ema_state_dict`,
    `scheduler_state_dict` and `scaler_state_dict` of a run that has not started.
    """
    if not isinstance(checkpoint, Mapping) or set(checkpoint) != set(RUN_KEYS):
        raise ModelFileError(f"not a training-run checkpoint (it needs the keys {', '.join(RUN_KEYS)})")
    step = checkpoint["step"]
    if type(step) is not int or not 1 <= step <= max_step:
        raise ModelFileError(f"its step is not a whole number in 1..{max_step}")
    args = check_model_args(checkpoint["model_args"], model_class().constructor_args())
    model = model_class(**args)
    check_state_dict_fits(checkpoint["model_state_dict"], model)
    check_ema(checkpoint["ema_state_dict"], fresh["ema_state_dict"], model, step)
    check_optimizer(checkpoint["optimizer_state_dict"], model, fresh["scheduler_state_dict"])
    check_scheduler(checkpoint["scheduler_state_dict"], fresh["scheduler_state_dict"], step)
    check_scaler(checkpoint["scaler_state_dict"], fresh["scaler_state_dict"])
    check_sampler(checkpoint["sampler"], step, steps_per_epoch)
    generators = checkpoint["generators"]
    if not isinstance(generators, Mapping) or set(generators) != {"torch", "sampler"}:
        raise ModelFileError("its generators are not the torch and sampler generator states")
    for name in ("torch", "sampler"):
        if not usable_generator(generators[name]):
            raise ModelFileError(f"its {name} generator state is not usable")
    best = checkpoint["best"]
    if not (
        same_layout(best, {"step": 0, "accuracy": 0.0})
        and 1 <= best["step"] <= step
        and 0 <= best["accuracy"] <= 1
    ):
        raise ModelFileError("its best is not a step up to its own and an accuracy in [0, 1]")


def usable_generator(state: Any) -> bool:
    try:
        return check_torch_rng(state)
    except (TypeError, ValueError, RuntimeError):
        return False


def check_ema(state: Any, fresh: Mapping[str, Any], model: nn.Module, step: int) -> None:
    if not isinstance(state, Mapping) or set(state) != set(fresh):
        raise ModelFileError("its ema_state_dict is not the EMA model's state_dict")
    prefix = "module."
    weights = {key.removeprefix(prefix): value for key, value in state.items() if key != "n_averaged"}
    check_state_dict_fits(weights, model)
    averaged = state["n_averaged"]
    if not same_layout(averaged, fresh["n_averaged"]) or averaged.shape != () or averaged.item() != step:
        raise ModelFileError(f"its EMA has not averaged {step} steps, as its step needs")


def check_optimizer(state: Any, model: nn.Module, fresh_scheduler: Mapping[str, Any]) -> None:
    """Adam, as chapter 5 checks it, with the `initial_lr` a scheduler adds to its group."""
    groups = state.get("param_groups") if isinstance(state, Mapping) else None
    if type(groups) is not list or len(groups) != 1 or not isinstance(groups[0], Mapping):
        raise ModelFileError("its optimizer state does not have one parameter group")
    group = dict(groups[0])
    peak = fresh_scheduler["_schedulers"][1]["base_lrs"][0]
    if group.pop("initial_lr", None) != peak:
        raise ModelFileError(f"its optimizer's initial_lr is not the schedule's peak {peak}")
    check_optimizer_state({**state, "param_groups": [group]}, model)


def check_scheduler(state: Any, fresh: Mapping[str, Any], step: int) -> None:
    if not same_layout(state, fresh):
        raise ModelFileError("its scheduler_state_dict is not this warm-up and cosine schedule's")
    if state["_milestones"] != fresh["_milestones"] or [s["T_max"] for s in state["_schedulers"][1:]] != [
        s["T_max"] for s in fresh["_schedulers"][1:]
    ]:
        raise ModelFileError("its schedule was made for another number of steps")
    if state["last_epoch"] != step:
        raise ModelFileError(f"its scheduler is at step {state['last_epoch']}, not at its step {step}")
    if not all(0 <= lr <= 1 for lr in state["_last_lr"]):
        raise ModelFileError("its scheduler's last lr is not in [0, 1]")


def check_scaler(state: Any, fresh: Mapping[str, Any]) -> None:
    if not same_layout(state, fresh):
        raise ModelFileError("its scaler_state_dict is not a GradScaler's")
    if any(state[key] != fresh[key] for key in ("growth_factor", "backoff_factor", "growth_interval")):
        raise ModelFileError("its GradScaler was made with other growth settings")
    if not (0 < state["scale"] <= 2.0**64 and 0 <= state["_growth_tracker"] < state["growth_interval"]):
        raise ModelFileError("its GradScaler's scale or growth tracker is out of range")


def check_sampler(sampler: Any, step: int, steps_per_epoch: int) -> None:
    if not (
        isinstance(sampler, Mapping)
        and set(sampler) == {"epoch", "batches_done", "epoch_start_generator"}
        and type(sampler["epoch"]) is int
        and type(sampler["batches_done"]) is int
    ):
        raise ModelFileError("its sampler position is not an epoch, batches done and a generator state")
    if sampler["epoch"] * steps_per_epoch + sampler["batches_done"] != step or not (
        0 <= sampler["batches_done"] < steps_per_epoch
    ):
        raise ModelFileError(f"its sampler position does not match its step {step}")
    if not usable_generator(sampler["epoch_start_generator"]):
        raise ModelFileError("its sampler's epoch-start generator state is not usable")


def read_run_checkpoint(
    path: Path,
    model_class: Callable[..., nn.Module],
    fresh: Mapping[str, Any],
    max_step: int,
    steps_per_epoch: int,
) -> dict[str, Any]:
    """A chapter-6 checkpoint read safely (`read_untrusted`) and checked (`check_run_checkpoint`)."""
    checkpoint = read_untrusted(path)
    with refusing(path):
        try:
            check_run_checkpoint(checkpoint, model_class, fresh, max_step, steps_per_epoch)
        except RecursionError:
            raise ModelFileError("its data is nested too deeply") from None
    return dict(checkpoint)

"""What a torch file's report adds once its tensors are listed: where they were saved, and
which training framework wrote the checkpoint.

A file saved on a GPU records `cuda:0` for its tensors. On a machine without that device,
`torch.load(path, weights_only=True)` fails with "Attempting to deserialize object on a CUDA
device"; `map_location="cpu"` is the fix, and it is tried here, not just suggested. A
Lightning checkpoint keeps the weights under `state_dict`, each name prefixed with the
LightningModule's attribute (`model.`); a training loop's checkpoint keeps them beside the
optimizer's state. Both are named as such, with the key that holds the weights.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from model_inspector.files import describe_load_error
from model_inspector.report import Report
from model_inspector.text import safe_text

CPU_LOAD = 'torch.load(path, map_location="cpu", weights_only=True)'
MAX_READ_IN_BYTES = 256 * 2**20  # a larger file's trial load maps its weights instead of reading them
LIGHTNING_VERSION_KEYS = ("pytorch-lightning_version", "lightning_version")
TRAINING_KEYS = {  # what a training loop saves beside the weights
    "optimizer", "optimizer_state_dict", "optimizer_states", "optim", "scheduler", "lr_scheduler",
    "lr_schedulers", "scaler", "epoch", "step", "global_step", "iteration", "loss", "rng_state",
}  # fmt: skip


def available(device_type: str) -> bool:
    """Whether this machine has a device of this type (cpu and meta always)."""
    if device_type in ("cpu", "meta"):
        return True
    backend = getattr(torch, device_type, None)
    is_available = getattr(backend, "is_available", None)
    try:
        return bool(is_available()) if callable(is_available) else False
    except RuntimeError:  # a backend that is compiled in but cannot start here
        return False


def plain_load_works(path: Path, report: Report) -> bool:
    """Try the load the verdict would name, `torch.load(path, weights_only=True)`, as it is."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mmap = report.kind == "torch-zip"
            torch.load(path, weights_only=True, mmap=mmap)
    except Exception:  # a file from anywhere can fail in any way: then say how it loads, if it does
        return False
    return True


def note_devices(path: Path, report: Report) -> None:
    """Name the devices the tensors were saved on; for one this machine lacks, try map_location="cpu"."""
    rows = report.contents.tensors or []
    saved = sorted({row.device for row in rows if row.device})
    report.contents.devices = saved
    if problem := unusable_tag(set(saved)):  # the chapters refuse such a file for the same reason
        report.reasons.append(problem)
        return
    missing = [name for name in saved if not available(torch.device(name).type)]
    if not missing and not report.reasons and not plain_load_works(path, report):
        missing = [name for name in saved if name != "cpu"] or saved  # cpu:7, say: a tag torch cannot restore
    if not missing:
        if any(name != "cpu" for name in saved):
            report.integrity.notes.append(
                f'saved on {", ".join(saved)}: loads onto it here; map_location="cpu" loads it onto the CPU'
            )
        return
    report.integrity.notes.append(
        f"saved on {', '.join(missing)}, which this machine does not have: "
        "torch.load(path, weights_only=True) fails here"
    )
    if report.reasons:
        return  # damaged or refused already: not loaded at all
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the exact command; a large zip is mapped rather than read in, on the CPU all the same
            mmap = report.kind == "torch-zip" and report.bytes > MAX_READ_IN_BYTES
            torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # a file from anywhere can fail in any way: a finding, not a crash
        report.reasons.append(f"{CPU_LOAD} refuses it: {describe_load_error(err)}")
        return
    report.integrity.notes.append(f"the fix, tried: {CPU_LOAD} loads it onto the CPU")
    report.needs.map_location = "cpu"
    report.needs.weights_only = f"loads with {CPU_LOAD} (tried)"
    report.loads_with = CPU_LOAD


def note_training_framework(report: Report) -> None:
    """Name a Lightning or training-loop checkpoint, and the key that holds its weights."""
    top = report.contents.top_level or {}
    key = report.contents.state_dict_key
    version = next((top[k] for k in LIGHTNING_VERSION_KEYS if k in top), None)
    if version is not None and key == "state_dict":
        report.contents.checkpoint_of = (
            f"a Lightning checkpoint (version {version.strip(chr(39))}): the weights are under 'state_dict', "
            "named by the LightningModule's attributes"
        )
    elif key and TRAINING_KEYS & set(top):
        others = ", ".join(sorted(set(top) - {key}))
        report.contents.checkpoint_of = (
            f"a training-loop checkpoint: the weights are under '{key}', beside {safe_text(others, 120)}"
        )
    if key and report.fit:
        report.fit.state_from = f"state = torch.load(path, weights_only=True)[{key!r}]"


def unusable_tag(tags: set[str]) -> str | None:
    """Why tensors saved with these device tags cannot be used here by any load, whatever its
    map_location: tags that name no device, and the meta device's tensors, which hold no values."""
    for tag in sorted(tags):
        try:
            device = torch.device(tag)
        except (RuntimeError, ValueError):
            return f"its tensors are tagged {safe_text(tag, 30)}, which is not a device"
        if device.type == "meta":
            return "its tensors were saved on the meta device: they hold no values"
    return None


def device_problem(tags: set[str]) -> str | None:
    """Why tensors saved with these device tags do not load here with a plain
    `torch.load(path, weights_only=True)`, as the lessons load them; None if they do."""
    if problem := unusable_tag(tags):
        return problem
    for tag in sorted(tags - {"cpu"}):  # "cpu" loads anywhere; "cpu:7" does not
        shown = safe_text(tag, 30)
        device = torch.device(tag)
        if (
            device.type == "cuda"
            and device.index is not None
            and 0 <= device.index < torch.cuda.device_count()
        ):
            continue
        return (
            f"its tensors were saved on {shown}, which this machine does not have: load it with"
            ' map_location="cpu" (chapter 7), and save it again'
        )
    return None

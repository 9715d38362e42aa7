"""The report every reader fills in: what the file is, what it holds (contents), what loading
it would take (needs), whether it is intact (integrity), where its tensors were saved
(devices, in contents), whether it fits a model (fit), and the reasons it is refused.

A file's bytes decide every field; every string taken from the file is stored escaped
(`safe_text`) by the reader that took it, and escaped again when printed."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model_inspector.text import safe_text


@dataclass
class TensorRow:
    """One tensor, as the file describes it."""

    name: str
    shape: list[int]
    dtype: str
    bytes: int  # its values' bytes; a view's are part of its storage's
    device: str = ""  # the device it was saved on ("" where the format has none)
    shares: list[str] | None = None  # the other tensors over the same storage (tied weights)


@dataclass
class Contents:
    tensors: list[TensorRow] | None = None  # None: this format's tensors are not listed
    storage_bytes: int = 0  # the bytes of every storage, each counted once
    devices: list[str] = field(default_factory=list)  # the device tags the storages were saved with
    note: str = ""  # what the listing leaves out, if anything
    top_level: dict[str, str] = field(default_factory=dict)  # a checkpoint's keys, in a few words each
    state_dict_key: str = ""  # the checkpoint key the state_dict is under ("": the file is one)
    other_state_dicts: list[str] = field(default_factory=list)  # keys of other state_dicts in it
    checkpoint_of: str = ""  # the training framework that wrote it, if one did


@dataclass
class Needs:
    globals: list[str] | None = None  # what its pickles would import (None: it has none read)
    weights_only: str = "not applicable"  # what torch.load(weights_only=True) does with it
    scanned_by_torch: bool = False  # torch.serialization.get_unsafe_globals_in_checkpoint applies
    not_allowed_by_weights_only: list[str] | None = None  # its answer (None: its scan failed)
    never_allow: list[str] = field(default_factory=list)  # names that run code
    data_only: list[str] = field(default_factory=list)  # numpy's data rebuilders
    safe_globals_needed: list[str] = field(default_factory=list)  # classes to allow, if trusted
    import_first: dict[str, list[str]] = field(default_factory=dict)  # torch module -> what it allows
    library_load: dict[str, Any] | None = None  # the list of the library that loads such a file
    pickled_weights: list[str] = field(default_factory=list)  # a .pt2's weights stored as pickles
    map_location: str = ""  # what torch.load needs it mapped to on this machine


@dataclass
class Integrity:
    records: list[dict[str, Any]] = field(default_factory=list)  # zip records, shards or files
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Fit:
    model: str
    fits: bool
    missing: list[str]
    unexpected: list[str]
    mismatched: list[dict[str, str]]  # name, and its shape and dtype in the file and in the model
    prefix_fix: str | None = None  # "strip the prefix 'module.'", where that one change makes it fit
    prefix_code: str | None = None
    state_from: str = ""  # how to take the state_dict out of a checkpoint


@dataclass
class Report:
    path: str
    bytes: int
    format: str = ""  # in words, for a person
    kind: str = ""  # in one word, for a program: torch-zip, safetensors, onnx, ...
    contents: Contents = field(default_factory=Contents)
    metadata: dict[str, Any] = field(default_factory=dict)  # what the file says of itself
    needs: Needs = field(default_factory=Needs)
    integrity: Integrity = field(default_factory=Integrity)
    fit: Fit | None = None
    reasons: list[str] = field(default_factory=list)  # why it is refused: exit 2 if any
    caveats: list[str] = field(default_factory=list)  # what to know even if it is not
    loads_with: str = ""  # the load that works, where it is not a plain torch.load
    other_format: str = ""  # the reason given for a format torch.load does not read

    @property
    def ok(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, Any]:
        """Plain data, as --json prints it."""
        return {**dataclasses.asdict(self), "ok": self.ok}


def new_report(path: Path, size: int) -> Report:
    return Report(path=safe_text(path, 300), bytes=size)


def refuse_once(report: Report, reason: str) -> None:
    """Add a reason unless it is there already (the scan and the load can fail the same way)."""
    if reason not in report.reasons:
        report.reasons.append(reason)


def listed(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")

"""The report every reader fills in, and the few helpers they share to fill it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model_inspector.text import safe_text


def new_report(path: Path, size: int) -> dict[str, Any]:
    return {
        "path": safe_text(path, 300),
        "bytes": size,
        "format": "",
        "kind": "",
        "integrity": {"records": [], "problems": [], "notes": []},
        "contents": {},
        "metadata": {},
        "needs": {},
        "fit": None,
        "reasons": [],
        "caveats": [],
    }


def refuse_once(report: dict[str, Any], reason: str) -> None:
    """Add a reason unless it is there already (the scan and the load can fail the same way)."""
    if reason not in report["reasons"]:
        report["reasons"].append(reason)


def tensor_row(name: str, shape: list[int], dtype: str, nbytes: int, device: str = "") -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype, "device": device, "bytes": nbytes, "shares": None}


def listed(names: list[str], shown: int = 4) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")

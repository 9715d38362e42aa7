"""Does it fit your model? The report `load_state_dict` would give, without loading anything
into the model: the model is built on the meta device (shapes only, no memory), and the
file's names and shapes are compared with the model's. When every name differs by the same
prefix, such as `module.` (DataParallel/DDP) or `_orig_mod.` (torch.compile), the report
says which prefix to strip or add."""

from __future__ import annotations

from typing import Any

from torch import nn

from model_inspector.checkpoints import note_training_framework
from model_inspector.render import shape_text
from model_inspector.report import Fit, Report
from model_inspector.text import safe_text


def expected_shapes(model: nn.Module | None) -> dict[str, tuple]:
    """The model's state_dict names -> (shape, dtype), as the fit check compares them."""
    if model is None:
        return {}
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}


def prefix_fix(file_keys: set[Any], model_keys: set[str]) -> tuple[str, str] | None:
    """('strip', 'module.') or ('add', 'net.') if that one change to the file's names makes them match."""
    if not all(isinstance(key, str) for key in file_keys):  # a key a module could never have
        return None
    for keys, others, verb in ((file_keys, model_keys, "strip"), (model_keys, file_keys, "add")):
        first = next(iter(keys), "").split(".")
        for parts in range(1, min(4, len(first))):
            prefix = ".".join(first[:parts]) + "."
            if all(k.startswith(prefix) for k in keys) and {k.removeprefix(prefix) for k in keys} == others:
                return verb, safe_text(prefix, 60)
    return None


def tensor_text(shape: tuple[int, ...], dtype: str) -> str:
    return f"{shape_text(list(shape))} {dtype}"


def check_fit(shapes: dict[str, tuple], described: str, model: nn.Module, report: Report) -> None:
    expected = {
        k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()
    }
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    mismatched = [
        {"name": safe_text(k, 80), "file": tensor_text(*shapes[k]), "model": tensor_text(*v)}
        for k, v in expected.items()
        if k in shapes and (tuple(shapes[k][0]), shapes[k][1]) != v
    ]
    fix, how = None, None
    if missing and unexpected and (found := prefix_fix(set(shapes), set(expected))):
        verb, prefix = found
        fix = f"{verb} the prefix '{prefix}'"
        renamed = f"k.removeprefix('{prefix}')" if verb == "strip" else f"'{prefix}' + k"
        how = f"state = {{{renamed}: v for k, v in state.items()}}"
    report.fit = Fit(
        model=described,
        fits=not (missing or unexpected or mismatched),
        missing=[safe_text(k, 80) for k in missing],
        unexpected=[safe_text(k, 80) for k in unexpected],
        mismatched=mismatched,
        prefix_fix=fix,
        prefix_code=how,
    )
    if not report.fit.fits:
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} mismatched"
        report.reasons.append(f"it does not fit {described}: {counts}{f'; {fix}' if fix else ''}")


def with_fit(report: Report, shapes: dict[str, tuple], described: str, model: nn.Module | None) -> Report:
    if model is not None and shapes:
        check_fit(shapes, described, model, report)
    elif model is not None and not report.reasons:
        report.reasons.append(f"it holds no state_dict to check against {described}")
    note_training_framework(report)
    return report

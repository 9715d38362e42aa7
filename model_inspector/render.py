"""The report as text for a person, or as JSON for a script: one function, `render`.

Everything taken from the file is made inert on a terminal: a control character, an
escape sequence or a bidirectional mark is shown escaped, so a name or a device tag cannot
forge a line, clear the screen or reorder text."""

from __future__ import annotations

import json
import math
from typing import Any

from model_inspector.report import Contents, Fit, Needs, Report, TensorRow
from model_inspector.text import EXIT_BAD_INPUT, safe_text

MAX_ROWS = 60  # tensors listed in the readable report (all of them in --json)


class Lines(list[str]):
    """The report's lines, each made inert on a terminal as it is added."""

    def show(self, text: str = "") -> None:
        """Add a part of the report: blank lines before a heading are the report's own; in
        the rest, a control character, an escape sequence or a bidirectional mark is escaped."""
        body = text.lstrip("\n")
        self.extend([""] * (len(text) - len(body)))
        self.append(safe_text(body, limit=10_000))


def shape_text(shape: list[int]) -> str:
    return f"({shape[0]},)" if len(shape) == 1 else f"({', '.join(map(str, shape))})"


def aligned(cells: list[list[str]], right: tuple[int, ...] = ()) -> list[str]:
    """Rows of cells as lines with aligned columns; columns in `right` right-aligned."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = []
    for row in cells:
        padded = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(padded).rstrip())
    return lines


def write_contents(out: Lines, contents: Contents) -> None:
    rows = contents.tensors
    if rows is not None:
        write_tensors(out, contents, rows)


def write_tensors(out: Lines, contents: Contents, rows: list[TensorRow]) -> None:
    where = f" (the state_dict is under '{contents.state_dict_key}'" if contents.state_dict_key else ""
    if where and contents.other_state_dicts:
        others = ", ".join(f"'{key}'" for key in contents.other_state_dicts[:3])
        where += f"; {others} {'holds' if len(contents.other_state_dicts) == 1 else 'hold'} another"
    where += ")" if where else ""
    out.show(f"\nContents   {len(rows)} tensor{'' if len(rows) == 1 else 's'}{where}")
    if contents.checkpoint_of:
        out.show(f"  {contents.checkpoint_of}")
    cells = [["name", "shape", "dtype", "device", "bytes", ""]]
    for row in rows[:MAX_ROWS]:
        shares = f"shares storage with {', '.join(row.shares[:3])}" if row.shares else ""
        cells.append([row.name, shape_text(row.shape), row.dtype, row.device, str(row.bytes), shares])
    for line in aligned(cells, right=(4,)):
        out.show(f"  {line}")
    if len(rows) > MAX_ROWS:
        out.show(f"  ... {len(rows) - MAX_ROWS} more (all of them with --json)")
    values = sum(math.prod(row.shape) for row in rows)
    out.show(f"  total: {values} values in {contents.storage_bytes} bytes")
    if contents.note:
        out.show(f"  ({contents.note})")
    if contents.top_level:
        out.show("\nTop-level keys")
        for line in aligned([[f"{key}:", value] for key, value in contents.top_level.items()]):
            out.show(f"  {line}")


def write_metadata(out: Lines, metadata: dict[str, Any]) -> None:
    """What the file says of itself, shown whether or not its tensors are listed."""
    if metadata:
        out.show("\nMetadata")
        for key, value in metadata.items():
            shown = ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
            out.show(f"  {key}: {shown}")


def write_needs(out: Lines, needs: Needs) -> None:
    out.show("\nNeeds")
    lines = []
    if needs.globals is not None:
        lines.append(["imports:", ", ".join(needs.globals) or "nothing"])
    if needs.scanned_by_torch:
        beyond = needs.not_allowed_by_weights_only
        shown = "not known: torch's own scan failed" if beyond is None else ", ".join(beyond) or "nothing"
        lines.append(["beyond weights_only:", shown])
    if needs.safe_globals_needed:
        names = ", ".join(needs.safe_globals_needed)
        lines.append(["safe_globals needed:", f"{names} (allow them only if you trust their code)"])
    for module, names in needs.import_first.items():
        lines.append(["import first:", f"{module} (importing it allows {', '.join(names)}: its own list)"])
    if library := needs.library_load:
        lines.append(["library's own list:", library_advice(library)])
    if needs.data_only:
        names = ", ".join(needs.data_only)
        lines.append(
            [
                "rebuild data only:",
                f"{names} (numpy's array and dtype rebuilders: they run no code of the file's choosing, "
                "but numpy parses its bytes; allow them only if you trust the file's source)",
            ]
        )
    if needs.never_allow:
        lines.append(["never allow:", f"{', '.join(needs.never_allow)} (these run code)"])
    if needs.pickled_weights:
        lines.append(["pickled weights:", ", ".join(needs.pickled_weights)])
    lines.append(["weights_only=True:", needs.weights_only])
    for line in aligned(lines):
        out.show(f"  {line}")


def library_advice(library: dict[str, Any]) -> str:
    """What the library that writes a file of this name allows when it loads it, in its words."""
    name, listed_in = library["library"], library["listed_in"]
    if not library["refuses"]:
        return (
            f"{name} loads this file with weights_only=True, allowing: {', '.join(library['allows'])} "
            f"(its own list, {listed_in}); numpy parses the file's bytes: "
            "allow them only if you trust the file's source"
        )
    refused = ", ".join(library["refuses"])
    if library["other_numpy_only"]:  # it builds its list from numpy.core or numpy._core, by version
        other = "2" if str(library["numpy"]).startswith("1.") else "1"
        return (
            f"{name} allows {refused} only under numpy {other}: with numpy {library['numpy']} here, "
            f"its own load refuses this file too ({listed_in})"
        )
    return f"{name}'s own load refuses this file too: {refused} is not on its list ({listed_in})"


INTACT_KINDS = (
    "torch-zip",
    "pt2",
    "aoti",
    "torch-package",
    "safetensors",
    "torchscript",
    "legacy-torch",
    "sharded-safetensors",
    "sharded-torch",
    "hf-folder",
)


def write_integrity(out: Lines, report: Report) -> None:
    out.show("\nIntegrity")
    records, problems = report.integrity.records, report.integrity.problems
    if records and "crc32" in records[0]:
        passed = sum(r["crc32"] == "ok" for r in records)
        out.show(f"  {len(records)} zip records, {passed} pass their CRC32 check")
    elif records and "verdict" in records[0]:
        out.show(f"  {len(records)} shards:")
        for line in aligned([[r["name"], f"{r['bytes']} bytes", r["verdict"]] for r in records]):
            out.show(f"    {line}")
    elif records:
        names = ", ".join(r["name"] for r in records[:6])
        out.show(f"  {len(records)} files: {names}")
    for note in report.integrity.notes:
        out.show(f"  {note}")
    for problem in problems:
        out.show(f"  problem: {problem}")
    if not problems and report.kind in INTACT_KINDS:
        out.show("  intact" if report.kind != "legacy-torch" else "  intact, as far as its layout shows")


def write_fit(out: Lines, fit: Fit | None) -> None:
    if not fit:
        return
    out.show(f"\nFit        {fit.model}: {'fits' if fit.fits else 'does NOT fit'}")
    lines = [
        [f"{label}:", ", ".join(names)]
        for label, names in (("missing", fit.missing), ("unexpected", fit.unexpected))
        if names
    ]
    for item in fit.mismatched:
        lines.append(
            ["mismatch:", f"{item['name']} is {item['file']} in the file, {item['model']} in the model"]
        )
    if fit.prefix_fix:
        lines += [["fix:", fit.prefix_fix], *([["", fit.state_from]] if fit.state_from else [])]
        lines.append(["", fit.prefix_code])
    elif fit.state_from:  # the weights are under a key of the checkpoint: how to take them
        lines.append(["weights:", fit.state_from])
    for line in aligned(lines) if lines else []:
        out.show(f"  {line}")


def write_report(out: Lines, report: Report) -> None:
    out.show(f"File       {report.path} ({report.bytes} bytes)")
    out.show(f"Format     {report.format}")
    write_contents(out, report.contents)
    write_metadata(out, report.metadata)
    write_needs(out, report.needs)
    write_integrity(out, report)
    write_fit(out, report.fit)
    if report.reasons:
        named_only = set(report.reasons) == {report.other_format}
        out.show(f"\nVerdict    {'not for torch.load' if named_only else 'refused'} (exit {EXIT_BAD_INPUT}):")
        for reason in dict.fromkeys(report.reasons):
            out.show(f"  - {reason}")
    else:
        out.show(f"\nVerdict    intact, and loads {loads_with(report)} (exit 0)")
        for caveat in report.caveats:
            out.show(f"  - caveat: {caveat}")


def loads_with(report: Report) -> str:
    if report.loads_with:
        return f"with {report.loads_with}"
    if report.kind in ("safetensors", "sharded-safetensors"):
        return "with safetensors" + (", shard by shard" if report.kind != "safetensors" else "")
    return "with torch.load(weights_only=True)" + (
        ", shard by shard" if report.kind == "sharded-torch" else ""
    )


def render(report: Report, as_json: bool = False) -> str:
    """The report as text for a person, or as JSON (all of it, every tensor) for a script."""
    if as_json:
        return json.dumps(report.as_dict(), indent=2)
    out = Lines()
    write_report(out, report)
    return "\n".join(out)

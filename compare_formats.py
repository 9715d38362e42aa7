"""Chapter 7: which file format to use -- pickle, torch.save, safetensors, torch.export, measured.

Every format saves and loads the same weights, on this machine, in one run: file size, save
and load time against plain file I/O of the same bytes, peak memory while loading, whether
a working model needs your Python class, whether the file is safe to load from a stranger,
and whether the loaded model predicts exactly the same. Then a harmless hostile file shows
which loaders run code from the file, and which refuse it.

Run (after `python train_iris.py`):

    python compare_formats.py [--size-mb 32] [--repeat 3] [--json FILE]

`--size-mb` sets the size of a synthetic model measured next to the iris one (1024 for a
realistic one). Reads OUT_DIR/iris-model.pth; writes its files into a temporary folder
inside OUT_DIR and deletes it, and writes FILE if `--json` is given. safetensors comes with
the `formats` extra (`pip install -c constraints.txt ".[formats]"`); without it, its rows
are skipped.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import pickle
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from build_model import (
    MODEL_FILE,
    SEED,
    Multiclass,
    chapter_parser,
    fail,
    heading,
    load_iris_split,
    load_model_or_exit,
    positive_int,
    prepare_out_dir,
    seed_everything,
)

try:
    from safetensors.torch import load_file, safe_open, save_file
except ImportError:  # the optional `formats` extra
    save_file = load_file = safe_open = None

SIZE_MB = 32  # the synthetic model's default size: seconds, not minutes
REPEAT = 3  # timings are the median of this many runs
WIDTH = 2048  # synthetic layers are WIDTH x WIDTH float32: 16 MiB each
PAGE = 4096  # touching one value per page pulls every page into memory


# %%
# # The models measured
#
# The trained iris model, and a synthetic stack of Linear layers of about `--size-mb`
# megabytes, so sizes and timings mean something. Each comes with what it takes to
# rebuild it (its class and constructor arguments) and an input to check predictions on.


class SyntheticMLP(nn.Module):
    def __init__(self, width: int = WIDTH, depth: int = 2) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (batch, width)


@dataclass
class Subject:
    name: str
    model: nn.Module
    build: Callable[[], nn.Module]  # the Python code a state_dict needs
    model_args: dict[str, int]
    inputs: Tensor  # a batch to compare predictions on

    @property
    def state(self) -> dict[str, Tensor]:
        return dict(self.model.state_dict())

    @cached_property
    def exported(self) -> torch.export.ExportedProgram:
        """The model traced into a graph by torch.export; the batch dimension stays dynamic."""
        batch = torch.export.Dim("batch")
        return torch.export.export(self.model.eval(), (self.inputs[:5],), dynamic_shapes=({0: batch},))


def iris_subject(trained: Multiclass) -> Subject:
    return Subject("iris", trained, Multiclass, trained.constructor_args(), load_iris_split().X_test)


def synthetic_subject(size_mb: int) -> Subject:
    depth = max(1, round(size_mb / (WIDTH * WIDTH * 4 / 2**20)))
    args = {"width": WIDTH, "depth": depth}
    seed_everything(SEED)
    model = SyntheticMLP(**args).eval()
    return Subject(
        f"synthetic {depth * 16} MiB", model, lambda: SyntheticMLP(**args), args, torch.randn(7, WIDTH)
    )


# %%
# # The formats
#
# Each format is a save function, a load function, and a way to get from what was loaded
# to a working model. Plain file I/O of the same tensor bytes is the baseline: no format
# can read or write the bytes faster than the disk cache hands them over.


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    save: Callable[[Subject, Path], None]
    load: Callable[[Subject, Path], Any]
    tensors: Callable[[Any], Iterable[Tensor]]
    to_model: Callable[[Subject, Any], nn.Module]
    needs_model_code: bool
    safe: str  # "yes" or "no", for a file from an untrusted source


def state_values(loaded: Any) -> Iterable[Tensor]:
    return loaded.values()


def model_from_state(subject: Subject, state: dict[str, Tensor]) -> nn.Module:
    model = subject.build()
    model.load_state_dict(state)
    return model.eval()


def save_pickle(subject: Subject, path: Path) -> None:
    with path.open("wb") as f:
        pickle.dump(subject.state, f, protocol=pickle.HIGHEST_PROTOCOL)


def load_pickle(subject: Subject, path: Path) -> dict[str, Tensor]:
    with path.open("rb") as f:
        return pickle.load(f)  # runs code from the file: trusted files only


def save_torch(subject: Subject, path: Path) -> None:
    torch.save(subject.state, path)


def save_torch_without_crc32(subject: Subject, path: Path) -> None:
    """torch.save without the zip's CRC32 checksums: torch.load still reads the file."""
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(subject.state, path)
    finally:
        torch.serialization.set_crc32_options(previous)


def load_torch(subject: Subject, path: Path) -> dict[str, Tensor]:
    return torch.load(path, weights_only=True)


def load_torch_mmap(subject: Subject, path: Path) -> dict[str, Tensor]:
    return torch.load(path, weights_only=True, mmap=True)


def save_safetensors(subject: Subject, path: Path) -> None:
    save_file(subject.state, path, metadata={"model_args": json.dumps(subject.model_args)})


def load_safetensors(subject: Subject, path: Path) -> dict[str, Tensor]:
    return load_file(path)


def save_exported(subject: Subject, path: Path) -> None:
    torch.export.save(subject.exported, path)  # tracing happened once, before the timing


def load_exported(subject: Subject, path: Path) -> torch.export.ExportedProgram:
    return torch.export.load(path)


def save_raw(subject: Subject, path: Path) -> None:
    with path.open("wb") as f:
        for tensor in subject.state.values():
            f.write(tensor.contiguous().numpy().data)


def load_raw(subject: Subject, path: Path) -> dict[str, Tensor]:
    """Read the bytes straight into tensors whose names and shapes only the code knows."""
    state = {name: torch.empty_like(tensor) for name, tensor in subject.state.items()}
    with path.open("rb") as f:
        for tensor in state.values():
            f.readinto(tensor.numpy().data)
    return state


def state_dict_format(name: str, suffix: str, save: Callable, load: Callable, safe: str) -> Format:
    """A format that stores the state_dict: a working model needs the class to load it into."""
    return Format(name, suffix, save, load, state_values, model_from_state, needs_model_code=True, safe=safe)


FORMATS = [
    state_dict_format("pickle", ".pkl", save_pickle, load_pickle, safe="no"),
    state_dict_format("torch.save", ".pth", save_torch, load_torch, safe="yes"),
    state_dict_format("torch.save+mmap", ".pth", save_torch, load_torch_mmap, safe="yes"),
    state_dict_format("torch.save-crc32", ".pth", save_torch_without_crc32, load_torch, safe="yes"),
    state_dict_format("safetensors", ".safetensors", save_safetensors, load_safetensors, safe="yes"),
    Format(
        "torch.export",
        ".pt2",
        save_exported,
        load_exported,
        tensors=lambda program: program.state_dict.values(),
        to_model=lambda subject, program: program.module(),
        needs_model_code=False,
        safe="no",  # torch.export.load may unpickle parts of the archive with weights_only=False
    ),
    state_dict_format("raw", ".bin", save_raw, load_raw, safe="yes"),
]


# %%
# # Measuring
#
# One untimed save comes first. Files are written without fsync and read back while the
# operating system still caches them, as a second load of any file is: the measurement is
# the format's own cost, and reading from a cold disk adds the same time to every row. A
# load counts only once every byte is in memory, so every loaded tensor is touched: lazy
# loaders (mmap) pay then.
# Peak memory is the growth of the process's resident set during the load (Linux only).


@dataclass
class Row:
    model: str
    format: str
    bytes: int
    save_s: float
    load_s: float
    peak_mb: float | None
    needs_model_code: bool
    safe_for_untrusted: str
    same_predictions: bool


def touch(tensors: Iterable[Tensor]) -> None:
    for tensor in tensors:
        flat = tensor.reshape(-1)
        flat[:: max(1, PAGE // tensor.element_size())].sum()


def memory_mb(field: str) -> float | None:
    try:
        with Path("/proc/self/status").open() as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def make_memory_measurable() -> None:
    """Have glibc give each large block back to the system as soon as it is freed.

    By default glibc raises its threshold for using separate mappings after large frees,
    and keeps later freed memory for reuse: a second load would then seem to need no
    memory at all. A fixed threshold keeps every measurement honest.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc: peak memory is measured as the system reports it
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)


def reset_peak_memory() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak resident set
    except OSError:
        return False
    return True


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure_load(fmt: Format, subject: Subject, path: Path) -> tuple[float, float | None]:
    can_track = reset_peak_memory()
    before = memory_mb("VmRSS")
    start = time.perf_counter()
    loaded = fmt.load(subject, path)
    touch(fmt.tensors(loaded))
    seconds = time.perf_counter() - start
    peak = memory_mb("VmHWM") if can_track else None
    del loaded
    return seconds, None if peak is None or before is None else max(0.0, peak - before)


def predicts_the_same(fmt: Format, subject: Subject, path: Path) -> bool:
    model = fmt.to_model(subject, fmt.load(subject, path))
    with torch.no_grad():
        return torch.equal(model(subject.inputs), subject.model.eval()(subject.inputs))


def measure(fmt: Format, subject: Subject, folder: Path, repeat: int) -> Row:
    path = folder / f"{subject.name.split()[0]}{fmt.suffix}"
    fmt.save(subject, path)  # untimed warm-up: first-call costs (torch.export's tracing) are not the format's
    save_times = [timed(lambda: fmt.save(subject, path)) for _ in range(repeat)]
    loads = [measure_load(fmt, subject, path) for _ in range(repeat)]
    peaks = [peak for _, peak in loads if peak is not None]
    row = Row(
        model=subject.name,
        format=fmt.name,
        bytes=path.stat().st_size,
        save_s=statistics.median(save_times),
        load_s=statistics.median(seconds for seconds, _ in loads),
        peak_mb=max(peaks) if peaks else None,
        needs_model_code=fmt.needs_model_code,
        safe_for_untrusted=fmt.safe,
        same_predictions=predicts_the_same(fmt, subject, path),
    )
    path.unlink()
    return row


def available_formats() -> list[Format]:
    if save_file is None:
        print("safetensors is not installed: its rows are skipped. Install the extra:")
        print('  pip install -c constraints.txt ".[formats]"')
        return [fmt for fmt in FORMATS if fmt.name != "safetensors"]
    return FORMATS


def human_size(n_bytes: int) -> str:
    for unit in ("B", "KB", "MB"):
        if n_bytes < 1000:
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} GB"


def print_table(rows: list[Row]) -> None:
    raw = next(row for row in rows if row.format == "raw")
    print(
        f"{'format':<16} {'size':>9} {'save s':>8} {'x raw':>6} {'load s':>8} {'x raw':>6} {'peak MB':>8}"
        f"  {'needs class':<11} {'safe':<4} same predictions"
    )
    for row in rows:
        peak = "n/a" if row.peak_mb is None else f"{row.peak_mb:.0f}"
        needs_class = "yes" if row.needs_model_code else "no"
        print(
            f"{row.format:<16} {human_size(row.bytes):>9} {row.save_s:>8.4f} {row.save_s / raw.save_s:>6.2f}"
            f" {row.load_s:>8.4f} {row.load_s / raw.load_s:>6.2f} {peak:>8}"
            f"  {needs_class:<11} {row.safe_for_untrusted:<4} {row.same_predictions}"
        )


# %%
# # Reading one tensor of a safetensors file
#
# A safetensors file is a JSON header (names, dtypes, shapes, offsets, and your own string
# metadata) followed by the raw bytes. `safe_open` reads the header and maps the file, so
# one tensor can be read without loading the rest, and the constructor arguments stored in
# the metadata rebuild the model.


def read_one_tensor(subject: Subject, folder: Path) -> tuple[str, dict[str, str], bool]:
    path = folder / "one-tensor.safetensors"
    save_safetensors(subject, path)
    name = next(iter(subject.state))
    with safe_open(path, framework="pt") as f:
        tensor = f.get_tensor(name)
        metadata = f.metadata()
    path.unlink()
    return name, metadata, torch.equal(tensor, subject.state[name])


# %%
# # A .pt2 file runs without your code
#
# `torch.export` saves the model's computation as a graph together with the weights. A
# program that has never seen `Multiclass` loads it and predicts, here a fresh Python
# process whose import path does not include this project. The batch size was exported
# as dynamic, so it accepts any number of flowers.

RUN_PT2_ELSEWHERE = """\
import importlib.util, sys, torch
assert importlib.util.find_spec("build_model") is None, "this process must not see the project"
program = torch.export.load(sys.argv[1])
inputs = torch.load(sys.argv[2], weights_only=True)
torch.save(program.module()(inputs), sys.argv[3])
"""


def start_pt2_without_project(subject: Subject, folder: Path) -> Callable[[], bool]:
    """Start a process that cannot import this project on the .pt2; the returned function
    waits for it and tells whether it reproduced the model's outputs exactly."""
    pt2, inputs, outputs = (folder / name for name in ("iris.pt2", "inputs.pt", "outputs.pt"))
    save_exported(subject, pt2)
    torch.save(subject.inputs, inputs)
    command = [
        sys.executable,
        "-I",
        "-c",
        RUN_PT2_ELSEWHERE,
        *(str(p.resolve()) for p in (pt2, inputs, outputs)),
    ]
    process = subprocess.Popen(command, cwd=folder, stderr=subprocess.PIPE, text=True)

    def same_outputs() -> bool:
        _, stderr = process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"the .pt2 failed to run without the project:\n{stderr}")
        with torch.no_grad():
            return torch.equal(torch.load(outputs, weights_only=True), subject.model(subject.inputs))

    return same_outputs


# %%
# # A hostile file, for real
#
# A pickle can name any function for the unpickler to call. This one, harmless, names
# `exec` with code that creates a marker file. Each load is tried in a fresh process in a
# temporary folder, and the marker tells whether the file's code ran. Safe loaders refuse
# it; `get_unsafe_globals_in_checkpoint` shows what it would call without loading it; and
# safetensors cannot even store it, since it holds tensors and strings only.

MARKER = "code-from-the-file-ran"


class Hostile:
    """Unpickling this runs `exec`, which creates `marker`: harmless, and plain to see."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def write_hostile_files(place: Path) -> Path:
    """hostile.pkl (plain pickle) and hostile.pth (torch.save) in `place`; returns the marker."""
    place.mkdir()
    marker = place.resolve() / MARKER  # absolute: whichever folder the loader runs in
    (place / "hostile.pkl").write_bytes(pickle.dumps(Hostile(marker)))
    torch.save({"weight": Hostile(marker)}, place / "hostile.pth")
    return marker


UNSAFE_LOADS = {  # each runs in a throwaway process
    "pickle.load": "import pickle; pickle.load(open('hostile.pkl', 'rb'))",
    "torch.load(weights_only=False)": "import torch; torch.load('hostile.pth', weights_only=False)",
}


@dataclass
class HostileOutcome:
    loader: str
    code_ran: bool
    error: str  # the loader's exception, "" when it loaded


def refusal(error_type: str, message: str) -> str:
    key = re.search(r"(Unsupported global: GLOBAL \S+|unsupported GLOBAL \S+)", message)
    return f"{error_type}: {key.group(1) if key else message.strip().splitlines()[-1][:120]}"


def hostile_loads(folder: Path) -> list[HostileOutcome]:
    """The unsafe loaders in fresh processes, side by side; the safe one right here, in
    this process: that is what safe means."""
    runs = {}
    for index, (loader, code) in enumerate(UNSAFE_LOADS.items()):
        place = folder / f"try-{index}"
        marker = write_hostile_files(place)
        command = [sys.executable, "-I", "-c", code]
        runs[loader] = (marker, subprocess.Popen(command, cwd=place, stderr=subprocess.PIPE, text=True))

    marker = write_hostile_files(folder / "try-here")
    try:
        torch.load(marker.parent / "hostile.pth", weights_only=True)
        error = ""
    except pickle.UnpicklingError as err:
        error = refusal(type(err).__name__, str(err))
    outcomes = [HostileOutcome("torch.load(weights_only=True)", marker.exists(), error)]

    for loader, (marker, process) in runs.items():
        _, stderr = process.communicate()
        types = re.findall(r"^\w+(?:\.\w+)*(?:Error|Exception)", stderr, flags=re.MULTILINE)
        error = refusal(types[-1] if types else "error", stderr) if process.returncode else ""
        outcomes.insert(-1, HostileOutcome(loader, marker.exists(), error))
    return outcomes


def hostile_demo(folder: Path) -> tuple[list[HostileOutcome], list[str], str]:
    """Outcome per loader, what the checkpoint reveals unloaded, and safetensors' refusal."""
    outcomes = hostile_loads(folder)
    revealed = torch.serialization.get_unsafe_globals_in_checkpoint(folder / "try-here" / "hostile.pth")
    not_stored = "safetensors not installed"
    if save_file is not None:
        try:
            save_file({"weight": Hostile(folder / MARKER)}, folder / "hostile.safetensors")
        except (ValueError, TypeError) as err:
            not_stored = f"{type(err).__name__}: {err}"
    return outcomes, revealed, not_stored


def show_hostile_demo(folder: Path) -> None:
    outcomes, revealed, refusal = hostile_demo(folder)
    for outcome in outcomes:
        verdict = "RAN the file's code" if outcome.code_ran else "ran nothing"
        print(f"  {outcome.loader:<31} -> {verdict}{'; ' + outcome.error if outcome.error else ''}")
    print(f"  get_unsafe_globals_in_checkpoint -> {revealed}, without loading it")
    print(f"  safetensors save_file           -> {refusal}")


# %%
# # What to use when
#
# Derived from the table just measured, not written in advance.


def recommend(rows: list[Row]) -> list[str]:
    by_format = {row.format: row for row in rows}
    raw = by_format["raw"]
    safe_state = [r for r in rows if r.safe_for_untrusted == "yes" and r.format != "raw"]
    fastest = min(safe_state, key=lambda r: r.load_s)
    lines = [
        f"Weights you share or download: {fastest.format}, the fastest safe loader here "
        f"({fastest.load_s / raw.load_s:.2f}x the raw read); "
        + ", ".join(f"{r.format} {r.load_s / raw.load_s:.2f}x" for r in safe_state if r is not fastest)
        + ".",
        "Training checkpoints (optimizer state, epoch, RNG): torch.save, loaded with weights_only=True; "
        "safetensors holds only tensors and string metadata.",
    ]
    if "torch.export" in by_format:
        lines.append(
            "Deployment without your Python code: torch.export (.pt2), the only format here that needs no "
            "class, but from trusted sources only: its loader may unpickle parts of the file."
        )
    pickle_row = by_format["pickle"]
    lines.append(
        f"Never plain pickle: it runs code from the file, and is no faster "
        f"(load {pickle_row.load_s / raw.load_s:.2f}x raw)."
    )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = chapter_parser(__doc__)
    parser.add_argument(
        "--size-mb", type=positive_int, default=SIZE_MB, help=f"synthetic model size (default: {SIZE_MB})"
    )
    parser.add_argument(
        "--repeat", type=positive_int, default=REPEAT, help=f"runs per timing (default: {REPEAT})"
    )
    parser.add_argument("--json", type=Path, help="also write the table's rows to this JSON file")
    return parser.parse_args(argv)


def write_json(rows: list[Row], path: Path) -> None:
    try:
        path.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    except OSError as err:
        fail(f"cannot write {path}: {err.strerror}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    trained = load_model_or_exit(args.out_dir / MODEL_FILE)
    out_dir = prepare_out_dir(args.out_dir)
    if args.json and not args.json.parent.is_dir():
        fail(f"cannot write {args.json}: folder {args.json.parent} does not exist")
    formats = available_formats()
    make_memory_measurable()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=out_dir, prefix="compare-formats-") as scratch:
        folder = Path(scratch)
        iris = iris_subject(trained)
        for subject in [iris, synthetic_subject(args.size_mb)]:
            heading(f"{subject.name}: median of {args.repeat} runs")
            subject_rows = [measure(fmt, subject, folder, args.repeat) for fmt in formats]
            print_table(subject_rows)
            rows += subject_rows
        if safe_open is not None:
            name, metadata, exact = read_one_tensor(subject, folder)
            print(f"safe_open: read {name} alone (exact: {exact}); metadata {metadata}")

        pt2_elsewhere = start_pt2_without_project(iris, folder)  # runs while the hostile loads do
        heading("A hostile file: does loading run its code?")
        show_hostile_demo(folder)
        heading("torch.export: the .pt2 in a process that cannot import this project")
        print(f"45 flowers, batch size not seen at export: same predictions {pt2_elsewhere()}")

    heading(f"What to use when (from the {subject.name} table)")
    for line in recommend(subject_rows):
        print(f"- {line}")
    if args.json:
        write_json(rows, args.json)
        print(f"\nRows written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

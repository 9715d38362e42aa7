# %% [markdown]
# # Chapter 8: which file format to use
#
# pickle, `torch.save`, `torch.save` with mmap, `torch.save` without checksums,
# safetensors and `torch.export` save and load the same weights, measured on this machine
# in one run: file size, save and load time against plain file I/O of the same bytes, peak
# memory while loading, whether a working model needs your Python class, whether a file
# from a stranger is safe to load, and whether the loaded model predicts exactly the same.
# Then the model as ONNX, run by ONNX Runtime, and what replaces TorchScript; and a
# harmless hostile file shows which loaders run code from the file, and which refuse it.
#
#     python compare_formats.py [--size-mb 32] [--repeat 3] [--json FILE]
#
# `--size-mb` sets the size of a synthetic model measured next to the iris one (try 1024
# for a realistic one); it is made of 16 MiB layers, so the size is rounded to a multiple
# of 16.
#
# **Reads** `OUT_DIR/iris-model.pth` (default `artifacts/`), written by chapter 2.
# **Writes** `OUT_DIR/iris.pt2` and `OUT_DIR/iris.safetensors`, the iris model in the two
# formats that travel without a pickle, and `OUT_DIR/iris.onnx`, and leaves them for you to use;
# `OUT_DIR/formats.png`, the table as a picture, when matplotlib is installed (the `plots`
# extra); and FILE if `--json` is given. Every other file it measures lives in a private
# temporary folder inside OUT_DIR, deleted at the end. safetensors comes with the
# `formats` extra, ONNX Runtime with `onnxrt`; without them, their parts are skipped.
#
# Next: chapter 9, `python share_model.py`, sharing a model with people who do not have your code.

# %%
from __future__ import annotations

import importlib.util
import json
import logging
import pickle
import shutil
import statistics
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

# The command line first, before torch is imported: --help, a bad flag, a missing file and
# Ctrl-C are answered at once, in one line.
from support.cli import (
    available_memory_mb,
    chapter_parser,
    check_writable_file,
    fail,
    parse_chapter_args,
    positive_int,
    prepare_out_dir,
    require_inputs,
    temporary_folder,
)
from support.settings import MODEL_FILE, SEED, train_command

SIZE_MB = 32  # the synthetic model's default size: seconds, not minutes
REPEAT = 3  # timings are the median of this many runs
WIDTH = 2048  # synthetic layers are WIDTH x WIDTH float32 ...
LAYER_MIB = WIDTH * WIDTH * 4 // 2**20  # ... 16 MiB each
PICKLE_PEAK = 3  # the model, plus twice its size while pickle loads it: the most this run holds
BASE_MIB = 512  # what Python, torch and the iris model take besides
# Below this size a save or load takes a fraction of a millisecond, mostly fixed costs and the
# scheduler's noise: the iris table's times as a multiple of raw file I/O went from 0.15x to 54x.
TIMEABLE_BYTES = 10**6

parser = chapter_parser()
parser.add_argument(
    "--size-mb",
    type=positive_int,
    default=SIZE_MB,
    help=f"size of the synthetic model in MiB, rounded to whole {LAYER_MIB} MiB layers "
    f"({WIDTH}x{WIDTH} float32), at least one; {PICKLE_PEAK} times that, as pickle's load needs, "
    f"must fit into the available memory (default: {SIZE_MB})",
)
parser.add_argument(
    "--repeat",
    type=positive_int,
    default=REPEAT,
    help=f"runs per timing; the table shows the median (default: {REPEAT})",
)
parser.add_argument("--json", type=Path, help="also write the table's rows to this JSON file")
args = parse_chapter_args(parser)

depth = max(1, round(args.size_mb / LAYER_MIB))
synthetic_mib = depth * LAYER_MIB
available_mib = available_memory_mb()
needed_mib = synthetic_mib * PICKLE_PEAK + BASE_MIB
if available_mib is not None and needed_mib > available_mib:
    fail(
        f"--size-mb {args.size_mb} needs about {needed_mib} MiB of memory (the model, twice it while"
        f" pickle loads, and {BASE_MIB} for Python and torch), but only {available_mib:.0f} MiB are available"
    )
if args.json:
    check_writable_file(args.json)
require_inputs(args.out_dir / MODEL_FILE, made_by=train_command(args.out_dir))

import torch
from torch import Tensor, nn

from build_model import Multiclass, load_iris_split, same_outputs, seed_everything
from support.lab_tools import (
    FRESH_PROCESS,
    Hostile,
    make_memory_measurable,
    run_fresh_python,
    run_in_child,
    timed,
    timed_with_peak_memory,
    touch,
)
from support.pictures import import_pyplot
from support.untrusted_files import load_model_or_exit

try:
    from safetensors.torch import load_file, safe_open, save_file
except ImportError:  # the optional `formats` extra
    save_file = load_file = safe_open = None
try:
    import onnxruntime
except ImportError:  # the optional `onnxrt` extra, with onnxscript, which torch.onnx.export needs
    onnxruntime = None
if importlib.util.find_spec("onnxscript") is None:
    onnxruntime = None
# torch.onnx logs a warning for each torchvision operator it cannot register without torchvision
logging.getLogger("torch.onnx").setLevel(logging.ERROR)

trained = load_model_or_exit(args.out_dir / MODEL_FILE, Multiclass, made_by=train_command(args.out_dir))
out_dir = prepare_out_dir(args.out_dir)
scratch = temporary_folder("compare-formats-", parent=out_dir)  # only we can enter; gone at the end
plt = import_pyplot(out_dir / "formats.png")  # None, after a line saying how to get it, without matplotlib

# %% [markdown]
# ## The models measured
#
# The trained iris model, and a synthetic stack of Linear layers of about `--size-mb`
# MiB, so that sizes and timings mean something. For each: the code that builds it (its
# class and constructor arguments, which every format but one needs) and a batch of
# inputs to compare predictions on.


# %%
class SyntheticMLP(nn.Module):
    def __init__(self, width: int = WIDTH, depth: int = 2) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *[nn.Sequential(nn.Linear(width, width), nn.ReLU()) for _ in range(depth)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)  # (batch, width)

    def constructor_args(self) -> dict[str, int]:
        return {"width": self.layers[0][0].in_features, "depth": len(self.layers)}


seed_everything(SEED)
synthetic = SyntheticMLP(WIDTH, depth).eval()
X_test = load_iris_split().X_test  # (45, 4)
models = {  # name: (model, the code that builds it, inputs to compare predictions on)
    "iris": (trained, partial(Multiclass, **trained.constructor_args()), X_test),
    f"synthetic {synthetic_mib} MiB": (
        synthetic,
        partial(SyntheticMLP, **synthetic.constructor_args()),
        torch.randn(7, WIDTH),
    ),
}
print(
    f"synthetic {synthetic_mib} MiB: {depth} Linear layer{'s' if depth > 1 else ''}"
    f" of {WIDTH}x{WIDTH} float32 (--size-mb {args.size_mb}, rounded to whole {LAYER_MIB} MiB layers)"
)

# %% [markdown]
# ## Getting a working model back
#
# Each format below has a save and a load. Every load ends with a working model: the
# formats that store a state_dict build the model under `torch.device("meta")` (no memory,
# no random initialisation) and hand it the loaded tensors with `assign=True`, as chapter 7
# shows, so the time and the memory measured are the format's own. In your own project,
# `model = Multiclass()` and `model.load_state_dict(...)` without `assign` work just as well.


# %%
def into_model(build: Callable[[], nn.Module], state: dict[str, Tensor]) -> nn.Module:
    with torch.device("meta"):
        model = build()
    model.load_state_dict(state, assign=True)
    return model.eval()


def human_size(n_bytes: int) -> str:
    if n_bytes < 1000:
        return f"{n_bytes} B"
    return f"{n_bytes / 1e3:.1f} KB" if n_bytes < 1e6 else f"{n_bytes / 1e6:.1f} MB"


def show_round_trip(format_name: str, path: Path, loaded: nn.Module) -> None:
    with torch.no_grad():
        same = torch.equal(loaded(X_test), trained(X_test))
    where = f"{path}, kept" if path.parent == out_dir else "temporary"
    print(f"{format_name:<16}  {human_size(path.stat().st_size):>9}  same predictions {same}  ({where})")


iris_build = models["iris"][1]

# %% [markdown]
# ## pickle
#
# Python's own serializer stores any object. `pickle.load` rebuilds it by calling the
# functions the file names, whatever they are: never load a pickle you did not make.

# %%
print("\n## Each format, once, on the iris model")


def save_pickle(model: nn.Module, path: Path) -> None:
    with path.open("wb") as f:
        pickle.dump(model.state_dict(), f, protocol=pickle.HIGHEST_PROTOCOL)


def load_pickle(path: Path, build: Callable[[], nn.Module]) -> nn.Module:
    with path.open("rb") as f:
        return into_model(build, pickle.load(f))  # runs whatever the file names


save_pickle(trained, scratch / "iris.pkl")
loaded = load_pickle(scratch / "iris.pkl", iris_build)
show_round_trip("pickle", scratch / "iris.pkl", loaded)

# %% [markdown]
# ## torch.save and torch.load
#
# `torch.save` writes a zip archive: `data.pkl`, a pickle of the structure, and one record
# of raw bytes per storage (tensors that share memory share a record), each with a CRC32
# checksum. `torch.load(path, weights_only=True)` unpickles with an allowlist: tensors and
# plain containers, nothing else. `mmap=True` maps the file instead of reading it, so the
# bytes are read when first used.


# %%
def save_torch(model: nn.Module, path: Path) -> None:
    torch.save(model.state_dict(), path)


def load_torch(path: Path, build: Callable[[], nn.Module]) -> nn.Module:
    return into_model(build, torch.load(path, weights_only=True))


def load_torch_mmap(path: Path, build: Callable[[], nn.Module]) -> nn.Module:
    return into_model(build, torch.load(path, weights_only=True, mmap=True))


save_torch(trained, scratch / "iris.pth")
show_round_trip("torch.save", scratch / "iris.pth", load_torch(scratch / "iris.pth", iris_build))
show_round_trip("torch.save+mmap", scratch / "iris.pth", load_torch_mmap(scratch / "iris.pth", iris_build))

# %% [markdown]
# ## torch.save without CRC32 checksums
#
# `torch.save` computes a CRC32 checksum of each record. `set_crc32_options(False)` skips
# it and writes 0 as every checksum. What that saves depends on the machine: CRC32 runs at
# several GB/s on a CPU with instructions for it, so the saved time is often lost in the
# noise of the tables below. `torch.load` never checks the checksums anyway, so it reads
# the file as before (and would read a flipped byte in `data/0` just as silently from
# either file); but `unzip -t` and `zipfile.testzip()` now report every record as a bad
# CRC, so nothing can verify the file. Keep the checksums.


# %%
def save_torch_without_crc32(model: nn.Module, path: Path) -> None:
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(model.state_dict(), path)
    finally:
        torch.serialization.set_crc32_options(previous)


no_crc32 = scratch / "no-crc32" / "iris.pth"  # the same file name: a torch.save zip stores it inside
no_crc32.parent.mkdir()
save_torch_without_crc32(trained, no_crc32)
show_round_trip("torch.save-crc32", no_crc32, load_torch(no_crc32, iris_build))

# %% [markdown]
# ## safetensors
#
# A safetensors file is a JSON header (names, dtypes, shapes, offsets, and string metadata
# of your own) followed by the raw bytes. Loading it parses the header and maps the bytes:
# no pickle, so no code can hide in it. It stores tensors only, so keep the constructor
# arguments in its metadata. This one stays in OUT_DIR for you to use.
#
# To copy: `recipes/save_load_safetensors.py`; tied weights:
# `recipes/fix_safetensors_shared_tensors.py`.


# %%
def save_safetensors(model: nn.Module, path: Path) -> None:
    save_file(model.state_dict(), path, metadata={"model_args": json.dumps(model.constructor_args())})


def load_safetensors(path: Path, build: Callable[[], nn.Module]) -> nn.Module:
    return into_model(build, load_file(path))


if save_file is None:
    print("safetensors is not installed: its rows are skipped. To measure it too:")
    print('  pip install -c constraints.txt ".[formats]"')
else:
    save_safetensors(trained, out_dir / "iris.safetensors")
    loaded = load_safetensors(out_dir / "iris.safetensors", iris_build)
    show_round_trip("safetensors", out_dir / "iris.safetensors", loaded)

# %% [markdown]
# ## torch.export: the computation itself
#
# `torch.export.export` traces the model's forward into a graph; `torch.export.save`
# writes the graph together with the weights to a `.pt2` file. `torch.export.load(path)
# .module()` gives back a working model without your class. The batch dimension is
# exported as dynamic, so the model accepts any number of inputs. Tracing happens once,
# here, and is not part of the save times below. This file stays in OUT_DIR too.

# %%
programs: dict[nn.Module, torch.export.ExportedProgram] = {}
for model, _, inputs in models.values():
    batch = torch.export.Dim("batch")
    programs[model] = torch.export.export(model.eval(), (inputs[:5],), dynamic_shapes=({0: batch},))


def save_exported(model: nn.Module, path: Path) -> None:
    torch.export.save(programs[model], path)


def load_exported(path: Path, build: Callable[[], nn.Module]) -> nn.Module:
    with warnings.catch_warnings():
        # torch 2.10's loader wraps the archive's read-only bytes with torch.frombuffer, which
        # warns that they are not writable; it never writes to them, so the warning says nothing.
        warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
        program = torch.export.load(path)
    return program.module()  # `build` is not used: no class needed


save_exported(trained, out_dir / "iris.pt2")
show_round_trip("torch.export", out_dir / "iris.pt2", load_exported(out_dir / "iris.pt2", iris_build))

# %% [markdown]
# ## Raw file I/O: the baseline
#
# The tensors' bytes, one after the other, and nothing else: names, shapes and dtypes
# live only in your code. It is the yardstick, 1x, in the tables below. Rows within a few
# tenths of 1x do about the same work; on a busy machine timings move that much between
# runs.


# %%
def save_raw(model: nn.Module, path: Path) -> None:
    with path.open("wb") as f:
        for tensor in model.state_dict().values():
            f.write(tensor.contiguous().numpy().data)


def load_raw(path: Path, build: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        shapes = build().state_dict()  # names, shapes and dtypes, from the code
    state = {name: torch.empty_like(tensor, device="cpu") for name, tensor in shapes.items()}
    with path.open("rb") as f:
        for tensor in state.values():
            f.readinto(tensor.numpy().data)
    return into_model(build, state)


save_raw(trained, scratch / "iris.bin")
show_round_trip("raw", scratch / "iris.bin", load_raw(scratch / "iris.bin", iris_build))

# %% [markdown]
# ## Measuring
#
# For each model and format: one untimed save first, then the median of `--repeat` saves
# and loads. Files are written without fsync and read back while the operating system
# still caches them, as a second load of any file is: the measurement is the format's own
# cost, and reading from a cold disk adds the same time to every row. A load counts only
# once every byte is in memory, so every loaded tensor is touched: lazy loaders pay then.
# Peak memory is how far the process's resident set grows during the load (Linux only).

# %%
FORMATS = {  # name: save, load, file suffix, needs your class for a working model, safe from a stranger
    "pickle": (save_pickle, load_pickle, ".pkl", True, "no"),
    "torch.save": (save_torch, load_torch, ".pth", True, "yes"),
    "torch.save+mmap": (save_torch, load_torch_mmap, ".pth", True, "yes"),
    "torch.save-crc32": (save_torch_without_crc32, load_torch, ".pth", True, "yes"),
    "safetensors": (save_safetensors, load_safetensors, ".safetensors", True, "yes"),
    "torch.export": (save_exported, load_exported, ".pt2", False, "no"),  # its loader may unpickle
    "raw": (save_raw, load_raw, ".bin", True, "yes"),
}
if save_file is None:
    del FORMATS["safetensors"]
make_memory_measurable()


def load_every_byte(load: Callable, path: Path, build: Callable[[], nn.Module]) -> nn.Module:
    model = load(path, build)
    touch(model.state_dict().values())  # lazy loaders (mmap) read the bytes now
    return model


def measure(format_name: str, model_name: str) -> dict:
    save, load, suffix, needs_class, safe = FORMATS[format_name]
    model, build, inputs = models[model_name]
    path = scratch / f"{model_name}{suffix}"  # one name per model: a .pt2 stores its name inside
    save(model, path)  # untimed: first-call costs are not the format's
    save_times = [timed(lambda: save(model, path)) for _ in range(args.repeat)]
    load_times, peaks, loaded = [], [], None
    for _ in range(args.repeat):
        del loaded  # before the next load: its memory is measured from here
        loaded, seconds, peak = timed_with_peak_memory(lambda: load_every_byte(load, path, build))
        load_times.append(seconds)
        peaks.append(peak)
    with torch.no_grad():  # the last load's model: loading once more would only repeat it
        same = torch.equal(loaded(inputs), model.eval()(inputs))
    row = {
        "model": model_name,
        "format": format_name,
        "bytes": path.stat().st_size,
        "save_s": statistics.median(save_times),
        "load_s": statistics.median(load_times),
        "peak_mb": None if None in peaks else max(peaks),
        "needs_model_code": needs_class,
        "safe_for_untrusted": safe,
        "same_predictions": same,
    }
    path.unlink()
    return row


def print_table(rows: list[dict]) -> None:
    raw = rows[-1]
    print(
        f"{'format':<16} {'size':>9} {'save s':>8} {'x raw':>6} {'load s':>8} {'x raw':>6} {'peak MiB':>9}"
        f"  {'needs class':<11} {'safe':<4} same predictions"
    )
    timeable = raw["bytes"] >= TIMEABLE_BYTES
    for row in rows:
        peak = "n/a" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"
        save_x = f"{row['save_s'] / raw['save_s']:.2f}" if timeable else "-"
        load_x = f"{row['load_s'] / raw['load_s']:.2f}" if timeable else "-"
        print(
            f"{row['format']:<16} {human_size(row['bytes']):>9} {row['save_s']:>8.4f} {save_x:>6}"
            f" {row['load_s']:>8.4f} {load_x:>6}"
            f" {peak:>9}  {'yes' if row['needs_model_code'] else 'no':<11} {row['safe_for_untrusted']:<4}"
            f" {row['same_predictions']}"
        )


rows = []
for model_name in models:
    print(f"\n## {model_name}: median of {args.repeat} runs")
    model_rows = [measure(format_name, model_name) for format_name in FORMATS]
    print_table(model_rows)
    rows += model_rows
    if model_rows[-1]["bytes"] < TIMEABLE_BYTES:
        print(f"(x raw: none under {human_size(TIMEABLE_BYTES)}, where it changes tenfold from run to run)")

# %% [markdown]
# ## How to read the table
#
# Raw file I/O copies every byte from the operating system's cache into fresh memory.
# Loads far below 1x raw copy nothing: `torch.load(..., mmap=True)` and safetensors'
# `load_file` map the cached file, and touching a page then costs a page fault, not a
# copy. Pickle holds a second copy of the bytes while loading, hence about twice the peak
# memory. torch.export's load rebuilds the graph as well as the weights, and what that costs
# depends on torch's version: for the 32 MiB model it peaked at 48 MiB on torch 2.10, at 32
# on 2.13 and 2.15. Below 1 MB, the times are shown but not as multiples of raw file I/O:
# a fraction of a millisecond each, their ratios change tenfold from run to run.

# %%
synthetic_rows = model_rows  # the last table: the synthetic model
raw = synthetic_rows[-1]
mapped = [row for row in synthetic_rows if row["format"] in ("torch.save+mmap", "safetensors")]
below = [
    f"{row['format']} {row['load_s'] / raw['load_s']:.2f}x" for row in mapped if row["load_s"] < raw["load_s"]
]
if below:
    print(f"\nLoads below 1x raw ({', '.join(below)}): they map the cached file instead of copying it.")

# %% [markdown]
# ## Reading one tensor of a safetensors file
#
# `safe_open` reads the header and maps the file, so one tensor can be read without
# loading the rest, and the constructor arguments stored in the metadata rebuild the
# model from the file alone.

# %%
if safe_open is not None:
    safetensors_file = out_dir / "iris.safetensors"
    with safe_open(safetensors_file, framework="pt") as f:
        metadata = f.metadata()
        hidden_weight = f.get_tensor("hidden.weight")
    model_args = json.loads(metadata["model_args"])
    rebuilt = Multiclass(**model_args)
    rebuilt.load_state_dict(load_file(safetensors_file))
    print(f"\n## safe_open({safetensors_file})")
    exact = torch.equal(hidden_weight, trained.hidden.weight)
    print(f"hidden.weight alone: shape {tuple(hidden_weight.shape)}, exact {exact}")
    print(f"metadata: {metadata}")
    print(f"Multiclass(**model_args) + load_file: same predictions {same_outputs(rebuilt, trained, X_test)}")

# %% [markdown]
# ## A .pt2 file runs without your code
#
# A program that has never seen `Multiclass` loads the `.pt2` and predicts:
# `fresh_process/run_pt2.py`, run with `python -I` in a fresh process whose import path holds
# neither this project nor the current folder (it checks that it cannot import
# `build_model`). It gets all 45 test flowers at once, a batch size the model was not
# exported with.
#
# To copy: `recipes/export_model_without_class.py`.

# %%
pt2_inputs, pt2_outputs = scratch.resolve() / "inputs.pt", scratch.resolve() / "outputs.pt"
torch.save(X_test, pt2_inputs)
child = run_fresh_python(
    FRESH_PROCESS / "run_pt2.py",
    (out_dir / "iris.pt2").resolve(),
    pt2_inputs,
    pt2_outputs,
    cwd=scratch,
    check=True,
)
with torch.no_grad():
    same = torch.equal(torch.load(pt2_outputs, weights_only=True), trained(X_test))
print("\n## torch.export: the .pt2 in a process that cannot import this project")
print(f"fresh_process/run_pt2.py: {child.stdout.strip().split(': ')[-1]}, same predictions {same}")

# %% [markdown]
# ## ONNX: the same model for other runtimes
#
# TorchScript (`torch.jit.script`, `torch.jit.trace`) is deprecated: PyTorch's docs point
# to `torch.export` in its place. What replaces it depends on where the model runs. In
# Python, the `.pt2` above. In C++ or a server without Python, AOTInductor compiles that
# same exported program into a package a small C++ runtime loads
# (`recipes/export_aot_inductor_package.py`). In another runtime (ONNX Runtime, a phone, a
# browser), ONNX: `torch.onnx.export` turns the exported graph into ONNX operators. Either
# file answers "load a model without its code": it holds the computation, not a reference
# to your class, so nothing needs `Multiclass` to run it. ONNX Runtime computes in its
# own kernels, so its outputs differ from torch's in the last bits; the run prints how
# far, on 45 flowers when 5 were exported with, as the batch dimension is dynamic.
# `torch.onnx.export(model, (example,), path, dynamic_shapes=...)` traces the model with
# torch.export itself; given the program exported above, it does not trace twice.
# `onnxruntime` and `onnxscript` come with the `onnxrt` extra.

# %%
ONNX_TOLERANCE = 1e-5  # float32 log-probabilities of about 1: a few units in the last place
if onnxruntime is None:
    print("\nonnxruntime or onnxscript is not installed: the ONNX section is skipped. To run it too:")
    print('  pip install -c constraints.txt ".[onnxrt]"')
else:
    onnx_path = out_dir / "iris.onnx"
    with warnings.catch_warnings():
        # torch 2.13's exporter copies torch's own pytree specs, which warns of an API it replaced
        warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated", category=FutureWarning)
        torch.onnx.export(
            programs[trained],  # exported above with a dynamic batch dimension, from 5 flowers
            (X_test[:5],),
            onnx_path,
            input_names=["flowers"],
            output_names=["log_probs"],
            dynamic_shapes=({0: "batch"},),  # the name the file gives the dynamic dimension
            external_data=False,  # the weights inside the one file
            verbose=False,  # no progress lines
            report=False,
        )
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: ONNX Runtime logs its warnings to stderr
    session = onnxruntime.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    (log_probs,) = session.run(None, {"flowers": X_test.numpy()})  # (45, 3), numpy in and out
    with torch.no_grad():
        expected = trained(X_test)
    max_difference = (torch.from_numpy(log_probs) - expected).abs().max().item()
    same_classes = torch.equal(torch.from_numpy(log_probs).argmax(dim=1), expected.argmax(dim=1))
    print(f"\n## ONNX: {onnx_path}, {human_size(onnx_path.stat().st_size)}, run by ONNX Runtime")
    print(f"input {session.get_inputs()[0].shape}, given {log_probs.shape[0]} flowers")
    print(
        f"max abs difference from torch {max_difference:.1e}, within {ONNX_TOLERANCE:.0e}"
        f" {max_difference <= ONNX_TOLERANCE}; same predicted classes {same_classes}"
    )

# %% [markdown]
# ## A hostile file, for real
#
# A pickle can name any function for the unpickler to call. This one, harmless, names
# `exec` with code that creates a marker file; the marker tells whether the file's code
# ran. The files are written into the private temporary folder (mode 0700), so nobody
# else can swap them before they are read. The two unsafe loads run in a child process
# forked from this one (`run_in_child`): whatever the file's code changes in a process,
# torch or pickle themselves for instance, it changes in that copy, not in this process,
# which goes on to load the file the safe way. A child is no sandbox: it runs as you, with
# your files, your network and a copy of this process's memory.
# `torch.load(..., weights_only=True)` runs right here, in this process: that is what
# safe means. `get_unsafe_globals_in_checkpoint` lists what the file would call, without
# loading it, and safetensors cannot store the object at all: it holds tensors and strings.

# %%
marker = scratch.resolve() / "code-from-the-file-ran"
with (scratch / "hostile.pkl").open("wb") as f:
    pickle.dump(Hostile(marker), f)
torch.save({"weight": Hostile(marker)}, scratch / "hostile.pth")


def load_with_pickle(path: Path) -> None:
    with path.open("rb") as f:
        pickle.load(f)  # runs the file's code


def load_with_torch_unsafely(path: Path) -> None:
    torch.load(path, weights_only=False)  # runs the file's code too


print("\n## A hostile file: does loading run its code?")
for loader, load, file in [
    ("pickle.load", load_with_pickle, scratch / "hostile.pkl"),
    ("torch.load(weights_only=False)", load_with_torch_unsafely, scratch / "hostile.pth"),
]:
    marker.unlink(missing_ok=True)
    run_in_child(load, file)
    verdict = "RAN the file's code" if marker.exists() else "ran nothing"
    print(f"  {loader:<32} -> {verdict} (in a child process)")

marker.unlink(missing_ok=True)
refusal = None
try:
    torch.load(scratch / "hostile.pth", weights_only=True)
except pickle.UnpicklingError as err:
    refusal = err
verdict = "RAN the file's code" if marker.exists() else "ran nothing"
outcome = f"refused with {type(refusal).__name__}" if refusal else "loaded"
print(f"  {'torch.load(weights_only=True)':<32} -> {verdict}, {outcome} (in this process)")
unsafe_globals = torch.serialization.get_unsafe_globals_in_checkpoint(scratch / "hostile.pth")
print(f"  {'get_unsafe_globals_in_checkpoint':<32} -> {unsafe_globals}, without loading it")
if save_file is not None:
    try:
        save_file({"weight": Hostile(marker)}, scratch / "hostile.safetensors")
    except (ValueError, TypeError) as err:
        print(f"  {'safetensors save_file':<32} -> {type(err).__name__}: {str(err).splitlines()[0]}")

# %% [markdown]
# ## What to use when
#
# By what each format is, with this run's figures beside it. The advice does not rank the
# formats by their load times: a few hundredths of a second apart, those change places from
# run to run.


# %%
def load_figure(format_name: str) -> str:
    row = next((row for row in synthetic_rows if row["format"] == format_name), None)
    if row is None:
        return f"{format_name}: not measured (the formats extra)"
    peak = "" if row["peak_mb"] is None else f", peak {row['peak_mb']:.0f} MiB"
    return f"{format_name} loads in {row['load_s'] / raw['load_s']:.2f}x the raw read{peak}"


advice = [
    "Weights you share or download: safetensors. It holds only tensors and strings, so loading runs"
    " nothing; torch.save loaded with weights_only=True is safe too, but its file is still a pickle."
    f" Here: {load_figure('safetensors')}; {load_figure('torch.save')}.",
    "Training checkpoints (optimizer state, epoch, RNG): torch.save, loaded with weights_only=True;"
    " safetensors holds only tensors and string metadata.",
    "Deployment without your Python code: torch.export (.pt2) in Python, AOTInductor in C++, ONNX in"
    " other runtimes: the formats here that need no class. Trusted sources only: the .pt2 loader may"
    " unpickle parts of the file.",
    f"Never plain pickle: it runs code from the file. Here: {load_figure('pickle')}.",
]
print(f"\n## What to use when (from the {synthetic_rows[0]['model']} table)")
for line in advice:
    print(f"- {line}")

# %% [markdown]
# ## The table as a picture
#
# Save and load time as a multiple of raw file I/O, and the peak memory while loading,
# for each format, from this run's synthetic-model rows: your machine, not a fixed picture.

# %%
plotted = {  # the bars, exactly as drawn
    "format": [row["format"] for row in synthetic_rows],
    "save_x_raw": [row["save_s"] / raw["save_s"] for row in synthetic_rows],
    "load_x_raw": [row["load_s"] / raw["load_s"] for row in synthetic_rows],
    "peak_mb": [row["peak_mb"] for row in synthetic_rows],
}
if plt:  # matplotlib, imported in the first cell where it is installed
    okabe_ito = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"]
    hatches = ["//", "\\\\", "..", "xx", "++", "--", "", "oo"]
    colours = [okabe_ito[i % 7] if name != "raw" else "#999999" for i, name in enumerate(plotted["format"])]
    fig, panels = plt.subplots(1, 3, figsize=(12, 4.4), sharey=True, layout="constrained")
    places = range(len(plotted["format"]))
    panel_data = [
        (plotted["save_x_raw"], "Save time", "multiple of raw file I/O time (x)", "{:.2f}x"),
        (
            plotted["load_x_raw"],
            "Load time, to a working model",
            "multiple of raw file I/O time (x)",
            "{:.2f}x",
        ),
        (
            [p or 0 for p in plotted["peak_mb"]],
            "Peak memory while loading",
            "MiB the resident set grew by",
            "{:.0f}",
        ),
    ]
    for axes, (values, title, xlabel, label) in zip(panels, panel_data, strict=True):
        bars = axes.barh(places, values, color=colours, edgecolor="black", linewidth=0.8)
        for bar, hatch in zip(bars, hatches, strict=False):
            bar.set_hatch(hatch)
        texts = axes.bar_label(bars, labels=[label.format(v) for v in values], padding=3, fontsize=9)
        for text in texts:
            text.set_bbox({"facecolor": "white", "edgecolor": "none", "pad": 1})
        if "x" in label:
            axes.axvline(1, color="black", linestyle="--", linewidth=1)
            axes.text(1, len(values) - 0.4, " raw = 1x", fontsize=8, va="bottom")
        axes.set(title=title, xlabel=xlabel, xlim=(0, max(max(values), 1) * 1.3))
    if None in plotted["peak_mb"]:
        panels[2].set_title("Peak memory while loading (n/a here)")
    panels[0].set_yticks(list(places), plotted["format"])
    panels[0].invert_yaxis()
    fig.suptitle(f"{synthetic_rows[0]['model']}: median of {args.repeat} runs on this machine")
    fig.savefig(out_dir / "formats.png", dpi=110)
    print(f"Drew {out_dir / 'formats.png'}")

# %% [markdown]
# ## The rows as JSON, and tidying up
#
# `--json FILE` writes every row of both tables, for your own comparisons. The measured
# files go with the temporary folder; iris.safetensors and iris.pt2 stay in OUT_DIR.

# %%
if args.json:
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nRows written to {args.json}")
shutil.rmtree(scratch, ignore_errors=True)

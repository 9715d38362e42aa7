# %% [markdown]
# # Chapter 11: look inside a model file you did not make
#
# A model file from elsewhere can be read, and judged, before anything in it runs. This
# chapter opens chapter 2's model with the standard library and torch's own tools, one
# question at a time: which records the archive holds and whether they are intact
# (`zipfile`), what its pickle would import (`pickletools`, which reads the instructions
# and runs none), what `torch.load(weights_only=True)` would refuse
# (`torch.serialization.get_unsafe_globals_in_checkpoint`), and how a safetensors file
# describes its tensors in plain JSON (`safe_open`). Then the inspector answers the same
# questions, and more, in one report.
#
#     python look_inside.py      (after python train_iris.py)
#
# The inspector on any file, folder or format: `python inspect_file.py PATH [--model
# Multiclass] [--json]`, or `inspect-model PATH` once the project is installed.
#
# **Reads** `OUT_DIR/iris-model.pth` (default `artifacts/`). **Writes**
# `OUT_DIR/look-whole-model.pth` (a pickled whole model, to be looked at, never loaded)
# and `OUT_DIR/look-iris.safetensors`.
#
# This is the last chapter.

# %%
from __future__ import annotations

import importlib.util
import json
import pickletools
import struct
import zipfile
from collections import Counter

# The command line first, before torch is imported: --help, a bad flag, a missing file and
# Ctrl-C are answered at once, in one line.
from support.cli import chapter_parser, parse_chapter_args, prepare_out_dir, require_inputs
from support.settings import MODEL_FILE, train_command

args = parse_chapter_args(chapter_parser())
model_path = args.out_dir / MODEL_FILE
require_inputs(model_path, made_by=train_command(args.out_dir))

import torch

from build_model import Multiclass
from model_inspector.inspection import inspect_path
from model_inspector.render import render
from support.untrusted_files import load_model_or_exit

# The lessons below open the file themselves; this checks it first, with the inspector's reader.
trained = load_model_or_exit(model_path, Multiclass, made_by=train_command(args.out_dir))
out_dir = prepare_out_dir(args.out_dir)
has_safetensors = importlib.util.find_spec("safetensors") is not None  # the `formats` extra

# %% [markdown]
# ## 1. The archive: zipfile
#
# `torch.save` writes a zip archive of uncompressed records: `data.pkl` (the pickle that
# describes the containers, names and shapes), one `data/N` record of raw bytes per
# storage, and a few small records of its own. Each record carries a CRC32 checksum, which
# `torch.load` never checks; reading a record through `zipfile` does, so a flipped bit
# shows up here.

# %%
print("## 1. The archive, read with zipfile")
with zipfile.ZipFile(model_path) as archive:
    records = archive.infolist()
    for info in records:
        stored = "stored" if info.compress_type == zipfile.ZIP_STORED else "COMPRESSED"
        print(f"  {info.filename:<32} {info.file_size:>5} bytes  {stored}")
    damaged = archive.testzip()  # reads every record and checks its CRC32; the first bad one, or None
    folder = records[0].filename.partition("/")[0]
    data_pkl = archive.read(f"{folder}/data.pkl")
verdict = "all intact" if damaged is None else f"{damaged} is DAMAGED"
print(f"{len(records)} records, every CRC32 checked: {verdict}")

# %% [markdown]
# ## 2. The pickle: pickletools
#
# `data.pkl` is a program for a small stack machine. Unpickling runs it; `pickletools.genops`
# only reads its instructions. The `GLOBAL` and `STACK_GLOBAL` instructions name what
# unpickling would import and call: here, a rebuild function and a storage type for the
# tensors and `OrderedDict` for the state_dict. A file that names `os.system` would run it.

# %%
print("\n## 2. The pickle, read with pickletools (nothing run)")
ops = list(pickletools.genops(data_pkl))
strings = [arg for op, arg, _ in ops if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE")]
imports = []
for index, (op, arg, _) in enumerate(ops):
    if op.name == "GLOBAL":  # protocol 2, which torch.save writes: "module name" in one argument
        imports.append(arg.replace(" ", "."))
    elif op.name == "STACK_GLOBAL":  # protocol 4 and later: module and name were pushed as strings
        pushed = [a for o, a, _ in ops[:index] if o.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE")]
        imports.append(".".join(pushed[-2:]))
most_used = Counter(op.name for op, _, _ in ops).most_common(3)
print(f"{len(ops)} instructions, protocol {ops[0][1]}; most used: {most_used}")
print(f"It would import: {sorted(set(imports))}")
print(f"Tensor names in it: {[s for s in strings if s in trained.state_dict()]}")

# %% [markdown]
# ## 3. What weights_only would refuse: get_unsafe_globals_in_checkpoint
#
# `torch.load(weights_only=True)` allows only what rebuilds tensors and plain containers.
# torch's own scan says, without loading, which of the file's imports are beyond that list.
# For a state_dict, none. For a whole model pickled with `torch.save(model)`, the model's
# classes: loading that needs your code, and `weights_only=False` would run whatever the
# file names. We save one, only to look at it.

# %%
print("\n## 3. What torch.load(weights_only=True) would refuse")
whole_model_path = out_dir / "look-whole-model.pth"
torch.save(trained, whole_model_path)
unsafe_state = torch.serialization.get_unsafe_globals_in_checkpoint(model_path)
unsafe_whole = torch.serialization.get_unsafe_globals_in_checkpoint(whole_model_path)
print(f"{model_path.name}: {unsafe_state or 'nothing'}")
print(f"{whole_model_path.name}: {sorted(unsafe_whole)}")

# %% [markdown]
# ## 4. A format with nothing to run: safetensors
#
# A safetensors file is 8 bytes giving the length of a JSON header, the header (each
# tensor's dtype, shape and byte offsets), then the raw bytes. Reading the header is
# `struct` and `json`; `safe_open` reads it the same way and gives one tensor at a time.

# %%
print("\n## 4. safetensors: a JSON header, then bytes")
if has_safetensors:
    from safetensors import safe_open
    from safetensors.torch import save_file

    safetensors_path = out_dir / "look-iris.safetensors"
    save_file(trained.state_dict(), safetensors_path)
    with safetensors_path.open("rb") as file:
        header_length = struct.unpack("<Q", file.read(8))[0]
        header = json.loads(file.read(header_length))
    for name, entry in header.items():
        print(f"  {name:<14} {entry}")
    with safe_open(safetensors_path, framework="pt") as opened:
        same = all(torch.equal(opened.get_tensor(k), v) for k, v in trained.state_dict().items())
        print(f"safe_open: {len(list(opened.keys()))} tensors, equal to the state_dict's: {same}")
else:
    print("skipped: safetensors is not installed (the `formats` extra)")

# %% [markdown]
# ## 5. The same questions, and more, in one report: the inspector
#
# The inspector does all of the above on one snapshot of the file, for every format it
# knows, and adds what a reader needs before loading: does every storage hold the bytes its
# tensors need, which device each was saved on, is every value finite, does a
# `torch.load(weights_only=True)` of it really work (tried), and does it fit your model.
# Its exit status says whether to go on: 0, or 2 with the reasons. Here it is on chapter 2's
# file, checked against the `Multiclass` model, then its verdict on the pickled whole model.

# %%
print(f"\n## 5. python inspect_file.py {model_path} --model Multiclass\n")
with torch.device("meta"):
    shapes_only = Multiclass()  # its names and shapes, and no memory
print(render(inspect_path(model_path, "Multiclass()", shapes_only)))
whole_report = inspect_path(whole_model_path)
print(f"\nAnd on {whole_model_path.name}: {whole_report.reasons[0]}")

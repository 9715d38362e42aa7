# %% [markdown]
# # Chapter 7: when the file and the model don't quite match
#
# Each section sets a problem up for real, shows the error PyTorch raises, then the fix:
# a file saved on a GPU, renamed layers (missing and unexpected keys), warm-starting a
# different model, a size mismatch, the prefixes that DataParallel and torch.compile add,
# loading a large model without copying it, several models in one file, and a checkpoint
# written by a training framework (Lightning).
#
#     python load_tips.py [--seed 42]      (after python train_iris.py)
#
# **Reads** `OUT_DIR/iris-model.pth` (default `artifacts/`). **Writes**
# `OUT_DIR/tips-saved-on-gpu.pth`, `OUT_DIR/tips-two-models.pth`,
# `OUT_DIR/tips-lightning.ckpt` and `OUT_DIR/tips-lightning-hparams.ckpt` (and, on a
# machine with a GPU, `OUT_DIR/tips-real-gpu.pth`).
#
# Next: chapter 8, `python compare_formats.py`, which file format to use.

# %%
from __future__ import annotations

import pickle
from unittest import mock

# The command line first, before torch is imported: --help, a bad flag, a missing file and
# Ctrl-C are answered at once, in one line.
from support.cli import chapter_parser, parse_chapter_args, prepare_out_dir, require_inputs, seed
from support.settings import LEARNING_RATE, MODEL_FILE, SEED, train_command

parser = chapter_parser()
parser.add_argument(
    "--seed", type=seed, default=SEED, help=f"seeds the fresh models' initial weights (default: {SEED})"
)
args = parse_chapter_args(parser)
model_path = args.out_dir / MODEL_FILE
require_inputs(model_path, made_by=train_command(args.out_dir))

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from build_model import (
    Multiclass,
    accuracy,
    flat_tensors,
    load_iris_split,
    same_outputs,
    same_state,
    seed_everything,
    train_one_epoch,
)
from support.untrusted_files import load_model_or_exit

trained = load_model_or_exit(model_path, Multiclass, made_by=train_command(args.out_dir))
out_dir = prepare_out_dir(args.out_dir)
state = trained.state_dict()  # the names and tensors every section loads somewhere
split = load_iris_split()
X_train, y_train, X_test, y_test = split.X_train, split.y_train, split.X_test, split.y_test

# %% [markdown]
# ## 1. A file saved on another device: map_location
#
# `torch.save` records the device of every tensor. A file saved from a GPU says `cuda:0`,
# and `torch.load` puts the tensors back there, which fails on a machine without one.
# `map_location="cpu"` (or a dict such as `{"cuda:0": "cpu"}`) moves them while loading.
# To show it on any machine, we first write the file a GPU machine would write: the same
# format, with every tensor tagged `cuda:0`. Where this machine has a GPU, the round trip
# is then also done for real.
#
# To copy: `recipes/load_gpu_checkpoint_on_cpu.py`; the optimizer's state after a move:
# `recipes/resume_optimizer_on_right_device.py`.

# %%
print("\n## 1. A file saved on another device")
gpu_file = out_dir / "tips-saved-on-gpu.pth"
with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
    torch.save(state, gpu_file)  # what torch.save writes for tensors on cuda:0

if torch.cuda.is_available():
    print("torch.load(path)                     -> loads onto the GPU, as this machine has one")
else:
    try:
        torch.load(gpu_file, weights_only=True)
    except RuntimeError as err:
        print(f"torch.load(path)                     -> RuntimeError: {str(err).split('. ')[0]}")
loaded = torch.load(gpu_file, map_location="cpu", weights_only=True)
devices = sorted({tensor.device.type for tensor in loaded.values()})
print(f"torch.load(path, map_location='cpu') -> on {devices}, same tensors {same_state(loaded, state)}")

if torch.cuda.is_available():
    real_gpu_file = out_dir / "tips-real-gpu.pth"
    torch.save({key: tensor.to("cuda:0") for key, tensor in state.items()}, real_gpu_file)
    from_gpu = torch.load(real_gpu_file, map_location="cpu", weights_only=True)
    on_cpu = all(tensor.device.type == "cpu" for tensor in from_gpu.values())
    print(f"Real GPU round trip: back on the CPU {on_cpu}, same tensors {same_state(from_gpu, state)}")
else:
    print("Real GPU round trip: skipped, no GPU on this machine")

# %% [markdown]
# ## 2. Missing and unexpected keys
#
# Rename a layer (here `output` became `head`) and the file's names no longer match the
# model's: `load_state_dict` refuses in strict mode, the default. `strict=False` loads what
# matches and *returns* the names it skipped. Ignore that return value and the skipped
# layer keeps its random initial weights: the model loads without an error and predicts
# badly. The fix is to rename the keys.

# %%
print("\n## 2. Missing and unexpected keys")
seed_everything(args.seed)  # the fresh models below start from the same weights every run
file_state = {  # what a model whose last layer is called `head` saved
    ("head." + key.removeprefix("output.") if key.startswith("output.") else key): tensor
    for key, tensor in state.items()
}
model = Multiclass()
try:
    model.load_state_dict(file_state)
except RuntimeError as err:
    print("strict (default)  -> RuntimeError:")
    for reason in str(err).splitlines()[1:]:  # after "Error(s) in loading state_dict for Multiclass:"
        print(f"    {reason.strip()}")

partial = Multiclass()
result = partial.load_state_dict(file_state, strict=False)
print(f"strict=False      -> missing_keys={result.missing_keys}, unexpected_keys={result.unexpected_keys}")
untrained_head = accuracy(partial, X_test, y_test)
print(
    f"  accuracy with the output layer left untrained: {untrained_head:.2f}"
    f" (trained: {accuracy(trained, X_test, y_test):.2f})"
)

renamed_back = {
    ("output." + key.removeprefix("head.") if key.startswith("head.") else key): tensor
    for key, tensor in file_state.items()
}
fixed = Multiclass()
fixed.load_state_dict(renamed_back)
print(f"keys renamed back -> same predictions {same_outputs(fixed, trained, X_test)}")

# %% [markdown]
# ## 3. Warm-starting a different model
#
# A new model that shares some layers with the trained one, here the same hidden layer
# with a new output head for four classes, can start from the trained weights: keep the
# entries whose name and shape fit, load them with `strict=False`, and report the rest.
#
# To copy: `recipes/fix_size_mismatch_new_head.py`, a new head with another class count.

# %%
print("\n## 3. Warm-starting a different model")
new_model = Multiclass(n_classes=4)
target = new_model.state_dict()
fits = {key: tensor for key, tensor in state.items() if key in target and target[key].shape == tensor.shape}
warm = new_model.load_state_dict(fits, strict=False)
print(f"Multiclass(n_classes=4): loaded {list(fits)}, left at initial values {warm.missing_keys}")
print(
    f"  hidden layer equals the trained one: {torch.equal(new_model.hidden.weight, state['hidden.weight'])}"
)

# %% [markdown]
# ## 4. Size mismatch
#
# Same names, different shapes: the file was trained with another architecture (here 8
# hidden units, loaded into a model with 16). `strict=False` does not help: it forgives
# names, never shapes. Build the model the file describes, from constructor arguments
# saved next to the weights (chapter 5) or read off the tensors' shapes.

# %%
print("\n## 4. Size mismatch")
try:
    Multiclass(n_hidden=16).load_state_dict(state)
except RuntimeError as err:
    print(f"strict (default)  -> RuntimeError: {str(err).splitlines()[1].strip()} ...")
try:
    Multiclass(n_hidden=16).load_state_dict(state, strict=False)
except RuntimeError as err:
    print(f"strict=False      -> RuntimeError: {str(err).splitlines()[1].strip()} ...")

n_hidden = state["hidden.weight"].shape[0]  # hidden.weight is (n_hidden, n_features)
rebuilt = Multiclass(n_hidden=n_hidden)
rebuilt.load_state_dict(state)
print(
    f"Multiclass(n_hidden=state['hidden.weight'].shape[0]) -> {n_hidden} hidden,"
    f" same predictions {same_outputs(rebuilt, trained, X_test)}"
)

# %% [markdown]
# ## 5. Prefixes: `module.` and `_orig_mod.`
#
# Wrappers rename everything inside them. `nn.DataParallel` and `DistributedDataParallel`
# keep the model as `.module`, so their state_dict keys start with `module.`;
# `torch.compile` keeps it as `._orig_mod`. A plain model does not know those names.
# Strip the prefix with `consume_prefix_in_state_dict_if_present` (it edits the dict in
# place), or avoid it: save `wrapper.module.state_dict()` or
# `compiled._orig_mod.state_dict()`. (On a CPU DataParallel only wraps, and torch.compile
# compiles on the first call, so nothing runs here: only the names change.)
#
# To copy: `recipes/fix_module_and_orig_mod_prefix.py`.

# %%
print("\n## 5. Prefixes from DataParallel and torch.compile")
wrapped_states = {
    "DataParallel": ("module.", nn.DataParallel(trained).state_dict()),
    "torch.compile": ("_orig_mod.", torch.compile(trained).state_dict()),
}
for wrapper, (prefix, wrapped_state) in wrapped_states.items():
    print(f"{wrapper}: keys {list(wrapped_state)[:2]} ...")
    try:
        Multiclass().load_state_dict(wrapped_state)
    except RuntimeError as err:
        print("  into a plain model -> RuntimeError:")
        for reason in str(err).splitlines()[1:]:
            print(f"      {reason.strip()}")
    consume_prefix_in_state_dict_if_present(wrapped_state, prefix)
    unwrapped = Multiclass()
    unwrapped.load_state_dict(wrapped_state)
    print(f"  prefix stripped    -> same predictions {same_outputs(unwrapped, trained, X_test)}")

# %% [markdown]
# ## 6. Large models: mmap, the meta device and assign=True
#
# For a model too large to hold twice in memory, avoid every copy. `torch.load(...,
# mmap=True)` maps the file instead of reading it: bytes are paged in when first used
# (privately: changing the tensors never changes the file). Building the model under
# `torch.device("meta")` allocates no memory for its weights. `load_state_dict(...,
# assign=True)` then makes the loaded tensors the model's parameters instead of copying
# into them.
#
# To copy: `recipes/load_large_checkpoint_low_memory.py`, with the peak memory of each way
# measured.

# %%
print("\n## 6. Large models: mmap, meta device, assign=True")
with torch.device("meta"):
    big_model = Multiclass()  # shapes only, no memory for the weights yet
print(f"Built under torch.device('meta'): hidden.weight on {big_model.hidden.weight.device}")
mapped = torch.load(model_path, mmap=True, weights_only=True)
big_model.load_state_dict(mapped, assign=True)
shares = big_model.hidden.weight.data_ptr() == mapped["hidden.weight"].data_ptr()
device = big_model.hidden.weight.device
print(f"After load_state_dict(assign=True): on {device}, shares the mmap'd tensor: {shares}")
print(f"  same predictions as the trained model: {same_outputs(big_model, trained, X_test)}")

# %% [markdown]
# ## The optimizer created too early
#
# The catch: `assign=True` replaces the parameter objects. An optimizer created before the
# load still holds the old (meta) ones, so it updates nothing the model uses: the model
# silently never learns. Create the optimizer after loading. One epoch of training shows it.

# %%
with torch.device("meta"):
    too_early_model = Multiclass()
too_early = torch.optim.Adam(too_early_model.parameters(), lr=LEARNING_RATE)  # wrong: before the load
too_early_model.load_state_dict(torch.load(model_path, mmap=True, weights_only=True), assign=True)
before = too_early_model.hidden.weight.detach().clone()
train_one_epoch(too_early_model, too_early, X_train, y_train)
changed = not torch.equal(before, too_early_model.hidden.weight)
print(f"Optimizer created before the load -> training changes weights: {changed}")

with torch.device("meta"):
    in_time_model = Multiclass()
in_time_model.load_state_dict(torch.load(model_path, mmap=True, weights_only=True), assign=True)
in_time = torch.optim.Adam(in_time_model.parameters(), lr=LEARNING_RATE)  # right: after the load
before = in_time_model.hidden.weight.detach().clone()
train_one_epoch(in_time_model, in_time, X_train, y_train)
changed = not torch.equal(before, in_time_model.hidden.weight)
print(f"Optimizer created after the load  -> training changes weights: {changed}")

# %% [markdown]
# ## 7. Several models and their optimizers in one file
#
# One dict, one key per piece. On loading, create each model, load its weights, then
# create its optimizer over that model's parameters and load the optimizer's state.

# %%
print("\n## 7. Several models and optimizers in one file")
seed_everything(args.seed)
model_a, model_b = Multiclass(), Multiclass()
optimizer_a = torch.optim.Adam(model_a.parameters(), lr=LEARNING_RATE)
optimizer_b = torch.optim.Adam(model_b.parameters(), lr=LEARNING_RATE)
train_one_epoch(model_a, optimizer_a, X_train, y_train)
train_one_epoch(model_b, optimizer_b, X_train, y_train)

pair_path = out_dir / "tips-two-models.pth"
torch.save(
    {
        "model_a": model_a.state_dict(),
        "model_b": model_b.state_dict(),
        "optimizer_a": optimizer_a.state_dict(),
        "optimizer_b": optimizer_b.state_dict(),
    },
    pair_path,
)

saved = torch.load(pair_path, weights_only=True)
loaded_a, loaded_b = Multiclass(), Multiclass()
loaded_a.load_state_dict(saved["model_a"])
loaded_b.load_state_dict(saved["model_b"])
loaded_optimizer_a = torch.optim.Adam(loaded_a.parameters(), lr=LEARNING_RATE)
loaded_optimizer_b = torch.optim.Adam(loaded_b.parameters(), lr=LEARNING_RATE)
loaded_optimizer_a.load_state_dict(saved["optimizer_a"])
loaded_optimizer_b.load_state_dict(saved["optimizer_b"])

print(f"{pair_path}: keys {list(saved)}")
exact = all(
    same_state(flat_tensors(original.state_dict()), flat_tensors(loaded.state_dict()))
    for original, loaded in [
        (model_a, loaded_a),
        (model_b, loaded_b),
        (optimizer_a, loaded_optimizer_a),
        (optimizer_b, loaded_optimizer_b),
    ]
)
print(f"  both models and both optimizers back, every tensor identical: {exact}")

# %% [markdown]
# ## 8. A checkpoint written by a training framework (Lightning)
#
# PyTorch Lightning's `Trainer` saves a dict: `epoch`, `global_step`,
# `pytorch-lightning_version`, the LightningModule's `state_dict`, `loops`, `callbacks`,
# `optimizer_states`, `lr_schedulers` and, if the module saved them, `hparams_name` and
# `hyper_parameters`. The weights are under `state_dict`, named after the LightningModule's
# attributes: a module that keeps the network as `self.model` saves `model.hidden.weight`.
# So: load with `weights_only=True`, take `state_dict`, strip the prefix, load it into the
# plain model. (Lightning is not installed here: the cell writes the file in Lightning's
# documented layout with `torch.save`.)

# %%
print("\n## 8. A checkpoint written by a training framework (Lightning)")
lightning_file = out_dir / "tips-lightning.ckpt"
lightning_checkpoint = {  # what Trainer.save_checkpoint writes for a module holding `self.model`
    "epoch": 99,
    "global_step": 2100,
    "pytorch-lightning_version": "2.5.0",
    "state_dict": {f"model.{key}": tensor for key, tensor in state.items()},
    "loops": {"fit_loop": {"epoch_progress": {"total": {"ready": 100, "completed": 100}}}},
    "callbacks": {
        "ModelCheckpoint{'monitor': None, 'mode': 'min'}": {"best_model_path": "", "dirpath": "ckpts"}
    },
    "optimizer_states": [torch.optim.Adam(trained.parameters(), lr=LEARNING_RATE).state_dict()],
    "lr_schedulers": [],
    "hparams_name": "kwargs",
    "hyper_parameters": {"lr": LEARNING_RATE, "n_hidden": 8},
}
torch.save(lightning_checkpoint, lightning_file)

framework_checkpoint = torch.load(lightning_file, weights_only=True)  # every entry is plain data
lightning_weights = framework_checkpoint["state_dict"]
print(f"{lightning_file}: keys {list(framework_checkpoint)}")
print(f"  state_dict keys {list(lightning_weights)[:2]} ...")
consume_prefix_in_state_dict_if_present(lightning_weights, "model.")
from_lightning = Multiclass()
from_lightning.load_state_dict(lightning_weights)
print(f"  'model.' stripped -> same predictions {same_outputs(from_lightning, trained, X_test)}")

# %% [markdown]
# A Lightning checkpoint can also hold objects: `save_hyperparameters()` stores whatever
# the module was given (a loss function, a `functools.partial`), and `weights_only=True`
# refuses to rebuild them. Don't switch to `weights_only=False` for a file you did not
# make: that runs whatever the file names. For a file you trust, allow the one class it
# needs with `torch.serialization.safe_globals`; better, save plain values.

# %%
hparams_file = out_dir / "tips-lightning-hparams.ckpt"
torch.save({**lightning_checkpoint, "hyper_parameters": {"loss_fn": nn.NLLLoss()}}, hparams_file)
try:
    torch.load(hparams_file, weights_only=True)
except pickle.UnpicklingError as err:
    lines = str(err).splitlines()
    refused = next((line for line in lines if "Unsupported global" in line), lines[0])
    print(
        f"hyper_parameters holding nn.NLLLoss() -> {type(err).__name__}: {refused.strip().split(' was ')[0]}"
    )
with torch.serialization.safe_globals([nn.NLLLoss]):
    trusted = torch.load(hparams_file, weights_only=True)
print(f"  with safe_globals([nn.NLLLoss]) -> loads, hyper_parameters {trusted['hyper_parameters']}")

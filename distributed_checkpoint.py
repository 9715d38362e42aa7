# %% [markdown]
# # Chapter 10: when one machine is not enough -- a sharded model saved with torch.distributed.checkpoint
#
# With FSDP2 (`fully_shard`) each rank holds only a slice of every weight, so no rank has
# the model to `torch.save`. torch.distributed.checkpoint (DCP) saves it the way it is
# held: every rank writes its own slices, in parallel, and a `.metadata` index records
# which file holds which slice. The checkpoint loads back onto any number of ranks, or
# onto one process, and converts to one plain file. Shown with the real engine, on the CPU
# (gloo backend). DCP keeps no checksums: the chapter writes them beside the checkpoint
# and checks them before every load.
#
# Run `python distributed_checkpoint.py` (it starts 2 ranks itself; `--nproc N`), or have
# torchrun start them, on one machine or several: `torchrun --nproc-per-node 2
# distributed_checkpoint.py`. `--load-only` trains nothing: it checks, reshards and
# converts the checkpoint already in the output folder.
#
# Writes into `artifacts/`: `dcp-checkpoint/` (one `.distcp` file per rank, and
# `.metadata`) with its checksums `dcp-checkpoint.sha256`, `dcp-async/` (the same state,
# saved with `dcp.async_save`) and `dcp-async.sha256`, `dcp-safetensors/` (the model's weights
# as Hugging Face-style safetensors files with an index, with the `formats` extra),
# `dcp-full-state.pth` (the full tensors gathered at save time, to check the loads against), the conversions
# `dcp-checkpoint.pth` and `iris-model-from-dcp.pth`, and the pitfalls' `dcp-rank0-only/`,
# `dcp-pitfall/` and `fsdp-state-dict-rank0.pth`. With `--load-only` it reads
# `dcp-checkpoint/`, its checksums and `dcp-full-state.pth`.
#
# A DCP checkpoint is not covered by `weights_only`: plain `dcp.load` unpickles `.metadata`
# with `pickle.load`, which can run code. Load only checkpoints you made, from a folder only
# you can write to. This chapter reads its checkpoint as it would read a stranger's.
#
# Chapter 10 of 11. Next: chapter 11, `python look_inside.py`, how to look inside a model file
# without running it.

# %%
from __future__ import annotations

import atexit
import hashlib
import io
import json
import logging
import os
import pickle
import re
import shutil
import sys
import tempfile
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

# The command line first, before torch is imported: --help, a bad flag, a missing file and
# Ctrl-C are answered at once, in one line.
from support.cli import (
    chapter_parser,
    fail,
    parse_chapter_args,
    positive_int,
    prepare_out_dir,
    require_inputs,
)
from support.settings import SEED

NPROC = 2  # ranks started by this script
MAX_NPROC = 7  # hidden.weight has 8 rows: beyond N+1 = 8 ranks, some would hold none
EPOCHS = 15  # enough at this learning rate: the test accuracy reaches chapter 2's
LEARNING_RATE = 0.01  # ten times chapter 2's: every step here costs collectives, so take fewer
BATCH_SIZE = 5  # flowers per step, per rank
TIMEOUT = 10  # seconds a rank waits in a collective before the run is ended as hung
DCP_DIR = "dcp-checkpoint"
ASYNC_DIR = "dcp-async"
HF_DIR = "dcp-safetensors"
FULL_FILE = "dcp-full-state.pth"
CONVERTED_FILE = "dcp-checkpoint.pth"
MODEL_FROM_DCP = "iris-model-from-dcp.pth"
PITFALL_DIR = "dcp-pitfall"
ALONE_DIR = "dcp-rank0-only"
PITFALL_FILE = "fsdp-state-dict-rank0.pth"
MADE_BY = "python distributed_checkpoint.py"

parser = chapter_parser()
parser.add_argument(
    "--nproc",
    type=positive_int,
    help=f"ranks this script starts, 1 to {MAX_NPROC} (default: {NPROC}); under torchrun, use its flags",
)
parser.add_argument(
    "--epochs", type=positive_int, default=EPOCHS, help=f"epochs to train (default: {EPOCHS})"
)
parser.add_argument(
    "--fail-rank", type=int, help="make this rank crash after training, to see a failed run end cleanly"
)
parser.add_argument(
    "--timeout",
    type=positive_int,
    default=TIMEOUT,
    help=f"seconds a rank waits for the others before the run ends as hung (default: {TIMEOUT})",
)
parser.add_argument(
    "--load-only",
    action="store_true",
    help="train nothing: check, reshard and convert the DCP checkpoint already in OUT_DIR",
)
args = parse_chapter_args(parser)

under_torchrun = "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ
if under_torchrun and args.nproc is not None:
    fail("--nproc does not apply under torchrun, which starts the ranks: use torchrun --nproc-per-node")
if under_torchrun and args.load_only:
    fail("--load-only starts its own ranks: run it without torchrun")
if args.nproc is not None and args.nproc > MAX_NPROC:
    fail(f"--nproc {args.nproc} is too many: at most {MAX_NPROC}, as the reload onto N+1 ranks splits 8 rows")
world_size = int(os.environ["WORLD_SIZE"]) if under_torchrun else (args.nproc or NPROC)
if args.fail_rank is not None and not 0 <= args.fail_rank < world_size:
    fail(f"--fail-rank {args.fail_rank} is not a rank: the ranks are 0 to {world_size - 1}")
if args.load_only:
    require_inputs(args.out_dir / DCP_DIR, made_by=MADE_BY)  # its files are checked before any rank starts
out_dir = prepare_out_dir(args.out_dir)

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata, TensorStorageMetadata
from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from build_model import Multiclass, flat_tensors, load_iris_split, seed_everything
from model_inspector.dcp import check_dcp_checkpoint
from model_inspector.loading import read_untrusted
from support.lab_tools import private_folder, root_error_line, run_under_torchrun, start_ranks

try:
    from safetensors.torch import load_file
except ImportError:  # the optional `formats` extra: dcp-safetensors/ is skipped
    load_file = None

# What the distributed machinery would print that is no lesson (the rank tools quiet gloo's own lines):
logging.getLogger("torch.distributed").setLevel(logging.ERROR)  # failures are reported in one line
# torch 2.10's DCP reader touches TypedStorage inside torch, which warns; nothing here uses it.
warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message=".*in a single process.*")  # DCP noting there is no group

if args.load_only:  # a checkpoint from outside this run: check every file before any rank starts
    fresh = Multiclass()
    model_state, optimizer_state = get_state_dict(fresh, torch.optim.Adam(fresh.parameters()))
    expected = flat_tensors({"model": model_state, "optimizer": optimizer_state})  # what a load fills
    checked_manifest = check_dcp_checkpoint(out_dir / DCP_DIR, expected, made_by=MADE_BY)
    read_untrusted(out_dir / FULL_FILE, made_by=MADE_BY)  # the full tensors the loads are compared with


# %% [markdown]
# ## Training on several ranks, each holding a slice of every weight
#
# Every rank is a process that runs the function below, top to bottom. `fully_shard`
# (FSDP2) turns each parameter into a DTensor: a tensor of the full shape, of which this
# rank stores only its rows. Before a forward pass the ranks gather the full weights;
# after backward each keeps the gradients of its own rows and Adam updates only those.
# Each rank trains on its own, equal share of the flowers (a rank that took an extra step
# would wait forever for the others).
#
# `get_state_dict` gives the model's and the optimizer's state under the plain names
# (`hidden.weight`, not a wrapper's prefix), still sharded. `dcp.save` is called on every
# rank: each writes its slices into its own `.distcp` file, and rank 0 writes `.metadata`,
# the index of every slice. The model's weights are saved again with
# `HuggingFaceStorageWriter`, as safetensors files anyone can load without DCP. Then the
# same state is saved once more with `dcp.async_save`, whose `DefaultStager` copies it in a
# thread while training goes on, and writes it in the background. Last come the three
# pitfalls of the end of the chapter.


# %%
def model_and_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What a checkpoint holds: the model's and the optimizer's state, under plain names."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def full_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Every tensor of a (sharded) state, gathered whole from the ranks: what a load must give back."""
    return {
        name: tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.clone()
        for name, tensor in flat_tensors(state).items()
    }


def train_and_save(rank: int, world_size: int) -> None:
    mesh = init_device_mesh("cpu", (world_size,))
    seed_everything(SEED)  # the same initial weights on every rank, before they are sliced
    model = Multiclass()
    fully_shard(model, mesh=mesh)
    # foreach: one call per step for all parameters; each DTensor operation is costly to dispatch
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, foreach=True)
    loss_fn = nn.NLLLoss()

    weight = model.hidden.weight  # a DTensor: the full shape, and this rank's rows in .to_local()
    shard_shapes = [None] * world_size
    dist.all_gather_object(shard_shapes, tuple(weight.to_local().shape))
    if rank == 0:
        print(f"\n## Training on {world_size} ranks: FSDP2 (fully_shard), gloo, CPU")
        print(
            f"hidden.weight is a {type(weight).__name__} of shape {tuple(weight.shape)}; each rank has rows:"
        )
        for other, shape in enumerate(shard_shapes):
            print(f"  rank {other} holds {shape}", flush=True)  # shown now, even when piped

    split = load_iris_split()
    per_rank = len(split.X_train) // world_size  # drop the remainder: every rank takes as many steps
    X, y = split.X_train[rank::world_size][:per_rank], split.y_train[rank::world_size][:per_rank]
    for _epoch in range(args.epochs):
        model.train()
        for batch in torch.randperm(len(X)).split(BATCH_SIZE):
            optimizer.zero_grad()
            loss = loss_fn(model(X[batch]), y[batch])
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():  # every rank scores the same test set: the forward pass is collective
        test_accuracy = (model(split.X_test).argmax(dim=1) == split.y_test).float().mean().item()
    if rank == 0:
        print(f"{per_rank} training flowers on each rank, {args.epochs} epochs: test acc {test_accuracy:.3f}")
    if rank == args.fail_rank:
        raise RuntimeError(f"simulated crash on rank {rank} (--fail-rank)")

    # Save: every rank calls dcp.save with its own slices.
    state = model_and_optimizer_state(model, optimizer)
    if rank == 0:
        shutil.rmtree(out_dir / DCP_DIR, ignore_errors=True)  # no file of an earlier run lingers there
    dist.barrier()
    started = time.perf_counter()
    dcp.save(state, checkpoint_id=out_dir / DCP_DIR)
    blocked_by_save = time.perf_counter() - started
    full_at_save = full_tensors(state)  # to check every later load against

    # The model's weights once more, as Hugging Face-style safetensors: each rank writes its
    # slices into sharded/, then the writer joins them into whole tensors, two files and an index.
    if rank == 0:
        shutil.rmtree(out_dir / HF_DIR, ignore_errors=True)
    dist.barrier()
    file_of_weight = {name: 1 if name.startswith("hidden.") else 2 for name in state["model"]}
    if load_file is not None:  # the writer needs safetensors
        hf_writer = dcp.HuggingFaceStorageWriter(
            out_dir / HF_DIR,
            fqn_to_index_mapping=file_of_weight,
            save_distributed=True,
            enable_consolidation=True,
        )
        dcp.save(state["model"], storage_writer=hf_writer)

    # Async: the state is copied at the call, written in a background thread meanwhile.
    # Its collectives get a group of their own, so they cannot interleave with training's.
    async_group = dist.new_group(backend="gloo")
    if rank == 0:
        shutil.rmtree(out_dir / ASYNC_DIR, ignore_errors=True)
    dist.barrier()
    # The stager copies the state in a thread of its own too; no pinned or shared memory on a CPU.
    stager = DefaultStager(
        StagingOptions(
            use_pinned_memory=False,
            use_shared_memory=False,
            use_async_staging=True,
            use_non_blocking_copy=False,
        )
    )
    started = time.perf_counter()
    response = dcp.async_save(
        state, checkpoint_id=out_dir / ASYNC_DIR, process_group=async_group, async_stager=stager
    )
    blocked_by_async_save = time.perf_counter() - started
    response.staging_completion.result()  # the copy is made: the weights may change from here
    model.train()
    for batch in torch.randperm(len(X)).split(BATCH_SIZE):  # one more epoch while it writes
        optimizer.zero_grad()
        loss_fn(model(X[batch]), y[batch]).backward()
        optimizer.step()
    response.upload_completion.result()  # before the next save, before reading it, before leaving the group
    stager.close()
    full_after_async = full_tensors(model_and_optimizer_state(model, optimizer))
    if rank == 0:
        print(
            f"Training loop blocked: {blocked_by_save * 1000:.0f} ms by dcp.save, "
            f"{blocked_by_async_save * 1000:.0f} ms by dcp.async_save"
        )

    # The pitfalls. First, dcp.save called on rank 0 only: it waits for the other ranks,
    # which never come (here for 1 s, not --timeout).
    alone = dist.new_group(backend="gloo", timeout=timedelta(seconds=1))
    if rank == 0:
        shutil.rmtree(out_dir / PITFALL_DIR, ignore_errors=True)
        shutil.rmtree(out_dir / ALONE_DIR, ignore_errors=True)
        try:
            dcp.save(state, checkpoint_id=out_dir / ALONE_DIR, process_group=alone)
            rank0_alone = "it returned"
        except BaseException as err:  # DCP's CheckpointException is a BaseException
            rank0_alone = root_error_line(err)
        full = {"at_save": full_at_save, "after_async": full_after_async, "rank0_alone": rank0_alone}
        torch.save(full, out_dir / FULL_FILE)
    dist.barrier()
    # Then a plain tensor under one key, saved by every rank; and the FSDP2 model's own
    # state_dict, saved with plain torch.save on rank 0.
    dcp.save({"rank_id": torch.tensor([rank])}, checkpoint_id=out_dir / PITFALL_DIR)
    if rank == 0:
        torch.save(model.state_dict(), out_dir / PITFALL_FILE)
    dist.barrier()


# %% [markdown]
# ## Starting the ranks
#
# `torchrun` starts one process per rank and tells each its rank in environment variables;
# `dist.init_process_group("gloo")` reads them. Run as a plain script, this chapter starts
# the ranks itself, forked so that they inherit what is already imported, and each joins
# the group at a free port on the loopback interface. `start_ranks` (in lab_tools.py, with
# the torchrun case) also makes a failure end the whole run in one line: a rank that
# raises, dies, or stops responding (the others wait `--timeout` seconds for it in a
# collective) is named, the others are stopped, and no rank outlives its launcher.

# %%
if args.load_only:
    print(f"--load-only: nothing trained; {out_dir / DCP_DIR} and its checksums passed every check")
elif under_torchrun:
    run_under_torchrun(train_and_save, args.timeout)
elif failure := start_ranks(train_and_save, world_size, args.timeout):
    print(f"error: {failure}", file=sys.stderr)
    sys.exit(1)


# %% [markdown]
# ## Checksums: DCP keeps none, so write them
#
# Nothing in a DCP checkpoint lets a reader notice a changed byte: a flipped bit in a
# weight loads, trains and converts without a word. So, right after saving, write the
# SHA-256 of every file of the checkpoint beside it, in the format of `sha256sum` (so
# `cd dcp-checkpoint && sha256sum -c ../dcp-checkpoint.sha256` checks it too). Before any
# load, copy the checkpoint into a folder only you can enter, and compare the copy with
# those checksums: what was checked is then what loads, and nobody can swap a file in
# between. (With `--load-only`, the first cell has checked the files against the
# checksums already, and much more: see "Reading a DCP checkpoint you did not make".)


# %%
def sha256_manifest(folder: Path) -> str:
    """One `sha256  name` line per file of `folder`, in name order."""
    lines = []
    for path in sorted(folder.iterdir()):
        with path.open("rb") as file:
            lines.append(f"{hashlib.file_digest(file, 'sha256').hexdigest()}  {path.name}\n")
    return "".join(lines)


if args.load_only:
    manifests = {DCP_DIR: checked_manifest}  # the checksums as the first cell checked them
else:
    manifests = {name: sha256_manifest(out_dir / name) for name in (DCP_DIR, ASYNC_DIR)}
    for name, manifest in manifests.items():
        (out_dir / f"{name}.sha256").write_text(manifest)
verified = Path(tempfile.mkdtemp(prefix="dcp-verified-"))  # mode 0700: only this user enters
atexit.register(shutil.rmtree, verified, ignore_errors=True)
print("\n## Checksums beside the checkpoints, checked on a private copy")
for name, manifest in manifests.items():
    shutil.copytree(out_dir / name, verified / name)
    if sha256_manifest(verified / name) != manifest:
        print(f"error: {out_dir / name} refused: its files changed after their checksums", file=sys.stderr)
        sys.exit(2)
    print(f"{out_dir / name}.sha256: {len(manifest.splitlines())} files, each matches its SHA-256")


# %% [markdown]
# ## Reading a DCP checkpoint you did not make
#
# `torch.load(path, weights_only=True)` protects you from a `torch.save` file. Nothing like
# it protects a DCP checkpoint: plain `dcp.load` reads `.metadata` with `pickle.load`, and
# every non-tensor item (here the optimizer's `lr`, `betas`...) with
# `torch.load(weights_only=False)`. Either can run any code the file's author chose, and
# anyone who can write into the checkpoint folder, even while a run is writing it, is that
# author. Load only checkpoints you made, from a folder only you can write to.
#
# To read one anyway, swap in two parts: a reader whose `.metadata` unpickler admits only
# DCP's own metadata classes, and a planner that loads non-tensor items with
# `weights_only=True`. (Tensors DCP already reads with `weights_only=True`.) Anything else
# is refused before it runs. A stranger's checkpoint can also be damaged or forged in ways
# that crash or mislead `dcp.load` without running code: `.metadata` nested deep enough to
# crash Python, offsets past the end of a file, chunks that do not fit the model. With
# `--load-only`, the first cell refuses all of those, and a checkpoint without checksums
# or that does not match them, before any rank starts.

# %%
DCP_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
}


class DCPMetadataUnpickler(pickle.Unpickler):
    """Unpickles `.metadata`, admitting only DCP's metadata classes, torch.Size and dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in DCP_METADATA_CLASSES:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f".metadata refused: it refers to {module}.{name}, not DCP metadata")


def read_dcp_metadata(folder: Path) -> Metadata:
    with (folder / ".metadata").open("rb") as file:
        metadata = DCPMetadataUnpickler(file).load()
    if not isinstance(metadata, Metadata):
        raise pickle.UnpicklingError(".metadata refused: it is not DCP's index")
    return metadata


class AllowlistMetadataReader(dcp.FileSystemReader):
    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_dcp_metadata(Path(self.path))
        metadata.storage_meta.load_id = self.load_id
        return metadata


class WeightsOnlyLoadPlanner(DefaultLoadPlanner):
    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        try:
            item = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(f"{read_item.dest_index.fqn} refused: {err}") from None
        checked = io.BytesIO()
        torch.save(item, checked)  # what the default planner reads back: now only what passed
        checked.seek(0)
        super().load_bytes(read_item, checked)


# %% [markdown]
# ## What the checkpoint holds
#
# `.metadata` lists every tensor with its full shape and its chunks: where each chunk
# starts (offset) and its size, and which rank's file holds it. Each weight is split by
# rows, one chunk per rank. The optimizer's Adam steps and settings are the same on every
# rank, so they are written once. `.metadata` is a pickle of torch's own classes, so its size
# differs between torch versions (9135 bytes on 2.10 and 2.13, 9199 on 2.15).

# %%
metadata = read_dcp_metadata(verified / DCP_DIR)
file_of = {
    (index.fqn, tuple(index.offset or ())): info.relative_path
    for index, info in metadata.storage_data.items()
}
print(f"\n## Saved with dcp.save to {out_dir / DCP_DIR}")
for path in sorted((verified / DCP_DIR).iterdir()):
    why = (
        "  (pickled torch classes: the size moves with the torch version)" if path.name == ".metadata" else ""
    )
    print(f"  {path.name:<14} {path.stat().st_size:>7} bytes{why}")
print(f"\n{'tensor':<20} {'shape':<8} {'chunk offset':<13} {'chunk size':<11} file")
for name, item in metadata.state_dict_metadata.items():
    if name.startswith("model.") and isinstance(item, TensorStorageMetadata):
        for number, chunk in enumerate(item.chunks):
            label, shape = (name, str(tuple(item.size))) if number == 0 else ("", "")
            offsets, sizes = tuple(chunk.offsets), tuple(chunk.sizes)
            print(f"{label:<20} {shape:<8} {offsets!s:<13} {sizes!s:<11} {file_of[name, offsets]}")
items = metadata.state_dict_metadata
moments = [name for name in items if name.endswith(("exp_avg", "exp_avg_sq"))]
steps = [name for name in items if name.endswith(".step")]
settings = [name for name in items if isinstance(items[name], BytesStorageMetadata)]
print(
    f"optimizer: {len(moments)} Adam moments chunked the same way; {len(steps)} step counts "
    f"and {len(settings)} settings, once each"
)


# %% [markdown]
# ## Loading onto a different number of ranks
#
# A DCP checkpoint does not depend on how many ranks wrote it. Here N+1 ranks each build
# the sharded model and an optimizer, then `dcp.load` fills their slices in place, each
# rank reading only the chunks that overlap its rows. `get_state_dict` creates the
# optimizer's state for it to fill; `set_state_dict` puts it back. Every tensor is compared
# with the full tensors gathered at save time, then the resharded model takes one
# training step.


# %%
def load_resharded(rank: int, world_size: int) -> None:
    mesh = init_device_mesh("cpu", (world_size,))
    model = Multiclass()
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, foreach=True)
    state = model_and_optimizer_state(model, optimizer)  # creates the optimizer's state for dcp.load to fill
    dcp.load(
        state, storage_reader=AllowlistMetadataReader(verified / DCP_DIR), planner=WeightsOnlyLoadPlanner()
    )
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

    full = full_tensors(model_and_optimizer_state(model, optimizer))
    shard_rows = [None] * world_size
    dist.all_gather_object(shard_rows, model.hidden.weight.to_local().shape[0])
    split = load_iris_split()
    optimizer.zero_grad()
    loss = nn.NLLLoss()(model(split.X_train[:BATCH_SIZE]), split.y_train[:BATCH_SIZE])
    loss.backward()
    optimizer.step()
    if rank == 0:
        at_save = torch.load(out_dir / FULL_FILE, weights_only=True)["at_save"]
        equal = sum(torch.equal(full[name], at_save[name]) for name in at_save)
        print(f"\n## Loaded onto {world_size} ranks")
        print(f"hidden.weight rows per rank: {shard_rows}")
        print(f"Tensors equal to the full ones at save time: {equal} of {len(at_save)} (model and optimizer)")
        print(f"One more training step on {world_size} ranks: loss {loss.item():.4f}")


if under_torchrun:
    print("\n(torchrun fixed the number of ranks; to load onto more: run this script with --load-only)")
elif failure := start_ranks(load_resharded, world_size + 1, args.timeout):
    print(f"error: {failure}", file=sys.stderr)
    sys.exit(2 if " refused: " in failure else 1)  # a refused checkpoint is bad input


# %% [markdown]
# ## Loading onto one process, with no process group
#
# The same `dcp.load` works with no process group at all: it reads every chunk and fills
# plain tensors of the full shape. Build the plain model and optimizer, load, and compare
# again; then train one step on one process.

# %%
model = Multiclass()
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, foreach=True)
state = model_and_optimizer_state(model, optimizer)
try:
    dcp.load(
        state, storage_reader=AllowlistMetadataReader(verified / DCP_DIR), planner=WeightsOnlyLoadPlanner()
    )
except CheckpointException as err:  # DCP wraps what the reader or planner raised
    print(f"error: {out_dir / DCP_DIR} refused: {root_error_line(err)}", file=sys.stderr)
    sys.exit(2)
set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

saved = torch.load(out_dir / FULL_FILE, weights_only=True)
loaded = flat_tensors({"model": model.state_dict(), "optimizer": get_state_dict(model, optimizer)[1]})
equal = sum(torch.equal(loaded[name], saved["at_save"][name]) for name in saved["at_save"])
print("\n## Loaded onto 1 process")
print(
    f"Tensors equal to the full ones at save time: {equal} of {len(saved['at_save'])} (model and optimizer)"
)
split = load_iris_split()
model.eval()
with torch.no_grad():
    test_accuracy = (model(split.X_test).argmax(dim=1) == split.y_test).float().mean().item()
model.train()
optimizer.zero_grad()
loss = nn.NLLLoss()(model(split.X_train[:BATCH_SIZE]), split.y_train[:BATCH_SIZE])
loss.backward()
optimizer.step()
print(f"One more training step on 1 process: loss {loss.item():.4f}")


# %% [markdown]
# ## The async checkpoint holds the state at the call
#
# `dcp.async_save` with a `DefaultStager` returns at once: the stager copies the state into
# memory of its own in a thread (`use_async_staging`; pinned and shared memory are for
# GPUs), and a background thread writes the copy. It returns two futures: wait for
# `staging_completion` before the weights change, and for `upload_completion` before you
# read that checkpoint, save into it again, leave the process group or exit; then `close()`
# the stager. The ranks trained one more epoch while it wrote; the async checkpoint still
# holds the state at the moment of the call.

# %%
if not args.load_only:
    async_model = Multiclass()
    async_optimizer = torch.optim.Adam(async_model.parameters(), lr=LEARNING_RATE, foreach=True)
    async_state = {
        "model": async_model.state_dict(),
        "optimizer": get_state_dict(async_model, async_optimizer)[1],
    }
    dcp.load(
        async_state,
        storage_reader=AllowlistMetadataReader(verified / ASYNC_DIR),
        planner=WeightsOnlyLoadPlanner(),
    )
    in_async = flat_tensors(async_state)
    at_call = all(torch.equal(in_async[name], saved["at_save"][name]) for name in saved["at_save"])
    changed = sum(
        not torch.equal(saved["after_async"][name], saved["at_save"][name]) for name in saved["at_save"]
    )
    print(f"\n## Saved with dcp.async_save to {out_dir / ASYNC_DIR}")
    print(f"It holds the state at the call: {at_call} ({changed} of {len(in_async)} tensors changed since)")


# %% [markdown]
# ## Three pitfalls
#
# `dcp.save` is a collective: every rank must call it. Called on rank 0 alone, as one would
# call `torch.save`, it waits for the others until the group's timeout, then fails without
# writing anything.
#
# DCP knows a tensor is split across ranks only when it is a DTensor (FSDP2, tensor
# parallelism) or a ShardedTensor. A plain tensor under one key is taken to be the same on
# every rank and written once. Each rank saved its own rank number under one key: the
# checkpoint kept one of them, and every rank that loads it gets that one.
#
# And `model.state_dict()` of an FSDP2 model holds DTensors, each with only this rank's
# rows. Saved with plain `torch.save` on rank 0, it is not a model file. In a fresh process
# `torch.load(path, weights_only=True)` refuses it ("``torch.distributed.tensor`` must be
# imported to load DTensors"); where that is imported, as here, it loads rank 0's half of
# every weight, which a plain model will not take.

# %%
if not args.load_only:
    pitfall = read_dcp_metadata(out_dir / PITFALL_DIR)
    kept = {"rank_id": torch.tensor([-1])}
    dcp.load(
        kept, storage_reader=AllowlistMetadataReader(out_dir / PITFALL_DIR), planner=WeightsOnlyLoadPlanner()
    )
    print("\n## Three pitfalls")
    alone_files = sorted((out_dir / ALONE_DIR).iterdir()) if (out_dir / ALONE_DIR).exists() else []
    timed_out = "timed out" in saved["rank0_alone"].lower()
    print(
        f"dcp.save on rank 0 only: {'timed out after 1 s' if timed_out else saved['rank0_alone']}, "
        f"waiting for the other ranks; {len(alone_files)} files written"
    )
    print(
        f"{world_size} ranks saved their rank number under one key; the checkpoint holds "
        f"{len(pitfall.state_dict_metadata['rank_id'].chunks)} chunk, rank_id = {kept['rank_id'].tolist()}"
    )
    rank0_state = torch.load(out_dir / PITFALL_FILE, weights_only=True)
    weight = rank0_state["hidden.weight"]
    print(
        f"model.state_dict() saved on rank 0: {type(weight).__name__}s; hidden.weight {tuple(weight.shape)} "
        f"with rows {tuple(weight.to_local().shape)} in the file"
    )
    try:
        Multiclass().load_state_dict(rank0_state)
    except RuntimeError as err:
        reason = re.search(r"got mixed torch.Tensor and DTensor", str(err))
        print(f"Multiclass().load_state_dict(it): RuntimeError: ... {reason[0] if reason else err}")


# %% [markdown]
# ## Converting to one plain file
#
# `dcp_to_torch_save` gathers a DCP checkpoint into one `torch.save` file, model and
# optimizer together, for resuming on a single machine. It reads with plain `dcp.load`, so
# it gets the private copy checked against the checksums above (and, with `--load-only`, by
# the first cell), which nobody can change in between. For inference keep the model part:
# a plain state_dict that `torch.load(..., weights_only=True)` loads into `Multiclass`.

# %%
with private_folder() as scratch:
    dcp_to_torch_save(verified / DCP_DIR, scratch / CONVERTED_FILE)
    converted_state = torch.load(scratch / CONVERTED_FILE, weights_only=True)
for obj, path in (
    (converted_state, out_dir / CONVERTED_FILE),
    (converted_state["model"], out_dir / MODEL_FROM_DCP),
):
    partial = path.with_name(f".{path.name}.partial")  # crash-safe: the old file or the new one, never half
    torch.save(obj, partial)
    partial.replace(path)
converted = Multiclass()
converted.load_state_dict(torch.load(out_dir / MODEL_FROM_DCP, weights_only=True))
converted.eval()
with torch.no_grad():
    converted_accuracy = (converted(split.X_test).argmax(dim=1) == split.y_test).float().mean().item()
print("\n## Converted to one plain file")
print(f"{out_dir / CONVERTED_FILE}: {sorted(converted_state)}, loads with torch.load(weights_only=True)")
print(f"{out_dir / MODEL_FROM_DCP}: the model part, a plain state_dict that Multiclass loads")
print(f"Test accuracy: {converted_accuracy:.2f} (the model loaded onto 1 process: {test_accuracy:.2f})")


# %% [markdown]
# ## The weights as safetensors, to publish
#
# Hugging Face and most tools outside PyTorch read safetensors, not DCP. During training,
# every rank called `dcp.save` with a `HuggingFaceStorageWriter`: each wrote its slices
# into `sharded/`, then, with `enable_consolidation=True`, the writer joined the slices
# into whole tensors, one file per number of `fqn_to_index_mapping` (here the hidden layer
# and the output layer, to show the layout of a model too large for one file), plus
# `model.safetensors.index.json`, which says which file holds which tensor. One process
# reads them with plain `safetensors` and no process group; every tensor equals the one
# the DCP load above gave.

# %%
if not args.load_only and load_file is None:
    print("\nsafetensors is not installed: dcp-safetensors/ was not written (the formats extra)")
elif not args.load_only:
    index = json.loads((out_dir / HF_DIR / "model.safetensors.index.json").read_text())
    published = {}
    for file_name in sorted(set(index["weight_map"].values())):
        published |= load_file(out_dir / HF_DIR / file_name)
    equal = sum(torch.equal(published[name], converted_state["model"][name]) for name in published)
    print(f"\n## The weights as safetensors, in {out_dir / HF_DIR}")
    for path in sorted((out_dir / HF_DIR).rglob("*.*")):
        print(f"  {path.relative_to(out_dir / HF_DIR)!s:<52} {path.stat().st_size:>5} bytes")
    print(
        f"Read with safetensors' load_file: {equal} of {len(converted_state['model'])} tensors equal "
        "to the DCP load's"
    )

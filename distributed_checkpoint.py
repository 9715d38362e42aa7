"""Chapter 8: when one machine is not enough -- a sharded model saved with torch.distributed.checkpoint.

With FSDP2 (`fully_shard`) each rank holds only a slice of every weight, so no rank has the
model to `torch.save`. torch.distributed.checkpoint (DCP) saves it the way it is held:
every rank writes its own slices, in parallel, and a `.metadata` index records which file
holds which slice. The checkpoint loads back onto any number of ranks, or onto one process,
and converts to one plain file. Shown with the real engine, on the CPU (gloo backend).

Run (starts the ranks itself):

    python distributed_checkpoint.py [--nproc 2] [--epochs 100]

or have torchrun start them, on one machine or several (see the README):

    torchrun --nproc-per-node 2 distributed_checkpoint.py

Writes into OUT_DIR (default artifacts/): dcp-checkpoint/ (one .distcp file per rank and
.metadata), dcp-async/ (the same state, saved with dcp.async_save), dcp-full-state.pth
(the full tensors gathered at save time, to check the loads against), dcp-checkpoint.pth
and iris-model-from-dcp.pth (the conversions), and the pitfalls' dcp-rank0-only/,
dcp-pitfall/ and fsdp-state-dict-rank0.pth.

A DCP checkpoint is not covered by `weights_only`: plain `dcp.load` unpickles `.metadata`
with `pickle.load`, which can run code. Load only checkpoints you made, from a folder only
you can write to; this chapter reads them as it would read a stranger's (see its cell
"Reading a DCP checkpoint you did not make").
"""

# %%
from __future__ import annotations

import io
import logging
import os
import pickle
import re
import shutil
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from build_model import LEARNING_RATE, SEED, Multiclass, flat_tensors, load_iris_split, seed_everything
from support.cli import (
    SAVED,
    chapter_parser,
    error_line,
    fail,
    heading,
    parse_chapter_args,
    positive_int,
    prepare_out_dir,
    safe_text,
)
from support.lab_tools import private_folder, root_error_line, run_under_torchrun, start_ranks
from support.saving import save_atomically
from support.untrusted_files import (
    ModelFileError,
    describe_load_error,
    load_untrusted_model,
    open_regular_file,
)

NPROC = 2  # ranks started by this script
MAX_NPROC = 7  # hidden.weight has 8 rows: beyond N+1 = 8 ranks, some would hold none
EPOCHS = 100  # as in chapter 2
BATCH_SIZE = 5  # flowers per step, per rank
TIMEOUT = 10  # seconds a rank waits in a collective before the run is ended as hung
DCP_DIR = "dcp-checkpoint"
ASYNC_DIR = "dcp-async"
FULL_FILE = "dcp-full-state.pth"
CONVERTED_FILE = "dcp-checkpoint.pth"
MODEL_FROM_DCP = "iris-model-from-dcp.pth"
PITFALL_DIR = "dcp-pitfall"
ALONE_DIR = "dcp-rank0-only"
PITFALL_FILE = "fsdp-state-dict-rank0.pth"

parser = chapter_parser(__doc__)
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
out_dir = prepare_out_dir(args.out_dir)


# %%
# # Training on several ranks, each holding a slice of every weight
#
# Every rank is a process that runs the function below, top to bottom. `fully_shard`
# (FSDP2) turns each parameter into a DTensor: a tensor of the full shape, of which
# this rank stores only its rows. Before a forward pass the ranks gather the full
# weights; after backward each keeps the gradients of its own rows and Adam updates only
# those. Each rank trains on its own, equal share of the flowers (a rank that took an
# extra step would wait forever for the others).
#
# `get_state_dict` gives the model's and the optimizer's state under the plain names
# (`hidden.weight`, not a wrapper's prefix), still sharded. `dcp.save` is called on
# every rank: each writes its slices into its own `.distcp` file, and rank 0 writes
# `.metadata`, the index of every slice. Then the same state is saved once more with
# `dcp.async_save`, which copies it and writes in the background while training goes
# on; its own cell, further down, checks what it wrote.


def train_and_save(rank: int, world_size: int) -> None:
    mesh = init_device_mesh("cpu", (world_size,))
    seed_everything(SEED)  # the same initial weights on every rank, before they are sliced
    model = Multiclass()
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.NLLLoss()

    weight = model.hidden.weight  # a DTensor: the full shape, and this rank's rows in .to_local()
    shard_shapes = [None] * world_size
    dist.all_gather_object(shard_shapes, tuple(weight.to_local().shape))
    if rank == 0:
        heading(f"Training on {world_size} ranks: FSDP2 (fully_shard), gloo, CPU")
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
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    if rank == 0:
        shutil.rmtree(out_dir / DCP_DIR, ignore_errors=True)  # no file of an earlier run lingers there
    dist.barrier()
    started = time.perf_counter()
    dcp.save(state, checkpoint_id=out_dir / DCP_DIR)
    blocked_by_save = time.perf_counter() - started

    # The full tensors, gathered from every rank, to check every later load against.
    full_at_save = {
        name: tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.clone()
        for name, tensor in flat_tensors(state).items()
    }

    # Async: the state is copied at the call, written in a background thread meanwhile.
    # Its collectives get a group of their own, so they cannot interleave with training's.
    async_group = dist.new_group(backend="gloo")
    if rank == 0:
        shutil.rmtree(out_dir / ASYNC_DIR, ignore_errors=True)
    dist.barrier()
    started = time.perf_counter()
    future = dcp.async_save(state, checkpoint_id=out_dir / ASYNC_DIR, process_group=async_group)
    blocked_by_async_save = time.perf_counter() - started
    model.train()
    for batch in torch.randperm(len(X)).split(BATCH_SIZE):  # one more epoch while it writes
        optimizer.zero_grad()
        loss_fn(model(X[batch]), y[batch]).backward()
        optimizer.step()
    future.result()  # before the next save, before reading it, before leaving the group
    model_state, optimizer_state = get_state_dict(model, optimizer)
    full_after_async = {
        name: tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.clone()
        for name, tensor in flat_tensors({"model": model_state, "optimizer": optimizer_state}).items()
    }
    if rank == 0:
        print(
            f"Training loop blocked: {blocked_by_save * 1000:.0f} ms by dcp.save, "
            f"{blocked_by_async_save * 1000:.0f} ms by dcp.async_save"
        )

    # The three pitfalls of the end of the chapter. First, dcp.save called on rank 0 only:
    # it waits for the other ranks, which never come (here for 1 s, not --timeout).
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
        save_atomically(full, out_dir / FULL_FILE)
    dist.barrier()
    # Then a plain tensor under one key, saved by every rank; and the FSDP2 model's own
    # state_dict, saved with plain torch.save on rank 0.
    dcp.save({"rank_id": torch.tensor([rank])}, checkpoint_id=out_dir / PITFALL_DIR)
    if rank == 0:
        torch.save(model.state_dict(), out_dir / PITFALL_FILE)
    dist.barrier()


# %%
# # Starting the ranks
#
# `torchrun` starts one process per rank and tells each its rank in environment
# variables; `dist.init_process_group("gloo")` reads them. Run as a plain script, this
# chapter starts the ranks itself, forked so that they inherit what is already
# imported, and each joins the group at a free port on the loopback interface.
# `start_ranks` (in lab_tools.py, with the torchrun case) also makes a failure end the
# whole run in one line: a rank that raises, dies, or stops responding (the others wait
# `--timeout` seconds for it in a collective) is named, the others are stopped, and no
# rank outlives its launcher.

logging.getLogger("torch.distributed").setLevel(logging.ERROR)  # failures are reported in one line below
if not args.load_only:
    if under_torchrun:
        run_under_torchrun(train_and_save, args.timeout)
    elif failure := start_ranks(train_and_save, world_size, args.timeout):
        print(f"error: {failure}", file=sys.stderr)
        sys.exit(1)
    SAVED.extend(f"{out_dir / name}/" for name in (DCP_DIR, ASYNC_DIR))  # named if Ctrl-C comes next


# %%
# # Reading a DCP checkpoint you did not make
#
# `torch.load(path, weights_only=True)` protects you from a `torch.save` file. Nothing
# like it protects a DCP checkpoint: plain `dcp.load` reads `.metadata` with
# `pickle.load`, and every non-tensor item (here the optimizer's `lr`, `betas`...) with
# `torch.load(weights_only=False)`. Either can run any code the file's author chose, and
# anyone who can write into the checkpoint folder, even while a run is writing it, is
# that author. Load only checkpoints you made, from a folder only you can write to.
#
# To read one anyway, swap in two parts: a reader whose `.metadata` unpickler admits
# only DCP's own metadata classes, and a planner that loads non-tensor items with
# `weights_only=True`. (Tensors DCP already reads with `weights_only=True`.) Anything
# else is refused in one line, before it runs.

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
        raise ModelFileError(
            f".metadata refers to {safe_text(module, 80)}.{safe_text(name, 80)}, not DCP metadata"
        )


def read_dcp_metadata(folder: Path) -> Metadata:
    """`.metadata`, through the allowlist, checked to be an index of files inside `folder`."""
    with open_regular_file(
        folder / ".metadata", made_by="python distributed_checkpoint.py"
    ) as file:  # a regular file, not a FIFO that would block
        try:
            metadata = DCPMetadataUnpickler(file).load()
        except ModelFileError as err:
            raise ModelFileError(f"{folder} refused: {err}") from None
        except Exception as err:  # a damaged pickle can fail in many ways
            raise ModelFileError(f"{folder} refused: .metadata is damaged ({error_line(err)})") from None
    if not (
        isinstance(metadata, Metadata)
        and isinstance(metadata.state_dict_metadata, dict)
        and isinstance(metadata.storage_data, dict)
        and all(isinstance(index, MetadataIndex) for index in metadata.storage_data)
    ):
        raise ModelFileError(f"{folder} refused: .metadata is not DCP's index")
    for info in metadata.storage_data.values():
        if not re.fullmatch(r"__\d+_\d+\.distcp", str(getattr(info, "relative_path", ""))):
            raise ModelFileError(f"{folder} refused: .metadata points outside its .distcp files")
        if not (
            type(info.offset) is int and type(info.length) is int and info.offset >= 0 and info.length >= 0
        ):
            raise ModelFileError(f"{folder} refused: .metadata has a bad offset or length")
        if info.transform_descriptors:
            raise ModelFileError(
                f"{folder} refused: its items are stored transformed, which this check cannot read"
            )
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
        except Exception as err:
            raise ModelFileError(
                f"{safe_text(read_item.dest_index.fqn)} refused: {describe_load_error(err)}"
            ) from None
        checked = io.BytesIO()
        torch.save(item, checked)  # what the default planner reads back: now only what passed
        checked.seek(0)
        super().load_bytes(read_item, checked)


def check_dcp_checkpoint(folder: Path) -> Metadata:
    """The same checks up front, on one process: `.metadata`, then every non-tensor item."""
    metadata = read_dcp_metadata(folder)
    for index, info in metadata.storage_data.items():
        if isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            with open_regular_file(folder / info.relative_path) as file:
                file.seek(info.offset)
                data = file.read(info.length)
            try:
                torch.load(io.BytesIO(data), weights_only=True)
            except Exception as err:
                reason = describe_load_error(err)
                raise ModelFileError(f"{folder} refused: {safe_text(index.fqn)} {reason}") from None
    return metadata


# %%
# # What the checkpoint holds
#
# `.metadata` lists every tensor with its full shape and its chunks: where each chunk
# starts (offset) and its size, and which rank's file holds it. Each weight is split
# by rows, one chunk per rank. The optimizer's Adam steps and settings are the same on
# every rank, so they are written once.

try:
    metadata = check_dcp_checkpoint(out_dir / DCP_DIR)
except ModelFileError as err:
    fail(err)
file_of = {
    (index.fqn, tuple(index.offset or ())): info.relative_path
    for index, info in metadata.storage_data.items()
}
heading(f"Saved with dcp.save to {out_dir / DCP_DIR}")
for path in sorted((out_dir / DCP_DIR).iterdir()):
    print(f"  {path.name:<14} {path.stat().st_size:>7} bytes")
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


# %%
# # Loading onto a different number of ranks
#
# A DCP checkpoint does not depend on how many ranks wrote it. Here N+1 ranks each
# build the sharded model and an optimizer, then `dcp.load` fills their slices in
# place, each rank reading only the chunks that overlap its rows. `get_state_dict`
# creates the optimizer's state for it to fill; `set_state_dict` puts it back.
# Every tensor is compared with the full tensors gathered at save time, then the
# resharded model takes one training step.


def load_resharded(rank: int, world_size: int) -> None:
    mesh = init_device_mesh("cpu", (world_size,))
    model = Multiclass()
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(
        state, storage_reader=AllowlistMetadataReader(out_dir / DCP_DIR), planner=WeightsOnlyLoadPlanner()
    )
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

    model_state, optimizer_state = get_state_dict(model, optimizer)
    full = {
        name: tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.clone()
        for name, tensor in flat_tensors({"model": model_state, "optimizer": optimizer_state}).items()
    }
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
        heading(f"Loaded onto {world_size} ranks")
        print(f"hidden.weight rows per rank: {shard_rows}")
        print(f"Tensors equal to the full ones at save time: {equal} of {len(at_save)} (model and optimizer)")
        print(f"One more training step on {world_size} ranks: loss {loss.item():.4f}")


if under_torchrun:
    print("\n(torchrun fixed the number of ranks; to load onto more: run this script with --load-only)")
elif failure := start_ranks(load_resharded, world_size + 1, args.timeout):
    if "ModelFileError: " in failure:  # the checkpoint was refused: bad input, exit status 2
        fail(failure.split("ModelFileError: ", 1)[1].split(" (", 1)[0])
    print(f"error: {failure}", file=sys.stderr)
    sys.exit(1)


# %%
# # Loading onto one process, with no process group
#
# The same `dcp.load` works with no process group at all: it reads every chunk and
# fills plain tensors of the full shape. Build the plain model and optimizer, load, and
# compare again; then train one step on one process.

model = Multiclass()
optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
model_state, optimizer_state = get_state_dict(model, optimizer)
state = {"model": model_state, "optimizer": optimizer_state}
warnings.filterwarnings("ignore", message=".*in a single process.*")  # DCP noting there is no group
try:
    dcp.load(
        state, storage_reader=AllowlistMetadataReader(out_dir / DCP_DIR), planner=WeightsOnlyLoadPlanner()
    )
except (Exception, CheckpointException) as err:
    fail(f"{out_dir / DCP_DIR} refused: {root_error_line(err)}")
set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])

saved = torch.load(out_dir / FULL_FILE, weights_only=True)
loaded = flat_tensors({"model": model.state_dict(), "optimizer": get_state_dict(model, optimizer)[1]})
equal = sum(torch.equal(loaded[name], saved["at_save"][name]) for name in saved["at_save"])
heading("Loaded onto 1 process")
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


# %%
# # The async checkpoint holds the state at the call
#
# `dcp.async_save` copies the state into memory of its own, returns at once, and
# writes in a background thread while training goes on. Until its future resolves, do
# not read that checkpoint, do not start another save into it, and do not leave the
# process group or exit. The ranks trained one more epoch while it wrote; the async
# checkpoint still holds the state at the moment of the call.

if not args.load_only:
    async_model = Multiclass()
    async_optimizer = torch.optim.Adam(async_model.parameters(), lr=LEARNING_RATE)
    async_state = {
        "model": async_model.state_dict(),
        "optimizer": get_state_dict(async_model, async_optimizer)[1],
    }
    try:
        dcp.load(
            async_state,
            storage_reader=AllowlistMetadataReader(out_dir / ASYNC_DIR),
            planner=WeightsOnlyLoadPlanner(),
        )
    except (Exception, CheckpointException) as err:
        fail(f"{out_dir / ASYNC_DIR} refused: {root_error_line(err)}")
    in_async = flat_tensors(async_state)
    at_call = all(torch.equal(in_async[name], saved["at_save"][name]) for name in saved["at_save"])
    changed = sum(
        not torch.equal(saved["after_async"][name], saved["at_save"][name]) for name in saved["at_save"]
    )
    heading(f"Saved with dcp.async_save to {out_dir / ASYNC_DIR}")
    print(f"It holds the state at the call: {at_call} ({changed} of {len(in_async)} tensors changed since)")


# %%
# # Three pitfalls
#
# `dcp.save` is a collective: every rank must call it. Called on rank 0 alone, as one
# would call `torch.save`, it waits for the others until the group's timeout, then fails
# without writing anything.
#
# DCP knows a tensor is split across ranks only when it is a DTensor (FSDP2, tensor
# parallelism) or a ShardedTensor. A plain tensor under one key is taken to be the same
# on every rank and written once. Each rank saved its own rank number under one key:
# the checkpoint kept one of them, and every rank that loads it gets that one.
#
# And `model.state_dict()` of an FSDP2 model holds DTensors, each with only this rank's
# rows. Saved with plain `torch.save` on rank 0, it is not a model file. In a fresh
# process `torch.load(path, weights_only=True)` refuses it ("``torch.distributed.tensor``
# must be imported to load DTensors"); where that is imported, as here, it loads rank
# 0's half of every weight, which a plain model will not take.

if not args.load_only:
    pitfall = read_dcp_metadata(out_dir / PITFALL_DIR)
    kept = {"rank_id": torch.tensor([-1])}
    dcp.load(
        kept, storage_reader=AllowlistMetadataReader(out_dir / PITFALL_DIR), planner=WeightsOnlyLoadPlanner()
    )
    heading("Three pitfalls")
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
        print(
            f"Multiclass().load_state_dict(it): RuntimeError: ... {reason[0] if reason else error_line(err)}"
        )


# %%
# # Converting to one plain file
#
# `dcp_to_torch_save` gathers a DCP checkpoint into one `torch.save` file, model and
# optimizer together, for resuming on a single machine. It reads with plain `dcp.load`,
# so it gets a private copy (mode 0700), checked first, which nobody can change in
# between. For inference keep the model part: a plain state_dict that
# `torch.load(..., weights_only=True)` and chapter 4's checks accept.

with private_folder() as private:
    shutil.copytree(out_dir / DCP_DIR, private / DCP_DIR)
    try:
        check_dcp_checkpoint(private / DCP_DIR)
    except ModelFileError as err:
        fail(err)
    dcp_to_torch_save(private / DCP_DIR, private / CONVERTED_FILE)
    converted_state = torch.load(private / CONVERTED_FILE, weights_only=True)
save_atomically(converted_state, out_dir / CONVERTED_FILE)
save_atomically(converted_state["model"], out_dir / MODEL_FROM_DCP)
converted = load_untrusted_model(out_dir / MODEL_FROM_DCP, Multiclass)
with torch.no_grad():
    converted_accuracy = (converted(split.X_test).argmax(dim=1) == split.y_test).float().mean().item()
heading("Converted to one plain file")
print(f"{out_dir / CONVERTED_FILE}: {sorted(converted_state)}, loads with torch.load(weights_only=True)")
print(f"{out_dir / MODEL_FROM_DCP}: the model part, accepted by the checks for untrusted files")
print(f"Test accuracy: {converted_accuracy:.2f} (the model loaded onto 1 process: {test_accuracy:.2f})")

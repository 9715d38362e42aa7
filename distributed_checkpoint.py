"""Chapter 8: when one machine is not enough -- saving and loading with torch.distributed.checkpoint.

With DistributedDataParallel (or FSDP) every rank holds the model, and `torch.save` on
every rank writes the same file N times, or worse, N different files that each hold only
part of a sharded model. PyTorch's answer is torch.distributed.checkpoint (DCP): every rank
writes its part in parallel, and the checkpoint loads back on a different number of ranks,
or is converted to one plain file for inference. Shown with the real engine, on the CPU.

Run (starts the ranks itself, gloo backend, CPU):

    python distributed_checkpoint.py [--nproc 2] [--epochs 100]

or launch the ranks with torchrun, on one machine or several (see the README):

    torchrun --nproc-per-node 2 distributed_checkpoint.py

Writes into OUT_DIR (default artifacts/): dcp-checkpoint/ (one .distcp file per rank and
.metadata), iris-ddp-rank0.pth (rank 0's plain copy, for comparison), dcp-checkpoint.pth
and iris-model-from-dcp.pth (the conversions), and dcp-pitfall/.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel

from build_model import (
    SEED,
    ModelFileError,
    Multiclass,
    accuracy,
    chapter_parser,
    flat_tensors,
    heading,
    load_iris_split,
    load_model,
    make_optimizer,
    positive_int,
    prepare_out_dir,
    same_state,
    seed_everything,
    train_one_epoch,
)

NPROC = 2  # ranks started by this script
EPOCHS = 100  # as in chapter 2
BATCH_SIZE = 5  # per rank
REPORT_EVERY = 25  # epochs between progress lines
TIMEOUT = timedelta(seconds=60)  # a collective that waits longer than this fails instead of hanging
DCP_DIR = "dcp-checkpoint"
PITFALL_DIR = "dcp-pitfall"
RANK0_FILE = "iris-ddp-rank0.pth"
CONVERTED_FILE = "dcp-checkpoint.pth"
MODEL_FROM_DCP = "iris-model-from-dcp.pth"


# %%
# # Training on several ranks
#
# Each rank is a process with its own copy of the model, wrapped in
# DistributedDataParallel: after every backward pass the ranks average their gradients,
# so the copies stay identical. Each rank trains on its own shard of the training set, of
# equal size, since a rank that takes an extra step would wait forever for the others.


def shard(X: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    per_rank = len(X) // world_size  # drop the remainder: every rank takes as many steps
    return X[rank::world_size][:per_rank]


def train_ddp(
    rank: int, world_size: int, epochs: int
) -> tuple[DistributedDataParallel, torch.optim.Optimizer]:
    seed_everything(SEED)  # same initial weights and batch order on every rank
    model = DistributedDataParallel(Multiclass())
    optimizer = make_optimizer(model)
    split = load_iris_split()
    X, y = shard(split.X_train, rank, world_size), shard(split.y_train, rank, world_size)
    if rank == 0:
        heading(f"Training on {world_size} ranks: DistributedDataParallel, gloo, CPU")
        print(f"{len(X)} training flowers on each rank")
    for epoch in range(1, epochs + 1):
        loss = torch.tensor(train_one_epoch(model, optimizer, X, y, BATCH_SIZE))
        dist.all_reduce(loss, op=dist.ReduceOp.AVG)
        if rank == 0 and (epoch % REPORT_EVERY == 0 or epoch == epochs):
            test_accuracy = accuracy(model, split.X_test, split.y_test)
            print(f"epoch {epoch:4d}  loss {loss.item():.4f}  test acc {test_accuracy:.3f}")
    return model, optimizer


# %%
# # Saving with DCP, and the one plain file only rank 0 may write
#
# `get_state_dict` returns the model's and the optimizer's state with the names a plain
# model uses (no `module.` prefix) and the optimizer state keyed by those names instead
# of by position. `dcp.save` is called on every rank: each writes the tensors assigned to
# it into its own `.distcp` file, and one rank writes `.metadata`, the index of where
# every tensor lives. A tensor replicated on all ranks, as with DDP, is written once.
#
# A plain `torch.save` is another matter: every rank calling it on the same path races to
# write one file. Write it from rank 0 only, then make the others wait at a barrier.


def fresh_folder(folder: Path, rank: int) -> None:
    """Rank 0 empties the checkpoint folder, so no file of an earlier run lingers there."""
    if rank == 0:
        shutil.rmtree(folder, ignore_errors=True)
    dist.barrier()


def save_distributed(
    model: DistributedDataParallel, optimizer: torch.optim.Optimizer, rank: int, out_dir: Path
) -> None:
    model_state, optimizer_state = get_state_dict(model, optimizer)
    fresh_folder(out_dir / DCP_DIR, rank)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=out_dir / DCP_DIR)
    if rank == 0:
        torch.save({"model": model_state, "optimizer": optimizer_state}, out_dir / RANK0_FILE)
    dist.barrier()


# %%
# # The pitfall: plain tensors are taken to be replicated
#
# DCP knows a tensor is split across ranks only when it is a DTensor (FSDP2, tensor
# parallelism) or a ShardedTensor. A plain tensor under one key is assumed identical on
# every rank and is written once. Here each rank saves its own rank number under one key;
# every rank then loads back the same number, and the others are gone.


def pitfall(rank: int, world_size: int, out_dir: Path) -> list[int]:
    fresh_folder(out_dir / PITFALL_DIR, rank)
    dcp.save({"rank_id": torch.tensor([rank])}, checkpoint_id=out_dir / PITFALL_DIR)
    loaded = {"rank_id": torch.tensor([-1])}
    dcp.load(loaded, checkpoint_id=out_dir / PITFALL_DIR)
    gathered = [torch.tensor([-1]) for _ in range(world_size)]
    dist.all_gather(gathered, loaded["rank_id"])
    return [int(value) for value in gathered]


def rank_work(rank: int, world_size: int, args: argparse.Namespace) -> None:
    model, optimizer = train_ddp(rank, world_size, args.epochs)
    if rank == args.fail_rank:
        raise RuntimeError(f"simulated crash on rank {rank} (--fail-rank)")
    save_distributed(model, optimizer, rank, args.out_dir)
    loaded_back = pitfall(rank, world_size, args.out_dir)
    if rank == 0:
        print(f"Each rank saved its rank number under one key; loaded back on each rank: {loaded_back}")


def run_rank(rank: int, world_size: int, args: argparse.Namespace, init_method: str) -> None:
    """One rank, from joining the group to leaving it, on success and on failure.

    The DDP model must be gone before the process group is destroyed: destroying the
    group from the model's own clean-up can deadlock. So the work runs in its own function
    (its objects die when it returns), and a failure is kept without its traceback, which
    would keep them alive, until the group is gone.
    """
    torch.set_num_threads(1)  # as torchrun sets it: ranks sharing a machine must not each use every core
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world_size, timeout=TIMEOUT
    )
    failure = None
    try:
        rank_work(rank, world_size, args)
    except Exception as err:
        failure = err.with_traceback(None)
        if args.failure_dir:  # tell the launcher what went wrong here, and when
            (args.failure_dir / f"rank-{rank}.txt").write_text(one_line(failure))
    dist.destroy_process_group()
    if failure:
        raise failure


def one_line(err: Exception) -> str:
    """'Type: first line of the message', without the source paths gloo puts in brackets."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    without_paths = re.sub(r"\[/[^\]]*\] ", "", first)
    return f"{type(err).__name__}: {without_paths}"


# %%
# # Starting the ranks
#
# `torchrun` starts one process per rank and tells each its rank in environment
# variables. Run as a plain script, we start them ourselves: each joins the group at a
# free port on the loopback interface. Where the platform allows it they are forked, so
# they inherit the imported modules and start at once.


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ranks(args: argparse.Namespace) -> str | None:
    """Run all ranks; None on success, else one line saying which rank failed first, and why.

    When one rank fails, the launcher stops the others, so none is left waiting for it;
    they may fail too, from the lost connection. The first failure is the cause.
    """
    init_method = f"tcp://127.0.0.1:{free_port()}"
    start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    if start_method == "fork":
        import torch._dynamo  # noqa: F401 -- an optimizer's first construction imports it: once here, not per rank
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)  # we report it ourselves
    with tempfile.TemporaryDirectory() as failures:
        args.failure_dir = Path(failures)
        try:
            mp.start_processes(
                run_rank, args=(args.nproc, args, init_method), nprocs=args.nproc, start_method=start_method
            )
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as err:
            reports = sorted(Path(failures).iterdir(), key=lambda path: path.stat().st_mtime_ns)
            if not reports:
                return f"rank {err.error_index} died: {str(err).strip().splitlines()[-1]}"
            others = f" ({len(reports) - 1} other rank(s) failed after it)" if len(reports) > 1 else ""
            return f"{reports[0].stem.replace('-', ' ')} failed: {reports[0].read_text()}{others}"
    return None


# %%
# # Loading on a different number of ranks
#
# A DCP checkpoint does not remember how many ranks wrote it: `.metadata` says where
# each tensor is, and each loading rank reads what it needs. Here one process, with no
# process group at all, loads the checkpoint two ranks wrote. DCP loads *in place*, so
# first build the model and optimizer whose state it fills; `get_state_dict` also
# allocates the optimizer's state for that.


def resume_on_one_process(out_dir: Path) -> tuple[Multiclass, torch.optim.Optimizer, dict[str, Any]]:
    model = Multiclass()
    optimizer = make_optimizer(model)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optimizer_state}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*load in a single process.*")
        dcp.load(state, checkpoint_id=out_dir / DCP_DIR)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return model, optimizer, state


# %%
# # Converting to one plain file
#
# `dcp_to_torch_save` gathers a DCP checkpoint into one `torch.save` file, model and
# optimizer together, for resuming on a single machine. For inference, keep the model
# part: a plain state_dict that `torch.load(..., weights_only=True)` and chapter 4's
# loader accept.


def convert(out_dir: Path) -> Path:
    dcp_to_torch_save(out_dir / DCP_DIR, out_dir / CONVERTED_FILE)
    full = torch.load(out_dir / CONVERTED_FILE, weights_only=True)
    torch.save(full["model"], out_dir / MODEL_FROM_DCP)
    return out_dir / MODEL_FROM_DCP


def after_training(out_dir: Path) -> None:
    """On one process: list the files, resume, compare, convert, predict."""
    heading(f"Saved with torch.distributed.checkpoint to {out_dir / DCP_DIR}")
    for path in sorted((out_dir / DCP_DIR).iterdir()):
        print(f"  {path.name:<14} {path.stat().st_size:>7} bytes")

    heading("Loaded back on 1 process")
    model, _, state = resume_on_one_process(out_dir)
    saved = torch.load(out_dir / RANK0_FILE, weights_only=True)
    identical = same_state(flat_tensors(state), flat_tensors(saved))
    print(f"Every model and optimizer tensor equals rank 0's at save time: {identical}")

    heading("Converted to one plain file")
    model_path = convert(out_dir)
    converted = load_model(model_path)
    split = load_iris_split()
    print(f"{model_path}: loads with torch.load(weights_only=True) and load_model")
    print(
        f"Test accuracy: {accuracy(converted, split.X_test, split.y_test):.2f} "
        f"(the distributed model's: {accuracy(model, split.X_test, split.y_test):.2f})"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = chapter_parser(__doc__)
    parser.add_argument(
        "--nproc", type=positive_int, default=NPROC, help=f"ranks to start (default: {NPROC})"
    )
    parser.add_argument("--epochs", type=positive_int, default=EPOCHS, help=f"(default: {EPOCHS})")
    parser.add_argument(
        "--fail-rank",
        type=int,
        default=-1,
        help="make this rank crash after training, to see a failed run end cleanly",
    )
    args = parser.parse_args(argv)
    args.failure_dir = None  # where ranks started by this script report a failure
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_out_dir(args.out_dir)
    if launched_by_torchrun():
        rank = int(os.environ["RANK"])
        run_rank(rank, int(os.environ["WORLD_SIZE"]), args, init_method="env://")
        if rank != 0:
            return 0
    else:
        failure = start_ranks(args)
        if failure:
            print(f"error: {failure}", file=sys.stderr)
            return 1
    try:
        after_training(args.out_dir)
    except ModelFileError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

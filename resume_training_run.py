# %% [markdown]
# # Chapter 6: resuming a real training run exactly
#
# Chapter 5 proves an exact resume on the article's loop: plain Adam at a fixed learning
# rate, checkpoints at epoch ends. A real run carries more state, and that is what resumes
# lose most often: the learning-rate schedule, the loss scale of mixed precision, the EMA
# weights, and the position inside an epoch. This chapter trains with all of them, stops
# in the middle of an epoch, resumes in a new process, and ends bit-identical to the run
# that never stopped; then it leaves each piece out and measures what goes wrong. It also
# keeps the right checkpoints (the best, the last few, a `latest` pointer) and loads the
# optimizer onto the right device. It is a chapter of its own so that each of the two
# stays short and within its time: chapter 5 teaches the checkpoint, this one the run.
#
#     python resume_training_run.py [--steps 126] [--interrupt-at 52] [--save-every 13]
#     python resume_training_run.py --resume [--steps 126] [--save-every 13]
#
# The second command is a run of your own that you can stop (Ctrl-C) and resume as often
# as you like, with the same `--steps`.
#
# **Writes** into `OUT_DIR` (default `artifacts/`): `run-stepNNNNN.pth` every
# `--save-every` steps and at the last, keeping the newest `--keep`; `latest`, the name of
# the newest; `best.pth`, the EMA weights at their best validation accuracy; the
# demonstration also keeps `interrupted.pth` and draws `resume-run.png` when matplotlib is
# installed. **Reads** the checkpoint `OUT_DIR/latest` names, with `--resume`.
#
# Next: chapter 7, `python load_tips.py`, when the file and the model don't quite match.

# %%
from __future__ import annotations

import itertools
import math
import os
import re
import shlex
import shutil
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

# The command line first, before torch is imported: --help, a bad flag and Ctrl-C are
# answered at once, in one line.
from support.cli import chapter_parser, parse_chapter_args, positive_int, prepare_out_dir, seed
from support.settings import BATCH_SIZE, SEED

STEPS = 126  # six epochs of 21 batches
INTERRUPT_AT = 52  # the machine "dies" here: 10 batches into the third epoch
SAVE_EVERY = 13  # steps between checkpoints
KEEP = 2  # step checkpoints kept on disk
WARMUP = 20  # steps of linear warm-up before the cosine decay
PEAK_LR = 0.01  # the learning rate at the end of the warm-up
EMA_DECAY = 0.95  # the EMA keeps 95% of itself each step
GROWTH_INTERVAL = 10  # clean steps before the GradScaler doubles its scale (default 2000)

parser = chapter_parser()
parser.add_argument(
    "--steps", type=positive_int, default=STEPS, help=f"training steps in all (default: {STEPS})"
)
parser.add_argument(
    "--interrupt-at",
    type=positive_int,
    default=INTERRUPT_AT,
    help=f"the demonstration's machine 'dies' after this step, a multiple of --save-every below --steps "
    f"(default: {INTERRUPT_AT})",
)
parser.add_argument(
    "--save-every",
    type=positive_int,
    default=SAVE_EVERY,
    help=f"steps between checkpoints (default: {SAVE_EVERY})",
)
parser.add_argument(
    "--keep", type=positive_int, default=KEEP, help=f"step checkpoints kept (default: {KEEP})"
)
parser.add_argument(
    "--resume",
    action="store_true",
    help="instead of the demonstration, train up to --steps, carrying on from the checkpoint OUT_DIR/latest "
    "names if there is one",
)
parser.add_argument(
    "--seed",
    type=seed,
    default=SEED,
    help=f"seeds the weights and the sampler of a fresh run (default: {SEED})",
)
args = parse_chapter_args(parser)
if args.steps <= WARMUP:
    parser.error(f"--steps ({args.steps}) must be above the {WARMUP} warm-up steps")
if not args.resume and (args.interrupt_at >= args.steps or args.interrupt_at % args.save_every):
    parser.error(f"--interrupt-at ({args.interrupt_at}) must be a multiple of --save-every below --steps")
out_dir = prepare_out_dir(args.out_dir)
# When a float16 gradient overflows in the very first step, the scaler skips that optimizer
# step and torch warns that the schedule stepped before the optimizer. The schedule counts
# steps, skipped or not, as it should; this is the one warning the run would print.
warnings.filterwarnings(
    "ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"
)

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

import build_model
from build_model import Multiclass, flat_tensors, load_iris_split, same_state
from support.lab_tools import resume_in_new_process
from support.pictures import import_pyplot
from support.run_checks import fresh_states, read_latest, read_run_checkpoint
from support.saving import remove_abandoned_partials_in

SCRIPT = Path(build_model.__file__).with_name("resume_training_run.py")  # this file, in a notebook too
split = load_iris_split()
STEPS_PER_EPOCH = math.ceil(len(split.X_train) / BATCH_SIZE)
DEVICE = torch.device("cpu")  # where a GPU is, "cuda": see "The optimizer's device" below
remove_abandoned_partials_in(out_dir)  # temporary files of runs killed while saving
# The checkpoint `latest` names, checked before any lesson uses it: a bad pointer or file
# ends the chapter here in one line (see "Your own run: --resume" below).
checkpoint = None
if args.resume and (latest_path := read_latest(out_dir)):
    expected = fresh_states(Multiclass(), args.steps, WARMUP, PEAK_LR, GROWTH_INTERVAL, EMA_DECAY)
    checkpoint = read_run_checkpoint(latest_path, Multiclass, expected, args.steps, STEPS_PER_EPOCH)
picture = out_dir / "resume-run.png"
plt = None if args.resume else import_pyplot(picture)

# %% [markdown]
# ## A run with the state a real one has
#
# Everything a step changes lives in one object: the model on its device, then the Adam
# optimizer over its parameters, a warm-up-then-cosine schedule, a GradScaler for float16
# mixed precision, an EMA copy of the weights, and a `DataLoader` whose shuffling draws
# from a generator of its own. Besides, the run counts its steps and knows where it is in
# the epoch: the epoch, the batches done in it, and the sampler's generator state at the
# epoch's start, which replays the epoch's order. `build_run` makes one, fresh.

# %%


class Run:
    """One training run: the objects whose state a checkpoint must hold, and where it is."""

    def __init__(self, random_seed: int, model_args: dict[str, int] | None = None) -> None:
        torch.manual_seed(random_seed)
        self.model = Multiclass(**(model_args or {})).to(DEVICE)  # first the model on its device,
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=PEAK_LR)  # then the optimizer
        warmup = LinearLR(self.optimizer, start_factor=0.1, total_iters=WARMUP)
        cosine = CosineAnnealingLR(self.optimizer, T_max=args.steps - WARMUP)
        self.scheduler = SequentialLR(self.optimizer, [warmup, cosine], milestones=[WARMUP])
        self.scaler = torch.amp.GradScaler("cpu", growth_interval=GROWTH_INTERVAL)
        self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))
        self.generator = torch.Generator().manual_seed(random_seed)
        flowers = TensorDataset(split.X_train, split.y_train, torch.arange(len(split.X_train)))
        self.loader = DataLoader(flowers, batch_size=BATCH_SIZE, shuffle=True, generator=self.generator)
        self.step, self.epoch, self.batches_done = 0, 0, 0
        self.epoch_start_generator = self.generator.get_state()
        self.best = {"step": 0, "accuracy": -1.0}
        self.lrs: list[float] = []  # after each step, for the measurements below
        self.scales: list[float] = []
        self.batches: list[tuple[int, ...]] = []  # the flowers of each batch
        self.epochs: list[int] = []  # the epoch each batch was trained in
        self.emas: list[torch.Tensor] = []


def validation_accuracy(model: nn.Module) -> float:
    model.eval()
    with torch.no_grad():
        return (model(split.X_test).argmax(dim=1) == split.y_test).float().mean().item()


# %% [markdown]
# ## Training in mixed precision, step by step
#
# Each step runs the forward pass under `torch.autocast` in float16 (the Linear layers),
# scales the loss so that small float16 gradients do not round to zero, and lets the
# scaler skip the step when a gradient overflowed, halving its scale; after
# `GROWTH_INTERVAL` clean steps it doubles it. Then the schedule moves on and the EMA
# takes in the new weights. An epoch that was cut short is replayed from its start's
# generator state, skipping the batches already done: the same order, not a new one.
# That state is taken as the epoch starts, not after its last batch: the sampler draws
# once more after its last batch (its `randperm` for a remainder, here of none).
# Every `--save-every` steps, and at the last, `keep` (next cell) saves the checkpoint.

# %%


def train(run: Run, last_step: int, save_to: Path | None = None) -> None:
    """Train `run` on to step `last_step`, saving to `save_to` every --save-every steps."""
    while run.step < last_step:
        if run.batches_done == 0:  # a new epoch: where its order comes from
            run.epoch_start_generator = run.generator.get_state()
        else:  # an epoch cut short: replay its order
            run.generator.set_state(run.epoch_start_generator)
        for x, y, flowers in itertools.islice(run.loader, run.batches_done, None):
            with torch.autocast(DEVICE.type, dtype=torch.float16):
                loss = nn.functional.nll_loss(run.model(x), y)
            run.optimizer.zero_grad()
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)  # skipped if a float16 gradient overflowed
            run.scaler.update()
            run.scheduler.step()
            run.ema.update_parameters(run.model)
            run.step, run.batches_done = run.step + 1, run.batches_done + 1
            run.lrs.append(run.optimizer.param_groups[0]["lr"])
            run.scales.append(run.scaler.get_scale())
            run.batches.append(tuple(flowers.tolist()))
            run.epochs.append(run.epoch)
            run.emas.append(torch.cat([p.detach().flatten() for p in run.ema.module.parameters()]))
            if run.batches_done == STEPS_PER_EPOCH:
                run.epoch, run.batches_done = run.epoch + 1, 0
            if run.step % args.save_every == 0 or run.step == last_step:
                keep(run, save_to)
            if run.step == last_step:
                break


# %% [markdown]
# ## A checkpoint of the whole run, and keeping the right ones
#
# The checkpoint holds every object's `state_dict()`, the step, where the sampler is, both
# generators, and the best score so far. Three habits keep the right files on disk:
#
# - **the best is a copy.** `best = model.state_dict()` keeps references to the live
#   tensors, which the next steps change: the "best" becomes the last. `torch.save` at
#   the moment it is best writes a copy (step 6 shows the trap in numbers);
# - **the last `--keep`, deleted only after the newer one is on disk**;
# - **a `latest` pointer, replaced atomically**: written to a temporary file, flushed,
#   then `os.replace`d over the old one, so it always names a complete checkpoint.
#
# Each file is written crash-safely, as chapter 5 teaches: to a temporary file, flushed
# to the disk, renamed over the old one. The cell defines `save_safely`, `checkpoint_of`
# and `keep`.

# %%


def save_safely(write: Callable[[BinaryIO], object], path: Path) -> Path:
    """Write `path` with `write(file)` so that it holds the old file or the new one, never half."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with partial.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())  # on the disk, not only in the OS's cache
    os.replace(partial, path)  # noqa: PTH105 -- atomic: the name holds the old file or the new one
    folder = os.open(path.parent, os.O_RDONLY)
    os.fsync(folder)  # the rename too
    os.close(folder)
    return path


def checkpoint_of(run: Run) -> dict[str, Any]:
    return {
        "step": run.step,
        "model_state_dict": run.model.state_dict(),
        "ema_state_dict": run.ema.state_dict(),  # n_averaged and the averaged weights
        "optimizer_state_dict": run.optimizer.state_dict(),
        "scheduler_state_dict": run.scheduler.state_dict(),  # its step and both phases
        "scaler_state_dict": run.scaler.state_dict(),  # the scale and the growth tracker
        "sampler": {
            "epoch": run.epoch,
            "batches_done": run.batches_done,
            "epoch_start_generator": run.epoch_start_generator,  # (5056,) uint8
        },
        "generators": {"torch": torch.get_rng_state(), "sampler": run.generator.get_state()},
        "best": dict(run.best),
        "model_args": run.model.constructor_args(),
    }


def keep(run: Run, folder: Path | None) -> None:
    """Score the EMA weights; with a folder, save the checkpoint, the pointer, the best, and rotate."""
    accuracy = validation_accuracy(run.ema)
    is_best = accuracy > run.best["accuracy"]  # the earliest of equal scores stays the best
    if is_best:
        run.best = {"step": run.step, "accuracy": accuracy}
    if folder is None:
        return
    checkpoint = checkpoint_of(run)
    path = save_safely(lambda f: torch.save(checkpoint, f), folder / f"run-step{run.step:05d}.pth")
    save_safely(lambda f: f.write(path.name.encode()), folder / "latest")  # only once the file is whole
    for old in sorted(folder.glob("run-step*.pth"))[: -args.keep]:  # only now, never the newest
        old.unlink()
    if is_best:
        best = run.ema.module.state_dict()
        save_safely(lambda f: torch.save(best, f), folder / "best.pth")  # a copy, written now
    saved = f"saved {path.name}" + (", best.pth" if is_best else "")
    print(
        f"step {run.step:>4}: lr {run.lrs[-1]:.5f}  scale {run.scales[-1]:>6.0f}  "
        f"EMA acc {accuracy:.3f}  {saved}"
    )


# %% [markdown]
# ## Resuming: build everything, then load every state
#
# Build the run fresh, exactly as a new one (the scheduler's constructor writes the
# learning rate, and `AveragedModel` copies the weights: loading must come after both),
# then load each object's state, the position, and the generators last. Each `without`
# leaves one piece out, for the measurements in step 5. The cell defines `resume_from`.

# %%


def resume_from(checkpoint: dict[str, Any], without: str = "") -> Run:
    run = Run(args.seed, checkpoint["model_args"])
    run.model.load_state_dict(checkpoint["model_state_dict"])
    run.optimizer.load_state_dict(checkpoint["optimizer_state_dict"])  # cast onto the params' device
    if without != "scheduler":
        run.scheduler.load_state_dict(checkpoint["scheduler_state_dict"])
    if without != "scaler":
        run.scaler.load_state_dict(checkpoint["scaler_state_dict"])
    if without != "EMA":
        run.ema.load_state_dict(checkpoint["ema_state_dict"])
    run.step, run.best = checkpoint["step"], dict(checkpoint["best"])
    sampler = checkpoint["sampler"]
    run.epoch, run.batches_done = sampler["epoch"], sampler["batches_done"]
    run.epoch_start_generator = sampler["epoch_start_generator"]
    torch.set_rng_state(checkpoint["generators"]["torch"])
    run.generator.set_state(checkpoint["generators"]["sampler"])
    if without == "position (epoch restarts)":  # as a sampler reseeded per epoch does
        run.batches_done = 0
        run.generator.set_state(run.epoch_start_generator)
    elif without == "position (next epoch)":  # as a loop that saves no position does
        run.batches_done, run.epoch = 0, run.epoch + 1
    return run


# %% [markdown]
# ## Your own run: `--resume`
#
# With `--resume` the chapter is a run you can stop at any moment and start again with the
# same command. The checkpoint `latest` names is checked before anything uses it, as
# chapter 5 checks its own, and for every piece this chapter adds: a scheduler, scaler,
# EMA or sampler position that is missing, or does not match the step the file is at or
# this run's settings, is refused in one line, exit 2. The demonstration runs this in a
# new process.

# %%
if args.resume:
    if checkpoint is not None:  # read and checked in the first cell
        run = resume_from(checkpoint)
        print(f"Resumed from {latest_path} at step {run.step} (epoch {run.epoch}, batch {run.batches_done})")
    else:
        print(f"No checkpoint in {out_dir}: starting from step 0 with --seed {args.seed}")
        run = Run(args.seed)
    first = run.step
    train(run, args.steps, save_to=out_dir)
    print(f"Batches trained in this process: {run.step - first}; at step {run.step} of {args.steps}")
    sys.exit(0)

print(
    f"The demonstration: {args.steps} steps of {STEPS_PER_EPOCH} per epoch, a checkpoint every "
    f"{args.save_every}, the machine 'dies' after step {args.interrupt_at}"
)

# %% [markdown]
# ## 1. Training until the machine "dies", in the middle of an epoch
#
# A fresh run, saving every `--save-every` steps, stopped after `--interrupt-at`. Its
# newest checkpoint is what a crash would leave; a copy is kept for step 5.

# %%
print(f"\n## 1. Training, until the machine 'dies' after step {args.interrupt_at}")
for stale in [*out_dir.glob("run-step*.pth"), out_dir / "latest", out_dir / "best.pth"]:
    stale.unlink(missing_ok=True)  # a run of its own starts in an empty folder
run = Run(args.seed)
train(run, args.interrupt_at, save_to=out_dir)
interrupted_path = out_dir / "interrupted.pth"
latest = (out_dir / "latest").read_text()  # the name of the newest checkpoint
shutil.copyfile(out_dir / latest, interrupted_path)
print(f"latest -> {latest}: epoch {run.epoch}, {run.batches_done} batches into it")

# %% [markdown]
# ## 2. The run that never stopped
#
# The same process trains on to `--steps` without saving: the reference.

# %%
print(f"\n## 2. The run that never stopped: on to step {args.steps}")
train(run, args.steps)
uninterrupted = run
reference = checkpoint_of(uninterrupted)
print(
    f"step {run.step}: lr {run.lrs[-1]:.6f}, scale {run.scales[-1]:.0f}, "
    f"EMA acc {validation_accuracy(run.ema):.3f}"
)

# %% [markdown]
# ## 3. Resumed in a new process
#
# The chapter runs itself with `--resume`, the command printed, as you would after a crash.

# %%
print("\n## 3. Resumed in a new Python process")
resume_flags = ["--resume", "--steps", str(args.steps), "--save-every", str(args.save_every)]
resume_flags += ["--keep", str(args.keep), "--seed", str(args.seed), "--out-dir", str(out_dir)]
print(f"$ python {SCRIPT.name} {shlex.join(resume_flags)}")
resumed_lines = resume_in_new_process(SCRIPT, *resume_flags)

# %% [markdown]
# ## 4. Resumed vs uninterrupted
#
# The checkpoint the new process left, against the run that never stopped: every tensor
# of the model, the EMA, the optimizer and the generators with `torch.equal`, the
# scheduler's and the scaler's state with `==`, and the batches each trained on.

# %%
print("\n## 4. Resumed vs uninterrupted")
final = torch.load(out_dir / (out_dir / "latest").read_text(), weights_only=True)
pieces = ("model_state_dict", "ema_state_dict", "optimizer_state_dict", "generators", "sampler")
resumed = flat_tensors({piece: final[piece] for piece in pieces})
identical = same_state(resumed, flat_tensors({piece: reference[piece] for piece in pieces}))
print(f"Every model, EMA, optimizer and generator tensor bit-identical: {identical} ({len(resumed)} tensors)")
lr = final["scheduler_state_dict"]["_last_lr"][0]
same_schedule = final["scheduler_state_dict"] == reference["scheduler_state_dict"]
print(
    f"Scheduler state identical: {same_schedule} "
    f"(step {final['scheduler_state_dict']['last_epoch']}, lr {lr:.6f})"
)
scaler = final["scaler_state_dict"]
print(
    f"Scaler state identical: {scaler == reference['scaler_state_dict']} "
    f"(scale {scaler['scale']:.0f}, growth tracker {scaler['_growth_tracker']})"
)
after = int(re.findall(r"^Batches trained in this process: (\d+);", "".join(resumed_lines), re.M)[-1])
print(
    f"Batches seen: {args.interrupt_at} + {after} = {args.interrupt_at + after}, "
    f"the uninterrupted run: {len(uninterrupted.batches)}"
)
print(f"Same best: {final['best'] == reference['best']} (step {final['best']['step']})")
print(f"Kept in {out_dir}: {', '.join(sorted(path.name for path in out_dir.glob('*.pth')))}, latest")

# %% [markdown]
# ## 5. Each piece measured by its absence
#
# From the kept checkpoint again, in this process: once with everything, then once
# without each piece, each trained to the end. A resume without the scheduler runs the
# warm-up again over the restored learning rate; without the scaler, the scale restarts
# at 65536; without the EMA state, the EMA restarts from the raw weights; without the
# position, the epoch starts over (a sampler reseeded each epoch) or the next one starts
# (a loop that saves no position): batches trained twice or never.

# %%
print(f"\n## 5. Resumed from step {args.interrupt_at} again, leaving one piece out")
position = torch.load(interrupted_path, weights_only=True)["sampler"]  # where step 1 stopped
cut_epoch, done_in_it = position["epoch"], position["batches_done"]
before = uninterrupted.batches[args.interrupt_at - done_in_it : args.interrupt_at]
resumes: dict[str, Run] = {}
print(f"{'':<38}{'|weights - uninterrupted|':>26}  what went wrong")
for without in ("", "scheduler", "scaler", "EMA", "position (epoch restarts)", "position (next epoch)"):
    checkpoint = torch.load(interrupted_path, weights_only=True)  # afresh: Adam adopts its tensors
    resumed_run = resume_from(checkpoint, without)
    scale_at_resume, saved_scale = resumed_run.scaler.get_scale(), checkpoint["scaler_state_dict"]["scale"]
    train(resumed_run, args.steps)
    name = f"Without the {without}" if without else "Everything restored"
    resumes[name] = resumed_run
    weights = resumed_run.model.state_dict()
    off = max((weights[key] - reference["model_state_dict"][key]).abs().max().item() for key in weights)
    lr_off = max(
        abs(a - b) for a, b in zip(resumed_run.lrs, uninterrupted.lrs[args.interrupt_at :], strict=True)
    )
    emas = zip(resumed_run.emas, uninterrupted.emas[args.interrupt_at :], strict=True)
    ema_off = max((a - b).abs().max().item() for a, b in emas)
    in_cut = [
        batch
        for batch, epoch in zip(resumed_run.batches, resumed_run.epochs, strict=True)
        if epoch == cut_epoch
    ]
    seen = Counter(flower for batch in before + in_cut for flower in batch)  # in the epoch that was cut
    repeated = sum(count - 1 for count in seen.values()) // BATCH_SIZE
    skipped = (len(split.X_train) - len(seen)) // BATCH_SIZE
    wrong = {
        "": f"lr off by {lr_off:.0e}, EMA by {ema_off:.0e}, {repeated} repeated, {skipped} skipped",
        "scheduler": f"lr off by up to {lr_off:.5f} (peak {PEAK_LR})",
        "scaler": f"scale {scale_at_resume:.0f} at the resume, not {saved_scale:.0f}",
        "EMA": f"EMA weights off by up to {ema_off:.4f}",
    }.get(without, f"{repeated} batches repeated, {skipped} skipped in epoch {cut_epoch + 1}")
    print(f"{name:<38}{off:>26.2e}  {wrong}")

# %% [markdown]
# ## 6. The best checkpoint is a copy
#
# `best.pth` was written at the step the EMA's validation accuracy was best. The trap
# keeps `state_dict()` itself, references to tensors that training goes on changing.
# Here both are kept at the same moment, on a run that repeats the uninterrupted one.

# %%
print("\n## 6. The best checkpoint: a copy, not a reference")
trap_run = Run(args.seed)
by_reference, by_copy = None, None
for step in range(args.save_every, args.steps + 1, args.save_every):
    train(trap_run, step)
    if trap_run.best["step"] == step:
        by_reference = trap_run.ema.module.state_dict()  # the trap: references
        by_copy = {key: value.clone() for key, value in by_reference.items()}
train(trap_run, args.steps)
check_model = Multiclass()
on_disk = torch.load(out_dir / "best.pth", weights_only=True)
print(f"best: step {reference['best']['step']}, validation accuracy {reference['best']['accuracy']:.3f}")
for name, state in (
    ("best.pth (saved then)", on_disk),
    ("a copy made then", by_copy),
    ("kept by reference", by_reference),
):
    check_model.load_state_dict(state)
    gap = max((state[key] - on_disk[key]).abs().max().item() for key in state)
    print(f"  {name:<22} accuracy {validation_accuracy(check_model):.3f}, off best.pth by {gap:.4f}")

# %% [markdown]
# ## 7. The optimizer's device
#
# `optimizer.load_state_dict` casts each state tensor to its parameter's device and dtype,
# so the order is: the model to its device, then the optimizer built over its parameters,
# then the state loaded. Built and loaded first and the model moved afterwards, the
# optimizer keeps its state where the file put it, and the first step fails (on a GPU:
# "Expected all tensors to be on the same device"). A CPU has no second device; a second
# dtype shows the same rule: float64 stands in for "cuda" here. Not run on a GPU.

# %%
print("\n## 7. The optimizer's state goes where the parameters are (float64 for a device)")
saved_state = checkpoint["optimizer_state_dict"]  # float32, on the CPU
right = Multiclass(**checkpoint["model_args"]).to(torch.float64)  # 1. the model moved first
right_optimizer = torch.optim.Adam(right.parameters(), lr=PEAK_LR)  # 2. the optimizer over it
right_optimizer.load_state_dict(saved_state)  # 3. the state, cast to the parameters' dtype
dtypes = {str(s["exp_avg"].dtype) for s in right_optimizer.state.values()}
print(f"model moved, optimizer built, state loaded -> state in {', '.join(dtypes)}")
wrong = Multiclass(**checkpoint["model_args"])
wrong_optimizer = torch.optim.Adam(wrong.parameters(), lr=PEAK_LR)
wrong_optimizer.load_state_dict(saved_state)  # cast to float32, the parameters' dtype now
wrong.to(torch.float64)  # moved after: the optimizer's state stays behind
nn.functional.nll_loss(wrong(split.X_train.double()), split.y_train).backward()
try:
    wrong_optimizer.step()
    print("state loaded, model moved after -> the step worked")
except RuntimeError as err:
    print(f"state loaded, model moved after -> RuntimeError: {str(err).splitlines()[0]}")

# %% [markdown]
# ## 8. The picture
#
# What each missing piece does after the interruption, step by step: the learning rate
# without the scheduler, the loss scale without the scaler, and the EMA's distance from
# the uninterrupted one without its state. The complete resume lies on the uninterrupted
# run in every panel.

# %%
if plt:
    steps, after = range(1, args.steps + 1), range(args.interrupt_at + 1, args.steps + 1)
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True, layout="constrained")
    full = resumes["Everything restored"]
    panels = (
        (axes[0], "learning rate", "Without the scheduler", lambda r: r.lrs),
        (axes[1], "loss scale", "Without the scaler", lambda r: r.scales),
    )
    for ax, label, name, values in panels:
        ax.plot(steps, values(uninterrupted), color="#0072B2", linewidth=5, alpha=0.45, label="Uninterrupted")
        ax.plot(
            after, values(full), color="#E69F00", linestyle=(0, (4, 3)), label="Resumed, everything restored"
        )
        ax.plot(
            after,
            values(resumes[name]),
            color="#D55E00",
            linestyle=":",
            linewidth=2.4,
            label=f"Resumed {name[0].lower()}{name[1:]}",
        )
        ax.set(ylabel=label)
    axes[1].set_yscale("log", base=2)
    for name, color in (("Without the EMA", "#009E73"), ("Without the scheduler", "#D55E00")):
        emas = zip(resumes[name].emas, uninterrupted.emas[args.interrupt_at :], strict=True)
        axes[2].plot(
            after,
            [(a - b).abs().max().item() for a, b in emas],
            color=color,
            label=f"Resumed {name[0].lower()}{name[1:]}",
        )
    axes[2].set(ylabel="|EMA - uninterrupted EMA|", xlabel="step", yscale="log")
    for ax in axes:
        ax.axvline(args.interrupt_at, color="#555555", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    axes[0].set_title(f"Resumed after step {args.interrupt_at}: each piece left out, and everything restored")
    fig.savefig(picture, dpi=110)
    print(f"Drew {picture}")

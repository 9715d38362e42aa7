"""Chapter 6: a real run (schedule, float16 scaler, EMA, sampler position) resumed mid-epoch in a
new process ends bit-identical; each piece's absence, measured; the best, the last k and `latest`
kept so that a crash at any point leaves a checkpoint that loads and resumes; bad checkpoints
refused in one line."""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import signal
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, TensorDataset

from build_model import Multiclass, flat_tensors, load_iris_split
from support.cli import EXIT_INTERRUPTED
from support.run_checks import fresh_states, read_latest, read_run_checkpoint
from tests.helpers import SCRIPT_ENV, assert_one_line_refusal, run_chapter_here, script_command

CHAPTER = "resume_training_run.py"
STEPS, INTERRUPT_AT, STEPS_PER_EPOCH = 126, 52, 21


@functools.cache
def independent_run(steps: int) -> dict:
    """The uninterrupted run, written out here with plain torch: every tensor and what each step did."""
    split = load_iris_split()
    torch.manual_seed(42)
    model = Multiclass()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    warmup = LinearLR(optimizer, start_factor=0.1, total_iters=20)
    scheduler = SequentialLR(optimizer, [warmup, CosineAnnealingLR(optimizer, T_max=steps - 20)], [20])
    scaler = torch.amp.GradScaler("cpu", growth_interval=10)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.95))
    generator = torch.Generator().manual_seed(42)
    data = TensorDataset(split.X_train, split.y_train)
    loader = DataLoader(data, batch_size=5, shuffle=True, generator=generator)
    emas, step = {}, 0
    while step < steps:
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.float16):
                loss = nn.functional.nll_loss(model(x), y)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            ema.update_parameters(model)
            step += 1
            emas[step] = {key: value.clone() for key, value in ema.module.state_dict().items()}
            if step == steps:
                break
    return {
        "tensors": flat_tensors(
            {
                "model_state_dict": model.state_dict(),
                "ema_state_dict": ema.state_dict(),
                "optimizer_state_dict": optimizer.state_dict(),
                "generators": {"torch": torch.get_rng_state(), "sampler": generator.get_state()},
            }
        ),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "emas": emas,
    }


def best_step(steps: int = STEPS, every: int = 13) -> int:
    """The save step whose EMA weights scored best on validation, the earliest of equal scores."""
    split, model, scores = load_iris_split(), Multiclass(), {}
    for step in [*range(every, steps, every), steps]:
        model.load_state_dict(independent_run(steps)["emas"][step])
        with torch.no_grad():
            scores[step] = (model(split.X_test).argmax(dim=1) == split.y_test).float().mean().item()
    return max(scores, key=lambda step: (scores[step], -step))


def file_tensors(checkpoint: dict) -> dict[str, torch.Tensor]:
    pieces = ("model_state_dict", "ema_state_dict", "optimizer_state_dict", "generators")
    return flat_tensors({piece: checkpoint[piece] for piece in pieces})


def assert_equals_the_straight_run(checkpoint: dict, steps: int = STEPS) -> None:
    straight = independent_run(steps)
    tensors = file_tensors(checkpoint)
    assert list(tensors) == list(straight["tensors"])
    assert all(torch.equal(tensors[key], straight["tensors"][key]) for key in tensors)
    assert checkpoint["scheduler_state_dict"] == straight["scheduler"]
    assert checkpoint["scaler_state_dict"] == straight["scaler"]
    assert checkpoint["step"] == steps and checkpoint["sampler"]["batches_done"] == steps % STEPS_PER_EPOCH


# %%
# The reader's run, with the defaults.


def test_resumed_in_a_new_process_is_bit_identical_to_uninterrupted(run_resume_run):
    stdout = run_resume_run.stdout
    command = "$ python resume_training_run.py --resume --steps 126 --save-every 13 --keep 2 --seed 42"
    assert f"{command} --out-dir artifacts" in stdout.splitlines()
    assert "  Resumed from artifacts/run-step00052.pth at step 52 (epoch 2, batch 10)" in stdout
    assert "  Batches trained in this process: 74; at step 126 of 126" in stdout  # said by the new process
    assert "Every model, EMA, optimizer and generator tensor bit-identical: True (24 tensors)" in stdout
    assert "Scheduler state identical: True (step 126, lr 0.000000)" in stdout
    straight = independent_run(STEPS)
    scale, tracker = straight["scaler"]["scale"], straight["scaler"]["_growth_tracker"]
    assert f"Scaler state identical: True (scale {scale:.0f}, growth tracker {tracker})" in stdout
    assert "Batches seen: 52 + 74 = 126, the uninterrupted run: 126" in stdout
    assert f"Same best: True (step {best_step()})" in stdout
    # The file the new process left, against the uninterrupted run written out here independently.
    final = torch.load(run_resume_run.artifacts / "run-step00126.pth", weights_only=True)
    assert_equals_the_straight_run(final)
    # 4 weights, n_averaged and 4 EMA weights, 12 Adam tensors, 2 generators; the chapter's 24th is the
    # sampler's epoch-start state, checked by the "Without the position" rows.
    assert len(straight["tensors"]) == 23


def test_the_right_checkpoints_are_kept(run_resume_run):
    artifacts = run_resume_run.artifacts
    assert sorted(path.name for path in artifacts.iterdir()) == [
        "best.pth",
        "interrupted.pth",
        "latest",
        "resume-run.png",
        "run-step00117.pth",
        "run-step00126.pth",
    ]
    assert (artifacts / "latest").read_text() == "run-step00126.pth"
    assert "Kept in artifacts: best.pth, interrupted.pth, run-step00117.pth, run-step00126.pth, latest" in (
        run_resume_run.stdout
    )
    best = torch.load(artifacts / "best.pth", weights_only=True)  # the EMA weights at their best, copied then
    then = independent_run(STEPS)["emas"][best_step()]
    assert list(best) == list(then) and all(torch.equal(best[key], then[key]) for key in best)
    interrupted = torch.load(artifacts / "interrupted.pth", weights_only=True)
    assert interrupted["step"] == 52 and interrupted["sampler"]["batches_done"] == 10


def test_the_reference_trap_and_the_copy(run_resume_run):
    rows = dict(re.findall(r"^  (best\.pth \(saved then\)|a copy made then|kept by reference) +(.*)$",
                           run_resume_run.stdout, re.M))  # fmt: skip
    assert rows["best.pth (saved then)"].endswith("off best.pth by 0.0000")
    assert rows["a copy made then"].endswith("off best.pth by 0.0000")
    gap = float(rows["kept by reference"].rsplit(" ", 1)[1])
    final_ema, then = independent_run(STEPS)["emas"][STEPS], independent_run(STEPS)["emas"][best_step()]
    assert best_step() < STEPS
    assert gap == pytest.approx(max((final_ema[k] - then[k]).abs().max().item() for k in then), abs=1e-4)
    assert gap > 0.01  # the "best" kept by reference is the last


def test_each_piece_measured_by_its_absence(run_resume_run):
    found = re.findall(
        r"^(Everything restored|Without the .+?) +(\d\.\d\de[+-]\d\d)  (.+)$", run_resume_run.stdout, re.M
    )
    rows = {name: (float(off), said) for name, off, said in found}
    assert len(rows) == 6
    assert rows["Everything restored"] == (0.0, "lr off by 0e+00, EMA by 0e+00, 0 repeated, 0 skipped")
    off, said = rows["Without the scheduler"]
    assert off > 0.01 and float(said.split()[5]) > 0.05  # the warm-up over the restored lr: far above 0.01
    off, said = rows["Without the scaler"]
    saved = torch.load(run_resume_run.artifacts / "interrupted.pth", weights_only=True)["scaler_state_dict"]
    assert (
        off > 0 and said == f"scale 65536 at the resume, not {saved['scale']:.0f}" and saved["scale"] != 65536
    )
    off, said = rows["Without the EMA"]
    assert off == 0 and float(said.rsplit(" ", 1)[1]) > 1e-3  # the weights are right, the EMA is not
    # 52 = 2 epochs of 21 + 10: the restarted epoch repeats those 10; the next epoch skips the other 11.
    assert rows["Without the position (epoch restarts)"][1] == "10 batches repeated, 0 skipped in epoch 3"
    assert rows["Without the position (next epoch)"][1] == "0 batches repeated, 11 skipped in epoch 3"
    assert all(off > 0 for name, (off, _) in rows.items() if "position" in name)


def test_the_optimizer_state_follows_the_parameters(run_resume_run):
    stdout = run_resume_run.stdout
    assert "model moved, optimizer built, state loaded -> state in torch.float64" in stdout
    assert "state loaded, model moved after -> RuntimeError: expected dtype float" in stdout


def test_the_picture_is_real(run_resume_run):
    import matplotlib.image

    pixels = matplotlib.image.imread(run_resume_run.artifacts / "resume-run.png")
    assert pixels.shape == (880, 880, 4)  # 8 x 8 inches at 110 dpi
    ink = (pixels[..., :3].max(axis=2) - pixels[..., :3].min(axis=2)) > 0.3
    assert ink.mean() > 0.005  # coloured lines, not only grey axes


def test_a_skipped_first_step_warns_in_a_plain_loop_and_not_in_the_chapter(tmp_path):
    """With --seed 1 the first float16 step overflows: the scaler skips it and torch warns."""
    torch.manual_seed(1)
    model = Multiclass()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scheduler = LinearLR(optimizer, start_factor=0.1, total_iters=20)
    scaler = torch.amp.GradScaler("cpu", growth_interval=10)
    split = load_iris_split()
    loader = DataLoader(TensorDataset(split.X_train, split.y_train), batch_size=5, shuffle=True,
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
    x, y = next(iter(loader))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.nll_loss(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    assert scaler.get_scale() == 32768  # the step was skipped
    assert [str(w.message)[:45] for w in caught] == ["Detected call of `lr_scheduler.step()` before"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flags = ["--resume", "--steps", "30", "--seed", "1", "--out-dir", str(tmp_path)]
        result = run_chapter_here(CHAPTER, *flags, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "" and caught == []


# %%
# Checkpoints that are missing a piece or whose piece does not fit: one line, exit 2.


def edit(path: tuple[str, ...], value: object = None) -> Callable[[dict], dict]:
    """A change at `path` inside a checkpoint: set to `value`, or deleted where value is None."""

    def change(checkpoint: dict) -> dict:
        node = checkpoint
        for key in path[:-1]:
            node = node[key]
        if value is None:
            del node[path[-1]]
        else:
            node[path[-1]] = value(node[path[-1]]) if callable(value) else value
        return checkpoint

    return change


BAD = {
    "no scheduler": (edit(("scheduler_state_dict",)), "needs the keys"),
    "no scaler": (edit(("scaler_state_dict",)), "needs the keys"),
    "no EMA": (edit(("ema_state_dict",)), "needs the keys"),
    "no sampler position": (edit(("sampler",)), "needs the keys"),
    "scheduler at another step": (
        edit(("scheduler_state_dict", "last_epoch"), 51),
        "scheduler is at step 51",
    ),
    "schedule of another length": (
        edit(("scheduler_state_dict", "_schedulers", 1, "T_max"), 300),
        "made for another number of steps",
    ),
    "scheduler of another kind": (edit(("scheduler_state_dict", "_schedulers")), "warm-up and cosine"),
    "scale NaN": (edit(("scaler_state_dict", "scale"), float("nan")), "not a GradScaler's"),
    "scaler of other settings": (
        edit(("scaler_state_dict", "growth_interval"), 2000),
        "other growth settings",
    ),
    "growth tracker too high": (edit(("scaler_state_dict", "_growth_tracker"), 10), "out of range"),
    "EMA of another step": (edit(("ema_state_dict", "n_averaged"), torch.tensor(51)), "has not averaged 52"),
    "EMA of another shape": (
        edit(("ema_state_dict", "module.hidden.weight"), torch.zeros(16, 4)),
        "hidden.weight has shape (16, 4)",
    ),
    "EMA without its count": (edit(("ema_state_dict", "n_averaged")), "not the EMA model's state_dict"),
    "position off its step": (edit(("sampler", "batches_done"), 11), "does not match its step 52"),
    "position without a generator": (
        edit(("sampler", "epoch_start_generator"), torch.zeros(3)),
        "not usable",
    ),
    "sampler generator unusable": (
        edit(("generators", "sampler"), torch.zeros(5056, dtype=torch.uint8)),
        "not usable",
    ),
    "optimizer of another peak": (
        edit(("optimizer_state_dict", "param_groups", 0, "initial_lr"), 0.5),
        "initial_lr",
    ),
    "best after its step": (edit(("best", "step"), 60), "its best"),
}


@pytest.fixture(scope="module")
def good_checkpoint(run_resume_run) -> Path:
    return run_resume_run.artifacts / "interrupted.pth"


def resume_from_file(folder: Path, checkpoint: dict, *flags: str):
    torch.save(checkpoint, folder / "run-step00052.pth")
    (folder / "latest").write_text("run-step00052.pth")
    return run_chapter_here(CHAPTER, "--resume", *flags, "--out-dir", str(folder), cwd=folder)


@pytest.mark.parametrize("name", BAD)
def test_a_bad_piece_is_refused_in_one_line(name, good_checkpoint, tmp_path):
    make, words = BAD[name]
    result = resume_from_file(tmp_path, make(torch.load(good_checkpoint, weights_only=True)))
    assert_one_line_refusal(result, f"{tmp_path / 'run-step00052.pth'} refused", words)
    assert "Resumed" not in result.stdout
    assert sorted(path.name for path in tmp_path.iterdir()) == ["latest", "run-step00052.pth"]


def test_a_checkpoint_beyond_steps_is_refused(good_checkpoint, tmp_path):
    result = resume_from_file(tmp_path, torch.load(good_checkpoint, weights_only=True), "--steps", "40")
    assert_one_line_refusal(result, "its step is not a whole number in 1..40")


@pytest.mark.parametrize("text", ["../../etc/passwd", "", "run-step00052.pth\x1b[2J", "x" * 100])
def test_a_bad_latest_pointer_is_refused(text, tmp_path):
    (tmp_path / "latest").write_text(text)
    result = run_chapter_here(CHAPTER, "--resume", "--out-dir", str(tmp_path), cwd=tmp_path)
    assert_one_line_refusal(result, "latest refused: it does not name a run-stepNNNNN.pth checkpoint")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--steps", "20"], "--steps (20) must be above the 20 warm-up steps"),
        (["--interrupt-at", "50"], "--interrupt-at (50) must be a multiple of --save-every below --steps"),
        (["--keep", "0"], "argument --keep: must be a positive whole number"),
    ],
)
def test_bad_flags_exit_2_with_one_error_line(flags, words, tmp_path):
    result = run_chapter_here(CHAPTER, *flags, "--out-dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert words in result.stderr and result.stderr.count("\n") == 1, result.stderr


# %%
# Crash points, with real processes killed: during the save, the rotation and the pointer update.


def crashing_resume(folder: Path, steps: int, crash: str, at_call: int) -> int:
    """`--resume --steps STEPS --save-every 1 --keep 2` on `folder` in a forked process that
    SIGKILLs itself at the `at_call`-th save, deletion or pointer rename; its exit code."""

    def child() -> None:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        calls = {"n": 0}

        def die_at_call() -> bool:
            calls["n"] += 1
            return calls["n"] == at_call

        if crash == "save":  # half of the file's bytes written, then the kill
            real_save = torch.save

            def save(obj, f, *args, **kwargs):
                if die_at_call():
                    f.write(b"PK\x03\x04" + b"\0" * 500)
                    f.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_save(obj, f, *args, **kwargs)

            torch.save = save
        elif crash == "rotation":  # the newer checkpoint and the pointer done, the old not yet deleted
            real_unlink = Path.unlink

            def unlink(self, *args, **kwargs):
                if self.name.startswith("run-step") and die_at_call():
                    os.kill(os.getpid(), signal.SIGKILL)
                real_unlink(self, *args, **kwargs)

            Path.unlink = unlink
        else:  # the new pointer written to its temporary file, the rename not done
            real_replace = os.replace

            def replace(source, target, *args, **kwargs):
                if Path(target).name == "latest" and die_at_call():
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_replace(source, target, *args, **kwargs)

            os.replace = replace
        flags = ["--resume", "--steps", str(steps), "--save-every", "1", "--keep", "2"]
        result = run_chapter_here(CHAPTER, *flags, "--out-dir", str(folder), cwd=folder)
        os._exit(result.returncode)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(120)
    return process.exitcode


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["save", "rotation", "pointer"])
def test_a_kill_at_each_point_leaves_a_checkpoint_that_loads_and_resumes_exactly(crash, tmp_path):
    steps = 60
    assert crashing_resume(tmp_path, steps, crash, at_call=5) == -signal.SIGKILL
    latest = read_latest(tmp_path)
    expected = fresh_states(Multiclass(), steps, 20, 0.01, 10, 0.95)
    checkpoint = read_run_checkpoint(
        latest, Multiclass, expected, steps, STEPS_PER_EPOCH
    )  # every check passes
    assert 1 <= checkpoint["step"] < steps
    names = sorted(path.name for path in tmp_path.glob("run-step*.pth"))
    assert latest.name in names and len(names) <= 3  # at most one more than --keep, never the newest lost
    # The restart: the same command resumes from what `latest` names and ends as if never killed.
    flags = [
        "--resume",
        "--steps",
        str(steps),
        "--save-every",
        "1",
        "--keep",
        "2",
        "--out-dir",
        str(tmp_path),
    ]
    result = run_chapter_here(CHAPTER, *flags, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"Resumed from {latest} at step {checkpoint['step']}" in result.stdout
    final = torch.load(read_latest(tmp_path), weights_only=True)
    assert_equals_the_straight_run(final, steps)
    assert sorted(path.name for path in tmp_path.glob("run-step*.pth")) == [
        "run-step00059.pth",
        "run-step00060.pth",
    ]
    assert list(tmp_path.glob("*.partial")) == []  # what a killed writer left is removed


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_the_run_resumes_from_latest(tmp_path):
    flags = ["--resume", "--steps", "100000", "--save-every", "5", "--out-dir", "out"]
    process = subprocess.Popen(
        script_command(CHAPTER, *flags),
        cwd=tmp_path,
        env={**SCRIPT_ENV, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a command started from a shell
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("step   15: "):
            break
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED
    assert stderr.startswith("interrupted (Ctrl-C); saved before that: ") and stderr.count("\n") == 1, stderr
    # What `latest` names passes every check the same command applies before it resumes.
    expected = fresh_states(Multiclass(), 100000, 20, 0.01, 10, 0.95)
    checkpoint = read_run_checkpoint(
        read_latest(tmp_path / "out"), Multiclass, expected, 100000, STEPS_PER_EPOCH
    )
    assert checkpoint["step"] >= 15 and checkpoint["step"] % 5 == 0

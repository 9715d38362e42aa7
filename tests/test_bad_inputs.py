"""Every bad model file gets one clear, escaped line: never a traceback, a hang, a crash or code run.

The corpus (tests/bad_files.py) is built once. The loader meets every probe in a forked
process, under a memory limit and a timeout; every chapter that reads the trained model
meets a handful of them as a reader runs it, and at least one in a real process of its own.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from build_model import Multiclass
from model_inspector.files import MAX_FILE_BYTES, ModelFileError, refusing
from model_inspector.loading import read_untrusted
from support.cli import EXIT_BAD_INPUT, safe_text
from support.saving import save_atomically
from support.settings import MODEL_FILE
from support.untrusted_files import check_state_dict_fits, load_untrusted_model
from tests.bad_files import (
    DEVICE_TAGS,
    ESCAPES,
    EXIT_TOO_MUCH_MEMORY,
    build_corpus,
    damaged_copies,
    gadgets,
    grew_too_much,
    limit_memory,
    probes,
)
from tests.helpers import run_chapter_here, run_in_fork, run_script

READERS = ["inspect_state.py", "save_load_demo.py", "load_tips.py", "compare_formats.py", "look_inside.py"]
EXIT_LOADED = 4
TIMEOUT = 60  # seconds; every probe is refused in well under one, so reaching this means a hang
# The probes each chapter meets in-process: code, a hang, memory, escapes, damage, a misfit.
CHAPTER_PROBES = ["hostile torch.save", "FIFO", "zip bomb", "escape codes in a GLOBAL (zip)", "flipped byte"]
CHAPTER_PROBES += ["a timeit.timeit gadget", "two records with one name", "a storage record too short"]
CHAPTER_PROBES += [f"storages tagged {tag}" for tag in DEVICE_TAGS]
CHAPTER_PROBES += ["one value seen 32 times", "two weights over one storage"]
# The probe each chapter meets in a real process of its own.
SUBPROCESS_PROBE = {
    "inspect_state.py": "hostile pickle",
    "save_load_demo.py": "link to /dev/urandom",
    "load_tips.py": "escape codes in a GLOBAL (pickle)",
    "compare_formats.py": "zip bomb",
    "look_inside.py": "a timeit.timeit gadget",
}

# What each refusal says, in a word or two (escaped text appears escaped).
REASONS = {
    "storages tagged xla:0": "saved on xla:0, which this machine does not have",
    "storages tagged privateuseone:0": "saved on privateuseone:0, which this machine does not have",
    "storages tagged cuda:-1": "tagged cuda:-1, which is not a device",
    "storages tagged meta": "saved on the meta device: they hold no values",
    "storages tagged cpu:7": "saved on cpu:7, which this machine does not have",
    "one value seen 32 times": "hidden.weight is not contiguous (a view with strides (0, 0))",
    "two weights over one storage": "share their values",
    "empty": "the file is empty or cut short (0 bytes)",
    "truncated": "truncated or corrupted",
    "random bytes": "not a PyTorch weights file",
    "text": "not a PyTorch weights file",
    "foreign zip": "not one that torch.save wrote",
    "hostile torch.save": "it refers to exec, not just tensors",
    "hostile pickle": "plain pickle, not a torch.save file; unpickling it would import builtins.exec",
    "hostile legacy torch.save": "legacy torch.save format",
    "whole model": "it refers to build_model.Multiclass",
    "list of tensors": "it holds a list, not a state_dict",
    "wrong shape": "hidden.weight has shape (2, 4), Multiclass expects (8, 4)",
    "missing key": "missing ['output.bias']",
    "extra key": "unexpected ['extra.weight']",
    "NaN weights": "hidden.weight contains NaN",
    "int weights": "hidden.weight is torch.int64",
    "float16 weights": "hidden.weight is torch.float16",
    "meta tensors": "on meta",
    "sparse tensor": "torch.sparse_coo",
    # ours, or torch's own refusal where torch (2.15 on) refuses nested tensors before us
    "nested tensor": ("(nested)", "refers to torch._utils._rebuild_nested_tensor, not just tensors"),
    "malformed _metadata": "metadata is malformed",
    "deep nesting": "its data is nested more than 200 levels deep",
    "deeply nested key": "its data is nested more than 200 levels deep",  # unchecked, a SIGSEGV
    "huge declared storage": "a tensor claims more bytes than the file stores",
    "pickle bomb": "its data.pkl has",
    "legacy format": "legacy torch.save format",
    "zip bomb": "compressed records",
    "flipped byte": "fails its CRC32 check",
    "no CRC32": "no CRC32 checksums",
    "encrypted flag": "encrypted records",
    "escape codes in a GLOBAL (zip)": f"it refers to {safe_text(ESCAPES)}.x",
    "escape codes in a GLOBAL (pickle)": f"would import {safe_text(ESCAPES)}.x",
    "escape codes in a key": f"unexpected ['{safe_text(ESCAPES)}']",
    "FIFO": "Is a FIFO, not a regular file",
    "link to /dev/urandom": "Is a character device",
    "link to /dev/zero": "Is a character device",
    "directory": "Is a directory",
    "larger than the limit": f"more than the {MAX_FILE_BYTES}",
    "missing": "not found",
    "two records with one name": "two records named",
    "a pickle after data.pkl's STOP": "bytes follow data.pkl's STOP opcode",
    "an extra pickle record": "a record torch.save never writes",
    "bytes after the end record": "bytes follow its end-of-central-directory record",
    "a local header that lies": "local header of record",
    "a zip64 count that lies": "its end record counts 11 records, its directory lists 10",
    "a storage record too short": "a tensor claims more bytes than the file stores",
    "a view past its storage": "a tensor claims more values than its storage holds",
    "shared lists 30 deep": "it holds a list, not a state_dict",
    "pickle bomb under the size limit": "opcodes",
    "protocol 0 hostile pickle": "unpickling it would import __builtin__.exec",
    "integer keys": "it holds a dict, not a state_dict",
    **{f"a {name} gadget": f"it refers to {name}" for name in gadgets(Path("unused"))},
    "a pathlib.os.system gadget": "an opcode of pickle protocol 4",  # torch's weights_only reads none
}


@pytest.fixture(scope="module", autouse=True)
def good_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model file as chapter 2 writes it, trained here for one epoch. Running the chapter in
    this process first also imports what it imports, so the forked children start warm."""
    cwd = tmp_path_factory.mktemp("trained")
    result = run_chapter_here("train_iris.py", "--epochs", "1", cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd / "artifacts" / MODEL_FILE


@pytest.fixture(scope="module")
def marker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The file a hostile probe would create if anything ran its code."""
    return tmp_path_factory.mktemp("marker") / "code-ran"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, marker: Path) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("corpus"), marker)


def load_in_child(path: Path) -> int:
    """In a forked child: load `path`; exit 2 with the refusal on stderr, 3 if memory grew, 4 if loaded."""
    before = limit_memory()
    try:
        load_untrusted_model(path, Multiclass)
    except ModelFileError as err:
        print(err, file=sys.stderr)
        return EXIT_TOO_MUCH_MEMORY if grew_too_much(before) else EXIT_BAD_INPUT
    return EXIT_LOADED


def read_in_child(path: Path) -> int:
    """In a forked child: read_untrusted(path) with its default bound, then check it fits Multiclass."""
    before = limit_memory()
    try:
        state = read_untrusted(path)
        with refusing(path):
            check_state_dict_fits(state, Multiclass())
    except ModelFileError as err:
        print(err, file=sys.stderr)
        return EXIT_TOO_MUCH_MEMORY if grew_too_much(before) else EXIT_BAD_INPUT
    return EXIT_LOADED


def chapter_in_child(script: str, out_dir: Path, cwd: Path) -> int:
    """In a forked child: run the chapter as `python SCRIPT --out-dir OUT_DIR` would, in this process."""
    before = limit_memory()
    result = run_chapter_here(script, "--out-dir", str(out_dir), cwd=cwd)
    sys.stderr.write(result.stderr)
    return EXIT_TOO_MUCH_MEMORY if grew_too_much(before) else result.returncode


def assert_clean_refusal(code: int, stderr: str, marker: Path) -> None:
    assert code == EXIT_BAD_INPUT, f"exit status {code}: {stderr}"  # negative: killed by a signal
    assert stderr.count("\n") == 1 and stderr.endswith("\n"), stderr
    assert "Traceback" not in stderr
    assert stderr[:-1].isprintable(), stderr  # no escape codes, nothing that drives the terminal
    assert not marker.exists(), "the file's code ran"


def test_the_loader_and_the_checks_accept_a_good_file(good_model, tmp_path):
    assert run_in_fork(load_in_child, good_model, cwd=tmp_path, timeout=TIMEOUT) == (EXIT_LOADED, "")
    assert run_in_fork(read_in_child, good_model, cwd=tmp_path, timeout=TIMEOUT) == (EXIT_LOADED, "")


@pytest.mark.parametrize("probe", list(probes(Path("unused"))))
def test_the_loader_refuses_every_probe_in_one_line(probe, corpus, marker, tmp_path):
    code, stderr = run_in_fork(load_in_child, corpus[probe] / MODEL_FILE, cwd=tmp_path, timeout=TIMEOUT)
    assert_clean_refusal(code, stderr, marker)
    assert stderr.startswith(str(corpus[probe] / MODEL_FILE))  # the line names the file


@pytest.mark.parametrize("probe", list(probes(Path("unused"))))
def test_each_check_refuses_its_probe_without_the_size_bound(probe, corpus, marker, tmp_path):
    """read_untrusted's own bound is 64 MiB, not the model's size: the zip, pickle and tensor
    checks behind it must refuse each probe by themselves, for the reason the probe is about."""
    code, stderr = run_in_fork(read_in_child, corpus[probe] / MODEL_FILE, cwd=tmp_path, timeout=TIMEOUT)
    assert_clean_refusal(code, stderr, marker)
    reasons = REASONS[probe] if isinstance(REASONS[probe], tuple) else (REASONS[probe],)
    assert any(reason in stderr for reason in reasons), stderr


@pytest.mark.parametrize("probe", CHAPTER_PROBES)
@pytest.mark.parametrize("script", READERS)
def test_each_reader_chapter_refuses_in_one_line(script, probe, corpus, marker, tmp_path):
    code, stderr = run_in_fork(
        chapter_in_child, script, corpus[probe], tmp_path, cwd=tmp_path, timeout=TIMEOUT
    )
    assert_clean_refusal(code, stderr, marker)
    assert stderr.startswith("error: ")


@pytest.mark.parametrize("script", READERS)
def test_each_reader_chapter_names_the_command_that_makes_a_missing_model(script, tmp_path):
    result = run_chapter_here(script, "--out-dir", "empty", cwd=tmp_path)
    assert_clean_refusal(result.returncode, result.stderr, tmp_path / "no-marker")
    assert result.stderr == (
        "error: empty/iris-model.pth not found; create it with: python train_iris.py --out-dir empty\n"
    )
    assert result.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize("script", READERS)
def test_each_reader_chapter_refuses_in_a_real_process(script, corpus, marker, tmp_path):
    result = run_script(
        script, "--out-dir", str(corpus[SUBPROCESS_PROBE[script]]), cwd=tmp_path, timeout=TIMEOUT
    )
    assert_clean_refusal(result.returncode, result.stderr, marker)
    assert result.stderr.startswith("error: ")


def train_in_child(out_dir: Path, cwd: Path) -> int:
    result = run_chapter_here("train_iris.py", "--out-dir", str(out_dir), "--epochs", "1", cwd=cwd)
    sys.stderr.write(result.stderr)
    return result.returncode


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["FIFO", "link to /dev/zero", "hostile torch.save"])
def test_training_replaces_a_bad_file_at_the_model_path(probe, marker, tmp_path):
    """Chapter 2 writes the model: whatever stood at the path is replaced, never read or followed."""
    out_dir = tmp_path / "artifacts"
    out_dir.mkdir()
    probes(marker)[probe](out_dir / MODEL_FILE)
    code, stderr = run_in_fork(train_in_child, out_dir, tmp_path, cwd=tmp_path, timeout=TIMEOUT)
    assert code == 0, stderr
    assert (out_dir / MODEL_FILE).is_file() and not (out_dir / MODEL_FILE).is_symlink()
    load_untrusted_model(out_dir / MODEL_FILE, Multiclass)
    assert not marker.exists()


def test_training_refuses_a_folder_at_the_model_path_in_one_line(marker, tmp_path):
    (tmp_path / "artifacts" / MODEL_FILE).mkdir(parents=True)
    code, stderr = run_in_fork(
        train_in_child, tmp_path / "artifacts", tmp_path, cwd=tmp_path, timeout=TIMEOUT
    )
    assert_clean_refusal(code, stderr, marker)
    assert stderr.startswith(f"error: cannot write {tmp_path / 'artifacts' / MODEL_FILE}")


def test_damaged_copies_of_a_good_file_are_refused_in_one_line_or_load(good_model, tmp_path):
    """A hundred random damages: each is refused with a ModelFileError of one line, or (where
    it hit bytes no checksum covers, such as the zip's padding) loads as the good file does."""
    copy = tmp_path / MODEL_FILE
    good = Multiclass().state_dict().keys()
    for damaged in damaged_copies(good_model.read_bytes(), 100):
        copy.write_bytes(damaged)
        try:
            assert read_untrusted(copy).keys() == good
        except ModelFileError as err:
            assert "\n" not in str(err) and str(err).isprintable()


# %%
# Writers killed mid-save, and two writers at once: the model file is always a whole one


def train_dying_inside_torch_save(out_dir: Path, cwd: Path) -> int:
    """Chapter 2 in this forked child, killed (SIGKILL) halfway through writing the model."""

    def dying_save(obj: object, f: Any, *args: object, **kwargs: object) -> None:
        with Path(f).open("wb") as out:  # chapter 2 saves to a path: torch opens, and truncates, it
            out.write(b"PK\x03\x04 half a file")
            out.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    torch.save = dying_save  # this child's torch only
    return train_in_child(out_dir, cwd)


@pytest.mark.slow
def test_a_kill_inside_chapter_2s_plain_save_leaves_a_file_every_reader_refuses(good_model, tmp_path):
    """Chapter 2 teaches the one-line torch.save, and says what a kill mid-save costs: the old
    file is gone and the new one is half written. Every chapter that reads it refuses it in one
    line, and the next run replaces it. (Chapter 5's crash-safe save keeps the old file.)"""
    out_dir = tmp_path / "artifacts"
    out_dir.mkdir()
    shutil.copy(good_model, out_dir / MODEL_FILE)
    code, _ = run_in_fork(train_dying_inside_torch_save, out_dir, tmp_path, cwd=tmp_path, timeout=TIMEOUT)
    assert code == -signal.SIGKILL
    with pytest.raises(ModelFileError) as refused:
        load_untrusted_model(out_dir / MODEL_FILE, Multiclass)
    assert len(str(refused.value).splitlines()) == 1
    code, stderr = run_in_fork(train_in_child, out_dir, tmp_path, cwd=tmp_path, timeout=TIMEOUT)
    assert code == 0, stderr
    load_untrusted_model(out_dir / MODEL_FILE, Multiclass)


def write_again_and_again(path: Path, seed: int) -> int:
    for step in range(300):
        torch.manual_seed(seed * 10_000 + step)
        save_atomically(Multiclass().state_dict(), path)
    return 0


@pytest.mark.slow
def test_two_writers_and_a_kill_never_leave_a_broken_file(tmp_path):
    """Two processes save to one path as fast as they can; one is killed mid-way. Every read
    in between, and the file left at the end, is a whole model."""
    path = tmp_path / MODEL_FILE
    save_atomically(Multiclass().state_dict(), path)
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=write_again_and_again, args=(path, seed)) for seed in (1, 2)]
    for writer in writers:
        writer.start()
    for read in range(40):
        load_untrusted_model(path, Multiclass)  # raises if a read ever saw a partial file
        if read == 20:
            os.kill(writers[0].pid, signal.SIGKILL)
    for writer in writers:
        writer.join(TIMEOUT)
    assert writers[0].exitcode == -signal.SIGKILL and writers[1].exitcode == 0
    load_untrusted_model(path, Multiclass)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] in (
        [],
        [f".{MODEL_FILE}.{writers[0].pid}.partial"],
    )

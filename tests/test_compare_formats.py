"""Chapter 8: every format round-trips exactly; the safety claims hold; the table, its JSON
rows and its picture agree."""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from build_model import Multiclass, load_iris_split
from support import lab_tools
from support.cli import ChapterError
from support.lab_tools import Hostile, run_in_child
from tests.helpers import REPO, SCRIPT_ENV, ChapterResult, assert_one_line_refusal, run_chapter_here

try:
    from safetensors.torch import load_file, safe_open
except ImportError:  # the optional `formats` extra
    load_file = safe_open = None

try:
    import onnxruntime
except ImportError:  # the optional `onnxrt` extra
    onnxruntime = None

NO_SAFETENSORS = "safetensors is not installed (the `formats` extra)"
NO_ONNXRUNTIME = "onnxruntime is not installed (the `onnxrt` extra)"
FORMAT_NAMES = [
    "pickle",
    "torch.save",
    "torch.save+mmap",
    "torch.save-crc32",
    *(["safetensors"] if load_file else []),
    "torch.export",
    "raw",
]
SYNTHETIC = "synthetic 32 MiB"  # what the default --size-mb 32 builds
HERE_SIZE_MB = "20"  # the in-process run: rounded to one 16 MiB layer, to keep it short
HERE_SYNTHETIC = "synthetic 16 MiB"
PICTURE_PIXELS = (484, 1320)  # figsize (12, 4.4) inches at 110 dpi: (height, width)


@pytest.fixture(scope="module")
def rows(formats_run) -> list[dict]:
    """The rows the real `python compare_formats.py --json ...` run wrote."""
    return json.loads((formats_run.artifacts / "formats.json").read_text())


@pytest.fixture(scope="module")
def here(
    trained_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ChapterResult, Path, list[tuple[str, str, bool]]]:
    """The chapter run in this process (for its objects), with --json; its folder; and what it
    ran in child processes: (function, file, whether that ran in another process)."""
    cwd = tmp_path_factory.mktemp("formats")
    (cwd / "artifacts").mkdir()
    shutil.copy(trained_model_path, cwd / "artifacts")
    children, pid_file = [], cwd / "child-pid"

    def run_in_child_and_note(work: Callable[..., object], *args: object, **options: object) -> None:
        def work_saying_where(*work_args: object) -> None:
            pid_file.write_text(str(os.getpid()))
            work(*work_args)

        run_in_child(work_saying_where, *args, **options)
        children.append((work.__name__, Path(args[0]).name, int(pid_file.read_text()) != os.getpid()))

    with pytest.MonkeyPatch.context() as patch:  # the chapter imports it when it runs
        patch.setattr(lab_tools, "run_in_child", run_in_child_and_note)
        result = run_chapter_here(
            "compare_formats.py", "--size-mb", HERE_SIZE_MB, "--repeat", "1", "--json", "rows.json", cwd=cwd
        )
    assert result.returncode == 0, result.stderr
    return result, cwd, children


@pytest.fixture(scope="module")
def ns(here) -> dict:
    return here[0].namespace


@pytest.fixture
def trained(trained_model_path: Path) -> Multiclass:
    model = Multiclass()
    model.load_state_dict(torch.load(trained_model_path, weights_only=True))
    return model.eval()


def predictions(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(load_iris_split().X_test)


# %%
# Every format, round trip


@pytest.mark.slow
def test_the_chapter_measures_the_formats_in_table_order(ns):
    assert list(ns["FORMATS"]) == FORMAT_NAMES


@pytest.mark.slow
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_every_format_round_trips_every_tensor_exactly(name, ns, trained, tmp_path):
    save, load, suffix, _, _ = ns["FORMATS"][name]
    path = tmp_path / f"model{suffix}"
    save(ns["trained"], path)  # the chapter's object: torch.export saves the program traced from it
    loaded = load(path, ns["iris_build"])
    tensors = loaded.state_dict()
    assert sorted(tensors) == sorted(trained.state_dict())
    assert all(torch.equal(tensors[key], tensor) for key, tensor in trained.state_dict().items())
    assert torch.equal(predictions(loaded), predictions(trained))


@pytest.mark.slow
def test_the_raw_file_is_the_tensor_bytes_and_nothing_else(ns, trained, tmp_path):
    ns["save_raw"](trained, tmp_path / "model.bin")
    expected = b"".join(tensor.numpy().tobytes() for tensor in trained.state_dict().values())
    assert (tmp_path / "model.bin").read_bytes() == expected


# %%
# The table and its JSON rows


def test_json_has_a_sane_row_per_model_and_format(rows):
    assert [row["model"] for row in rows] == ["iris"] * len(FORMAT_NAMES) + [SYNTHETIC] * len(FORMAT_NAMES)
    assert [row["format"] for row in rows] == FORMAT_NAMES * 2
    for row in rows:
        assert row["bytes"] > 0 and row["save_s"] > 0 and row["load_s"] > 0
        assert row["same_predictions"] is True
        assert row["peak_mb"] is None or row["peak_mb"] >= 0


def test_json_sizes_and_labels_match_what_the_formats_are(rows):
    synthetic = {row["format"]: row for row in rows if row["model"] == SYNTHETIC}
    raw_bytes = synthetic["raw"]["bytes"]
    assert raw_bytes == 2 * 2048 * 2048 * 4 + 2 * 2048 * 4  # two 2048x2048 float32 layers and biases
    for row in synthetic.values():
        assert raw_bytes <= row["bytes"] < raw_bytes * 1.01  # every format stores the bytes once
    assert {name for name, row in synthetic.items() if row["safe_for_untrusted"] == "no"} == {
        "pickle",
        "torch.export",
    }
    assert {name for name, row in synthetic.items() if not row["needs_model_code"]} == {"torch.export"}


def test_the_printed_table_shows_the_json_rows(formats_run, rows):
    for row in rows:
        peak = "n/a" if row["peak_mb"] is None else f"{row['peak_mb']:.0f}"
        start = f"{row['format']:<16} "
        line = next(
            line
            for line in formats_run.stdout.split(f"## {row['model']}: median of 3 runs\n")[1].splitlines()
            if line.startswith(start)
        )
        assert f" {row['save_s']:.4f} " in line and f" {row['load_s']:.4f} " in line
        assert line.split()[-4] == peak
        assert line.endswith(f" {row['safe_for_untrusted']:<4} True")
        raw = next(other for other in rows if other["model"] == row["model"] and other["format"] == "raw")
        ratios = line.split()[4], line.split()[6]
        if raw["bytes"] < 10**6:  # too small to time against raw file I/O: no ratio shown
            assert ratios == ("-", "-")
        else:
            assert ratios == (f"{row['save_s'] / raw['save_s']:.2f}", f"{row['load_s'] / raw['load_s']:.2f}")


def test_pickle_needs_twice_the_memory_to_load(rows):
    synthetic = {row["format"]: row for row in rows if row["model"] == SYNTHETIC}
    if synthetic["raw"]["peak_mb"] is None:
        pytest.skip("peak memory is measured on Linux only (/proc/self/status)")
    assert synthetic["pickle"]["peak_mb"] >= 1.8 * synthetic["raw"]["peak_mb"]
    assert synthetic["raw"]["peak_mb"] >= 30  # the 32 MiB of weights, once


@pytest.mark.slow
def test_the_output_says_why_mapped_loads_are_below_raw(here, ns):
    result = here[0]
    raw = ns["raw"]
    assert raw["format"] == "raw" and raw["model"] == HERE_SYNTHETIC
    expected = [
        f"{row['format']} {row['load_s'] / raw['load_s']:.2f}x"
        for row in ns["synthetic_rows"]
        if row["format"] in ("torch.save+mmap", "safetensors") and row["load_s"] < raw["load_s"]
    ]
    assert ns["below"] == expected
    line = f"Loads below 1x raw ({', '.join(expected)}): they map the cached file instead of copying it."
    assert (line in result.stdout) == bool(expected)


@pytest.mark.slow
def test_the_advice_names_formats_by_what_they_are_and_gives_this_runs_figures(ns):
    synthetic = {row["format"]: row for row in ns["rows"] if row["model"] == HERE_SYNTHETIC}
    raw = synthetic["raw"]
    advice = ns["advice"]
    assert advice[0].startswith("Weights you share or download: safetensors. It holds only tensors")
    for name in ("safetensors", "torch.save", "pickle"):
        row = synthetic[name]
        ratio, peak = row["load_s"] / raw["load_s"], row["peak_mb"]
        figure = f"{name} loads in {ratio:.2f}x the raw read, peak {peak:.0f} MiB"
        assert figure in " ".join(advice), name
    assert advice[-1].startswith("Never plain pickle: it runs code from the file.")
    assert "fastest" not in " ".join(advice)  # no ranking by timings a few hundredths apart


# %%
# The picture


@pytest.mark.slow
def test_the_bars_are_the_json_rows(here, ns):
    result, cwd, _ = here
    written = json.loads((cwd / "rows.json").read_text())
    assert written == ns["rows"]
    synthetic = [row for row in written if row["model"] == HERE_SYNTHETIC]
    raw = synthetic[-1]
    assert ns["plotted"] == {
        "format": FORMAT_NAMES,
        "save_x_raw": [row["save_s"] / raw["save_s"] for row in synthetic],
        "load_x_raw": [row["load_s"] / raw["load_s"] for row in synthetic],
        "peak_mb": [row["peak_mb"] for row in synthetic],
    }
    assert "Drew artifacts/formats.png" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("which", ["real run", "in-process run"])
def test_the_picture_is_real(which, formats_run, here):
    from PIL import Image

    folder = formats_run.artifacts if which == "real run" else here[1] / "artifacts"
    with Image.open(folder / "formats.png") as picture:
        assert picture.format == "PNG"
        assert (picture.height, picture.width) == PICTURE_PIXELS
        grey = picture.convert("L")
        assert sum(count > 0 for count in grey.histogram()) > 20  # bars, hatching, text: not blank
        assert grey.getextrema() == (0, 255)


# %%
# Files left for the reader, and nothing else


def test_the_iris_pt2_and_safetensors_stay_in_out_dir_and_work(formats_run, trained):
    artifacts = formats_run.artifacts
    assert sorted(path.name for path in artifacts.iterdir()) == sorted(
        ["iris-model.pth", "iris.pt2", "formats.json", "formats.png"]
        + (["iris.safetensors"] if load_file else [])
        + (["iris.onnx"] if onnxruntime else [])  # one file: its weights are inside, no .onnx.data
    )
    program = torch.export.load(artifacts / "iris.pt2").module()
    assert torch.equal(predictions(program), predictions(trained))
    if load_file:
        with safe_open(artifacts / "iris.safetensors", framework="pt") as f:
            model_args = json.loads(f.metadata()["model_args"])
        rebuilt = Multiclass(**model_args)
        rebuilt.load_state_dict(load_file(artifacts / "iris.safetensors"))
        assert torch.equal(predictions(rebuilt.eval()), predictions(trained))


@pytest.mark.slow
@pytest.mark.skipif(safe_open is None, reason=NO_SAFETENSORS)
def test_safe_open_reads_one_tensor_and_the_model_args(ns, trained):
    assert ns["exact"] is True
    assert torch.equal(ns["hidden_weight"], trained.hidden.weight)
    assert json.loads(ns["metadata"]["model_args"]) == {"n_features": 4, "n_hidden": 8, "n_classes": 3}


# %%
# ONNX, run by ONNX Runtime


@pytest.mark.skipif(onnxruntime is None, reason=NO_ONNXRUNTIME)
def test_the_onnx_file_runs_in_onnx_runtime_on_any_batch_within_the_stated_tolerance(formats_run, trained):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(formats_run.artifacts / "iris.onnx", options)
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("flowers", ["batch", 4])]
    X_test = load_iris_split().X_test
    for flowers in (X_test, X_test[:1], torch.randn(120, 4, generator=torch.Generator().manual_seed(0))):
        (log_probs,) = session.run(None, {"flowers": flowers.numpy()})
        with torch.no_grad():
            expected = trained(flowers)
        difference = (torch.from_numpy(log_probs) - expected).abs().max().item()
        assert log_probs.shape == (len(flowers), 3) and difference <= 1e-5
        if len(flowers) == len(X_test):  # the chapter's figure is this run's, on the same 45 flowers
            printed = f"max abs difference from torch {difference:.1e}, within 1e-05 True;"
            assert f"{printed} same predicted classes True\n" in formats_run.stdout
    assert "## ONNX: artifacts/iris.onnx, " in formats_run.stdout
    assert "input ['batch', 4], given 45 flowers\n" in formats_run.stdout  # exported with 5


@pytest.mark.slow
def test_without_onnxruntime_the_chapter_says_in_one_line_what_it_skips(trained_model_path, tmp_path):
    (tmp_path / "artifacts").mkdir()
    shutil.copy(trained_model_path, tmp_path / "artifacts")
    # as `python compare_formats.py` in a Python where `import onnxruntime` fails
    hide = "import sys, runpy; sys.modules['onnxruntime'] = None; sys.argv = sys.argv[1:]; "
    hide += f"sys.path.insert(0, {str(REPO)!r}); "
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            hide + "runpy.run_path(sys.argv[0], run_name='__main__')",
            str(REPO / "compare_formats.py"),
            "--repeat",
            "1",
            "--size-mb",
            "16",
        ],
        cwd=tmp_path,
        env=SCRIPT_ENV,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    skipped = "\nonnxruntime or onnxscript is not installed: the ONNX section is skipped. To run it too:\n"
    assert skipped + '  pip install -c constraints.txt ".[onnxrt]"\n' in result.stdout
    assert "## ONNX" not in result.stdout and not (tmp_path / "artifacts" / "iris.onnx").exists()


# %%
# The .pt2 in a process that cannot import the project


@pytest.mark.slow
def test_pt2_runs_in_a_process_without_the_project(formats_run, ns):
    assert (
        "fresh_process/run_pt2.py: (45, 4) -> (45, 3), same predictions True" in formats_run.stdout
    )  # 45 flowers: a batch size the model was not exported with (5)
    assert ns["same"] is True


def test_the_pt2_program_refuses_to_run_where_it_can_see_the_project(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "fresh_process" / "run_pt2.py"), "x.pt2", "in.pt", "out.pt"],
        cwd=tmp_path,
        env={**SCRIPT_ENV, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "error: this process can import the project's model code; run it with python -I\n"


# %%
# The hostile file


def test_hostile_file_runs_in_unsafe_loaders_only(formats_run):
    stdout = formats_run.stdout
    assert "  pickle.load                      -> RAN the file's code (in a child process)" in stdout
    assert "  torch.load(weights_only=False)   -> RAN the file's code (in a child process)" in stdout
    assert (
        "  torch.load(weights_only=True)    -> ran nothing, refused with UnpicklingError (in this process)"
    ) in stdout
    assert "  get_unsafe_globals_in_checkpoint -> ['builtins.exec'], without loading it" in stdout
    if load_file:
        assert "  safetensors save_file            -> ValueError: Key `weight` is invalid" in stdout


@pytest.mark.slow
def test_the_safe_load_ran_in_the_chapters_own_process_and_named_exec(ns):
    assert isinstance(ns["refusal"], pickle.UnpicklingError)
    assert "GLOBAL exec" in str(ns["refusal"])
    assert ns["unsafe_globals"] == ["builtins.exec"]
    assert ns["verdict"] == "ran nothing"  # the marker was absent right after the safe load


def test_the_child_is_another_process_and_the_files_code_runs_there(tmp_path):
    marker, pids = tmp_path / "code-from-the-file-ran", tmp_path / "pids"
    (tmp_path / "hostile.pkl").write_bytes(pickle.dumps(Hostile(marker)))

    def load_and_say_where(path: Path) -> None:
        pids.write_text(str(os.getpid()))
        with path.open("rb") as f:
            pickle.load(f)

    run_in_child(load_and_say_where, tmp_path / "hostile.pkl")
    assert marker.exists()
    assert int(pids.read_text()) != os.getpid()


@pytest.mark.slow
def test_the_chapters_unsafe_loads_ran_in_child_processes(here):
    assert here[2] == [
        ("load_with_pickle", "hostile.pkl", True),
        ("load_with_torch_unsafely", "hostile.pth", True),
    ]


@pytest.mark.slow
def test_the_chapters_own_unsafe_loaders_run_the_files_code(ns, tmp_path):
    marker = tmp_path / "code-from-the-file-ran"
    (tmp_path / "hostile.pkl").write_bytes(pickle.dumps(Hostile(marker)))
    torch.save({"weight": Hostile(marker)}, tmp_path / "hostile.pth")
    for load, name in [
        (ns["load_with_pickle"], "hostile.pkl"),
        (ns["load_with_torch_unsafely"], "hostile.pth"),
    ]:
        marker.unlink(missing_ok=True)
        run_in_child(load, tmp_path / name)
        assert marker.exists(), name


def refuse() -> None:
    raise ValueError("no such weights\nsecond line")


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message either")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def raise_unprintable() -> None:
    raise UnprintableError


@pytest.mark.parametrize(
    ("work", "args", "said"),
    [
        (refuse, (), "ValueError: no such weights"),
        (sys.exit, (3,), "SystemExit: 3"),
        (sys.exit, ("stopped here",), "SystemExit: stopped here"),
        (os._exit, (1,), "exit code 1"),  # what a hostile file can call: no message
        (os._exit, (5,), "exit code 5"),
        (raise_unprintable, (), "exit code 1"),
        (die, (), "killed by SIGKILL"),
    ],
)
def test_a_failure_in_the_child_ends_in_one_line_without_a_traceback(work, args, said, capfd):
    with pytest.raises(ChapterError) as refusal:
        run_in_child(work, *args)
    assert str(refusal.value) == f"{work.__name__} failed in a child process: {said}"
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("args", [(), (0,), (None,)])
def test_a_child_that_exits_as_python_does_on_success_succeeds(args):
    run_in_child(sys.exit, *args)


def test_a_partial_is_named_by_its_function():
    with pytest.raises(ChapterError, match=r"^refuse failed in a child process: ValueError"):
        run_in_child(functools.partial(refuse))


def test_a_child_that_hangs_is_stopped():
    with pytest.raises(
        ChapterError, match=r"^sleep failed in a child process: still running after 0.2 s, stopped$"
    ):
        run_in_child(time.sleep, 60, timeout=0.2)


def is_running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc (Linux)")
def test_what_the_child_starts_is_stopped_with_it_and_never_waited_for(tmp_path):
    pid_file = tmp_path / "grandchild"

    def start_a_grandchild() -> None:
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        pid_file.write_text(str(grandchild.pid))

    started = time.monotonic()
    run_in_child(start_a_grandchild, timeout=30)
    assert time.monotonic() - started < 30  # returned when the child ended, not at the timeout
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while is_running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not is_running(grandchild)


def test_the_child_has_its_own_process_group_and_not_the_chapters_ctrl_c_handler(tmp_path):
    seen = tmp_path / "seen"

    def say_how_it_runs() -> None:
        own_group = os.getpgid(0) == os.getpid()
        seen.write_text(f"{own_group} {signal.getsignal(signal.SIGINT) is signal.SIG_DFL}")

    previous = signal.signal(signal.SIGINT, lambda *_: None)  # as a chapter's first cell sets one
    try:
        run_in_child(say_how_it_runs)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen.read_text() == "True True"  # Ctrl-C at the terminal reaches the chapter alone


# %%
# CRC32: what torch.save writes and what torch.load checks


@pytest.mark.slow
def test_without_crc32_zip_tools_report_bad_crcs_and_torch_load_still_reads_it(ns, trained, tmp_path):
    checked, unchecked = tmp_path / "checked.pth", tmp_path / "unchecked.pth"
    ns["save_torch"](trained, checked)
    ns["save_torch_without_crc32"](trained, unchecked)
    assert torch.serialization.get_crc32_options() is True  # the global setting was restored
    assert zipfile.ZipFile(checked).testzip() is None
    assert all(info.CRC == 0 for info in zipfile.ZipFile(unchecked).infolist())
    assert zipfile.ZipFile(unchecked).testzip() is not None  # names the first record that fails
    loaded = torch.load(unchecked, weights_only=True)
    assert all(torch.equal(loaded[key], tensor) for key, tensor in trained.state_dict().items())
    if shutil.which("unzip") is None:
        return  # the zipfile check above says the same
    listing = subprocess.run(["unzip", "-t", str(unchecked)], capture_output=True, text=True, check=False)
    assert "bad CRC" in listing.stdout


def test_torch_load_never_checks_crcs_a_flipped_byte_loads_silently(trained, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(trained.state_dict(), path)
    archive = zipfile.ZipFile(path)
    record = next(info for info in archive.infolist() if info.filename.endswith("/data/0"))
    data = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack(
        "<HH", data[record.header_offset + 26 : record.header_offset + 30]
    )
    data[record.header_offset + 30 + name_length + extra_length] ^= 0x01  # first byte of hidden.weight
    path.write_bytes(data)
    loaded = torch.load(path, weights_only=True)  # no error
    assert not torch.equal(loaded["hidden.weight"], trained.hidden.weight)
    assert zipfile.ZipFile(path).testzip() == record.filename  # the checksum would have told


# %%
# Flags and bad input: one line, before any work


def test_help_states_the_16_mib_rounding(tmp_path):
    result = run_chapter_here("compare_formats.py", "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "rounded to whole 16 MiB layers" in " ".join(result.stdout.split())


@pytest.mark.slow
def test_the_output_states_the_rounding(formats_run, here):
    rounded = "rounded to whole 16 MiB layers"
    assert (
        f"synthetic 32 MiB: 2 Linear layers of 2048x2048 float32 (--size-mb 32, {rounded})"
        in formats_run.stdout
    )
    assert (
        f"synthetic 16 MiB: 1 Linear layer of 2048x2048 float32 (--size-mb 20, {rounded})" in here[0].stdout
    )


def test_a_size_beyond_the_machines_memory_is_refused(trained_model_path, tmp_path):
    (tmp_path / "artifacts").mkdir()
    shutil.copy(trained_model_path, tmp_path / "artifacts")
    result = run_chapter_here("compare_formats.py", "--size-mb", str(2**40), cwd=tmp_path)
    assert_one_line_refusal(result, f"--size-mb {2**40}", "MiB are available")
    assert result.stdout == ""
    assert sorted(path.name for path in (tmp_path / "artifacts").iterdir()) == ["iris-model.pth"]


@pytest.mark.parametrize(
    ("json_path", "reason"),
    [
        ("no/rows.json", "does not exist"),
        (".", "it is a folder"),
        pytest.param(
            "/proc/rows.json",  # a filesystem that takes no new files, even from root
            "No such file or directory",
            marks=pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc"),
        ),
    ],
)
def test_an_unwritable_json_path_is_refused_before_any_work(json_path, reason, trained_model_path, tmp_path):
    (tmp_path / "artifacts").mkdir()
    shutil.copy(trained_model_path, tmp_path / "artifacts")
    result = run_chapter_here("compare_formats.py", "--json", json_path, cwd=tmp_path)
    assert_one_line_refusal(result, "cannot write", reason)
    assert result.stdout == ""

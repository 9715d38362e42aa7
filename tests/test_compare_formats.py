"""Chapter 7: every format round-trips exactly; the safety claims hold; the JSON rows are sane."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch

import compare_formats as cf
from build_model import EXIT_BAD_INPUT, load_model

HAS_SAFETENSORS = cf.save_file is not None
NO_SAFETENSORS = "safetensors is not installed (the `formats` extra)"
FORMATS = [fmt for fmt in cf.FORMATS if HAS_SAFETENSORS or fmt.name != "safetensors"]
FORMAT_NAMES = [fmt.name for fmt in FORMATS]


@pytest.fixture(scope="module")
def rows(walkthrough) -> list[dict]:
    return json.loads((walkthrough.artifacts / "formats.json").read_text())


@pytest.fixture
def iris(trained_model_path) -> cf.Subject:
    return cf.iris_subject(load_model(trained_model_path))


@pytest.mark.parametrize("fmt", FORMATS, ids=FORMAT_NAMES)
def test_every_format_round_trips_every_tensor_exactly(fmt, iris, tmp_path):
    path = tmp_path / f"model{fmt.suffix}"
    fmt.save(iris, path)
    loaded = fmt.load(iris, path)
    tensors = dict(loaded.state_dict) if fmt.name == "torch.export" else loaded
    assert sorted(tensors) == sorted(iris.state)  # safetensors stores names sorted
    assert all(torch.equal(tensors[name], tensor) for name, tensor in iris.state.items())
    assert cf.predicts_the_same(fmt, iris, path)


def test_json_has_a_sane_row_per_model_and_format(rows):
    assert {row["model"] for row in rows} == {"iris", "synthetic 32 MiB"}
    for model in ("iris", "synthetic 32 MiB"):
        assert [row["format"] for row in rows if row["model"] == model] == FORMAT_NAMES
    for row in rows:
        assert row["bytes"] > 0 and row["save_s"] > 0 and row["load_s"] > 0
        assert row["same_predictions"] is True
        assert row["peak_mb"] is None or row["peak_mb"] >= 0


def test_json_sizes_and_labels_match_what_the_formats_are(rows):
    synthetic = {row["format"]: row for row in rows if row["model"] == "synthetic 32 MiB"}
    raw_bytes = synthetic["raw"]["bytes"]
    assert raw_bytes == 16 * 2**20 * 2 + 2 * 2048 * 4  # two 2048x2048 float32 layers and biases
    for row in synthetic.values():
        assert raw_bytes <= row["bytes"] < raw_bytes * 1.01  # every format stores the bytes once
    assert {name for name, row in synthetic.items() if row["safe_for_untrusted"] == "no"} == {
        "pickle",
        "torch.export",
    }
    assert {name for name, row in synthetic.items() if not row["needs_model_code"]} == {"torch.export"}


def test_hostile_file_runs_in_unsafe_loaders_only(walkthrough):
    stdout = walkthrough.stdout("compare_formats.py")
    assert "  pickle.load                     -> RAN the file's code" in stdout
    assert "  torch.load(weights_only=False)  -> RAN the file's code" in stdout
    assert (
        "  torch.load(weights_only=True)   -> ran nothing; UnpicklingError: Unsupported global: GLOBAL exec"
    ) in stdout
    assert "  get_unsafe_globals_in_checkpoint -> ['builtins.exec'], without loading it" in stdout
    if HAS_SAFETENSORS:
        refusal = (
            "  safetensors save_file           -> ValueError: Key `weight` is invalid, expected torch.Tensor"
        )
        assert refusal in stdout


def test_pt2_runs_in_a_process_without_the_project(walkthrough):
    assert "45 flowers, batch size not seen at export: same predictions True" in walkthrough.stdout(
        "compare_formats.py"
    )
    assert 'find_spec("build_model") is None' in cf.RUN_PT2_ELSEWHERE  # the child checks it cannot see us


@pytest.mark.skipif(not HAS_SAFETENSORS, reason=NO_SAFETENSORS)
def test_safetensors_reads_one_tensor_and_the_model_args(iris, tmp_path):
    name, metadata, exact = cf.read_one_tensor(iris, tmp_path)
    assert exact and name == "hidden.weight"
    assert json.loads(metadata["model_args"]) == {"n_features": 4, "n_hidden": 8, "n_classes": 3}


def test_without_safetensors_its_rows_are_skipped_with_a_hint(monkeypatch, capsys):
    monkeypatch.setattr(cf, "save_file", None)
    formats = cf.available_formats()
    assert "safetensors" not in [fmt.name for fmt in formats]
    assert 'pip install -c constraints.txt ".[formats]"' in capsys.readouterr().out


def test_recommendation_follows_the_measurements(rows):
    synthetic = [cf.Row(**row) for row in rows if row["model"] == "synthetic 32 MiB"]
    fastest_safe = min(
        (r for r in synthetic if r.safe_for_untrusted == "yes" and r.format != "raw"), key=lambda r: r.load_s
    )
    advice = cf.recommend(synthetic)
    assert advice[0].startswith(
        f"Weights you share or download: {fastest_safe.format}, the fastest safe loader"
    )
    assert any(line.startswith("Never plain pickle") for line in advice)


def test_json_into_a_missing_folder_is_refused_before_any_work(trained_model_path, tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cf.main(["--out-dir", str(trained_model_path.parent), "--json", str(tmp_path / "no" / "rows.json")])
    assert stopped.value.code == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err


def test_without_crc32_torch_load_reads_it_but_zip_tools_cannot_verify_it(iris, tmp_path):
    checked, unchecked = tmp_path / "checked.pth", tmp_path / "unchecked.pth"
    cf.save_torch(iris, checked)
    cf.save_torch_without_crc32(iris, unchecked)
    assert zipfile.ZipFile(checked).testzip() is None
    assert zipfile.ZipFile(unchecked).testzip() is not None  # names the first record that fails
    assert torch.serialization.get_crc32_options() is True  # the global setting was restored
    loaded = cf.load_torch(iris, unchecked)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in iris.state.items())


def test_pickle_needs_twice_the_memory_to_load(rows):
    synthetic = {row["format"]: row for row in rows if row["model"] == "synthetic 32 MiB"}
    if synthetic["raw"]["peak_mb"] is None:
        pytest.skip("peak memory is measured on Linux only")
    assert synthetic["pickle"]["peak_mb"] >= 1.8 * synthetic["raw"]["peak_mb"]

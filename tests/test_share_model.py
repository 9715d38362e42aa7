"""Chapter 9 (share_model.py): what it prints is what its files hold, and its checks refuse hostile files."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from build_model import Multiclass
from model_inspector.files import ModelFileError
from support.shared_models import (
    adapter_template,
    check_adapter_state,
    check_folder_config,
    read_safetensors,
    read_shard_index,
    read_with_exact_allowlist,
)
from support.untrusted_files import load_untrusted_model
from tests.helpers import CHAPTER_SERVER, REPO, SCRIPT_ENV, assert_one_line_refusal


def trained(artifacts: Path) -> Multiclass:
    return load_untrusted_model(artifacts / "iris-model.pth", Multiclass)


def test_the_folder_rebuilds_the_model_in_a_fresh_process(share_run):
    out = share_run.stdout
    assert "Fresh process (python -I, no build_model.py): (45, 4) -> (45, 3)" in out
    assert "  same outputs as the trained model: True" in out
    assert "from_pretrained: same tensors True, eval mode True" in out
    model = trained(share_run.artifacts)
    for folder in ("iris-folder", "iris-hub-folder"):
        config = json.loads((share_run.artifacts / folder / "config.json").read_text())
        assert config == model.constructor_args()
        weights = load_file(share_run.artifacts / folder / "model.safetensors")
        assert weights.keys() == model.state_dict().keys()
        assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_tied_weights_safetensors_refuses_and_save_model_keeps_the_tie(share_run):
    out = share_run.stdout
    assert "save_file(state_dict)  -> RuntimeError: Some tensors share memory" in out
    assert "torch.save / torch.load: 2 names, one storage after loading True" in out
    assert "save_model / load_model: same weights True, one storage after loading True" in out
    in_file = load_file(share_run.artifacts / "tied.safetensors")
    assert len(in_file) == 1  # the shared tensor once, under one of its names
    both = torch.load(share_run.artifacts / "tied.pth", weights_only=True)
    assert torch.equal(both["embedding.weight"], next(iter(in_file.values())))


def test_the_shards_and_their_index_hold_the_model(share_run):
    assert "save_torch_state_dict(max_shard_size=100): 4 shards + index" in share_run.stdout
    assert "load_torch_model: same tensors True" in share_run.stdout
    index = json.loads((share_run.artifacts / "iris-shards" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 4
    model = trained(share_run.artifacts)
    state = read_shard_index(share_run.artifacts / "iris-shards", Multiclass())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    one_file, sharded = map(
        float, re.search(r"one file (\d+) MiB, 8 shards (\d+) MiB", share_run.stdout).groups()
    )
    assert sharded < one_file / 2  # one 4 MiB shard at a time against all 32 MiB at once


def test_the_adapter_file_holds_only_the_adapter_and_merges(share_run):
    out = share_run.stdout
    assert "strict=False: missing = the frozen base's 4 keys, unexpected none; same outputs True" in out
    assert "Merged into plain Linear weights: same predicted classes True" in out
    assert float(re.search(r"outputs within (\S+) \(float rounding\)", out).group(1)) <= 1e-5
    adapter_bytes, whole_bytes = map(
        int, re.search(r"File: (\d+) bytes, the whole adapted model's (\d+)", out).groups()
    )
    assert adapter_bytes == (share_run.artifacts / "iris-adapter.pth").stat().st_size < whole_bytes
    adapter = torch.load(share_run.artifacts / "iris-adapter.pth", weights_only=True)
    assert sorted(adapter) == ["hidden.lora_a", "hidden.lora_b", "output.lora_a", "output.lora_b"]
    assert all(t.any() for t in adapter.values())  # trained: B no longer all zeros


def test_the_int8_file_needs_exactly_int8tensor(share_run):
    out = share_run.stdout
    assert "The file needs beyond torch's allowlist: ['torchao.quantization.Int8Tensor']" in out
    assert "Loaded back with weights_only=True: same outputs True" in out
    float_acc, int8_acc = map(
        float, re.search(r"float (\S+), int8 (\S+)", out.split("Test accuracy:")[1]).groups()
    )
    assert abs(float_acc - int8_acc) <= 1 / 45  # at most one flower of 45 changes


# ---- The checks refuse hostile variants of each new kind of file ----


@pytest.fixture
def folder(tmp_path, trained_model_path) -> Path:
    model = load_untrusted_model(trained_model_path, Multiclass)
    (tmp_path / "config.json").write_text(json.dumps(model.constructor_args()))
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    return tmp_path


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"n_features": 4, "n_hidden": 8, "n_classes": 3, "auto_map": "x.Model"}, "expected exactly"),
        ({"n_features": 4, "n_hidden": 10**9, "n_classes": 3}, "not in 1..4096"),
        ({"n_features": 4, "n_hidden": 8.0, "n_classes": 3}, "not in 1..4096"),
        ([4, 8, 3], "expected exactly"),
    ],
)
def test_a_hostile_config_is_refused(folder, config, reason):
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=re.escape(reason)):
        check_folder_config(folder / "config.json", Multiclass().constructor_args())


def test_a_huge_config_and_a_lying_safetensors_are_refused(folder):
    (folder / "config.json").write_text(" " * 100_000 + "{}")
    with pytest.raises(ModelFileError, match="over 65536 for JSON"):
        check_folder_config(folder / "config.json", Multiclass().constructor_args())
    data = bytearray((folder / "model.safetensors").read_bytes())
    (folder / "model.safetensors").write_bytes(data[:-8])  # the header promises more than there is
    with pytest.raises(ModelFileError, match=r"model\.safetensors refused"):
        read_safetensors(folder / "model.safetensors", Multiclass())


def shard_folder(tmp_path: Path, model: Multiclass) -> Path:
    from huggingface_hub import save_torch_state_dict

    shards = tmp_path / "shards"
    shards.mkdir()
    save_torch_state_dict(model.state_dict(), shards, max_shard_size=100)
    return shards


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("outside", "is not a file in the folder"),
        ("missing", "is missing"),
        ("extra key", "expected"),
    ],
)
def test_a_hostile_shard_index_is_refused(tmp_path, trained_model_path, change, reason):
    pytest.importorskip("huggingface_hub", reason="the realworld extra writes the shards")
    shards = shard_folder(tmp_path, load_untrusted_model(trained_model_path, Multiclass))
    index_path = shards / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    if change == "outside":
        shutil.copy(shards / index["weight_map"]["hidden.bias"], tmp_path / "elsewhere.safetensors")
        index["weight_map"]["hidden.bias"] = "../elsewhere.safetensors"
    elif change == "missing":
        (shards / index["weight_map"]["output.bias"]).unlink()
    else:
        index["weight_map"]["extra.weight"] = index["weight_map"]["hidden.bias"]
    index_path.write_text(json.dumps(index))
    with pytest.raises(ModelFileError, match=re.escape(reason)):
        read_shard_index(shards, Multiclass())


def test_an_adapter_file_that_carries_base_weights_is_refused(tmp_path):
    template = adapter_template(Multiclass(), rank=2)
    assert sorted(template) == ["hidden.lora_a", "hidden.lora_b", "output.lora_a", "output.lora_b"]
    state = {name: torch.ones_like(t) for name, t in template.items()}
    torch.save(state, tmp_path / "adapter.pth")
    assert check_adapter_state(tmp_path / "adapter.pth", template).keys() == state.keys()
    torch.save({**state, "hidden.base.weight": torch.zeros(8, 4)}, tmp_path / "adapter.pth")
    with pytest.raises(ModelFileError, match="expected only the adapter's"):
        check_adapter_state(tmp_path / "adapter.pth", template)
    torch.save({**state, "hidden.lora_a": torch.ones(3, 4)}, tmp_path / "adapter.pth")
    with pytest.raises(ModelFileError, match=re.escape("hidden.lora_a has shape (3, 4), expected (2, 4)")):
        check_adapter_state(tmp_path / "adapter.pth", template)


def test_a_quantized_file_with_an_extra_global_is_refused(tmp_path):
    pytest.importorskip("torchao", reason="the quantize extra")
    from torchao.quantization import Int8Tensor, Int8WeightOnlyConfig, PerRow, quantize_

    model = Multiclass()
    quantize_(model, Int8WeightOnlyConfig())
    torch.save(model.state_dict(), tmp_path / "int8.pth")
    assert (
        read_with_exact_allowlist(tmp_path / "int8.pth", [Int8Tensor], model).keys()
        == model.state_dict().keys()
    )
    # a global that importing torchao allowlists for the whole process, but this file does not need
    torch.save({**model.state_dict(), "granularity": PerRow()}, tmp_path / "int8.pth")
    with pytest.raises(ModelFileError, match=re.escape("refers to torchao.quantization.granularity.PerRow")):
        read_with_exact_allowlist(tmp_path / "int8.pth", [Int8Tensor], model)
    torch.save(model.state_dict(), tmp_path / "int8.pth")
    with pytest.raises(ModelFileError, match="Int8Tensor"):  # allowlisting nothing refuses the subclass
        read_with_exact_allowlist(tmp_path / "int8.pth", [], model)
    assert Int8Tensor in torch.serialization.get_safe_globals()  # torchao's own allowlist, back again


# ---- The chapter itself, pointed at shared files: the good ones load, hostile ones are refused ----


def hostile_variants(artifacts: Path, root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Each case: the chapter's arguments, and the words its one-line refusal must hold (none: loads)."""
    cases = {}
    for name in ("iris-folder", "iris-hub-folder", "iris-shards"):
        cases[name] = (["--folder", str(artifacts / name)], [])
    cases["adapter"] = (["--adapter", str(artifacts / "iris-adapter.pth")], [])
    cases["int8"] = (["--int8", str(artifacts / "iris-int8.pth")], [])

    config_folder = shutil.copytree(artifacts / "iris-folder", root / "auto-map")
    config = json.loads((config_folder / "config.json").read_text())
    (config_folder / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Net"}}))
    cases["config with auto_map"] = (["--folder", str(config_folder)], ["config.json refused", "auto_map"])

    shards = shutil.copytree(artifacts / "iris-shards", root / "outside")
    index = json.loads((shards / "model.safetensors.index.json").read_text())
    index["weight_map"]["hidden.bias"] = "../../etc/passwd.safetensors"
    (shards / "model.safetensors.index.json").write_text(json.dumps(index))
    cases["shard outside"] = (
        ["--folder", str(shards)],
        ["../../etc/passwd.safetensors", "not a file in the folder"],
    )

    adapter = torch.load(artifacts / "iris-adapter.pth", weights_only=True)
    torch.save({**adapter, "hidden.base.weight": torch.zeros(8, 4)}, root / "adapter-with-base.pth")
    cases["adapter with base"] = (["--adapter", str(root / "adapter-with-base.pth")], ["hidden.base.weight"])

    from torchao.quantization import PerRow

    int8 = torch.load(artifacts / "iris-int8.pth", weights_only=True)
    torch.save({**int8, "granularity": PerRow()}, root / "int8-extra-global.pth")
    cases["int8 extra global"] = (["--int8", str(root / "int8-extra-global.pth")], ["PerRow"])
    return cases


@pytest.mark.slow  # nine runs of the chapter: some 3 s on two cores
def test_the_chapter_loads_its_shared_files_and_refuses_hostile_variants(share_run, tmp_path):
    pytest.importorskip("torchao", reason="the quantize extra")
    cases = hostile_variants(share_run.artifacts, tmp_path)
    (tmp_path / "artifacts").mkdir()
    shutil.copy(share_run.artifacts / "iris-model.pth", tmp_path / "artifacts")
    runs = {
        case: CHAPTER_SERVER.start("share_model.py", *argv, cwd=tmp_path) for case, (argv, _) in cases.items()
    }
    for case, run in runs.items():
        result, words = run.wait(timeout=120), cases[case][1]
        if words:
            assert_one_line_refusal(result, *words)
            assert result.stdout == "", case
        else:
            assert result.returncode == 0 and result.stderr == "", (case, result.stderr)
            assert ": checked" in result.stdout, case
            if case != "adapter":
                assert result.stdout.strip().endswith("test accuracy 1.000"), case


WITHOUT = {  # the extra left out, and the one line per section that says what is skipped
    "safetensors": ["skipped: needs safetensors (pip install safetensors, the formats extra)"],
    "huggingface_hub": ["PyTorchModelHubMixin: skipped, needs huggingface_hub (the realworld extra)"],
    "torchao": ["skipped: needs torchao (pip install torchao, the quantize extra)"],
}


@pytest.mark.slow  # three fresh interpreters
@pytest.mark.parametrize("module", list(WITHOUT))
def test_the_chapter_runs_without_each_extra_and_says_what_it_skips(share_run, tmp_path, module):
    (tmp_path / "artifacts").mkdir()
    shutil.copy(share_run.artifacts / "iris-model.pth", tmp_path / "artifacts")
    hidden = [module, f"{module}.torch", f"{module}.quantization"]  # importing any of them fails
    hide = f"import sys\nfor name in {hidden}: sys.modules[name] = None\n"
    chapter = str(REPO / "share_model.py")
    run = f"import runpy\nsys.argv = ['share_model.py']\nrunpy.run_path({chapter!r}, run_name='__main__')"
    env = {**SCRIPT_ENV, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", hide + run], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert (result.returncode, result.stderr) == (0, "")
    for line in WITHOUT[module]:
        assert line in result.stdout.splitlines()
    assert (
        "strict=False: missing = the frozen base's 4 keys, unexpected none; same outputs True"
        in result.stdout
    )

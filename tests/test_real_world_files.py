"""inspect_file.py on files other libraries write, made by the real writers at test time.

torch's own legacy writer, torch.jit.save and torch.onnx.export; huggingface_hub's
save_torch_state_dict for sharded folders; numpy.savez; the gguf package's GGUFWriter.
TensorFlow Lite and ExecuTorch files are made by hand, as their formats lay them out: their
writers are not dependencies.
Lightning is too heavy to install for tests: its checkpoint is written here in the layout
Lightning documents, with torch.save. A GPU-saved file is made as chapter 7 makes it
(torch.save with every storage tagged cuda:0), and for real where a GPU exists. Writers
from the `realworld` extra skip, saying so, where it is not installed.

Each file is built once per session and inspected in this process; the README's real-world
report is checked against the script's printed output.
"""

from __future__ import annotations

import codecs
import importlib
import json
import os
import pickle
import random
import re
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from types import ModuleType
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from build_model import Multiclass
from model_inspector import inspection
from model_inspector.files import ModelFileError
from support.cli import EXIT_BAD_INPUT
from tests.bad_files import (
    EXIT_TOO_MUCH_MEMORY,
    gadget_pickle,
    grew_too_much,
    limit_memory,
    stored,
    torch_like_zip,
    write_zip,
)
from tests.helpers import REPO, run_chapter_here, run_in_fork
from tests.test_inspect_file import damaged_copies_get_a_report_or_one_line

INSTALL = "pip install -c constraints.txt '.[realworld]'"


def optional(module: str) -> ModuleType:
    """The module, or a skip that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not installed ({INSTALL})")


def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return Multiclass().state_dict()


def on_meta(**kwargs: int) -> nn.Module:
    with torch.device("meta"):
        return Multiclass(**kwargs)


def report_on(path: Path, model: nn.Module | None = None) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return inspection.inspect_path(path, "Multiclass()" if model else "", model).as_dict()


def shapes_of(report: dict) -> dict[str, list[int]]:
    return {row["name"]: row["shape"] for row in report["contents"]["tensors"]}


EXPECTED_SHAPES = {name: list(tensor.shape) for name, tensor in state().items()}


def save_as_if_on_gpu(obj: object, path: Path, **kwargs: bool) -> None:
    """What torch.save writes for tensors on cuda:0, on any machine (chapter 7 does the same)."""
    with mock.patch.object(torch.serialization, "location_tag", lambda storage: "cuda:0"):
        torch.save(obj, path, **kwargs)


def lightning_checkpoint() -> dict:
    """The layout Lightning's Trainer.save_checkpoint writes (documented in its checkpointing
    guide), for a LightningModule that holds the model as `self.model`."""
    model = Multiclass()
    optimizer = torch.optim.Adam(model.parameters())
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
        "callbacks": {},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"n_hidden": 8, "lr": 0.001},
    }


@pytest.fixture(scope="session")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The files torch itself and NumPy write (always installed)."""
    root = tmp_path_factory.mktemp("real-world")
    model = Multiclass().eval()
    model.load_state_dict(state())
    files = {
        "legacy.pth": lambda p: torch.save(state(), p, _use_new_zipfile_serialization=False),
        "legacy-gpu.pth": lambda p: save_as_if_on_gpu(state(), p, _use_new_zipfile_serialization=False),
        "zip-gpu.pth": lambda p: save_as_if_on_gpu(state(), p),
        "scripted.pt": lambda p: torch.jit.save(torch.jit.script(model), p),
        "traced.pt": lambda p: torch.jit.save(torch.jit.trace(model, torch.randn(2, 4)), p),
        "lightning.ckpt": lambda p: torch.save(lightning_checkpoint(), p),
        "arrays.npz": lambda p: np.savez(p, **{k: v.numpy() for k, v in state().items()}),
        "compressed.npz": lambda p: np.savez_compressed(p, weight=np.ones((3, 4), np.float32)),
        "array.npy": lambda p: np.save(p, np.arange(12, dtype=np.int64).reshape(3, 4)),
        "objects.npy": lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
    }
    paths = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        for name, make in files.items():
            make(root / name)
            paths[name] = root / name
    if torch.cuda.is_available():
        paths["real-gpu.pth"] = root / "real-gpu.pth"
        torch.save({k: v.to("cuda:0") for k, v in state().items()}, paths["real-gpu.pth"])
    return paths


@pytest.fixture(scope="session")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    optional("onnx")
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    model = Multiclass().eval()
    model.load_state_dict(state())
    with warnings.catch_warnings():  # the TorchScript-based exporter is deprecated; it needs no onnxscript
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, 4),),
            path,
            dynamo=False,
            input_names=["features"],
            output_names=["log_probs"],
            dynamic_axes={"features": {0: "batch"}, "log_probs": {0: "batch"}},
        )
    return path


@pytest.fixture(scope="session")
def hub_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    hub = optional("huggingface_hub")
    root = tmp_path_factory.mktemp("hub")
    config = {"architectures": ["IrisMulticlass"], "model_type": "iris-mlp", "torch_dtype": "float32"}
    folders = {}
    for name, safe in (("safetensors", True), ("bin", False)):
        folder = root / name
        folder.mkdir()
        hub.save_torch_state_dict(state(), folder, max_shard_size=150, safe_serialization=safe)
        (folder / "config.json").write_text(json.dumps(config))  # what transformers writes beside them
        folders[name] = folder
    return folders


@pytest.fixture(scope="session")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gguf = optional("gguf")
    path = tmp_path_factory.mktemp("gguf") / "model.gguf"
    writer = gguf.GGUFWriter(path, arch="iris-mlp")
    writer.add_name("Multiclass")
    for name, tensor in state().items():
        writer.add_tensor(name, tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# %%
# Torch's own formats: legacy, GPU-saved, TorchScript, framework checkpoints


def test_a_legacy_file_from_torchs_own_writer_is_listed_and_loads(made):
    report = report_on(made["legacy.pth"], on_meta())
    assert report["kind"] == "legacy-torch"
    assert shapes_of(report) == EXPECTED_SHAPES
    assert report["fit"]["fits"] and report["reasons"] == []
    assert any("no checksums" in caveat for caveat in report["caveats"])


@pytest.mark.parametrize("name", ["legacy-gpu.pth", "zip-gpu.pth"])
def test_a_file_saved_on_a_gpu_names_the_device_and_the_map_location_fix_it_tried(name, made):
    report = report_on(made[name], on_meta())
    assert {row["device"] for row in report["contents"]["tensors"]} == {"cuda:0"}
    assert report["contents"]["devices"] == ["cuda:0"]
    if torch.cuda.is_available():
        assert "map_location" not in report["needs"]
    else:
        with pytest.raises(RuntimeError, match="Attempting to deserialize object on a CUDA device"):
            torch.load(made[name], weights_only=True)
        assert report["needs"]["map_location"] == "cpu"
        assert report["loads_with"] == 'torch.load(path, map_location="cpu", weights_only=True)'
        assert any("which this machine does not have" in note for note in report["integrity"]["notes"])
    loaded = torch.load(made[name], map_location="cpu", weights_only=True)
    assert all(torch.equal(loaded[k], v) for k, v in state().items())
    assert report["reasons"] == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU to save from one for real")
def test_a_file_really_saved_on_a_gpu_is_reported_on_its_device(made):
    report = report_on(made["real-gpu.pth"])
    assert report["contents"]["devices"] == ["cuda:0"] and report["reasons"] == []


@pytest.mark.parametrize("name", ["scripted.pt", "traced.pt"])
def test_torchscript_is_intact_its_tensors_named_and_exit_2_because_loading_runs_its_code(name, made):
    report = report_on(made[name], on_meta())
    assert report["kind"] == "torchscript"
    assert report["integrity"]["problems"] == []
    assert {r["crc32"] for r in report["integrity"]["records"]} == {"ok"}
    with zipfile.ZipFile(made[name]) as archive:  # the code records are deflated, and were checked
        assert any(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
    assert shapes_of(report) == EXPECTED_SHAPES
    assert report["fit"]["fits"]
    assert report["reasons"] == ["TorchScript: torch.jit.load runs the code stored in it"]


def test_a_lightning_checkpoint_is_named_and_fit_gives_the_prefix_and_the_key(made):
    report = report_on(made["lightning.ckpt"], on_meta())
    assert report["contents"]["checkpoint_of"].startswith("a Lightning checkpoint (version 2.5.0)")
    assert report["contents"]["state_dict_key"] == "state_dict"
    assert {"pytorch-lightning_version", "optimizer_states", "hyper_parameters"} <= set(
        report["contents"]["top_level"]
    )
    fit = report["fit"]
    assert fit["prefix_fix"] == "strip the prefix 'model.'"
    assert fit["state_from"] == "state = torch.load(path, weights_only=True)['state_dict']"
    checkpoint = torch.load(made["lightning.ckpt"], weights_only=True)  # the fix, as the report says it
    fixed = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    Multiclass().load_state_dict(fixed)
    assert report_on(made["lightning.ckpt"])["reasons"] == []  # without --model: it loads, exit 0


def test_a_training_loop_checkpoint_is_named_with_the_key_of_its_weights(tmp_path):
    model = Multiclass()
    path = tmp_path / "loop.pth"
    optimizer = torch.optim.Adam(model.parameters())
    torch.save({"epoch": 2, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, path)
    report = report_on(path, on_meta())
    assert report["contents"]["checkpoint_of"] == (
        "a training-loop checkpoint: the weights are under 'model', beside epoch, optimizer"
    )
    assert report["fit"]["fits"] and report["reasons"] == []


def test_a_state_dict_under_a_key_of_any_name_is_found_and_the_key_named(tmp_path):
    model = Multiclass()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    path = tmp_path / "resume.pth"
    torch.save(
        {"model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(), "epoch": 3}, path
    )
    report = report_on(path, on_meta())
    assert report["contents"]["state_dict_key"] == "model_state"
    assert report["fit"]["fits"] and report["reasons"] == []
    assert report["fit"]["state_from"] == "state = torch.load(path, weights_only=True)['model_state']"
    result = run_chapter_here("inspect_file.py", str(path), "--model", "Multiclass", cwd=tmp_path)
    assert result.returncode == 0, result.stdout
    assert "Contents   16 tensors (the state_dict is under 'model_state')" in result.stdout
    assert "holds no state_dict" not in result.stdout
    Multiclass().load_state_dict(torch.load(path, weights_only=True)["model_state"])  # as the report says


def test_of_several_state_dicts_the_one_that_fits_the_model_is_chosen(tmp_path):
    path = tmp_path / "two-models.pth"
    wider = Multiclass(n_hidden=16).state_dict()
    torch.save({"model": wider, "ema": state(), "step": 10}, path)
    report = report_on(path, on_meta())
    assert report["contents"]["state_dict_key"] == "ema"
    assert report["contents"]["other_state_dicts"] == ["model"]
    assert report["fit"]["fits"] and report["reasons"] == []
    alone = report_on(path)  # no model to fit: the usual name first
    assert alone["contents"]["state_dict_key"] == "model"
    assert report_on(path, on_meta(n_hidden=16))["contents"]["state_dict_key"] == "model"


# %%
# torch.save files of other tensor kinds: whatever loads with weights_only=True and holds
# well-formed tensors gets exit 0, and the report names the kind of each tensor


def quantized_state_dict() -> dict:
    """A dynamically quantized model's state_dict: qint8 weights packed with their biases."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    with warnings.catch_warnings():  # quantize_dynamic's notice that torch.ao.quantization moves on
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8).state_dict()


SPARSE = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 3.0]])
OTHER_TENSORS = {  # file -> (what torch.save writes, the rows the report must list: name -> shape, dtype)
    "quantized.pth": (
        quantized_state_dict,
        {"0._packed_params._packed_params.0": ([8, 4], "qint8"), "2.scale": ([], "float32")},
    ),
    "sparse-coo.pth": (SPARSE.to_sparse, {"": ([2, 3], "float32 (sparse_coo)")}),
    "sparse-csr.pth": (SPARSE.to_sparse_csr, {"": ([2, 3], "float32 (sparse_csr)")}),
}


def save_quietly(make: object, path: Path) -> None:
    with warnings.catch_warnings():  # "sparse CSR support is in beta": that is torch's to say
        warnings.simplefilter("ignore")
        torch.save(make(), path)


def load_quietly(path: Path) -> object:
    with warnings.catch_warnings():  # "TypedStorage is deprecated", from torch's own rebuild of qint8
        warnings.simplefilter("ignore")
        return torch.load(path, weights_only=True)


@pytest.mark.parametrize("name", list(OTHER_TENSORS))
def test_a_file_that_loads_with_weights_only_and_is_well_formed_exits_0(name, tmp_path):
    make, rows = OTHER_TENSORS[name]
    path = tmp_path / name
    save_quietly(make, path)
    load_quietly(path)  # torch's own word: it loads, and nothing in it runs
    result = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Verdict    intact, and loads with torch.load(weights_only=True) (exit 0)" in output
    assert "StandIn" not in output and "support." not in output  # this tool's own names stay inside
    listed = {row["name"]: (row["shape"], row["dtype"]) for row in report_on(path)["contents"]["tensors"]}
    assert rows.items() <= listed.items()


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # torch 2.15, on its own load
def test_a_sparse_tensor_with_an_index_past_its_shape_is_refused_whether_torch_checks_it_or_not(tmp_path):
    """torch.load checked sparse indices only when asked to, up to torch 2.13 at least (2.15
    checks them itself): the inspector checks them itself, on every version."""
    path = tmp_path / "forged-sparse.pth"
    indices = torch.tensor([[0, 5], [1, 9]])  # row 5 and column 9 of a (2, 3) tensor
    torch.save(torch.sparse_coo_tensor(indices, torch.ones(2), (2, 3), check_invariants=False), path)
    with pytest.raises(RuntimeError), torch.sparse.check_sparse_tensor_invariants():
        torch.load(path, weights_only=True)
    (reason,) = report_on(path)["reasons"]
    assert "found index 5" in reason


@pytest.mark.filterwarnings("ignore:Validating sparse tensor invariants")  # torch 2.15, on its own load
def test_a_sparse_weight_does_not_fit_the_dense_parameter_it_stands_for(tmp_path):
    path = tmp_path / "sparse-weight.pth"
    weights = {**state(), "hidden.weight": state()["hidden.weight"].to_sparse()}
    torch.save(weights, path)
    with pytest.raises(RuntimeError, match=r"hidden\.weight"):  # what load_state_dict says
        Multiclass().load_state_dict(torch.load(path, weights_only=True))
    report = report_on(path, on_meta())
    assert report["fit"]["mismatched"] == [
        {"name": "hidden.weight", "file": "(8, 4) float32 (sparse_coo)", "model": "(8, 4) float32"}
    ]
    assert report_on(path)["reasons"] == []  # without a model to fit: a sparse weight loads fine


def test_a_pickle_protocol_torch_cannot_read_is_named_and_the_tensors_still_listed(tmp_path):
    path = tmp_path / "protocol-5.pth"
    torch.save(state(), path, pickle_protocol=5)
    with pytest.raises(Exception, match="Unsupported operand 149"):  # 149: FRAME, from protocol 4 on
        load_quietly(path)  # torch warns first that protocol 5 may not be read
    report = report_on(path)
    assert report["reasons"] == [
        "torch.load(weights_only=True) refuses it: its pickle uses FRAME, an opcode of pickle protocol 4 "
        "that weights_only's unpickler lacks; torch.save writes protocol 2 unless given pickle_protocol=4 "
        "or higher: save it again without that argument"
    ]
    assert shapes_of(report) == EXPECTED_SHAPES  # read from the pickle's opcodes: nothing loaded
    resaved = tmp_path / "protocol-2.pth"  # the advice, followed
    torch.save(torch.load(path, weights_only=False), resaved)  # our own file: safe to load fully
    assert report_on(resaved)["reasons"] == []


def save_dtensors(path: Path, store: Path) -> None:
    """torch.save of {'w': a DTensor}, from a one-process gloo group on the CPU, torn down after."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    dist.init_process_group("gloo", store=dist.FileStore(str(store), 1), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        torch.save({"w": distribute_tensor(torch.arange(6.0).reshape(2, 3), mesh, [Replicate()])}, path)
    finally:
        dist.destroy_process_group()


LOAD_DTENSORS = """
import sys, torch
from model_inspector.files import describe_load_error
try:
    torch.load(sys.argv[1], weights_only=True)
except Exception as err:
    print("plain:", describe_load_error(err))
import torch.distributed.tensor
print("after the import:", type(torch.load(sys.argv[1], weights_only=True)["w"]).__name__)
"""


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch has no torch.distributed")
def test_a_dtensor_file_gets_the_import_that_makes_it_load_not_a_wrong_format(tmp_path):
    path = tmp_path / "dtensor.pth"
    save_dtensors(path, tmp_path / "store")
    fresh = subprocess.run(  # a fresh process: this one has imported torch.distributed.tensor already
        [sys.executable, "-c", LOAD_DTENSORS, str(path)], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert fresh.stdout.splitlines() == [  # what the chapters' loader says, and what the import changes
        "plain: its tensors are DTensors, which weights_only reads once torch.distributed.tensor is imported",
        "after the import: DTensor",
    ]
    report = report_on(path)
    (reason,) = report["reasons"]
    assert reason.startswith(
        "it holds DTensors: torch.load(weights_only=True) refuses their classes (DTensor"
    )
    assert reason.endswith(
        "`import torch.distributed.tensor` and then torch.load(path, weights_only=True) loads it (tried)"
    )
    assert list(report["needs"]["import_first"]) == ["torch.distributed.tensor"]
    assert "torch.distributed.tensor.DTensor" in report["needs"]["not_allowed_by_weights_only"]
    assert shapes_of(report) == {"w": [2, 3]}
    result = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    assert "not a PyTorch weights file" not in result.stdout and "DeviceMesh occurred" not in result.stderr


# %%
# Formats that carry code: named as such, with what would run it, exit 2

PACKAGED_SOURCE = """
import os
from torch import nn

if "PACKAGE_MARKER" in os.environ:  # the proof that loading the package runs this source
    open(os.environ["PACKAGE_MARKER"], "w").close()


class PackagedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
"""


def test_a_torch_package_is_named_as_code_and_what_runs_it(tmp_path, monkeypatch):
    (tmp_path / "packaged_net.py").write_text(PACKAGED_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "packaged_net", raising=False)  # gone again after the test
    packaged_net = importlib.import_module("packaged_net")
    path = tmp_path / "net.pt"
    with torch.package.PackageExporter(path) as exporter, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "TypedStorage is deprecated", from the exporter itself
        exporter.extern(["torch", "torch.**"])
        exporter.intern("packaged_net")
        exporter.save_pickle("model", "model.pkl", packaged_net.PackagedNet())
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("PACKAGE_MARKER", str(marker))
    result = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT and not marker.exists()
    report = report_on(path)
    assert report["kind"] == "torch-package" and report["integrity"]["problems"] == []
    (reason,) = report["reasons"]
    assert reason.startswith(
        "a torch.package archive, a format that carries code: torch.package.PackageImporter imports the "
        "Python source in it (packaged_net.py) and unpickles model/model.pkl with it, running that code"
    )
    assert "packaged_net.PackagedNet" in report["needs"]["globals"]
    torch.package.PackageImporter(path).load_pickle("model", "model.pkl")  # what the report says it does
    assert marker.exists()


def write_aoti_like(path: Path, folder: Path) -> None:
    """A .pt2 as torch's own writer lays out an AOTInductor package (the compiled library, its
    C++ source), beside an exported program; the library's bytes are a stand-in, never loaded."""
    library, source = folder / "model.wrapper.so", folder / "model.wrapper.cpp"
    library.write_bytes(b"\x7fELF" + bytes(60))
    source.write_text("// AOTInductor's generated C++\n")
    from torch.export.pt2_archive._package import package_pt2

    program = torch.export.export(Multiclass().eval(), (torch.randn(2, 4),))
    package_pt2(path, exported_programs=program, aoti_files={"model": [str(library), str(source)]})


def test_an_aotinductor_package_is_named_as_compiled_code(tmp_path):
    path = tmp_path / "compiled.pt2"
    write_aoti_like(path, tmp_path)
    with zipfile.ZipFile(path) as archive:
        assert any(name.endswith("/data/aotinductor/model/model.wrapper.so") for name in archive.namelist())
    report = report_on(path)
    assert report["kind"] == "aoti" and report["integrity"]["problems"] == []
    assert report["reasons"][0] == (
        "an AOTInductor package, a format that carries code: torch._inductor.aoti_load_package loads its "
        "compiled library (data/aotinductor/model/model.wrapper.so) into the process, and that runs; "
        "there is no safe way to load it: use it only if you trust where it came from"
    )
    assert report["reasons"][1].startswith("it also holds an exported program (models/model.json)")
    assert report["needs"]["weights_only"].startswith("not applicable: torch._inductor.aoti_load_package")
    assert shapes_of(report) == EXPECTED_SHAPES  # the exported program's weights, from their JSON
    assert run_chapter_here("inspect_file.py", str(path), cwd=tmp_path).returncode == EXIT_BAD_INPUT


@pytest.mark.slow
def test_a_real_aotinductor_package_is_named_as_compiled_code_that_torch_export_load_cannot_read(tmp_path):
    """aoti_compile_and_package itself: a C++ compiler, about a minute on a small CPU."""
    program = torch.export.export(Multiclass().eval(), (torch.randn(2, 4),))
    with warnings.catch_warnings():  # torch's own deprecation notices from inside the compiler
        warnings.simplefilter("ignore")
        made = torch._inductor.aoti_compile_and_package(program, package_path=str(tmp_path / "real.pt2"))
    path = Path(made)
    report = report_on(path)
    assert report["kind"] == "aoti"
    assert report["reasons"][0].startswith("an AOTInductor package, a format that carries code")
    assert ".so) into the process" in report["reasons"][0]
    assert report["reasons"][1] == (
        "it holds no exported program (models/*.json): torch.export.load cannot read it"
    )
    with pytest.raises(RuntimeError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.load(path)


# %%
# A training library's RNG-state file: torch.save of numpy's and Python's generator states,
# which the library loads itself with weights_only=True and numpy's rebuilders allowed. The
# inspector's allowlisting advice is that library's own list, named as its own; accelerate
# and transformers are not installed for the tests, so each file is written here with the
# calls the library makes, and loaded here as the library loads it.


def accelerate_random_states() -> dict:
    """What accelerate's save_accelerator_state (accelerate 1.16.0, checkpointing.py) saves on
    a machine without an accelerator, with its calls:
        states["step"] = step
        states["random_state"] = random.getstate()
        states["numpy_random_seed"] = np.random.get_state()
        states["torch_manual_seed"] = torch.get_rng_state()
        # + states[f"torch_{device_type}_manual_seed"] on a GPU, states["xm_seed"] on XLA
        torch.save(states, output_dir.joinpath(f"{RNG_STATE_NAME}_{process_index}.pkl"))
    with RNG_STATE_NAME = "random_states" (utils/constants.py): random_states_0.pkl."""
    return {
        "step": 0,
        "random_state": random.getstate(),
        "numpy_random_seed": np.random.get_state(),
        "torch_manual_seed": torch.get_rng_state(),
    }


def accelerate_allowlist() -> list:
    """accelerate/utils/other.py's TORCH_SAFE_GLOBALS, built as accelerate builds it:
    np_core = np._core if is_numpy_available("2.0.0") else np.core
    [np_core.multiarray._reconstruct, np.ndarray, encode, np.dtype] (+ np.dtypes.UInt32DType
    from numpy 1.25); its load() adds them with add_safe_globals around torch.load."""
    np_core = np._core if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else np.core
    allowlist = [np_core.multiarray._reconstruct, np.ndarray, codecs.encode, np.dtype]
    if np.lib.NumpyVersion(np.__version__) >= "1.25.0":
        allowlist.append(np.dtypes.UInt32DType)
    return allowlist


def transformers_rng_state() -> dict:
    """What transformers' Trainer._save_rng_state (src/transformers/trainer.py) saves without a
    GPU: {"python": random.getstate(), "numpy": np.random.get_state(), "cpu":
    torch.random.get_rng_state()}, to rng_state.pth when world_size <= 1."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.random.get_rng_state(),
    }


def transformers_allowlist() -> list:
    """transformers/trainer.py's safe_globals(), which Trainer._load_rng_state wraps torch.load in."""
    np_core = np._core if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else np.core
    return [np_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


RNG_FILES = {  # library: (the name it saves under, what it saves, the list it loads with)
    "accelerate": ("random_states_0.pkl", accelerate_random_states, accelerate_allowlist),
    "transformers' Trainer": ("rng_state.pth", transformers_rng_state, transformers_allowlist),
}


def names_of(allowlist: list) -> list[str]:
    """The names torch matches a file's globals against: module and qualified name."""
    return [f"{item.__module__}.{item.__qualname__}" for item in allowlist]


@pytest.mark.parametrize("library", list(RNG_FILES))
def test_a_librarys_rng_state_file_gets_that_librarys_own_allowlist_never_never_allow(library, tmp_path):
    file_name, states, allowlist = RNG_FILES[library]
    path = tmp_path / file_name
    torch.save(states(), path)
    with torch.serialization.safe_globals(allowlist()):  # what the library does to load it
        assert torch.load(path, weights_only=True).keys() == states().keys()
    result = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT  # torch.load(weights_only=True) alone refuses it
    advice = f"{library} loads this file with weights_only=True, allowing: {', '.join(names_of(allowlist()))}"
    assert f"{advice} (its own list, " in result.stdout
    assert "allow them only if you trust the file's source" in result.stdout
    assert "never allow" not in result.stdout
    report = report_on(path)
    needs = report["needs"]
    assert needs["library_load"]["allows"] == names_of(allowlist()) and needs["library_load"]["refuses"] == []
    assert set(needs["not_allowed_by_weights_only"]) <= set(names_of(allowlist()))
    assert needs["never_allow"] == needs["safe_globals_needed"] == needs["data_only"] == []
    assert any(reason.startswith("torch.load(weights_only=True) refuses it") for reason in report["reasons"])


def test_the_same_states_under_another_name_get_no_librarys_word_for_them(tmp_path):
    path = tmp_path / "states.pt"
    torch.save(accelerate_random_states(), path)
    needs = report_on(path)["needs"]
    assert needs["library_load"] is None
    assert needs["data_only"] == needs["not_allowed_by_weights_only"] and needs["never_allow"] == []


class RunsCommand:
    """Unpickling this calls os.system (posix.system on Linux) with `command`."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


@pytest.mark.parametrize("as_named", ["os.system", "the states and os.system"])
def test_a_random_states_file_naming_os_system_is_never_allow_and_accelerate_refuses_it(as_named, tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "random_states_0.pkl"
    if as_named == "os.system":
        torch_like_zip(path, gadget_pickle("os", "system", f"touch {marker}"))
        system = "os.system"
    else:
        torch.save({**accelerate_random_states(), "step": RunsCommand(f"touch {marker}")}, path)
        system = f"{os.system.__module__}.system"
    result = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
    assert result.returncode == EXIT_BAD_INPUT
    needs = report_on(path)["needs"]
    assert needs["never_allow"] == [system]
    assert needs["library_load"]["refuses"] == [system]
    assert re.search(rf"never allow: +{re.escape(system)} \(these run code\)", result.stdout)
    assert f"accelerate's own load refuses this file too: {system} is not on its list" in result.stdout
    assert "accelerate loads this file" not in result.stdout
    assert not marker.exists()


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.0.0", reason="needs numpy 2")
def test_a_random_states_file_from_numpy_1_is_one_accelerate_refuses_under_numpy_2(tmp_path):
    """accelerate picks numpy.core or numpy._core by the numpy it runs with, and torch matches
    names as strings: a file numpy 1 wrote names numpy.core, which its list lacks here."""
    written = tmp_path / "written.pkl"
    torch.save(accelerate_random_states(), written)
    path = tmp_path / "random_states_0.pkl"
    with zipfile.ZipFile(written) as archive:
        records = [
            stored(info.filename, archive.read(info).replace(b"numpy._core.", b"numpy.core."))
            for info in archive.infolist()
        ]
    write_zip(path, records)
    with torch.serialization.safe_globals(accelerate_allowlist()), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    result = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
    assert "accelerate allows numpy.core.multiarray._reconstruct only under numpy 1" in result.stdout
    assert "never allow" not in result.stdout  # still data to trust, not code


def short_object_array_states() -> bytes:
    """A pickle that rebuilds a numpy object array of 3 items from a list of none, with only
    the globals on accelerate's list. numpy 2.4.6's ndarray.__setstate__ reads past such a list
    and crashes the process: accelerate's own load of this file, weights_only=True and all,
    dies with SIGSEGV. The inspector must never load it with numpy's rebuilders allowed."""

    def named(module: str, name: str) -> bytes:
        return b"c" + f"{module}\n{name}\n".encode()

    def text(value: str) -> bytes:
        return b"X" + len(value).to_bytes(4, "little") + value.encode()

    core = "numpy._core" if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else "numpy.core"
    empty_array = (
        named(f"{core}.multiarray", "_reconstruct") + named("numpy", "ndarray") + b"K\x00\x85"
        + named("_codecs", "encode") + text("b") + text("latin1") + b"\x86R\x87R"
    )  # fmt: skip
    object_dtype = named("numpy", "dtype") + text("O") + b"\x89\x88\x87R"
    return b"\x80\x02" + empty_array + b"(K\x01K\x03\x85" + object_dtype + b"\x89]tb."


def test_a_forged_random_states_file_that_crashes_numpy_is_reported_not_loaded(tmp_path):
    path = tmp_path / "random_states_0.pkl"
    torch_like_zip(path, short_object_array_states())
    code, output = run_in_fork(inspect_hostile_in_child, path, tmp_path, cwd=tmp_path, timeout=60)
    assert code == EXIT_BAD_INPUT, output  # not -11: nothing here ran numpy's unpickling of it
    assert "accelerate loads this file with weights_only=True" in output
    assert "allow them only if you trust the file's source" in output


# %%
# Other libraries' formats: named for what they are, with what reads them, exit 2


def test_numpy_files_are_named_with_their_arrays_and_object_arrays_need_pickle(made):
    npz = report_on(made["arrays.npz"])
    assert npz["format"] == "NumPy archive (.npz) of 4 arrays"
    assert shapes_of(npz) == EXPECTED_SHAPES
    assert npz["reasons"] == [npz["other_format"]] and "numpy.load" in npz["other_format"]
    compressed = report_on(made["compressed.npz"])
    assert compressed["integrity"]["problems"] == [] and compressed["reasons"] == [compressed["other_format"]]
    assert shapes_of(report_on(made["array.npy"])) == {"array": [3, 4]}
    objects = report_on(made["objects.npy"])
    assert any("allow_pickle=True" in reason for reason in objects["reasons"])


def test_an_onnx_export_lists_producer_opset_io_and_initializers(onnx_file):
    report = report_on(onnx_file, on_meta())
    assert report["kind"] == "onnx"
    assert report["metadata"]["onnx"]["producer"].startswith("pytorch ")
    assert report["metadata"]["onnx"]["opset"].startswith("ai.onnx ")
    assert report["metadata"]["inputs"] == {"features": "[batch, 4] float32"}
    assert report["metadata"]["outputs"] == {"log_probs": "[batch, 3] float32"}
    assert shapes_of(report) == EXPECTED_SHAPES
    assert report["fit"]["fits"]
    assert report["reasons"] == [report["other_format"]]


def onnx_with_constants() -> object:
    """A model whose weights are Constant nodes, not initializers, as some exporters write
    them: a tensor `value`, a `value_float` and a `value_ints` (onnx.helper, the onnx
    package's own writer; torch.onnx.export keeps weights as initializers)."""
    onnx = optional("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    nodes = [
        helper.make_node("Constant", [], ["W"], value=weight),
        helper.make_node("Constant", [], ["scale"], value_float=0.5),
        helper.make_node("Constant", [], ["shape"], value_ints=[-1, 3]),
        helper.make_node("MatMul", ["features", "W"], ["product"]),
        helper.make_node("Mul", ["product", "scale"], ["scaled"]),
        helper.make_node("Reshape", ["scaled", "shape"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constants",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])],
    )
    model = helper.make_model(graph)
    onnx.checker.check_model(model)
    return model


CONSTANT_ROWS = [
    {"name": "W", "shape": [4, 3], "dtype": "float32", "device": "", "bytes": 48, "shares": None},
    {"name": "scale", "shape": [], "dtype": "float32", "device": "", "bytes": 4, "shares": None},
    {"name": "shape", "shape": [2], "dtype": "int64", "device": "", "bytes": 16, "shares": None},
]


def test_an_onnx_model_whose_weights_are_constant_nodes_lists_them(tmp_path):
    onnx = optional("onnx")
    path = tmp_path / "constants.onnx"
    onnx.save(onnx_with_constants(), path)
    report = report_on(path)
    assert report["contents"]["tensors"] == CONSTANT_ROWS
    assert report["contents"]["storage_bytes"] == 68
    assert report["contents"]["note"] == "3 of them are the values of Constant nodes, not initializers"
    assert report["reasons"] == [report["other_format"]]


def test_onnx_tensors_of_packed_types_and_strings_are_sized_as_onnx_stores_them(tmp_path):
    """ONNX packs 2-, 4- and 6-bit values into bytes, rounding the tensor up to a whole byte
    (numpy_helper.from_array writes them so); a string tensor holds its strings."""
    onnx = optional("onnx")
    from onnx import TensorProto, helper, numpy_helper

    made = {  # name: (ONNX type, dims, values, bytes)
        "int4": (TensorProto.INT4, [3], [1, -2, 3], 2),
        "fp4": (TensorProto.FLOAT4E2M1, [4, 4], [0.5] * 16, 8),
        "uint2": (TensorProto.UINT2, [5], [1, 2, 3, 0, 1], 2),
        "fp6": (TensorProto.FLOAT6E2M3, [4], [1.0] * 4, 3),
    }
    tensors = []
    for name, (kind, dims, values, nbytes) in made.items():
        array = numpy_helper.to_array(helper.make_tensor(name, kind, dims, values))
        tensors.append(numpy_helper.from_array(array, name))
        assert len(tensors[-1].raw_data) == nbytes  # what onnx stores
    tensors.append(helper.make_tensor("words", TensorProto.STRING, [2], [b"ab", b"cde"]))
    graph = helper.make_graph(
        [helper.make_node("Identity", [t.name], [f"{t.name}_out"]) for t in tensors],
        "packed",
        [],
        [helper.make_tensor_value_info(f"{t.name}_out", t.data_type, t.dims) for t in tensors],
        tensors,
    )
    path = tmp_path / "packed.onnx"
    onnx.save(helper.make_model(graph), path)
    report = report_on(path)
    sizes = {row["name"]: (row["dtype"], row["bytes"]) for row in report["contents"]["tensors"]}
    assert sizes == {
        "int4": ("int4", 2),
        "fp4": ("float4_e2m1fn", 8),
        "uint2": ("uint2", 2),
        "fp6": ("float6_e2m3fn", 3),
        "words": ("string", 5),
    }
    assert report["reasons"] == [report["other_format"]]


def save_with_external_data(model: object, folder: Path, **kwargs: bool) -> Path:
    """The model saved as onnx.save_model saves a large one: every tensor in weights.bin."""
    onnx = optional("onnx")
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(
        model,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
        **kwargs,
    )
    onnx.checker.check_model(path)  # onnx itself accepts it
    return path


def test_an_onnx_model_with_valid_external_data_is_read_from_any_folder(onnx_file, tmp_path):
    """onnx.checker finds external data beside the model only when it is given the model's
    path: given the parsed model it looked in the current folder ("not regular file")."""
    onnx = optional("onnx")
    path = save_with_external_data(onnx.load(onnx_file), tmp_path / "exported")
    report = report_on(path, on_meta())
    assert report["metadata"]["external data"] == {
        "weights.bin": f"{(path.parent / 'weights.bin').stat().st_size} bytes"
    }
    assert shapes_of(report) == EXPECTED_SHAPES and report["fit"]["fits"]
    assert report["reasons"] == [report["other_format"]]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = run_chapter_here("inspect_file.py", str(path), "--model", "Multiclass", cwd=elsewhere)
    assert run.returncode == EXIT_BAD_INPUT
    assert "onnx.checker.check_model passes" in run.stdout
    assert "\nVerdict    not for torch.load (exit 2):\n  - ONNX model" in run.stdout
    constants = save_with_external_data(onnx_with_constants(), tmp_path / "constants", convert_attribute=True)
    report = report_on(constants)
    assert report["contents"]["tensors"] == CONSTANT_ROWS and report["reasons"] == [report["other_format"]]
    assert "weights.bin" in report["metadata"]["external data"]


def test_external_data_that_links_out_of_the_folder_is_still_refused(onnx_file, tmp_path):
    onnx = optional("onnx")
    path = save_with_external_data(onnx.load(onnx_file), tmp_path / "exported")
    outside = tmp_path / "outside.bin"
    outside.write_bytes((path.parent / "weights.bin").read_bytes())
    (path.parent / "weights.bin").unlink()
    (path.parent / "weights.bin").symlink_to(outside)
    with pytest.raises(ModelFileError, match=re.escape("weights.bin, a link that leaves the model's folder")):
        report_on(path)


def test_a_constants_external_data_outside_the_folder_is_refused_naming_the_node(tmp_path):
    onnx = optional("onnx")
    model = onnx_with_constants()
    path = save_with_external_data(model, tmp_path / "constants", convert_attribute=True)
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.node[0].attribute[0].t.external_data:
        if entry.key == "location":
            entry.value = "../../etc/passwd"
    onnx.save(model, path)
    refusal = "node Constant's value's external data is ../../etc/passwd, which leaves the model's folder"
    with pytest.raises(ModelFileError, match=re.escape(refusal)):
        report_on(path)


def test_an_onnx_file_swapped_before_the_checker_reads_it_again_is_one_line(onnx_file, tmp_path, monkeypatch):
    """onnx.checker reads the model by its name: if the name now leads to another file, the
    report would mix two files. It is refused instead."""
    onnx = optional("onnx")
    path, other = tmp_path / "model.onnx", tmp_path / "other.onnx"
    path.write_bytes(onnx_file.read_bytes())
    onnx.save(onnx_with_constants(), other)
    real_check = onnx.checker.check_model

    def swap_then_check(model, *args, **kwargs):
        other.replace(path)
        return real_check(model, *args, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", swap_then_check)
    with pytest.raises(
        ModelFileError, match=re.escape(f"{path} refused: it changed while it was being read")
    ):
        report_on(path)


def onnx_with_external_data(folder: Path, location: str) -> Path:
    onnx = optional("onnx")
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [weight],
    )
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph), path)
    return path


def nested_graphs(depth: int) -> bytes:
    """ModelProto.graph -> node -> attribute -> g -> node -> ..., `depth` levels, as raw protobuf."""

    def field(number: int, payload: bytes) -> bytes:
        length, size = b"", len(payload)
        while True:
            length += bytes([(size & 0x7F) | (0x80 if size > 0x7F else 0)])
            size >>= 7
            if not size:
                break
        return bytes([number << 3 | 2]) + length + payload

    graph = b""
    for _ in range(depth):
        attribute = field(1, b"g") + field(6, graph)  # AttributeProto: name, g
        graph = field(1, field(5, attribute))  # GraphProto.node[0].attribute[0]
    return b"\x08\x09" + field(7, graph)  # ir_version 9, then the graph


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: onnx_with_external_data(d, "../../etc/passwd"), "leaves the model's folder"),
        (lambda d: onnx_with_external_data(d, "/etc/passwd"), "is the absolute path /etc/passwd"),
        (
            lambda d: (d / "model.onnx").write_bytes(nested_graphs(5000)) and d / "model.onnx",
            "not a well-formed",
        ),
        (
            lambda d: (
                (d / "model.onnx").write_bytes(b"\x08\x09\x3a\xff\xff\xff\xff\x0f") and d / "model.onnx"
            ),
            "not a well-formed",
        ),
    ],
    ids=["external ../../etc/passwd", "external absolute", "graphs nested 5000 deep", "a 4 GiB length claim"],
)
def test_a_hostile_onnx_file_is_refused_in_one_line_and_nothing_is_read_outside(make, words, tmp_path):
    optional("onnx")
    path = make(tmp_path)
    with pytest.raises(ModelFileError) as refused:
        report_on(path)
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_an_onnx_file_larger_than_one_protobuf_may_be_is_refused_before_parsing(tmp_path):
    optional("onnx")
    path = tmp_path / "huge.onnx"
    with path.open("wb") as file:  # sparse: no disk used
        file.write(b"\x08\x09\x12\x07pytorch")
        file.truncate(2**31)
    with pytest.raises(ModelFileError, match="more than the 2147483647 one ONNX protobuf may hold"):
        report_on(path)


def test_a_gguf_file_is_named_with_its_tensors_and_architecture(gguf_file):
    report = report_on(gguf_file)
    assert report["kind"] == "gguf"
    assert report["metadata"]["gguf"]["general.architecture"] == "iris-mlp"
    assert report["metadata"]["gguf"]["general.name"] == "Multiclass"
    assert shapes_of(report) == EXPECTED_SHAPES
    assert report["reasons"] == [report["other_format"]]


def test_a_gguf_header_claiming_10_to_the_12_tensors_is_refused_without_reading_them(tmp_path):
    path = tmp_path / "forged.gguf"
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (10**12).to_bytes(8, "little") + bytes(16))
    with pytest.raises(ModelFileError, match="claims 1000000000000 tensors"):
        report_on(path)


def test_an_hdf5_file_and_a_keras_archive_are_named(tmp_path):
    hdf5 = tmp_path / "model.h5"  # the HDF5 signature: h5py is not needed to be named
    hdf5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(504))
    assert report_on(hdf5)["kind"] == "hdf5"
    keras = tmp_path / "model.keras"  # Keras 3's documented archive layout
    with zipfile.ZipFile(keras, "w") as archive:
        for name in ("config.json", "metadata.json", "model.weights.h5"):
            archive.writestr(name, "{}")
    report = report_on(keras)
    assert report["kind"] == "keras" and report["reasons"] == [report["other_format"]]


def flatbuffer(identifier: bytes, root: int = 12, header: bytes = b"", segment: bytes = b"") -> bytes:
    """A minimal valid FlatBuffer: the root table's offset, the file identifier, an optional
    header (ExecuTorch's), a vtable of no fields and an empty root table that points back to
    it; then optional data after it. Made by hand: neither TensorFlow Lite's writer (tensorflow,
    ai-edge-litert) nor ExecuTorch's (executorch) is a dependency of this project, nor is the
    flatbuffers package, and each is far too large to install for a test."""
    vtable = 8 + len(header)
    root = max(root, vtable + 4)
    body = header + (4).to_bytes(2, "little") * 2  # the vtable: its size, the table's size
    body = body.ljust(root - 8, b"\0") + (root - vtable).to_bytes(4, "little", signed=True)
    return root.to_bytes(4, "little") + identifier + body + segment


def executorch_header(program: int, segments: int) -> bytes:
    """ExecuTorch's extended header (schema/extended_header.h): magic, its length, the
    program's size and where the data segments begin."""
    return (
        b"eh00" + (24).to_bytes(4, "little") + program.to_bytes(8, "little") + segments.to_bytes(8, "little")
    )


def test_tensorflow_lite_and_executorch_files_are_named_with_what_reads_them(tmp_path, capsys):
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(flatbuffer(b"TFL3"))
    report = report_on(tflite)
    assert report["kind"] == "tflite" and report["format"].startswith("TensorFlow Lite model")
    assert report["reasons"] == [report["other_format"]] and "Interpreter" in report["other_format"]
    pte = tmp_path / "model.pte"
    pte.write_bytes(flatbuffer(b"ET12", header=executorch_header(40, 48)).ljust(48, b"\0") + bytes(16))
    report = report_on(pte)
    assert report["kind"] == "executorch" and "identifier ET12" in report["format"]
    assert report["metadata"]["executorch"] == {"program": "40 bytes", "data segments": "from byte 48"}
    shown = "\nMetadata\n  executorch: program=40 bytes, data segments=from byte 48\n"
    assert shown in run_chapter_here("inspect_file.py", str(pte), cwd=tmp_path).stdout
    assert report["reasons"] == [report["other_format"]] and "load_program" in report["other_format"]
    for path in (tflite, pte):
        run = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
        assert run.returncode == EXIT_BAD_INPUT
        assert "\nVerdict    not for torch.load (exit 2):\n" in run.stdout, run.stdout
        assert "Contents" not in run.stdout  # nothing is said of tensors not read
        damaged_copies_get_a_report_or_one_line(path, tmp_path, capsys)


def test_a_flatbuffer_that_begins_like_a_pickle_is_named_by_its_identifier(tmp_path):
    """A root offset of 640 is the bytes 80 02: a pickle's protocol 2 opcode. The identifier
    at bytes 4..8 says more than those two bytes."""
    path = tmp_path / "model.tflite"
    path.write_bytes(flatbuffer(b"TFL3", root=640))
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert report_on(path)["kind"] == "tflite"


def test_a_cut_executorch_program_and_a_flatbuffer_with_its_root_outside_are_refused(tmp_path):
    pte = tmp_path / "cut.pte"
    pte.write_bytes(flatbuffer(b"ET12", header=executorch_header(40, 4096)))
    assert "; the file has 40: cut short" in report_on(pte)["reasons"][0]
    tflite = tmp_path / "cut.tflite"
    tflite.write_bytes(flatbuffer(b"TFL3", root=640)[:100])
    assert report_on(tflite)["reasons"][0] == (
        "its FlatBuffer root table offset, 640, lies outside its 100 bytes: cut short or damaged"
    )


# %%
# Sharded folders written by huggingface_hub


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_a_sharded_folder_lists_every_shard_and_its_config_and_loads(kind, hub_folders):
    folder = hub_folders[kind]
    report = report_on(folder, on_meta())
    shards = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin"))
    assert len(shards) > 1  # max_shard_size forced real shards
    assert [r["name"] for r in report["integrity"]["records"]] == shards
    assert {r["verdict"] for r in report["integrity"]["records"]} == {"ok"}
    assert shapes_of(report) == EXPECTED_SHAPES
    assert report["metadata"]["config.json"]["architectures"] == "IrisMulticlass"
    assert "the index's total_size, 268 bytes, matches the shards' tensors" in report["integrity"]["notes"]
    assert report["fit"]["fits"] and report["reasons"] == []


def copy_folder(folder: Path, to: Path) -> Path:
    to.mkdir()
    for path in folder.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


def edit_index(folder: Path, change) -> None:
    index = next(folder.glob("*.index.json"))
    data = json.loads(index.read_text())
    change(data["weight_map"])
    index.write_text(json.dumps(data))


def test_a_sharded_folder_is_checked_against_its_index(hub_folders, tmp_path):
    folder = copy_folder(hub_folders["safetensors"], tmp_path / "missing")
    first = sorted(folder.glob("*.safetensors"))[0]
    first.unlink()
    reasons = report_on(folder)["reasons"]
    assert any(f"shards the index names are not in the folder: ['{first.name}']" in r for r in reasons)
    folder = copy_folder(hub_folders["safetensors"], tmp_path / "extra-name")
    edit_index(folder, lambda weights: weights.update({"ghost.weight": next(iter(weights.values()))}))
    assert any(
        "tensors the index names are not in their shard: ['ghost.weight']" in r
        for r in report_on(folder)["reasons"]
    )
    folder = copy_folder(hub_folders["safetensors"], tmp_path / "unlisted")
    edit_index(folder, lambda weights: weights.pop("output.bias"))
    assert any(
        "tensors in the shards that the index does not name: ['output.bias']" in r
        for r in report_on(folder)["reasons"]
    )


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors"])
def test_an_index_naming_a_shard_outside_the_folder_is_refused_before_opening_it(
    shard, hub_folders, tmp_path
):
    folder = copy_folder(hub_folders["safetensors"], tmp_path / "forged")
    edit_index(folder, lambda weights: weights.update({"hidden.weight": shard}))
    with pytest.raises(ModelFileError, match="which is not a file in the folder"):
        report_on(folder)


def with_extra(
    folder: Path, to: Path, name: str, content: bytes | None = None, link: str | None = None
) -> Path:
    copy = copy_folder(folder, to)
    if link is not None:
        (copy / name).symlink_to(link)
    else:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_bytes(content or b"")
    return copy


CONFIG_WITH_AUTO_MAP = json.dumps(
    {"architectures": ["Iris"], "auto_map": {"AutoModel": "modeling_iris.IrisModel"}}
)
NESTED_AUTO_MAP = json.dumps({"text_config": {"auto_map": {"AutoModel": "modeling_iris.IrisModel"}}})


@pytest.mark.parametrize(
    ("name", "content", "link", "words"),
    [
        ("config.json", CONFIG_WITH_AUTO_MAP.encode(), None, "config.json has an auto_map"),
        ("sub/config.json", CONFIG_WITH_AUTO_MAP.encode(), None, "sub/config.json has an auto_map"),
        ("config.json", NESTED_AUTO_MAP.encode(), None, "config.json has an auto_map"),
        ("modeling_iris.py", b"import os\n", None, "modeling_iris.py is Python code"),
        ("Modeling_Iris.PY", b"import os\n", None, "Modeling_Iris.PY is Python code"),
        ("custom.so", b"\x7fELF\x02\x01\x01" + bytes(9), None, "custom.so is a native library"),
        ("kernels.bin.tar", b"\x7fELF\x02\x01\x01" + bytes(9), None, "kernels.bin.tar is a native library"),
        ("pytorch_model.bin", None, None, "pytorch_model.bin is a pickle-based weights file"),
        ("pytorch_model.bin.tar", None, None, "pytorch_model.bin.tar is a pickle-based weights file"),
        ("tokenizer.json", None, "/etc/passwd", "tokenizer.json is not followed: a link out of the folder"),
        ("loop.json", None, "loop.json", "loop.json is not followed: a link loop"),
    ],
    ids=[
        "auto_map",
        "auto_map in a subfolder",
        "auto_map nested",
        "python file",
        "python file, upper case",
        "native library",
        "native library, another name",
        "pickle weights beside",
        "pickle weights, another name",
        "link outside",
        "link loop",
    ],
)
def test_a_sharded_folder_gets_exit_0_only_when_every_file_is_accounted_for(
    name, content, link, words, hub_folders, tmp_path
):
    """What a loader would run or unpickle beside the shards is named, and refused."""
    if name.startswith(
        "pytorch_model.bin"
    ):  # a real torch.save file, as transformers wrote before safetensors
        content_path = tmp_path / "weights.bin"
        torch.save(state(), content_path)
        content = content_path.read_bytes()
    folder = with_extra(hub_folders["safetensors"], tmp_path / "folder", name, content, link)
    report = report_on(folder)
    assert any(words in reason for reason in report["reasons"]), report["reasons"]
    run = run_chapter_here("inspect_file.py", str(folder), cwd=tmp_path)
    assert run.returncode == 2
    assert words in run.stdout


def test_a_shard_that_links_to_itself_is_one_line(hub_folders, tmp_path):
    folder = copy_folder(hub_folders["safetensors"], tmp_path / "loop")
    shard = sorted(folder.glob("*.safetensors"))[0]
    shard.unlink()
    shard.symlink_to(shard.name)
    with pytest.raises(ModelFileError, match="a link loop"):
        report_on(folder)
    run = run_chapter_here("inspect_file.py", str(folder), cwd=tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


def test_a_hugging_face_cache_snapshot_whose_files_link_into_blobs_is_read(hub_folders, tmp_path):
    """The cache's layout: models--org--name/snapshots/REVISION/FILE -> ../../blobs/HASH."""
    repo = tmp_path / "models--org--iris"
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for number, path in enumerate(sorted(hub_folders["safetensors"].iterdir())):
        (blobs / f"blob{number}").write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(f"../../blobs/blob{number}")
    report = report_on(snapshot, on_meta())
    assert report["reasons"] == [] and report["fit"]["fits"]


def test_a_cache_whose_blobs_is_a_link_elsewhere_lends_its_snapshot_no_trust(hub_folders, tmp_path):
    """blobs/ pointing at / would make every link of the snapshot a link "into blobs"."""
    repo = tmp_path / "models--org--iris"
    snapshot = repo / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (repo / "blobs").symlink_to("/")
    for path in sorted(hub_folders["safetensors"].iterdir()):
        (snapshot / path.name).symlink_to(f"../../blobs{path.resolve()}")  # through blobs/, to the file
    with pytest.raises(ModelFileError, match=r"not a file in the folder \(a link out of the folder\)"):
        report_on(snapshot)


# %%
# The README's real-world report is the script's output


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="the README shows the report made without a GPU: with one, a GPU file needs no map_location",
)
def test_the_readme_real_world_report_is_what_the_script_prints(tmp_path):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```console\n\$ (python inspect_file.py .*?)\n(.*?)```", readme, flags=re.DOTALL)
    assert block, "the README's inspector section shows a real-world report"
    command, shown = block.group(1).split(), block.group(2)
    save_as_if_on_gpu(state(), tmp_path / command[2], _use_new_zipfile_serialization=False)
    result = run_chapter_here(*command[1:], cwd=tmp_path)
    assert result.returncode == (0 if "(exit 0)" in shown else EXIT_BAD_INPUT)
    assert result.stdout == shown


@pytest.mark.parametrize(
    "name", ["legacy-gpu.pth", "scripted.pt", "arrays.npz", "compressed.npz", "array.npy"]
)
def test_damaged_copies_of_each_real_world_file_get_a_report_or_one_line(name, made, tmp_path, capsys):
    damaged_copies_get_a_report_or_one_line(made[name], tmp_path, capsys)


def test_damaged_copies_of_onnx_and_gguf_files_get_a_report_or_one_line(
    onnx_file, gguf_file, tmp_path, capsys
):
    for path in (onnx_file, gguf_file):
        damaged_copies_get_a_report_or_one_line(path, tmp_path, capsys)


# %%
# Every hostile input of a new reader, through the command line: one line, bounded memory


def forged_index_folder(folder: Path, shard: str) -> Path:
    from safetensors.torch import save_file

    folder.mkdir()
    save_file(state(), folder / "model-00001-of-00001.safetensors")
    index = {"metadata": {"total_size": 268}, "weight_map": dict.fromkeys(state(), shard)}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def forged_gguf(path: Path) -> Path:
    path.write_bytes(b"GGUF" + (3).to_bytes(4, "little") + (10**12).to_bytes(8, "little") + bytes(16))
    return path


HOSTILE = {
    "onnx external ../../etc/passwd": (True, lambda d: onnx_with_external_data(d, "../../etc/passwd")),
    "onnx external absolute": (True, lambda d: onnx_with_external_data(d, "/etc/passwd")),
    "onnx graphs nested 20000 deep": (
        True,
        lambda d: (d / "m.onnx").write_bytes(nested_graphs(20_000)) and d / "m.onnx",
    ),
    "gguf claiming 10**12 tensors": (False, lambda d: forged_gguf(d / "forged.gguf")),
    "index naming ../../etc/passwd": (False, lambda d: forged_index_folder(d / "m", "../../etc/passwd")),
    "index naming an absolute shard": (False, lambda d: forged_index_folder(d / "m", "/etc/passwd")),
}


def inspect_hostile_in_child(path: Path, cwd: Path) -> int:
    before = limit_memory()
    result = run_chapter_here("inspect_file.py", str(path), cwd=cwd)
    sys.stderr.write(result.stdout + result.stderr)
    return EXIT_TOO_MUCH_MEMORY if grew_too_much(before) else result.returncode


@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_input_of_a_new_reader_is_one_error_line_in_bounded_memory(name, tmp_path):
    needs_onnx, make = HOSTILE[name]
    if needs_onnx:
        optional("onnx")
    path = make(tmp_path)
    code, output = run_in_fork(inspect_hostile_in_child, path, tmp_path, cwd=tmp_path, timeout=60)
    assert code == EXIT_BAD_INPUT, output
    assert output.startswith("error: ") and output.count("\n") == 1, output


LOAD_INT8 = """
import sys, torch
try:
    torch.load(sys.argv[1], weights_only=True)
except Exception as err:
    print("plain:", type(err).__name__)
import logging; logging.disable(logging.WARNING)  # what torchao logs while it is imported
import torchao
print("after the import:", type(torch.load(sys.argv[1], weights_only=True)["hidden.weight"]).__name__)
"""


@pytest.mark.slow  # importing torchao in a fresh process takes seconds
def test_torchaos_int8_weights_are_listed_with_the_import_that_makes_them_load(tmp_path):
    quantization = pytest.importorskip("torchao.quantization", reason="the quantize extra is not installed")
    model = Multiclass()
    quantization.quantize_(model, quantization.Int8WeightOnlyConfig())  # torchao's own writer
    path = tmp_path / "int8.pth"
    torch.save(model.state_dict(), path)
    fresh = subprocess.run(  # a fresh process: this one may have imported torchao already
        [sys.executable, "-c", LOAD_INT8, str(path)], capture_output=True, text=True, check=True
    )
    assert fresh.stdout.splitlines() == ["plain: UnpicklingError", "after the import: Int8Tensor"]
    report = report_on(path)
    (reason,) = report["reasons"]
    assert reason.startswith("it holds torchao's quantized tensors: torch.load(weights_only=True) refuses")
    assert reason.endswith("`import torchao` and then torch.load(path, weights_only=True) loads it (tried)")
    assert list(report["needs"]["import_first"]) == ["torchao"]
    rows = {row["name"]: row for row in report["contents"]["tensors"]}
    assert rows["hidden.weight"]["dtype"] == "float32 (Int8Tensor)" and rows["hidden.weight"]["shape"] == [
        8,
        4,
    ]
    assert rows["hidden.bias"]["dtype"] == "float32"
    result = run_chapter_here("inspect_file.py", str(path), cwd=tmp_path)
    assert (result.returncode, result.stderr) == (EXIT_BAD_INPUT, "")


def hub_mixin_folder(folder: Path) -> Path:
    """What huggingface_hub's PyTorchModelHubMixin writes: config.json and model.safetensors."""
    hub = pytest.importorskip("huggingface_hub", reason="the realworld extra is not installed")
    pytest.importorskip("safetensors", reason="the formats extra is not installed")

    class IrisHub(Multiclass, hub.PyTorchModelHubMixin):
        pass

    IrisHub(n_hidden=8).save_pretrained(folder)
    return folder


def test_a_folder_saved_by_pytorchmodelhubmixin_is_named_read_and_fits(tmp_path):
    folder = hub_mixin_folder(tmp_path / "iris-hub")
    report = report_on(folder, on_meta())
    assert report["kind"] == "hf-folder" and report["reasons"] == []
    assert report["fit"]["fits"] and report["metadata"]["config.json"]["n_hidden"] == "8"
    run = run_chapter_here("inspect_file.py", str(folder), cwd=tmp_path)
    assert run.returncode == 0
    assert "Verdict    intact, and loads with safetensors (exit 0)" in run.stdout


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("config.json", CONFIG_WITH_AUTO_MAP.encode(), "config.json has an auto_map"),
        ("modeling_iris.py", b"import os\n", "modeling_iris.py is Python code"),
    ],
    ids=["auto_map", "python file"],
)
def test_a_hugging_face_folder_without_an_index_names_the_code_beside_its_weights(
    name, content, words, tmp_path
):
    folder = hub_mixin_folder(tmp_path / "iris-hub")
    (folder / name).write_bytes(content)
    assert any(words in reason for reason in report_on(folder)["reasons"])


def test_a_hugging_face_folder_whose_weights_link_out_is_refused_in_one_line(tmp_path):
    folder = hub_mixin_folder(tmp_path / "iris-hub")
    outside = tmp_path / "outside.safetensors"
    (folder / "model.safetensors").rename(outside)
    (folder / "model.safetensors").symlink_to(outside)
    with pytest.raises(ModelFileError, match=r"a link out of the folder"):
        report_on(folder)

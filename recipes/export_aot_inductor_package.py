"""Run a model from C++ or any process without its Python class: an AOTInductor package.

TorchScript (torch.jit.script, torch.jit.save) is deprecated: PyTorch points to torch.export. For a
program without Python, AOTInductor compiles an exported program ahead of time into a .pt2 package
of machine code and weights, which C++ loads with torch::inductor::AOTIModelPackageLoader and
Python with torch._inductor.aoti_load_package, neither needing the model's class.

Fix: program = torch.export.export(model, (example,), dynamic_shapes=...);
torch._inductor.aoti_compile_and_package(program, package_path="model.pt2"); elsewhere,
torch._inductor.aoti_load_package("model.pt2")(x). The compile runs a C++ compiler (g++ or clang
must be installed) and takes a minute or more on a small machine: compile once, load anywhere.

Run: python export_aot_inductor_package.py
Needs: torch
Chapter: compare_formats.py, "ONNX: the same model for other runtimes"
"""

import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn


class Multiclass(nn.Module):
    """The article's iris network: 4 measurements -> 8 hidden units -> 3 log-probabilities."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.output = nn.Linear(8, 3)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logsoftmax(self.output(self.act(self.hidden(x))))


# The whole program that runs the package: no Multiclass here, and python -I keeps this script's
# folder off its import path. Trusted files only: a package is machine code that runs as you.
RUN_PACKAGE = """
import logging, sys, torch
import torch._inductor.codecache  # torch 2.10's loader uses it without importing it
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # a CUDA build without CUDA
model = torch._inductor.aoti_load_package(sys.argv[1])
with torch.no_grad():
    torch.save(model(torch.load(sys.argv[2], weights_only=True)), sys.argv[3])
"""

workdir = tempfile.TemporaryDirectory()  # removed at the end, or at exit if the script stops early
folder = Path(workdir.name)
# Inductor's compile cache, which it would leave in the system temp folder, goes with the rest.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder / "inductor-cache")
# torch 2.13 copies its own pytree specs while compiling, which warns of an API it replaced.
warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated", category=FutureWarning)
# A CUDA build of torch on a machine without CUDA logs "No CUDA runtime is found" as it compiles.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
torch.manual_seed(0)
X = torch.randn(120, 4)
model = Multiclass().eval()  # trained or not: the package holds whatever weights it has now

# THE FIX: export with a dynamic batch dimension (traced with 5 rows, run below with 120), then compile.
batch = torch.export.Dim("batch")
program = torch.export.export(model, (X[:5],), dynamic_shapes=({0: batch},))
started = time.perf_counter()
package = torch._inductor.aoti_compile_and_package(program, package_path=str(folder / "model.pt2"))
print(f"compiled {Path(package).name} in {time.perf_counter() - started:.0f} s")

torch.save(X, folder / "inputs.pt")
files = [package, str(folder / "inputs.pt"), str(folder / "outputs.pt")]
child = subprocess.run([sys.executable, "-I", "-c", RUN_PACKAGE, *files], capture_output=True, text=True)
assert child.returncode == 0 and child.stderr == "", child.stderr
outputs = torch.load(folder / "outputs.pt", weights_only=True)
with torch.no_grad():
    expected = model(X)
difference = (outputs - expected).abs().max().item()
print(f"a process without the class ran it on {tuple(X.shape)}: max abs difference {difference:.1e}")
assert outputs.shape == expected.shape and difference <= 1e-5  # compiled kernels: the last bits may differ
assert torch.equal(outputs.argmax(dim=1), expected.argmax(dim=1))
workdir.cleanup()
print("ok: the AOTInductor package run in a process without the class matches the model within 1e-5")

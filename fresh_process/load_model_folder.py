"""Rebuild a model from a Hugging Face-style folder, in a process that cannot see the training code.

    python -I fresh_process/load_model_folder.py FOLDER INPUTS.safetensors OUTPUTS.safetensors

Chapter 9 (share_model.py) runs this with `python -I`: the import path then holds neither
this project, the current folder, PYTHONPATH nor the user's site-packages, so neither
`build_model.py` nor the training script can be imported. What rebuilds the model is the
folder's `config.json` (the constructor arguments) and its `model.safetensors` (the
weights), plus the architecture below: the part a library such as transformers ships, and
the only code shared with the trainer. Reading safetensors runs nothing from the file.
"""

import argparse
import gc
import importlib.util
import json
import sys
from pathlib import Path
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage and error
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


parser = OneLineParser(description="Rebuild a model from config.json and model.safetensors, then predict.")
parser.add_argument("folder", help="a folder holding config.json and model.safetensors")
parser.add_argument("inputs_file", help="a safetensors file with one tensor, 'inputs'")
parser.add_argument("outputs_file", help="where to write the outputs, as safetensors")
args = parser.parse_args()
if importlib.util.find_spec("build_model") is not None:
    parser.exit(2, "error: this process can import the project's model code; run it with python -I\n")
folder = Path(args.folder)
for given in (folder / "config.json", folder / "model.safetensors", Path(args.inputs_file)):
    if not given.is_file():
        parser.exit(2, f"error: {given} is not a file\n")

import torch  # after the command line and the checks, which need no torch
from safetensors.torch import load_file, save_file
from torch import nn


class IrisClassifier(nn.Module):  # the architecture: the same attribute names, so the same keys
    def __init__(self, n_features: int, n_hidden: int, n_classes: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(n_features, n_hidden)
        self.act = nn.ReLU()
        self.output = nn.Linear(n_hidden, n_classes)
        self.logsoftmax = nn.LogSoftmax(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logsoftmax(self.output(self.act(self.hidden(x))))


config = json.loads((folder / "config.json").read_text())  # {"n_features": 4, "n_hidden": 8, ...}
model = IrisClassifier(**config)
model.load_state_dict(load_file(folder / "model.safetensors"))
model.eval()
# A copy: the loaded tensor may start at any byte of the file, and matmul kernels pick their
# path by alignment, which moves the last bit of some outputs.
inputs = load_file(args.inputs_file)["inputs"].clone()
with torch.no_grad():
    outputs = model(inputs)
save_file({"outputs": outputs}, args.outputs_file)
print(f"IrisClassifier(**{config}) from {folder.name}: {tuple(inputs.shape)} -> {tuple(outputs.shape)}")
# At exit, skip the collector's walk over torch's objects (about a second of CPU), except
# where triton is loaded (support/cli.py's skip_final_collection says why).
if "triton" not in sys.modules:
    gc.freeze()

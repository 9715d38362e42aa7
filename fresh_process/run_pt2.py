"""Run a torch.export program on saved inputs, in a process that cannot see the model's code.

    python -I fresh_process/run_pt2.py MODEL.pt2 INPUTS.pt OUTPUTS.pt

Chapter 8 runs this with `python -I`: the import path then holds neither this folder, the
current folder, PYTHONPATH nor the user's site-packages, so the Multiclass class cannot be
imported. The .pt2 file alone rebuilds the model. Trusted files only: `torch.export.load`
may unpickle parts of the archive.
"""

import argparse
import gc
import importlib.util
import sys
from pathlib import Path
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not argparse's usage and error
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


parser = OneLineParser(description="Run a torch.export program on saved inputs, without the model's code.")
parser.add_argument("program_file", help="a .pt2 file written by torch.export.save, trusted")
parser.add_argument("inputs_file", help="a tensor saved with torch.save")
parser.add_argument("outputs_file", help="where to torch.save the outputs")
args = parser.parse_args()
if importlib.util.find_spec("build_model") is not None:
    parser.exit(2, "error: this process can import the project's model code; run it with python -I\n")
for given in (args.program_file, args.inputs_file):
    if not Path(given).is_file():
        parser.exit(2, f"error: {given} is not a file\n")

import torch  # after the command line and the check, which need no torch

program_file, inputs_file, outputs_file = args.program_file, args.inputs_file, args.outputs_file
program = torch.export.load(program_file)  # the graph and the weights, no class needed
model = program.module()
inputs = torch.load(inputs_file, weights_only=True)
with torch.no_grad():
    outputs = model(inputs)
torch.save(outputs, outputs_file)
print(f"{type(model).__name__} from {program_file}: {tuple(inputs.shape)} -> {tuple(outputs.shape)}")
# At exit, skip the collector's walk over torch's objects (about a second of CPU), except
# where triton is loaded: its nanobind extension then reports the objects never freed as
# leaks, 30 lines on stderr (support/cli.py's skip_final_collection says more).
if "triton" not in sys.modules:
    gc.freeze()

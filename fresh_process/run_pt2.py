"""Run a torch.export program on saved inputs, in a process that cannot see the model's code.

    python -I fresh_process/run_pt2.py MODEL.pt2 INPUTS.pt OUTPUTS.pt

Chapter 7 runs this with `python -I`: the import path then holds neither this folder, the
current folder, PYTHONPATH nor the user's site-packages, so the Multiclass class cannot be
imported. The .pt2 file alone rebuilds the model. Trusted files only: `torch.export.load`
may unpickle parts of the archive.
"""

import gc
import importlib.util
import sys

if importlib.util.find_spec("build_model") is not None:
    sys.exit("this process can import the project's model code; run it with python -I")

import torch  # after the check, which needs no torch

program_file, inputs_file, outputs_file = sys.argv[1:4]
program = torch.export.load(program_file)  # the graph and the weights, no class needed
model = program.module()
inputs = torch.load(inputs_file, weights_only=True)
with torch.no_grad():
    outputs = model(inputs)
torch.save(outputs, outputs_file)
print(f"{type(model).__name__} from {program_file}: {tuple(inputs.shape)} -> {tuple(outputs.shape)}")
gc.freeze()  # at exit, skip the collector's walk over torch's objects: about a second of CPU

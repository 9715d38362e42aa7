"""Inspect any model file without running it: `inspect-model PATH`, or `python inspect_file.py PATH`.

Data flows one way, and no reader reaches back into the command line:

- `cli` parses the flags (before torch is imported) and names the model to check against;
- `inspection.inspect_path` opens the path once (`files.snapshot_of`), lets `sniff` say what
  the first bytes are, and hands the snapshot to that format's reader: `torch_files` (torch.save
  zip and legacy, plain pickles), `code_formats` (.pt2, AOTInductor, torch.package,
  TorchScript), `safetensors_files`, `hf_folders` (Hugging Face folders and cache snapshots),
  `dcp`, and `other_formats` (ONNX, GGUF, NumPy, HDF5/Keras, TensorFlow Lite, ExecuTorch);
- the readers share `zips` (archive integrity), `pickles` (what a pickle would import),
  `standins` (pickles read with stand-ins, nothing loaded), `checkpoints` (devices, training
  frameworks) and `allowlists` (what known libraries allow when they load their own files);
- `fit` checks the contents against a model; `render` prints the report as text or JSON.

`loading.read_untrusted` is the one safe load the walkthrough's chapters use on a file they
did not make, built from the same checks, so that a file a chapter refuses is refused here
for the same reason.
"""

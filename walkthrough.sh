#!/usr/bin/env bash
# Set up .venv with the verified versions, then run every chapter in reading order.
# Each chapter writes into artifacts/ (git-ignored). Rerunning is safe and quick.
# `bash walkthrough.sh --setup-only` sets up .venv and runs no chapter.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '== %s\n' "$*"; }
pinned() { sed -n "s/^$1==//p" constraints.txt; }

started=$SECONDS
say "Creating .venv with $(python3 --version)"
python3 -m venv .venv
say "Installing torch $(pinned torch), numpy $(pinned numpy), scikit-learn $(pinned scikit-learn)" \
    "and the extras (safetensors, matplotlib, onnx, huggingface_hub, gguf, torchao, onnxruntime; pytest, ruff," \
    "jupytext, ipykernel), pinned in constraints.txt, into .venv: about 2 minutes on a fast connection" \
    "(PyPI's Linux torch brings CUDA libraries of several GB), seconds once .venv has them"
# pip's own lines for each package it fetches and installs, and a line every 5 s while it works
# silently (unpacking torch takes a while), so the install never looks stuck.
( while sleep 5; do printf '   ... still installing, %d s so far\n' "$((SECONDS - started))"; done ) &
ticker=$!
trap 'kill "$ticker" 2>/dev/null || true' EXIT
.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off -c constraints.txt \
    -e ".[dev,formats,plots,realworld,quantize,onnxrt]" |
    { grep --line-buffered -E '^(Collecting|Installing collected|Successfully installed)' || true; }
kill "$ticker" 2>/dev/null || true
say ".venv is ready"
if [ "${1:-}" = "--setup-only" ]; then
    say "Run a chapter with .venv/bin/python CHAPTER.py, the tests with .venv/bin/python -m pytest"
    exit 0
fi

say "Running the eleven chapters in reading order, each writing into artifacts/"
run() {
    printf '\n===== python %s =====\n' "$*"
    .venv/bin/python "$@"
}
run build_model.py
run train_iris.py
run inspect_state.py
run save_load_demo.py
run checkpoint_resume.py
run resume_training_run.py
run load_tips.py
run compare_formats.py
run share_model.py
run distributed_checkpoint.py
run look_inside.py

#!/usr/bin/env bash
# Set up .venv with the verified versions, then run every chapter in reading order.
# Each chapter writes into artifacts/ (git-ignored). Rerunning is safe and quick.
# `bash walkthrough.sh --setup-only` sets up .venv and runs no chapter.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '== %s\n' "$*"; }
pinned() { sed -n "s/^$1==//p" constraints.txt; }

say "Creating .venv with $(python3 --version)"
python3 -m venv .venv
say "Installing torch $(pinned torch), numpy $(pinned numpy), scikit-learn $(pinned scikit-learn)" \
    "and the extras (safetensors, matplotlib, onnx, huggingface_hub, gguf; pytest, ruff, jupytext," \
    "ipykernel), pinned in constraints.txt, into .venv: about 2 minutes on a fast connection" \
    "(PyPI's Linux torch brings CUDA libraries of several GB), seconds once .venv has them"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt ".[dev,formats,plots,realworld]"
say ".venv is ready"
if [ "${1:-}" = "--setup-only" ]; then
    say "Run a chapter with .venv/bin/python CHAPTER.py, the tests with .venv/bin/python -m pytest"
    exit 0
fi

say "Running the nine chapters in reading order, each writing into artifacts/"
run() {
    printf '\n===== python %s =====\n' "$*"
    .venv/bin/python "$@"
}
run build_model.py
run train_iris.py
run inspect_state.py
run save_load_demo.py
run checkpoint_resume.py
run load_tips.py
run compare_formats.py
run distributed_checkpoint.py
run inspect_file.py artifacts/iris-model.pth --model Multiclass

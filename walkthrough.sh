#!/usr/bin/env bash
# Set up .venv with the verified versions, then run every chapter in reading order.
# Each chapter writes into artifacts/ (git-ignored). Rerunning is safe and quick.
# `bash walkthrough.sh --setup-only` sets up .venv and runs no chapter.
set -euo pipefail
cd "$(dirname "$0")"

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt ".[dev,formats,plots,realworld]"
[ "${1:-}" = "--setup-only" ] && exit 0

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

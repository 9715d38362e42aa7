#!/usr/bin/env bash
# Set up .venv with the verified versions, then run every chapter in reading order.
# Each chapter writes into artifacts/ (git-ignored). Rerunning is safe and quick.
# `bash walkthrough.sh --setup-only` sets up .venv and runs no chapter.
set -euo pipefail
cd "$(dirname "$0")"

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt ".[dev,formats,plots]"
[ "${1:-}" = "--setup-only" ] && exit 0

for chapter in build_model.py train_iris.py inspect_state.py save_load_demo.py \
    checkpoint_resume.py load_tips.py compare_formats.py distributed_checkpoint.py; do
    printf '\n===== python %s =====\n' "$chapter"
    .venv/bin/python "$chapter"
done

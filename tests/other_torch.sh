#!/usr/bin/env bash
# Check the walkthrough on another PyTorch, as the README describes for "your own PyTorch":
# install the project WITHOUT constraints.txt, with torch==VERSION, into a virtual
# environment of its own, then run both test steps against it and print their counts.
#
#   bash tests/other_torch.sh 2.10.0
#   OTHER_TORCH_VENV=~/venvs/torch-2.10.0 bash tests/other_torch.sh 2.10.0
#
# The environment is .venv-torch-VERSION/ here, or OTHER_TORCH_VENV; one that already holds
# torch VERSION is reused as it is, so a second run installs nothing. PyPI's torch is a CUDA
# build of several GB: the first install takes minutes. A constraints file in pip's own
# configuration (one that caps torch, say) is lifted for this one install: the script sets
# PIP_CONSTRAINT=/dev/null, as the point is to test the torch you name.
# Exit status: 0 when both steps pass, 1 when a step fails, 2 for a bad command line.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ $# -ne 1 ] || ! [[ $1 =~ ^[0-9]+\.[0-9]+(\.[0-9]+)?$ ]]; then
    echo "usage: bash tests/other_torch.sh VERSION   (a torch release, e.g. 2.10.0)" >&2
    exit 2
fi
version=$1
venv=${OTHER_TORCH_VENV:-.venv-torch-$version}
python="$venv/bin/python"

installed_torch() {
    "$python" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null
}

if [ "$(installed_torch)" = "$version" ]; then
    echo "== reusing $venv (torch $version already installed)"
else
    echo "== installing torch $version and the project (no constraints.txt) into $venv: minutes"
    python3 -m venv "$venv" || exit 1
    PIP_CONSTRAINT=/dev/null "$python" -m pip install --quiet --disable-pip-version-check \
        "torch==$version" -e ".[dev,formats,plots,realworld,quantize,onnxrt]" || exit 1
    if [ "$(installed_torch)" != "$version" ]; then
        echo "error: $venv holds torch $(installed_torch), not $version" >&2
        exit 1
    fi
fi
# The project itself (the inspect-model command), from this clone, whatever the venv held before.
"$python" -m pip install --quiet --disable-pip-version-check --no-deps -e . || exit 1

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
status=0
counts=()
step() {  # step NAME PYTEST-ARGS...: run one test step, keep its summary line
    local name=$1 log="$log_dir/$1.log"
    shift
    echo "== torch $version: python -m pytest $*"
    "$python" -m pytest -p no:cacheprovider "$@" 2>&1 | tee "$log"
    local code=${PIPESTATUS[0]}
    [ "$code" -eq 0 ] || status=1
    counts+=("$name: $(grep -E '^=+ .* in [0-9.]+s' "$log" | tail -n 1 | tr -d '=' | sed 's/^ *//; s/ *$//') (exit $code)")
}
step tests
step "slow or notebooks" -m "slow or notebooks"

echo
echo "== torch $version ($venv)"
printf '   %s\n' "${counts[@]}"
exit $status

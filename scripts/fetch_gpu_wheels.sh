#!/usr/bin/env bash
# Fetch, on this machine, the wheels the lent GPU machine lacks (it has Python, PyTorch and Triton, and no package
# registry): every package benchmarks/gpu_session.py's steps import beyond those, as that script lists them
# (`gpu_session.py --requirements`: megatron-core and its numpy/packaging, liger-kernel, pytest and its plugins).
# x86-64, binary wheels only, no dependency resolution (the list is the closure). gpu_session.py installs them.
#   bash scripts/fetch_gpu_wheels.sh [--python 3.12] [DIR]   # default 3.12 (the GPU box) into .whl/ (git-ignored)
#   then carry it: carry=[".whl"]
set -euo pipefail
pyver=3.12
if [ "${1:-}" = "--python" ]; then pyver="$2"; shift 2; fi
dir="${1:-.whl}"
py="${PYTHON:-.venv/bin/python}"
here="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$dir"
"$py" "$here/benchmarks/gpu_session.py" --requirements > "$dir/requirements.txt"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" -r "$dir/requirements.txt"
ls -la "$dir"

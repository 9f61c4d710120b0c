#!/usr/bin/env bash
# Fetch, on this machine, the wheels the lent GPU machine lacks (it has no package registry): megatron-core for
# train_throughput and the GPU tests, liger-kernel for the kernel benchmark's baseline. Python 3.12, x86-64,
# no dependencies (torch, triton, numpy and packaging are already there). benchmarks/gpu_session.py installs them.
#   bash scripts/fetch_gpu_wheels.sh [DIR]      # default .whl/ (git-ignored); then carry it: carry=[".whl"]
set -euo pipefail
dir="${1:-.whl}"
py="${PYTHON:-.venv/bin/python}"
mkdir -p "$dir"
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dir" megatron-core==0.16.1 liger-kernel==0.8.5
ls -la "$dir"

#!/usr/bin/env bash
# GPU check for when a GPU is lent (not part of `make bench`, which runs benchmarks/bench_*.py on the CPU):
#   bf16 + channels-last against fp32, training images/s at 224 px of each chapter's paper model,
#   data-pipeline images/s, peak GPU memory -> _build/bench/gpu_check.json (benchmarks/gpu_check.py).
#
#   benchmarks/gpu_check.sh                 # under 8 minutes on one GPU
#   benchmarks/gpu_check.sh --steps 50      # extra arguments go to gpu_check.py (see its --help)
#   PYTHON=python benchmarks/gpu_check.sh   # another interpreter than .venv/bin/python
#   CUDA_VISIBLE_DEVICES=1 benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
LIMIT="${GPU_CHECK_LIMIT:-470}"   # seconds: the whole check stays under 8 minutes

found=0
info=$("$PY" -c 'import sys, torch
print("torch", torch.__version__, "cuda", torch.version.cuda)
sys.exit(0 if torch.cuda.is_available() else 3)' 2>&1) || found=$?
if [ "$found" -eq 3 ]; then
    echo "gpu_check: no CUDA GPU is visible to torch ($info): nothing measured." >&2
    echo "gpu_check: run it on a machine with an NVIDIA GPU (nvidia-smi lists it) and a CUDA build of torch." >&2
    exit 3
elif [ "$found" -ne 0 ]; then
    echo "gpu_check: $PY cannot import torch; run 'make venv' first, or set PYTHON=/path/to/python" >&2
    echo "$info" | tail -3 >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
mkdir -p _build/bench
status=0
timeout "$LIMIT" "$PY" benchmarks/gpu_check.py --out _build/bench "$@" || status=$?
if [ "$status" -eq 124 ]; then
    echo "gpu_check: stopped after ${LIMIT} s (GPU_CHECK_LIMIT); rerun with fewer --steps" >&2
fi
exit "$status"

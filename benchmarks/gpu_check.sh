#!/usr/bin/env bash
# The GPU path of organseg on any CUDA machine, in under 5 minutes:
#   1. the gpu-marked tests (tests/test_gpu.py): a tiny cascade trains a few steps and
#      predicts on CUDA under bf16 autocast; with two GPUs, torchrun training over nccl;
#   2. benchmarks/bench_gpu.py: network and training step times of the paper preset's
#      stage 2, and the prediction of a 512x512x100 phantom (made by organseg phantom),
#      each with the peak GPU memory PyTorch allocated and reserved.
#
#   benchmarks/gpu_check.sh [OUT_DIR]          on a CUDA machine (OUT_DIR default: a new temporary folder)
#   benchmarks/gpu_check.sh --cpu [OUT_DIR]    without a GPU: the python parts on the CPU, tiny settings
#
# PYTHON picks the interpreter (default .venv/bin/python when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=cuda
if [[ "${1:-}" == "--cpu" ]]; then
    mode=cpu
    shift
fi
out=${1:-$(mktemp -d -t organseg-gpu-check.XXXXXX)}
python=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
started=$SECONDS

if [[ $mode == cuda ]]; then
    if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device visible to $python (torch.cuda.is_available() is False);" \
            "run on a GPU machine with a CUDA build of PyTorch, or check the script's python parts with --cpu" >&2
        exit 2
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    shape=(512 512 100)
    bench=(--device cuda --preset paper --steps 5 --repeats 3)
else
    echo "gpu_check: --cpu: the python parts on the CPU with tiny settings (no GPU timings)"
    shape=(96 96 40)
    bench=(--device cpu --preset tiny --steps 2 --repeats 1)
fi

echo "== gpu-marked tests (they skip without CUDA)"
timeout 120 "$python" -m pytest -q -m gpu tests/test_gpu.py

echo "== phantoms in $out"
if [[ ! -f "$out/data/dataset.json" ]]; then
    "$python" -m organseg phantom "$out/data" --labeled 3 --seed 0
fi
ct="$out/ct_${shape[0]}x${shape[1]}x${shape[2]}"
if [[ ! -f "$ct/dataset.json" ]]; then
    "$python" -m organseg phantom "$ct" --labeled 0 --test 1 --seed 0 --shape "${shape[@]}"
fi

echo "== timings"
timeout 200 "$python" benchmarks/bench_gpu.py "$out" "${bench[@]}" --shape "${shape[@]}"
echo "gpu_check: done in $((SECONDS - started)) s; files in $out"

#!/usr/bin/env bash
# What the paper preset asks of one CUDA GPU, then the GPU path's tests: about 8-10 minutes,
# never more than 15. First the measurements (benchmarks/bench_gpu.py, one process per part;
# its docstring says what each measures):
#   info     GPU, driver, torch, CUDA and cuDNN versions
#   steps    paper stage-2 training steps at batch 1, 2, 4 in bf16 and fp32 (and bf16 batch 4 with
#            activation checkpointing): time, peak memory allocated and reserved, or OOM
#   loader   samples/s of the loader with 0, 2, 4, 8 workers against those the bf16 batch-4 steps take
#   train    organseg train (stage 2: 2 epochs of 10 steps) with the GPU's NVML utilisation
#   predict  the 512x512x100 test phantom through the cascade `train` made: time, peak GPU memory
# then the gpu-marked tests (tests/test_gpu.py; with two GPUs, torchrun training over nccl too).
# Results are also gathered in OUT_DIR/gpu_check.json.
#
#   benchmarks/gpu_check.sh [OUT_DIR]          on a CUDA machine (OUT_DIR default: a new temporary folder)
#   benchmarks/gpu_check.sh --cpu [OUT_DIR]    without a GPU: the python parts on the CPU, tiny settings
#
# Every step runs under its own timeout, and none may cut into the tests' 300 s or the
# 15 minutes: a step that fails or runs out of time is reported, the next ones still run,
# and the script then exits 1. The phantoms (CPU work) are written while the steps run on the GPU.
# Reusing an OUT_DIR reuses its phantoms and prepared cases; `train` trains anew.
# PYTHON picks the interpreter (default .venv/bin/python when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=cuda
if [[ "${1:-}" == "--cpu" ]]; then
    mode=cpu
    shift
fi
out=${1:-$(mktemp -d -t organseg-gpu-check.XXXXXX)}
mkdir -p "$out"
python=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}
export PYTHONUNBUFFERED=1 # a part stopped by its timeout still shows the rows it measured
deadline=$((SECONDS + 14 * 60)) # a minute of the 15 left for killing what overran and the last words
tests_s=300
failed=()

# The seconds a step may take: its own limit ($1), less where it would cut into the tests' time.
limit() {
    local left=$((deadline - tests_s - SECONDS))
    echo $(($1 < left ? $1 : left))
}

# step NAME SECONDS COMMAND...: COMMAND under a timeout; a failure is noted, not fatal.
step() {
    local name=$1 seconds
    seconds=$(limit "$2")
    shift 2
    if ((seconds < 20)); then
        echo "gpu_check: $name skipped: no time left" >&2
        failed+=("$name")
        return
    fi
    timeout -k 10 "$seconds" "$@" || {
        echo "gpu_check: $name failed or ran out of its $seconds s (exit $?)" >&2
        failed+=("$name")
    }
}

# bench PART SECONDS: a part of bench_gpu.py, told its limit so that it starts nothing it cannot finish.
bench() {
    step "$1" "$2" "$python" benchmarks/bench_gpu.py "$1" "$out" --device "$device" --seconds "$(limit "$2")"
}

if [[ $mode == cuda ]]; then
    if ! timeout 60 "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device visible to $python (torch.cuda.is_available() is False);" \
            "run on a GPU machine with a CUDA build of PyTorch, or check the script's python parts with --cpu" >&2
        exit 2
    fi
    device=cuda
    shape=(512 512 100)
    # Expected on an H100-class GPU (a cold start of CUDA and cuDNN in each): info 10-20 s, steps 2-4 min
    # (mostly cuDNN's algorithm search, once per shape), loader 1-1.5 min, train 1-1.5 min, predict
    # under 1 min, tests 1-2 min. The limits leave about twice that.
    info_s=120 phantoms_s=360 steps_s=330 loader_s=180 train_s=240 predict_s=150
else
    echo "gpu_check: --cpu: the python parts on the CPU with tiny settings (no GPU figures)"
    device=cpu
    shape=(96 96 40)
    info_s=60 phantoms_s=120 steps_s=120 loader_s=120 train_s=180 predict_s=90
fi

echo "== info"
bench info "$info_s"

data="$out/data"
phantoms=()
if [[ ! -f "$data/dataset.json" ]]; then
    # CPU work, about half a minute per full-size case: done while the steps keep the GPU busy.
    timeout -k 10 "$(limit "$phantoms_s")" "$python" -m organseg phantom "$data" -q \
        --labeled 3 --test 1 --seed 0 --shape "${shape[@]}" >"$out/phantoms.log" 2>&1 &
    phantoms=($!)
fi

echo "== training steps"
bench steps "$steps_s"

if ((${#phantoms[@]})) && ! wait "${phantoms[0]}"; then
    echo "gpu_check: the phantoms in $data were not written in time or failed:" >&2
    tail -n 20 "$out/phantoms.log" >&2
    failed+=(phantoms)
fi
echo "== loader"
bench loader "$loader_s"
echo "== training run"
bench train "$train_s"
echo "== prediction"
bench predict "$predict_s"

# The tests get what is left, and at least their own 300 s.
tests_limit=$((deadline - SECONDS > tests_s ? deadline - SECONDS : tests_s))
echo "== gpu-marked tests (they skip without CUDA; timeout $tests_limit s)"
timeout -k 10 "$tests_limit" "$python" -m pytest -q -m gpu tests/test_gpu.py || {
    echo "gpu_check: the gpu-marked tests failed or ran out of time (exit $?)" >&2
    failed+=(tests)
}

echo "gpu_check: done in $SECONDS s; results in $out/gpu_check.json"
if ((${#failed[@]})); then
    echo "gpu_check: failed or skipped: ${failed[*]}" >&2
    exit 1
fi

#!/usr/bin/env bash
# The one GPU run of issue 12 (about 8 minutes on an H100/H200): the GPU tests of the kernels,
# attention_tflops.py at d128 bf16 (2K/8K/16K, causal and full, forward and forward+backward),
# one online tune of the causal forward at 8K, and the AOT report for sm_90.  Everything goes under
# bench/results/<gpu-name>/; each step has its own time limit, and a failing step does not stop
# the others (its exit status is in steps.txt).
#
# Usage (from the repository root, on the GPU machine): bash bench/hopper_run.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

GPU=$(python -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')")
if [ -z "$GPU" ]; then
    echo "hopper_run.sh needs a CUDA GPU (none found)" >&2
    exit 1
fi
OUT="bench/results/$(echo "$GPU" | sed 's/[^A-Za-z0-9]\+/_/g; s/^_//; s/_$//')"
mkdir -p "$OUT"
STORAGE="sqlite:///$PWD/$OUT/tuning.sqlite"
export ATTNCC_CACHE_DIR="$(mktemp -d)"  # generated modules: not results
: > "$OUT/steps.txt"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the status
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc ${limit}s-limit $((SECONDS - start))s" | tee -a "$OUT/steps.txt"
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv;
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"; } \
    > "$OUT/environment.txt" 2>&1

# 1. GPU tests of the kernels (compiled, not interpreted): forward, backward, decode, recurrences.
step tests 150 python -m pytest -q -p no:cacheprovider -x tests/runtime/test_compile.py \
    tests/runtime/test_autograd.py tests/runtime/test_decode.py tests/runtime/test_recurrence.py

# 2. The report the budgets hold (SASS counts; no GPU needed, recorded beside the timings).
step report 60 python -m attncc.cli compile causal --target sm_90 --report --json --dtype bf16 --head-dim 128

# 3. The benchmark, before tuning: default configs.
step bench_default 200 python bench/attention_tflops.py --modes fwd,fwdbwd --dtypes bf16 --head-dims 128 \
    --lengths 2048,8192,16384 --masks causal,full --warmup 10 --rep 40 --json "$OUT/attention_default.json"

# 4. One online tune: the causal forward at 8K, d128, bf16 (stored in OUT/tuning.sqlite).
step tune 90 python -m attncc.cli tune causal --shape 2,16,8192,8192,128 --dtype bf16 --kind fwd --trials 20 \
    --storage "$STORAGE" --json -q

# 5. The benchmark's causal forward again, with the tuned config (recorded in the JSON rows).
ATTNCC_STORAGE="$STORAGE" step bench_tuned 60 python bench/attention_tflops.py --modes fwd --dtypes bf16 \
    --head-dims 128 --lengths 8192 --masks causal --warmup 10 --rep 40 --json "$OUT/attention_tuned.json"

echo "results in $OUT"

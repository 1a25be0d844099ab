#!/usr/bin/env bash
# The prepared GPU check of the Triton kernels: on one CUDA GPU, run the `gpu` tests (compiled
# kernels against the torch reference), `labbench kernels-bench` and the packed-layer timing
# (kernels.packed_bench), and write them, with the
# device's name, under docs/benchmarks/<device>/. Meant to finish in under 5 minutes on one H100.
#
# Needs torch, triton, pytest and hypothesis (pip install -e '.[test,gpu]'; `nox -s gpu` does it).
# Usage: bash scripts/gpu-check.sh [extra kernels-bench arguments, e.g. --sizes 1e6,1e8]
# Environment: PYTHON (default python), TEST_TIMEOUT, BENCH_TIMEOUT and PACKED_TIMEOUT in seconds
# (150, 210, 90).
# Exit status: that of the tests, else of kernels-bench, else of the packed-layer timing.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
# Compiled kernels: tests/conftest.py sets TRITON_INTERPRET=1 unless it is already set.
export TRITON_INTERPRET=0

device=$("$PYTHON" -c '
import torch
assert torch.cuda.is_available(), "gpu-check: no CUDA device visible to torch"
print(torch.cuda.get_device_name(0))')
slug=$(printf '%s' "$device" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')
out=docs/benchmarks/$slug
mkdir -p "$out"
start=$SECONDS
echo "gpu-check: $device -> $out"

{
    echo "device: $device"
    "$PYTHON" -c 'import platform, torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__,
      "python", platform.python_version())'
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
        --format=csv 2>/dev/null || echo "nvidia-smi: not available"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
} > "$out/device.txt"

# 1. The compiled kernels against the reference (tests marked `gpu`).
set +e
timeout "${TEST_TIMEOUT:-150}" "$PYTHON" -m pytest -m gpu tests/kernels tests/bench/test_optim_fused.py \
    -q -p no:cacheprovider --junitxml="$out/gpu-tests.xml" 2>&1 | tee "$out/gpu-tests.txt"
tests_rc=${PIPESTATUS[0]}

# 2. The benchmark: CSV rows are flushed as they come, so a timeout still leaves results.
timeout "${BENCH_TIMEOUT:-210}" "$PYTHON" -m kernels.bench --device cuda --out "$out" --plot "$@" \
    2>&1 | tee "$out/kernels-bench.log"
bench_rc=${PIPESTATUS[0]}

# 3. The packed-layer Triton kernel against torch's fp32 matmul: paper MLP and a 1x512 LSTM cell
#    step at batch 1, 8 and 64 (kernel level; whole models are `labbench deploy-bench`).
timeout "${PACKED_TIMEOUT:-90}" "$PYTHON" -m kernels.packed_bench --device cuda --threads 0 \
    2>&1 | tee "$out/packed-bench.md"
packed_rc=${PIPESTATUS[0]}
set -e

echo "gpu-check: tests exit $tests_rc, kernels-bench exit $bench_rc, packed-bench exit $packed_rc," \
    "$((SECONDS - start)) s"
echo "gpu-check: results in $out/ (kernels-bench.md, .csv, .json, .png, packed-bench.md," \
    "gpu-tests.txt, device.txt)"
if [ "$tests_rc" -ne 0 ]; then exit "$tests_rc"; fi
if [ "$bench_rc" -ne 0 ]; then exit "$bench_rc"; fi
exit "$packed_rc"

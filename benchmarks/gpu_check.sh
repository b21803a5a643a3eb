#!/usr/bin/env bash
# The GPU path, checked and measured: the CUDA-only tests (AMP, NCCL DDP under torchrun, crossval --devices,
# checkpoints resumed across devices), then training sequences/s and scoring nights/s on the GPU against the
# CPU, one table (benchmarks/bench_gpu.py). Uses the Python of the current environment ($PYTHON, default
# python) with sleepstage installed; installs nothing and needs no network. About 5 minutes, under 8.
# Without a CUDA device it says so in one line and exits 0 (CI runs it that way).
#
#   bash benchmarks/gpu_check.sh    # figures also saved as JSON: $GPU_CHECK_JSON, default /tmp/sleepstage-gpu-check.json
#   GPU_CHECK_BENCH_ARGS="--repeats 3" bash benchmarks/gpu_check.sh    # more options for bench_gpu.py
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
if ! "$PY" -c "import sleepstage_cli, torch" >/dev/null 2>&1; then
  echo "gpu_check: '$PY' cannot import sleepstage_cli and torch; activate the environment sleepstage is installed" \
       "in, or install it first: pip install torch (the build for your CUDA) && pip install -e \".[test]\"" >&2
  exit 1
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  "$PY" - <<'PYEOF'
import torch
print(f"gpu_check: torch {torch.__version__} (CUDA build: {torch.version.cuda or 'none'}): no CUDA device is visible, "
      "the GPU checks are skipped")
PYEOF
  exit 0
fi
if ! "$PY" -c "import pytest" >/dev/null 2>&1; then
  echo "gpu_check: the CUDA tests need pytest: pip install -e \".[test]\"" >&2
  exit 1
fi

start=$SECONDS
echo "gpu_check: GPUs"
"$PY" - <<'PYEOF'
import torch
print(f"  torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}")
PYEOF

echo "gpu_check: CUDA-only tests (pytest -m cuda tests/test_cuda.py)"
"$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py
echo "gpu_check: tests done after $((SECONDS - start)) s"

echo "gpu_check: GPU against CPU (benchmarks/bench_gpu.py)"
# shellcheck disable=SC2086  # GPU_CHECK_BENCH_ARGS holds more options for bench_gpu.py, split into words
"$PY" benchmarks/bench_gpu.py --json "${GPU_CHECK_JSON:-${TMPDIR:-/tmp}/sleepstage-gpu-check.json}" \
  ${GPU_CHECK_BENCH_ARGS:-}
echo "gpu_check: done in $((SECONDS - start)) s"

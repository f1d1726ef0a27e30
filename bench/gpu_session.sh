#!/usr/bin/env bash
# One GPU session in one go: the test suite on CUDA, then the SD 1.5 throughput
# benchmark (ours vs the reference loop, side by side). Meant for a lent GPU machine
# that has torch but not the project's other dependencies: those travel as wheels in
# .whl/ (see BENCHMARKS.md, "GPU figures"). Logs go to $OUT (or ./out).
#
#   bash bench/gpu_session.sh [pytest-seconds] [bench-seconds] [plan-bench-seconds]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD/src"
else
  export PYTHONPATH="$PWD/src"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/machine.txt"
python3 -c "import sys, torch, diffusers, transformers, sqlite3
print(sys.version.split()[0], 'torch', torch.__version__, 'diffusers', diffusers.__version__,
      'transformers', transformers.__version__, 'sqlite', sqlite3.sqlite_version,
      'cuda', torch.cuda.is_available())" | tee -a "$out/machine.txt"
jobs=$(( $(nproc) > 12 ? 12 : $(nproc) ))
# -rfE names every failure in the summary; a per-test timeout keeps one hung test from
# eating the whole budget; stragglers (xdist workers) are stopped before the benchmark
# so that they do not steal its CPU.
timeout "${1:-240}" python3 -m pytest -q -rfE -p no:cacheprovider -n "$jobs" --timeout 90 \
  tests/ 2>&1 | tee "$out/pytest.log" | grep -E "^(FAILED|ERROR)|passed|failed" | head -40
pkill -f "pytest" 2>/dev/null; sleep 2
timeout "${2:-240}" python3 bench/train_throughput.py --model sd15 --short 10 --long 40 \
  --warmup 5 --rounds 1 --markdown --json "$out/sd15.json" 2>&1 | tee "$out/bench-sd15.log" | tail -20
# Plan mode (issue 18): 4 concepts x batch 8 in one batch against one concept at batch 32.
timeout "${3:-180}" python3 bench/train_throughput.py --model sd15 --plan 4 --batch 8 --short 10 \
  --long 40 --warmup 5 --rounds 1 --markdown --json "$out/sd15-plan.json" 2>&1 \
  | tee "$out/bench-sd15-plan.log" | tail -8
# Issue 14 item 9 / issue 18: the GPU tests of the fast step, the CUDA-graph step against
# the eager one side by side, the memory table, and the fixed cost before the first step.
timeout "${4:-120}" python3 -m pytest -q -rfE -p no:cacheprovider -m gpu \
  tests/test_trainer_fast_step.py 2>&1 | tee "$out/pytest-gpu.log" | tail -8
timeout "${5:-180}" python3 bench/train_throughput.py --model sd15 --short 10 --long 40 \
  --warmup 5 --rounds 1 --cuda-graphs --markdown --json "$out/sd15-graphs.json" 2>&1 \
  | tee "$out/bench-sd15-graphs.log" | tail -8
timeout "${6:-240}" python3 bench/memory_table.py --batch 1 8 --steps 2 --markdown \
  --json "$out/memory.json" 2>&1 | tee "$out/memory.log" | tail -12
for i in 1 2; do  # the first run builds the tiny model into the cache
  timeout "${7:-90}" python3 bench/fixed_cost.py --device cuda --markdown 2>&1 \
    | tee "$out/fixed-cost-$i.log" | tail -14
done

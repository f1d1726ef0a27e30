#!/usr/bin/env bash
# One GPU session in one go: the test suite on CUDA, then the SD 1.5 throughput
# benchmark (ours vs the reference loop, side by side). Meant for a lent GPU machine
# that has torch but not the project's other dependencies: those travel as wheels in
# .whl/ (see BENCHMARKS.md, "GPU figures"). Logs go to $OUT (or ./out).
#
#   bash bench/gpu_session.sh [pytest-seconds] [bench-seconds]
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

"""The training benchmark runs (tiny, on the CPU): a smoke test, not a timing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_train_throughput_benchmark_runs_both_loops(tmp_path, _isolated_home):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--model", "sd15",
           "--precision", "bf16", "--short", "1", "--long", "3", "--warmup", "1",
           "--rounds", "1", "--json", str(out), "--markdown",
           # pinned: on a CUDA machine the defaults are the full-size models on the GPU
           "--device", "cpu", "--size", "tiny"]  # fmt: skip
    env = dict(os.environ, CONCEPTLIB_HOME=str(_isolated_home))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| sd15 | tiny | 32 | ours |" in res.stdout
    data = json.loads(out.read_text())
    (result,) = data["results"]
    assert result["model"] == "sd15" and result["resolution"] == 32
    for loop in ("ours", "reference"):
        row = result[loop]
        # a time difference of a few steps: finite, its sign is up to a shared machine
        assert math.isfinite(row["ms_per_step"]) and row["executed_tflop_per_step"] > 0
    # the reference executes at least our FLOPs (plus its VAE encoder every step)
    ours, ref = result["ours"], result["reference"]
    assert ref["executed_tflop_per_step"] >= ours["executed_tflop_per_step"]
    assert result["useful_tflop_per_step"] == ours["executed_tflop_per_step"]

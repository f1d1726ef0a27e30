"""The memory table of trainer/memory.py, measured: peak memory of our training step
per family, resolution, batch and gradient checkpointing.

On a GPU (the default there): ``torch.cuda.max_memory_allocated`` over the set-up (the
VAE encoding) and a few training steps of :class:`TextualInversion` alone (no
reference loop in the process), on the full-size SD 1.5 / SDXL architectures of
``bench/train_throughput.py`` with random weights. The rows say what to put into
``conceptlib.trainer.memory.MEASURED`` and ``CHECKPOINTING_FACTOR``.

On a CPU (``--cpu``): the peak live tensor bytes of one loss + backward
(``memory.measure_step_peak``: a dispatch-level count, no allocator), with and without
checkpointing, on the full-size UNets at a small resolution: the checkpointing ratio's
form, not a GPU figure.

Usage:
    python bench/memory_table.py --markdown                      # GPU: sd15 512, sdxl 1024
    python bench/memory_table.py --cpu --model sd15 --resolution 256 --batch 1 --markdown
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import full_size  # noqa: E402

from conceptlib.models import quiet_libraries  # noqa: E402
from conceptlib.trainer import memory  # noqa: E402
from conceptlib.trainer.loop import TextualInversion  # noqa: E402
from conceptlib.trainer.templates import OBJECT_TEMPLATES  # noqa: E402

GIB = 2**30


def one(model: str, res: int, batch: int, ckpt: bool, args: argparse.Namespace) -> dict[str, Any]:
    device = "cpu" if args.cpu else "cuda"
    dtype = torch.float32 if args.cpu else torch.bfloat16
    if not args.cpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with quiet_libraries():
        bm = full_size(model, device, dtype)
        weights = memory.weights_bytes(bm)
        pixels = np.random.default_rng(0).uniform(-1, 1, (2, 3, res, res)).astype(np.float32)
        ti = TextualInversion(bm, pixels, OBJECT_TEMPLATES, name="mem", init="toy", batch=batch,
                              flip=False, total_steps=8, gradient_checkpointing=ckpt)  # fmt: skip
    row: dict[str, Any] = {"model": model, "resolution": res, "batch": batch,
                           "checkpointing": ckpt, "weights_gib": weights / GIB}  # fmt: skip
    try:
        if args.cpu:
            start = time.perf_counter()
            row["activations_gib"] = memory.measure_step_peak(ti) / GIB
            row["seconds"] = time.perf_counter() - start
        else:
            setup_peak = torch.cuda.max_memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(args.steps):
                ti.step()
            torch.cuda.synchronize()
            row["ms_per_step"] = (time.perf_counter() - start) / args.steps * 1e3
            peak = torch.cuda.max_memory_allocated()
            row["setup_peak_gib"] = setup_peak / GIB
            row["peak_gib"] = peak / GIB
            row["activations_gib"] = (peak - weights) / GIB
    finally:
        ti.close()
        del ti, bm
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="measure on the CPU (dispatch count)")
    p.add_argument("--model", choices=["sd15", "sdxl", "both"], default="both")
    p.add_argument("--resolution", type=int, help="default: 512 (sd15) / 1024 (sdxl)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device: pass --cpu")
    rows = []
    for model in ["sd15", "sdxl"] if args.model == "both" else [args.model]:
        res = args.resolution or (1024 if model == "sdxl" else 512)
        for batch in args.batch:
            for ckpt in (False, True):
                try:
                    rows.append(one(model, res, batch, ckpt, args))
                except torch.OutOfMemoryError:
                    rows.append({"model": model, "resolution": res, "batch": batch,
                                 "checkpointing": ckpt, "error": "out of memory"})  # fmt: skip
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.markdown:
        print("| model | res | batch | checkpointing | weights GiB | activations GiB | "
              "peak GiB | ms/step |\n|---|---:|---:|---|---:|---:|---:|---:|")  # fmt: skip
        for r in rows:
            print(f"| {r['model']} | {r['resolution']} | {r['batch']} | {r['checkpointing']} | "
                  f"{r.get('weights_gib', 0):.2f} | {r.get('activations_gib', float('nan')):.3f} | "
                  f"{r.get('peak_gib', float('nan')):.2f} | {r.get('ms_per_step', float('nan')):.1f} |"
                  + (f" {r['error']}" if "error" in r else ""))  # fmt: skip
    else:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

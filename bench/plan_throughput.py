"""Plan mode of ``bench/train_throughput.py`` (``--plan N``): N concepts in one batch
against one concept with the same images per step.

* **plan**: :class:`conceptlib.trainer.multi.MultiConcept` over N concepts, each with
  ``--batch`` images per step (its own rows, optimizer and generator): one text-encoder
  and UNet pass over ``N x batch`` samples, then N optimizer steps.
* **single**: one :class:`~conceptlib.trainer.loop.TextualInversion` at batch
  ``N x batch``: the same samples per step, one optimizer.

Both share the loaded model (so both go through the same embedding layers) and are
timed interleaved, as the main benchmark times its two loops. Issue 18's target: the
plan's per-image throughput at least the single concept's at batch 32 (``--plan 4
--batch 8``).
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import numpy as np
import torch


def bench_plan(model: str, args: argparse.Namespace) -> dict[str, Any]:
    from train_throughput import bench_base, timed

    from conceptlib.models import quiet_libraries
    from conceptlib.trainer.loop import TextualInversion
    from conceptlib.trainer.multi import MultiConcept
    from conceptlib.trainer.templates import OBJECT_TEMPLATES

    device, n, b = args.device, args.plan, args.batch
    bm, res = bench_base(model, args)
    rng = np.random.default_rng(0)
    total = args.long + args.warmup + 8
    engines = []
    try:
        with quiet_libraries():
            for i in range(n):
                pixels = rng.uniform(-1, 1, (8, 3, res, res)).astype(np.float32)
                engines.append(TextualInversion(
                    bm, pixels, OBJECT_TEMPLATES, name=f"bench-{i}", init="toy", batch=b,
                    seed=i, total_steps=total,
                ))  # fmt: skip
            single = TextualInversion(bm, pixels, OBJECT_TEMPLATES, name="bench-single",
                                      init="toy", batch=n * b, total_steps=total)  # fmt: skip
            engines.append(single)
        multi = MultiConcept(engines[:n], compile=args.compile)
        if args.compile:
            single.unet_fn = multi.lead.unet_fn
        runners = {"plan": multi.step, "single": single.step}
        for step in runners.values():
            for _ in range(args.warmup):
                step()
        per_step: dict[str, list[float]] = {k: [] for k in runners}
        peak: dict[str, float] = {}
        for _ in range(args.rounds):
            for k, step in runners.items():
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                short = timed(step, args.short, device)
                long = timed(step, args.long, device)
                per_step[k].append((long - short) / (args.long - args.short))
                if device.startswith("cuda"):
                    peak[k] = max(peak.get(k, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    finally:
        for e in reversed(engines):
            e.close()
    out: dict[str, Any] = {"model": model, "size": args.size, "resolution": res,
                           "concepts": n, "batch_per_concept": b}  # fmt: skip
    for k in runners:
        s = statistics.median(per_step[k])
        row = {"ms_per_step": s * 1e3, "images_per_s": n * b / s,
               "batch": b if k == "plan" else n * b}  # fmt: skip
        if k in peak:
            row["peak_gib"] = peak[k]
        out[k] = row
    out["ratio"] = out["plan"]["images_per_s"] / out["single"]["images_per_s"]
    return out


def plan_markdown(results: list[dict[str, Any]], args: argparse.Namespace, machine: str) -> str:
    lines = [
        f"Machine: {machine}. Precision {args.precision}; per-step time = (T({args.long}) - "
        f"T({args.short})) / {args.long - args.short}, median of {args.rounds} interleaved "
        "rounds; the same images per step in both rows.",
        "",
        "| model | size | res | run | concepts x batch | ms/step | images/s | peak GiB | vs single |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for k in ("plan", "single"):
            row = r[k]
            shape = f"{r['concepts']} x {row['batch']}" if k == "plan" else f"1 x {row['batch']}"
            peak = f"{row['peak_gib']:.1f}" if "peak_gib" in row else "n/a"
            ratio = f"**{r['ratio']:.2f}x**" if k == "plan" else "1.00x"
            lines.append(
                f"| {r['model']} | {r['size']} | {r['resolution']} | {k} | {shape} | "
                f"{row['ms_per_step']:.1f} | {row['images_per_s']:.2f} | {peak} | {ratio} |"
            )
    return "\n".join(lines)

"""Where the time before a run's first step goes (the fixed cost of ``conceptlib train``).

Runs ``train()`` on the built-in tiny-sd1 (4 images, 1 step, no checkpoints, samples
only at the end) in a fresh process and stamps every log line and progress report
with the time since the process started, then reports the phases: interpreter and
imports, option checks and images, base-model load, set-up (VAE cache, tokenizing),
the first step, samples, and the end (plots, registration). Run it twice: the first
run also builds the tiny model into the cache.

Usage:
    python bench/fixed_cost.py [--device cuda] [--steps 1] [--markdown]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "conceptlib-fc")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    marks: list[tuple[str, float]] = [("start", 0.0)]

    def mark(what: str) -> None:
        marks.append((what, time.perf_counter() - T0))

    import torch  # noqa: F401

    mark("import torch")
    from conceptlib.trainer.samples import write_sample_images
    from conceptlib.trainer.train import train

    mark("import conceptlib.trainer")
    with tempfile.TemporaryDirectory() as tmp:
        write_sample_images(Path(tmp) / "imgs", 4, size=96)
        seen = set()

        def on_progress(pr: object) -> None:
            key = (pr.phase, pr.step if pr.phase != "train" else min(pr.step, 1))
            if key not in seen:
                seen.add(key)
                mark(f"progress {pr.phase} {pr.step}")

        def on_log(line: str) -> None:
            mark("log: " + line[:60])

        train([Path(tmp) / "imgs"], name="fixed-cost", init="toy", steps=args.steps, batch=4,
              checkpoint_every=0, sample_every=0, device=args.device, register=False,
              run_dir=Path(tmp) / "run", cache_dir=args.cache, progress=on_progress,
              log=on_log)  # fmt: skip
        mark("train() returned")
    rows = [(what, t, t - marks[i - 1][1] if i else 0.0) for i, (what, t) in enumerate(marks)]
    if args.markdown:
        print("| event | s since start | s since previous |\n|---|---:|---:|")
        for what, t, d in rows:
            print(f"| {what} | {t:.2f} | {d:.2f} |")
    else:
        print(json.dumps([{"event": w, "t": t, "delta": d} for w, t, d in rows], indent=2))


if __name__ == "__main__":
    main()

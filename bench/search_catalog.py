"""Search latency on a large catalog.

Builds a catalog of N embeddings (default 100,000: random vectors, 1-3 tags from a
vocabulary of 300, a mix of families and kinds, short descriptions), then measures:

- in-process ``Library.search`` for a tag + family query and for a text query
  (median of repeated runs, warm connection);
- ``conceptlib search`` as a fresh CLI process (wall time, median of runs), which is
  what a user waits for.

Usage:
    python bench/search_catalog.py                # 100,000 entries
    python bench/search_catalog.py --n 20000 --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = [
    "watercolor",
    "oil",
    "ink",
    "pastel",
    "neon",
    "cyberpunk",
    "ukiyoe",
    "baroque",
    "gothic",
    "portrait",
    "landscape",
    "cat",
    "dog",
    "toy",
    "plush",
    "robot",
    "castle",
    "forest",
    "ocean",
    "desert",
    "city",
    "night",
    "sunset",
    "anime",
    "sketch",
    "charcoal",
    "marble",
    "bronze",
    "glass",
    "paper",
    "origami",
    "pixel",
    "vapor",
    "retro",
    "vintage",
    "film",
    "grain",
    "bokeh",
    "macro",
    "golden",
    "hour",
]


def build(home: Path, n: int, seed: int = 0) -> float:
    from conceptlib.registry.formats.embedding import Embedding
    from conceptlib.registry.library import Library, PendingEntry

    rng = np.random.default_rng(seed)
    lib = Library.open(home)
    lib.store.fsync = False
    families = ["sd1", "sd1", "sd1", "sd2", "sdxl", "sdxl"]
    kinds = ["object", "style", "negative", "other"]
    widths = {
        "sd1": {"clip_l": 768},
        "sd2": {"clip_h": 1024},
        "sdxl": {"clip_l": 768, "clip_g": 1280},
    }
    t0 = time.perf_counter()
    batch = []
    for i in range(n):
        fam = families[i % len(families)]
        slots = {
            s: rng.standard_normal((1, d)).astype(np.float32) * 0.02 for s, d in widths[fam].items()
        }
        emb = Embedding(vectors=slots)
        canonical = emb.canonical_bytes()
        sha = lib.store.put(canonical)
        tags = sorted({f"tag-{int(t)}" for t in rng.integers(0, 300, size=rng.integers(1, 4))})
        desc = " ".join(rng.choice(WORDS, size=6))
        batch.append(
            PendingEntry(
                embedding=emb,
                name=f"concept-{i:06d}",
                token=f"<concept-{i:06d}>",
                kind=kinds[i % 4],
                source="file",
                source_ref=None,
                file_sha256=sha,
                tensor_sha256=sha,
                tags=tags,
                description=desc,
                canonical=canonical,
            )
        )
        if len(batch) == 2000:
            lib._commit(batch)
            batch = []
    if batch:
        lib._commit(batch)
    lib.close()
    return time.perf_counter() - t0


def median_ms(fn, runs: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(runs):
        t0 = time.perf_counter()
        count = len(fn())
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--home", type=Path, default=None)
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="conceptlib-bench-"))
    if not (home / "catalog.db").exists():
        secs = build(home, args.n)
        print(f"built {args.n} entries in {secs:.1f} s")

    from conceptlib.registry.library import Library

    lib = Library.open(home)
    print(f"catalog: {lib.count()} entries at {home}")
    lib.search(tags=["tag-17"], family="sdxl")  # warm the connection and page cache
    ms, k = median_ms(lambda: lib.search(tags=["tag-17"], family="sdxl"), args.runs)
    print(f"in-process tag+family (tag-17, sdxl): {ms:.2f} ms median, {k} results")
    ms, k = median_ms(lambda: lib.search("watercolor neon"), args.runs)
    print(f"in-process text ('watercolor neon'): {ms:.2f} ms median, {k} results")
    ms, k = median_ms(lambda: lib.search("concept-04242"), args.runs)
    print(f"in-process text (one name): {ms:.2f} ms median, {k} results")
    lib.close()

    env = dict(os.environ, CONCEPTLIB_HOME=str(home))
    cmds = {
        "tag+family": ["search", "--tag", "tag-17", "--family", "sdxl", "--json"],
        "text": ["search", "concept-04242", "--json"],
        "--help": ["--help"],
    }
    for _label, cmd in cmds.items():
        times = []
        for _ in range(max(3, args.runs // 2)):
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "conceptlib", *cmd],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            times.append((time.perf_counter() - t0) * 1000)
        print(
            f"CLI process `conceptlib {' '.join(cmd)}`: {statistics.median(times):.0f} ms median wall"
        )
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    print(f"(bare `python -c pass` on this machine: {(time.perf_counter() - t0) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()

"""Bulk import throughput: N small safetensors embeddings in one folder.

Writes N distinct ``emb_params`` files (SD 1.x, 1-4 vectors; kohya/Civitai layout),
then times ``conceptlib import FOLDER`` in-process (``Library.import_paths``) and as
a CLI process, on fresh catalogs. Run with several N to see how it scales.

Usage:
    python bench/bulk_import.py                    # N = 1,000, 3,000 and 10,000
    python bench/bulk_import.py --n 10000
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_files(folder: Path, n: int, seed: int = 0) -> None:
    from conceptlib.registry.formats.safetensors_io import write_safetensors

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        rows = int(rng.integers(1, 5))
        arr = (rng.standard_normal((rows, 768)) * 0.02).astype(np.float32)
        (folder / f"emb-{i:05d}.safetensors").write_bytes(write_safetensors({"emb_params": arr}))


def in_process(folder: Path, home: Path) -> tuple[float, int]:
    from conceptlib.registry.library import Library

    lib = Library.open(home)
    t0 = time.perf_counter()
    report = lib.import_paths([folder])
    secs = time.perf_counter() - t0
    lib.close()
    return secs, len(report.imported)


def as_cli(folder: Path, home: Path) -> float:
    env = dict(os.environ, CONCEPTLIB_HOME=str(home))
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "conceptlib", "import", str(folder), "--quiet"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, nargs="*", default=[1000, 3000, 10000])
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="conceptlib-bulk-"))
    try:
        print(f"{'files':>7} {'in-process s':>13} {'files/s':>8} {'CLI s':>7} {'files/s':>8}")
        for n in args.n:
            folder = root / f"files-{n}"
            make_files(folder, n)
            os.sync()  # flush the generated inputs now, not inside the timed import
            secs, imported = in_process(folder, root / f"home-a-{n}")
            assert imported == n, (imported, n)
            os.sync()
            cli_secs = as_cli(folder, root / f"home-b-{n}")
            print(f"{n:>7} {secs:>13.2f} {n / secs:>8.0f} {cli_secs:>7.2f} {n / cli_secs:>8.0f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Benchmark: encoding a long prompt (300 positions, 10 embeddings) in 75-position chunks,
side by side with a prompt that fits one chunk (75 positions, the same 10 embeddings).

Both go through ``compose`` on the built-in ``tiny-sd1`` (real CLIP-L width, 768; the
text tower's depth is tiny, so the figures show the chunking's overhead, not a full
CLIP's cost). The timed part is ``compose.encode.pipeline_kwargs``: cutting nothing (the
chunk plan is made before it), encoding every chunk of prompt and negative with the
embeddings loaded, and padding them to the same length. Each encode is repeated
``--repeat`` times inside one ``compose`` run, interleaved short/long for ``--rounds``.

Run:
    python bench/encode_prompts.py                       # 3 rounds x 20 encodes
    python bench/encode_prompts.py --rounds 5 --repeat 50 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

EMBEDDINGS = 10
VECTORS = 2  # each embedding's vectors: 10 x 2 = 20 positions


def prompt_of(positions: int) -> str:
    """``positions`` positions: the 10 embeddings (20) and plain words for the rest."""
    words = positions - EMBEDDINGS * VECTORS
    refs = [f"<bench-{i}>" for i in range(EMBEDDINGS)]
    parts, every = [], max(1, words // EMBEDDINGS)
    for i in range(words):
        parts.append("cat")  # one position each
        if i % every == every - 1 and refs:
            parts.append(refs.pop())
    return " ".join(parts + refs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("CONCEPTLIB_DEVICE", "cpu")
    tmp = Path(tempfile.mkdtemp(prefix="conceptlib-bench-encode-"))
    os.environ["CONCEPTLIB_HOME"] = str(tmp / "home")

    import torch

    import conceptlib.compose.encode as encode
    from conceptlib.compose.compose import compose
    from conceptlib.models import load_base
    from conceptlib.registry.library import Library
    from conceptlib.registry.samples import sample_embedding

    torch.manual_seed(0)
    lib = Library.open()
    for i in range(EMBEDDINGS):
        lib.add_embedding(sample_embedding("sd1", VECTORS, 100 + i), name=f"bench-{i}")
    bm = load_base("tiny-sd1", device="cpu")
    real = encode.pipeline_kwargs
    timings: dict[str, list[float]] = {"75": [], "300": []}
    chunks: dict[str, int] = {}
    current = {"case": ""}

    def timed(*a, **k):  # noqa: ANN002, ANN003
        out = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            with torch.inference_mode():
                out = real(*a, **k)
            timings[current["case"]].append((time.perf_counter() - start) * 1000)
        chunks[current["case"]] = out["prompt_embeds"].shape[1] // 77
        return out

    encode.pipeline_kwargs = timed
    prompts = {"75": prompt_of(75), "300": prompt_of(300)}
    for r in range(args.rounds):
        for case in ("75", "300") if r % 2 == 0 else ("300", "75"):
            current["case"] = case
            compose(prompts[case], negative="blurry, lowres", base=bm, library=lib,
                    steps=1, width=32, height=32, seed=1, out=tmp / f"{case}-{r}.png",
                    overwrite=True)  # fmt: skip
    encode.pipeline_kwargs = real
    lib.close()
    med = {k: statistics.median(v) for k, v in timings.items()}
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "args": vars(args) | {"json": str(args.json) if args.json else None},
        "median_ms": med,
        "chunks": chunks,
        "ratio_300_to_75": med["300"] / med["75"],
        "samples": {k: len(v) for k, v in timings.items()},
    }
    print(f"Machine: {result['machine']}; median of {result['samples']['75']} encodes each.")
    print("| prompt | chunks | ms per encode (prompt + negative) | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| 75 positions, 10 embeddings | {chunks['75']} | {med['75']:.2f} | 1.00x |")
    print(
        f"| 300 positions, 10 embeddings | {chunks['300']} | {med['300']:.2f} | "
        f"{result['ratio_300_to_75']:.2f}x |"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

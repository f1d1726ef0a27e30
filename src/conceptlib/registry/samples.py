"""Sample embeddings made by code, for the demo and the tests.

Deterministic (fixed seeds), in the layouts people actually have on disk, so the
demo exercises format detection, sidecars and search without any download. Every
name starts with ``demo-``: no real concept (sd-concepts-library's ``cat-toy``,
``midjourney-style``...) is named like that, so after the demo pulling or importing
a real one never collides with a sample's name or token.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from conceptlib.registry.formats.embedding import Embedding

#: (file name, format, family, vectors, description, civitai-style tags, kind); the file
#: name becomes the entry's name and token (``<name>`` for the diffusers one).
SAMPLES = [
    (
        "demo-watercolor",
        "safetensors",
        "sd1",
        2,
        "soft watercolor washes on paper",
        ["style", "watercolor"],
        "style",
    ),
    (
        "demo-woodblock",
        "a1111-pt",
        "sd1",
        3,
        "woodblock ukiyo-e print style",
        ["style", "japanese"],
        "style",
    ),
    ("demo-plush-cat", "diffusers", "sd1", 1, "a small plush cat toy", ["object", "toy"], "object"),
    (
        "demo-negative",
        "safetensors",
        "sd1",
        8,
        "a negative embedding for cleaner images",
        ["negative"],
        "negative",
    ),
    (
        "demo-neon-city-xl",
        "sdxl",
        "sdxl",
        2,
        "neon-lit city at night, SDXL",
        ["style", "city"],
        "style",
    ),
    (
        "demo-stone-golem-sd2",
        "safetensors",
        "sd2",
        2,
        "a mossy stone golem",
        ["object", "fantasy"],
        "object",
    ),
]

_WIDTHS = {"sd1": {"clip_l": 768}, "sd2": {"clip_h": 1024}, "sdxl": {"clip_l": 768, "clip_g": 1280}}


def sample_embedding(family: str, n: int, seed: int) -> Embedding:
    rng = np.random.default_rng(seed)
    # Scale like real CLIP token embeddings (per-vector norm around 0.4).
    slots = {
        slot: (rng.standard_normal((n, d)) * (0.4 / np.sqrt(d))).astype(np.float32)
        for slot, d in _WIDTHS[family].items()
    }
    return Embedding.from_slots(slots)


def write_sample_folder(folder: Path) -> list[Path]:
    """Write the samples (with A1111 / Civitai sidecars) into ``folder``; return the files."""
    from conceptlib.registry.formats import write_embedding

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for i, (name, fmt, family, n, desc, tags, _kind) in enumerate(SAMPLES):
        emb = sample_embedding(family, n, seed=1000 + i)
        files = write_embedding(
            emb, fmt, name=name, token=f"<{name}>" if fmt == "diffusers" else name
        )
        if fmt == "diffusers":
            sub = folder / name
            sub.mkdir(exist_ok=True)
            for rel, data in files.items():
                (sub / rel).write_bytes(data)
                written.append(sub / rel)
            continue
        ((rel, data),) = files.items()
        suffix = ".pt" if fmt == "a1111-pt" else ".safetensors"
        path = folder / f"{name}{suffix}"
        path.write_bytes(data)
        written.append(path)
        info = {
            "baseModel": {"sd1": "SD 1.5", "sd2": "SD 2.1", "sdxl": "SDXL 1.0"}[family],
            "trainedWords": [name],
            "description": desc,
            "model": {"name": name, "type": "TextualInversion", "tags": tags},
        }
        (folder / f"{name}.civitai.info").write_text(json.dumps(info), encoding="utf-8")
    return written

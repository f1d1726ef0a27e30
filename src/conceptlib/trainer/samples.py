"""Procedural sample images for the demo and the tests: one toy on varied backgrounds.

The "toy" is always the same object (an orange round-bodied figure with ears, eyes
and a blue scarf) seen at different places, sizes and angles over different
backgrounds, which is what a textual-inversion training set looks like. Everything
comes from a seeded NumPy generator, so the bytes are the same on every machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

_BACKGROUNDS = [
    ((235, 225, 205), (190, 170, 140)),  # sand
    ((200, 225, 245), (90, 140, 200)),  # sky
    ((210, 235, 205), (80, 150, 90)),  # grass
    ((245, 215, 225), (170, 110, 140)),  # pink wall
    ((225, 225, 230), (120, 120, 130)),  # concrete
    ((250, 240, 200), (210, 160, 60)),  # sunset
    ((215, 205, 240), (110, 90, 170)),  # dusk
    ((230, 215, 200), (140, 100, 70)),  # wood
]


def _background(rng: np.random.Generator, size: int, index: int) -> Any:
    from PIL import Image

    top, bottom = (np.array(c, dtype=np.float32) for c in _BACKGROUNDS[index % len(_BACKGROUNDS)])
    y = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    grad = top * (1 - y) + bottom * y
    grad = np.broadcast_to(grad, (size, size, 3)).copy()
    grad += rng.normal(0.0, 4.0, size=grad.shape).astype(np.float32)  # a little texture
    return Image.fromarray(np.clip(grad, 0, 255).astype(np.uint8), mode="RGB")


def _toy(size: int, scale: float) -> Any:
    """The toy on a transparent square canvas of side ``size``."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    s = size * scale
    cx, cy = size / 2, size * 0.58
    body, head = 0.22 * s, 0.16 * s
    orange, dark = (240, 120, 40, 255), (120, 50, 20, 255)
    hy = cy - body - head * 0.6
    for ex in (-1, 1):  # ears
        ex_c = cx + ex * head * 0.75
        d.ellipse(
            [ex_c - head * 0.35, hy - head * 1.05, ex_c + head * 0.35, hy - head * 0.35], fill=dark
        )
    d.ellipse([cx - body, cy - body, cx + body, cy + body], fill=orange, outline=dark, width=2)
    d.ellipse([cx - head, hy - head, cx + head, hy + head], fill=orange, outline=dark, width=2)
    for ex in (-1, 1):  # eyes
        e = cx + ex * head * 0.4
        d.ellipse(
            [e - head * 0.14, hy - head * 0.2, e + head * 0.14, hy + head * 0.08],
            fill=(20, 20, 20, 255),
        )
    d.rectangle(
        [cx - body * 0.8, cy - body * 1.02, cx + body * 0.8, cy - body * 0.78],
        fill=(40, 90, 200, 255),
    )
    d.ellipse(
        [cx - body * 0.3, cy - body * 0.1, cx + body * 0.3, cy + body * 0.5],
        fill=(250, 200, 150, 255),
    )
    return img


def sample_images(n: int = 6, *, size: int = 128, seed: int = 0) -> list[Any]:
    """``n`` RGB images of the same toy on varied backgrounds (deterministic)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        bg = _background(rng, size, i)
        scale = float(rng.uniform(0.75, 1.05))
        angle = float(rng.uniform(-20, 20))
        toy = _toy(size, scale).rotate(angle, resample=3, expand=False)
        dx = int(rng.integers(-size // 8, size // 8 + 1))
        dy = int(rng.integers(-size // 10, size // 10 + 1))
        bg.paste(toy, (dx, dy), toy)
        out.append(bg)
    return out


def write_sample_images(
    folder: str | os.PathLike[str], n: int = 6, *, size: int = 128, seed: int = 0
) -> list[Path]:
    """Write :func:`sample_images` as ``toy-00.png``... into ``folder``; return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(sample_images(n, size=size, seed=seed)):
        p = folder / f"toy-{i:02d}.png"
        img.save(p, format="PNG", optimize=False)
        paths.append(p)
    return paths

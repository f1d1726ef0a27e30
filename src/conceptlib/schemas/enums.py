"""The shared enums. ``str`` enums so they serialize as their value."""

from __future__ import annotations

from enum import Enum


class Family(str, Enum):
    """Base-model family, derived from an embedding's slot widths."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"

    def __str__(self) -> str:
        return self.value


class Kind(str, Enum):
    OBJECT = "object"
    STYLE = "style"
    NEGATIVE = "negative"
    OTHER = "other"

    def __str__(self) -> str:
        return self.value


class Source(str, Enum):
    TRAINED = "trained"
    FILE = "file"
    HUB = "hub"
    CIVITAI = "civitai"
    BLEND = "blend"

    def __str__(self) -> str:
        return self.value


class Slot(str, Enum):
    """A text-encoder slot of the canonical embedding, named by its encoder."""

    CLIP_L = "clip_l"  # 768: SD 1.x and SDXL's first encoder
    CLIP_H = "clip_h"  # 1024: SD 2.x
    CLIP_G = "clip_g"  # 1280: SDXL's second encoder

    def __str__(self) -> str:
        return self.value


SLOT_WIDTH: dict[str, int] = {"clip_l": 768, "clip_h": 1024, "clip_g": 1280}
WIDTH_SLOT: dict[int, str] = {v: k for k, v in SLOT_WIDTH.items()}
FAMILY_SLOTS: dict[Family, tuple[str, ...]] = {
    Family.SD1: ("clip_l",),
    Family.SD2: ("clip_h",),
    Family.SDXL: ("clip_l", "clip_g"),
}


def compatibility(embedding_family: Family | str, model_family: Family | str) -> str:
    """How an embedding of one family fits a model of another.

    Returns ``"full"``, ``"partial"`` (an SD 1.x embedding on SDXL reaches only the
    first encoder, as ComfyUI applies it; A1111 skips it) or ``"none"``.
    """
    e, m = Family(embedding_family), Family(model_family)
    if e == m:
        return "full"
    if e == Family.SD1 and m == Family.SDXL:
        return "partial"
    return "none"


def compatible_families(model_family: Family | str) -> list[Family]:
    """Families whose embeddings can be used (fully or partly) with ``model_family``."""
    return [f for f in Family if compatibility(f, model_family) != "none"]

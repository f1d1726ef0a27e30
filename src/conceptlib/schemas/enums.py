"""The shared enums. ``str`` enums so they serialize as their value."""

from __future__ import annotations

from enum import Enum


class Family(str, Enum):
    """Base-model family, derived from the set of slots an embedding holds, never
    from one width."""

    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"
    SD3 = "sd3"
    FLUX = "flux"

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
    #: An embedding bundled inside a LoRA file (``bundle_emb.<name>.*``).
    BUNDLE = "bundle"

    def __str__(self) -> str:
        return self.value


class Slot(str, Enum):
    """A text-encoder slot of the canonical embedding, named by its encoder."""

    CLIP_L = "clip_l"  # 768: SD 1.x and SDXL's first encoder
    CLIP_H = "clip_h"  # 1024: SD 2.x
    CLIP_G = "clip_g"  # 1280: SDXL's second encoder
    T5XXL = "t5xxl"  # 4096: the T5-XXL encoder of SD3 and FLUX

    def __str__(self) -> str:
        return self.value


SLOT_WIDTH: dict[str, int] = {"clip_l": 768, "clip_h": 1024, "clip_g": 1280, "t5xxl": 4096}
WIDTH_SLOT: dict[int, str] = {v: k for k, v in SLOT_WIDTH.items()}
#: Other names files give a slot: OneTrainer writes ``t5`` where ComfyUI reads ``t5xxl``.
SLOT_ALIASES: dict[str, str] = {"t5": "t5xxl"}
#: The text encoders of each family's models, in pipeline order.
FAMILY_SLOTS: dict[Family, tuple[str, ...]] = {
    Family.SD1: ("clip_l",),
    Family.SD2: ("clip_h",),
    Family.SDXL: ("clip_l", "clip_g"),
    Family.SD3: ("clip_l", "clip_g", "t5xxl"),
    Family.FLUX: ("clip_l", "t5xxl"),
}
#: The family of an embedding, from the set of slots it holds. SD3 and FLUX files may
#: leave an encoder out (OneTrainer writes only the encoders it trained): a file with
#: ``t5xxl`` and ``clip_g`` is SD3 (only SD3 has both); ``t5xxl`` alone is recorded as
#: FLUX, whose T5-XXL encoder SD3 shares (on SD3 it is ``partial``). ``clip_l`` alone
#: stays SD 1.x and ``clip_l`` + ``clip_g`` SDXL: nothing in the vectors tells them
#: from an SD3/FLUX file that left T5 out.
EMBEDDING_FAMILIES: dict[frozenset[str], Family] = {
    frozenset({"clip_l"}): Family.SD1,
    frozenset({"clip_h"}): Family.SD2,
    frozenset({"clip_l", "clip_g"}): Family.SDXL,
    frozenset({"clip_l", "clip_g", "t5xxl"}): Family.SD3,
    frozenset({"clip_g", "t5xxl"}): Family.SD3,
    frozenset({"clip_l", "t5xxl"}): Family.FLUX,
    frozenset({"t5xxl"}): Family.FLUX,
}
#: Families conceptlib can load a pipeline for (compose, train); the others can be
#: imported, searched, exported and bundled, and ``compose`` refuses them.
PIPELINE_FAMILIES: tuple[Family, ...] = (Family.SD1, Family.SD2, Family.SDXL)

#: Pairs (embedding family, model family) that are ``partial`` (every other pair of
#: different families is ``none``): the embedding's vectors reach some of the model's
#: text encoders and the rest get neutral vectors. SD 1.x on SDXL is what ComfyUI does
#: (A1111 and InvokeAI skip it); the SD3/FLUX rows are the encoders the two families
#: share (CLIP-L everywhere but SD 2.x, CLIP-G in SDXL and SD3, T5-XXL in SD3 and
#: FLUX). An SDXL embedding on SD 1.x stays ``none``, as A1111 and InvokeAI have it.
PARTIAL_PAIRS: frozenset[tuple[Family, Family]] = frozenset(
    {
        (Family.SD1, Family.SDXL),
        (Family.SD1, Family.SD3),
        (Family.SD1, Family.FLUX),
        (Family.SDXL, Family.SD3),
        (Family.SDXL, Family.FLUX),
        (Family.SD3, Family.SD1),
        (Family.SD3, Family.SDXL),
        (Family.SD3, Family.FLUX),
        (Family.FLUX, Family.SD1),
        (Family.FLUX, Family.SDXL),
        (Family.FLUX, Family.SD3),
    }
)


def canonical_slot(key: str) -> str:
    """The slot a file's key names: ``t5`` -> ``t5xxl``; other keys unchanged."""
    return SLOT_ALIASES.get(key, key)


def compatibility(embedding_family: Family | str, model_family: Family | str) -> str:
    """How an embedding of one family fits a model of another.

    Returns ``"full"`` (same family), ``"partial"`` (a pair in :data:`PARTIAL_PAIRS`:
    e.g. an SD 1.x embedding on SDXL reaches only the first encoder, as ComfyUI
    applies it; a FLUX embedding's ``clip_l`` part reaches SD 1.x's encoder) or
    ``"none"``.
    """
    e, m = Family(embedding_family), Family(model_family)
    if e == m:
        return "full"
    if (e, m) in PARTIAL_PAIRS:
        return "partial"
    return "none"


def shared_slots(embedding_family: Family | str, model_family: Family | str) -> list[str]:
    """The model's text-encoder slots an embedding of ``embedding_family`` can fill."""
    own = {
        s for key, fam in EMBEDDING_FAMILIES.items() if fam == Family(embedding_family) for s in key
    }
    return [s for s in FAMILY_SLOTS[Family(model_family)] if s in own]


def compatible_families(model_family: Family | str) -> list[Family]:
    """Families whose embeddings can be used (fully or partly) with ``model_family``."""
    return [f for f in Family if compatibility(f, model_family) != "none"]

"""Ordinary words that must not become trigger names (bad input 19).

An embedding whose trigger is an ordinary word ("painting") silently changes what
that word means in every prompt. Where a real tokenizer is at hand (training,
composing) its vocabulary is checked; at import time, when no tokenizer is known,
this list of words common in prompts stands in for it.
"""

from __future__ import annotations

from collections.abc import Mapping

_WORDS = [
    "a",
    "an",
    "the",
    "and",
    "or",
    "of",
    "in",
    "on",
    "at",
    "to",
    "for",
    "with",
    "by",
    "from",
    "as",
    "is",
    "it",
    "this",
    "that",
    "these",
    "those",
    "be",
    "are",
    "was",
    "art",
    "artwork",
    "photo",
    "photograph",
    "photography",
    "picture",
    "image",
    "painting",
    "paint",
    "drawing",
    "sketch",
    "illustration",
    "render",
    "rendering",
    "style",
    "styles",
    "portrait",
    "landscape",
    "still",
    "life",
    "scene",
    "background",
    "foreground",
    "cat",
    "dog",
    "bird",
    "horse",
    "fish",
    "man",
    "woman",
    "girl",
    "boy",
    "person",
    "people",
    "child",
    "face",
    "eyes",
    "hair",
    "hand",
    "hands",
    "body",
    "house",
    "city",
    "street",
    "forest",
    "tree",
    "trees",
    "flower",
    "flowers",
    "sky",
    "cloud",
    "clouds",
    "sea",
    "ocean",
    "water",
    "river",
    "lake",
    "mountain",
    "mountains",
    "sun",
    "moon",
    "night",
    "day",
    "light",
    "dark",
    "shadow",
    "color",
    "colour",
    "colors",
    "red",
    "green",
    "blue",
    "yellow",
    "black",
    "white",
    "gray",
    "grey",
    "orange",
    "purple",
    "pink",
    "brown",
    "gold",
    "silver",
    "oil",
    "watercolor",
    "watercolour",
    "ink",
    "pencil",
    "charcoal",
    "pastel",
    "acrylic",
    "digital",
    "anime",
    "cartoon",
    "comic",
    "manga",
    "realistic",
    "photorealistic",
    "cinematic",
    "dramatic",
    "beautiful",
    "detailed",
    "intricate",
    "masterpiece",
    "best",
    "quality",
    "high",
    "low",
    "good",
    "bad",
    "ugly",
    "worst",
    "blurry",
    "sharp",
    "bokeh",
    "hdr",
    "4k",
    "8k",
    "negative",
    "positive",
    "embedding",
    "embeddings",
    "token",
    "lora",
    "model",
    "checkpoint",
    "toy",
    "car",
    "robot",
    "castle",
    "dragon",
    "monster",
    "knight",
    "warrior",
    "wizard",
    "princess",
    "king",
    "queen",
    "small",
    "large",
    "big",
    "little",
    "old",
    "new",
    "young",
    "cute",
    "object",
    "objects",
    "thing",
    "concept",
    "style",
]

COMMON_WORDS: frozenset[str] = frozenset(_WORDS)


def is_common_word(name: str) -> bool:
    """True when ``name`` (case-insensitively, without ``<>``) is an ordinary prompt word."""
    n = name.strip().casefold()
    if len(n) > 2 and n.startswith("<") and n.endswith(">"):
        return False  # "<painting>" is a distinct token, not the word
    return n in COMMON_WORDS


def is_tokenizer_word(
    tokenizer: object, token: str, *, vocab: Mapping[str, int] | None = None
) -> bool:
    """True when ``token`` already means something to ``tokenizer``.

    The one rule for "is this trigger token a word of the model?", shared by the
    trainer (which refuses such a ``--name`` before training) and the prompt loader
    (which refuses to add such a token to a pipeline): ``token`` is one of the
    tokenizer's vocabulary entries as written, or the tokenizer turns it into a single
    id (CLIP's BPE lower-cases and marks word ends, so ``Cat`` is the one entry
    ``cat</w>``; tokens added to the tokenizer before count too). Adding such a token
    as a textual-inversion trigger would silently change what that word means in
    every prompt, here and in every UI the embedding is exported to (A1111 and
    ComfyUI match the file name, diffusers the token).

    Args:
        tokenizer: a Hugging Face tokenizer (``get_vocab()`` and ``encode()``), e.g.
            a pipeline's ``tokenizer`` or ``tokenizer_2``.
        token: the candidate trigger token (one of them: see
            :func:`conceptlib.schemas.names.expansion_tokens` for multi-vector ones).
        vocab: ``tokenizer.get_vocab()`` when the caller already has it (it is a copy
            of some 49,000 entries for CLIP: worth reusing over many tokens).
    """
    if vocab is None:
        vocab = tokenizer.get_vocab()  # type: ignore[attr-defined]
    if token in vocab:
        return True
    return len(tokenizer.encode(token, add_special_tokens=False)) == 1  # type: ignore[attr-defined]

"""ComfyUI: prompts and triggers.

Rules read off its public source (``comfy/sd1_clip.py``: ``SDTokenizer.tokenize_with_weights``,
``token_weights``, ``load_embed``; ``comfy/sdxl_clip.py``):

* **Trigger**: ``embedding:NAME``, where NAME is a file in ``models/embeddings`` with
  or without its extension (``.safetensors``, ``.pt``, ``.bin`` are tried). ComfyUI
  splits each weighted segment of the prompt on spaces and newlines only, and a word
  is an embedding only when it *starts* with ``embedding:``; of what follows, only
  trailing commas are stripped. So ``embedding:cat-toy`` needs a space (or the start
  of the prompt) before it and a space, a comma or the end after it: ``xembedding:a``
  or ``embedding:a.`` find nothing ("embedding ... does not exist, ignoring").
  Catalog names hold no spaces, parentheses or colons, so every name can be written.
* **Weights**: ``(embedding:NAME:0.8)``, applied by interpolating each token's
  encoding towards an empty prompt's (not by scaling the vectors).
* **SD 1.x embedding on SDXL**: the SDXL tokenizer loads the file for each encoder by
  key (``clip_l``, ``clip_g``) and falls back to the first tensor; a 768-wide tensor
  for the 1280-wide second encoder is dropped with "shape mismatch ... embedding will
  be ignored", so it reaches the first encoder only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from conceptlib.compose.ui.syntax import Piece, plain_number

if TYPE_CHECKING:
    from conceptlib.compose.prompt import ParsedPrompt

LABEL = "ComfyUI"
SD1_ON_SDXL = "first encoder"
SD1_ON_SDXL_HOW = (
    "ComfyUI applies it to the first text encoder only and drops its rows from the "
    "second (a shape-mismatch warning)"
)
WEIGHTS = "by interpolating towards an empty prompt (ComfyUI (embedding:name:w))"
PREFIX = "embedding:"


def trigger(name: str, token: str) -> str:
    """The name after ``embedding:``: the catalog name, which is the file's stem."""
    return name


def file_stem(name: str, token: str) -> str:
    """The embedding file's stem in ``models/embeddings``: the trigger."""
    return trigger(name, token)


def reference(trig: str, weight: float | None) -> str:
    """``embedding:trig``, or ``(embedding:trig:0.8)`` with a weight other than 1."""
    if weight is None or weight == 1.0:
        return f"{PREFIX}{trig}"
    return f"({PREFIX}{trig}:{plain_number(weight)})"


def needs_space(left: Piece, right: Piece) -> bool:
    """A bare ``embedding:NAME`` must be a word of its own: a space before it unless it
    starts the prompt, and after it unless a space, comma or the end follows.
    A weighted one is its own parenthesized segment; ``)(`` between two weighted
    segments gets a space too, so that no reader joins their words."""
    if left.weighted and right.weighted:
        return True
    if right.ref and not right.weighted:
        return True
    if left.ref and not left.weighted:
        return right.text[0] != ","
    return False


#: ComfyUI's core text encoder has no ``BREAK`` (a ``Conditioning (Concat)`` node joins
#: separately encoded prompts instead): a break cannot be written.
BREAK = False
_SYNTAX_CHARS = re.compile(r"[\\()]")


def escape(text: str) -> str:
    """Literal text in ComfyUI's syntax: ``\\``, ``(`` and ``)`` escaped with a
    backslash (square brackets are plain text there). A word starting with
    ``embedding:`` cannot be escaped."""
    return _SYNTAX_CHARS.sub(lambda m: "\\" + m.group(0), text)


def attend(text: str, weight: float) -> str:
    """Escaped literal ``text`` with attention ``weight``: ``(text:1.2)``."""
    return f"({escape(text)}:{plain_number(weight)})"


# --------------------------------------------------------------------------- reading

# ``embedding:NAME`` as a word of its own (after the start, a space or a parenthesis).
_EMBEDDING = re.compile(r"(?:(?<=[\s(])|^)embedding:(\S*)")
_EXTENSIONS = (".safetensors", ".pt", ".bin")


def read_prompt(
    prompt: str, *, which: str = "prompt", names: Callable[[str], bool] | None = None
) -> ParsedPrompt:
    """Read a ComfyUI prompt (``comfy/sd1_clip.py``: ``token_weights``,
    ``tokenize_with_weights``).

    ``(x)`` weighs x1.1, ``(x:1.2)`` x1.2 (nesting multiplies), ``\\(`` ``\\)`` are
    literal; square brackets are plain text. ``embedding:NAME``, ``embedding:NAME.pt``
    (``.safetensors``, ``.bin``: the extension is dropped unless ``names`` knows the
    name with it) and ``(embedding:NAME:1.2)`` name an embedding; trailing commas are
    not part of the name. Weights are applied the ComfyUI way when encoding
    (:mod:`conceptlib.compose.encode`).

    Raises:
        PromptSyntaxError: ``embedding:`` with no name, or a weight that is not a number.
    """
    from conceptlib.compose.ui.reading import build, refuse
    from conceptlib.compose.ui.syntax import attention_runs

    try:
        runs = attention_runs(prompt, square=False)
    except ValueError:
        raise refuse(prompt, 0, which, "a weight is not a number", "write (word:1.2)") from None

    def finder(text: str) -> list[tuple[int, int, str]]:
        spans = []
        for m in _EMBEDDING.finditer(text):
            raw = m.group(1).rstrip(",")
            if not raw:
                raise refuse(
                    prompt,
                    max(prompt.find("embedding:"), 0),
                    which,
                    "'embedding:' names no embedding",
                    "write embedding:NAME",
                )
            name = raw
            low = raw.lower()
            for ext in _EXTENSIONS:
                if low.endswith(ext) and len(raw) > len(ext) and not (names and names(raw)):
                    name = raw[: -len(ext)]
                    break
            spans.append((m.start(), m.start(1) + len(raw), name))
        return spans

    return build(prompt, runs, finder, which=which, syntax="comfyui")

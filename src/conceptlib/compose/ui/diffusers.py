"""diffusers: prompts and triggers (``load_textual_inversion``).

Rules read off its public source (``diffusers/loaders/textual_inversion.py``, 0.3x):

* **Trigger**: the token the file is keyed by (``{token: [n, d]}``), added to the
  tokenizer as a token of its own, so it is found anywhere in the prompt; a
  multi-vector token ``t`` becomes ``t t_1 ... t_{n-1}``, matched on the prompt text.
  CLIP's tokenizer lower-cases the prompt, so the token is written in that form
  (:func:`conceptlib.schemas.names.tokenizer_form`), in the file and in the prompt.
* **Weights**: none in the prompt (weigh vectors when loading, as conceptlib does).
* **SD 1.x embedding on SDXL**: ``load_textual_inversion`` loads into
  ``text_encoder``/``tokenizer`` by default: the 768-wide file fits the first encoder,
  and ``tokenizer_2`` does not know the token, so the second encoder reads it as
  plain text.
* **Folder**: one folder per entry, named after the catalog name (the folder name
  is not what the prompt matches).
"""

from __future__ import annotations

from conceptlib.compose.ui.syntax import Piece
from conceptlib.schemas.names import tokenizer_form

LABEL = "diffusers"
SD1_ON_SDXL = "first encoder"
SD1_ON_SDXL_HOW = (
    "diffusers' load_textual_inversion puts it into the first text encoder only; "
    "tokenizer_2 reads its token as plain text"
)
WEIGHTS = "not at all (diffusers prompts have no weights)"


def trigger(name: str, token: str) -> str:
    """The token in the form CLIP's tokenizer gives the prompt (lower case)."""
    return tokenizer_form(token)


def file_stem(name: str, token: str) -> str:
    """The folder the entry's ``learned_embeds*.safetensors`` go in: its catalog name."""
    return name


def reference(trig: str, weight: float | None) -> str:
    """The token itself (weights cannot be written)."""
    return trig


def needs_space(left: Piece, right: Piece) -> bool:
    """Added tokens are matched anywhere in the text: never."""
    return False


#: diffusers prompts have no ``BREAK`` and no attention: text is written as it is.
BREAK = False


def escape(text: str) -> str:
    """Literal text: unchanged (diffusers prompts have no syntax)."""
    return text


def attend(text: str, weight: float) -> str | None:
    """``None``: diffusers prompts cannot weigh text."""
    return None

"""Text rules shared by the UI modules: plain numbers, and gluing rendered references
to the text around them.

A rendered prompt is a list of :class:`Piece` (literal text and references in one UI's
syntax); :func:`glue` joins them, putting a space between a reference and its
neighbour where that UI would otherwise read the two as one word (each UI module
says when, in its ``needs_space``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class Piece:
    """One run of a rendered prompt: literal text, or one embedding reference."""

    text: str
    ref: bool = False
    weighted: bool = False


def glue(pieces: Sequence[Piece], needs_space: Callable[[Piece, Piece], bool]) -> str:
    """``pieces`` joined, with one space wherever ``needs_space(left, right)`` says so.

    Only boundaries next to a reference or a weighted piece are asked about; literal
    text is never changed.
    """
    out: list[str] = []
    prev: Piece | None = None
    for piece in pieces:
        if not piece.text:
            continue
        if (
            prev is not None
            and (prev.ref or piece.ref or prev.weighted or piece.weighted)
            and not prev.text[-1].isspace()
            and not piece.text[0].isspace()
            and needs_space(prev, piece)
        ):
            out.append(" ")
        out.append(piece.text)
        prev = piece
    return "".join(out)


def plain_number(weight: float) -> str:
    """A weight as a plain decimal (``0.8``, ``1.25``, ``0.00001``, never ``1e-05``).

    A1111's attention syntax reads ``[+-]?[.\\d]+`` after the colon, and compel's a
    plain decimal after the parenthesis, so an exponent would not be read as a weight.
    """
    text = format(Decimal(repr(float(weight))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def clip_class(ch: str) -> str:
    """The class of ``ch`` in CLIP's pre-tokenization: ``letter``, ``digit``, ``space``
    or ``other``.

    OpenAI CLIP's ``simple_tokenizer`` (and transformers' ``CLIPTokenizer``) split text
    into runs of letters (``\\p{L}+``), single digits (``\\p{N}``) and runs of other
    non-space characters, before byte-pair encoding each run.
    """
    if ch.isspace():
        return "space"
    if ch.isalpha():
        return "letter"
    if ch.isnumeric():
        return "digit"
    return "other"


def clip_runs_join(left: str, right: str) -> bool:
    """Whether CLIP's pre-tokenization reads the last character of ``left`` and the
    first of ``right`` as one run (so a word ending or starting there is not the word
    it is on its own).

    Letters join letters and other characters join other characters; digits never
    join (each is its own run). An apostrophe before a letter may start a contraction
    (``'s``, ``'t``, ``'re``...), which CLIP reads as one run, so it counts as joining.
    """
    if not left or not right:
        return False
    a, b = left[-1], right[0]
    ca, cb = clip_class(a), clip_class(b)
    if "space" in (ca, cb) or "digit" in (ca, cb):
        return False
    if a == "'" and cb == "letter":
        return True
    return ca == cb


# --------------------------------------------------------------------------- reading

# A1111's attention tokens (``modules/prompt_parser.py``, ``re_attention``), as we read
# them: escapes, brackets, ``:w)`` closing a weighted group, text, a lone colon.
_ATTENTION = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")


def attention_runs(text: str, *, square: bool = True, up: float = 1.1) -> list[tuple[str, float]]:
    """``text`` as (run, weight) pairs under A1111's emphasis rules: ``(x)`` x1.1,
    ``(x:1.3)`` x1.3, ``[x]`` /1.1 (only when ``square``), nesting multiplies, an
    unclosed bracket weighs to the end, ``\\(`` ``\\)`` ``\\[`` ``\\]`` ``\\\\`` are
    literal. Adjacent runs of equal weight are merged.

    Raises:
        ValueError: a ``:w)`` whose ``w`` is not a number (``(x:1.2.3)``).
    """
    runs: list[list[Any]] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for m in _ATTENTION.finditer(text):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\") and len(tok) == 2:
            runs.append([tok[1], 1.0])
        elif tok == "(":
            rounds.append(len(runs))
        elif tok == "[" and square:
            squares.append(len(runs))
        elif weight is not None and rounds:
            scale(rounds.pop(), float(weight))
        elif tok == ")" and rounds:
            scale(rounds.pop(), up)
        elif tok == "]" and square and squares:
            scale(squares.pop(), 1 / up)
        else:
            runs.append([tok, 1.0])
    for start in rounds:
        scale(start, up)
    for start in squares:
        scale(start, 1 / up)
    merged: list[tuple[str, float]] = []
    for run_text, w in runs:
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + run_text, w)
        else:
            merged.append((run_text, w))
    return merged

"""The prompt syntax: ``<name>`` and ``<name:0.8>`` inside ordinary prompt text.

Rules:

* ``<name>`` names an embedding (by catalog name or trigger token); ``<name:w>``
  also scales its vectors by ``w`` (a finite decimal number such as ``0.8``, ``-1``,
  ``.5``, ``1e-1``). Spaces around the colon and the weight are allowed; a name has
  no spaces.
* ``\\<``, ``\\>`` and ``\\\\`` are a literal ``<``, ``>`` and ``\\``. A ``<`` followed
  by a space or ending the prompt is literal too (``a < b``). Any other backslash is
  kept as typed, so A1111 escapes such as ``\\(`` pass through unchanged.
* Anything else that starts with ``<`` must be a complete reference; errors say the
  1-based column where the problem starts.
* ``BREAK`` (upper case, a word of its own) starts a new 75-position chunk, as in A1111.

This is conceptlib's own syntax. The prompts of A1111, ComfyUI and InvokeAI are read
by the readers under :mod:`conceptlib.compose.ui` into the same :class:`ParsedPrompt`.

Nothing here imports torch or touches the catalog.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from conceptlib.errors import InvalidWeight, PromptSyntaxError

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_ESCAPABLE = "<>\\"
#: Prefixes of A1111's other angle-bracket syntaxes, which are not embeddings.
_OTHER_SYNTAX = ("lora", "lyco", "hypernet")


@dataclass(frozen=True)
class EmbeddingRef:
    """One ``<name>`` / ``<name:w>`` in a prompt.

    Attributes:
        name: the name as typed (trimmed).
        weight: the weight as written, or ``None`` when none was given.
        start: offset of ``<`` in the prompt.
        end: offset just past ``>``.
        raw: the reference as typed, brackets included.
    """

    name: str
    weight: float | None
    start: int
    end: int
    raw: str

    @property
    def effective_weight(self) -> float:
        return 1.0 if self.weight is None else self.weight

    @property
    def column(self) -> int:
        return self.start + 1


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt split into literal text (escapes resolved) and embedding references.

    Attributes:
        source: the prompt as typed.
        parts: literal strings and :class:`EmbeddingRef` in order.
        which: ``"prompt"`` or ``"negative prompt"`` (used in messages).
    """

    source: str
    parts: tuple[str | EmbeddingRef, ...]
    which: str = "prompt"
    #: Attention per part (aligned with ``parts``; empty: all 1.0). Set by the A1111,
    #: ComfyUI and InvokeAI readers (:mod:`conceptlib.compose.ui`); see :attr:`syntax`
    #: for how it is applied.
    attention: tuple[float, ...] = ()
    #: ``BREAK`` positions: a new 75-position chunk starts before ``parts[i]``
    #: (``i == len(parts)``: after the last part). May repeat (an empty chunk).
    breaks: tuple[int, ...] = ()
    #: The syntax it was read in: ``conceptlib``, ``a1111``, ``comfyui``, ``invokeai``.
    syntax: str = "conceptlib"

    def attention_of(self, index: int) -> float:
        """The attention weight of ``parts[index]`` (1.0 when none was set)."""
        return self.attention[index] if self.attention else 1.0

    @property
    def refs(self) -> list[EmbeddingRef]:
        return [p for p in self.parts if isinstance(p, EmbeddingRef)]

    @property
    def literal_text(self) -> str:
        """The text without the references (each replaced by one space)."""
        return "".join(p if isinstance(p, str) else " " for p in self.parts)

    def render(
        self,
        ref: Callable[[EmbeddingRef], str],
        text: Callable[[str], str] | None = None,
    ) -> str:
        """Rebuild the prompt, turning each reference (and optionally each text run) into text."""
        out = []
        for p in self.parts:
            if isinstance(p, EmbeddingRef):
                out.append(ref(p))
            else:
                out.append(text(p) if text else p)
        return "".join(out)


def escape_literal(text: str) -> str:
    """Escape text so that :func:`parse_prompt` reads it back as literal text."""
    return "".join("\\" + ch if ch in _ESCAPABLE else ch for ch in text)


def parse_prompt(prompt: str, *, which: str = "prompt") -> ParsedPrompt:
    """Split ``prompt`` into literal text and embedding references.

    Raises:
        PromptSyntaxError: an unclosed or empty ``<...>``, a name with spaces, more
            than one colon; the message gives the column.
        InvalidWeight: a weight that is not a finite number.
    """
    parts: list[str | EmbeddingRef] = []
    buf: list[str] = []
    i, n = 0, len(prompt)

    def flush() -> None:
        if buf:
            parts.append("".join(buf))
            buf.clear()

    while i < n:
        ch = prompt[i]
        if ch == "\\" and i + 1 < n and prompt[i + 1] in _ESCAPABLE:
            buf.append(prompt[i + 1])
            i += 2
            continue
        if ch != "<" or i + 1 >= n or prompt[i + 1].isspace():
            buf.append(ch)
            i += 1
            continue
        close = _find_close(prompt, i, which)
        flush()
        parts.append(_parse_ref(prompt, i, close, which))
        i = close + 1
    flush()
    return with_breaks(prompt, [(p, 1.0) for p in parts], which=which, syntax="conceptlib")


#: A1111's ``BREAK``: upper case, standing alone (``modules/prompt_parser.py`` splits
#: on ``\s*\bBREAK\b\s*``); every syntax here reads it the same way.
BREAK_WORD = re.compile(r"\s*\bBREAK\b\s*")


def with_breaks(
    source: str,
    pieces: list[tuple[str | EmbeddingRef, float]],
    *,
    which: str,
    syntax: str,
) -> ParsedPrompt:
    """A :class:`ParsedPrompt` from (part, attention) pairs, with each standalone
    ``BREAK`` in the text taken out and recorded as a chunk break; adjacent text runs
    of equal attention are merged."""
    parts: list[str | EmbeddingRef] = []
    attention: list[float] = []
    breaks: list[int] = []

    def add_text(text: str, weight: float) -> None:
        if not text:
            return
        if parts and isinstance(parts[-1], str) and attention[-1] == weight:
            last = len(parts) - 1
            if last not in breaks and len(parts) not in breaks:
                parts[-1] = parts[-1] + text
                return
        parts.append(text)
        attention.append(weight)

    for part, weight in pieces:
        if isinstance(part, EmbeddingRef):
            parts.append(part)
            attention.append(weight)
            continue
        chunks = BREAK_WORD.split(part)
        for k, text in enumerate(chunks):
            if k:
                breaks.append(len(parts))
            add_text(text, weight)
    plain = all(w == 1.0 for w in attention)
    return ParsedPrompt(
        source=source,
        parts=tuple(parts),
        which=which,
        attention=() if plain else tuple(attention),
        breaks=tuple(breaks),
        syntax=syntax,
    )


def syntax_error(
    cls: type[PromptSyntaxError], prompt: str, pos: int, which: str, what: str, hint: str
) -> PromptSyntaxError:
    """A ``cls`` error at 0-based ``pos`` of ``prompt``; the message gives the 1-based
    column (every prompt reader reports errors this way)."""
    return cls(
        f"{which}, column {pos + 1}: {what}",
        hint=hint,
        prompt=prompt,
        position=pos,
        column=pos + 1,
        which=which,
    )


def _find_close(prompt: str, start: int, which: str) -> int:
    j = start + 1
    while j < len(prompt):
        c = prompt[j]
        if c == ">":
            return j
        if c in "<\n" or (c == "\\" and j + 1 < len(prompt) and prompt[j + 1] in _ESCAPABLE):
            break
        j += 1
    snippet = prompt[start : min(len(prompt), start + 24)]
    raise syntax_error(
        PromptSyntaxError,
        prompt,
        start,
        which,
        f"'<' opens an embedding reference that is never closed ({snippet!r}); "
        "expected <name> or <name:weight>",
        "write \\< for a literal '<'",
    )


def _parse_ref(prompt: str, start: int, close: int, which: str) -> EmbeddingRef:
    raw = prompt[start : close + 1]
    body = prompt[start + 1 : close]
    pieces = body.split(":")
    if len(pieces) > 2:
        head = pieces[0].strip().lower()
        hint = (
            f"<{head}:...> is A1111 {head} syntax; only embeddings can be composed"
            if head in _OTHER_SYNTAX
            else "write <name> or <name:0.8>; write \\< for a literal '<'"
        )
        raise syntax_error(
            PromptSyntaxError,
            prompt,
            start,
            which,
            f"{raw} has {len(pieces) - 1} colons; expected <name> or <name:weight>",
            hint,
        )
    name = pieces[0].strip()
    if not name:
        raise syntax_error(
            PromptSyntaxError,
            prompt,
            start,
            which,
            f"{raw} names no embedding; expected <name> or <name:weight>",
            "write \\<\\> for a literal '<>'",
        )
    if any(c.isspace() for c in name):
        raise syntax_error(
            PromptSyntaxError,
            prompt,
            start,
            which,
            f"{raw}: embedding names contain no spaces; expected <name> or <name:weight>",
            "write \\< for a literal '<'",
        )
    weight: float | None = None
    if len(pieces) == 2:
        text = pieces[1].strip()
        wpos = start + 1 + len(pieces[0]) + 1
        if not _NUMBER.fullmatch(text):
            raise syntax_error(
                InvalidWeight,
                prompt,
                wpos,
                which,
                f"the weight {text!r} of {raw} is not a number; expected e.g. <{name}:0.8>",
                "weights are decimal numbers such as 0.8, 1.2 or -0.5",
            )
        weight = float(text)
        if not math.isfinite(weight):
            raise syntax_error(
                InvalidWeight,
                prompt,
                wpos,
                which,
                f"the weight {text!r} of {raw} is not finite; expected e.g. <{name}:0.8>",
                "weights are decimal numbers such as 0.8, 1.2 or -0.5",
            )
    return EmbeddingRef(name=name, weight=weight, start=start, end=close + 1, raw=raw)


def parse_number(text: str) -> float | None:
    """``text`` as a finite float when it is a plain decimal number, else ``None``."""
    t = text.strip()
    if not _NUMBER.fullmatch(t):
        return None
    value = float(t)
    return value if math.isfinite(value) else None


def format_weight(weight: float) -> str:
    """A weight as short, round-trippable text: ``0.8``, ``1``, ``-0.25``."""
    text = repr(float(weight))
    if text.endswith(".0"):
        text = text[:-2]
    return text

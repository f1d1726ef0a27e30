"""What the UI readers share: turning (text, attention) runs into a
:class:`~conceptlib.compose.prompt.ParsedPrompt`, and their error messages.

Each UI module (:mod:`.a1111`, :mod:`.comfyui`, :mod:`.invokeai`) reads its attention
syntax into runs, then names where the embeddings are in each run's text (a *finder*:
text -> ``(start, end, name)`` spans); this module cuts the runs there, makes the
:class:`~conceptlib.compose.prompt.EmbeddingRef` (with its column in the prompt as
typed) and takes ``BREAK`` out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from conceptlib.compose.prompt import EmbeddingRef, ParsedPrompt, syntax_error, with_breaks
from conceptlib.errors import PromptSyntaxError

Finder = Callable[[str], list[tuple[int, int, str]]]


def refuse(prompt: str, pos: int, which: str, what: str, hint: str) -> PromptSyntaxError:
    """A :class:`PromptSyntaxError` at 0-based ``pos`` (the message gives the column)."""
    return syntax_error(PromptSyntaxError, prompt, max(pos, 0), which, what, hint)


def build(
    source: str,
    runs: Sequence[tuple[str, float]],
    finder: Finder,
    *,
    which: str,
    syntax: str,
) -> ParsedPrompt:
    """The parsed prompt of ``runs``: each span ``finder`` returns becomes an
    embedding reference carrying its run's attention (its vector weight stays unset)."""
    pieces: list[tuple[str | EmbeddingRef, float]] = []
    cursor = 0
    for text, weight in runs:
        at = 0
        for start, end, name in finder(text):
            if start > at:
                pieces.append((text[at:start], weight))
            raw = text[start:end]
            found = source.find(raw, cursor)
            pos = found if found >= 0 else cursor
            cursor = pos + len(raw) if found >= 0 else cursor
            ref = EmbeddingRef(name=name, weight=None, start=pos, end=pos + len(raw), raw=raw)
            pieces.append((ref, weight))
            at = end
        if at < len(text):
            pieces.append((text[at:], weight))
    return with_breaks(source, pieces, which=which, syntax=syntax)

"""Split a prompt into CLIP's 75-position chunks, the way A1111 does.

CLIP reads 77 positions (a start token, 75 for the prompt, an end token), so a longer
prompt is cut into chunks of 75 that are encoded one by one, each between its own start
and end tokens, and concatenated along the sequence: a prompt of 2 chunks conditions
the UNet with 154 positions. The rules follow AUTOMATIC1111's
``modules/sd_hijack_clip.py`` (``FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line``):

* text is tokenized run by run; each token takes one position;
* when a chunk is full and the last comma in it is within the last 20 positions
  (A1111's "comma padding backtrack", default 20), the tokens after that comma move to
  the next chunk, so a phrase is not cut in two;
* an embedding's vectors stay together: one that does not fit in what is left of a
  chunk starts the next (the rest is padded); only an embedding longer than a whole
  chunk is split across chunks;
* ``BREAK`` starts a new chunk (the current one is padded);
* an empty prompt is one chunk.

ComfyUI (``comfy/sd1_clip.py``) chunks at 75 too, keeping whole words and embeddings
together but without the comma back-off, so a prompt that needs the back-off is cut
a few positions apart there. Nothing here imports torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conceptlib.compose.prompt import EmbeddingRef, ParsedPrompt

#: Positions of one chunk (CLIP's 77 minus start and end).
WINDOW = 75
#: A1111's ``comma_padding_backtrack`` default: how far back a comma may be.
BACKTRACK = 20
#: Chunks a prompt may use (a size cap on untrusted prompts: 2,400 positions).
MAX_CHUNKS = 32

# CLIP's pre-tokenizer (contractions, letter runs, single digits, other-symbol runs):
# each piece is at least one token, so counting them never over-counts.
_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)
_COMMAS = {",", ",</w>"}


@dataclass(frozen=True)
class Position:
    """One position of a chunk.

    Attributes:
        token: the tokenizer's token string (``cat</w>``), or for an embedding the
            token its vector was loaded under; an estimated word piece without a tokenizer.
        attention: the attention weight read from the prompt (1.0: none).
        ref: index into ``parsed.refs`` of the embedding this vector belongs to, else ``None``.
        vector: which vector of that embedding (0-based).
    """

    token: str
    attention: float = 1.0
    ref: int | None = None
    vector: int = 0


@dataclass
class ChunkPlan:
    """A prompt cut into chunks of at most :attr:`window` positions.

    Attributes:
        which: ``"prompt"`` or ``"negative prompt"``.
        chunks: each chunk's positions (without start, end and padding).
        window: positions per chunk (75 for CLIP).
        exact: counted with the model's tokenizer (else a lower bound from CLIP's
            pre-tokenization).
    """

    which: str
    chunks: list[list[Position]] = field(default_factory=list)
    window: int = WINDOW
    exact: bool = True

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.chunks]

    def summary(self) -> str:
        """``1 chunk`` or ``2 chunks (75 + 8)``."""
        if len(self.chunks) == 1:
            return "1 chunk"
        return f"{len(self.chunks)} chunks ({' + '.join(str(n) for n in self.sizes)})"


def text_pieces(text: str, tokenizer: Any | None) -> tuple[list[str], bool]:
    """The tokens of ``text``: exact with ``tokenizer``, else CLIP's pre-tokenization
    pieces (a lower bound). Returns (tokens, exact)."""
    if not text.strip():
        return [], True
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)[
            "input_ids"
        ]
        return list(tokenizer.convert_ids_to_tokens(ids)), True
    return _PIECES.findall(text), False


def plan_chunks(
    parsed: ParsedPrompt,
    vectors: Callable[[EmbeddingRef], list[str]],
    tokenizer: Any | None = None,
    *,
    window: int = WINDOW,
    backtrack: int = BACKTRACK,
) -> ChunkPlan:
    """Cut ``parsed`` into chunks (rules in the module docstring).

    Args:
        parsed: the prompt.
        vectors: an embedding reference -> the token of each of its vectors (their
            number is what counts; compose passes the tokens they are loaded under).
        tokenizer: the model's first tokenizer (exact), or ``None`` (a lower bound).
        window: positions per chunk; backtrack: how far back a comma may be.
    """
    exact = True
    groups: list[tuple[str, list[Position]]] = []  # (kind, positions); kind: text|comma|emb|break
    ref_index = {id(r): k for k, r in enumerate(parsed.refs)}
    breaks = list(parsed.breaks)
    for i, part in enumerate(parsed.parts):
        groups += [("break", [])] * breaks.count(i)
        weight = parsed.attention_of(i)
        if isinstance(part, EmbeddingRef):
            k = ref_index[id(part)]
            seq = [
                Position(token=t, attention=weight, ref=k, vector=v)
                for v, t in enumerate(vectors(part))
            ]
            groups.append(("emb", seq))
            continue
        tokens, ok = text_pieces(part, tokenizer)
        exact = exact and ok
        for t in tokens:
            groups.append(("comma" if t in _COMMAS else "text", [Position(t, weight)]))
    groups += [("break", [])] * breaks.count(len(parsed.parts))
    return ChunkPlan(
        which=parsed.which,
        chunks=_cut(groups, window, backtrack),
        window=window,
        exact=exact,
    )


def _cut(
    groups: list[tuple[str, list[Position]]], window: int, backtrack: int
) -> list[list[Position]]:
    chunks: list[list[Position]] = []
    cur: list[Position] = []
    last_comma = -1

    def next_chunk() -> None:
        nonlocal cur, last_comma
        chunks.append(cur)
        cur, last_comma = [], -1

    for kind, group in groups:
        if kind == "break":
            next_chunk()
            continue
        n = len(group)
        if n > window:  # an embedding longer than a chunk: the only thing ever split
            for pos in group:
                if len(cur) == window:
                    next_chunk()
                cur.append(pos)
            continue
        if len(cur) + n > window:
            tail_start = last_comma + 1
            if kind != "emb" and last_comma != -1 and len(cur) - last_comma <= backtrack:
                tail = cur[tail_start:]
                cur = cur[:tail_start]
                next_chunk()
                cur = tail
            else:
                next_chunk()
        if kind == "comma":
            last_comma = len(cur)
        cur.extend(group)
    if cur or not chunks:
        next_chunk()
    return chunks

"""The 75-token budget of CLIP's prompt window, counted in vectors, and the chunks.

CLIP reads 77 positions: a start token, 75 for the prompt, an end token. Each
vector of a multi-vector embedding takes one position, so ``<x>`` with 8 vectors
uses 8, and naming it twice uses 16. The ordinary text is counted with the model's
tokenizer when one is at hand; before a model is loaded (``--dry-run``, early
checks) it is estimated from CLIP's pre-tokenization, which never over-counts: each
word, digit or punctuation run is at least one token.

A prompt longer than one window is cut into 75-position chunks
(:mod:`conceptlib.compose.chunks`, A1111's rules); the report lists the chunks, and
:func:`check_chunks` refuses only a prompt over :data:`~conceptlib.compose.chunks.MAX_CHUNKS`
chunks. :func:`check_budget` still says whether a prompt fits one window.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from conceptlib.compose.chunks import MAX_CHUNKS, ChunkPlan, plan_chunks
from conceptlib.compose.prompt import format_weight
from conceptlib.compose.resolve import ResolvedPrompt
from conceptlib.errors import TokenBudgetExceeded

#: Positions CLIP leaves for the prompt (77 minus start and end).
WINDOW = 75

# CLIP's pre-tokenizer: contractions, letter runs, single digits, other-symbol runs.
_PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)


@dataclass
class BudgetItem:
    """What used part of the window: the text, or one embedding (all its uses)."""

    label: str
    count: int
    kind: str  # "text" | "embedding"
    uses: int = 1
    vectors: int | None = None


@dataclass
class BudgetReport:
    """How a prompt uses the window."""

    which: str
    items: list[BudgetItem] = field(default_factory=list)
    limit: int = WINDOW
    exact: bool = True
    #: Positions used in each 75-position chunk (see :mod:`conceptlib.compose.chunks`).
    chunks: list[int] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(i.count for i in self.items)

    @property
    def over(self) -> bool:
        return self.used > self.limit

    def summary(self) -> str:
        """One line: ``text 12 + <cat-toy> 4 x2 = 20 of 75``."""
        parts = []
        for i in self.items:
            if i.kind == "text":
                parts.append(f"text {i.count}")
            elif i.uses > 1:
                parts.append(f"{i.label} {i.vectors}x{i.uses}")
            else:
                parts.append(f"{i.label} {i.count}")
        approx = "" if self.exact else "at least "
        line = f"{' + '.join(parts) or 'nothing'} = {approx}{self.used}"
        if len(self.chunks) <= 1:
            return f"{line} of {self.limit}"
        sizes = " + ".join(str(n) for n in self.chunks)
        return f"{line} in {len(self.chunks)} chunks of {self.limit} ({sizes})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "which": self.which,
            "used": self.used,
            "limit": self.limit,
            "exact": self.exact,
            "chunks": self.chunks,
            "items": [asdict(i) for i in self.items],
        }


def text_tokens(text: str, tokenizer: Any | None = None) -> tuple[int, bool]:
    """Tokens of plain text: exact with ``tokenizer``, else a lower bound. Returns (n, exact)."""
    if not text.strip():
        return 0, True
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)[
            "input_ids"
        ]
        return len(ids), True
    return len(_PIECES.findall(text)), False


def window_of(tokenizer: Any | None) -> int:
    """The prompt window of ``tokenizer`` (its ``model_max_length`` minus start and end)."""
    size = getattr(tokenizer, "model_max_length", None)
    if isinstance(size, int) and 3 <= size <= 100_000:
        return size - 2
    return WINDOW


def count_budget(
    resolved: ResolvedPrompt, tokenizer: Any | None = None, plan: ChunkPlan | None = None
) -> BudgetReport:
    """Count what ``resolved`` uses of the window (text and every embedding vector), and
    the positions of each chunk (``plan``, else cut here with ``tokenizer``)."""
    n_text, exact = text_tokens(resolved.parsed.literal_text, tokenizer)
    report = BudgetReport(which=resolved.which, limit=window_of(tokenizer), exact=exact)
    if plan is None:
        infos = {id(r.ref): r.info for r in resolved.refs}
        plan = plan_chunks(
            resolved.parsed,
            lambda ref: [f"<v{i}>" for i in range(infos[id(ref)].num_vectors)],
            tokenizer,
            window=report.limit,
        )
    report.chunks = plan.sizes
    report.items.append(BudgetItem(label="text", count=n_text, kind="text"))
    by_entry: dict[str, BudgetItem] = {}
    for r in resolved.refs:
        item = by_entry.get(r.info.tensor_sha256)
        if item is None:
            label = f"<{r.info.name}>"
            if r.ref.weight is not None:
                label = f"<{r.info.name}:{format_weight(r.ref.weight)}>"
            item = BudgetItem(
                label=label, count=0, kind="embedding", uses=0, vectors=r.info.num_vectors
            )
            by_entry[r.info.tensor_sha256] = item
            report.items.append(item)
        item.uses += 1
        item.count += r.info.num_vectors
    return report


def check_budget(report: BudgetReport) -> BudgetReport:
    """Raise :class:`TokenBudgetExceeded` (naming what used the window) if it is over."""
    if not report.over:
        return report
    biggest = sorted((i for i in report.items if i.kind == "embedding"), key=lambda i: -i.count)
    hint = "shorten the text"
    if biggest:
        hint = (
            f"drop or shorten {biggest[0].label} ({biggest[0].count} vectors), or shorten the text"
        )
    approx = "at least " if not report.exact else ""
    raise TokenBudgetExceeded(
        f"the {report.which} needs {approx}{report.used} tokens; CLIP's window holds "
        f"{report.limit}: {report.summary()}",
        hint=hint,
        which=report.which,
        used=report.used,
        limit=report.limit,
        exact=report.exact,
        items=[asdict(i) for i in report.items],
    )


def check_chunks(report: BudgetReport) -> BudgetReport:
    """Raise :class:`TokenBudgetExceeded` if the prompt needs more than
    :data:`~conceptlib.compose.chunks.MAX_CHUNKS` chunks (a cap on untrusted input; the
    UIs have none, but no real prompt comes near it)."""
    if len(report.chunks) <= MAX_CHUNKS:
        return report
    approx = "at least " if not report.exact else ""
    raise TokenBudgetExceeded(
        f"the {report.which} needs {approx}{len(report.chunks)} chunks of {report.limit} "
        f"positions; at most {MAX_CHUNKS} are encoded",
        hint="shorten the prompt",
        which=report.which,
        used=report.used,
        limit=report.limit * MAX_CHUNKS,
        exact=report.exact,
        chunks=report.chunks,
        items=[asdict(i) for i in report.items],
    )

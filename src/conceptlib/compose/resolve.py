"""Resolve the names in a parsed prompt through the catalog.

A name is looked up as the catalog normalizes it (NFKC, trimmed, case-folded): by
name first, then by trigger token (with and without diffusers-style ``<...>``). An
unknown name fails with the closest names and tokens (difflib on their keys).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conceptlib.compose.prompt import EmbeddingRef, ParsedPrompt, format_weight
from conceptlib.errors import ConflictingWeights, NotFound, UnknownEmbedding
from conceptlib.schemas.names import name_key, strip_brackets

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo


@dataclass(frozen=True)
class ResolvedRef:
    """One reference of a prompt and the catalog entry it names."""

    ref: EmbeddingRef
    info: EmbeddingInfo

    @property
    def weight(self) -> float:
        return self.ref.effective_weight


@dataclass
class ResolvedPrompt:
    """A parsed prompt whose references all resolved to catalog entries."""

    parsed: ParsedPrompt
    refs: list[ResolvedRef] = field(default_factory=list)

    @property
    def which(self) -> str:
        return self.parsed.which

    def by_ref(self) -> dict[EmbeddingRef, ResolvedRef]:
        return {r.ref: r for r in self.refs}

    def distinct(self) -> list[tuple[EmbeddingInfo, float]]:
        """Each (entry, weight) pair once, in order of first appearance."""
        seen: dict[str, tuple[EmbeddingInfo, float]] = {}
        for r in self.refs:
            seen.setdefault(r.info.tensor_sha256, (r.info, r.weight))
        return list(seen.values())


def suggestions(library: Library, name: str, n: int = 3) -> list[str]:
    """The closest catalog names and tokens to ``name`` (difflib on normalized keys)."""
    key = name_key(strip_brackets(name))
    candidates: dict[str, str] = {}
    for info in library.list():
        for shown in (info.name, strip_brackets(info.token)):
            candidates.setdefault(name_key(shown), shown)
    matches = difflib.get_close_matches(key, list(candidates), n=n, cutoff=0.5)
    return [candidates[m] for m in matches]


def resolve_name(library: Library, name: str) -> EmbeddingInfo:
    """The entry ``name`` designates (by name, then trigger token); raises NotFound."""
    return library.resolve(name)


def resolve_prompt(library: Library, parsed: ParsedPrompt) -> ResolvedPrompt:
    """Resolve every reference of ``parsed``.

    Raises:
        UnknownEmbedding: a name the catalog does not have (with close matches).
        ConflictingWeights: the same embedding named with two different weights.
    """
    cache: dict[str, EmbeddingInfo] = {}
    resolved = ResolvedPrompt(parsed=parsed)
    for ref in parsed.refs:
        key = name_key(ref.name)
        info = cache.get(key)
        if info is None:
            try:
                info = resolve_name(library, ref.name)
            except NotFound:
                raise _unknown(library, parsed, ref) from None
            cache[key] = info
        resolved.refs.append(ResolvedRef(ref=ref, info=info))
    _check_weights(resolved)
    return resolved


def _unknown(library: Library, parsed: ParsedPrompt, ref: EmbeddingRef) -> UnknownEmbedding:
    close = suggestions(library, ref.name)
    return UnknownEmbedding(
        f"{parsed.which}, column {ref.column}: no embedding named {ref.name!r} "
        "(by name or trigger token)",
        suggestions=[f"<{s}>" for s in close],
        name=ref.name,
        position=ref.start,
        column=ref.column,
        which=parsed.which,
        prompt=parsed.source,
    )


def _check_weights(resolved: ResolvedPrompt) -> None:
    first: dict[str, ResolvedRef] = {}
    for r in resolved.refs:
        prev = first.setdefault(r.info.tensor_sha256, r)
        if prev.weight != r.weight:
            raise ConflictingWeights(
                f"{resolved.which} names {r.info.name!r} with two weights: "
                f"{format_weight(prev.weight)} ({prev.ref.raw}, column {prev.ref.column}) and "
                f"{format_weight(r.weight)} ({r.ref.raw}, column {r.ref.column}); "
                "an embedding takes one weight per prompt",
                hint=f"use one weight for every <{r.ref.name}> in the {resolved.which}",
                name=r.info.name,
                weights=[prev.weight, r.weight],
                columns=[prev.ref.column, r.ref.column],
                which=resolved.which,
            )


def weights_map(refs: Sequence[ResolvedRef]) -> dict[str, Any]:
    """``{name: weight}`` of the distinct entries (for reports)."""
    return {r.info.name: r.weight for r in refs}

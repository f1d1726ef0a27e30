"""Blend embeddings of one family into a new one, recording where it came from.

``blend(lib, "catdog", [("cat-toy", 0.5), ("dog", 0.5)])`` computes, per slot,
``sum(w_i * v_i)`` over the parents' ``[n_i, d]`` matrices. Parents with the same
row count are combined row by row ("matched"). Otherwise every parent is
resampled to the largest row count (or ``rows=``) along the row axis, ``linear``
(interpolating between neighbouring rows) or ``nearest`` ("resampled");
``resample="none"`` refuses unequal counts instead. The weights are used as given;
the result notes when they do not sum to 1.

The new entry records its parents (``tensor_sha256``, name, weight) and, in
``extra["blend"]``, the method and row count, so :func:`blend_vectors` with the
parents' vectors reproduces it bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptlib.errors import BlendError, FamilyMismatch
from conceptlib.schemas.enums import Kind, Source

if TYPE_CHECKING:
    from conceptlib.registry.formats.embedding import Embedding
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

RESAMPLE_METHODS = ("linear", "nearest", "none")


@dataclass
class BlendResult:
    """The registered blend and how its rows were made.

    Attributes:
        info: the new catalog entry.
        rows: the blend's row count.
        row_mode: ``"matched"`` (all parents had ``rows``) or ``"resampled"``.
        resampled: parent name -> ``[from, to]`` for each resampled parent.
        notes: anything worth telling (weights not summing to 1, resampling).
    """

    info: EmbeddingInfo
    rows: int
    row_mode: str
    method: str
    weights: dict[str, float]
    resampled: dict[str, list[int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedding": self.info.to_dict(),
            "rows": self.rows,
            "row_mode": self.row_mode,
            "method": self.method,
            "weights": self.weights,
            "resampled": self.resampled,
            "notes": self.notes,
        }


def resample_rows(matrix: np.ndarray, rows: int, method: str = "linear") -> np.ndarray:
    """``[n, d]`` -> ``[rows, d]`` along the row axis (endpoints kept).

    ``linear`` interpolates between the two nearest source rows; ``nearest`` picks
    the closest one. ``n == rows`` returns the matrix unchanged.
    """
    n = matrix.shape[0]
    if n == rows:
        return matrix
    if n == 1:
        return np.repeat(matrix, rows, axis=0)
    pos = np.linspace(0.0, n - 1, rows) if rows > 1 else np.array([(n - 1) / 2.0])
    if method == "nearest":
        return matrix[np.floor(pos + 0.5).astype(np.int64)]  # halves round up, not to even
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    frac = (pos - lo).astype(np.float32)[:, None]
    return (matrix[lo] * (np.float32(1.0) - frac) + matrix[hi] * frac).astype(np.float32)


def blend_vectors(
    parents: Sequence[Embedding],
    weights: Sequence[float],
    *,
    resample: str = "linear",
    rows: int | None = None,
) -> tuple[dict[str, np.ndarray], int, list[int]]:
    """The blended slots, the row count, and which parents were resampled (indices)."""
    if resample not in RESAMPLE_METHODS:
        raise BlendError(
            f"unknown resample method {resample!r}; expected one of {', '.join(RESAMPLE_METHODS)}"
        )
    counts = [p.num_vectors for p in parents]
    target = rows if rows is not None else max(counts)
    if target < 1 or target > 75:
        raise BlendError(f"a blend needs 1-75 rows; asked for {target}")
    changed = [i for i, n in enumerate(counts) if n != target]
    if changed and resample == "none":
        raise BlendError(
            f"the parents have {', '.join(str(c) for c in counts)} vectors; "
            f"resample='none' needs them all to have {target}",
            hint="use --resample linear or nearest",
            counts=counts,
        )
    slots = parents[0].slots
    out: dict[str, np.ndarray] = {}
    for slot in slots:
        acc = np.zeros((target, parents[0].vectors[slot].shape[1]), dtype=np.float64)
        for p, w in zip(parents, weights, strict=True):
            acc += float(w) * resample_rows(p.vectors[slot], target, resample).astype(np.float64)
        out[slot] = acc.astype(np.float32)
    return out, target, changed


def blend(
    library: Library,
    new_name: str,
    parents: Sequence[tuple[str, float]],
    *,
    resample: str = "linear",
    rows: int | None = None,
    token: str | None = None,
    kind: str | None = None,
    tags: Sequence[str] = (),
    description: str | None = None,
) -> BlendResult:
    """Blend catalog entries into ``new_name`` and register it with its parents.

    Args:
        library: the catalog.
        new_name: the new entry's name.
        parents: ``(name or token, weight)`` pairs; at least one, each entry once.
        resample: ``linear``, ``nearest`` or ``none`` (refuse unequal row counts).
        rows: the row count of the result (default: the parents' largest).
        token, kind, tags, description: for the new entry (kind defaults to the
            parents' common kind, else ``other``).

    Raises:
        BlendError: no parents, a weight that is not finite, a parent named twice,
            unequal rows with ``resample="none"``.
        FamilyMismatch: parents of different families.
        UnknownEmbedding: a parent the catalog does not have.
        AlreadyExists / NameCollision: from registering the result.
    """
    from conceptlib.compose.resolve import suggestions
    from conceptlib.errors import NotFound, UnknownEmbedding

    if not parents:
        raise BlendError("a blend needs at least one parent, e.g. a:0.5 b:0.5")
    infos: list[EmbeddingInfo] = []
    weights: list[float] = []
    for handle, weight in parents:
        if not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise BlendError(f"the weight of {handle!r} is {weight!r}; expected a finite number")
        try:
            info = library.resolve(handle)
        except NotFound:
            close = suggestions(library, handle)
            raise UnknownEmbedding(
                f"no embedding named {handle!r} (by name or trigger token)",
                suggestions=close,
                name=handle,
            ) from None
        if any(i.tensor_sha256 == info.tensor_sha256 for i in infos):
            raise BlendError(f"{info.name!r} is named twice; give each parent once")
        infos.append(info)
        weights.append(float(weight))
    families = {i.family for i in infos}
    if len(families) > 1:
        listing = ", ".join(f"{i.name} ({i.family}, {i.num_vectors}x{i.dims})" for i in infos)
        raise FamilyMismatch(
            f"a blend needs parents of one family; got {listing}",
            hint="blend only sd1 with sd1, sd2 with sd2, sdxl with sdxl",
            families=sorted(families),
        )
    embs = [library.load(i) for i in infos]
    vectors, target, changed = blend_vectors(embs, weights, resample=resample, rows=rows)

    from conceptlib.registry.formats.embedding import Embedding

    result_emb = Embedding.from_slots(vectors)
    row_mode = "resampled" if changed else "matched"
    notes: list[str] = []
    resampled = {infos[i].name: [infos[i].num_vectors, target] for i in changed}
    if changed:
        notes.append(
            "resampled ("
            + resample
            + ") to "
            + str(target)
            + " rows: "
            + ", ".join(f"{n} {a}->{b}" for n, (a, b) in resampled.items())
        )
    else:
        notes.append(f"row counts matched ({target} rows)")
    total = sum(weights)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        notes.append(f"the weights sum to {total:g}, not 1: the result is scaled accordingly")
    kinds = {i.kind for i in infos}
    bases = {i.base_model for i in infos}
    parent_records = [
        {"tensor_sha256": i.tensor_sha256, "name": i.name, "weight": w}
        for i, w in zip(infos, weights, strict=True)
    ]
    recipe = {
        "method": resample,
        "rows": target,
        "row_mode": row_mode,
        "resampled": resampled,
        "weights_sum": total,
    }
    info = library.add_embedding(
        result_emb,
        name=new_name,
        token=token,
        kind=kind or (kinds.pop() if len(kinds) == 1 else Kind.OTHER.value),
        source=Source.BLEND,
        source_ref="blend:"
        + " ".join(f"{i.name}:{w:g}" for i, w in zip(infos, weights, strict=True)),
        base_model=bases.pop() if len(bases) == 1 else None,
        tags=tags,
        description=description
        or "blend of " + ", ".join(f"{i.name} x{w:g}" for i, w in zip(infos, weights, strict=True)),
        parents=parent_records,
        extra={"blend": recipe},
    )
    return BlendResult(
        info=info,
        rows=target,
        row_mode=row_mode,
        method=resample,
        weights={i.name: w for i, w in zip(infos, weights, strict=True)},
        resampled=resampled,
        notes=notes,
    )


def parse_parent(text: str) -> tuple[str, float | None]:
    """``"cat-toy:0.5"`` -> ``("cat-toy", 0.5)``; ``"cat-toy"`` -> ``("cat-toy", None)``.

    Raises:
        InvalidWeight: the part after the last colon is not a number.
    """
    from conceptlib.compose.prompt import parse_number
    from conceptlib.errors import InvalidWeight

    name, sep, weight = text.rpartition(":")
    if not sep:
        return text.strip(), None
    w = weight.strip()
    value = parse_number(w)
    if value is None:
        raise InvalidWeight(
            f"the weight {w!r} of {text!r} is not a number; expected NAME:WEIGHT such as "
            f"{name.strip() or 'cat-toy'}:0.5",
            hint="weights are decimal numbers such as 0.5 or 0.25",
            parent=text,
        )
    return name.strip(), value


def parse_parents(texts: Sequence[str]) -> list[tuple[str, float]]:
    """Parse ``NAME:WEIGHT`` arguments; all weights omitted means equal shares."""
    parsed = [parse_parent(t) for t in texts]
    given = [w is not None for _, w in parsed]
    if any(given) and not all(given):
        missing = [n for n, w in parsed if w is None]
        raise BlendError(
            f"{', '.join(missing)} has no weight; give every parent a weight or none",
            hint="e.g. a:0.5 b:0.5, or a b for equal shares",
        )
    if not any(given):
        share = 1.0 / len(parsed) if parsed else 0.0
        return [(n, share) for n, _ in parsed]
    return [(n, float(w)) for n, w in parsed]  # type: ignore[arg-type]

"""The CLIP skip a composition uses (:mod:`conceptlib.models.clip_skip` says what the
value means).

An embedding trained at a CLIP skip (``conceptlib train --clip-skip N``, recorded as
the entry's ``extra["clip_skip"]``) works best read at the same layer, so composing
uses the recorded value by default: A1111 users set "Clip skip" per model for the same
reason. An explicit value (``compose --clip-skip N``, or an image's infotext with
``compose --from``) wins, with a warning for each entry trained at another one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conceptlib.errors import UsageError
from conceptlib.models.clip_skip import MAX_CLIP_SKIP, most_clip_skip


def recorded_clip_skip(info: Any) -> int | None:
    """The CLIP skip an entry was trained at (``extra["clip_skip"]``), when recorded and
    sane; ``None`` otherwise (imported files, or a value out of range)."""
    value = (info.extra or {}).get("clip_skip")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 1 <= value <= MAX_CLIP_SKIP else None


def effective_clip_skip(
    prompts: Sequence[Any], requested: int | None
) -> tuple[int, str | None, list[str]]:
    """The CLIP skip to compose ``prompts`` (resolved prompts, positive first) at.

    Returns:
        ``(clip_skip, source, warnings)``: ``source`` is ``"option"`` for ``requested``,
        the name of the entry whose recorded value is used, or ``None`` for the default 1.

    Raises:
        UsageError: (exit 2) ``requested`` outside 1 to :data:`MAX_CLIP_SKIP`.
    """
    if requested is not None and not 1 <= requested <= MAX_CLIP_SKIP:
        raise UsageError(f"--clip-skip {requested}: expected 1 (the last layer) to {MAX_CLIP_SKIP}")
    recorded: list[tuple[str, int]] = []
    for p in prompts:
        for r in p.refs:
            value = recorded_clip_skip(r.info)
            if value is not None and all(name != r.info.name for name, _ in recorded):
                recorded.append((r.info.name, value))
    warnings: list[str] = []
    if requested is not None:
        for name, value in recorded:
            if value != requested:
                warnings.append(
                    f"{name} was trained at CLIP skip {value}; composing at {requested} "
                    "(--clip-skip)"
                )
        return requested, "option", warnings
    if not recorded:
        return 1, None, warnings
    name, value = recorded[0]
    others = [f"{n} ({v})" for n, v in recorded[1:] if v != value]
    if others:
        warnings.append(
            f"the embeddings were trained at different CLIP skips: using {value}, {name}'s; "
            f"{', '.join(others)} may look weaker (--clip-skip to choose)"
        )
    return value, name, warnings


def check_against_model(clip_skip: int, encoders: Sequence[Any], *, sdxl: bool, model: str) -> None:
    """Refuse a CLIP skip the loaded model's encoders have no layer for.

    Raises:
        UsageError: (exit 2) naming the model and its range.
    """
    most = most_clip_skip(encoders, sdxl=sdxl)
    if clip_skip > most:
        raise UsageError(f"CLIP skip {clip_skip}: {model} allows 1 to {most}")

"""Render a composed prompt in the syntax of another UI.

=========  ========================  ==============================  =====================
format     an embedding              with a weight                   the files it expects
=========  ========================  ==============================  =====================
a1111      ``name`` (bare word)      ``(name:0.8)``                  ``name.safetensors``
comfyui    ``embedding:name``        ``(embedding:name:0.8)``        ``name.safetensors``
invokeai   ``<name>``                ``(<name>)0.8`` (compel)        ``name.safetensors``
diffusers  the token, lower case     the token (no prompt weights)   ``learned_embeds``
=========  ========================  ==============================  =====================

The UIs apply a weight as *attention* on the token, where conceptlib scales the
vectors themselves; the rendering keeps the number and says so in its notes.
Names come from the catalog entry (what ``export --for-prompt`` writes), not from
what was typed, so ``<CAT-TOY>`` and a trigger token both render as ``cat-toy``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conceptlib.compose.prompt import EmbeddingRef, format_weight
from conceptlib.compose.resolve import ResolvedPrompt
from conceptlib.errors import UsageError
from conceptlib.schemas.names import tokenizer_form

UI_FORMATS = ("a1111", "comfyui", "invokeai", "diffusers")


@dataclass
class RenderedPrompt:
    """A prompt in one UI's syntax, with notes on what could not be said exactly."""

    format: str
    prompt: str
    negative: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "prompt": self.prompt,
            "negative": self.negative,
            "notes": self.notes,
        }


def _check_format(fmt: str) -> str:
    if fmt not in UI_FORMATS:
        raise UsageError(f"unknown prompt format {fmt!r}; expected one of {', '.join(UI_FORMATS)}")
    return fmt


def render_ref(fmt: str, name: str, token: str, weight: float | None) -> str:
    """One embedding reference in ``fmt``'s syntax."""
    w = None if weight is None or weight == 1.0 else format_weight(weight)
    if fmt == "a1111":
        return name if w is None else f"({name}:{w})"
    if fmt == "comfyui":
        return f"embedding:{name}" if w is None else f"(embedding:{name}:{w})"
    if fmt == "invokeai":
        return f"<{name}>" if w is None else f"(<{name}>){w}"
    if fmt == "diffusers":
        # The form the exported file is keyed by: CLIP's tokenizer lower-cases prompts.
        return tokenizer_form(token)
    raise UsageError(f"unknown prompt format {fmt!r}; expected one of {', '.join(UI_FORMATS)}")


def render(resolved: ResolvedPrompt, fmt: str, notes: list[str] | None = None) -> str:
    """``resolved`` in ``fmt``'s syntax; appends what was approximated to ``notes``."""
    _check_format(fmt)
    infos = resolved.by_ref()
    weighted: list[str] = []

    def one(ref: EmbeddingRef) -> str:
        info = infos[ref].info
        if ref.weight is not None and ref.weight != 1.0 and info.name not in weighted:
            weighted.append(info.name)
        return render_ref(fmt, info.name, info.token, ref.weight)

    text = resolved.parsed.render(one)
    if notes is not None and weighted:
        names = ", ".join(weighted)
        if fmt == "diffusers":
            notes.append(
                f"diffusers prompts have no weights; {names} rendered unweighted "
                "(scale the vectors when loading, as conceptlib compose does)"
            )
        else:
            notes.append(
                f"{fmt} applies weights as attention, not by scaling vectors as conceptlib "
                f"does; {names} will look different"
            )
    return text


def render_prompts(
    positive: ResolvedPrompt, negative: ResolvedPrompt | None, fmt: str
) -> RenderedPrompt:
    """The prompt and negative prompt in ``fmt``'s syntax."""
    notes: list[str] = []
    out = RenderedPrompt(
        format=_check_format(fmt), prompt=render(positive, fmt, notes), notes=notes
    )
    if negative is not None:
        out.negative = render(negative, fmt, notes)
    return out

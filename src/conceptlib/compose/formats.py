"""Render a composed prompt in the syntax of another UI, with the names that UI triggers.

=========  ========================  ==============================  =====================
format     an embedding              with a weight                   the files it expects
=========  ========================  ==============================  =====================
a1111      ``name`` (bare word)      ``(name:0.8)``                  ``name.safetensors``
comfyui    ``embedding:name``        ``(embedding:name:0.8)``        ``name.safetensors``
invokeai   ``<name>``                ``(<name>)0.8`` (compel)        ``name.safetensors``
diffusers  the token, lower case     the token (no prompt weights)   ``learned_embeds``
=========  ========================  ==============================  =====================

Each UI's rules live in its own module under :mod:`conceptlib.compose.ui`; this module
applies them to a resolved prompt. The name a UI matches for an entry (its *trigger*)
is decided once, by :func:`ui_trigger`, for the prompt and for the file
``export --for-prompt`` writes (:func:`ui_file_stem`), so the two always agree: a name
InvokeAI cannot match (``cat-toy@v1``) is written as ``cat-toy-v1`` in both places, and
one that cannot be mapped, or whose mapping is taken, is refused
(:class:`~conceptlib.errors.UntriggerableName`).

The UIs apply a weight as *attention* on the token, where conceptlib scales the
vectors themselves; the rendering keeps the number and says so in its notes. Names
come from the catalog entry, not from what was typed, so ``<CAT-TOY>`` and a trigger
token both render as ``cat-toy``. When the target model's family is known (a base
model given, or implied by an SDXL embedding in the prompt), the warnings say which
embeddings the UI will not apply (an SD 1.x embedding on SDXL: A1111 and InvokeAI
skip it, ComfyUI and diffusers reach the first text encoder only).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conceptlib.compose.prompt import EmbeddingRef
from conceptlib.compose.resolve import ResolvedPrompt
from conceptlib.compose.ui import UI_FORMATS, ui_module
from conceptlib.compose.ui.syntax import Piece, glue, plain_number
from conceptlib.errors import UntriggerableName
from conceptlib.schemas.enums import Family, compatibility
from conceptlib.schemas.names import name_key

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

__all__ = [
    "UI_FORMATS",
    "RenderedPrompt",
    "family_warnings",
    "infer_family",
    "render",
    "render_prompts",
    "render_ref",
    "ui_file_stem",
    "ui_trigger",
    "ui_triggers",
]


@dataclass
class RenderedPrompt:
    """A prompt in one UI's syntax.

    Attributes:
        format: the UI (``a1111``, ``comfyui``, ``invokeai``, ``diffusers``).
        prompt, negative: the prompts in its syntax.
        notes: what could not be said exactly (weights).
        warnings: embeddings the UI will not apply (fully) on the target model.
        triggers: catalog name -> the name written for the UI (differs where mapped).
    """

    format: str
    prompt: str
    negative: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    triggers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "prompt": self.prompt,
            "negative": self.negative,
            "notes": self.notes,
            "warnings": self.warnings,
            "triggers": self.triggers,
        }


# --------------------------------------------------------------------------- names


def _check_taken(fmt: str, info: EmbeddingInfo, trig: str, library: Library | None) -> None:
    """Refuse a mapped name that is another catalog entry's name."""
    if library is None or name_key(trig) == name_key(info.name):
        return
    other = library.find(trig)
    if other is not None and other.tensor_sha256 != info.tensor_sha256:
        label = ui_module(fmt).LABEL
        raise UntriggerableName(
            f"{label} cannot trigger {info.name!r} as it is; it would be written as "
            f"{trig!r}, which is the name of another entry",
            hint=f"rename one of them: conceptlib rename {info.name} NEW-NAME",
            name=info.name,
            ui=fmt,
            mapped=trig,
            existing=other.name,
        )


def ui_trigger(fmt: str, info: EmbeddingInfo, library: Library | None = None) -> str:
    """The name UI ``fmt`` matches for entry ``info`` (mapped where it must be).

    ``a1111``, ``comfyui``, ``invokeai``: a name written bare, after ``embedding:`` or
    in ``<...>``; ``diffusers``: the token in lower case. With ``library``, a mapped
    name that is another entry's name is refused.

    Raises:
        UntriggerableName: the UI cannot name the entry, even mapped, or the mapped
            name is another entry's (exit 2).
        UsageError: an unknown UI.
    """
    trig = ui_module(fmt).trigger(info.name, info.token)
    _check_taken(fmt, info, trig, library)
    return trig


def ui_file_stem(fmt: str, info: EmbeddingInfo, library: Library | None = None) -> str:
    """The file stem (``a1111``, ``comfyui``, ``invokeai``: ``<stem>.safetensors``) or
    folder (``diffusers``) that UI ``fmt`` gets for ``info``; the UIs that name an
    embedding by its file name get the trigger of :func:`ui_trigger`.

    Raises:
        UntriggerableName, UsageError: as :func:`ui_trigger`.
    """
    module = ui_module(fmt)
    stem = module.file_stem(info.name, info.token)
    if fmt != "diffusers":
        _check_taken(fmt, info, stem, library)
    return stem


def ui_triggers(
    fmt: str, infos: Iterable[EmbeddingInfo], library: Library | None = None
) -> dict[str, str]:
    """``tensor_sha256 -> trigger`` for every entry, checked to be distinct.

    Raises:
        UntriggerableName: one entry cannot be named (see :func:`ui_trigger`), or two
            entries would be written under the same name (``café`` and ``cafe`` for
            InvokeAI).
    """
    out: dict[str, str] = {}
    seen: dict[str, EmbeddingInfo] = {}
    for info in infos:
        if info.tensor_sha256 in out:
            continue
        trig = ui_trigger(fmt, info, library)
        key = trig if fmt == "diffusers" else name_key(trig)
        other = seen.get(key)
        if other is not None:
            label = ui_module(fmt).LABEL
            raise UntriggerableName(
                f"{label} would read {other.name!r} and {info.name!r} as the same name {trig!r}",
                hint=f"rename one of them: conceptlib rename {info.name} NEW-NAME",
                name=info.name,
                ui=fmt,
                mapped=trig,
                existing=other.name,
            )
        seen[key] = info
        out[info.tensor_sha256] = trig
    return out


def render_ref(fmt: str, name: str, token: str, weight: float | None) -> str:
    """One embedding reference in ``fmt``'s syntax (the name mapped as the UI needs).

    Raises:
        UntriggerableName: the UI cannot name it.
        UsageError: an unknown UI.
    """
    module = ui_module(fmt)
    return module.reference(module.trigger(name, token), weight)


# --------------------------------------------------------------------------- families


def infer_family(infos: Iterable[EmbeddingInfo]) -> Family | None:
    """The model family a prompt's embeddings imply, or ``None``: SDXL when one of them
    is an SDXL embedding (nothing else holds both encoders' vectors)."""
    families = {Family(i.family) for i in infos}
    return Family.SDXL if Family.SDXL in families else None


def family_warnings(
    fmt: str, infos: Iterable[EmbeddingInfo], family: Family | None, *, inferred: bool = False
) -> list[str]:
    """What UI ``fmt`` will not apply (fully) on a model of ``family``, one line each.

    ``inferred`` says the family was implied by the prompt rather than given.
    """
    if family is None:
        return []
    module = ui_module(fmt)
    where = f"an {family.value} model" + (" (what its SDXL embeddings imply)" if inferred else "")
    out: list[str] = []
    done: set[str] = set()
    for info in infos:
        if info.tensor_sha256 in done:
            continue
        done.add(info.tensor_sha256)
        level = compatibility(info.family, family)
        if level == "full":
            continue
        if level == "none":
            out.append(
                f"{module.LABEL} will not apply <{info.name}>: an {info.family} embedding does "
                f"not fit {where}"
            )
        elif module.SD1_ON_SDXL == "skip":
            out.append(
                f"{module.LABEL} will not apply <{info.name}> on {where}: {module.SD1_ON_SDXL_HOW}"
            )
        else:
            out.append(
                f"{module.LABEL} applies <{info.name}> (an {info.family} embedding) only in part "
                f"on {where}: {module.SD1_ON_SDXL_HOW}"
            )
    return out


# --------------------------------------------------------------------------- render


def render(
    resolved: ResolvedPrompt,
    fmt: str,
    notes: list[str] | None = None,
    triggers: dict[str, str] | None = None,
) -> str:
    """``resolved`` in ``fmt``'s syntax; appends what was approximated or dropped to
    ``notes``.

    A reference is written with its weight times its attention (a prompt read in
    conceptlib's syntax has weights, one read in a UI's has attention). Text of a
    prompt read in a UI's syntax is literal: it is escaped for ``fmt`` and written
    with its attention (``(red:1.2)``, compel's ``(red)1.2``); text of a conceptlib
    prompt is written as typed (``(red:1.2)`` there is already A1111 attention).
    ``BREAK`` is written where ``fmt`` has it (A1111); elsewhere, and attention in
    diffusers, it is dropped with a note.

    ``triggers`` (``tensor_sha256 -> name``, from :func:`ui_triggers`) gives the names;
    without it each entry's trigger is computed (no catalog check).

    Raises:
        UntriggerableName: an entry the UI cannot name.
        UsageError: an unknown UI.
    """
    module = ui_module(fmt)
    parsed = resolved.parsed
    literal = parsed.syntax != "conceptlib"
    infos = resolved.by_ref()
    weighted: list[str] = []
    attended: list[str] = []
    breaks = list(parsed.breaks)
    pieces: list[Piece] = []

    def add_breaks(at: int) -> None:
        while at in breaks:
            breaks.remove(at)
            if module.BREAK:
                pieces.append(Piece(" BREAK "))
            else:
                pieces.append(Piece(" "))
                dropped.append("BREAK")

    dropped: list[str] = []
    for i, part in enumerate(parsed.parts):
        add_breaks(i)
        attention = parsed.attention_of(i)
        if not isinstance(part, EmbeddingRef):
            if not literal:
                pieces.append(Piece(part))
            elif attention == 1.0 or not part.strip():
                pieces.append(Piece(module.escape(part)))
            else:
                body = part.strip()
                lead, tail = part[: len(part) - len(part.lstrip())], part[len(part.rstrip()) :]
                text = module.attend(body, attention)
                if text is None:
                    dropped.append(f"({_clip(body)}:{plain_number(attention)})")
                    pieces.append(Piece(module.escape(part)))
                else:
                    pieces.extend([Piece(lead), Piece(text, weighted=True), Piece(tail)])
            continue
        info = infos[part].info
        w = part.effective_weight * attention
        has_weight = w != 1.0
        if part.weight is not None and part.weight != 1.0 and info.name not in weighted:
            weighted.append(info.name)
        if attention != 1.0 and info.name not in attended:
            attended.append(info.name)
        trig = (triggers or {}).get(info.tensor_sha256) or module.trigger(info.name, info.token)
        text = module.reference(trig, w if has_weight else None)
        pieces.append(Piece(text, ref=True, weighted=has_weight and fmt != "diffusers"))
    add_breaks(len(parsed.parts))
    text = glue(pieces, module.needs_space)
    if notes is None:
        return text
    if weighted:
        names = ", ".join(weighted)
        if fmt == "diffusers":
            notes.append(
                f"diffusers prompts have no weights; {names} rendered unweighted "
                "(scale the vectors when loading, as conceptlib compose does)"
            )
        else:
            notes.append(
                f"{fmt} applies weights {module.WEIGHTS}, not by scaling vectors as "
                f"conceptlib does; {names} will look different"
            )
    if attended and fmt == "diffusers":
        dropped.extend(f"({n}:...)" for n in attended)
    elif attended and parsed.syntax != fmt and literal:
        notes.append(
            f"the attention on {', '.join(attended)} was written for "
            f"{ui_module(parsed.syntax).LABEL}; {module.LABEL} applies it {module.WEIGHTS}"
        )
    if dropped:
        kinds = [
            k
            for k, has in (
                ("attention", dropped != ["BREAK"] * len(dropped)),
                ("BREAK", "BREAK" in dropped),
            )
            if has
        ]
        shown = ", ".join(dict.fromkeys(dropped))
        notes.append(
            f"{module.LABEL} prompts have no {' or '.join(kinds)}; dropped from the "
            f"{parsed.which}: {shown}"
        )
    return text


def _clip(text: str, n: int = 30) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def render_prompts(
    positive: ResolvedPrompt,
    negative: ResolvedPrompt | None,
    fmt: str,
    *,
    library: Library | None = None,
    family: Family | None = None,
) -> RenderedPrompt:
    """The prompt and negative prompt in ``fmt``'s syntax.

    Args:
        positive, negative: the resolved prompts.
        fmt: ``a1111``, ``comfyui``, ``invokeai`` or ``diffusers``.
        library: when given, a name mapped for the UI that is another entry's name
            is refused.
        family: the target model's family, for the warnings; ``None`` infers it from
            the embeddings (SDXL when one is an SDXL embedding).

    Raises:
        UntriggerableName: an entry the UI cannot name, or two that it would name alike.
        UsageError: an unknown UI.
    """
    ui_module(fmt)
    prompts = [p for p in (positive, negative) if p is not None]
    infos = [r.info for p in prompts for r in p.refs]
    triggers = ui_triggers(fmt, infos, library)
    inferred = family is None
    target = family if family is not None else infer_family(infos)
    notes: list[str] = []
    out = RenderedPrompt(
        format=fmt,
        prompt=render(positive, fmt, notes, triggers),
        notes=notes,
        warnings=family_warnings(fmt, infos, target, inferred=inferred),
    )
    if negative is not None:
        out.negative = render(negative, fmt, notes, triggers)
    out.triggers = {i.name: triggers[i.tensor_sha256] for i in infos if i.tensor_sha256 in triggers}
    return out

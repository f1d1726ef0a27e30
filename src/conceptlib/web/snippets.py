"""The "use it" panel: what to type in each UI for one entry, and the exports to download.

The references come from :mod:`conceptlib.compose.formats` (the same trigger and
syntax ``compose --format`` writes), the export formats from
:func:`~conceptlib.registry.formats.write.check_writable`; nothing here knows a UI's
rules itself.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from conceptlib.compose.formats import ui_file_stem, ui_trigger
from conceptlib.compose.ui import ui_module
from conceptlib.errors import ConceptlibError
from conceptlib.registry.formats.write import WRITE_FORMATS, check_writable
from conceptlib.schemas.names import tokenizer_form

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

#: The UIs of the panel, in the order shown.
PANEL_UIS = ("a1111", "comfyui", "invokeai", "diffusers")

#: What each export format is for (shown beside its download link).
FORMAT_NOTES = {
    "a1111-pt": "A1111 / Forge .pt (SD 1.x, SD 2.x)",
    "safetensors": "A1111 / ComfyUI .safetensors (emb_params; SDXL: clip_l + clip_g)",
    "diffusers": "diffusers load_textual_inversion (keyed by the token)",
    "sdxl": "SDXL {clip_l, clip_g} .safetensors (A1111, ComfyUI)",
    "invokeai": "InvokeAI folder (learned_embeds.bin), as a .zip",
}


@dataclass
class Snippet:
    """One UI's way to use an entry.

    Attributes:
        ui: ``a1111``, ``comfyui``, ``invokeai`` or ``diffusers``.
        label: the UI's name.
        text: what to copy: the prompt reference, or the diffusers code.
        where: where it goes (the prompt or negative prompt, the file the UI expects).
        problem: why the UI cannot use the entry as it is named (then ``text`` is empty).
    """

    ui: str
    label: str
    text: str
    where: str
    problem: str | None = None


def snippets(library: Library, info: EmbeddingInfo) -> list[Snippet]:
    """The prompt snippet for each UI of :data:`PANEL_UIS`."""
    negative = info.kind == "negative"
    box = "negative prompt" if negative else "prompt"
    out: list[Snippet] = []
    for ui in PANEL_UIS:
        module = ui_module(ui)
        try:
            trig = ui_trigger(ui, info, library)
            stem = ui_file_stem(ui, info, library)
        except ConceptlibError as exc:
            out.append(Snippet(ui, module.LABEL, "", "", problem=exc.message))
            continue
        if ui == "diffusers":
            out.append(Snippet(ui, module.LABEL, diffusers_code(info), "Python"))
            continue
        ref = module.reference(trig, None)
        where = f"type it in the {box}; the UI reads the file {stem}.safetensors"
        if ui == "invokeai":
            where = f"type it in the {box}; install the folder {stem}/ (export invokeai)"
        out.append(Snippet(ui, module.LABEL, ref, where))
    return out


def diffusers_code(info: EmbeddingInfo) -> str:
    """Python that loads the entry's export into a diffusers pipeline and uses it."""
    tok = tokenizer_form(info.token)
    q = json.dumps  # every value written as a quoted Python string literal
    sdxl = info.family == "sdxl"
    pipe_cls = "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
    base = info.base_model or ("path/to/sdxl-model" if sdxl else "path/to/sd-model")
    if info.kind == "negative":
        call = f'image = pipe("a portrait photo", negative_prompt={q(tok)}).images[0]'
    else:
        call = f"image = pipe({q('a photo of ' + tok)}).images[0]"
    lines = [
        f"# conceptlib export {info.name} --format {'sdxl' if sdxl else 'diffusers'} -o .",
        f"from diffusers import {pipe_cls}",
    ]
    if sdxl:
        lines += [
            "from safetensors.torch import load_file",
            "",
            f"pipe = {pipe_cls}.from_pretrained({q(base)})",
            f"state = load_file({q(info.name + '.safetensors')})",
            f'pipe.load_textual_inversion(state["clip_l"], token={q(tok)},',
            "                            text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)",
            f'pipe.load_textual_inversion(state["clip_g"], token={q(tok)},',
            "                            text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)",
        ]
    else:
        lines += [
            "",
            f"pipe = {pipe_cls}.from_pretrained({q(base)})",
            f"pipe.load_textual_inversion({q(info.name + '.safetensors')}, token={q(tok)})",
        ]
    lines.append(call)
    return "\n".join(lines)


def export_formats(info: EmbeddingInfo) -> list[tuple[str, str]]:
    """``(format, what it is for)`` of every export format the entry's family can use."""
    out = []
    for fmt in WRITE_FORMATS:
        try:
            check_writable(fmt, info.family)
        except ConceptlibError:
            continue
        out.append((fmt, FORMAT_NOTES.get(fmt, fmt)))
    return out

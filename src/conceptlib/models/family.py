"""Which embedding family a base model is, and the diffusers pipeline of each family.

The family comes from the text encoders' widths: one 768-wide encoder is SD 1.x,
one 1024-wide is SD 2.x, 768 + 1280 is SDXL. SD3 (CLIP-L, CLIP-G and T5-XXL) and FLUX
(CLIP-L and T5-XXL) models are recognised and refused with
:class:`~conceptlib.errors.UnsupportedFamily`: there is no pipeline for them yet.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conceptlib.errors import BaseModelError, FamilyMismatch, UnsupportedFamily
from conceptlib.schemas.enums import PIPELINE_FAMILIES, Family

_LABELS = {Family.SD3: "SD3", Family.FLUX: "FLUX"}
#: diffusers pipeline class names (``model_index.json``'s ``_class_name``) by family.
_PIPELINE_PREFIXES = (("Flux", Family.FLUX), ("StableDiffusion3", Family.SD3))


def unsupported_family(family: Family, where: str) -> UnsupportedFamily:
    """The one refusal of a base model whose family has no pipeline (SD3, FLUX)."""
    label = _LABELS.get(family, family.value)
    supported = ", ".join(f.value for f in PIPELINE_FAMILIES)
    return UnsupportedFamily(
        f"{where} is a {label} model; conceptlib has no {label} pipeline yet: compose and "
        f"train take {supported} models ({label} embeddings can be imported, searched, "
        "exported and bundled into LoRA files)",
        hint=f"use an {' / '.join(f.value for f in PIPELINE_FAMILIES)} base model",
        family=family.value,
        path=where,
    )


def folder_unsupported_family(locate: Callable[[str], Path]) -> Family | None:
    """SD3 or FLUX for a diffusers folder (``locate(relative) -> Path``), else None: from
    ``model_index.json``'s pipeline class, a ``text_encoder_3``, or a T5 ``text_encoder_2``."""
    index = locate("model_index.json")
    if index.is_file() and index.stat().st_size < 1 << 20:
        try:
            cls = str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
        except (ValueError, OSError, AttributeError):
            cls = ""
        for prefix, fam in _PIPELINE_PREFIXES:
            if cls.startswith(prefix):
                return fam
    if locate("text_encoder_3/config.json").is_file():
        return Family.SD3
    cfg = locate("text_encoder_2/config.json")
    if cfg.is_file() and cfg.stat().st_size < 1 << 20:
        try:
            conf = json.loads(cfg.read_text(encoding="utf-8"))
        except (ValueError, OSError):
            return None
        if isinstance(conf, dict) and (conf.get("model_type") == "t5" or "d_model" in conf):
            return Family.FLUX
    return None


def family_from_widths(widths: list[int]) -> Family:
    """The family of a model with text encoders of these widths."""
    table = {(768,): Family.SD1, (1024,): Family.SD2, (768, 1280): Family.SDXL}
    fam = table.get(tuple(widths))
    other = {(768, 4096): Family.FLUX, (768, 1280, 4096): Family.SD3}.get(tuple(widths))
    if other is not None:
        raise unsupported_family(other, "the base model")
    if fam is None:
        raise FamilyMismatch(
            f"base model has text encoders of widths {widths}; expected [768] (SD 1.x), "
            "[1024] (SD 2.x) or [768, 1280] (SDXL)"
        )
    return fam


def _family_of_pipeline(pipe: Any) -> Family:
    encoders = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    return family_from_widths([int(e.config.hidden_size) for e in encoders if e is not None])


def _folder_family(folder: Path) -> Family:
    other = folder_unsupported_family(lambda rel: folder / rel)
    if other is not None:
        raise unsupported_family(other, str(folder))
    widths = []
    for sub in ("text_encoder", "text_encoder_2"):
        cfg = folder / sub / "config.json"
        if cfg.is_file():
            try:
                widths.append(int(json.loads(cfg.read_text(encoding="utf-8"))["hidden_size"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise BaseModelError(f"{cfg}: unreadable text-encoder config ({exc})") from exc
    if not widths:
        raise BaseModelError(
            f"{folder}: no text_encoder/config.json; expected a Stable Diffusion diffusers folder",
            path=str(folder),
        )
    return family_from_widths(widths)


def _pipeline_class(family: Family) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if family == Family.SDXL else StableDiffusionPipeline


def _extra_kwargs(family: Family) -> dict[str, Any]:
    if family == Family.SDXL:
        return {"add_watermarker": False}
    return {"safety_checker": None, "requires_safety_checker": False}

"""Which embedding family a base model is, and the diffusers pipeline of each family.

The family comes from the text encoders' widths: one 768-wide encoder is SD 1.x,
one 1024-wide is SD 2.x, 768 + 1280 is SDXL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conceptlib.errors import BaseModelError, FamilyMismatch
from conceptlib.schemas.enums import Family


def family_from_widths(widths: list[int]) -> Family:
    """The family of a model with text encoders of these widths."""
    table = {(768,): Family.SD1, (1024,): Family.SD2, (768, 1280): Family.SDXL}
    fam = table.get(tuple(widths))
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

"""Loading the frozen base model a concept is trained on, and fingerprinting it.

``load_base(ref)`` accepts:

* ``tiny-sd1`` / ``tiny-sdxl``: the built-in tiny models (:mod:`conceptlib.models.tiny`);
* a local diffusers folder (one with ``model_index.json``; :mod:`conceptlib.models.folders`);
* a single-file ``.safetensors`` checkpoint (A1111/ComfyUI style), converted with
  diffusers' ``from_single_file`` strictly offline: the component configs come from
  ``config=`` (a diffusers folder or cached repo id of the same architecture) or from
  the local Hugging Face cache, never from the network
  (:mod:`conceptlib.models.single_file`);
* a Hub repo id (``org/name``) that is already in the local Hugging Face cache.

The family comes from the text encoders' widths: one 768-wide encoder is SD 1.x,
one 1024-wide is SD 2.x, 768 + 1280 is SDXL (:mod:`conceptlib.models.family`).

The **base-model fingerprint** tells checkpoints apart without reading gigabytes;
its recipe is in :mod:`conceptlib.models.fingerprint`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conceptlib.errors import BaseModelError
from conceptlib.models.family import _family_of_pipeline, _folder_family
from conceptlib.models.fingerprint import fingerprint_path, tiny_fingerprint
from conceptlib.models.folders import (
    _REPO_ID,
    _cached_snapshot,
    _load_folder,
    _require_diffusers_folder,
)
from conceptlib.models.libraries import quiet_libraries
from conceptlib.models.single_file import _load_single_file
from conceptlib.models.tiny import TINY_MODELS, TINY_RESOLUTION, load_tiny
from conceptlib.schemas.enums import Family


@dataclass
class TextEncoderSlot:
    """One text encoder of a base model and the embedding slot it feeds."""

    slot: str  # "clip_l", "clip_h" or "clip_g"
    tokenizer: Any
    encoder: Any

    @property
    def width(self) -> int:
        return int(self.encoder.config.hidden_size)


@dataclass
class BaseModel:
    """A loaded base model.

    Attributes:
        pipeline: the diffusers ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``.
        family: ``Family.SD1``, ``SD2`` or ``SDXL``, from the text encoders' widths.
        fingerprint: the cheap, stable fingerprint described in
            :mod:`conceptlib.models.fingerprint`.
        ref: what the user passed.
        model_id: the id recorded in the catalog (tiny id, repo id, or folder/file name).
    """

    pipeline: Any
    family: Family
    fingerprint: str
    ref: str
    model_id: str
    device: str
    dtype: Any
    is_tiny: bool = False

    @property
    def slots(self) -> list[TextEncoderSlot]:
        p = self.pipeline
        if self.family == Family.SDXL:
            return [
                TextEncoderSlot("clip_l", p.tokenizer, p.text_encoder),
                TextEncoderSlot("clip_g", p.tokenizer_2, p.text_encoder_2),
            ]
        return [
            TextEncoderSlot(
                "clip_h" if self.family == Family.SD2 else "clip_l", p.tokenizer, p.text_encoder
            )
        ]

    @property
    def native_resolution(self) -> int:
        """The image side the model was made for (UNet sample size x VAE factor)."""
        if self.is_tiny:
            return TINY_RESOLUTION
        p = self.pipeline
        factor = 2 ** (len(p.vae.config.block_out_channels) - 1)
        return int(p.unet.config.sample_size) * factor


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def load_base(
    ref: str | os.PathLike[str],
    *,
    device: str | None = "cpu",
    dtype: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> BaseModel:
    """Load the frozen base model ``ref``; see the module docstring for what ``ref`` may be.

    Args:
        ref: tiny model name, diffusers folder, ``.safetensors`` checkpoint or cached repo id.
        device: ``"cpu"``, ``"cuda"``, or ``None``/``"auto"``.
        dtype: torch dtype of the weights (default float32).
        cache_dir: where the tiny models are cached (default: the settings' cache dir).
        config: for a single-file checkpoint, the diffusers folder (or cached repo id) of
            a model of the same architecture, whose component configs and tokenizers are
            used; without it they come from the Hugging Face cache, never the network.

    Raises:
        BaseModelError: not found, not loadable, or configs not available offline.
        FamilyMismatch: text encoders that fit no embedding family.
    """
    import torch

    device = resolve_device(device)
    dtype = dtype or torch.float32
    ref_s = str(ref)
    with quiet_libraries():
        if ref_s in TINY_MODELS:
            pipe = load_tiny(ref_s, cache_dir=cache_dir, device=device, dtype=dtype)
            fam = Family.SDXL if ref_s == "tiny-sdxl" else Family.SD1
            return BaseModel(
                pipe, fam, tiny_fingerprint(ref_s), ref_s, TINY_MODELS[ref_s], device, dtype, True
            )

        path = Path(ref_s).expanduser()
        if path.is_dir():
            _require_diffusers_folder(
                path,
                f"{path}: not a diffusers folder",
                hint="pass a diffusers folder, a .safetensors checkpoint, or a cached repo id",
            )
            fam = _folder_family(path)
            fingerprint = fingerprint_path(path)
            pipe = _load_folder(path, fam, dtype)
            model_id = path.resolve().name
        elif path.is_file():
            if path.suffix.lower() != ".safetensors":
                raise BaseModelError(
                    f"{path}: single-file checkpoints must be .safetensors (pickled .ckpt files "
                    "can run code when loaded)",
                    path=str(path),
                )
            fingerprint = fingerprint_path(path)
            pipe = _load_single_file(path, dtype, str(config) if config else None)
            fam = _family_of_pipeline(pipe)
            model_id = path.name
        elif _REPO_ID.match(ref_s) and not ref_s.startswith((".", "/", "~")):
            snap = _cached_snapshot(ref_s)
            fam = _folder_family(snap)
            fingerprint = fingerprint_path(snap)
            pipe = _load_folder(snap, fam, dtype)
            model_id = ref_s
        else:
            raise BaseModelError(
                f"base model {ref_s!r} not found: expected tiny-sd1, tiny-sdxl, a diffusers "
                "folder, a .safetensors checkpoint or a repo id in the Hugging Face cache",
                ref=ref_s,
            )
        if int(pipe.unet.config.in_channels) != 4:
            raise BaseModelError(
                f"{ref_s}: the UNet takes {pipe.unet.config.in_channels} input channels; "
                "textual inversion needs a text-to-image model (4), not an inpainting one"
            )
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
    return BaseModel(pipe, fam, fingerprint, ref_s, model_id, device, dtype, False)

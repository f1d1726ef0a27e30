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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from conceptlib.errors import BaseModelError, DeviceUnavailable
from conceptlib.models.family import _family_of_pipeline, _folder_family
from conceptlib.models.fingerprint import fingerprint_path, tiny_fingerprint
from conceptlib.models.folders import (
    _REPO_ID,
    _cached_snapshot,
    _load_folder,
    _require_diffusers_folder,
)
from conceptlib.models.libraries import quiet_libraries
from conceptlib.models.single_file import _load_single_file, single_file_markers
from conceptlib.models.tiny import TINY_MODELS, TINY_RESOLUTION, load_tiny
from conceptlib.schemas.enums import FAMILY_SLOTS, Family


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
        markers: for a single-file checkpoint, which schedule markers its header holds
            (``{"v_pred": bool, "ztsnr": bool}``, see
            :data:`~conceptlib.models.single_file.SCHEDULE_MARKERS`); empty otherwise.
    """

    pipeline: Any
    family: Family
    fingerprint: str
    ref: str
    model_id: str
    device: str
    dtype: Any
    is_tiny: bool = False
    markers: dict[str, bool] = field(default_factory=dict)

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


#: Device types conceptlib runs on (``torch.device`` knows more: xpu, meta, hip...).
DEVICE_TYPES = ("cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """The devices this machine can use: ``cpu``, then ``cuda:0``... and ``mps`` when present."""
    import torch

    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        out.append("mps")
    return out


def resolve_device(device: str | None) -> str:
    """The device to run on: ``None``/``"auto"`` picks ``CONCEPTLIB_DEVICE`` when it is set,
    else ``"cuda"`` when available, else ``"cpu"``.

    Any other value is checked here, once, for every caller (``train``, ``compose``,
    :func:`load_base`): a device this machine cannot use fails at once with one line
    naming it and the devices that are available, instead of a traceback from deep
    inside torch (or an error blaming the model) after the images or the model loaded.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, ``"auto"`` or ``None``
            (case and surrounding spaces do not matter).

    Returns:
        The device string to hand to torch (``"cuda:1"`` stays ``"cuda:1"``).

    Raises:
        DeviceUnavailable: (a ``UsageError``, exit 2) not a device name, a device type
            conceptlib does not run on, CUDA on a PyTorch without CUDA or without a
            visible GPU, ``cuda:N`` past the device count, or ``mps`` where PyTorch has
            no MPS.
    """
    import torch

    from conceptlib.config import ENV_DEVICE

    text = "auto" if device is None else str(device).strip().lower()
    if text == "auto":
        chosen = os.environ.get(ENV_DEVICE, "").strip()
        if chosen and chosen.lower() != "auto":
            try:
                return resolve_device(chosen)
            except DeviceUnavailable as exc:
                raise DeviceUnavailable(
                    f"{ENV_DEVICE}: {exc.message}",
                    hint=f"set {ENV_DEVICE} to cpu, cuda, cuda:N or mps, or unset it",
                    device=chosen,
                ) from None
        return "cuda" if torch.cuda.is_available() else "cpu"
    shown = str(device) if len(str(device)) <= 64 else str(device)[:64] + "..."
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        kind = "not a device name" if dev is None else f"{dev.type} devices are not supported"
        _device_error(shown, f"{kind}; expected cpu, cuda, cuda:N, mps or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this PyTorch ({torch.__version__}) is built without CUDA"
                if torch.version.cuda is None
                else "PyTorch sees no CUDA GPU (driver, or CUDA_VISIBLE_DEVICES)"
            )
            _device_error(shown, why)
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            _device_error(
                shown, f"this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            _device_error(shown, "PyTorch has no MPS here (it needs Apple silicon and macOS)")
    return text


def _device_error(device: str, why: str) -> NoReturn:
    available = available_devices()
    raise DeviceUnavailable(
        f"device {device!r} cannot be used: {why}; available: {', '.join(available)}",
        hint=f"pass --device {available[-1]}, or auto for the best one available",
        device=device,
        available=available,
    )


def base_tokenizers(
    ref: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] | None = None,
) -> list[tuple[str, Any]] | None:
    """The tokenizers of base model ``ref`` by embedding slot, without loading any weights.

    Returns ``[("clip_l", tokenizer)]`` (SD 1.x), ``[("clip_h", ...)]`` (SD 2.x) or
    ``[("clip_l", ...), ("clip_g", ...)]`` (SDXL), read from the model's ``tokenizer``
    and ``tokenizer_2`` folders (for a single-file checkpoint: from ``config``'s), in
    well under a second; or ``None`` when they cannot be had that cheaply (a single-file
    checkpoint without ``config``, anything missing or unreadable). It never raises:
    :func:`load_base` reports whatever is wrong with ``ref``, and the loaded model's
    :attr:`BaseModel.slots` carry the same tokenizers. ``conceptlib train`` uses it to
    check a trigger against the real vocabulary before reading images or weights.
    """
    try:
        with quiet_libraries():
            return _base_tokenizers(str(ref), cache_dir, config)
    except Exception:  # any failure here is load_base's to report, with its own message
        return None


def _base_tokenizers(
    ref: str, cache_dir: str | os.PathLike[str] | None, config: str | os.PathLike[str] | None
) -> list[tuple[str, Any]] | None:
    import json

    import transformers

    from conceptlib.models.single_file import _config_folder, single_file_family
    from conceptlib.models.tiny import build_vocab, tiny_path

    path = Path(ref).expanduser()
    if ref in TINY_MODELS:
        folder = tiny_path(ref, cache_dir)
        if not (folder / "conceptlib-tiny.json").is_file():
            # Not built yet: its tokenizer is made in code, no need to build the model now.
            vocab, merges = build_vocab()
            tok = transformers.CLIPTokenizer(vocab=vocab, merges=list(merges))
            family = Family.SDXL if ref == "tiny-sdxl" else Family.SD1
            return [(slot, tok) for slot in FAMILY_SLOTS[family]]
    elif path.is_dir():
        folder = path
    elif path.is_file():
        if not config or path.suffix.lower() != ".safetensors":
            return None
        folder = _config_folder(str(config), path, single_file_family(path))
    elif _REPO_ID.match(ref) and not ref.startswith((".", "/", "~")):
        folder = _cached_snapshot(ref)
    else:
        return None
    family = _folder_family(folder)
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    out = []
    for slot in FAMILY_SLOTS[family]:
        sub = "tokenizer_2" if slot == "clip_g" else "tokenizer"
        class_name = index.get(sub, [None, "CLIPTokenizer"])[1]
        cls = getattr(transformers, str(class_name))
        out.append((slot, cls.from_pretrained(folder / sub, local_files_only=True)))
    return out


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
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``, or ``None``/``"auto"``
            (checked by :func:`resolve_device` before anything loads).
        dtype: torch dtype of the weights (default float32).
        cache_dir: where the tiny models are cached (default: the settings' cache dir).
        config: for a single-file checkpoint, the diffusers folder (or cached repo id) of
            a model of the same architecture, whose component configs and tokenizers are
            used; without it they come from the Hugging Face cache, never the network.

    Raises:
        DeviceUnavailable: a device this machine cannot use (exit 2).
        BaseModelError: not found, not loadable, or configs not available offline.
        FamilyMismatch: text encoders that fit no embedding family.
    """
    import torch

    device = resolve_device(device)
    dtype = dtype or torch.float32
    ref_s = str(ref)
    markers: dict[str, bool] = {}
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
            markers = single_file_markers(path)
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
    return BaseModel(pipe, fam, fingerprint, ref_s, model_id, device, dtype, False, markers)

"""Loading the frozen base model a concept is trained on, and fingerprinting it.

``load_base(ref)`` accepts:

* ``tiny-sd1`` / ``tiny-sdxl``: the built-in tiny models (:mod:`conceptlib.trainer.tiny`);
* a local diffusers folder (one with ``model_index.json``);
* a single-file ``.safetensors`` checkpoint (A1111/ComfyUI style), converted with
  diffusers' ``from_single_file`` strictly offline: the component configs come from
  ``config=`` (a diffusers folder or cached repo id of the same architecture) or from
  the local Hugging Face cache, never from the network;
* a Hub repo id (``org/name``) that is already in the local Hugging Face cache.

The family comes from the text encoders' widths: one 768-wide encoder is SD 1.x,
one 1024-wide is SD 2.x, 768 + 1280 is SDXL.

The **base-model fingerprint** tells checkpoints apart without reading gigabytes:
``"fp2:" + sha256`` of one line per weight file (``.safetensors``, ``.bin``,
``.ckpt``, ``.pt``, ``.pth``; the ``safety_checker``, ``feature_extractor`` and
``image_encoder`` folders are left out, as they do not shape a concept), sorted by
relative path. For a safetensors file::

    <relative path>\\t<size>\\t<sha256 of the header>\\t<sha256 of the tensor samples>

where the samples are the first and last 4 KiB of every tensor's data (the whole
tensor when it is at most 8 KiB), concatenated in file order. A fine-tune or a merge
changes the whole of every tensor it touches, so it is seen, for about 8 KiB read
per tensor (some 20 MB of a 7 GB SDXL file); only an edit confined to the middle of
a tensor larger than 8 KiB is not. For other formats (and safetensors files too
broken to walk)::

    <relative path>\\t<size>\\t<sha256 of the first 1 MiB>\\t<sha256 of the last 1 MiB>

A single-file checkpoint has the empty string as its path, so renaming the file
does not change it. The same files give the same fingerprint on every machine. The
tiny models have ``"fp2:" + sha256("conceptlib-tiny\\n<model id>\\nv<TINY_VERSION>")``.
``fp1:`` fingerprints (conceptlib 0.1.0) sampled only the first and last MiB of
each file; they never equal ``fp2:`` ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conceptlib.errors import BaseModelError, FamilyMismatch
from conceptlib.schemas.enums import Family
from conceptlib.trainer.tiny import TINY_MODELS, TINY_RESOLUTION, TINY_VERSION

FINGERPRINT_PREFIX = "fp2:"
_CHUNK = 1024 * 1024
_SAMPLE = 4096
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_SKIPPED_FOLDERS = {"safety_checker", "feature_extractor", "image_encoder"}
_MAX_HEADER = 100 * 1024 * 1024
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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
        fingerprint: the cheap, stable fingerprint described in the module docstring.
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


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers/transformers progress bars and warnings (the library never prints)."""
    import warnings

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    d_level, t_level = dlog.get_verbosity(), tlog.get_verbosity()
    d_bars, t_bars = dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        dlog.set_verbosity(d_level)
        tlog.set_verbosity(t_level)
        if d_bars:
            dlog.enable_progress_bar()
        if t_bars:
            tlog.enable_progress_bar()


def _dtype_kwargs(dtype: Any) -> dict[str, Any]:
    """Newer diffusers renamed ``torch_dtype`` to ``dtype``; pass whichever it takes."""
    from diffusers.utils import deprecation_utils

    renamed = hasattr(deprecation_utils, "_resolve_dtype")
    return {"dtype": dtype} if renamed else {"torch_dtype": dtype}


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when available, else ``"cpu"``."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


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


# --------------------------------------------------------------------------- fingerprint


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safetensors_spans(header: Any, data_start: int, size: int) -> list[tuple[int, int]] | None:
    """The byte ranges of each tensor's data, in file order, or None if malformed."""
    if not isinstance(header, dict):
        return None
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            lo, hi = (int(x) for x in entry["data_offsets"])
        except (TypeError, KeyError, ValueError):
            return None
        if not 0 <= lo <= hi or data_start + hi > size:
            return None
        spans.append((data_start + lo, data_start + hi))
    return sorted(spans)


def _tensor_samples_sha(fh: Any, spans: list[tuple[int, int]]) -> str:
    """SHA-256 of the first and last ``_SAMPLE`` bytes of every tensor, in file order."""
    digest = hashlib.sha256()
    for lo, hi in spans:
        if hi - lo <= 2 * _SAMPLE:
            fh.seek(lo)
            digest.update(fh.read(hi - lo))
        else:
            fh.seek(lo)
            digest.update(fh.read(_SAMPLE))
            fh.seek(hi - _SAMPLE)
            digest.update(fh.read(_SAMPLE))
    return digest.hexdigest()


def _file_line(path: Path, rel: str) -> str:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if path.suffix == ".safetensors" and size >= 8:
            (n,) = struct.unpack("<Q", fh.read(8))
            if 0 < n <= min(_MAX_HEADER, size - 8):
                raw = fh.read(n)
                try:
                    spans = _safetensors_spans(json.loads(raw), 8 + n, size)
                except ValueError:
                    spans = None
                if spans is not None:
                    return f"{rel}\t{size}\t{_sha(raw)}\t{_tensor_samples_sha(fh, spans)}"
        # pickled weights, or a safetensors file too broken to walk: head and tail
        fh.seek(0)
        head = fh.read(_CHUNK)
        fh.seek(max(0, size - _CHUNK))
        tail = fh.read(_CHUNK)
    return f"{rel}\t{size}\t{_sha(head)}\t{_sha(tail)}"


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a diffusers folder that the fingerprint covers."""
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if rel.parts and rel.parts[0] in _SKIPPED_FOLDERS:
            continue
        if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
            out.append(path)
    return out


def fingerprint_path(path: str | os.PathLike[str]) -> str:
    """The base-model fingerprint of a diffusers folder or a single-file checkpoint."""
    p = Path(path)
    if p.is_file():
        lines = [_file_line(p, "")]
    else:
        files = sorted(weight_files(p), key=lambda f: f.relative_to(p).as_posix())
        if not files:
            raise BaseModelError(f"{p}: no weight files found", path=str(p))
        lines = [_file_line(f, f.relative_to(p).as_posix()) for f in files]
    return FINGERPRINT_PREFIX + _sha("\n".join(lines).encode())


def tiny_fingerprint(name: str) -> str:
    return FINGERPRINT_PREFIX + _sha(
        f"conceptlib-tiny\n{TINY_MODELS[name]}\nv{TINY_VERSION}".encode()
    )


# --------------------------------------------------------------------------- loading


def _require_diffusers_folder(folder: Path, message: str, *, hint: str) -> None:
    if not (folder / "model_index.json").is_file():
        raise BaseModelError(f"{message} (no model_index.json)", hint=hint, path=str(folder))


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


def _load_folder(folder: Path, family: Family, dtype: Any) -> Any:
    cls = _pipeline_class(family)
    try:
        return cls.from_pretrained(
            folder, local_files_only=True, **_extra_kwargs(family), **_dtype_kwargs(dtype)
        )
    except Exception as exc:  # diffusers raises many kinds; the user needs one message
        raise BaseModelError(
            f"{folder}: cannot load the diffusers pipeline ({type(exc).__name__}: {exc})",
            path=str(folder),
        ) from exc


def _safetensors_keys(path: Path) -> list[str]:
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise BaseModelError(f"{path}: not a safetensors file (too short)", path=str(path))
        (n,) = struct.unpack("<Q", raw)
        if n <= 0 or n > min(_MAX_HEADER, path.stat().st_size - 8):
            raise BaseModelError(
                f"{path}: not a safetensors file (bad header length)", path=str(path)
            )
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise BaseModelError(f"{path}: not a safetensors file ({exc})", path=str(path)) from exc
    if not isinstance(header, dict):
        raise BaseModelError(
            f"{path}: not a safetensors file (header is not a mapping)", path=str(path)
        )
    return [k for k in header if k != "__metadata__"]


def single_file_family(path: Path) -> Family:
    """The family of an original-layout (LDM) checkpoint, from its tensor names."""
    keys = _safetensors_keys(path)
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return Family.SDXL
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return Family.SD2
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return Family.SD1
    raise BaseModelError(
        f"{path}: no Stable Diffusion text encoder among its tensors; expected an SD 1.x, "
        "SD 2.x or SDXL checkpoint",
        path=str(path),
    )


def _config_folder(config: str, path: Path, family: Family) -> Path:
    """The local diffusers folder holding a single-file checkpoint's component configs.

    ``config`` is a folder or a repo id already in the Hugging Face cache; its family
    must be the checkpoint's, else diffusers fails later with a shape error.
    """
    folder = Path(config).expanduser()
    if not folder.is_dir():
        if not _REPO_ID.match(config):
            raise BaseModelError(
                f"base config {config!r} not found: expected a local diffusers folder or a "
                "repo id in the Hugging Face cache",
                path=str(path),
            )
        folder = _cached_snapshot(config)
    _require_diffusers_folder(
        folder,
        f"base config {config!r} is not a diffusers folder",
        hint="pass the diffusers folder of a model of the same architecture",
    )
    config_family = _folder_family(folder)
    if config_family != family:
        raise BaseModelError(
            f"{path.name} is an {family.value} checkpoint but base config {config!r} is an "
            f"{config_family.value} model",
            hint="pass the diffusers folder of a model of the same architecture",
            path=str(path),
        )
    return folder


def _load_single_file(path: Path, dtype: Any, config: str | None) -> Any:
    family = single_file_family(path)
    cls = _pipeline_class(family)
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        **_extra_kwargs(family),
        **_dtype_kwargs(dtype),
    }
    if config:
        kwargs["config"] = str(_config_folder(config, path, family))
    try:
        with _offline():
            return cls.from_single_file(str(path), **kwargs)
    except Exception as exc:
        raise BaseModelError(
            f"{path}: cannot build the {family.value} pipeline offline ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
            hint="pass a local diffusers folder of the same architecture as config "
            "(--base-config DIR), or have its config repo in the Hugging Face cache",
            path=str(path),
        ) from exc


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """Make huggingface_hub refuse the network for the duration (belt and braces)."""
    import huggingface_hub.constants as hc

    old = hc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE = old


def _cached_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        with _offline():
            return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:
        raise BaseModelError(
            f"base model {repo_id!r} is not a local folder, a .safetensors file, a built-in "
            "tiny model, or a repo in the local Hugging Face cache",
            hint=f"download it first (huggingface-cli download {repo_id}) or pass a local path",
            ref=repo_id,
        ) from exc


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
            from conceptlib.trainer.tiny import load_tiny

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

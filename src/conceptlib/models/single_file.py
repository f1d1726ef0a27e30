"""Single-file ``.safetensors`` checkpoints (A1111/ComfyUI style, the original LDM layout).

The family comes from the tensor names in the file's header. The pipeline is
converted with diffusers' ``from_single_file`` strictly offline: the component
configs come from ``config=`` (the CLI's ``--base-config``: a diffusers folder or
cached repo id of the same architecture) or from the local Hugging Face cache, never
from the network.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from conceptlib.errors import BaseModelError
from conceptlib.models.family import (
    _extra_kwargs,
    _folder_family,
    _pipeline_class,
    unsupported_family,
)
from conceptlib.models.fingerprint import _MAX_HEADER
from conceptlib.models.folders import _REPO_ID, _cached_snapshot, _require_diffusers_folder
from conceptlib.models.libraries import _dtype_kwargs, _offline
from conceptlib.schemas.enums import Family


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


#: Top-level tensor names that mark a checkpoint's noise schedule: ``v_pred`` (trained
#: to predict v) and ``ztsnr`` (zero terminal SNR). Fine-tuners (e.g. NoobAI-XL v-pred)
#: store them as empty tensors; ComfyUI's model detection and A1111's loader read them.
SCHEDULE_MARKERS = ("v_pred", "ztsnr")


def single_file_markers(path: Path) -> dict[str, bool]:
    """Which :data:`SCHEDULE_MARKERS` the checkpoint's header holds, e.g.
    ``{"v_pred": True, "ztsnr": False}``, read from the header alone (size-capped).

    Raises:
        BaseModelError: not a safetensors file.
    """
    keys = set(_safetensors_keys(path))
    return {m: m in keys for m in SCHEDULE_MARKERS}


def single_file_family(path: Path) -> Family:
    """The family of an original-layout (LDM) checkpoint, from its tensor names."""
    keys = _safetensors_keys(path)
    if any("double_blocks." in k or "single_blocks." in k for k in keys):
        raise unsupported_family(Family.FLUX, str(path))
    if any("joint_blocks." in k for k in keys):
        raise unsupported_family(Family.SD3, str(path))
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
            # The CLI adds "with --base-config" on the commands that have it (train).
            hint="have its config repo in the Hugging Face cache, or give a local diffusers "
            "folder of the same architecture as its config",
            option="--base-config",
            path=str(path),
        ) from exc

"""Diffusers folders: local ones, and Hub repos that are already in the local cache.

A diffusers folder is one with ``model_index.json``. A Hub repo id (``org/name``)
is looked up in the local Hugging Face cache strictly offline, never on the network.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from conceptlib.errors import BaseModelError
from conceptlib.models.family import _extra_kwargs, _pipeline_class
from conceptlib.models.libraries import _dtype_kwargs, _offline
from conceptlib.schemas.enums import Family

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _require_diffusers_folder(folder: Path, message: str, *, hint: str) -> None:
    if not (folder / "model_index.json").is_file():
        raise BaseModelError(f"{message} (no model_index.json)", hint=hint, path=str(folder))


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


def download_command(repo_id: str) -> str:
    """The command line that downloads ``repo_id`` into the Hugging Face cache, with the
    CLI the installed ``huggingface_hub`` ships: ``hf download`` (``hf`` replaced
    ``huggingface-cli``, which recent releases no longer install)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        eps = distribution("huggingface_hub").entry_points
        scripts = {ep.name for ep in eps if ep.group == "console_scripts"}
    except PackageNotFoundError:
        scripts = set()
    tool = "huggingface-cli" if "hf" not in scripts and "huggingface-cli" in scripts else "hf"
    return f"{tool} download {repo_id}"


def _cached_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        with _offline():
            return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:
        raise BaseModelError(
            f"base model {repo_id!r} is not a local folder, a .safetensors file, a built-in "
            "tiny model, or a repo in the local Hugging Face cache",
            hint=f"download it first ({download_command(repo_id)}) or pass a local path",
            ref=repo_id,
        ) from exc

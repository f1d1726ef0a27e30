"""Writing the layouts other tools load: A1111 ``.pt``/``.safetensors``, diffusers'
``learned_embeds.safetensors`` (and its SDXL companion), SDXL ``{clip_l, clip_g}``;
and placing written files on disk.

Layouts are those of ``reference/formats.md``; the A1111 ``.pt`` fields are the ones
A1111's ``EmbeddingDatabase`` writes and reads. Tokens written for a tokenizer (the
diffusers key) are in :func:`~conceptlib.schemas.names.tokenizer_form`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from conceptlib.errors import AlreadyExists, UsageError
from conceptlib.registry.formats.embedding import Embedding
from conceptlib.registry.formats.safetensors_io import write_safetensors
from conceptlib.schemas.enums import Family
from conceptlib.schemas.names import tokenizer_form, validate_name

__all__ = [
    "A1111_TOKEN_ID",
    "WRITE_FORMATS",
    "check_writable",
    "export_files",
    "place_files",
    "write_embedding",
]

WRITE_FORMATS = ("a1111-pt", "safetensors", "diffusers", "sdxl")

#: A1111 always keys its one term "*"; its token id is meaningless outside the
#: tokenizer it was trained with, so writers use the value A1111 itself writes.
A1111_TOKEN_ID = 265


def _torch_save_a1111(vectors: np.ndarray, name: str) -> bytes:
    import torch

    payload = {
        "string_to_token": {"*": A1111_TOKEN_ID},
        "string_to_param": {"*": torch.from_numpy(np.array(vectors, dtype=np.float32))},
        "name": name,
        "step": 0,
        "sd_checkpoint": None,
        "sd_checkpoint_name": None,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf.getvalue()


def check_writable(fmt: str, family: Family | str, *, what: str = "this embedding") -> None:
    """The one rule for which format an embedding of ``family`` can be written in.

    ``a1111-pt`` holds one text encoder's ``[n, d]`` (A1111's ``string_to_param``), so
    it cannot hold SDXL's two; ``sdxl`` (``{clip_l, clip_g}``) holds only SDXL.
    ``safetensors`` and ``diffusers`` take every family. ``export NAME --format
    a1111-pt`` and ``export --for-prompt ... --format a1111 --pt`` both ask this.

    Raises:
        UsageError: an unknown format, or one the family cannot use (one message for
            every caller, naming ``what``).
    """
    if fmt not in WRITE_FORMATS:
        raise UsageError(
            f"unknown write format {fmt!r}; expected one of {', '.join(WRITE_FORMATS)}"
        )
    fam = Family(family)
    if fmt == "a1111-pt" and fam == Family.SDXL:
        raise UsageError(
            f"a1111-pt (.pt) holds one text encoder's vectors but {what} is SDXL "
            "(clip_l + clip_g); use the sdxl format: a .safetensors file, which A1111 reads",
            hint="export NAME --format sdxl, or export --for-prompt ... without --pt",
        )
    if fmt == "sdxl" and fam != Family.SDXL:
        raise UsageError(
            f"the sdxl format holds clip_l + clip_g but {what} is {fam.value}; use "
            "a1111-pt, safetensors or diffusers"
        )


def write_embedding(emb: Embedding, fmt: str, *, name: str, token: str) -> dict[str, bytes]:
    """Serialize ``emb`` in one of :data:`WRITE_FORMATS`.

    Args:
        emb: the embedding.
        fmt: ``a1111-pt`` (``{name}.pt``, SD 1.x/2.x), ``safetensors``
            (``{name}.safetensors``: ``emb_params``, or ``clip_l``/``clip_g`` for SDXL),
            ``diffusers`` (``learned_embeds.safetensors`` ``{token: float32 [n, d]}``,
            plus ``learned_embeds_2.safetensors`` for SDXL, the layout of diffusers'
            training scripts) or ``sdxl`` (SDXL only).
        name: the file stem and A1111 ``name`` field (validated as a name).
        token: the trigger token; the diffusers key is its
            :func:`~conceptlib.schemas.names.tokenizer_form` (``BadHand`` is written
            ``badhand``: CLIP's tokenizer lower-cases prompts before matching it).

    Returns:
        Relative file name -> bytes.

    Raises:
        UsageError: unknown format, empty token, or a format the family cannot use
            (:func:`check_writable`).
        InvalidName: a name that cannot be a file name.
    """
    if fmt not in WRITE_FORMATS:
        raise UsageError(
            f"unknown write format {fmt!r}; expected one of {', '.join(WRITE_FORMATS)}"
        )
    stem = validate_name(name)
    if not token or not token.strip() or any(ord(c) < 32 for c in token):
        raise UsageError(
            f"token {token!r} is empty or has control characters; expected a trigger token"
        )
    family = emb.family
    check_writable(fmt, family, what=repr(stem))
    vec = emb.vectors
    if fmt == "a1111-pt":
        return {f"{stem}.pt": _torch_save_a1111(next(iter(vec.values())), stem)}
    if fmt == "safetensors":
        tensors = dict(vec) if family == Family.SDXL else {"emb_params": next(iter(vec.values()))}
        return {f"{stem}.safetensors": write_safetensors(tensors)}
    if fmt == "diffusers":
        key = tokenizer_form(token)
        meta = {"format": "pt"}
        if family == Family.SDXL:
            return {
                "learned_embeds.safetensors": write_safetensors({key: vec["clip_l"]}, meta),
                "learned_embeds_2.safetensors": write_safetensors({key: vec["clip_g"]}, meta),
            }
        return {
            "learned_embeds.safetensors": write_safetensors({key: next(iter(vec.values()))}, meta)
        }
    # fmt == "sdxl"
    return {
        f"{stem}.safetensors": write_safetensors({"clip_l": vec["clip_l"], "clip_g": vec["clip_g"]})
    }


def export_files(emb: Embedding, fmt: str, *, name: str, token: str) -> dict[str, bytes]:
    """The files ``export NAME --format FMT`` writes into a folder, named after the entry.

    As :func:`write_embedding`, except ``diffusers``: one ``{name}.safetensors``
    (``{token: [n, d]}``; ``load_textual_inversion`` takes any file name), or for SDXL
    the pair in a folder of its own, ``{name}/learned_embeds.safetensors`` and
    ``{name}/learned_embeds_2.safetensors`` (the diffusers SDXL script's names, which
    importers pair up). Two entries exported into one folder never share a file.
    """
    files = write_embedding(emb, fmt, name=name, token=token)
    if fmt != "diffusers":
        return files
    stem = validate_name(name)
    if len(files) == 1:
        return {f"{stem}.safetensors": next(iter(files.values()))}
    return {f"{stem}/{rel}": data for rel, data in files.items()}


def place_files(targets: Mapping[Path, bytes], *, overwrite: bool = False) -> list[Path]:
    """Write ``targets`` (path -> bytes) atomically; check every path before writing any.

    A path that already holds exactly these bytes is left as it is (exporting twice is
    not an error). A path holding anything else is refused unless ``overwrite``. Only
    the existing file's size is read first, and its bytes only when the size matches.

    Returns:
        Every target path, in order (also those left as they were).

    Raises:
        AlreadyExists: (exit 5) a target exists with other contents, or is a folder;
            nothing was written.
        StoreError / DiskFull: writing failed (no partial file is left).
    """
    from conceptlib.registry.store import atomic_write

    pending: dict[Path, bytes] = {}
    for path, data in targets.items():
        if not os.path.lexists(path):
            pending[path] = data
            continue
        if _holds(path, data):
            continue
        if path.is_dir() or not overwrite:
            raise AlreadyExists(
                f"{path} already exists"
                + (" and is a folder" if path.is_dir() else " with other contents"),
                existing=str(path),
                hint=None if path.is_dir() else "pass --overwrite to replace it",
            )
        pending[path] = data
    for path, data in pending.items():
        atomic_write(path, data)
    return list(targets)


def _holds(path: Path, data: bytes) -> bool:
    """Whether the regular file at ``path`` holds exactly ``data``."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size != len(data):
            return False
        with path.open("rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False

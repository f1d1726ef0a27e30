"""Writing the layouts other tools load: A1111 ``.pt``/``.safetensors``, diffusers'
``learned_embeds.safetensors`` (and its SDXL companion), SDXL ``{clip_l, clip_g}``.

Layouts are those of ``reference/formats.md``; the A1111 ``.pt`` fields are the ones
A1111's ``EmbeddingDatabase`` writes and reads.
"""

from __future__ import annotations

import io

import numpy as np

from conceptlib.errors import UsageError
from conceptlib.registry.formats.embedding import Embedding
from conceptlib.registry.formats.safetensors_io import write_safetensors
from conceptlib.schemas.enums import Family
from conceptlib.schemas.names import validate_name

__all__ = ["A1111_TOKEN_ID", "WRITE_FORMATS", "write_embedding"]

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


def write_embedding(emb: Embedding, fmt: str, *, name: str, token: str) -> dict[str, bytes]:
    """Serialize ``emb`` in one of :data:`WRITE_FORMATS`.

    Args:
        emb: the embedding.
        fmt: ``a1111-pt`` (``{name}.pt``, SD 1.x/2.x), ``safetensors``
            (``{name}.safetensors``: ``emb_params``, or ``clip_l``/``clip_g`` for SDXL),
            ``diffusers`` (``learned_embeds.safetensors`` keyed by ``token``, plus
            ``learned_embeds_2.safetensors`` for SDXL) or ``sdxl`` (SDXL only).
        name: the file stem and A1111 ``name`` field (validated as a name).
        token: the diffusers key.

    Returns:
        Relative file name -> bytes.

    Raises:
        UsageError: unknown format, empty token, or a format the family cannot use.
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
    vec = emb.vectors
    if fmt == "a1111-pt":
        if family == Family.SDXL:
            raise UsageError(
                "a1111-pt holds one text encoder's vectors but this embedding is SDXL "
                "(clip_l + clip_g); use the sdxl format"
            )
        return {f"{stem}.pt": _torch_save_a1111(next(iter(vec.values())), stem)}
    if fmt == "safetensors":
        tensors = dict(vec) if family == Family.SDXL else {"emb_params": next(iter(vec.values()))}
        return {f"{stem}.safetensors": write_safetensors(tensors)}
    if fmt == "diffusers":
        meta = {"format": "pt"}
        if family == Family.SDXL:
            return {
                "learned_embeds.safetensors": write_safetensors({token: vec["clip_l"]}, meta),
                "learned_embeds_2.safetensors": write_safetensors({token: vec["clip_g"]}, meta),
            }
        return {
            "learned_embeds.safetensors": write_safetensors({token: next(iter(vec.values()))}, meta)
        }
    # fmt == "sdxl"
    if family != Family.SDXL:
        raise UsageError(
            f"the sdxl format holds clip_l + clip_g but this embedding is {family.value}; use "
            "a1111-pt, safetensors or diffusers"
        )
    return {
        f"{stem}.safetensors": write_safetensors({"clip_l": vec["clip_l"], "clip_g": vec["clip_g"]})
    }

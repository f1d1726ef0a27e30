"""The canonical embedding: what every file format is turned into.

``vectors`` maps a text-encoder slot (``clip_l``, ``clip_h``, ``clip_g``,
``t5xxl``) to a float32 array ``[n, d]``. The family comes from the set of slots, never from one
number; identity is the SHA-256 of the canonical safetensors serialization.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conceptlib.config import FP16_MAX, MAX_VECTORS
from conceptlib.errors import BadTensor, FamilyMismatch
from conceptlib.registry.formats.safetensors_io import write_safetensors
from conceptlib.schemas.enums import EMBEDDING_FAMILIES, SLOT_WIDTH, WIDTH_SLOT, Family

# Real CLIP token embeddings have per-vector L2 norms of roughly 0.3-1.5 (SD 1.x)
# and trained textual-inversion vectors rarely exceed ~20; far outside that range
# the file is kept but flagged.
SLOT_ORDER = ("clip_l", "clip_h", "clip_g", "t5xxl")
NORM_LOW = 1e-3
NORM_HIGH = 200.0


def family_of(slots: Mapping[str, np.ndarray]) -> Family:
    """Derive the family from the slot set (:data:`~conceptlib.schemas.enums.EMBEDDING_FAMILIES`);
    raise :class:`FamilyMismatch` if none fits, or if the slots of a several-encoder
    family hold different numbers of vectors."""
    names = set(slots)
    shapes = ", ".join(f"{k}={list(v.shape)}" for k, v in sorted(slots.items()))
    fam = EMBEDDING_FAMILIES.get(frozenset(names))
    if fam is not None:
        rows = {slots[s].shape[0] for s in names}
        if len(rows) != 1:
            what = {
                Family.SDXL: "clip_l and clip_g",
                Family.SD3: "clip_l, clip_g and t5xxl",
                Family.FLUX: "clip_l and t5xxl",
            }.get(fam, "every slot")
            raise FamilyMismatch(
                f"{fam.value.upper()} embedding with unequal row counts ({shapes}); expected "
                f"{what} with the same number of vectors"
            )
        return fam
    if names and names - set(SLOT_WIDTH):
        raise FamilyMismatch(f"slots {shapes} fit no base-model family")
    if "clip_g" in names and "clip_l" not in names and "t5xxl" not in names:
        raise FamilyMismatch(
            f"SDXL embedding without clip_l ({shapes}); expected clip_l [n,768] and clip_g [n,1280]"
        )
    raise FamilyMismatch(
        f"slots {shapes} fit no base-model family; expected {{clip_l}} (SD 1.x), {{clip_h}} "
        "(SD 2.x), {clip_l, clip_g} (SDXL), {clip_l, clip_g, t5xxl} (SD3) or "
        "{clip_l, t5xxl} (FLUX)"
    )


def as_matrix(name: str, value: Any, *, path: str | None = None) -> np.ndarray:
    """Turn a tensor/array into float32 ``[n, d]``; 1-D ``[d]`` becomes ``[1, d]``."""
    arr = value
    if not isinstance(arr, np.ndarray):
        # torch tensors: detach to numpy without importing torch here.
        if hasattr(arr, "detach"):
            arr = arr.detach().to("cpu")
            if str(arr.dtype) in ("torch.bfloat16", "torch.float16"):
                arr = arr.float()
            arr = arr.numpy()
        else:
            arr = np.asarray(arr)
    if arr.dtype.kind not in "f":
        raise BadTensor(
            f"tensor {name!r} has dtype {arr.dtype}; expected a float tensor", path=path
        )
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise BadTensor(
            f"tensor {name!r} has shape {list(arr.shape)}; expected [n, d] or [d]", path=path
        )
    return arr


@dataclass
class Embedding:
    """A validated textual-inversion embedding.

    Attributes:
        vectors: slot name -> float32 ``[n, d]`` array.
        flags: warnings kept with the entry (``all_zero``, ``norm_outlier``).
    """

    vectors: dict[str, np.ndarray]
    flags: list[str] = field(default_factory=list)

    @classmethod
    def from_slots(cls, slots: Mapping[str, Any], *, path: str | None = None) -> Embedding:
        """Build from explicit slots (``clip_l``/``clip_h``/``clip_g``/``t5xxl``), validating
        everything."""
        vectors = {k: as_matrix(k, v, path=path) for k, v in slots.items()}
        return cls._validated(vectors, path=path)

    @classmethod
    def from_single(cls, value: Any, *, key: str = "tensor", path: str | None = None) -> Embedding:
        """Build from one ``[n, d]`` tensor: the slot comes from the width ``d``."""
        arr = as_matrix(key, value, path=path)
        width = arr.shape[1]
        slot = WIDTH_SLOT.get(width)
        if slot is None:
            raise FamilyMismatch(
                f"tensor {key!r} has width {width} (shape {list(arr.shape)}); expected 768 "
                "(SD 1.x), 1024 (SD 2.x), 768 + 1280 (SDXL) or 4096 (T5-XXL: SD3, FLUX)",
                path=path,
            )
        return cls._validated({slot: arr}, path=path)

    @classmethod
    def _validated(cls, vectors: dict[str, np.ndarray], *, path: str | None) -> Embedding:
        for slot, arr in vectors.items():
            expected = SLOT_WIDTH.get(slot)
            if expected is not None and arr.shape[1] != expected:
                raise FamilyMismatch(
                    f"slot {slot} has width {arr.shape[1]}; expected {expected}", path=path
                )
            n = arr.shape[0]
            if n == 0:
                raise BadTensor(f"slot {slot} has no vectors (shape {list(arr.shape)})", path=path)
            if n > MAX_VECTORS:
                raise BadTensor(
                    f"slot {slot} has {n} vectors; expected at most {MAX_VECTORS} "
                    "(CLIP's prompt window is 77 tokens with start and end)",
                    path=path,
                )
            if not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).sum())
                raise BadTensor(f"slot {slot} has {bad} NaN or Inf values", path=path)
            peak = float(np.abs(arr).max())
            if peak > FP16_MAX:
                raise BadTensor(
                    f"slot {slot} has a value of magnitude {peak:.6g}; expected at most "
                    f"{FP16_MAX:g} (larger becomes Inf in fp16)",
                    path=path,
                )
        family_of(vectors)
        emb = cls(vectors=vectors)
        emb.flags = emb.quality_flags()
        return emb

    # ------------------------------------------------------------------ facts

    @property
    def family(self) -> Family:
        return family_of(self.vectors)

    @property
    def num_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def dims(self) -> list[int]:
        """Widths in encoder order (clip_l, clip_h, clip_g, t5xxl): SDXL is ``[768, 1280]``."""
        return [int(self.vectors[s].shape[1]) for s in self.slots]

    @property
    def slots(self) -> list[str]:
        return [s for s in SLOT_ORDER if s in self.vectors]

    def canonical_bytes(self) -> bytes:
        """The canonical safetensors serialization (sorted slots, float32, no metadata)."""
        return write_safetensors(self.vectors)

    @property
    def tensor_sha256(self) -> str:
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def norms(self) -> dict[str, list[float]]:
        return {s: [float(x) for x in np.linalg.norm(v, axis=1)] for s, v in self.vectors.items()}

    def quality_flags(self) -> list[str]:
        flags: list[str] = []
        if all(not np.any(v) for v in self.vectors.values()):
            flags.append("all_zero")
        else:
            for v in self.vectors.values():
                n = np.linalg.norm(v, axis=1)
                if (n < NORM_LOW).any() or (n > NORM_HIGH).any():
                    flags.append("norm_outlier")
                    break
        return flags

    def scaled(self, weight: float) -> Embedding:
        return Embedding(
            {k: v * np.float32(weight) for k, v in self.vectors.items()}, list(self.flags)
        )

    def torch_vectors(self) -> dict[str, Any]:
        """The vectors as CPU float32 torch tensors (imports torch)."""
        import torch

        return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in self.vectors.items()}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def short_hashes(file_sha256: str) -> dict[str, str]:
    """The short forms other tools show: A1111's 12 hex, Civitai's AutoV2."""
    return {"a1111": file_sha256[:12], "autov2": file_sha256[:10].upper()}

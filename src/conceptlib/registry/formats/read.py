"""Every embedding file layout, read by content (writing is :mod:`.write`).

Reading happens in two steps, each a small table tried in a fixed order:

1. :data:`CONTAINERS` recognises the container by its first bytes (never by the file
   name): safetensors, a PyTorch zip, 7z/tar archives (refused), a legacy PyTorch
   pickle stream, PNG, WebP. Pickles only ever go through
   :func:`~conceptlib.registry.formats.safe_pickle.safe_torch_load`.
2. :data:`LAYOUTS` recognises the layout by the keys of what the container held:
   A1111 (``string_to_param``), keys named after the text encoders (SD3/FLUX:
   ``clip_l``/``clip_g``/``t5xxl``, OneTrainer's ``t5``), SDXL (``clip_l``/``clip_g``),
   pivotal tuning (``text_encoders_0/1``, ``bundle_emb.*``), kohya's ``emb_params``,
   and diffusers' single ``{token: tensor}``.

Slots always come from tensor widths (768 clip_l, 1024 clip_h, 1280 clip_g, 4096
t5xxl), never from key names alone and never from a float count. A LoRA file with
several ``bundle_emb.<name>.*`` embeddings is read by :mod:`.bundle`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
from conceptlib.errors import (
    AmbiguousEmbedding,
    ConceptlibError,
    EmptyFile,
    FamilyMismatch,
    FileTooLarge,
    LfsPointerFile,
    NotFound,
    UnknownFormat,
    UnsupportedContent,
    UsageError,
)
from conceptlib.registry.formats.embedding import Embedding, as_matrix
from conceptlib.registry.formats.png_embed import (
    is_png,
    is_webp,
    read_png_embedding,
    read_webp_embedding,
)
from conceptlib.registry.formats.safe_pickle import (
    ParameterDictContents,
    is_7z,
    is_pickle,
    is_tar,
    is_zip,
    safe_torch_load,
)
from conceptlib.registry.formats.safetensors_io import (
    looks_like_safetensors,
    read_safetensors,
)
from conceptlib.schemas.enums import SLOT_WIDTH, WIDTH_SLOT, canonical_slot

__all__ = [
    "CONTAINERS",
    "LAYOUTS",
    "READ_FORMATS",
    "SDXL_COMPANION_NAMES",
    "SDXL_MAIN_NAMES",
    "ParsedFile",
    "is_sdxl_companion",
    "read_embedding_bytes",
    "read_embedding_file",
]

READ_FORMATS = (
    "a1111-pt",
    "emb_params",
    "diffusers",
    "sdxl",
    "sd3",
    "flux",
    "diffusers-sdxl-pair",
    "a1111-png",
    "pti",
)

#: The diffusers SDXL script writes the first encoder's vectors to the main file and
#: the second's to the companion beside it.
SDXL_MAIN_NAMES = ("learned_embeds.safetensors", "learned_embeds.bin")
SDXL_COMPANION_NAMES = ("learned_embeds_2.safetensors", "learned_embeds_2.bin")


#: Keys that name a layout, not a trigger token. ``weight`` is the key of
#: ``torch.nn.Embedding(n, d).state_dict()``: the parameter's name, not a trigger.
_GENERIC_KEYS = {
    "*",
    "emb_params",
    "clip_l",
    "clip_h",
    "clip_g",
    "t5",
    "t5xxl",
    "embedding",
    "string_to_param.*",
    "weight",
}
#: Two-tensor namings of an SDXL pair (assigned to slots by width, not by name).
_SDXL_PAIR_KEYS = (
    frozenset({"clip_l", "clip_g"}),
    frozenset({"text_encoders_0", "text_encoders_1"}),
    frozenset({"embedding", "embedding_2"}),
)
_LFS_PREFIXES = (
    b"version https://git-lfs.github.com/spec/",
    b"version https://hawser.github.com/spec/",
)
_SUPPORTED = (
    "safetensors ({token: [n,d]}, emb_params, clip_l+clip_g, clip_l+clip_g+t5xxl, "
    "clip_l+t5xxl, text_encoders_0/1), PyTorch "
    ".pt/.bin (A1111 or the Textual Inversion paper's string_to_param, emb_params, "
    "{token: tensor}), an A1111 embedding image (PNG or WebP: sd-ti-embedding chunk or side strips)"
)


@dataclass
class ParsedFile:
    """An embedding read from a file, with what the file said about it.

    Attributes:
        embedding: the validated canonical embedding.
        format: the layout: ``a1111-pt``, ``emb_params``, ``diffusers``, ``sdxl``,
            ``diffusers-sdxl-pair``, ``sd3``, ``flux`` (keys named after the text
            encoders), ``a1111-png`` or ``pti``.
        container: ``safetensors``, ``torch-zip``, ``torch-legacy``, ``png`` or ``webp``.
        token: a real trigger token from the file (a diffusers key such as
            ``<cat-toy>``); None for layout keys (``*``, ``emb_params``, ``clip_l``...).
        name_hint: A1111's ``name`` field (file, PNG), or a bundle's name.
        metadata: JSON-safe facts: ``step``, ``sd_checkpoint``, ``sd_checkpoint_name``,
            ``safetensors_metadata`` (the header's ``__metadata__``: modelspec...),
            ``parameter_dict``, ``slot_names_swapped``...
        file_sha256: SHA-256 of the bytes parsed (for a diffusers SDXL pair: of
            ``learned_embeds``), so callers need not read the file again.
    """

    embedding: Embedding
    format: str
    container: str
    token: str | None = None
    name_hint: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    file_sha256: str | None = None


@dataclass
class _Loaded:
    """What a container held, before the layout is recognised."""

    obj: Any
    container: str
    metadata: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _is_tensor(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "shape"))


def _shape(value: Any) -> list[int]:
    return [int(s) for s in value.shape]


def _describe_tensors(tensors: Mapping[str, Any], limit: int = 6) -> str:
    items = [f"{k} {_shape(v)}" for k, v in list(tensors.items())[:limit]]
    if len(tensors) > limit:
        items.append(f"and {len(tensors) - limit} more")
    return ", ".join(items)


#: Most values one metadata entry may hold once written out as JSON: a pickle can
#: share one list a thousand times over in a few bytes (memo references), which
#: written out would be billions of values.
MAX_METADATA_NODES = 10_000


def _jsonable(value: Any, depth: int = 0, budget: list[int] | None = None) -> tuple[bool, Any]:
    """``(True, JSON-safe copy)`` of plain data, or ``(False, None)``.

    Not JSON-safe: other types, nesting deeper than 8, or more than
    :data:`MAX_METADATA_NODES` values in all (``budget`` counts them down).
    """
    if budget is None:
        budget = [MAX_METADATA_NODES]
    budget[0] -= 1
    if depth > 8 or budget[0] < 0:
        return False, None
    if value is None or isinstance(value, (bool, int, str)):
        return True, value
    if isinstance(value, float):
        return (True, value) if np.isfinite(value) else (True, str(value))
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            ok, conv = _jsonable(item, depth + 1, budget)
            if not ok:
                return False, None
            out.append(conv)
        return True, out
    if isinstance(value, Mapping):
        out_d: dict[str, Any] = {}
        for k, v in value.items():
            ok, conv = _jsonable(v, depth + 1, budget)
            if not ok or not isinstance(k, (str, int)):
                return False, None
            out_d[str(k)] = conv
        return True, out_d
    return False, None


def _extras(obj: Mapping[Any, Any], skip: set[str]) -> dict[str, Any]:
    """The JSON-safe, non-tensor entries of a top-level dict (A1111's step etc.)."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or key in skip or _is_tensor(value):
            continue
        ok, conv = _jsonable(value)
        if ok:
            out[key] = conv
    return out


def _tensors_of(obj: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in obj.items() if _is_tensor(v)}


def _slots_by_width(
    tensors: Mapping[str, Any], path: str | None
) -> tuple[dict[str, np.ndarray], bool]:
    """Assign each tensor to the slot its width names; report whether names disagreed."""
    slots: dict[str, np.ndarray] = {}
    swapped = False
    for key, value in tensors.items():
        arr = as_matrix(key, value, path=path)
        slot = WIDTH_SLOT.get(int(arr.shape[1]))
        if slot is None:
            raise FamilyMismatch(
                f"tensor {key!r} has width {arr.shape[1]} (shape {list(arr.shape)}); expected 768 "
                "(clip_l), 1024 (clip_h), 1280 (clip_g) or 4096 (t5xxl)",
                path=path,
            )
        if slot in slots:
            raise FamilyMismatch(
                f"tensors {_describe_tensors(tensors)} have the same width; expected one 768-wide "
                "(clip_l) and one 1280-wide (clip_g)",
                path=path,
            )
        if canonical_slot(key) in SLOT_WIDTH and canonical_slot(key) != slot:
            swapped = True
        slots[slot] = arr
    return slots, swapped


def _ambiguous(
    tensors: Mapping[str, Any], path: str | None, where: str = "file"
) -> ConceptlibError:
    keys = list(tensors)
    lora_like = len(keys) > 16 or any("lora" in k.lower() for k in keys)
    if lora_like:
        return UnsupportedContent(
            f"{where} holds {len(keys)} tensors named like a LoRA or a model "
            f"({_describe_tensors(tensors, 3)}); expected one embedding",
            path=path,
        )
    return AmbiguousEmbedding(
        f"{where} holds {len(keys)} unrelated tensors ({_describe_tensors(tensors)}); expected "
        "one embedding (a single key, string_to_param, emb_params or clip_l + clip_g)",
        path=path,
        candidates=keys,
    )


# --------------------------------------------------------------------------- containers


def _load_safetensors(data: bytes, path: str | None) -> _Loaded:
    tensors, meta = read_safetensors(data, path=path)
    return _Loaded(tensors, "safetensors", {"safetensors_metadata": dict(meta)} if meta else {})


def _load_torch(data: bytes, path: str | None) -> _Loaded:
    obj = safe_torch_load(data, path=path)
    return _Loaded(obj, "torch-zip" if is_zip(data) else "torch-legacy")


def _load_png(data: bytes, path: str | None) -> _Loaded:
    return _Loaded(read_png_embedding(data, path=path), "png")


def _load_webp(data: bytes, path: str | None) -> _Loaded:
    return _Loaded(read_webp_embedding(data, path=path), "webp")


#: Containers by their first bytes, tried in order: ``(name, detect, load)``.
CONTAINERS: list[tuple[str, Callable[[bytes], bool], Callable[[bytes, str | None], _Loaded]]] = [
    ("safetensors", looks_like_safetensors, _load_safetensors),
    ("torch-zip", is_zip, _load_torch),
    ("archive", lambda d: is_7z(d) or is_tar(d), _load_torch),  # refused with a clear message
    ("torch-legacy", is_pickle, _load_torch),
    ("png", is_png, _load_png),
    ("webp", is_webp, _load_webp),
]

_MAGIC_NAMES = (
    (b"\x1f\x8b", "gzip data"),
    (b"BZh", "bzip2 data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"Rar!", "a RAR archive"),
    (b"PK\x05\x06", "an empty zip archive"),
    (b"%PDF", "a PDF document"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x89HDF", "an HDF5 file"),
    (b"GGUF", "a GGUF model"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x00\x00\x00\x0cjP", "a JPEG 2000 image"),
)


def describe_bytes(data: bytes) -> str:
    """A short human description of what the first bytes of a file look like.

    Never the file's content (``../shared/STYLE.md``: an error says what was expected,
    it does not echo what was found): known magic numbers by name, text by its kind,
    other binary data by the hex of its first 8 bytes (a magic number to look up).
    """
    for magic, what in _MAGIC_NAMES:
        if data.startswith(magic):
            return what
    head = data[:64]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        stripped = text.lstrip().lower()
        kind = "text"
        if stripped.startswith(("<!doctype html", "<html")):
            kind = "HTML text"
        elif stripped.startswith(("{", "[")):
            kind = "JSON-like text"
        elif stripped.startswith("<"):
            kind = "XML-like text"
        return f"{kind} ({len(data)} bytes)"
    return f"binary data starting {data[:8].hex(' ')}"


def _load_container(data: bytes, path: str | None) -> _Loaded:
    if not data:
        raise EmptyFile("file is empty (0 bytes); expected an embedding", path=path)
    if data.startswith(_LFS_PREFIXES):
        text = data[:1024].decode("utf-8", "replace")
        oid = re.search(r"oid (\S+)", text)
        size = re.search(r"size (\d+)", text)
        where = path or "file"
        raise LfsPointerFile(
            f"{where} is a Git LFS pointer, not the weights; run git lfs pull (it points to "
            f"{size.group(1) if size else '?'} bytes, {oid.group(1) if oid else 'no oid'})",
            path=path,
            oid=oid.group(1) if oid else None,
        )
    if len(data) > MAX_EMBEDDING_FILE_BYTES:
        raise FileTooLarge(
            f"file is {len(data)} bytes; expected at most {MAX_EMBEDDING_FILE_BYTES} "
            "(embeddings are kilobytes)",
            path=path,
        )
    for _name, detect, load in CONTAINERS:
        if detect(data):
            return load(data, path)
    raise UnknownFormat(
        f"unrecognized content: {describe_bytes(data)}; expected {_SUPPORTED}", path=path
    )


# --------------------------------------------------------------------------- layouts


def _is_a1111(obj: Mapping[Any, Any]) -> bool:
    return "string_to_param" in obj


def _read_a1111(obj: Mapping[Any, Any], loaded: _Loaded, path: str | None) -> ParsedFile:
    params = obj["string_to_param"]
    if not isinstance(params, Mapping):
        raise UnsupportedContent(
            f"string_to_param is a {type(params).__name__}; expected a dict {{'*': tensor}}",
            path=path,
        )
    keys = [str(k) for k in params]
    if len(keys) != 1:
        raise AmbiguousEmbedding(
            f"string_to_param holds {len(keys)} terms ({', '.join(repr(k) for k in keys) or 'none'}); "
            "expected exactly one ('*')",
            path=path,
            candidates=keys,
        )
    value = next(iter(params.values()))
    if not _is_tensor(value):
        raise UnsupportedContent(
            f"string_to_param[{keys[0]!r}] is a {type(value).__name__}; expected a tensor [n, d]",
            path=path,
        )
    emb = Embedding.from_single(value, key=f"string_to_param[{keys[0]!r}]", path=path)
    name = obj.get("name")
    metadata = {**loaded.metadata, **_extras(obj, {"string_to_param", "name"})}
    ids = _token_ids(obj.get("string_to_token"))
    if ids:
        metadata["string_to_token"] = ids
    if isinstance(params, ParameterDictContents):
        metadata["parameter_dict"] = True
    return ParsedFile(
        embedding=emb,
        format="a1111-png" if loaded.container in ("png", "webp") else "a1111-pt",
        container=loaded.container,
        token=None,
        name_hint=name if isinstance(name, str) and name else None,
        metadata=metadata,
    )


def _token_ids(value: Any) -> dict[str, int] | None:
    """``string_to_token`` as ``{term: id}``: A1111 writes ints, the paper's code int64 tensors.

    The Textual Inversion authors' ``EmbeddingManager.save`` keeps each id as a 0-d
    int64 tensor (a view into the tokenizer's output); only one-element integer
    tensors and ints are taken, the rest is left out of the metadata.
    """
    if not isinstance(value, Mapping) or len(value) > 16:
        return None
    out: dict[str, int] = {}
    for key, tid in value.items():
        if _is_tensor(tid) and "int" in str(tid.dtype) and int(np.prod(_shape(tid))) == 1:
            tid = int(tid.reshape(-1)[0])
        if isinstance(key, str) and isinstance(tid, int) and not isinstance(tid, bool):
            out[key] = tid
    return out or None


def _is_sdxl(obj: Mapping[Any, Any]) -> bool:
    tensors = _tensors_of(obj)
    return bool({"clip_l", "clip_g"} & set(tensors)) or frozenset(tensors) in _SDXL_PAIR_KEYS


def _read_sdxl(obj: Mapping[Any, Any], loaded: _Loaded, path: str | None) -> ParsedFile:
    tensors = _tensors_of(obj)
    keys = frozenset(tensors)
    if keys not in _SDXL_PAIR_KEYS:
        if keys <= {"clip_l", "clip_g"}:
            have = next(iter(keys))
            other = "clip_g" if have == "clip_l" else "clip_l"
            raise FamilyMismatch(
                f"SDXL embedding has {have} {_shape(tensors[have])} but no {other}; expected "
                "clip_l [n,768] and clip_g [n,1280]",
                path=path,
            )
        raise _ambiguous(tensors, path)
    slots, swapped = _slots_by_width(tensors, path)
    emb = Embedding.from_slots(slots, path=path)
    metadata = {**loaded.metadata, **_extras(obj, set())}
    if swapped:
        metadata["slot_names_swapped"] = True
    fmt = "pti" if "text_encoders_0" in keys else "sdxl"
    return ParsedFile(emb, fmt, loaded.container, None, None, metadata)


#: OneTrainer's "output embeddings" (a vector added after the text encoder), beside its
#: input vectors: ``clip_l_out``, ``clip_g_out``, ``t5_out``. No UI applies them; they
#: are left out of the entry and counted in ``metadata["output_vectors_left_out"]``.
_OUT_SUFFIX = "_out"
_ENCODER_KEYS = frozenset({"clip_l", "clip_g", "t5", "t5xxl"})


def _is_output_key(key: str) -> bool:
    return key.endswith(_OUT_SUFFIX) and key[: -len(_OUT_SUFFIX)] in _ENCODER_KEYS


def _is_encoder_keyed(obj: Mapping[Any, Any]) -> bool:
    """Keys named after the text encoders with a T5 one (SD3, FLUX) or OneTrainer's
    output vectors beside them; a plain ``clip_l``/``clip_g`` file is :func:`_read_sdxl`'s."""
    keys = set(_tensors_of(obj))
    inputs = {k for k in keys if not _is_output_key(k)}
    if not inputs or not inputs <= _ENCODER_KEYS:
        return False
    return bool(inputs & {"t5", "t5xxl"}) or inputs != keys


def encoder_slots(
    tensors: Mapping[str, Any], path: str | None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Slots of tensors keyed by encoder (``clip_l``, ``clip_g``, ``t5``/``t5xxl``; output
    vectors left out), assigned by width; and what the keys said (metadata)."""
    inputs = {k: v for k, v in tensors.items() if not _is_output_key(k)}
    if {"t5", "t5xxl"} <= set(inputs):
        raise AmbiguousEmbedding(
            f"file holds both t5 {_shape(inputs['t5'])} and t5xxl {_shape(inputs['t5xxl'])}; "
            "expected one T5-XXL tensor (OneTrainer names it t5, ComfyUI t5xxl)",
            path=path,
            candidates=["t5", "t5xxl"],
        )
    slots, swapped = _slots_by_width(inputs, path)
    metadata: dict[str, Any] = {}
    if swapped:
        metadata["slot_names_swapped"] = True
    if "t5" in inputs:
        metadata["t5_key"] = "t5"
    elif "t5xxl" in inputs:
        metadata["t5_key"] = "t5xxl"
    left_out = sorted(k for k in tensors if _is_output_key(k))
    if left_out:
        metadata["output_vectors_left_out"] = left_out
    return slots, metadata


def _read_encoder_keyed(obj: Mapping[Any, Any], loaded: _Loaded, path: str | None) -> ParsedFile:
    slots, facts = encoder_slots(_tensors_of(obj), path)
    emb = Embedding.from_slots(slots, path=path)
    metadata = {**loaded.metadata, **_extras(obj, set()), **facts}
    return ParsedFile(emb, emb.family.value, loaded.container, None, None, metadata)


def _is_pti(obj: Mapping[Any, Any]) -> bool:
    tensors = _tensors_of(obj)
    return "text_encoders_0" in tensors or any(k.startswith("bundle_emb.") for k in tensors)


def _read_pti(obj: Mapping[Any, Any], loaded: _Loaded, path: str | None) -> ParsedFile:
    tensors = _tensors_of(obj)
    metadata = {**loaded.metadata, **_extras(obj, set())}
    if "text_encoders_0" in tensors:
        if set(tensors) != {"text_encoders_0"}:
            raise _ambiguous(tensors, path)
        emb = Embedding.from_single(tensors["text_encoders_0"], key="text_encoders_0", path=path)
        return ParsedFile(emb, "pti", loaded.container, None, None, metadata)
    # OneTrainer / kohya bundles: bundle_emb.<name>.<part> inside a LoRA file.
    bundles = bundle_parts(tensors)
    if len(bundles) != 1:
        raise AmbiguousEmbedding(
            f"file bundles {len(bundles)} embeddings ({', '.join(sorted(bundles))}); expected one",
            path=path,
            candidates=sorted(bundles),
        )
    name, parts = next(iter(bundles.items()))
    emb, facts = bundle_embedding(name, parts, path)
    metadata.update(facts)
    metadata["bundle"] = name
    metadata["ignored_tensors"] = len(tensors) - len(parts)
    return ParsedFile(emb, "pti", loaded.container, None, name, metadata)


#: The prefix of an embedding bundled in a LoRA file: ``bundle_emb.<name>.<part>``.
BUNDLE_PREFIX = "bundle_emb."


def bundle_parts(tensors: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``bundle_emb.<name>.<part>`` tensors grouped by ``<name>``, as A1111 groups
    them: the name is the first dot-separated part after the prefix, ``<part>`` the
    rest (``string_to_param.*``, ``emb_params``, ``clip_l``, ``clip_g``, ``t5``...).
    A key without a part (``bundle_emb.<name>``) is that name's one tensor (``*``)."""
    bundles: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(BUNDLE_PREFIX):
            name, _, part = key[len(BUNDLE_PREFIX) :].partition(".")
            bundles.setdefault(name, {})[part or "*"] = value
    return bundles


def bundle_embedding(
    name: str, parts: Mapping[str, Any], path: str | None
) -> tuple[Embedding, dict[str, Any]]:
    """The embedding of one bundle's parts (``<part>`` -> tensor), and what its keys said.

    One part (``string_to_param.*``, ``emb_params``, ``*``) is one encoder's vectors,
    the slot from its width; several are keyed by encoder (``clip_l``, ``clip_g``,
    ``t5``/``t5xxl``; OneTrainer's ``*_out`` output vectors are left out).
    """
    if len(parts) == 1:
        part, value = next(iter(parts.items()))
        key = f"{BUNDLE_PREFIX}{name}.{part}"
        if canonical_slot(part) in SLOT_WIDTH:
            slots, facts = encoder_slots({part: value}, path)
            return Embedding.from_slots(slots, path=path), facts
        return Embedding.from_single(value, key=key, path=path), {}
    unknown = sorted(
        p for p in parts if canonical_slot(p) not in SLOT_WIDTH and not _is_output_key(p)
    )
    if unknown:
        raise AmbiguousEmbedding(
            f"bundled embedding {name!r} has parts {', '.join(sorted(parts))}; expected one "
            "tensor or parts named after the text encoders (clip_l, clip_g, t5xxl)",
            path=path,
            candidates=sorted(parts),
        )
    slots, facts = encoder_slots(dict(parts), path)
    return Embedding.from_slots(slots, path=path), facts


def _is_emb_params(obj: Mapping[Any, Any]) -> bool:
    return "emb_params" in _tensors_of(obj)


def _read_emb_params(obj: Mapping[Any, Any], loaded: _Loaded, path: str | None) -> ParsedFile:
    tensors = _tensors_of(obj)
    if set(tensors) != {"emb_params"}:
        raise _ambiguous(tensors, path)
    emb = Embedding.from_single(tensors["emb_params"], key="emb_params", path=path)
    metadata = {**loaded.metadata, **_extras(obj, set())}
    return ParsedFile(emb, "emb_params", loaded.container, None, None, metadata)


def _is_single(obj: Mapping[Any, Any]) -> bool:
    return len(_tensors_of(obj)) == 1


def _read_single(obj: Mapping[Any, Any], loaded: _Loaded, path: str | None) -> ParsedFile:
    key, value = next(iter(_tensors_of(obj).items()))
    emb = Embedding.from_single(value, key=key, path=path)
    metadata = {**loaded.metadata, **_extras(obj, set())}
    token = None if key in _GENERIC_KEYS else key
    return ParsedFile(emb, "diffusers", loaded.container, token, None, metadata)


#: Layouts by the keys of the loaded dict, tried in order: ``(format, match, read)``.
LAYOUTS: list[
    tuple[
        str,
        Callable[[Mapping[Any, Any]], bool],
        Callable[[Mapping[Any, Any], _Loaded, str | None], ParsedFile],
    ]
] = [
    ("a1111-pt", _is_a1111, _read_a1111),
    ("sd3-flux", _is_encoder_keyed, _read_encoder_keyed),
    ("sdxl", _is_sdxl, _read_sdxl),
    ("pti", _is_pti, _read_pti),
    ("emb_params", _is_emb_params, _read_emb_params),
    ("diffusers", _is_single, _read_single),
]


def _interpret(loaded: _Loaded, path: str | None) -> ParsedFile:
    obj = loaded.obj
    if _is_tensor(obj):
        emb = Embedding.from_single(obj, key="tensor", path=path)
        return ParsedFile(emb, "diffusers", loaded.container, None, None, {"bare_tensor": True})
    if not isinstance(obj, Mapping):
        raise UnsupportedContent(
            f"file holds a {type(obj).__name__}; expected a dict of tensors", path=path
        )
    for _fmt, match, read in LAYOUTS:
        if match(obj):
            return read(obj, loaded, path)
    tensors = _tensors_of(obj)
    if not tensors:
        keys = ", ".join(repr(str(k)) for k in list(obj)[:8]) or "none"
        raise UnsupportedContent(
            f"file holds a dict without tensors (keys: {keys}); expected an embedding", path=path
        )
    raise _ambiguous(tensors, path)


def _read_pair(
    main: _Loaded, companion: _Loaded, path: str | None, companion_path: str | None
) -> ParsedFile:
    """The diffusers SDXL pair: ``{tok: [n,768]}`` plus ``{tok: [n,1280]}`` beside it."""
    found: list[tuple[str, Any]] = []
    for loaded, where in ((main, path), (companion, companion_path)):
        obj = loaded.obj
        tensors = _tensors_of(obj) if isinstance(obj, Mapping) else {}
        if len(tensors) != 1:
            raise UnsupportedContent(
                f"diffusers SDXL file holds {len(tensors)} tensors"
                + (f" ({_describe_tensors(tensors)})" if tensors else "")
                + "; expected one {token: [n, d]}",
                path=where,
            )
        found.append(next(iter(tensors.items())))
    (tok1, t1), (tok2, t2) = found
    if tok1 != tok2:
        raise UnsupportedContent(
            f"learned_embeds holds token {tok1!r} but its companion holds {tok2!r}; expected the "
            "same token in both halves of an SDXL pair",
            path=path,
        )
    slots, _ = _slots_by_width({"learned_embeds": t1, "learned_embeds_2": t2}, path)
    emb = Embedding.from_slots(slots, path=path)
    metadata = dict(main.metadata)
    if companion.metadata.get("safetensors_metadata"):
        metadata["companion_safetensors_metadata"] = companion.metadata["safetensors_metadata"]
    token = None if tok1 in _GENERIC_KEYS else tok1
    return ParsedFile(emb, "diffusers-sdxl-pair", main.container, token, None, metadata)


def _with_path(exc: ConceptlibError, path: str | None) -> ConceptlibError:
    if path and path not in exc.message:
        exc.message = f"{path}: {exc.message}"
        exc.args = (exc.message,)
    if path and hasattr(exc, "path") and not getattr(exc, "path", None):
        exc.path = path  # type: ignore[attr-defined]
    return exc


def read_embedding_bytes(
    data: bytes, *, path: str | None = None, companion: bytes | None = None
) -> ParsedFile:
    """Read an embedding from the bytes of a file, recognising it by content.

    Args:
        data: the whole file.
        path: where it came from, named in every error.
        companion: for the diffusers SDXL pair, the bytes of ``learned_embeds_2``
            (the second encoder's vectors) beside ``learned_embeds``.

    Returns:
        The parsed embedding with its layout, container, token and metadata.

    Raises:
        EmptyFile, LfsPointerFile, FileTooLarge, UnknownFormat, CorruptFile,
        UnsafeFile, UnsupportedContent, BadTensor, AmbiguousEmbedding,
        FamilyMismatch: each with a one-line message naming what was found.
    """
    parsed = _read(data, path, companion, f"{path} (companion)" if path else "companion file")
    parsed.file_sha256 = hashlib.sha256(data).hexdigest()
    return parsed


def _read(
    data: bytes, path: str | None, companion: bytes | None, companion_path: str | None
) -> ParsedFile:
    try:
        loaded = _load_container(data, path)
        if companion is None:
            return _interpret(loaded, path)
    except ConceptlibError as exc:
        raise _with_path(exc, path) from None
    try:
        comp = _load_container(companion, companion_path)
    except ConceptlibError as exc:
        raise _with_path(exc, companion_path) from None
    try:
        return _read_pair(loaded, comp, path, companion_path)
    except ConceptlibError as exc:
        raise _with_path(exc, path) from None


def _read_capped(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file; expected an embedding file")
    if st.st_size > MAX_EMBEDDING_FILE_BYTES:
        raise FileTooLarge(
            f"file is {st.st_size} bytes; expected at most {MAX_EMBEDDING_FILE_BYTES} "
            "(embeddings are kilobytes)",
            path=str(path),
        )
    with open(path, "rb") as fh:
        data = fh.read(MAX_EMBEDDING_FILE_BYTES + 1)
    if len(data) > MAX_EMBEDDING_FILE_BYTES:
        raise FileTooLarge(
            f"file grew past {MAX_EMBEDDING_FILE_BYTES} bytes while reading", path=str(path)
        )
    return data


def is_sdxl_companion(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is the second half of a diffusers SDXL pair (``learned_embeds_2``).

    Folder walkers should skip such files: reading ``learned_embeds`` beside them
    reads both.
    """
    return Path(path).name in SDXL_COMPANION_NAMES


def _sibling(folder: Path, names: tuple[str, ...], prefer_suffix: str) -> Path | None:
    ordered = sorted(names, key=lambda n: not n.endswith(prefer_suffix))
    for name in ordered:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def read_embedding_file(path: str | os.PathLike[str]) -> ParsedFile:
    """Read an embedding file (or a diffusers output folder) from disk.

    The size is checked before the file is read. ``learned_embeds.safetensors`` (or
    ``.bin``) with a ``learned_embeds_2`` beside it is read as the diffusers SDXL
    pair; pointing at ``learned_embeds_2`` reads the pair too, and a lone
    ``learned_embeds_2`` is refused.

    Args:
        path: a file, or a folder holding ``learned_embeds.safetensors|.bin``.

    Returns:
        The parsed embedding (see :func:`read_embedding_bytes`).

    Raises:
        NotFound: no such file.
        UsageError: not a regular file, or a folder without ``learned_embeds``.
        FileTooLarge, EmptyFile, LfsPointerFile, UnsupportedContent, ...: as for
            :func:`read_embedding_bytes`.
    """
    p = Path(path)
    if p.is_dir():
        inner = _sibling(p, SDXL_MAIN_NAMES, ".safetensors")
        if inner is None:
            raise UsageError(
                f"{p} is a folder without learned_embeds.safetensors or .bin; expected an "
                "embedding file"
            )
        p = inner
    if p.name in SDXL_COMPANION_NAMES:
        main = _sibling(p.parent, SDXL_MAIN_NAMES, p.suffix)
        if main is None:
            raise UnsupportedContent(
                f"{p.name} is the second text encoder's half of a diffusers SDXL embedding, but "
                "learned_embeds.safetensors is not beside it; expected both files in one folder",
                path=str(p),
            )
        return read_embedding_file(main)
    data = _read_capped(p)
    companion_path: Path | None = None
    if p.name in SDXL_MAIN_NAMES:
        companion_path = _sibling(p.parent, SDXL_COMPANION_NAMES, p.suffix)
    if companion_path is None:
        parsed = _read(data, str(p), None, None)
    else:
        parsed = _read(data, str(p), _read_capped(companion_path), str(companion_path))
    parsed.file_sha256 = hashlib.sha256(data).hexdigest()
    return parsed

"""Embeddings bundled in a LoRA file: ``bundle_emb.<name>.<part>`` tensors (A1111's
bundled format, which OneTrainer writes), read out of the file and written into one.

A LoRA file is large (megabytes to gigabytes) and untrusted: only its header is read
(validated as any safetensors header, against the file's real size, capped at
:data:`MAX_LORA_HEADER_BYTES`), then only the bundled tensors' bytes, at most
:data:`MAX_BUNDLE_BYTES` in all and :data:`MAX_BUNDLES` embeddings; the LoRA weights
themselves are never read into memory. Writing one in (:func:`write_bundled_lora`)
appends the new tensors after the LoRA's data and rewrites the header only; the
LoRA's tensors and ``__metadata__`` are kept as they were.

Layouts (A1111 ``extensions-builtin/Lora/networks.py`` groups the keys by the first
dot-separated part after ``bundle_emb.``, so a bundled name holds no dot):

==========  ===================================================================
family      parts written
==========  ===================================================================
sd1, sd2    ``bundle_emb.<name>.string_to_param.*`` (A1111's ``.pt`` layout)
sdxl        ``bundle_emb.<name>.clip_l``, ``bundle_emb.<name>.clip_g``
sd3, flux   ``clip_l``, ``clip_g`` (SD3), and T5 as ``t5xxl`` (default) or ``t5``
            (OneTrainer's spelling)
==========  ===================================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
from conceptlib.errors import (
    AlreadyExists,
    ConceptlibError,
    CorruptFile,
    FileTooLarge,
    NotFound,
    UnsupportedContent,
    UsageError,
)
from conceptlib.registry.formats.embedding import Embedding
from conceptlib.registry.formats.read import BUNDLE_PREFIX, bundle_embedding
from conceptlib.registry.formats.safetensors_io import (
    decode_tensor,
    looks_like_safetensors,
    parse_header,
)
from conceptlib.registry.formats.write import T5_KEYS
from conceptlib.schemas.enums import Family

__all__ = [
    "MAX_BUNDLES",
    "MAX_BUNDLE_BYTES",
    "MAX_LORA_FILE_BYTES",
    "MAX_LORA_HEADER_BYTES",
    "T5_KEYS",
    "BundledEmbedding",
    "LoraFile",
    "bundle_keys",
    "bundle_name",
    "has_bundles",
    "lora_family",
    "read_lora_bundles",
    "write_bundled_lora",
]

#: Most embeddings read out of one LoRA file (real ones carry a handful); a file
#: bundling more is refused whole.
MAX_BUNDLES = 64
#: Most bytes all bundled tensors of one file may span: the embedding file cap.
MAX_BUNDLE_BYTES = MAX_EMBEDDING_FILE_BYTES
#: Largest LoRA header read (kohya keeps its dataset's tag counts in ``__metadata__``).
MAX_LORA_HEADER_BYTES = MAX_EMBEDDING_FILE_BYTES
#: Largest LoRA file opened (only its header and bundled tensors are read).
MAX_LORA_FILE_BYTES = 64 * 1024**3

_COPY_CHUNK = 1 << 20


@dataclass
class BundledEmbedding:
    """One ``bundle_emb.<name>`` of a LoRA file.

    Attributes:
        name: ``<name>`` as written in the file (untrusted: make it printable).
        embedding: its vectors, or None when ``error`` says why they cannot be used.
        parts: the part names it had (``clip_l``, ``string_to_param.*``...).
        facts: what its keys said (``t5_key``, ``output_vectors_left_out``).
    """

    name: str
    embedding: Embedding | None
    parts: list[str]
    facts: dict[str, Any] = field(default_factory=dict)
    error: ConceptlibError | None = None


@dataclass
class LoraFile:
    """What was read of a LoRA file carrying bundled embeddings.

    Attributes:
        sha256: SHA-256 of the whole file (streamed, never held in memory).
        family: the LoRA's base-model family (:func:`lora_family`), or None.
        lora_tensors: how many tensors are not bundled embeddings.
    """

    path: str
    size: int
    sha256: str
    family: Family | None
    lora_tensors: int
    bundles: list[BundledEmbedding]
    metadata: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- header


def _open_checked(path: Path) -> tuple[BinaryIO, int]:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    if not path.is_file():
        raise UsageError(f"{path} is not a regular file; expected a LoRA .safetensors file")
    if st.st_size > MAX_LORA_FILE_BYTES:
        raise FileTooLarge(
            f"file is {st.st_size} bytes; expected a LoRA file of at most {MAX_LORA_FILE_BYTES}",
            path=str(path),
        )
    return path.open("rb"), st.st_size


def _header(fh: BinaryIO, size: int, path: str) -> tuple[dict[str, dict], dict[str, str], int]:
    head = fh.read(8)
    if len(head) < 8 or not looks_like_safetensors(head + fh.read(2)):
        raise UnsupportedContent(
            f"{path} is not a safetensors file; expected a LoRA .safetensors file", path=path
        )
    (n,) = struct.unpack("<Q", head)
    if n > MAX_LORA_HEADER_BYTES:
        raise FileTooLarge(
            f"safetensors header claims {n} bytes; expected at most {MAX_LORA_HEADER_BYTES}",
            path=path,
        )
    fh.seek(0)
    prefix = fh.read(8 + n)
    try:
        return parse_header(prefix, total_size=size, max_header_bytes=MAX_LORA_HEADER_BYTES)
    except (CorruptFile, FileTooLarge) as exc:
        exc.message = f"{path}: {exc.message}"
        exc.args = (exc.message,)
        exc.path = path  # type: ignore[attr-defined]
        raise


def has_bundles(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a safetensors file whose header names a ``bundle_emb.`` tensor.

    Cheap: reads the header's bytes only (nothing when the file does not start like
    safetensors); any doubt is False, and the file is then read as an embedding file.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(10)
            if not looks_like_safetensors(head):
                return False
            (n,) = struct.unpack("<Q", head[:8])
            if n > MAX_LORA_HEADER_BYTES:
                return False
            fh.seek(8)
            raw = fh.read(n)
    except OSError:
        return False
    return b'"' + BUNDLE_PREFIX.encode() in raw


def bundle_keys(keys: list[str] | Mapping[str, Any]) -> dict[str, list[str]]:
    """Bundled names -> their parts, from tensor names (A1111's grouping)."""
    out: dict[str, list[str]] = {}
    for key in keys:
        if key.startswith(BUNDLE_PREFIX):
            name, _, part = key[len(BUNDLE_PREFIX) :].partition(".")
            out.setdefault(name, []).append(part or "*")
    return out


# --------------------------------------------------------------------------- family

_ARCHITECTURES = (
    ("flux", Family.FLUX),
    ("stable-diffusion-3", Family.SD3),
    ("stable-diffusion-v3", Family.SD3),
    ("stable-diffusion-xl", Family.SDXL),
    ("stable-diffusion-v2", Family.SD2),
    ("stable-diffusion-v1", Family.SD1),
)
_KOHYA_VERSIONS = (
    ("flux", Family.FLUX),
    ("sd3", Family.SD3),
    ("sdxl", Family.SDXL),
    ("sd_v2", Family.SD2),
    ("sd_v1", Family.SD1),
)


def _from_metadata(metadata: Mapping[str, str]) -> Family | None:
    arch = metadata.get("modelspec.architecture", "").lower()
    for prefix, fam in _ARCHITECTURES:
        if arch.startswith(prefix):
            return fam
    version = metadata.get("ss_base_model_version", "").lower()
    for prefix, fam in _KOHYA_VERSIONS:
        if version.startswith(prefix):
            return fam
    return None


def _in_width(entries: Mapping[str, Mapping[str, Any]], pattern: str) -> int | None:
    """The input width of the first ``lora_down`` matrix whose key matches ``pattern``."""
    rx = re.compile(pattern)
    for key, info in entries.items():
        shape = info.get("shape") or []
        if rx.search(key) and key.endswith("lora_down.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def lora_family(
    entries: Mapping[str, Mapping[str, Any]], metadata: Mapping[str, str] | None = None
) -> Family | None:
    """The base-model family a LoRA file was trained for, or None when it cannot tell.

    Declared metadata first (``modelspec.architecture``, kohya's
    ``ss_base_model_version``), then the tensor names: FLUX's ``double_blocks`` /
    ``single_blocks`` / ``single_transformer_blocks``; SD3's ``joint_blocks``,
    ``lora_te3_`` or a ``lora_transformer_`` without FLUX's single blocks; SDXL's
    ``lora_te1_``/``lora_te2_`` or LDM-named ``lora_unet_input_blocks``; SD 1.x / 2.x's
    ``lora_te_`` and ``lora_unet_down_blocks``, told apart by the width a text-encoder
    or cross-attention ``lora_down`` takes (768 or 1024).
    """
    fam = _from_metadata(metadata or {})
    if fam is not None:
        return fam
    keys = [k for k in entries if not k.startswith(BUNDLE_PREFIX)]
    text = "\n".join(keys)
    if re.search(r"double_blocks|single_blocks|single_transformer_blocks", text):
        return Family.FLUX
    if re.search(r"joint_blocks|lora_te3_|^lora_transformer_", text, re.M):
        return Family.SD3
    if re.search(
        r"^lora_te[12]_|^lora_unet_(input|output)_blocks|^lora_unet_middle_block", text, re.M
    ):
        return Family.SDXL
    if re.search(r"^lora_te_|^lora_unet_(down|up)_blocks|^lora_unet_mid_block", text, re.M):
        width = _in_width(entries, r"^lora_te_.*(q_proj|k_proj|v_proj)") or _in_width(
            entries, r"attn2_to_[kv]"
        )
        return {768: Family.SD1, 1024: Family.SD2}.get(width or 0)
    return None


# --------------------------------------------------------------------------- read


def _label(name: str) -> str:
    """A bundled name for messages: escaped (``repr``) and cut to 60 characters."""
    return repr(name if len(name) <= 60 else name[:57] + "...")


def _sha256(fh: BinaryIO) -> str:
    fh.seek(0)
    h = hashlib.sha256()
    while chunk := fh.read(_COPY_CHUNK):
        h.update(chunk)
    return h.hexdigest()


def read_lora_bundles(path: str | os.PathLike[str]) -> LoraFile:
    """Read the embeddings bundled in a LoRA ``.safetensors`` file.

    One bundle that cannot be used (a bad shape, a family that fits none) is that
    bundle's ``error``, not the file's.

    Raises:
        NotFound, UsageError: no such regular file.
        FileTooLarge, CorruptFile, UnsupportedContent: the file cannot be read as a
            LoRA file, bundles more than :data:`MAX_BUNDLES` embeddings, or its bundled
            tensors span more than :data:`MAX_BUNDLE_BYTES`.
    """
    p = Path(path)
    where = str(p)
    fh, size = _open_checked(p)
    with fh:
        entries, metadata, start = _header(fh, size, where)
        grouped = bundle_keys(list(entries))
        if not grouped:
            raise UnsupportedContent(f"{where} holds no bundle_emb.* tensors", path=where)
        if len(grouped) > MAX_BUNDLES:
            raise UnsupportedContent(
                f"{where} bundles {len(grouped)} embeddings; expected at most {MAX_BUNDLES}",
                path=where,
            )
        spans = [e["offsets"] for k, e in entries.items() if k.startswith(BUNDLE_PREFIX)]
        total = sum(end - begin for begin, end in spans)
        if total > MAX_BUNDLE_BYTES:
            raise FileTooLarge(
                f"{where}: its bundled tensors span {total} bytes; expected at most "
                f"{MAX_BUNDLE_BYTES} (embeddings are kilobytes)",
                path=where,
            )
        bundles: list[BundledEmbedding] = []
        for name, parts in grouped.items():
            tensors: dict[str, Any] = {}
            item = BundledEmbedding(name=name, embedding=None, parts=list(parts))
            try:
                for part in parts:
                    key = BUNDLE_PREFIX + name + ("" if part == "*" else "." + part)
                    info = entries[key]
                    begin, end = info["offsets"]
                    fh.seek(start + begin)
                    raw = fh.read(end - begin)
                    if len(raw) != end - begin:
                        raise CorruptFile(f"{where}: tensor {key!r} is cut short", path=where)
                    tensors[part] = decode_tensor(key, info, raw, 0, path=where)
                item.embedding, item.facts = bundle_embedding(name, tensors, where)
            except ConceptlibError as exc:
                exc.message = f"bundled embedding {_label(name)}: {exc.message}"
                exc.args = (exc.message,)
                item.error = exc
            bundles.append(item)
        sha = _sha256(fh)
    return LoraFile(
        path=where,
        size=size,
        sha256=sha,
        family=lora_family(entries, metadata),
        lora_tensors=sum(1 for k in entries if not k.startswith(BUNDLE_PREFIX)),
        bundles=bundles,
        metadata=dict(metadata),
    )


# --------------------------------------------------------------------------- write


def bundle_name(name: str) -> str:
    """The ``<name>`` an entry is bundled under: A1111 splits keys on dots, so each dot
    becomes ``-`` (``v1.5-style`` -> ``v1-5-style``)."""
    return name.replace(".", "-")


def _parts(emb: Embedding, t5_key: str) -> dict[str, np.ndarray]:
    fam = emb.family
    if fam in (Family.SD1, Family.SD2):
        return {"string_to_param.*": next(iter(emb.vectors.values()))}
    return {(t5_key if slot == "t5xxl" else slot): emb.vectors[slot] for slot in emb.slots}


def write_bundled_lora(
    lora: str | os.PathLike[str],
    out: str | os.PathLike[str],
    name: str,
    emb: Embedding,
    *,
    t5_key: str = "t5xxl",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``lora`` to ``out`` with ``emb`` bundled in as ``bundle_emb.<name>.*``.

    The LoRA's tensors (bytes unchanged) and ``__metadata__`` are kept; the new
    tensors (float32) follow its data. Written atomically (a temp file beside ``out``,
    fsync, rename).

    Returns:
        ``{"bundle": name, "keys": [...], "lora_family", "lora_sha256", "sha256", "size"}``.

    Raises:
        UsageError: ``t5_key`` unknown, ``out`` is ``lora``, the LoRA's family cannot be
            told, or the name holds characters a key cannot.
        FamilyMismatch: the embedding's family is not the LoRA's.
        AlreadyExists: ``out`` exists (without ``overwrite``), or ``name`` is already
            bundled in the LoRA.
        NotFound, FileTooLarge, CorruptFile, UnsupportedContent: the LoRA file.
    """
    from conceptlib.errors import FamilyMismatch
    from conceptlib.registry.formats.safetensors_io import write_safetensors

    if t5_key not in T5_KEYS:
        raise UsageError(f"T5 key {t5_key!r}; expected one of {', '.join(T5_KEYS)}")
    src, dst = Path(lora), Path(out)
    if not name or any(c in name for c in '."\\/') or any(ord(c) < 32 for c in name):
        raise UsageError(f"bundle name {name!r} cannot be a tensor key part; expected no dots")
    fh, size = _open_checked(src)
    with fh:
        entries, metadata, start = _header(fh, size, str(src))
        if os.path.lexists(dst):
            if dst.exists() and src.samefile(dst):
                raise UsageError(
                    f"{dst} is the LoRA file itself; write the bundled copy to a new path"
                )
            if not overwrite or dst.is_dir():
                raise AlreadyExists(
                    f"{dst} already exists",
                    existing=str(dst),
                    hint=None if dst.is_dir() else "pass --overwrite to replace it",
                )
        fam = lora_family(entries, metadata)
        if fam is None:
            raise UsageError(
                f"cannot tell which base model {src} is a LoRA for (no modelspec.architecture "
                "or ss_base_model_version, no known tensor names); expected an SD 1.x, SD 2.x, "
                "SDXL, SD3 or FLUX LoRA"
            )
        if emb.family != fam:
            raise FamilyMismatch(
                f"the embedding is {emb.family.value} but {src} is a {fam.value} LoRA; "
                "expected an embedding of the LoRA's family"
            )
        taken = bundle_keys(list(entries))
        if name in taken:
            raise AlreadyExists(
                f"{src} already bundles an embedding named {name!r}",
                existing=name,
                hint="export it under another name, or into a LoRA without it",
            )
        parts = _parts(emb, t5_key)
        keys = [f"{BUNDLE_PREFIX}{name}.{part}" for part in parts]
        # The new tensors' bytes, laid out after the LoRA's buffer.
        blob = write_safetensors(dict(zip(keys, parts.values(), strict=True)))
        new_entries, _meta, new_start = parse_header(blob)
        buffer_len = size - start
        header: dict[str, Any] = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        for key, info in entries.items():
            begin, end = info["offsets"]
            header[key] = {
                "dtype": info["dtype"],
                "shape": info["shape"],
                "data_offsets": [begin, end],
            }
        for key, info in new_entries.items():
            begin, end = info["offsets"]
            header[key] = {
                "dtype": info["dtype"],
                "shape": info["shape"],
                "data_offsets": [buffer_len + begin, buffer_len + end],
            }
        head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
        head += b" " * ((8 - len(head) % 8) % 8)
        digest = _stream_write(
            dst, [struct.pack("<Q", len(head)), head], fh, start, blob[new_start:]
        )
        lora_sha = _sha256(fh)
    return {
        "bundle": name,
        "keys": keys,
        "lora_family": fam.value,
        "lora_sha256": lora_sha,
        "sha256": digest,
        "size": 8 + len(head) + buffer_len + len(blob) - new_start,
    }


def _stream_write(dst: Path, head: list[bytes], src: BinaryIO, start: int, tail: bytes) -> str:
    """Write ``head``, ``src`` from ``start`` on, then ``tail`` to ``dst`` atomically (a
    temp file beside it, fsync, rename, fsync of the folder); return the SHA-256 written.

    Raises:
        DiskFull, StoreError: writing failed (no partial file is left).
    """
    import secrets

    from conceptlib.registry.store import TMP_PREFIX, _fsync_dir, write_failed

    digest = hashlib.sha256()
    tmp = dst.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}-{dst.name}"
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as w:
            for chunk in head:
                w.write(chunk)
                digest.update(chunk)
            src.seek(start)
            while chunk := src.read(_COPY_CHUNK):
                w.write(chunk)
                digest.update(chunk)
            w.write(tail)
            digest.update(tail)
            w.flush()
            os.fsync(w.fileno())
        os.replace(tmp, dst)
    except OSError as exc:
        raise write_failed(exc, dst, tmp) from None
    _fsync_dir(dst.parent)
    return digest.hexdigest()

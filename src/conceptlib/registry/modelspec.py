"""ModelSpec metadata in exported ``.safetensors`` files, and reading it back on import.

Stability AI's *ModelSpec* (``github.com/Stability-AI/ModelSpec``, version 1.0) puts
``modelspec.*`` keys in a safetensors header's ``__metadata__``; SwarmUI shows them
(title, description, trigger phrase, the negative-embedding flag, tags) and takes the
model class from ``modelspec.architecture``. Every ``.safetensors`` file an export
writes fresh carries them, plus our own provenance under one namespaced key,
:data:`PROVENANCE_KEY` (JSON: name, token, kind, family, version, the vectors'
``tensor_sha256``, base model, initializer, training-images hash), so a file exported
here and imported elsewhere keeps what the catalog knew.

=================================  ===============================================
key                                value
=================================  ===============================================
``modelspec.sai_model_spec``       ``1.0.0``
``modelspec.architecture``         ``stable-diffusion-v1/textual-inversion`` (SD 1.x),
                                   ``stable-diffusion-v2-768-v/textual-inversion``,
                                   ``stable-diffusion-xl-v1-base/textual-inversion``
``modelspec.implementation``       the codebase whose tensor names the file uses
``modelspec.title``                the entry's name
``modelspec.trigger_phrase``       what a prompt names (the token for diffusers files)
``modelspec.hash_sha256``          ``0x`` + SHA-256 of the tensor data (header excluded)
``modelspec.date``                 when the entry was registered (ISO 8601)
``modelspec.is_negative_embedding``  ``true`` for negative embeddings, else ``false``
``modelspec.description``, ``.tags``, ``.license``: when the entry has them
=================================  ===============================================

Header metadata is ``str -> str`` only (what A1111, ComfyUI, diffusers and the
``safetensors`` package accept) and deterministic: the same entry gives the same bytes,
so an exported file's hash is known before it is written. An original file written
back byte for byte (:mod:`~conceptlib.registry.originals`) is never rewritten.

On import the metadata is untrusted: :func:`read_file_metadata` keeps only string
values of bounded size without control characters, checks the provenance's types and
names, and uses it only when it describes the very vectors in the file; what it keeps
is recorded like a sidecar's facts, and never overrides an option the user gave.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conceptlib.errors import ConceptlibError

if TYPE_CHECKING:
    from conceptlib.schemas.records import EmbeddingInfo

__all__ = [
    "ARCHITECTURES",
    "MODELSPEC_VERSION",
    "PROVENANCE_KEY",
    "FileMetadata",
    "export_metadata",
    "read_file_metadata",
    "tensor_data_sha256",
    "with_metadata",
]

MODELSPEC_VERSION = "1.0.0"
#: Our provenance: one header key holding a small JSON object.
PROVENANCE_KEY = "conceptlib.provenance"
#: Version of the provenance object's layout.
PROVENANCE_SCHEMA = 1

#: ``modelspec.architecture`` of a textual-inversion embedding per family (the
#: spec's ``<base>/textual-inversion``; the ids SwarmUI registers for embeddings).
ARCHITECTURES = {
    "sd1": "stable-diffusion-v1/textual-inversion",
    "sd2": "stable-diffusion-v2-768-v/textual-inversion",
    "sdxl": "stable-diffusion-xl-v1-base/textual-inversion",
    "sd3": "stable-diffusion-v3-medium/textual-inversion",
    "flux": "Flux.1-dev/textual-inversion",
}
#: ``modelspec.implementation`` per write format: whose tensor names the file uses.
_A1111 = "https://github.com/AUTOMATIC1111/stable-diffusion-webui"
IMPLEMENTATIONS = {"safetensors": _A1111, "sdxl": _A1111, "diffusers": "diffusers"}

#: Longest metadata value read (characters); a description is at most 10,000.
MAX_VALUE_CHARS = 10_000
#: Longest provenance JSON read (characters).
MAX_PROVENANCE_CHARS = 4_096
#: Longest one-line value read (title, token, base model, tags...).
MAX_LINE_CHARS = 200
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


# --------------------------------------------------------------------------- writing


def tensor_data_sha256(data: bytes) -> str:
    """SHA-256 (hex) of a safetensors file's tensor data: the bytes after the header,
    as ModelSpec's ``hash_sha256`` defines it."""
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(memoryview(data)[8 + n :]).hexdigest()


def export_metadata(info: EmbeddingInfo, fmt: str, data: bytes) -> dict[str, str]:
    """The ``__metadata__`` keys an export in write format ``fmt`` adds to ``data``
    (the file as written without them), for entry ``info``."""
    from conceptlib.schemas.names import tokenizer_form

    family = str(info.family)
    meta = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": ARCHITECTURES.get(family, f"{family}/textual-inversion"),
        "modelspec.implementation": IMPLEMENTATIONS.get(fmt, _A1111),
        "modelspec.title": info.name,
        "modelspec.trigger_phrase": tokenizer_form(info.token) if fmt == "diffusers" else info.name,
        "modelspec.hash_sha256": "0x" + tensor_data_sha256(data),
        "modelspec.is_negative_embedding": "true" if str(info.kind) == "negative" else "false",
    }
    if info.created_at:
        meta["modelspec.date"] = str(info.created_at)
    if info.description:
        meta["modelspec.description"] = info.description
    if info.tags:
        meta["modelspec.tags"] = ",".join(info.tags)
    if info.license:
        meta["modelspec.license"] = info.license
    provenance = {
        "schema": PROVENANCE_SCHEMA,
        "name": info.name,
        "token": info.token,
        "kind": str(info.kind),
        "family": family,
        "version": info.version,
        "tensor_sha256": info.tensor_sha256,
        "base_model": info.base_model,
        "initializer": info.initializer,
        "training_images_hash": info.training_images_hash,
    }
    meta[PROVENANCE_KEY] = json.dumps(
        {k: v for k, v in provenance.items() if v is not None},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return meta


def with_metadata(data: bytes, metadata: Mapping[str, str]) -> bytes:
    """``data`` (a safetensors file) with ``metadata`` merged into its ``__metadata__``
    (``metadata`` wins on a shared key); the tensors and their order are unchanged, the
    header is written as :func:`~.formats.safetensors_io.write_safetensors` writes it
    (metadata first, keys sorted, padded to 8 bytes)."""
    from conceptlib.registry.formats.safetensors_io import parse_header

    entries, old, start = parse_header(data)
    merged = {**old, **{str(k): str(v) for k, v in metadata.items()}}
    header: dict[str, Any] = {"__metadata__": dict(sorted(merged.items()))}
    for key, entry in sorted(entries.items(), key=lambda kv: kv[1]["offsets"]):
        header[key] = {
            "dtype": entry["dtype"],
            "shape": list(entry["shape"]),
            "data_offsets": list(entry["offsets"]),
        }
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    head += b" " * ((8 - len(head) % 8) % 8)
    return struct.pack("<Q", len(head)) + head + data[start:]


# --------------------------------------------------------------------------- reading


@dataclass
class FileMetadata:
    """What a file's header metadata says, checked.

    Attributes:
        modelspec: the ``modelspec.*`` values kept (key without the prefix -> text).
        provenance: our provenance, checked field by field (only when it describes
            the vectors in this file).
        description, license, trigger_words, tags, kind: what an entry takes from them.
        warnings: each value that was present but not used, and why.
    """

    modelspec: dict[str, str] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
    license: str | None = None
    trigger_words: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    kind: str | None = None
    warnings: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.modelspec or self.provenance)


def _clean(value: Any, what: str, *, limit: int, multiline: bool = False) -> str:
    """``value`` as text: a string, at most ``limit`` characters, no control characters
    (newlines and tabs allowed when ``multiline``), NFC, trimmed.

    Raises:
        ValueError: the reason it is not usable (for a warning).
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} is {type(value).__name__}, expected text")
    if len(value) > limit:
        raise ValueError(f"{what} has {len(value)} characters; at most {limit} are read")
    text = unicodedata.normalize("NFC", value).strip()
    allowed = "\n\t" if multiline else ""
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf") and ch not in allowed:
            raise ValueError(f"{what} contains the control character U+{ord(ch):04X}")
    return text


def read_file_metadata(
    metadata: Mapping[str, Any] | None, *, tensor_sha256: str, family: str, data_sha256: str | None
) -> FileMetadata:
    """Check a file's ``__metadata__`` (``metadata``) for what an import can use.

    Args:
        metadata: the header's metadata (untrusted; any types).
        tensor_sha256: the identity of the vectors read from the file: provenance
            naming other vectors is not used (the file was changed after export).
        family: the family read from the file (the provenance's must agree).
        data_sha256: SHA-256 of the file's tensor data, to check
            ``modelspec.hash_sha256`` against; None skips the check.

    Returns:
        The checked facts; values that were present but unusable are named in
        ``warnings`` and never stop the import.
    """
    out = FileMetadata()
    if not isinstance(metadata, Mapping):
        return out
    for key, value in metadata.items():
        if not isinstance(key, str) or not key.startswith("modelspec."):
            continue
        short = key[len("modelspec.") :]
        multiline = short in ("description", "usage_hint")
        limit = MAX_VALUE_CHARS if multiline else MAX_LINE_CHARS * 5
        try:
            if not short or len(short) > 64 or not short.replace("_", "").isalnum():
                raise ValueError("not a ModelSpec key name")
            out.modelspec[short] = _clean(value, key, limit=limit, multiline=multiline)
        except ValueError as exc:
            out.warnings.append(f"{_shown(key)}: {exc}; ignored")
    spec = out.modelspec
    declared = spec.get("hash_sha256")
    if declared and data_sha256 and declared.lower() != "0x" + data_sha256:
        out.warnings.append(
            "modelspec.hash_sha256 does not match the tensor data (the file was changed "
            "after its metadata was written); its metadata is not used"
        )
        out.modelspec = {}
        return out
    if spec.get("description"):
        out.description = spec["description"]
    if spec.get("license") and len(spec["license"]) <= MAX_LINE_CHARS:
        out.license = spec["license"]
    if spec.get("trigger_phrase") and len(spec["trigger_phrase"]) <= MAX_LINE_CHARS:
        words = [w.strip() for w in spec["trigger_phrase"].split(",") if w.strip()]
        out.trigger_words = words[:50]
    if spec.get("tags"):
        out.tags = [t.strip() for t in spec["tags"].split(",") if t.strip()][:50]
    if spec.get("is_negative_embedding", "").lower() == "true":
        out.kind = "negative"
    raw = metadata.get(PROVENANCE_KEY)
    if raw is not None:
        try:
            out.provenance = _provenance(raw, tensor_sha256=tensor_sha256, family=family)
        except ValueError as exc:
            out.warnings.append(f"{PROVENANCE_KEY}: {exc}; ignored")
    if out.provenance.get("kind"):
        out.kind = out.provenance["kind"]
    return out


def _shown(key: str) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in key[:80])
    return text + ("..." if len(key) > 80 else "")


def _provenance(raw: Any, *, tensor_sha256: str, family: str) -> dict[str, Any]:
    """Our provenance JSON, checked: the fields of known types, names and tokens under
    the catalog's rules; only when it describes these vectors.

    Raises:
        ValueError: why it is not used.
    """
    from conceptlib.errors import InvalidName
    from conceptlib.schemas.enums import Kind
    from conceptlib.schemas.names import validate_name, validate_token

    if not isinstance(raw, str):
        raise ValueError(f"is {type(raw).__name__}, expected JSON text")
    if len(raw) > MAX_PROVENANCE_CHARS:
        raise ValueError(f"has {len(raw)} characters; at most {MAX_PROVENANCE_CHARS} are read")
    try:
        d = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("is not valid JSON") from None
    if not isinstance(d, dict):
        raise ValueError(f"is a JSON {type(d).__name__}, expected an object")
    if d.get("tensor_sha256") != tensor_sha256:
        raise ValueError("describes other vectors than the file holds")
    if d.get("family") != family:
        raise ValueError(f"names the family {_shown(str(d.get('family')))}, the file is {family}")
    out: dict[str, Any] = {"tensor_sha256": tensor_sha256, "family": family}
    for key in ("name", "token", "kind", "base_model", "initializer", "training_images_hash"):
        value = d.get(key)
        if value is None:
            continue
        try:
            text = _clean(value, key, limit=MAX_LINE_CHARS)
            if key == "name":
                text = validate_name(text)
            elif key == "token":
                text = validate_token(text)
            elif key == "kind":
                text = Kind(text).value
            elif key == "training_images_hash" and not _HEX64.match(text):
                raise ValueError("training_images_hash is not a SHA-256")
        except (ValueError, InvalidName, ConceptlibError) as exc:
            raise ValueError(f"field {key!r} cannot be used ({_reason(exc)})") from None
        if text:
            out[key] = text
    version = d.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and 0 < version < 1_000_000:
        out["version"] = version
    return out


def _reason(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return _shown(text.splitlines()[0] if text else type(exc).__name__)

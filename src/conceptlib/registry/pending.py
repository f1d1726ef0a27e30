"""Entries on their way into the catalog: the pending entry, tag rules, and the
reading of one embedding file (with its sidecars) into a pending entry.

:class:`~conceptlib.registry.library.Library` commits pending entries; this module
never touches the catalog or the store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptlib.catalog.query import normalize_tag
from conceptlib.errors import EmbeddingFileError, InvalidName
from conceptlib.registry.folders import file_stem, read_sidecars
from conceptlib.registry.formats.embedding import Embedding, sha256_hex
from conceptlib.schemas.enums import Kind, Source
from conceptlib.schemas.names import (
    derive_name,
    strip_brackets,
    validate_name,
    validate_token,
)
from conceptlib.schemas.records import TrainingRunRecord
from conceptlib.schemas.vocabulary import is_common_word

__all__ = ["MAX_TAG_LENGTH", "PendingEntry", "prepare_file", "validate_tag"]

MAX_TAG_LENGTH = 64


@dataclass
class PendingEntry:
    """An embedding ready to be committed (its blobs already in the store)."""

    embedding: Embedding
    name: str
    token: str
    kind: str
    source: str
    source_ref: str | None
    file_sha256: str
    tensor_sha256: str
    base_model: str | None = None
    base_model_fingerprint: str | None = None
    initializer: str | None = None
    training_images_hash: str | None = None
    training_image_count: int | None = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    license: str | None = None
    previews: list[tuple[str, str, str, int]] = field(
        default_factory=list
    )  # filename, role, sha, size
    training_runs: list[TrainingRunRecord] = field(default_factory=list)
    parents: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = 1
    path: str | None = None
    #: The canonical serialization (its SHA-256 is ``tensor_sha256``).
    canonical: bytes = b""
    #: (filename, role, bytes) of previews not yet in the store; see ``_store_pending``.
    new_previews: list[tuple[str, str, bytes]] = field(default_factory=list)


def validate_tag(tag: str) -> str:
    t = normalize_tag(tag)
    if not t:
        raise InvalidName("invalid tag: it is empty")
    if len(t) > MAX_TAG_LENGTH:
        raise InvalidName(f"invalid tag {t[:20]!r}...: {len(t)} characters; expected at most 64")
    validate_name(t, what="tag")
    return t


def _tag_ok(t: str) -> bool:
    try:
        validate_tag(t)
        return True
    except InvalidName:
        return False


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def prepare_file(
    path: Path,
    name: str | None,
    kind: str | None,
    tags: list[str],
    base_model: str | None,
) -> PendingEntry:
    """Read one embedding file and its sidecars into an entry ready to commit.

    The name comes from ``name``, else the token in a diffusers ``learned_embeds``
    file, else the file's stem; ordinary words get a ``-ti`` suffix (recorded in
    ``extra``). Tags from sidecars that are not valid tags are dropped.

    Raises:
        EmbeddingFileError: (and its subclasses) the file cannot be read as an
            embedding; InvalidName: ``name`` is not a usable name.
    """
    from conceptlib.registry.formats import is_sdxl_companion, read_embedding_file

    parsed = read_embedding_file(path)
    if is_sdxl_companion(path):
        # The pair was parsed from learned_embeds; the entry records the file named.
        try:
            file_sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise EmbeddingFileError(f"cannot read: {exc.strerror}", path=str(path)) from None
    else:
        file_sha256 = parsed.file_sha256 or ""
    sidecar = read_sidecars(path)
    stem = file_stem(path)
    if name:
        final_name = validate_name(name)
    elif stem.lower().startswith("learned_embeds") and parsed.token:
        final_name = derive_name(strip_brackets(parsed.token))
    elif stem.lower().startswith("learned_embeds"):
        final_name = derive_name(path.parent.name or stem)
    else:
        final_name = derive_name(stem)
    if is_common_word(final_name):
        if name:
            raise InvalidName(
                f"the name {final_name!r} is an ordinary word: as a trigger it would silently "
                f"change what {final_name!r} means in every prompt",
                hint=f"choose a distinctive name, e.g. {final_name}-style",
            )
        renamed_from, final_name = final_name, f"{final_name}-ti"
    else:
        renamed_from = None
    token = parsed.token if parsed.token else final_name
    try:
        token = validate_token(token)
    except InvalidName:
        token = final_name
    if (name and parsed.token is None) or is_common_word(token):
        token = final_name
    all_tags = sorted(set(tags) | {validate_tag(t) for t in sidecar.tags if _tag_ok(t)})
    extra: dict[str, Any] = {"format": parsed.format, "container": parsed.container}
    if parsed.metadata:
        extra["file_metadata"] = _json_safe(parsed.metadata)
    if parsed.name_hint and parsed.name_hint != final_name:
        extra["name_in_file"] = parsed.name_hint
    if renamed_from:
        extra["renamed_from"] = renamed_from
        extra["rename_reason"] = "ordinary word: as a trigger it would change its meaning"
    if sidecar.trained_words:
        extra["trained_words"] = sidecar.trained_words
    if sidecar.notes:
        extra["notes"] = sidecar.notes
    new_previews: list[tuple[str, str, bytes]] = []
    if sidecar.preview is not None:
        fname, pdata = sidecar.preview
        new_previews.append((fname, "preview", pdata))
    canonical = parsed.embedding.canonical_bytes()
    return PendingEntry(
        embedding=parsed.embedding,
        name=final_name,
        token=token,
        kind=kind or sidecar.kind or Kind.OTHER.value,
        source=sidecar.source or Source.FILE.value,
        source_ref=str(path.resolve()),
        file_sha256=file_sha256,
        tensor_sha256=sha256_hex(canonical),
        base_model=base_model or sidecar.base_model,
        description=sidecar.description,
        tags=all_tags,
        extra=extra,
        path=str(path),
        canonical=canonical,
        new_previews=new_previews,
    )

"""Entries on their way into the catalog: the pending entry, tag rules, and the
reading of one embedding file (with its sidecars) into a pending entry.

:class:`~conceptlib.registry.library.Library` commits pending entries; this module
never touches the catalog or the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from conceptlib.catalog.query import normalize_tag
from conceptlib.errors import ConceptlibError, EmbeddingFileError, InvalidName
from conceptlib.registry.fields import checked_token
from conceptlib.registry.folders import file_stem, read_sidecars
from conceptlib.registry.formats.embedding import Embedding, sha256_hex
from conceptlib.registry.modelspec import FileMetadata
from conceptlib.schemas.enums import Kind, Source
from conceptlib.schemas.names import (
    derive_name,
    invokeai_name,
    name_key,
    strip_brackets,
    tokenizer_form,
    validate_name,
    validate_token,
)
from conceptlib.schemas.records import TrainingRunRecord
from conceptlib.schemas.vocabulary import is_common_word

__all__ = [
    "DERIVATION_REASONS",
    "MAX_TAG_LENGTH",
    "Derivation",
    "PendingEntry",
    "kind_from_text",
    "name_for_family",
    "prepare_file",
    "token_from_outside",
    "validate_tag",
]

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
    #: The imported file's bytes (SHA-256 ``file_sha256``), kept to be written back by
    #: exports in its layout (:mod:`~conceptlib.registry.originals`); empty when not kept.
    original: bytes = b""
    #: (filename, role, bytes) of previews not yet in the store; see ``_store_pending``.
    new_previews: list[tuple[str, str, bytes]] = field(default_factory=list)
    #: How the name and token were made, when not simply the file's (for the report).
    derived: list[Derivation] = field(default_factory=list)
    #: Warnings for the report (a sidecar that was present but could not be used).
    notes: list[str] = field(default_factory=list)


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


#: What a derived name or token was made from, or why it differs from what the file
#: said (``ImportOutcome.derived[].reason``; the import table prints ``why``).
DERIVATION_REASONS = {
    "invalid-characters": "the file name has characters a name cannot hold",
    "token-in-file": "named after the token inside the file (the file name is generic)",
    "folder-name": "named after the folder (a generic learned_embeds file without a token)",
    "name-in-image": "the name inside an A1111 image embedding, which A1111 triggers by",
    "name-in-metadata": "the name recorded in the file's header (conceptlib.provenance)",
    "ordinary-word": "an ordinary word: as a trigger it would change that word's meaning",
    "name-taken": "the name belongs to an entry of another family: the family is appended",
    "invalid-token": "the file's token cannot be a trigger token: the name is the token",
    "token-option": "--token replaced the file's token",
    "token-identifier": "token_identifier.txt names another token than the file's key",
}

#: Longest original text kept in ``extra`` (a tensor key can be long; it is untrusted).
MAX_KEPT_TEXT = 200


@dataclass
class Derivation:
    """How an imported entry's name or token was made, when it is not simply the file's
    stem (or the token inside the file).

    Attributes:
        field: ``name`` or ``token``.
        value: what was registered.
        source: what it was made from (the file's stem, its token, a folder name),
            cut to :data:`MAX_KEPT_TEXT` characters.
        reason: a key of :data:`DERIVATION_REASONS`.
        why: one line for people, saying what to type now.
    """

    field: str
    value: str
    source: str
    reason: str
    why: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def kept_text(text: str) -> str:
    """``text`` cut to :data:`MAX_KEPT_TEXT` characters (with ``...`` when cut)."""
    return text if len(text) <= MAX_KEPT_TEXT else text[:MAX_KEPT_TEXT] + "..."


def kind_from_text(text: str | None) -> str | None:
    """The kind in an sd-concepts-library ``type_of_concept.txt`` (``object``, ``style``;
    also ``negative``, ``other``), or None for anything else."""
    t = (text or "").strip().lower()
    return t if t in {k.value for k in Kind} else None


def token_from_outside(raw: str | None, fallback: str) -> tuple[str, Derivation | None]:
    """The trigger token for a token found in outside data (a diffusers key,
    ``token_identifier.txt``, a Hub repo's file).

    A usable token (:func:`~conceptlib.schemas.names.validate_token`, not an ordinary
    word) is kept as it is. Otherwise the entry's name ``fallback`` becomes the token,
    and the returned :class:`Derivation` says why (its ``source`` is the original,
    which callers keep in ``extra["token_in_file"]``).

    Returns:
        ``(token, None)`` or ``(fallback, derivation)``.
    """
    if not raw:
        return fallback, None
    try:
        token = validate_token(raw)
    except InvalidName as exc:
        # The message quotes the token (repr: control characters escaped); cut its size.
        return fallback, Derivation(
            "token",
            fallback,
            kept_text(raw),
            "invalid-token",
            f"the token in the file cannot be a trigger ({kept_text(exc.message)}); "
            f"the trigger is {fallback}",
        )
    if is_common_word(token):
        return fallback, Derivation(
            "token",
            fallback,
            token,
            "ordinary-word",
            f"the token {token!r} in the file is an ordinary word; the trigger is {fallback}",
        )
    return token, None


@dataclass
class _ConceptFiles:
    """What an sd-concepts-library folder says beside ``learned_embeds``."""

    token: str | None = None
    kind: str | None = None


def _small_text(path: Path, cap: int = 4096) -> str | None:
    """The first line of a small text file (None when missing, unreadable or over ``cap``)."""
    try:
        with path.open("rb") as f:
            data = f.read(cap + 1)
    except OSError:
        return None
    if len(data) > cap:
        return None
    lines = data.decode("utf-8", errors="replace").strip().splitlines()
    return lines[0].strip() if lines else None


def _concept_files(folder: Path) -> _ConceptFiles:
    """``token_identifier.txt`` and ``type_of_concept.txt`` of an sd-concepts-library
    folder (the files ``conceptlib pull`` reads from such a repo)."""
    return _ConceptFiles(
        token=_small_text(folder / "token_identifier.txt") or None,
        kind=kind_from_text(_small_text(folder / "type_of_concept.txt")),
    )


def _derive_file_name(
    path: Path, parsed: Any, file_token: str | None
) -> tuple[str, Derivation | None]:
    """The name of an imported file when ``--name`` was not given, and how it was made."""
    stem = file_stem(path)
    if stem.lower().startswith("learned_embeds") and file_token:
        source, reason = strip_brackets(file_token), "token-in-file"
        why = f"named after the token {kept_text(file_token)!r} inside (the file name is generic)"
    elif stem.lower().startswith("learned_embeds"):
        source, reason = path.parent.name or stem, "folder-name"
        why = "named after its folder (a generic learned_embeds file without a token)"
    elif parsed.format == "a1111-png" and parsed.name_hint:
        source, reason = parsed.name_hint, "name-in-image"
        why = "the name inside the image, which A1111 triggers it by"
    else:
        source, reason, why = stem, "file-name", ""
    name = derive_name(source)
    if name == source:
        if reason == "file-name":
            return name, None
        return name, Derivation("name", name, kept_text(source), reason, why)
    fixed = f"characters a name cannot hold were replaced: write {name} in prompts"
    if reason == "file-name":
        return name, Derivation("name", name, kept_text(source), "invalid-characters", fixed)
    return name, Derivation("name", name, kept_text(source), reason, f"{why}; {fixed}")


def prepare_file(
    path: Path,
    name: str | None,
    kind: str | None,
    tags: list[str],
    base_model: str | None,
    *,
    token: str | None = None,
) -> PendingEntry:
    """Read one embedding file and its sidecars into an entry ready to commit.

    The name comes from ``name``, else the token in a diffusers ``learned_embeds``
    file (or its folder's ``token_identifier.txt``, sd-concepts-library style), else
    the folder of a generic ``learned_embeds`` file, else the name inside an A1111
    image embedding, else the file's stem; characters a name cannot hold become ``-``
    and ordinary words get a ``-ti`` suffix. The token comes from ``token``, else the
    file (or ``token_identifier.txt``), else the name; a file token that cannot be a
    trigger is replaced by the name and kept in ``extra["token_in_file"]``. Every such
    change is listed in ``PendingEntry.derived``. The kind comes from ``kind``, else
    ``type_of_concept.txt``, else the sidecars. Tags from sidecars that are not valid
    tags are dropped.

    Raises:
        EmbeddingFileError: (and its subclasses) the file cannot be read as an
            embedding; InvalidName: ``name`` or ``token`` is not usable.
    """
    from conceptlib.registry.formats import is_sdxl_companion, read_embedding_file

    parsed = read_embedding_file(path)
    if is_sdxl_companion(path):
        # The pair was parsed from learned_embeds; the entry records the file named.
        from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
        from conceptlib.errors import FileTooLarge

        try:
            with path.open("rb") as fh:  # capped: never hash an unbounded file
                data = fh.read(MAX_EMBEDDING_FILE_BYTES + 1)
        except OSError as exc:
            raise EmbeddingFileError(f"cannot read: {exc.strerror}", path=str(path)) from None
        if len(data) > MAX_EMBEDDING_FILE_BYTES:
            raise FileTooLarge(
                f"larger than {MAX_EMBEDDING_FILE_BYTES // (1024 * 1024)} MiB; expected an "
                "embedding file",
                path=str(path),
            )
        file_sha256 = hashlib.sha256(data).hexdigest()
    else:
        file_sha256 = parsed.file_sha256 or ""
    sidecar = read_sidecars(path)
    generic = file_stem(path).lower().startswith("learned_embeds")
    concept = _concept_files(path.parent) if generic else _ConceptFiles()
    file_token = concept.token or parsed.token
    meta = _header_metadata(path, parsed)
    prov = meta.provenance
    derived: list[Derivation] = []
    if name:
        final_name = validate_name(name)
    else:
        final_name, how = _derive_file_name(path, parsed, file_token)
        derived += [how] if how else []
        final_name, how = _name_from_metadata(path, final_name, prov.get("name"), generic)
        if how is not None:
            derived = [how]
    # The recorded token belongs to the recorded name (not to a --name given here).
    meta_token = prov.get("token") if prov.get("name") == final_name else None
    if meta_token and file_token and tokenizer_form(meta_token) != tokenizer_form(file_token):
        meta_token = None  # the key inside the file is what diffusers triggers
    if is_common_word(final_name):
        if name:
            raise InvalidName(
                f"the name {final_name!r} is an ordinary word: as a trigger it would silently "
                f"change what {final_name!r} means in every prompt",
                hint=f"choose a distinctive name, e.g. {final_name}-style",
            )
        renamed_from, final_name = final_name, f"{final_name}-ti"
        derived.append(
            Derivation(
                "name",
                final_name,
                renamed_from,
                "ordinary-word",
                f"{renamed_from!r} is an ordinary word: as a trigger it would change what it "
                f"means in every prompt; write {final_name} in prompts",
            )
        )
    else:
        renamed_from = None
    extra: dict[str, Any] = {"format": parsed.format, "container": parsed.container}
    if token is not None:
        final_token = checked_token(token)
        if file_token and file_token != final_token:
            derived.append(
                Derivation(
                    "token",
                    final_token,
                    kept_text(file_token),
                    "token-option",
                    f"--token replaced the file's token {kept_text(file_token)!r}",
                )
            )
    else:
        final_token, how = token_from_outside(meta_token or file_token, final_name)
        derived += [how] if how else []
        if how is None and concept.token and parsed.token and parsed.token != final_token:
            derived.append(
                Derivation(
                    "token",
                    final_token,
                    kept_text(parsed.token),
                    "token-identifier",
                    f"the token in token_identifier.txt, not the file's key "
                    f"{kept_text(parsed.token)!r}",
                )
            )
    # What the file (and token_identifier.txt) said, when the entry's token differs.
    if parsed.token and final_token != parsed.token:
        extra["token_in_file"] = kept_text(parsed.token)
    if concept.token and final_token != concept.token:
        extra["token_identifier"] = kept_text(concept.token)
    if parsed.metadata:
        extra["file_metadata"] = _json_safe(_without_modelspec(parsed.metadata))
    if meta.modelspec:
        extra["modelspec"] = {k: v for k, v in meta.modelspec.items() if k != "description"}
    if prov:
        extra["provenance"] = prov
    if prov.get("name") and prov["name"] != final_name:
        extra["name_in_metadata"] = prov["name"]
    if parsed.name_hint and parsed.name_hint != final_name:
        extra["name_in_file"] = kept_text(parsed.name_hint)
    if renamed_from:
        extra["renamed_from"] = renamed_from
        extra["rename_reason"] = "ordinary word: as a trigger it would change its meaning"
    if sidecar.trained_words:
        extra["trained_words"] = sidecar.trained_words
    elif meta.trigger_words and not prov:  # ours names the entry itself: nothing new
        extra["trained_words"] = meta.trigger_words
    if sidecar.notes:
        extra["notes"] = sidecar.notes
    outside_tags = [*sidecar.tags, *meta.tags]
    all_tags = sorted(set(tags) | {validate_tag(t) for t in outside_tags if _tag_ok(t)})
    new_previews: list[tuple[str, str, bytes]] = []
    if sidecar.preview is not None:
        fname, pdata = sidecar.preview
        new_previews.append((fname, "preview", pdata))
    canonical = parsed.embedding.canonical_bytes()
    pending = PendingEntry(
        embedding=parsed.embedding,
        name=final_name,
        token=final_token,
        kind=kind or concept.kind or sidecar.kind or meta.kind or Kind.OTHER.value,
        source=sidecar.source or Source.FILE.value,
        source_ref=str(path.resolve()),
        file_sha256=file_sha256,
        tensor_sha256=sha256_hex(canonical),
        base_model=base_model or sidecar.base_model or prov.get("base_model"),
        initializer=prov.get("initializer"),
        training_images_hash=prov.get("training_images_hash"),
        description=sidecar.description or meta.description,
        license=meta.license,
        tags=all_tags,
        extra=extra,
        path=str(path),
        canonical=canonical,
        new_previews=new_previews,
        derived=derived,
        notes=[*sidecar.warnings, *meta.warnings],
    )
    pending.original = _original(path, parsed, file_sha256)
    return pending


def _header_metadata(path: Path, parsed: Any) -> FileMetadata:
    """What a safetensors header's ``__metadata__`` says (ModelSpec keys and our
    provenance), checked (:func:`~conceptlib.registry.modelspec.read_file_metadata`);
    ``modelspec.hash_sha256`` is checked against the file's tensor data, read again
    with a size cap."""
    from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
    from conceptlib.registry.modelspec import read_file_metadata, tensor_data_sha256

    raw = parsed.metadata.get("safetensors_metadata")
    if not isinstance(raw, dict) or parsed.container != "safetensors":
        return FileMetadata()
    data_sha = None
    if "modelspec.hash_sha256" in raw and parsed.format != "diffusers-sdxl-pair":
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_EMBEDDING_FILE_BYTES + 1)
            if hashlib.sha256(data).hexdigest() == parsed.file_sha256:
                data_sha = tensor_data_sha256(data)
        except (OSError, ValueError, struct.error):
            data_sha = None
    return read_file_metadata(
        raw,
        tensor_sha256=parsed.embedding.tensor_sha256,
        family=parsed.embedding.family.value,
        data_sha256=data_sha,
    )


def _without_modelspec(metadata: dict[str, Any]) -> dict[str, Any]:
    """A file's metadata without the header keys kept, checked, on their own
    (``modelspec.*``, our provenance): an unchecked copy would bypass the checks."""
    from conceptlib.registry.modelspec import PROVENANCE_KEY

    raw = metadata.get("safetensors_metadata")
    if not isinstance(raw, dict):
        return metadata
    kept = {k: v for k, v in raw.items() if not (k.startswith("modelspec.") or k == PROVENANCE_KEY)}
    out = {k: v for k, v in metadata.items() if k != "safetensors_metadata"}
    if kept:
        out["safetensors_metadata"] = kept
    return out


def _name_from_metadata(
    path: Path, derived: str, recorded: str | None, generic: bool
) -> tuple[str, Derivation | None]:
    """The recorded name (our provenance) when the file still carries the name an export
    gave it (the name itself, the name a UI needed it mapped to, or a generic
    ``learned_embeds``); a file renamed since keeps its file name: A1111 triggers by it."""
    if not recorded or recorded == derived:
        return derived, None
    stems = {name_key(recorded)}
    with contextlib.suppress(ConceptlibError):
        stems.add(name_key(invokeai_name(recorded)))
    if not generic and name_key(derived) not in stems:
        return derived, None
    return recorded, Derivation(
        "name",
        recorded,
        kept_text(file_stem(path)),
        "name-in-metadata",
        f"the name recorded in the file's header: write {recorded} in prompts",
    )


def _original(path: Path, parsed: Any, sha: str) -> bytes:
    """The bytes of ``path`` to keep as the entry's original (see
    :func:`conceptlib.registry.originals.keepable`), read again with a size cap and kept
    only when they are still the bytes recorded as ``file_sha256`` (``sha``); empty
    otherwise."""
    from conceptlib.registry.originals import MAX_ORIGINAL_BYTES, keepable

    try:
        size = path.stat().st_size
        if not keepable(parsed, size):
            return b""
        with path.open("rb") as fh:
            data = fh.read(MAX_ORIGINAL_BYTES + 1)
    except OSError:
        return b""
    if len(data) > MAX_ORIGINAL_BYTES or hashlib.sha256(data).hexdigest() != sha:
        return b""
    return data


def name_for_family(p: PendingEntry, holder: str, holder_family: str) -> None:
    """Give ``p`` (whose name was derived, not chosen) a name of its own when an entry
    of another family holds it: the family is appended (``fancy-neg`` -> ``fancy-neg-sdxl``),
    a token equal to the name follows, and ``extra`` and ``p.derived`` record why.

    Folders kept per family (``sd15/``, ``sdxl/``) often hold the same file name twice;
    both are wanted, and one name cannot trigger both.
    """
    old = p.name
    family = p.embedding.family.value
    new = f"{old}-{family}"
    if name_key(p.token) == name_key(old):
        p.token = new
    p.name = new
    p.extra.setdefault("renamed_from", old)
    p.extra["rename_reason"] = f"the name belongs to {holder!r} ({holder_family})"
    p.derived.append(
        Derivation(
            "name",
            new,
            old,
            "name-taken",
            f"{old!r} is already {holder!r}, a {holder_family} embedding; this {family} one "
            f"is {new}: write {new} in prompts",
        )
    )

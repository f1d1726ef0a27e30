"""The files a push writes: ``concept.json`` manifests, concept and library repo
files with their model cards (:mod:`.card`), and reading a manifest back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from conceptlib.errors import HubError, UsageError
from conceptlib.registry.formats.write import INVOKEAI_FILENAME
from conceptlib.registry.hub.repos import (
    CARD_FILENAME,
    EMBEDDING_FILENAME,
    LIBRARY_CONCEPT_DIR,
    PREVIEW_DIR,
    TOKEN_FILENAME,
    TYPE_FILENAME,
    unsafe_reason,
)
from conceptlib.schemas.names import name_key, tokenizer_form

if TYPE_CHECKING:
    from conceptlib.registry.formats.embedding import Embedding
    from conceptlib.registry.library import Library
    from conceptlib.schemas.manifest import ConceptManifest, LibraryIndex
    from conceptlib.schemas.records import EmbeddingInfo


def _encode_embedding(emb: Embedding, info: EmbeddingInfo) -> tuple[str, bytes]:
    """The pushed file: diffusers ``{token: [n,d]}`` for SD 1.x/2.x (the key in its
    tokenizer form, :func:`~conceptlib.schemas.names.tokenizer_form`), ``{clip_l, clip_g}``
    for SDXL."""
    from conceptlib.registry.formats import write_embedding

    fmt = "sdxl" if info.family == "sdxl" else "diffusers"
    files = write_embedding(emb, fmt, name=info.name, token=info.token)
    if len(files) != 1:  # pragma: no cover - both formats write one file
        raise HubError(f"format {fmt} wrote {len(files)} files; expected one")
    return fmt, next(iter(files.values()))


def _preview_paths(info: EmbeddingInfo) -> list[tuple[Any, str]]:
    used: set[str] = set()
    out = []
    for p in info.previews:
        fname = p.filename
        stem, dot, ext = fname.rpartition(".")
        n = 2
        while fname.casefold() in used:
            fname = f"{stem}-{n}.{ext}" if dot else f"{p.filename}-{n}"
            n += 1
        used.add(fname.casefold())
        out.append((p, f"{PREVIEW_DIR}/{fname}"))
    return out


def build_manifest(lib: Library, info: EmbeddingInfo) -> tuple[ConceptManifest, dict[str, bytes]]:
    """``concept.json`` for ``info`` plus the files it names (embedding, previews)."""
    from conceptlib.schemas.manifest import (
        ConceptManifest,
        EmbeddingFileEntry,
        PreviewEntry,
        TrainingRunEntry,
    )

    emb = lib.load(info)
    fmt, data = _encode_embedding(emb, info)
    files: dict[str, bytes] = {EMBEDDING_FILENAME: data}
    previews = []
    for p, path in _preview_paths(info):
        blob = lib.preview_path(info, p.filename).read_bytes()
        if hashlib.sha256(blob).hexdigest() != p.sha256:
            from conceptlib.errors import BlobCorrupt

            raise BlobCorrupt(f"{info.name}: preview {p.filename} does not match its hash")
        files[path] = blob
        previews.append(
            PreviewEntry(
                filename=p.filename, role=p.role, path=path, sha256=p.sha256, size=len(blob)
            )
        )
    runs = []
    for tr in info.training_runs:
        d = asdict(tr)
        d.pop("id", None)
        d.pop("created_at", None)
        runs.append(TrainingRunEntry(**d))
    manifest = ConceptManifest(
        name=info.name,
        token=info.token,
        kind=info.kind,
        family=info.family,
        num_vectors=info.num_vectors,
        dims=list(info.dims),
        tensor_sha256=info.tensor_sha256,
        file_sha256=info.file_sha256,
        embedding=EmbeddingFileEntry(
            path=EMBEDDING_FILENAME,
            format=fmt,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        ),
        source=info.source,
        source_ref=info.source_ref,
        base_model=info.base_model,
        base_model_fingerprint=info.base_model_fingerprint,
        initializer=info.initializer,
        training_images_hash=info.training_images_hash,
        training_image_count=info.training_image_count,
        description=info.description,
        license=info.license,
        tags=sorted(info.tags),
        flags=list(info.flags),
        version=info.version,
        parents=list(info.parents),
        extra=dict(info.extra),
        previews=previews,
        training_runs=runs,
    )
    return manifest, files


def check_for_ui(for_ui: str | None) -> bool:
    """Whether a push adds InvokeAI's ``learned_embeds.bin`` (``--for invokeai``).

    Raises:
        UsageError: any other value than None and ``"invokeai"``.
    """
    if for_ui not in (None, "invokeai"):
        raise UsageError(f"--for {for_ui!r}: the one layout a push adds is invokeai")
    return for_ui == "invokeai"


def invokeai_file(lib: Library, info: EmbeddingInfo) -> bytes:
    """The ``learned_embeds.bin`` InvokeAI installs a repo (or repo folder) by: a torch
    file whose width InvokeAI's probe reads right (see
    :func:`~conceptlib.registry.formats.write.write_embedding`, format ``invokeai``)."""
    from conceptlib.registry.formats import write_embedding

    files = write_embedding(lib.load(info), "invokeai", name=info.name, token=info.token)
    return files[INVOKEAI_FILENAME]


def concept_repo_files(
    lib: Library, info: EmbeddingInfo, *, repo_id: str, for_ui: str | None = None
) -> dict[str, bytes]:
    """Every file of a concept repo, by path; ``for_ui="invokeai"`` adds
    ``learned_embeds.bin`` (InvokeAI's layout) beside ``learned_embeds.safetensors``."""
    from conceptlib.registry.hub.card import render_card

    invokeai = check_for_ui(for_ui)
    manifest, files = build_manifest(lib, info)
    if invokeai:
        files[INVOKEAI_FILENAME] = invokeai_file(lib, info)
    # As the learned_embeds key: the form CLIP's tokenizer matches (concept.json keeps
    # the token as typed).
    files[TOKEN_FILENAME] = tokenizer_form(info.token).encode("utf-8")
    files[TYPE_FILENAME] = info.kind.encode("utf-8")
    files["concept.json"] = manifest.to_json_bytes()
    files[CARD_FILENAME] = render_card(manifest, repo_id=repo_id, invokeai=invokeai).encode("utf-8")
    return files


def library_repo_files(
    lib: Library,
    infos: Sequence[EmbeddingInfo],
    *,
    repo_id: str,
    selection: dict[str, Any],
    for_ui: str | None = None,
) -> tuple[LibraryIndex, dict[str, bytes]]:
    """Every file of a library repo; ``for_ui="invokeai"`` adds each concept folder's
    ``learned_embeds.bin`` (InvokeAI installs ``REPO:concepts/NAME``)."""
    from conceptlib.registry.hub.card import render_library_card
    from conceptlib.schemas.manifest import LibraryEntry, LibraryIndex

    invokeai = check_for_ui(for_ui)
    files: dict[str, bytes] = {}
    entries = []
    for info in sorted(infos, key=lambda i: name_key(i.name)):
        folder = f"{LIBRARY_CONCEPT_DIR}/{info.name}"
        if unsafe_reason(folder):
            raise HubError(f"{info.name!r} cannot be a folder name in a repo")
        manifest, cfiles = build_manifest(lib, info)
        mbytes = manifest.to_json_bytes()
        if invokeai:
            cfiles[INVOKEAI_FILENAME] = invokeai_file(lib, info)
        for rel, data in cfiles.items():
            files[f"{folder}/{rel}"] = data
        files[f"{folder}/concept.json"] = mbytes
        entries.append(
            LibraryEntry(
                name=info.name,
                path=folder,
                token=info.token,
                kind=info.kind,
                family=info.family,
                tensor_sha256=info.tensor_sha256,
                manifest_sha256=hashlib.sha256(mbytes).hexdigest(),
                tags=sorted(info.tags),
            )
        )
    index = LibraryIndex(name=repo_id, selection=selection, concepts=entries)
    files["library.json"] = index.to_json_bytes()
    families = sorted({e.family for e in entries})
    files[CARD_FILENAME] = render_library_card(index, repo_id=repo_id, families=families).encode()
    return index, files


def _read_manifest(data: bytes, where: str) -> ConceptManifest:
    from pydantic import ValidationError

    from conceptlib.schemas.manifest import ConceptManifest

    try:
        return ConceptManifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise HubError(
            f"{where}: concept.json is not a valid conceptlib manifest ({loc}: "
            f"{first.get('msg', 'invalid')})",
        ) from None

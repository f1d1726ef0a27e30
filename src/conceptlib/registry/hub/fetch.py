"""Reading a remote concept: download, verify and parse what a repo (or a library
folder) holds into a :class:`Fetched`, without touching the catalog.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
from conceptlib.errors import ConceptlibError, HubIntegrityError
from conceptlib.registry.hub.layout import _dir_of, detect_layout
from conceptlib.registry.hub.manifest import _read_manifest
from conceptlib.registry.hub.repos import MAX_PREVIEW_FILE, MAX_SMALL_FILE
from conceptlib.registry.hub.session import RemoteState, _Session
from conceptlib.registry.pending import Derivation, kept_text, kind_from_text, token_from_outside
from conceptlib.schemas.names import derive_name

if TYPE_CHECKING:
    from conceptlib.registry.formats.embedding import Embedding
    from conceptlib.schemas.manifest import ConceptManifest


@dataclass
class Fetched:
    """A verified, parsed concept ready to register (no catalog writes yet)."""

    repo_id: str
    revision: str
    commit: str
    file: str
    layout: str
    embedding: Embedding
    name: str
    token: str
    kind: str
    file_bytes: bytes
    source: str
    source_ref: str | None
    file_sha256: str | None = None
    base_model: str | None = None
    base_model_fingerprint: str | None = None
    initializer: str | None = None
    training_images_hash: str | None = None
    training_image_count: int | None = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    license: str | None = None
    previews: list[Any] = field(default_factory=list)
    training_runs: list[Any] = field(default_factory=list)
    parents: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    #: The trigger token the repo named (token_identifier.txt or the file's key), as
    #: found; ``token`` differs when it could not be a trigger (or ``--token`` chose).
    token_in_repo: str | None = None
    #: How the name and token were made when not simply the repo's (for the report).
    derived: list[Derivation] = field(default_factory=list)

    @property
    def tensor_sha256(self) -> str:
        return self.embedding.tensor_sha256


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").strip()


def _clean_tags(tags: Iterable[str]) -> list[str]:
    from conceptlib.registry.pending import validate_tag

    out = []
    for t in tags:
        try:
            out.append(validate_tag(str(t)))
        except ConceptlibError:
            continue
    return sorted(set(out))


def _fetch_manifest_concept(
    session: _Session, state: RemoteState, folder: str, manifest_bytes: bytes | None = None
) -> tuple[Any, Embedding, bytes, list[Any]]:
    """Read a conceptlib concept folder: manifest, embedding, previews, all verified."""
    from conceptlib.registry.formats import read_embedding_bytes
    from conceptlib.schemas.records import Preview

    mpath = f"{folder}concept.json"
    if manifest_bytes is None:
        manifest_bytes = session.fetch(state, mpath, max_size=MAX_SMALL_FILE)
    m = _read_manifest(manifest_bytes, state.ref(mpath))
    epath = folder + m.embedding.path
    wanted = {epath: MAX_EMBEDDING_FILE_BYTES}
    for p in m.previews:
        wanted[folder + p.path] = MAX_PREVIEW_FILE
    got = session.fetch_many(state, wanted)
    data = got[epath]
    if hashlib.sha256(data).hexdigest() != m.embedding.sha256:
        raise HubIntegrityError(
            f"{state.ref(epath)}: SHA-256 differs from the one in concept.json",
            repo_id=state.repo_id,
        )
    parsed = read_embedding_bytes(data, path=state.ref(epath))
    if parsed.embedding.tensor_sha256 != m.tensor_sha256:
        raise HubIntegrityError(
            f"{state.ref(epath)}: its vectors hash to {parsed.embedding.tensor_sha256[:12]}, "
            f"concept.json says {m.tensor_sha256[:12]}",
            repo_id=state.repo_id,
        )
    previews = []
    for p in m.previews:
        blob = got[folder + p.path]
        if hashlib.sha256(blob).hexdigest() != p.sha256:
            raise HubIntegrityError(
                f"{state.ref(folder + p.path)}: SHA-256 differs from the one in concept.json",
                repo_id=state.repo_id,
            )
        previews.append(Preview(filename=p.filename, data=blob, role=p.role))
    return m, parsed.embedding, data, previews


def _fetched_from_manifest(
    m: ConceptManifest,
    emb: Embedding,
    data: bytes,
    previews: list[Any],
    *,
    repo_id: str,
    revision: str,
    commit: str,
    file: str,
    layout: str,
    name: str,
    source: str,
    source_ref: str | None,
    extra: dict[str, Any],
) -> Fetched:
    """A fetched concept whose catalog fields come from its ``concept.json``."""
    return Fetched(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        file=file,
        layout=layout,
        embedding=emb,
        name=name,
        token=m.token,
        kind=m.kind,
        file_bytes=data,
        file_sha256=m.file_sha256,
        source=source,
        source_ref=source_ref,
        base_model=m.base_model,
        base_model_fingerprint=m.base_model_fingerprint,
        initializer=m.initializer,
        training_images_hash=m.training_images_hash,
        training_image_count=m.training_image_count,
        tags=list(m.tags),
        description=m.description,
        license=m.license,
        previews=previews,
        training_runs=_training_runs(m),
        parents=list(m.parents),
        extra=extra,
        version=m.version,
    )


def _training_runs(m: ConceptManifest) -> list[Any]:
    """Every training run in a manifest, oldest first."""
    from conceptlib.schemas.records import TrainingRunRecord

    runs = []
    for run in m.training_runs:
        tr = run.model_dump()
        tr.pop("created_at", None)
        runs.append(TrainingRunRecord(**tr))
    return runs


def fetch_concept(
    session: _Session,
    state: RemoteState,
    *,
    filename: str | None = None,
    name: str | None = None,
) -> Fetched:
    """Download, verify and parse the concept a repo holds. Touches no catalog."""
    from conceptlib.registry.formats import read_embedding_bytes
    from conceptlib.registry.hub.card import parse_card

    layout = detect_layout(state.repo_id, state.files, filename)
    repo_name = state.repo_id.split("/", 1)[1]
    if layout.kind == "conceptlib":
        folder = _dir_of(layout.manifest or "concept.json")
        m, emb, data, previews = _fetch_manifest_concept(session, state, folder)
        epath = folder + m.embedding.path
        extra = dict(m.extra)
        if m.source != "hub" or m.source_ref:
            extra["origin"] = {"source": m.source, "source_ref": m.source_ref}
        return _fetched_from_manifest(
            m,
            emb,
            data,
            previews,
            repo_id=state.repo_id,
            revision=state.revision,
            commit=state.commit,
            file=epath,
            layout=layout.kind,
            name=name or m.name,
            source="hub",
            source_ref=state.ref(epath),
            extra=extra,
        )
    assert layout.embedding is not None
    wanted = {layout.embedding: MAX_EMBEDDING_FILE_BYTES}
    if layout.companion:
        wanted[layout.companion] = MAX_EMBEDDING_FILE_BYTES
    for small in (layout.token_file, layout.type_file, layout.card):
        if small:
            wanted[small] = MAX_SMALL_FILE
    got = session.fetch_many(state, wanted)
    data = got[layout.embedding]
    companion = got.get(layout.companion) if layout.companion else None
    token_text = _text(got[layout.token_file]) if layout.token_file else None
    type_text = _text(got[layout.type_file]) if layout.type_file else None
    card = parse_card(got[layout.card]) if layout.card else None
    parsed = read_embedding_bytes(data, path=state.ref(layout.embedding), companion=companion)
    stem = os.path.splitext(layout.embedding.rsplit("/", 1)[-1])[0]
    generic = stem.lower().startswith("learned_embeds")
    derived: list[Derivation] = []
    if name:  # the user's choice: an ordinary word is refused when registering, not renamed
        final_name = name
    else:
        source = repo_name if generic else stem
        final_name = derive_name(source)
        if final_name != source:
            derived.append(
                Derivation(
                    "name",
                    final_name,
                    kept_text(source),
                    "invalid-characters",
                    f"characters a name cannot hold were replaced: write {final_name} in prompts",
                )
            )
        if _common_word(final_name):
            derived.append(
                Derivation(
                    "name",
                    f"{final_name}-ti",
                    final_name,
                    "ordinary-word",
                    f"{final_name!r} is an ordinary word: as a trigger it would change what it "
                    f"means in every prompt; write {final_name}-ti in prompts",
                )
            )
            final_name = f"{final_name}-ti"
    # The token the repo names: token_identifier.txt (sd-concepts-library), else the
    # learned_embeds key; one that cannot be a trigger is replaced by the name, and kept.
    token_in_repo = (token_text.splitlines()[0].strip() if token_text else None) or (
        parsed.token if parsed.token and parsed.token not in ("emb_params", "*") else None
    )
    token, how = token_from_outside(token_in_repo, final_name)
    derived += [how] if how else []
    kind = kind_from_text(type_text) or (card.kind if card else None)
    if kind is None and "negative" in f"{repo_name} {stem}".lower():
        kind = "negative"
    if kind is None:
        kind = "object" if layout.kind == "sd-concepts-library" else "other"
    extra: dict[str, Any] = {"hub_layout": layout.kind, "format": parsed.format}
    if getattr(parsed, "metadata", None):
        extra["file_metadata"] = {str(k): str(v) for k, v in dict(parsed.metadata).items()}
    if parsed.name_hint and parsed.name_hint != final_name:
        extra["name_in_file"] = kept_text(parsed.name_hint)
    renamed = [d for d in derived if d.reason == "ordinary-word" and d.field == "name"]
    if renamed:
        extra["renamed_from"] = renamed[0].source
        extra["rename_reason"] = "ordinary word: as a trigger it would change its meaning"
    return Fetched(
        repo_id=state.repo_id,
        revision=state.revision,
        commit=state.commit,
        file=layout.embedding,
        layout=layout.kind,
        embedding=parsed.embedding,
        name=final_name,
        token=token,
        kind=kind,
        file_bytes=data,
        source="hub",
        source_ref=state.ref(layout.embedding),
        base_model=card.base_model if card else None,
        tags=_clean_tags(card.tags) if card else [],
        license=card.license if card else None,
        extra=extra,
        token_in_repo=kept_text(token_in_repo) if token_in_repo else None,
        derived=derived,
    )


def _common_word(handle: str) -> bool:
    from conceptlib.schemas.vocabulary import is_common_word

    return is_common_word(handle)

"""Pulling into the catalog: one repo, many repos found by a search, or a library repo.

:func:`register` turns a :class:`~conceptlib.registry.hub.fetch.Fetched` concept into a
new entry, a new version (the older one kept as ``name@vN``) or nothing; the bulk
pulls download on a bounded pool and register in the calling thread, one failure
never stopping the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from conceptlib.errors import (
    ConceptlibError,
    HubError,
    HubIntegrityError,
    HubNoEmbedding,
    NameCollision,
    UsageError,
)
from conceptlib.registry.fields import checked_token
from conceptlib.registry.hub.fetch import (
    Fetched,
    _fetch_manifest_concept,
    _fetched_from_manifest,
    fetch_concept,
)
from conceptlib.registry.hub.push import _record_sync
from conceptlib.registry.hub.repos import EMBEDDING_FILENAME, MAX_SMALL_FILE, _parse_spec
from conceptlib.registry.hub.session import RemoteState, _first_line, _Session
from conceptlib.registry.hub.settings import HubSettings
from conceptlib.schemas.names import name_key, strip_brackets

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

ProgressCallback = Callable[[int, int, str], None]


@dataclass
class PullOutcome:
    """One repo's (or library entry's) result.

    ``status``: ``pulled`` (new entry), ``new-version`` (the older one was kept as
    ``previous``), ``present`` (same revision or same vectors: nothing changed) or
    ``failed`` (``error``/``code`` say why).
    """

    repo_id: str
    status: str
    name: str | None = None
    version: int | None = None
    commit: str | None = None
    file: str | None = None
    source_ref: str | None = None
    previous: str | None = None
    layout: str | None = None
    error: str | None = None
    code: str | None = None
    hint: str | None = None
    token: str | None = None
    #: How the name or token differs from what the repo said, and why (one line each).
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PullReport:
    outcomes: list[PullOutcome] = field(default_factory=list)
    repo_id: str | None = None
    commit: str | None = None
    wall_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[PullOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "commit": self.commit,
            "pulled": self.count("pulled"),
            "new_versions": self.count("new-version"),
            "present": self.count("present"),
            "failed": self.count("failed"),
            "wall_s": round(self.wall_s, 3),
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


def _same_origin(info: EmbeddingInfo, repo_id: str) -> bool:
    if info.source_ref and info.source_ref.startswith(f"{repo_id}@"):
        return True
    return any(s.repo_id == repo_id for s in info.syncs)


def _versioned_handles(info: EmbeddingInfo) -> tuple[str, str]:
    """The name and token an older version is kept under: ``cat-toy@v1``, ``<cat-toy@v1>``."""
    suffix = f"@v{info.version}"
    inner = strip_brackets(info.token)
    token = f"<{inner}{suffix}>" if inner != info.token else f"{inner}{suffix}"
    return f"{info.name}{suffix}", token


def _retire(lib: Library, info: EmbeddingInfo) -> EmbeddingInfo:
    """Keep an older version under ``name@vN`` (and token ``<token@vN>``)."""
    new_name, new_token = _versioned_handles(info)
    try:
        return lib.rename(info.name, new_name, token=new_token)
    except NameCollision as exc:
        raise NameCollision(
            f"cannot keep the older version of {info.name!r} as {new_name!r}: "
            f"{exc.existing!r} uses that handle",
            existing=exc.existing,
        ) from None


def _restore(lib: Library, retired: EmbeddingInfo, original: EmbeddingInfo) -> None:
    from conceptlib.catalog import dialect
    from conceptlib.catalog.models import EmbeddingRow

    def _write(session: Any) -> None:
        row = session.get(EmbeddingRow, retired.id)
        row.name, row.name_key = original.name, name_key(original.name)
        row.token, row.token_key = original.token, name_key(original.token)
        session.flush()
        dialect.refresh_fts(session.connection(), lib.catalog.dialect_name, retired.id)

    lib.catalog.write_retrying(_write)


def _add(lib: Library, f: Fetched, version: int) -> EmbeddingInfo:
    return lib.add_embedding(
        f.embedding,
        name=f.name,
        token=f.token,
        kind=f.kind,
        source=f.source,
        source_ref=f.source_ref,
        file_bytes=f.file_bytes,
        file_sha256=f.file_sha256,
        base_model=f.base_model,
        base_model_fingerprint=f.base_model_fingerprint,
        initializer=f.initializer,
        training_images_hash=f.training_images_hash,
        training_image_count=f.training_image_count,
        tags=f.tags,
        description=f.description,
        license=f.license,
        previews=f.previews,
        training_runs=f.training_runs,
        parents=f.parents,
        extra=f.extra,
        version=version,
    )


def register(lib: Library, f: Fetched, *, sync_file: str | None = None) -> PullOutcome:
    """Put a fetched concept in the catalog: new entry, new version, or nothing.

    Same vectors already present: nothing is added (the sync is recorded). A name held
    by an entry from the same repo: the old entry is kept as ``name@vN`` and the new one
    becomes ``name`` with version N+1. A name held by anything else: NameCollision.
    """
    sync_file = sync_file or f.file
    base = PullOutcome(
        repo_id=f.repo_id,
        status="present",
        commit=f.commit,
        file=f.file,
        layout=f.layout,
        source_ref=f.source_ref,
    )
    existing = lib.by_tensor_sha256(f.tensor_sha256)
    if existing is not None:
        _record_sync(lib, existing.name, f.repo_id, f.revision, f.commit, "pull", sync_file)
        base.name, base.version, base.token = existing.name, existing.version, existing.token
        return base
    base.token, base.notes = f.token, _derivation_notes(f)
    current = lib.find(f.name)
    if current is None:
        info = _add(lib, f, f.version or 1)
        _record_sync(lib, info.name, f.repo_id, f.revision, f.commit, "pull", sync_file)
        base.status, base.name, base.version = "pulled", info.name, info.version
        return base
    if not _same_origin(current, f.repo_id):
        raise NameCollision(
            f"the name {f.name!r} is taken by an entry from "
            f"{current.source_ref or current.source}; pulled vectors differ",
            hint="choose another name",
            existing=current.name,
            field="name",
        )
    version = max(current.version + 1, f.version or 0)
    retired = _retire(lib, current)
    try:
        info = _add(lib, f, version)
    except BaseException:
        _restore(lib, retired, current)
        raise
    _record_sync(lib, info.name, f.repo_id, f.revision, f.commit, "pull", sync_file)
    base.status, base.name, base.version, base.previous = (
        "new-version",
        info.name,
        version,
        retired.name,
    )
    return base


def _derivation_notes(f: Fetched) -> list[str]:
    """Why the name or token differs from what the repo said; keeps a replaced token in
    ``f.extra["token_in_file"]`` (also when ``--token`` replaced a usable one)."""
    from conceptlib.registry.pending import kept_text

    chose = any(d.field == "token" and d.value == f.token for d in f.derived)
    notes = [d.why for d in f.derived if d.field != "token" or d.value == f.token]
    if f.token_in_repo and f.token != f.token_in_repo:
        f.extra["token_in_file"] = kept_text(f.token_in_repo)
        if not chose:
            notes.append(f"--token replaced the repo's token {f.token_in_repo!r}")
    return notes


def _hub_refs(lib: Library) -> list[tuple[str, EmbeddingInfo]]:
    """``(source_ref, entry)`` of every entry pulled from the Hub (one catalog query)."""
    return [(e.source_ref, e) for e in lib.search(source="hub") if e.source_ref]


def _already_pulled(
    refs: Sequence[tuple[str, EmbeddingInfo]], state: RemoteState, filename: str | None
) -> EmbeddingInfo | None:
    prefix = f"{state.repo_id}@{state.commit}/"
    for ref, e in refs:
        if ref.startswith(prefix) and (filename is None or ref == prefix + filename):
            return e
    return None


def _present(state: RemoteState, e: EmbeddingInfo) -> PullOutcome:
    return PullOutcome(
        repo_id=state.repo_id,
        status="present",
        name=e.name,
        version=e.version,
        commit=state.commit,
        file=(e.source_ref or "").split("/", 2)[-1] or None,
        source_ref=e.source_ref,
    )


def pull(
    lib: Library,
    spec: str,
    *,
    filename: str | None = None,
    name: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    trigger_token: str | None = None,
) -> PullOutcome:
    """Pull one repo (``NS/NAME[@REVISION]``) into the catalog.

    Lists the repo once, downloads only the files the concept needs, verifies their
    size and hash, parses, and only then registers. The same revision again is a no-op.
    ``name`` and ``trigger_token`` replace the name and trigger token the repo gives
    (``token`` is the Hub access token); the trigger token is checked before anything
    is downloaded.

    Raises:
        HubUnsafePath, HubIntegrityError, HubNoEmbedding, AmbiguousEmbedding,
        HubNotFound, HubAuthError, HubOffline, HubUnavailable, NameCollision,
        InvalidName, and the file errors of the format readers.
    """
    if trigger_token is not None:
        trigger_token = checked_token(trigger_token)
    repo_id, revision = _parse_spec(spec)
    session = _Session(HubSettings.from_env(token=token, endpoint=endpoint))
    state = session.state(repo_id, revision)
    done = _already_pulled(_hub_refs(lib), state, filename)
    if done is not None:
        return _present(state, done)
    fetched = fetch_concept(session, state, filename=filename, name=name)
    if trigger_token is not None:
        fetched.token = trigger_token
    return register(lib, fetched)


def pull_many(
    lib: Library,
    *,
    author: str | None = None,
    search: str | None = None,
    tags: Sequence[str] = (),
    limit: int | None = None,
    concurrency: int | None = None,
    on_progress: ProgressCallback | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PullReport:
    """Pull every repo matching ``author``/``search``/``tags`` (at most ``limit``).

    Downloads run ``concurrency`` at a time (default ``CONCEPTLIB_HUB_CONCURRENCY`` or 8);
    registration happens in this thread, one repo at a time. One failure never stops the
    rest: each repo ends ``pulled``, ``new-version``, ``present`` or ``failed``.
    """
    if not (author or search or tags):
        raise UsageError("bulk pull needs --author, --search or --tag")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {limit})")
    started = time.monotonic()
    settings = HubSettings.from_env(token=token, endpoint=endpoint)
    session = _Session(settings)
    repo_ids = session.list_repo_ids(author=author, search=search, tags=tags, limit=limit)
    report = PullReport()
    refs = _hub_refs(lib)  # read here: workers never touch the catalog

    def work(rid: str) -> Fetched | PullOutcome:
        state = session.state(rid, "main")
        done = _already_pulled(refs, state, None)
        return _present(state, done) if done is not None else fetch_concept(session, state)

    def registered(rid: str, result: Fetched | PullOutcome) -> PullOutcome:
        return result if isinstance(result, PullOutcome) else register(lib, result)

    report.outcomes = _run_bounded(
        repo_ids, work, registered, concurrency or settings.concurrency, on_progress, session
    )
    report.wall_s = time.monotonic() - started
    return report


def _failure(key: str, exc: BaseException, session: _Session) -> PullOutcome:
    if isinstance(exc, ConceptlibError):
        return PullOutcome(
            repo_id=key,
            status="failed",
            error=session._redact(exc.message),
            code=exc.code,
            hint=exc.hint,
        )
    return PullOutcome(
        repo_id=key,
        status="failed",
        error=session._redact(f"{type(exc).__name__}: {_first_line(str(exc))}"),
        code="internal",
    )


def _run_bounded(
    keys: Sequence[str],
    work: Callable[[str], Any],
    finish: Callable[[str, Any], PullOutcome],
    concurrency: int,
    on_progress: ProgressCallback | None,
    session: _Session,
) -> list[PullOutcome]:
    """Run ``work`` on a bounded pool; ``finish`` each result here, in completion order."""
    outcomes: dict[str, PullOutcome] = {}
    total = len(keys)
    if on_progress:
        on_progress(0, total, "")
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, total or 1))) as pool:
        futures = {pool.submit(work, k): k for k in keys}
        for done, fut in enumerate(as_completed(futures), start=1):
            key = futures[fut]
            try:
                outcomes[key] = finish(key, fut.result())
            except Exception as exc:  # one repo's failure never stops the others
                outcomes[key] = _failure(key, exc, session)
            if on_progress:
                on_progress(done, total, key)
    return [outcomes[k] for k in keys]


def pull_library(
    lib: Library,
    spec: str,
    *,
    concurrency: int | None = None,
    on_progress: ProgressCallback | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PullReport:
    """Pull a library repo (``library.json``) into the catalog with nothing lost.

    Each concept keeps its name, token, kind, tags, provenance (source and reference),
    base model, previews, training metadata, parents, extra metadata and version; the
    library repo and commit are recorded as sync state. Concepts whose vectors are
    already present are not downloaded at all.
    """
    from pydantic import ValidationError

    from conceptlib.schemas.manifest import LibraryIndex

    repo_id, revision = _parse_spec(spec)
    started = time.monotonic()
    settings = HubSettings.from_env(token=token, endpoint=endpoint)
    session = _Session(settings)
    state = session.state(repo_id, revision)
    if "library.json" not in state.files:
        hint = f"pull it with: conceptlib pull {repo_id}" if "concept.json" in state.files else None
        raise HubNoEmbedding(f"{repo_id} has no library.json: not a conceptlib library", hint=hint)
    raw = session.fetch(state, "library.json", max_size=MAX_SMALL_FILE)
    try:
        index = LibraryIndex.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        raise HubError(
            f"{state.ref('library.json')} is not a valid library index "
            f"({'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg', 'invalid')})"
        ) from None
    by_path = {e.path: e for e in index.concepts}
    # Concepts whose vectors are already here need no download (looked up in this thread).
    present = {p: lib.by_tensor_sha256(e.tensor_sha256) for p, e in by_path.items()}

    def work(path: str) -> Fetched | PullOutcome:
        entry = by_path[path]
        if present[path] is not None:
            info = present[path]
            return PullOutcome(
                repo_id=repo_id,
                status="present",
                name=info.name,
                version=info.version,
                commit=state.commit,
                file=f"{path}/{EMBEDDING_FILENAME}",
            )
        folder = path.rstrip("/") + "/"
        m, emb, data, previews = _fetch_manifest_concept(session, state, folder)
        if m.tensor_sha256 != entry.tensor_sha256 or m.name != entry.name:
            raise HubIntegrityError(
                f"{state.ref(folder + 'concept.json')} does not match its library.json entry",
                repo_id=repo_id,
            )
        return _fetched_from_manifest(
            m,
            emb,
            data,
            previews,
            repo_id=repo_id,
            revision=revision,
            commit=state.commit,
            file=folder + m.embedding.path,
            layout="conceptlib-library",
            name=m.name,
            source=m.source,
            source_ref=m.source_ref,
            extra=dict(m.extra),
        )

    def registered(path: str, result: Fetched | PullOutcome) -> PullOutcome:
        if isinstance(result, PullOutcome):
            if result.name:
                _record_sync(
                    lib, result.name, repo_id, revision, state.commit, "pull", result.file or path
                )
            return result
        return register(lib, result)

    outcomes = _run_bounded(
        list(by_path), work, registered, concurrency or settings.concurrency, on_progress, session
    )
    for o, path in zip(outcomes, by_path, strict=True):
        o.repo_id = f"{repo_id}:{path}" if o.status == "failed" else o.repo_id
        if o.name is None and o.status == "failed":
            o.name = by_path[path].name
    return PullReport(
        outcomes=outcomes, repo_id=repo_id, commit=state.commit, wall_s=time.monotonic() - started
    )

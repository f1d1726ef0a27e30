"""The Python API: a catalog plus a blob store.

Example:
    >>> from conceptlib.registry.library import Library
    >>> lib = Library.open()                      # CONCEPTLIB_HOME or the user data dir
    >>> report = lib.import_paths(["~/webui/embeddings"], recursive=True)
    >>> [e.name for e in lib.search("watercolor", family="sd1")]
    >>> lib.export("cat-toy", "a1111-pt", "out/")

Every write keeps the store-before-row order: blobs are written (atomically) first,
then the rows are committed in one transaction. Nothing here prints, prompts or exits.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conceptlib.catalog.query import Reader, SearchQuery, normalize_tag
from conceptlib.config import Settings, load_settings
from conceptlib.errors import (
    AlreadyExists,
    ConceptlibError,
    InvalidName,
    NameCollision,
    NotFound,
    StoreError,
    UsageError,
)
from conceptlib.registry import fields, originals, upkeep
from conceptlib.registry.folders import collect_files, read_sidecars
from conceptlib.registry.formats.embedding import Embedding, sha256_hex
from conceptlib.registry.pending import PendingEntry, validate_tag
from conceptlib.registry.store import BlobStore
from conceptlib.schemas.enums import Kind, Source
from conceptlib.schemas.names import (
    derive_name,
    name_key,
    split_expansion,
    strip_brackets,
    validate_name,
    validate_token,
)
from conceptlib.schemas.records import (
    EmbeddingInfo,
    ImportOutcome,
    ImportReport,
    Preview,
    SyncInfo,
    TrainingRunRecord,
    VerifyReport,
)
from conceptlib.schemas.vocabulary import is_common_word

ProgressCallback = Callable[[int, int, str], None]

#: Hints of a NameCollision, by its ``field``; the CLI adds the option that sets it.
_WHAT = {"name": "name", "token": "trigger token"}
_ANOTHER = {k: f"choose another {v}" for k, v in _WHAT.items()}


class Library:
    """A catalog of embeddings and the store that holds their bytes."""

    def __init__(self, settings: Settings) -> None:
        from conceptlib.catalog.db import Catalog

        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.store = BlobStore(settings.store_dir)
        self.catalog = Catalog(settings.url, busy_timeout_s=settings.busy_timeout_s)
        self.catalog.migrate()
        self._local = threading.local()

    @property
    def shares_blobs(self) -> bool:
        """True on a catalog shared by several machines (not SQLite): blobs are kept in the
        database too, and the local store is a verified cache."""
        return not self.catalog.is_sqlite

    def _blob(self, sha: str) -> bytes:
        """A blob's bytes, verified; on a shared catalog a missing local copy is fetched
        from the database into the local store."""
        if self.shares_blobs and not self.store.has(sha):
            with self.reader() as r:
                data = r.blob(sha)
            if data is not None:
                if sha256_hex(data) != sha:
                    from conceptlib.errors import BlobCorrupt

                    raise BlobCorrupt(f"blob {sha[:12]} in the shared catalog fails its hash check")
                self.store.put(data, sha)
        return self.store.get(sha, verify=True)

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None) -> Library:
        """Open the library at ``home`` (default ``CONCEPTLIB_HOME`` or the user data dir)."""
        return cls(load_settings(home))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        self.catalog.dispose()

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    @contextmanager
    def reader(self) -> Iterator[Reader]:
        """A :class:`Reader` over a plain DB-API connection (kept open per thread on SQLite)."""
        if self.catalog.is_sqlite:
            import sqlite3

            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = sqlite3.connect(
                    str(self.settings.catalog_path),
                    timeout=self.settings.busy_timeout_s,
                    isolation_level=None,
                    check_same_thread=False,
                )
                conn.execute(f"PRAGMA busy_timeout={int(self.settings.busy_timeout_s * 1000)}")
                self._local.conn = conn
            try:
                yield Reader(conn, "sqlite")
            except sqlite3.DatabaseError as exc:
                from conceptlib.catalog.db import translate_db_error

                raise translate_db_error(exc, self.catalog.where) from exc
        else:
            raw = self.catalog.engine.raw_connection()
            try:
                yield Reader(raw, self.catalog.dialect_name, paramstyle="format")
                raw.commit()
            finally:
                raw.close()

    def search(
        self,
        query: str | None = None,
        *,
        tags: Sequence[str] = (),
        family: str | None = None,
        kind: str | None = None,
        compatible_with: str | None = None,
        source: str | None = None,
        base_model: str | None = None,
        limit: int | None = None,
        order: str = "name",
    ) -> list[EmbeddingInfo]:
        """Find embeddings; all filters combine with AND. ``query`` searches name, token,
        description and tags (every word must match, as a prefix). ``order``: one of
        ``ORDERS`` (name, newest, oldest, clip-i, clip-t), else ``UsageError``."""
        q = SearchQuery(
            text=query or None,
            tags=[normalize_tag(t) for t in tags],
            family=family,
            kind=kind,
            compatible_with=compatible_with,
            source=source,
            base_model=base_model,
            limit=limit,
            order=order,
        )
        with self.reader() as r:
            return r.search(q)

    def list(self, *, limit: int | None = None) -> list[EmbeddingInfo]:
        return self.search(limit=limit)

    def count(self) -> int:
        with self.reader() as r:
            return r.count()

    def tags(self) -> list[tuple[str, int]]:
        with self.reader() as r:
            return r.tags()

    def find(self, name: str) -> EmbeddingInfo | None:
        """The entry named ``name`` (normalized), or ``None``."""
        with self.reader() as r:
            return r.by_key("name_key", name_key(name))

    def get(self, name: str) -> EmbeddingInfo:
        """The entry named ``name``; :class:`NotFound` with close matches otherwise."""
        info = self.find(name)
        if info is None:
            raise NotFound(
                f"no embedding named {name!r}", suggestions=self.suggest(name), name=name
            )
        return info

    def by_tensor_sha256(self, sha: str) -> EmbeddingInfo | None:
        with self.reader() as r:
            return r.by_key("tensor_sha256", sha)

    def resolve(self, handle: str) -> EmbeddingInfo:
        """Resolve what a prompt names: by name, then by trigger token (normalized)."""
        with self.reader() as r:
            info = r.resolve(handle)
        if info is None:
            raise NotFound(
                f"no embedding named {handle!r} (by name or trigger token)",
                suggestions=self.suggest(strip_brackets(handle)),
                name=handle,
            )
        return info

    def suggest(self, name: str, n: int = 3) -> list[str]:
        with self.reader() as r:
            return r.suggest(name, n)

    def load(self, handle: str | EmbeddingInfo) -> Embedding:
        """Read an embedding's vectors; the blob is verified against its hash first."""
        from conceptlib.registry.formats.safetensors_io import read_safetensors

        info = handle if isinstance(handle, EmbeddingInfo) else self.get(handle)
        data = self._blob(info.tensor_sha256)
        tensors, _ = read_safetensors(data, path=str(self.store.path(info.tensor_sha256)))
        emb = Embedding(vectors=tensors)
        emb.flags = list(info.flags)
        return emb

    def preview_path(self, info: EmbeddingInfo, filename: str) -> Path:
        for p in info.previews:
            if p.filename == filename:
                if self.shares_blobs and not self.store.has(p.sha256):
                    self._blob(p.sha256)
                return self.store.path(p.sha256)
        raise NotFound(f"{info.name} has no preview named {filename!r}")

    def syncs(self, name: str) -> list[SyncInfo]:
        return self.get(name).syncs

    # ------------------------------------------------------------------ adding

    def add_embedding(
        self,
        emb: Embedding,
        *,
        name: str,
        token: str | None = None,
        kind: Kind | str = Kind.OBJECT,
        source: Source | str = Source.FILE,
        source_ref: str | None = None,
        file_bytes: bytes | None = None,
        file_sha256: str | None = None,
        base_model: str | None = None,
        base_model_fingerprint: str | None = None,
        initializer: str | None = None,
        training_images_hash: str | None = None,
        training_image_count: int | None = None,
        tags: Sequence[str] = (),
        description: str | None = None,
        license: str | None = None,
        previews: Sequence[Preview] = (),
        training_run: TrainingRunRecord | None = None,
        training_runs: Sequence[TrainingRunRecord] = (),
        parents: Sequence[dict[str, Any]] = (),
        extra: dict[str, Any] | None = None,
        version: int = 1,
        on_duplicate: str = "error",
    ) -> EmbeddingInfo:
        """Register one embedding (blob first, then its rows in one transaction).

        Raises:
            AlreadyExists: the same tensors are already registered (``on_duplicate="error"``).
            NameCollision: the name or token (or its ``_N`` expansion) is taken.
            InvalidName: the name, token or a tag breaks the name rules.
        """
        canonical = emb.canonical_bytes()
        tensor_sha = sha256_hex(canonical)
        for handle, what in ((name, "name"), (token or name, "token")):
            if is_common_word(handle):
                raise InvalidName(
                    f"the {what} {handle!r} is an ordinary word: as a trigger it would silently "
                    f"change what {handle!r} means in every prompt",
                    hint=f"choose a distinctive name, e.g. {handle}-style or <{handle}>",
                )
        pending = PendingEntry(
            embedding=emb,
            name=validate_name(name),
            token=validate_token(token) if token else validate_name(name),
            kind=Kind(kind).value,
            source=Source(source).value,
            source_ref=source_ref,
            file_sha256=file_sha256
            or sha256_hex(file_bytes if file_bytes is not None else canonical),
            tensor_sha256=tensor_sha,
            base_model=base_model,
            base_model_fingerprint=base_model_fingerprint,
            initializer=initializer,
            training_images_hash=training_images_hash,
            training_image_count=training_image_count,
            tags=sorted({validate_tag(t) for t in tags}),
            description=description,
            license=license,
            training_runs=[*training_runs, *([training_run] if training_run else [])],
            parents=list(parents),
            extra=dict(extra or {}),
            version=version,
        )
        existing = self.by_tensor_sha256(tensor_sha)
        if existing is not None:
            if on_duplicate == "return":
                return existing
            raise AlreadyExists(
                f"these vectors are already in the catalog as {existing.name!r}",
                existing=existing.name,
                tensor_sha256=tensor_sha,
            )
        try:
            with self.reader() as r:
                self._check_names(r, pending, {})
        except NameCollision:
            # Another writer may have committed these very vectors since we looked.
            raced = self.by_tensor_sha256(tensor_sha)
            if raced is None:
                raise
            if on_duplicate == "return":
                return raced
            raise AlreadyExists(
                f"these vectors are already in the catalog as {raced.name!r}",
                existing=raced.name,
                tensor_sha256=tensor_sha,
            ) from None
        pending.canonical = canonical
        pending.original = originals.kept_original(file_bytes, pending.file_sha256, tensor_sha)
        pending.new_previews = [(_safe_filename(p.filename), p.role, p.data) for p in previews]
        with self._cleanup_on_failure():
            self._store_pending(pending, durable=True)
            self._commit([pending])
        return self.get(pending.name)

    @contextmanager
    def _cleanup_on_failure(self, mark: int | None = None) -> Iterator[None]:
        """On failure, remove the blobs written since ``mark`` that no row references and
        nobody else touched since: the store ends as it was (bad inputs 25)."""
        start = len(self.store.created) if mark is None else mark
        try:
            yield
        except BaseException:
            self._discard_unused(start)
            raise
        else:
            del self.store.created[start:]

    def _check_names(
        self,
        r: Reader,
        p: PendingEntry,
        batch: Mapping[str, tuple[str, int]],
        *,
        exclude: str | None = None,
    ) -> None:
        """Refuse a name/token already used, or clashing with diffusers' ``t_1`` expansion.

        ``exclude`` names the entry being renamed (it may keep its own name or token).
        """
        self._check_handles(r, p.name, p.token, p.embedding.num_vectors, batch, exclude)

    def _check_handles(
        self,
        r: Reader,
        new_name: str,
        token: str,
        n: int,
        batch: Mapping[str, tuple[str, int]],
        exclude: str | None,
    ) -> None:
        """The name rules of one entry's name and token against the catalog, ``batch``
        (key -> ``(name, vectors)`` of entries earlier in the same import, which count
        exactly as catalog entries do) and each other: no handle used twice, and no
        ``foo_N`` inside a multi-vector ``foo``'s expansion (diffusers loads ``foo`` of
        3 vectors as ``foo foo_1 foo_2``), whichever comes first."""
        ex = name_key(exclude) if exclude else None

        def find(column: str, key: str) -> tuple[str, int, str] | None:
            hit = r.handle(column, key)
            if hit is not None and name_key(hit[0]) != ex:
                return hit[0], hit[1], ""
            if key in batch:
                return batch[key][0], batch[key][1], " in this same import"
            return None

        nk, tk = name_key(new_name), name_key(token)
        for key, what in ((nk, "name"), (tk, "token")):
            for column in ("name_key", "token_key"):
                other = find(column, key)
                if other is not None:
                    shown = new_name if what == "name" else token
                    raise NameCollision(
                        f"the {what} {shown!r} is already used by {other[0]!r}{other[2]}",
                        existing=other[0],
                        hint=_ANOTHER[what],
                        field=what,
                    )
        # foo_2 against a multi-vector foo (diffusers expands foo into foo, foo_1, ...).
        for key in {nk, tk, name_key(strip_brackets(token))}:
            what = "name" if key == nk else "token"
            split = split_expansion(key)
            if not split:
                continue
            base, index = split
            for column in ("name_key", "token_key"):
                for cand in (base, f"<{base}>"):
                    other = find(column, cand)
                    if other is not None and other[1] > index:
                        raise NameCollision(
                            f"{key!r} collides with {other[0]!r}{other[2]}: it has {other[1]} "
                            f"vectors, which diffusers loads as {base}, {base}_1, ... "
                            f"{base}_{other[1] - 1}",
                            existing=other[0],
                            hint=f"choose a {_WHAT[what]} that does not end in _<number>",
                            field=what,
                        )
        if n > 1:
            own = {tk: "token", name_key(strip_brackets(token)): "token", nk: "name"}
            for base in {nk, name_key(strip_brackets(token))}:
                for i in range(1, n):
                    clash = own.get(f"{base}_{i}")
                    if clash is not None:
                        raise NameCollision(
                            f"{new_name!r} has {n} vectors, which diffusers loads as {base}, "
                            f"{base}_1, ...; its own {_WHAT[clash]} {base}_{i} is one of them",
                            hint=_ANOTHER[clash],
                            field=clash,
                        )
                    for column in ("name_key", "token_key"):
                        other = find(column, f"{base}_{i}")
                        if other is not None:
                            raise NameCollision(
                                f"{new_name!r} has {n} vectors, which diffusers loads as {base}, "
                                f"{base}_1, ...; {other[0]!r}{other[2]} already uses {base}_{i}",
                                existing=other[0],
                                hint=_ANOTHER["name" if base == nk else "token"],
                                field="name" if base == nk else "token",
                            )

    def _commit(self, batch: Sequence[PendingEntry]) -> None:
        """Insert a batch of prepared entries in one write transaction, run again when a
        concurrent writer's transaction made the database abort it (a deadlock)."""
        self.catalog.retrying(lambda: self._commit_once(batch))

    def _commit_once(self, batch: Sequence[PendingEntry]) -> None:
        """Insert a batch of prepared entries in one write transaction (Core inserts)."""
        from sqlalchemy import insert
        from sqlalchemy.exc import IntegrityError

        from conceptlib.catalog import dialect
        from conceptlib.catalog.models import (
            EmbeddingRow,
            EmbeddingTagRow,
            PreviewRow,
            SourceRow,
            TrainingRunRow,
            utcnow,
        )

        if not batch:
            return
        self.store.sync()  # every blob durable before a row names it
        now = utcnow()
        emb_t = EmbeddingRow.__table__
        try:
            with self.catalog.connection() as conn:
                ids: list[int] = []
                for p in batch:
                    emb = p.embedding
                    row_id = conn.execute(
                        insert(emb_t).returning(emb_t.c.id),
                        {
                            "name": p.name,
                            "name_key": name_key(p.name),
                            "token": p.token,
                            "token_key": name_key(p.token),
                            "kind": p.kind,
                            "family": emb.family.value,
                            "num_vectors": emb.num_vectors,
                            "dims": ",".join(str(d) for d in emb.dims),
                            "tensor_sha256": p.tensor_sha256,
                            "file_sha256": p.file_sha256,
                            "source": p.source,
                            "source_ref": p.source_ref,
                            "base_model": p.base_model,
                            "base_model_fingerprint": p.base_model_fingerprint,
                            "initializer": p.initializer,
                            "training_images_hash": p.training_images_hash,
                            "training_image_count": p.training_image_count,
                            "description": p.description,
                            "license": p.license,
                            "flags": json.dumps(emb.flags),
                            "extra": json.dumps(p.extra, sort_keys=True, default=str),
                            "parents": json.dumps(p.parents, sort_keys=True),
                            "version": p.version,
                            "created_at": now,
                            "updated_at": now,
                        },
                    ).scalar_one()
                    ids.append(row_id)
                wanted = sorted({t for p in batch for t in p.tags})
                tag_ids = dialect.ensure_tags(conn, self.catalog.dialect_name, wanted)
                links, previews, sources, runs = [], [], [], []
                for row_id, p in zip(ids, batch, strict=True):
                    links += [{"embedding_id": row_id, "tag_id": tag_ids[t]} for t in p.tags]
                    previews += [
                        {
                            "embedding_id": row_id,
                            "filename": f,
                            "role": role,
                            "sha256": sha,
                            "size": size,
                            "created_at": now,
                        }
                        for f, role, sha, size in p.previews
                    ]
                    sources.append(
                        {
                            "embedding_id": row_id,
                            "source": p.source,
                            "ref": p.source_ref,
                            "file_sha256": p.file_sha256,
                            "created_at": now,
                        }
                    )
                    for tr in p.training_runs:
                        runs.append(
                            {
                                "embedding_id": row_id,
                                "config": json.dumps(tr.config, sort_keys=True, default=str),
                                "steps": tr.steps,
                                "final_loss": tr.final_loss,
                                "wall_time_s": tr.wall_time_s,
                                "device": tr.device,
                                "base_model": tr.base_model,
                                "base_model_fingerprint": tr.base_model_fingerprint,
                                "training_images_hash": tr.training_images_hash,
                                "training_image_count": tr.training_image_count,
                                "initializer": tr.initializer,
                                "status": tr.status,
                                "created_at": now,
                                "clip_i": tr.clip_i,
                                "clip_t": tr.clip_t,
                                "metrics": json.dumps(tr.metrics, sort_keys=True),
                            }
                        )
                for table, rows in (
                    (EmbeddingTagRow.__table__, links),
                    (PreviewRow.__table__, previews),
                    (SourceRow.__table__, sources),
                    (TrainingRunRow.__table__, runs),
                ):
                    if rows:
                        conn.execute(insert(table), rows)
                dialect.refresh_fts_many(conn, self.catalog.dialect_name, ids)
                if self.shares_blobs:
                    blobs: dict[str, bytes] = {}
                    for p in batch:
                        blobs[p.tensor_sha256] = p.canonical
                        if p.original:
                            blobs[p.file_sha256] = p.original
                        for _f, _role, sha, _size in p.previews:
                            blobs[sha] = self.store.get(sha, verify=False)
                    dialect.insert_blobs(conn, self.catalog.dialect_name, blobs, now)
        except IntegrityError as exc:
            raise self._integrity_error(batch, exc) from None

    def _integrity_error(self, batch: Sequence[PendingEntry], exc: Exception) -> ConceptlibError:
        """A unique violation (lost race with another writer) as a typed error."""
        for p in batch:
            other = self.by_tensor_sha256(p.tensor_sha256)
            if other is not None:
                return AlreadyExists(
                    f"these vectors are already in the catalog as {other.name!r}",
                    existing=other.name,
                    tensor_sha256=p.tensor_sha256,
                )
            other = self.find(p.name)
            if other is not None:
                return NameCollision(
                    f"the name {p.name!r} is already used by {other.name!r}", existing=other.name
                )
        return NameCollision(f"a name or token is already used ({str(exc).splitlines()[0]})")

    # ------------------------------------------------------------------ import

    def import_paths(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        recursive: bool = False,
        name: str | None = None,
        kind: Kind | str | None = None,
        tags: Sequence[str] = (),
        base_model: str | None = None,
        token: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> ImportReport:
        """Import embedding files and whole A1111 / ComfyUI / InvokeAI embedding folders.

        One bad file never stops the rest: each file ends up ``imported``, ``present``
        (naming the existing entry) or ``rejected`` (with the reason); ``name`` and
        ``token`` (the trigger token) apply to one file; the options given are applied
        to entries already present. Details: :func:`conceptlib.registry.importer.import_paths`.

        Raises:
            UsageError: ``name`` or ``token`` with more than one file.
            InvalidName: ``token`` or a tag breaks the name rules (before any file).
        """
        from conceptlib.registry.importer import import_paths

        return import_paths(
            self,
            paths,
            recursive=recursive,
            name=name,
            kind=kind,
            tags=tags,
            base_model=base_model,
            token=token,
            on_progress=on_progress,
        )

    def _flush(self, batch: list[tuple[PendingEntry, ImportOutcome]], mark: int) -> None:
        """Commit a batch; on a lost race commit one by one. Blobs written for entries that
        end up not committed (and that nobody else uses) are removed again."""
        if not batch:
            del self.store.created[mark:]
            return
        try:
            self._commit([p for p, _ in batch])
        except (AlreadyExists, NameCollision):
            # Another writer won a race for one of them: commit one by one.
            for p, o in batch:
                try:
                    self._commit([p])
                    o.status = "imported"
                except AlreadyExists as exc:
                    o.status, o.existing, o.name = "present", exc.existing, exc.existing
                except ConceptlibError as exc:
                    o.status, o.reason, o.error = "rejected", exc.message, exc.code
            self._discard_unused(mark)
            return
        except BaseException:
            self._discard_unused(mark)
            raise
        for _, o in batch:
            o.status = "imported"
        del self.store.created[mark:]

    def _discard_unused(self, mark: int) -> None:
        try:
            referenced = upkeep.referenced_blobs(self)
        except Exception:  # the catalog itself is failing: leave the blobs to gc
            return
        self.store.discard_created(mark, referenced)

    def _store_pending(self, p: PendingEntry, *, durable: bool = False) -> None:
        """Write an entry's blobs. Bulk imports pass ``durable=False``: ``_commit`` then
        syncs the whole batch once before inserting the rows."""
        self.store.put(p.canonical, p.tensor_sha256, durable=durable)
        if p.original:  # the imported file, written back by exports in its layout
            self.store.put(p.original, p.file_sha256, durable=durable)
        for filename, role, data in p.new_previews:
            sha = self.store.put(data, durable=durable)
            p.previews.append((filename, role, sha, len(data)))
        p.new_previews = []

    # ------------------------------------------------------------------ changing

    def tag(self, name: str, add: Sequence[str] = (), remove: Sequence[str] = ()) -> EmbeddingInfo:
        """Add and remove tags of one entry."""
        from sqlmodel import select

        from conceptlib.catalog import dialect
        from conceptlib.catalog.models import EmbeddingRow, EmbeddingTagRow, TagRow, utcnow

        info = self.get(name)
        add_t = [validate_tag(t) for t in add]
        rem_t = [normalize_tag(t) for t in remove]
        missing = [t for t in rem_t if t not in info.tags]
        if missing:
            raise NotFound(
                f"{info.name!r} has no tag {missing[0]!r}; its tags: {', '.join(info.tags) or 'none'}"
            )

        def _write(session: Any) -> None:
            new = [t for t in add_t if t not in info.tags]
            ids = dialect.ensure_tags(session.connection(), self.catalog.dialect_name, new)
            for t in new:
                session.add(EmbeddingTagRow(embedding_id=info.id, tag_id=ids[t]))
            for t in rem_t:
                row = session.exec(select(TagRow).where(TagRow.name == t)).first()
                if row is not None:
                    link = session.get(EmbeddingTagRow, (info.id, row.id))
                    if link is not None:
                        session.delete(link)
            er = session.get(EmbeddingRow, info.id)
            er.updated_at = utcnow()
            session.flush()
            dialect.refresh_fts(session.connection(), self.catalog.dialect_name, info.id)

        self.catalog.write_retrying(_write)
        return self.get(info.name)

    def update(
        self,
        name: str,
        *,
        description: str | None = None,
        kind: str | None = None,
        license: str | None = None,
        base_model: str | None = None,
        token: str | None = None,
        trigger_words: Sequence[str] | None = None,
    ) -> EmbeddingInfo:
        """Change an entry's fields in one transaction (search index included); ``None``
        keeps a field, ``""`` clears a text field. ``kind``: object, style, negative or
        other; ``token``: a new trigger token under :meth:`add_embedding`'s rules;
        ``trigger_words``: Civitai's ``trainedWords`` / A1111's ``activation text``, kept
        as ``extra["trained_words"]`` (empty clears). Checks: :mod:`~conceptlib.registry.fields`.

        Raises:
            NotFound, UsageError, InvalidName, NameCollision (a refused value changes nothing).
        """
        from conceptlib.catalog import dialect
        from conceptlib.catalog.models import EmbeddingRow, utcnow

        info = self.get(name)
        values = fields.checked_fields(
            description=description, license=license, base_model=base_model
        )
        if kind is not None:
            values["kind"] = fields.checked_kind(kind)
        if token is not None:
            values["token"] = fields.checked_token(token)
            values["token_key"] = name_key(values["token"])
            with self.reader() as r:
                self._check_handles(r, info.name, values["token"], info.num_vectors, {}, info.name)
        if trigger_words is not None:
            extra = dict(info.extra, trained_words=fields.checked_trigger_words(trigger_words))
            if not extra["trained_words"]:
                del extra["trained_words"]
            values["extra"] = json.dumps(extra, sort_keys=True, default=str)

        def _write(session: Any) -> None:
            row = session.get(EmbeddingRow, info.id)
            for column, value in values.items():
                setattr(row, column, value)
            row.updated_at = utcnow()
            session.flush()
            dialect.refresh_fts(session.connection(), self.catalog.dialect_name, info.id)

        self.catalog.write_retrying(_write)
        return self.get(info.name)

    def rename(self, old: str, new: str, *, token: str | None = None) -> EmbeddingInfo:
        """Rename an entry. ``token`` sets a new trigger token; without it a token equal
        to the old name follows the rename and any other token is kept."""
        from conceptlib.catalog import dialect
        from conceptlib.catalog.models import EmbeddingRow, utcnow

        info = self.get(old)
        new_name = validate_name(new)
        follow = name_key(info.token) == name_key(info.name)
        if token is not None:
            new_token = fields.checked_token(token)
        else:
            new_token = new_name if follow else info.token
        if is_common_word(new_name):
            raise InvalidName(
                f"the name {new_name!r} is an ordinary word: as a trigger it would silently "
                f"change what {new_name!r} means in every prompt",
                hint=f"choose a distinctive name, e.g. {new_name}-style",
            )
        with self.reader() as r:
            self._check_handles(r, new_name, new_token, info.num_vectors, {}, info.name)

        def _write(session: Any) -> None:
            row = session.get(EmbeddingRow, info.id)
            row.name, row.name_key = new_name, name_key(new_name)
            row.token, row.token_key = new_token, name_key(new_token)
            row.updated_at = utcnow()
            session.flush()
            dialect.refresh_fts(session.connection(), self.catalog.dialect_name, info.id)

        self.catalog.write_retrying(_write)
        return self.get(new_name)

    def remove(self, name: str) -> EmbeddingInfo:
        """Delete an entry (rows first, then blobs nothing else uses)."""
        from conceptlib.catalog import dialect
        from conceptlib.catalog.models import EmbeddingRow

        info = self.get(name)

        def _write(session: Any) -> None:
            row = session.get(EmbeddingRow, info.id)
            dialect.delete_fts(session.connection(), self.catalog.dialect_name, info.id)
            session.delete(row)

        self.catalog.write_retrying(_write)
        referenced = upkeep.referenced_blobs(self)
        gone = [
            s
            for s in [info.tensor_sha256, info.file_sha256] + [p.sha256 for p in info.previews]
            if s not in referenced
        ]
        for sha in gone:
            self.store.remove(sha)
        if self.shares_blobs and gone:
            upkeep.delete_unreferenced_db_blobs(self, gone)
        return info

    def record_sync(self, name: str, sync: SyncInfo) -> None:
        """Record Hub sync state (a push or pull of ``name``)."""
        from conceptlib.catalog.models import HubSyncRow

        info = self.get(name)

        def _write(session: Any) -> None:
            session.add(
                HubSyncRow(
                    embedding_id=info.id,
                    repo_id=sync.repo_id,
                    revision=sync.revision,
                    commit_sha=sync.commit_sha,
                    direction=sync.direction,
                    filename=sync.filename,
                )
            )

        self.catalog.write_retrying(_write)

    def add_previews(self, name: str, previews: Sequence[Preview]) -> EmbeddingInfo:
        """Attach preview images to an entry (blobs first, then rows)."""
        from conceptlib.catalog import dialect
        from conceptlib.catalog.models import PreviewRow, utcnow

        info = self.get(name)
        rows = []
        with self._cleanup_on_failure():
            for p in previews:
                sha = self.store.put(p.data)
                rows.append((_safe_filename(p.filename), p.role, sha, len(p.data)))

            def _write(session: Any) -> None:
                for filename, role, sha, size in rows:
                    session.add(
                        PreviewRow(
                            embedding_id=info.id,
                            filename=filename,
                            role=role,
                            sha256=sha,
                            size=size,
                        )
                    )
                if self.shares_blobs:
                    blobs = {sha: self.store.get(sha, verify=False) for _f, _r, sha, _s in rows}
                    dialect.insert_blobs(
                        session.connection(), self.catalog.dialect_name, blobs, utcnow()
                    )

            self.catalog.write_retrying(_write)
        return self.get(info.name)

    # ------------------------------------------------------------------ export

    def export(
        self,
        name: str,
        fmt: str,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        t5_key: str = "t5xxl",
    ) -> originals.ExportedFiles:
        """Write an entry in one of the formats UIs read.

        ``fmt``: ``a1111-pt`` (SD 1.x/2.x), ``safetensors`` (``emb_params``; SDXL as
        ``{clip_l, clip_g}``), ``diffusers`` (``{name}.safetensors`` keyed by the token in
        its tokenizer form; SDXL: ``{name}/learned_embeds.safetensors`` and ``..._2``),
        ``sdxl`` or ``invokeai`` (the folder InvokeAI installs:
        ``{name}/learned_embeds.bin``, the name mapped to one InvokeAI can trigger by
        :func:`~conceptlib.schemas.names.invokeai_name`: ``cat-toy@v1`` -> ``cat-toy-v1``). ``out`` is a folder (files named after the entry)
        or, for one-file formats, a file. A file that already holds the same bytes is
        left as it is. When the entry was imported from a file in this very layout, that
        file's bytes are written (so its SHA-256, A1111 hash and AutoV2 are the ones
        other sites show for it) and listed in the result's ``original``; otherwise the
        bytes are written fresh, the same for the same vectors every time
        (:mod:`~conceptlib.registry.originals`). ``t5_key``: SD3/FLUX's T5 key,
        ``t5xxl`` (ComfyUI) or ``t5`` (OneTrainer).

        Returns:
            The paths written (a list), with ``.original``: those holding the original
            file's bytes.

        Raises:
            UsageError: an unknown format, or one the entry's family cannot use
                (:func:`~conceptlib.registry.formats.write.check_writable`).
            AlreadyExists: a target file exists with other contents (without
                ``overwrite``); nothing was written.
        """
        from conceptlib.registry.formats.write import (
            WRITE_FORMATS,
            check_writable,
            export_layout,
            place_files,
        )

        if fmt not in WRITE_FORMATS:
            raise UsageError(
                f"unknown export format {fmt!r}; expected one of {', '.join(WRITE_FORMATS)}"
            )
        info = self.get(name)
        check_writable(fmt, info.family, what=repr(info.name))
        written = originals.entry_files(self, info, fmt, t5_key=t5_key)
        files = export_layout(written, fmt, name=info.name)
        out_path = Path(out).expanduser()
        if len(files) == 1 and fmt != "invokeai" and not out_path.is_dir() and out_path.suffix:
            targets = {out_path: next(iter(files.values()))}
        else:
            targets = {out_path / rel: data for rel, data in files.items()}
        paths = place_files(targets, overwrite=overwrite)
        return originals.ExportedFiles(paths, paths if written.original else ())

    # ------------------------------------------------------------------ maintenance

    def verify(self, *, on_progress: ProgressCallback | None = None) -> VerifyReport:
        """Check every blob against its hash, and the database's integrity
        (:func:`conceptlib.registry.upkeep.verify`)."""
        return upkeep.verify(self, on_progress=on_progress)

    def gc(self, *, dry_run: bool = False, grace_s: float = 0.0) -> upkeep.GcResult:
        """Remove blobs no row names, and temp files left by interrupted writes; blobs and
        temp files younger than ``grace_s`` seconds are spared and listed in the result's
        ``spared`` (:func:`conceptlib.registry.upkeep.collect_garbage`)."""
        return upkeep.collect_garbage(self, dry_run=dry_run, grace_s=grace_s)

    def dump(self) -> dict[str, Any]:
        """A full dump of the catalog rows (for before/after comparisons in tests)."""
        out: dict[str, Any] = {}
        with self.reader() as r:
            for table in (
                "embedding",
                "tag",
                "embedding_tag",
                "preview",
                "embedding_source",
                "training_run",
                "hub_sync",
                "blob",
            ):
                out[table] = sorted(map(repr, r._exec(f"SELECT * FROM {table}")))
        return out


def _safe_filename(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/")) or "preview.png"
    return derive_name(base)


__all__ = [
    "Library",
    "PendingEntry",
    "StoreError",
    "collect_files",
    "read_sidecars",
    "validate_tag",
]

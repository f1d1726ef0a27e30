"""Read queries over a plain DB-API connection: list, search, get.

This module imports neither SQLAlchemy nor sqlmodel, so that ``conceptlib search``
starts fast: on SQLite the CLI opens the catalog read-only with :mod:`sqlite3`.
The SQL is portable; the one SQLite-only piece (FTS5) comes from
:mod:`conceptlib.catalog.dialect`. Placeholders are written ``?`` and rewritten
for drivers that use ``%s``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from conceptlib.catalog import dialect
from conceptlib.schemas.enums import Family, compatible_families
from conceptlib.schemas.records import (
    EmbeddingInfo,
    PreviewInfo,
    SyncInfo,
    TrainingRunInfo,
)

#: The schema version this code reads; equal to ``migrations.LATEST`` (a test checks).
SCHEMA_VERSION = 6

EMBEDDING_COLUMNS = (
    "id",
    "name",
    "token",
    "kind",
    "family",
    "num_vectors",
    "dims",
    "tensor_sha256",
    "file_sha256",
    "source",
    "source_ref",
    "base_model",
    "base_model_fingerprint",
    "initializer",
    "training_images_hash",
    "training_image_count",
    "description",
    "license",
    "flags",
    "extra",
    "parents",
    "version",
    "created_at",
    "updated_at",
)


@dataclass
class SearchQuery:
    """What ``search`` filters on; every field is optional and they combine with AND."""

    text: str | None = None
    tags: Sequence[str] = field(default_factory=tuple)
    family: str | None = None
    kind: str | None = None
    compatible_with: str | None = None
    source: str | None = None
    base_model: str | None = None
    limit: int | None = None
    offset: int = 0
    #: ``name`` (by the normalized name), ``newest`` or ``oldest`` (by the row id, the
    #: order entries were added in); each is an index walk. ``clip-i`` / ``clip-t``: best
    #: first (see :data:`ORDERS`). Anything else raises ``UsageError``.
    order: str = "name"

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            from conceptlib.errors import UsageError

            raise UsageError(f"unknown order {self.order!r}; expected one of {', '.join(ORDERS)}")


#: ``SearchQuery.order`` -> ORDER BY clause.
ORDERS = {"name": "e.name_key", "newest": "e.id DESC", "oldest": "e.id"}
# ``clip-i`` / ``clip-t``: best first (entries without the metric last), by the best
# of the entry's runs: one lookup in ix_training_run_embedding_clip_i (_t) per entry.
for _key, _col in (("clip-i", "clip_i"), ("clip-t", "clip_t")):
    ORDERS[_key] = (
        f"(SELECT max(tr.{_col}) FROM training_run tr WHERE tr.embedding_id = e.id) "
        "DESC NULLS LAST, e.name_key"
    )


class Reader:
    """Runs the read queries on one DB-API connection."""

    def __init__(self, conn: Any, dialect_name: str, paramstyle: str = "qmark") -> None:
        self.conn = conn
        self.dialect_name = dialect_name
        self.paramstyle = paramstyle

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        if self.paramstyle != "qmark":
            sql = sql.replace("%", "%%").replace("?", "%s")
        cur = self.conn.cursor()
        try:
            cur.execute(sql, tuple(params))
            return list(cur.fetchall())
        finally:
            cur.close()

    # ------------------------------------------------------------------ queries

    def search(self, q: SearchQuery) -> list[EmbeddingInfo]:
        where, params = self._where(q)
        sql = "SELECT " + ", ".join(f"e.{c}" for c in EMBEDDING_COLUMNS) + " FROM embedding e"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY " + ORDERS[q.order]
        if q.limit is not None:
            sql += f" LIMIT {int(q.limit)} OFFSET {int(q.offset)}"
        rows = self._exec(sql, params)
        return self._infos(rows)

    def count_matching(self, q: SearchQuery) -> int:
        """How many entries :meth:`search` finds for ``q`` without its limit (for paging)."""
        where, params = self._where(q)
        sql = "SELECT count(*) FROM embedding e"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return int(self._exec(sql, params)[0][0])

    def _where(self, q: SearchQuery) -> tuple[list[str], list[Any]]:
        where: list[str] = []
        params: list[Any] = []
        if q.text:
            clause, p = dialect.text_search_clause(self.dialect_name, q.text, "?")
            where.append(clause)
            params += p
        for tag in q.tags:
            where.append(
                "e.id IN (SELECT et.embedding_id FROM embedding_tag et JOIN tag t "
                "ON t.id = et.tag_id WHERE t.name = ?)"
            )
            params.append(normalize_tag(tag))
        if q.family:
            where.append("e.family = ?")
            params.append(Family(q.family).value)
        if q.compatible_with:
            fams = [f.value for f in compatible_families(q.compatible_with)]
            where.append("e.family IN (" + ", ".join("?" for _ in fams) + ")")
            params += fams
        if q.kind:
            where.append("e.kind = ?")
            params.append(q.kind)
        if q.source:
            where.append("e.source = ?")
            params.append(q.source)
        if q.base_model:
            where.append("(e.base_model = ? OR e.base_model_fingerprint = ?)")
            params += [q.base_model, q.base_model]
        return where, params

    def by_key(self, column: str, key: str) -> EmbeddingInfo | None:
        assert column in ("name_key", "token_key", "tensor_sha256")
        rows = self._exec(
            "SELECT "
            + ", ".join(f"e.{c}" for c in EMBEDDING_COLUMNS)
            + f" FROM embedding e WHERE e.{column} = ?",
            [key],
        )
        infos = self._infos(rows, details=True)
        return infos[0] if infos else None

    def resolve(self, handle: str, *, hashes: bool = False) -> EmbeddingInfo | None:
        """What a prompt or a command names: by name, then by trigger token, each with
        and without diffusers-style brackets (keys normalized as the catalog does).

        With ``hashes``, a handle of 8 to 64 hex digits that names no entry is then
        looked up as a hash (:meth:`by_hash`): the tensor SHA-256, the file SHA-256, or
        a prefix of either, which covers A1111's short hash (12 hex) and Civitai's
        AutoV2 (10 hex, upper case).

        Raises:
            AmbiguousHandle: the hex prefix starts the hashes of several entries.
        """
        from conceptlib.schemas.names import name_key, strip_brackets

        inner = strip_brackets(handle)
        for column, key in (
            ("name_key", name_key(handle)),
            ("name_key", name_key(inner)),
            ("token_key", name_key(handle)),
            ("token_key", name_key(f"<{inner}>")),
            ("token_key", name_key(inner)),
        ):
            info = self.by_key(column, key)
            if info is not None:
                return info
        if hashes and is_hash_prefix(handle):
            found = self.by_hash(handle)
            if len(found) > 1:
                from conceptlib.errors import AmbiguousHandle

                n = max(16, len(handle.strip()) + 4)
                shown = [f"{e.name} ({what} sha256 {sha[:n]}...)" for e, what, sha in found]
                raise AmbiguousHandle(
                    f"{handle.strip()!r} starts the hashes of {len(found)} embeddings: "
                    + ", ".join(shown[:10])
                    + (f" and {len(shown) - 10} more" if len(shown) > 10 else ""),
                    hint="give more hex digits, or the name",
                    candidates=[e.name for e, _, _ in found],
                )
            if found:
                return self.by_key("name_key", name_key(found[0][0].name))
        return None

    def by_hash(self, prefix: str) -> list[tuple[EmbeddingInfo, str, str]]:
        """Entries whose tensor or file SHA-256 starts with ``prefix`` (8 to 64 hex digits,
        any case), each as ``(info, "tensor" | "file", the matching hash)``, tensor matches
        first, at most 101. Both columns are indexed; a prefix is a range scan on each.

        A1111's short hash is the first 12 hex digits of the file's SHA-256, Civitai's
        AutoV2 the first 10 in upper case (see :class:`EmbeddingInfo`), so both are
        file prefixes.
        """
        low = prefix.strip().lower()
        if not is_hash_prefix(low):
            return []
        cols = ", ".join(f"e.{c}" for c in EMBEDDING_COLUMNS)
        out: list[tuple[EmbeddingInfo, str, str]] = []
        seen: set[int | None] = set()
        for column, what in (("tensor_sha256", "tensor"), ("file_sha256", "file")):
            # Lower-case hex sorts below "g": [low, low + "g") is exactly the prefix.
            rows = self._exec(
                f"SELECT {cols} FROM embedding e WHERE e.{column} >= ? AND e.{column} < ? "
                "ORDER BY e.name_key LIMIT 101",
                [low, low + "g"],
            )
            for info in self._infos(rows):
                if info.id not in seen:
                    seen.add(info.id)
                    out.append((info, what, getattr(info, column)))
        return out

    def suggest(self, name: str, n: int = 3) -> list[str]:
        """Names and tokens close to ``name``, for "did you mean" hints."""
        import difflib

        from conceptlib.schemas.names import name_key, strip_brackets

        keys = self.all_name_keys()
        names = [k[0] for k in keys] + [strip_brackets(k[1]) for k in keys]
        matches = difflib.get_close_matches(name_key(strip_brackets(name)), names, n=n, cutoff=0.5)
        return list(dict.fromkeys(matches))

    def handle(self, column: str, key: str) -> tuple[str, int] | None:
        """``(name, num_vectors)`` of the entry whose ``column`` equals ``key`` (light)."""
        assert column in ("name_key", "token_key", "tensor_sha256")
        rows = self._exec(f"SELECT name, num_vectors FROM embedding WHERE {column} = ?", [key])
        return (rows[0][0], int(rows[0][1])) if rows else None

    def blob(self, sha: str) -> bytes | None:
        """A blob kept in the database (shared catalogs), or ``None``."""
        rows = self._exec("SELECT data FROM blob WHERE sha256 = ?", [sha])
        return bytes(rows[0][0]) if rows else None

    def by_file_sha256(self, sha: str) -> list[EmbeddingInfo]:
        rows = self._exec(
            "SELECT "
            + ", ".join(f"e.{c}" for c in EMBEDDING_COLUMNS)
            + " FROM embedding e WHERE e.file_sha256 = ?",
            [sha],
        )
        return self._infos(rows)

    def all_name_keys(self) -> list[tuple[str, str, int]]:
        """(name_key, token_key, num_vectors) of every entry, for suggestions and clashes."""
        return [
            (r[0], r[1], r[2])
            for r in self._exec("SELECT name_key, token_key, num_vectors FROM embedding")
        ]

    def count(self) -> int:
        return int(self._exec("SELECT count(*) FROM embedding")[0][0])

    def tags(self) -> list[tuple[str, int]]:
        return [
            (r[0], int(r[1]))
            for r in self._exec(
                "SELECT t.name, count(et.embedding_id) FROM tag t LEFT JOIN embedding_tag et "
                "ON et.tag_id = t.id GROUP BY t.name ORDER BY t.name"
            )
        ]

    # ------------------------------------------------------------------ assembly

    def _infos(self, rows: list[tuple], *, details: bool = False) -> list[EmbeddingInfo]:
        if not rows:
            return []
        infos: list[EmbeddingInfo] = []
        by_id: dict[int, EmbeddingInfo] = {}
        for r in rows:
            d = dict(zip(EMBEDDING_COLUMNS, r, strict=False))
            info = EmbeddingInfo(
                id=d["id"],
                name=d["name"],
                token=d["token"],
                kind=d["kind"],
                family=d["family"],
                num_vectors=d["num_vectors"],
                dims=[int(x) for x in str(d["dims"]).split(",") if x],
                tensor_sha256=d["tensor_sha256"],
                file_sha256=d["file_sha256"],
                source=d["source"],
                source_ref=d["source_ref"],
                base_model=d["base_model"],
                base_model_fingerprint=d["base_model_fingerprint"],
                initializer=d["initializer"],
                training_images_hash=d["training_images_hash"],
                training_image_count=d["training_image_count"],
                description=d["description"],
                license=d["license"],
                flags=json.loads(d["flags"] or "[]"),
                extra=json.loads(d["extra"] or "{}"),
                parents=json.loads(d["parents"] or "[]"),
                version=d["version"] or 1,
                created_at=d["created_at"],
                updated_at=d["updated_at"],
            )
            infos.append(info)
            by_id[info.id] = info  # type: ignore[index]
        ids = list(by_id)
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            marks = ", ".join("?" for _ in chunk)
            for eid, tag in self._exec(
                "SELECT et.embedding_id, t.name FROM embedding_tag et JOIN tag t "
                f"ON t.id = et.tag_id WHERE et.embedding_id IN ({marks}) ORDER BY t.name",
                chunk,
            ):
                by_id[eid].tags.append(tag)
            if details:
                for eid, filename, role, sha, size in self._exec(
                    "SELECT embedding_id, filename, role, sha256, size FROM preview "
                    f"WHERE embedding_id IN ({marks}) ORDER BY id",
                    chunk,
                ):
                    by_id[eid].previews.append(PreviewInfo(filename, role, sha, size))
                for row in self._exec(
                    "SELECT embedding_id, id, config, steps, final_loss, wall_time_s, device, "
                    "base_model, base_model_fingerprint, training_images_hash, "
                    "training_image_count, initializer, status, created_at, clip_i, clip_t, "
                    "metrics FROM training_run "
                    f"WHERE embedding_id IN ({marks}) ORDER BY id",
                    chunk,
                ):
                    by_id[row[0]].training_runs.append(
                        TrainingRunInfo(
                            id=row[1],
                            config=json.loads(row[2] or "{}"),
                            steps=row[3],
                            final_loss=row[4],
                            wall_time_s=row[5],
                            device=row[6],
                            base_model=row[7],
                            base_model_fingerprint=row[8],
                            training_images_hash=row[9],
                            training_image_count=row[10],
                            initializer=row[11],
                            status=row[12],
                            created_at=row[13],
                            clip_i=row[14],
                            clip_t=row[15],
                            metrics=json.loads(row[16] or "{}"),
                        )
                    )
                for row in self._exec(
                    "SELECT embedding_id, repo_id, revision, commit_sha, direction, filename, "
                    f"synced_at FROM hub_sync WHERE embedding_id IN ({marks}) ORDER BY id",
                    chunk,
                ):
                    by_id[row[0]].syncs.append(SyncInfo(*row[1:]))
        return infos


#: Hex digits a hash handle needs at least (fewer would match too much by chance).
MIN_HASH_PREFIX = 8


def is_hash_prefix(text: str) -> bool:
    """True for 8 to 64 hex digits (either case): what :meth:`Reader.by_hash` looks up."""
    t = text.strip()
    return MIN_HASH_PREFIX <= len(t) <= 64 and all(c in "0123456789abcdefABCDEF" for c in t)


def normalize_tag(tag: str) -> str:
    """Tags are stored NFKC, trimmed, lower-case, inner whitespace as '-'."""
    import unicodedata

    t = unicodedata.normalize("NFKC", tag).strip().casefold()
    return "-".join(t.split())


def open_sqlite_readonly(path: str, busy_timeout_s: float = 30.0) -> Any:
    """A read-only sqlite3 connection for the fast CLI path."""
    import sqlite3

    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, timeout=busy_timeout_s, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    return conn


def schema_version_sqlite(conn: Any) -> int:
    try:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except Exception:
        return 0
    return int(row[0] or 0)

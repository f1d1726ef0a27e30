"""THE place for SQL that only one database can run.

Everything else in :mod:`conceptlib.catalog` is portable SQL (plain SELECT /
INSERT / UPDATE / DELETE, standard DDL through SQLAlchemy Core). What differs
between SQLite and PostgreSQL lives here: connection pragmas, full-text search,
integrity checks.

SQLite: FTS5 virtual table ``embedding_fts`` (rowid = embedding.id) kept in step by
the application inside the same write transaction.
PostgreSQL: a table ``embedding_fts`` with the same columns plus a generated
``tsvector`` (``simple`` configuration, so names and tags are not stemmed) under a
GIN index, kept in step the same way.
Other databases: a ``LIKE`` search over the same columns.
"""

from __future__ import annotations

import re
from typing import Any

FTS_TABLE = "embedding_fts"


def is_sqlite(dialect_name: str) -> bool:
    return dialect_name == "sqlite"


def is_postgres(dialect_name: str) -> bool:
    return dialect_name == "postgresql"


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean psycopg 3 (the driver we depend on)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def lock_for_migration(conn: Any, dialect_name: str) -> None:
    """Serialize migrations across processes (SQLite's BEGIN IMMEDIATE already does)."""
    if is_postgres(dialect_name):
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7306120061)")


# --------------------------------------------------------------------------- pragmas


def sqlite_pragmas(dbapi_connection: Any, busy_timeout_s: float) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def sqlite_begin_statement(readonly: bool) -> str:
    """Write transactions take the write lock up front, so they never deadlock on upgrade."""
    return "BEGIN" if readonly else "BEGIN IMMEDIATE"


def ensure_tags(conn: Any, dialect_name: str, names: list[str]) -> dict[str, int]:
    """Ids of the tags ``names``, creating missing ones; safe against concurrent writers
    (a tag created by another transaction meanwhile is simply found)."""
    from sqlalchemy import select

    from conceptlib.catalog.models import TagRow

    tag_t = TagRow.__table__
    if not names:
        return {}
    if is_sqlite(dialect_name):
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    elif is_postgres(dialect_name):
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:  # pragma: no cover - other databases: plain inserts of what is missing
        dialect_insert = None
    found = dict(
        conn.execute(select(tag_t.c.name, tag_t.c.id).where(tag_t.c.name.in_(names))).all()
    )
    missing = [n for n in names if n not in found]
    if missing:
        if dialect_insert is not None:
            stmt = dialect_insert(tag_t).on_conflict_do_nothing(index_elements=["name"])
        else:
            from sqlalchemy import insert as stmt_insert

            stmt = stmt_insert(tag_t)
        conn.execute(stmt, [{"name": n} for n in missing])
        found.update(
            conn.execute(select(tag_t.c.name, tag_t.c.id).where(tag_t.c.name.in_(missing))).all()
        )
    return found


def insert_blobs(conn: Any, dialect_name: str, blobs: dict[str, bytes], now: str) -> None:
    """Keep blobs in the database (shared catalogs); existing ones are left as they are."""
    from sqlalchemy import select

    from conceptlib.catalog.models import BlobRow

    if not blobs:
        return
    blob_t = BlobRow.__table__
    have = {
        r[0] for r in conn.execute(select(blob_t.c.sha256).where(blob_t.c.sha256.in_(list(blobs))))
    }
    rows = [
        {"sha256": sha, "size": len(data), "data": data, "created_at": now}
        for sha, data in blobs.items()
        if sha not in have
    ]
    if not rows:
        return
    if is_postgres(dialect_name):
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    conn.execute(dialect_insert(blob_t).on_conflict_do_nothing(index_elements=["sha256"]), rows)


# --------------------------------------------------------------------------- full-text search


_PG_FTS_SELECT = (
    "SELECT e.id, e.name, e.token, coalesce(e.description, ''), coalesce(("
    "SELECT string_agg(t.name, ' ' ORDER BY t.name) FROM tag t JOIN embedding_tag et "
    "ON et.tag_id = t.id WHERE et.embedding_id = e.id), '') FROM embedding e "
)


def create_fts(conn: Any, dialect_name: str) -> None:
    """Create the full-text index (migration 2) and fill it from existing rows."""
    if is_postgres(dialect_name):
        conn.exec_driver_sql(
            f"CREATE TABLE {FTS_TABLE} ("
            "rowid INTEGER PRIMARY KEY REFERENCES embedding(id) ON DELETE CASCADE, "
            "name TEXT NOT NULL, token TEXT NOT NULL, description TEXT NOT NULL, "
            "tags TEXT NOT NULL, tsv tsvector GENERATED ALWAYS AS (to_tsvector('simple', "
            "name || ' ' || token || ' ' || description || ' ' || tags)) STORED)"
        )
        conn.exec_driver_sql(f"CREATE INDEX ix_{FTS_TABLE}_tsv ON {FTS_TABLE} USING GIN (tsv)")
        conn.exec_driver_sql(
            f"INSERT INTO {FTS_TABLE}(rowid, name, token, description, tags) {_PG_FTS_SELECT}"
        )
        return
    if not is_sqlite(dialect_name):
        return
    conn.exec_driver_sql(
        f"CREATE VIRTUAL TABLE IF NOT EXISTS {FTS_TABLE} USING fts5("
        "name, token, description, tags, tokenize='unicode61 remove_diacritics 2', "
        "prefix='2 3')"
    )
    ids = [eid for (eid,) in conn.exec_driver_sql("SELECT id FROM embedding").fetchall()]
    refresh_fts_many(conn, dialect_name, ids)


def refresh_fts(conn: Any, dialect_name: str, embedding_id: int) -> None:
    """Rewrite the full-text row of one embedding (call in the same transaction)."""
    refresh_fts_many(conn, dialect_name, [embedding_id])


def refresh_fts_many(conn: Any, dialect_name: str, ids: list[int]) -> None:
    """Rewrite the full-text rows of these embeddings: two statements per 500 ids."""
    if not ids:
        return
    if is_postgres(dialect_name):
        conn.exec_driver_sql(f"DELETE FROM {FTS_TABLE} WHERE rowid = ANY(%s)", (list(ids),))
        conn.exec_driver_sql(
            f"INSERT INTO {FTS_TABLE}(rowid, name, token, description, tags) "
            f"{_PG_FTS_SELECT} WHERE e.id = ANY(%s)",
            (list(ids),),
        )
        return
    if not is_sqlite(dialect_name):
        return
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        conn.exec_driver_sql(f"DELETE FROM {FTS_TABLE} WHERE rowid IN ({marks})", tuple(chunk))
        conn.exec_driver_sql(
            f"INSERT INTO {FTS_TABLE}(rowid, name, token, description, tags) "
            "SELECT e.id, e.name, e.token, coalesce(e.description, ''), coalesce(("
            "SELECT group_concat(name, ' ') FROM (SELECT t.name AS name FROM tag t "
            "JOIN embedding_tag et ON et.tag_id = t.id WHERE et.embedding_id = e.id "
            f"ORDER BY t.name)), '') FROM embedding e WHERE e.id IN ({marks})",
            tuple(chunk),
        )


def delete_fts(conn: Any, dialect_name: str, embedding_id: int) -> None:
    if is_sqlite(dialect_name):
        conn.exec_driver_sql(f"DELETE FROM {FTS_TABLE} WHERE rowid = ?", (embedding_id,))
    elif is_postgres(dialect_name):
        conn.exec_driver_sql(f"DELETE FROM {FTS_TABLE} WHERE rowid = %s", (embedding_id,))


_WORD = re.compile(r"\w+", re.UNICODE)


def fts_match_expression(query: str) -> str | None:
    """Turn free text into an FTS5 expression: every word must match, as a prefix."""
    words = _WORD.findall(query)
    if not words:
        return None
    return " AND ".join(f'"{w}"*' for w in words)


def text_search_clause(dialect_name: str, query: str, param: str) -> tuple[str, list[Any]]:
    """SQL (qmark placeholders) restricting ``embedding e`` to rows matching ``query``."""
    if is_sqlite(dialect_name):
        expr = fts_match_expression(query)
        if expr is None:
            return "1=1", []
        return (f"e.id IN (SELECT rowid FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH ?)", [expr])
    if is_postgres(dialect_name):
        words = _WORD.findall(query.lower())
        if not words:
            return "1=1", []
        tsquery = " & ".join(f"{w}:*" for w in words)
        return (
            f"e.id IN (SELECT rowid FROM {FTS_TABLE} WHERE tsv @@ to_tsquery('simple', ?))",
            [tsquery],
        )
    words = _WORD.findall(query.lower())
    clauses, params = [], []
    for w in words:
        like = f"%{w}%"
        clauses.append(
            "(lower(e.name) LIKE ? OR lower(e.token) LIKE ? OR lower(coalesce(e.description,'')) "
            "LIKE ? OR e.id IN (SELECT et.embedding_id FROM embedding_tag et JOIN tag t ON "
            "t.id = et.tag_id WHERE t.name LIKE ?))"
        )
        params += [like, like, like, like]
    return (" AND ".join(clauses) or "1=1"), params


def fts_rank_order(dialect_name: str) -> str | None:
    return None


# --------------------------------------------------------------------------- integrity


def integrity_problems(conn: Any, dialect_name: str) -> list[str]:
    """Database-level integrity check on a SQLAlchemy connection; an empty list means
    intact. On SQLite prefer :meth:`Catalog.integrity_problems`, which runs
    :func:`sqlite_integrity_problems` on a fresh connection."""
    if is_postgres(dialect_name):
        # PostgreSQL enforces keys itself; check the search index matches its rows.
        missing = conn.exec_driver_sql(
            f"SELECT count(*) FROM embedding e LEFT JOIN {FTS_TABLE} f ON f.rowid = e.id "
            "WHERE f.rowid IS NULL"
        ).scalar()
        return [f"full-text index: {missing} embeddings missing"] if missing else []
    if not is_sqlite(dialect_name):
        return []
    return sqlite_integrity_problems(lambda sql: conn.exec_driver_sql(sql).fetchall())


def sqlite_integrity_problems(run: Any) -> list[str]:
    """SQLite's own checks: ``PRAGMA integrity_check`` (which checks FTS5 tables too from
    SQLite 3.44 on), ``PRAGMA foreign_key_check`` and FTS5's ``integrity-check`` command.

    ``run(sql)`` executes one statement and returns its rows. The caller gives a
    connection that has seen every commit (see :meth:`Catalog.integrity_problems`): on
    SQLite 3.45+ a long-lived connection checks FTS5 against a stale copy of its
    segment list and reports a sound index as malformed after another process wrote.
    """
    problems = []
    rows = run("PRAGMA integrity_check")
    if [r[0] for r in rows] != ["ok"]:
        problems += [f"integrity_check: {r[0]}" for r in rows]
    for row in run("PRAGMA foreign_key_check"):
        problems.append(f"foreign key violation in {row[0]} row {row[1]} -> {row[2]}")
    try:
        run(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES('integrity-check')")
    except Exception as exc:  # the FTS index disagrees with its content
        problems.append(f"full-text index: {exc}")
    return problems

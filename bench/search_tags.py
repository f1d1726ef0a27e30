"""Tag-filtered search on a large catalog, before and after migration 6, side by side.

Migration 6 replaced the index on ``embedding_tag (tag_id)`` by one on ``(tag_id,
embedding_id)``, so a tag filter reads one range of one index instead of an index
entry plus a table row per tagged entry. The SQL of the queries did not change, so
one run can measure both schemas with the same code: the catalog of
``bench/search_catalog.py`` (built on first use), and a copy of it put back to the
version-5 index. Both are read through :class:`~conceptlib.catalog.query.Reader` on a
read-only connection (opening a ``Library`` would migrate the old copy), the queries
interleaved so that both see the same machine load.

For each query: one gallery page (the match count plus 48 entries, what
``conceptlib serve`` runs) and the whole result (what ``Library.search`` and
``conceptlib search`` without ``--limit`` return). With ``--postgres URL`` (a server
where this may create and drop two databases) the same rows are copied into
PostgreSQL under both schemas and measured there too.

Usage:
    python bench/search_tags.py --home /tmp/bench100k            # 100,000 entries
    python bench/search_tags.py --n 20000 --runs 11 --postgres postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

QUERIES = {
    "tag-17": {"tags": ["tag-17"]},
    "tag-17 + sdxl": {"tags": ["tag-17"], "family": "sdxl"},
    "tag-17 + tag-18": {"tags": ["tag-17", "tag-18"]},
    "tag-17 + text 'watercolor'": {"tags": ["tag-17"], "text": "watercolor"},
    "tag-17, newest first": {"tags": ["tag-17"], "order": "newest"},
    "tag-17 + sdxl, by CLIP-I": {"tags": ["tag-17"], "family": "sdxl", "order": "clip-i"},
}

TO_VERSION_5 = (
    "DROP INDEX ix_embedding_tag_tag_id_embedding_id",
    "CREATE INDEX ix_embedding_tag_tag_id ON embedding_tag (tag_id)",
    "DELETE FROM schema_migrations WHERE version = 6",
)


def sqlite_readers(home: Path, work: Path) -> dict:
    from conceptlib.catalog.query import Reader
    from conceptlib.registry.library import Library

    Library.open(home).close()  # migrated to the current version
    old = work / "catalog-v5.db"
    src = sqlite3.connect(home / "catalog.db")
    dst = sqlite3.connect(old)
    src.backup(dst)
    src.close()
    for sql in TO_VERSION_5:
        dst.execute(sql)
    dst.commit()
    dst.close()
    out = {}
    for label, path in (("v5 (tag_id)", old), ("v6 (tag_id, embedding_id)", home / "catalog.db")):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        out[f"SQLite {sqlite3.sqlite_version}, {label}"] = Reader(conn, "sqlite")
    return out


def postgres_readers(home: Path, url: str) -> dict:
    import psycopg

    from conceptlib.catalog.db import Catalog
    from conceptlib.catalog.query import Reader

    url = url.replace("postgresql+psycopg://", "postgresql://")
    base = url.rsplit("/", 1)[0]
    src = sqlite3.connect(f"file:{home / 'catalog.db'}?mode=ro", uri=True)
    out = {}
    for name, downgrade in (("conceptlib_bench_v5", True), ("conceptlib_bench_v6", False)):
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name}")
            admin.execute(f"CREATE DATABASE {name}")
        cat = Catalog(base.replace("postgresql://", "postgresql+psycopg://") + f"/{name}")
        cat.migrate()
        cat.dispose()
        conn = psycopg.connect(f"{base}/{name}")
        for table in ("embedding", "tag", "embedding_tag", "embedding_fts"):
            cols = [r[1] for r in src.execute(f"PRAGMA table_info({table})")]
            if table == "embedding_fts":  # SQLite's FTS5 table: PostgreSQL's has a rowid column
                cols = ["rowid", *cols]
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy,
            ):
                for row in src.execute(f"SELECT {', '.join(cols)} FROM {table}"):
                    copy.write_row(row)
        if downgrade:
            for sql in TO_VERSION_5:
                conn.execute(sql)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
        index = "v5 (tag_id)" if downgrade else "v6 (tag_id, embedding_id)"
        out[f"PostgreSQL {version}, {index}"] = Reader(conn, "postgresql", paramstyle="format")
    src.close()
    return out


def measure(readers: dict, runs: int) -> None:
    from conceptlib.catalog.query import SearchQuery

    for label, spec in QUERIES.items():
        page = SearchQuery(**spec, limit=48)
        whole = SearchQuery(**spec)
        times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in readers}
        results = {}
        for k, r in readers.items():  # warm up, and the same entries from every schema
            results[k] = ([e.id for e in r.search(page)], r.count_matching(page))
        assert len({repr(v) for v in results.values()}) == 1, (label, results)
        for _ in range(runs):
            for k, r in readers.items():
                t0 = time.perf_counter()
                r.count_matching(page)
                r.search(page)
                times[k][0].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                r.search(whole)
                times[k][1].append((time.perf_counter() - t0) * 1000)
        n = next(iter(results.values()))[1]
        for k, (p, w) in times.items():
            print(
                f"{label} ({n} matches) | {k} | page of 48 + count "
                f"{statistics.median(p):.2f} ms | all matches {statistics.median(w):.2f} ms"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--postgres", default=None, help="a server URL (creates two databases)")
    args = ap.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="conceptlib-bench-"))
    if not (home / "catalog.db").exists():
        from search_catalog import build

        print(f"built {args.n} entries in {build(home, args.n):.1f} s")
    work = Path(tempfile.mkdtemp(prefix="conceptlib-bench-v5-"))
    try:
        readers = sqlite_readers(home, work)
        if args.postgres:
            readers.update(postgres_readers(home, args.postgres))
        print(f"catalog: {next(iter(readers.values())).count()} entries; median of {args.runs}")
        measure(readers, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

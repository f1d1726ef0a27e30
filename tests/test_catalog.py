"""The catalog: migrations, SQLite settings, search."""

import sqlite3
import threading
import time

import pytest
from sqlalchemy import inspect

from conceptlib.catalog import migrations
from conceptlib.catalog.db import Catalog
from conceptlib.catalog.query import SCHEMA_VERSION
from conceptlib.registry.library import Library


def test_schema_version_constant_matches_migrations():
    assert SCHEMA_VERSION == migrations.LATEST
    assert [m.version for m in migrations.MIGRATIONS] == list(range(1, migrations.LATEST + 1))


def test_fresh_catalog_records_every_migration(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    assert cat.migrate() == [1, 2, 3, 4, 5, 6]
    assert cat.migrate() == []
    con = sqlite3.connect(tmp_path / "c.db")
    rows = con.execute("SELECT version, name FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_models_match_migrated_schema(tmp_path):
    from sqlmodel import SQLModel

    import conceptlib.catalog.models  # noqa: F401  (registers the tables)

    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    cat.migrate()
    insp = inspect(cat.engine)
    for table in SQLModel.metadata.sorted_tables:
        migrated = {c["name"] for c in insp.get_columns(table.name)}
        modelled = {c.name for c in table.columns}
        assert modelled == migrated, table.name


def test_upgrade_from_first_schema_keeps_rows_and_indexes_them(tmp_path):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    cat = Catalog(url)
    assert cat.migrate(target=1) == [1]
    con = sqlite3.connect(tmp_path / "catalog.db")
    con.execute(
        "INSERT INTO embedding (name, name_key, token, token_key, kind, family, num_vectors, dims,"
        " tensor_sha256, file_sha256, source, description, created_at, updated_at) VALUES "
        "('old-one', 'old-one', 'old-one', 'old-one', 'style', 'sd1', 1, '768', ?, ?, 'file',"
        " 'an old watercolor', '2024-01-01T00:00:00.000000Z', '2024-01-01T00:00:00.000000Z')",
        ("a" * 64, "b" * 64),
    )
    con.commit()
    con.close()
    cat.dispose()
    lib = Library.open(tmp_path)  # migrates 2 and 3 on open
    info = lib.get("old-one")
    assert info.version == 1 and info.parents == [] and info.base_model_fingerprint is None
    assert [e.name for e in lib.search("watercolor")] == ["old-one"]
    assert lib.catalog.schema_version() == migrations.LATEST
    lib.close()


def test_foreign_keys_cascade(lib, emb_factory):
    from conceptlib.schemas.records import Preview

    lib.add_embedding(emb_factory(), name="ea", tags=["t"], previews=[Preview("p.png", b"png")])
    lib.remove("ea")
    dump = lib.dump()
    assert dump["embedding_tag"] == [] and dump["preview"] == [] and dump["embedding_source"] == []


def test_write_transactions_begin_immediate(tmp_path):
    """SQLite: a second writer waits for the first instead of failing on lock upgrade."""
    lib = Library.open(tmp_path)
    order = []

    def slow_writer():
        with lib.catalog.connection() as conn:
            conn.exec_driver_sql("INSERT INTO tag (name) VALUES ('first')")
            order.append("first-in")
            time.sleep(0.3)
        order.append("first-out")

    t = threading.Thread(target=slow_writer)
    t.start()
    time.sleep(0.1)
    with lib.catalog.connection() as conn:
        order.append("second-in")
        conn.exec_driver_sql("INSERT INTO tag (name) VALUES ('second')")
    t.join()
    lib.close()
    assert order == ["first-in", "first-out", "second-in"]


def test_search_filters(lib, emb_factory):
    lib.add_embedding(
        emb_factory("sd1", 1, 1),
        name="wash",
        kind="style",
        tags=["style", "watercolor"],
        description="soft watercolor washes",
    )
    lib.add_embedding(
        emb_factory("sdxl", 2, 2),
        name="neon-xl",
        kind="style",
        tags=["style"],
        description="neon city",
    )
    lib.add_embedding(emb_factory("sd2", 1, 3), name="golem", kind="object", source="hub")
    lib.add_embedding(
        emb_factory("sd1", 4, 4), name="bad-hands", kind="negative", tags=["negative"]
    )
    names = lambda xs: [x.name for x in xs]  # noqa: E731
    assert names(lib.search("watercolor")) == ["wash"]
    assert names(lib.search("water")) == ["wash"]  # prefix
    assert names(lib.search("soft wash")) == ["wash"]  # every word
    assert names(lib.search("neon")) == ["neon-xl"]
    assert names(lib.search(tags=["style"])) == ["neon-xl", "wash"]
    assert names(lib.search(tags=["style", "watercolor"])) == ["wash"]
    assert names(lib.search(tags=["STYLE"], family="sdxl")) == ["neon-xl"]
    assert names(lib.search(kind="negative")) == ["bad-hands"]
    assert names(lib.search(source="hub")) == ["golem"]
    assert names(lib.search(compatible_with="sdxl")) == ["bad-hands", "neon-xl", "wash"]
    assert names(lib.search(compatible_with="sd2")) == ["golem"]
    assert names(lib.search(compatible_with="sd1")) == ["bad-hands", "wash"]
    assert names(lib.search("neon", tags=["negative"])) == []
    assert names(lib.search("'\"*( AND OR")) == []  # FTS syntax is escaped, never an error


def test_tags_update_full_text_index(lib, emb_factory):
    lib.add_embedding(emb_factory(), name="plain")
    assert lib.search("impressionist") == []
    lib.tag("plain", add=["impressionist"])
    assert [e.name for e in lib.search("impressionist")] == ["plain"]
    lib.tag("plain", remove=["impressionist"])
    assert lib.search("impressionist") == []
    lib.rename("plain", "renamed")
    assert [e.name for e in lib.search("renamed")] == ["renamed"]
    assert lib.verify().ok


@pytest.mark.parametrize("n", [1])
def test_dialect_is_the_only_place_with_sqlite_sql(n):
    """FTS5/PRAGMA appear only in catalog/dialect.py (and the read-only fast path)."""
    import pathlib

    root = pathlib.Path(__file__).parents[1] / "src" / "conceptlib"
    offenders = []
    for p in root.rglob("*.py"):
        if p.name in ("dialect.py",):
            continue
        text = p.read_text()
        for needle in ("fts5", "MATCH ?", "PRAGMA integrity", "BEGIN IMMEDIATE", "group_concat"):
            if needle in text:
                offenders.append(f"{p.name}: {needle}")
    allowed = {"query.py: PRAGMA integrity"}
    assert [o for o in offenders if o not in allowed] == []


@pytest.mark.pg_empty
def test_upgrade_from_first_schema_on_every_backend(backend, tmp_path):
    """The same migrations run on SQLite and PostgreSQL; an upgrade keeps rows searchable."""
    import os

    from conceptlib.config import load_settings

    settings = load_settings(tmp_path)
    cat = Catalog(settings.url)
    assert cat.migrate(target=1) == [1]
    with cat.connection() as conn:
        conn.exec_driver_sql(
            "INSERT INTO embedding (name, name_key, token, token_key, kind, family, num_vectors, "
            "dims, tensor_sha256, file_sha256, source, description, created_at, updated_at) VALUES "
            "('old-one', 'old-one', 'old-one', 'old-one', 'style', 'sd1', 1, '768', '"
            + "a" * 64
            + "', '"
            + "b" * 64
            + "', 'file', 'an old watercolor', "
            "'2024-01-01T00:00:00.000000Z', '2024-01-01T00:00:00.000000Z')"
        )
    cat.dispose()
    assert bool(os.environ.get("CONCEPTLIB_DATABASE_URL")) == (backend == "postgres")
    lib = Library.open(tmp_path)
    try:
        assert lib.catalog.schema_version() == migrations.LATEST
        assert [e.name for e in lib.search("watercolor")] == ["old-one"]
        assert [e.name for e in lib.search("old")] == ["old-one"]
        assert lib.verify().integrity == "ok"
    finally:
        lib.close()


def _writer(home: str, start: int, count: int, dup_every: int) -> int:
    from conceptlib.registry.library import Library
    from conceptlib.registry.samples import sample_embedding

    lib = Library.open(home)
    done = 0
    for i in range(start, start + count):
        seed = i if i % dup_every else 0  # every dup_every-th add repeats seed 0
        try:
            lib.add_embedding(
                sample_embedding("sd1", 1, seed), name=f"w{i}", tags=["shared", f"t{i % 3}"]
            )
            done += 1
        except Exception as exc:  # AlreadyExists is expected for the duplicates
            assert type(exc).__name__ == "AlreadyExists", repr(exc)
    lib.close()
    return done


def test_several_processes_write_one_catalog(backend, tmp_path):
    """4 processes x 25 adds with deliberate duplicates: exact count, no lock error."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    home = str(tmp_path / "home")
    Library.open(home).close()
    with ctx.Pool(4) as pool:
        done = pool.starmap(_writer, [(home, p * 25 + 1, 25, 10) for p in range(4)])
    lib = Library.open(home)
    try:
        # seeds 0 repeat on i % 10 == 0 (i = 10, 20, ..., 100): one of them wins.
        assert lib.count() == sum(done) == 100 - 10 + 1
        assert len(lib.search(tags=["shared"])) == lib.count()
        assert lib.verify().ok
    finally:
        lib.close()


def test_migration_4_keeps_the_blob_table():
    assert migrations.MIGRATIONS[3].name.startswith("blobs in the database")


@pytest.mark.postgres
def test_two_machines_share_one_postgres_catalog(pg_database, tmp_path, emb_factory):
    """What machine A registers, machine B can load, export and preview; removals and gc
    are seen by both."""
    from conceptlib.schemas.records import Preview

    a = Library.open(tmp_path / "machine-a")
    b = Library.open(tmp_path / "machine-b")
    try:
        assert a.shares_blobs and b.shares_blobs
        emb = emb_factory("sdxl", 2, 7)
        a.add_embedding(
            emb, name="neon-xl", tags=["style"], previews=[Preview("p.png", b"\x89PNG x")]
        )
        info = b.get("neon-xl")
        assert not b.store.has(info.tensor_sha256)  # nothing local on B yet
        loaded = b.load("neon-xl")
        assert loaded.tensor_sha256 == emb.tensor_sha256 and b.store.has(info.tensor_sha256)
        assert b.preview_path(info, "p.png").read_bytes() == b"\x89PNG x"
        out = b.export("neon-xl", "sdxl", tmp_path / "out.safetensors")
        assert out[0].exists()
        # B's cache may be empty: verify still passes (the database copy counts).
        b.store.remove(info.tensor_sha256)
        assert b.verify().ok
        b.remove("neon-xl")
        assert a.find("neon-xl") is None
        with a.reader() as r:
            assert r.blob(info.tensor_sha256) is None
        # An orphan in the database (a crash after writing blobs) is collected by gc.
        from conceptlib.catalog import dialect
        from conceptlib.catalog.models import utcnow

        with a.catalog.connection() as conn:
            dialect.insert_blobs(conn, a.catalog.dialect_name, {"f" * 64: b"junk"}, utcnow())
        a.gc()
        with a.reader() as r:
            assert r.blob("f" * 64) is None
    finally:
        a.close()
        b.close()

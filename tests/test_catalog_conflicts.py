"""Writers that conflict: a transaction the database aborts (PostgreSQL's deadlock or
serialization failure) is a typed CatalogConflict, and the library's commits run again.

Found by CI: eight writers importing rival batches deadlocked on ``uq_embedding_name_key``
and one writer died with a raw driver traceback.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from conceptlib.catalog import dialect
from conceptlib.catalog.db import Catalog
from conceptlib.errors import CatalogConflict


def _conflict() -> CatalogConflict:
    return CatalogConflict("the catalog x aborted a write that conflicted with a concurrent one")


def test_a_commit_aborted_by_a_conflict_runs_again(lib, emb_factory, monkeypatch):
    real = dialect.refresh_fts_many
    calls = []

    def conflicting_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise _conflict()  # inside the transaction: it rolls back
        return real(*args, **kwargs)

    monkeypatch.setattr(dialect, "refresh_fts_many", conflicting_once)
    info = lib.add_embedding(emb_factory(seed=3), name="after-conflict")
    assert len(calls) == 2
    assert [e.name for e in lib.list()] == ["after-conflict"]
    assert lib.get("after-conflict").tensor_sha256 == info.tensor_sha256
    assert lib.verify().problems == []


def test_an_import_batch_aborted_by_a_conflict_runs_again(lib, emb_factory, tmp_path, monkeypatch):
    from conceptlib.registry.formats.safetensors_io import write_safetensors

    folder = tmp_path / "batch"
    folder.mkdir()
    for i in range(3):
        emb = emb_factory(seed=10 + i)
        (folder / f"conf-{i}.safetensors").write_bytes(
            write_safetensors({"emb_params": emb.vectors["clip_l"]})
        )
    real = dialect.refresh_fts_many
    calls = []

    def conflicting_twice(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise _conflict()
        return real(*args, **kwargs)

    monkeypatch.setattr(dialect, "refresh_fts_many", conflicting_twice)
    report = lib.import_paths([folder])
    assert [o.reason for o in report.outcomes] == [None] * 3
    assert [o.status for o in report.outcomes] == ["imported"] * 3
    assert sorted(e.name for e in lib.list()) == ["conf-0", "conf-1", "conf-2"]


def test_a_conflict_that_never_clears_is_reported_and_changes_nothing(
    lib, emb_factory, monkeypatch, _isolated_home, catalog_snapshot
):
    from conceptlib.registry.library import Library

    lib.add_embedding(emb_factory(seed=1), name="kept-one")
    lib.close()
    before = catalog_snapshot(_isolated_home)

    def always(*args, **kwargs):
        raise _conflict()

    with monkeypatch.context() as m:
        m.setattr(dialect, "refresh_fts_many", always)
        with Library.open() as again, pytest.raises(CatalogConflict) as err:
            again.add_embedding(emb_factory(seed=2), name="never-lands")
    assert err.value.exit_code == 7
    assert "conflicted with a concurrent one" in err.value.message
    assert catalog_snapshot(_isolated_home) == before


@pytest.mark.postgres
def test_a_real_deadlock_is_a_catalog_conflict(pg_database):
    """Two transactions insert the same two unique tags in opposite orders: PostgreSQL
    aborts one of them; that one must surface as CatalogConflict, the other commits."""
    cat = Catalog(pg_database)
    cat.migrate()
    barrier = threading.Barrier(2, timeout=20)
    outcomes: dict[str, object] = {}

    def writer(label: str, first: str, second: str) -> None:
        try:
            with cat.connection() as conn:
                conn.execute(text("INSERT INTO tag (name) VALUES (:n)"), {"n": first})
                barrier.wait()
                conn.execute(text("INSERT INTO tag (name) VALUES (:n)"), {"n": second})
            outcomes[label] = "committed"
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
            outcomes[label] = exc

    threads = [
        threading.Thread(target=writer, args=("a", "tag-x", "tag-y")),
        threading.Thread(target=writer, args=("b", "tag-y", "tag-x")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    kinds = sorted(type(v).__name__ if not isinstance(v, str) else v for v in outcomes.values())
    assert kinds == ["CatalogConflict", "committed"], outcomes
    with cat.read() as conn:
        names = sorted(r[0] for r in conn.execute(text("SELECT name FROM tag")))
    assert names == ["tag-x", "tag-y"]
    cat.dispose()


def _conflict_at_first_commit(monkeypatch) -> list[int]:
    """The database aborts the first write transaction at its end (as PostgreSQL does
    to one of two deadlocked writers): the work is rolled back and must run again."""
    from contextlib import contextmanager

    real = Catalog.write
    calls: list[int] = []

    @contextmanager
    def write(self):
        calls.append(1)
        with real(self) as session:
            yield session
            if len(calls) == 1:
                raise _conflict()

    monkeypatch.setattr(Catalog, "write", write)
    return calls


@pytest.mark.parametrize(
    "operation", ["tag", "untag", "update", "rename", "remove", "sync", "previews"]
)
def test_every_library_write_runs_again_after_a_conflict(lib, emb_factory, monkeypatch, operation):
    from conceptlib.schemas.records import Preview, SyncInfo

    lib.add_embedding(emb_factory(seed=21), name="writer", tags=["old"])
    calls = _conflict_at_first_commit(monkeypatch)
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    if operation == "tag":
        assert lib.tag("writer", add=["fresh"]).tags == ["fresh", "old"]
    elif operation == "untag":
        assert lib.tag("writer", remove=["old"]).tags == []
    elif operation == "update":
        assert lib.update("writer", description="after").description == "after"
    elif operation == "rename":
        assert lib.rename("writer", "writer-two").name == "writer-two"
    elif operation == "remove":
        lib.remove("writer")
        assert lib.list() == []
    elif operation == "sync":
        lib.record_sync("writer", SyncInfo(repo_id="u/r", revision="main", commit_sha="a" * 40,
                                            direction="push", filename="writer.safetensors"))  # fmt: skip
    else:
        info = lib.add_previews("writer", [Preview(filename="p.png", data=png, role="preview")])
        assert [p.filename for p in info.previews] == ["p.png"]
    assert len(calls) == 2  # the aborted transaction and the one that committed
    if operation == "sync":
        assert [s.repo_id for s in lib.get("writer").syncs] == ["u/r"]
    assert lib.verify().problems == []


def test_removing_shared_blobs_runs_again_after_a_conflict(lib, emb_factory, monkeypatch):
    """On a shared PostgreSQL catalog, remove() also deletes the database copies of the
    blobs nothing names any more: that transaction is retried like every other write."""
    from contextlib import contextmanager

    if not lib.shares_blobs:
        pytest.skip("only a shared (PostgreSQL) catalog keeps blobs in the database")
    lib.add_embedding(emb_factory(seed=31), name="shared-gone")
    real = Catalog.connection
    calls: list[int] = []

    @contextmanager
    def connection(self):
        calls.append(1)
        with real(self) as conn:
            yield conn
            if len(calls) == 1:
                raise _conflict()

    monkeypatch.setattr(Catalog, "connection", connection)
    lib.remove("shared-gone")
    assert len(calls) == 2
    assert lib.list() == []
    assert lib.verify().problems == []

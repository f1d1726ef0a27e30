"""``verify`` tells the truth on every SQLite: another process writing never makes a
sound catalog look broken.

SQLite 3.45+ (Ubuntu 24.04, macOS, current Pythons) checks FTS5 in ``PRAGMA
integrity_check`` against a long-lived connection's stale copy of its segment list:
after another connection wrote, it reported ``malformed inverted index`` or ``fts5:
checksum mismatch`` for a sound index. And FTS5's ``integrity-check`` command is a write:
run inside verify's read transaction, a commit by another writer in between failed it
with "database is locked". CI runs these tests a second time on a current SQLite
(``.ci/sqlite-current``).
"""

from __future__ import annotations

import sqlite3
import threading

from conceptlib.registry.library import Library


def test_verify_after_another_library_wrote_is_clean(tmp_path, emb_factory):
    first, second = Library.open(tmp_path), Library.open(tmp_path)
    try:
        first.add_embedding(emb_factory(seed=1), name="first-one")
        assert first.verify().problems == []  # the pool now holds a warm connection
        for i in range(3):
            second.add_embedding(emb_factory(seed=10 + i), name=f"second-{i}")
            report = first.verify()
            assert report.problems == [], (sqlite3.sqlite_version, report.problems)
            assert report.integrity == "ok"
        second.rename("second-0", "renamed-0")
        second.remove("second-1")
        assert first.verify().problems == []
    finally:
        first.close()
        second.close()


def test_verify_waits_for_a_concurrent_writer_instead_of_failing(tmp_path, emb_factory):
    lib = Library.open(tmp_path)
    lib.add_embedding(emb_factory(seed=2), name="sound-one")
    assert lib.verify().problems == []
    holding, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            con = sqlite3.connect(tmp_path / "catalog.db", timeout=10, isolation_level=None)
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO tag (name) VALUES ('held-by-writer')")
            holding.set()
            done.wait(1.0)  # verify starts while the write lock is held
            con.execute("COMMIT")
            con.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            holding.set()

    t = threading.Thread(target=writer)
    t.start()
    assert holding.wait(10)
    report = lib.verify()
    done.set()
    t.join(10)
    lib.close()
    assert errors == []
    assert report.problems == [], report.problems

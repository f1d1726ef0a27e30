"""Engine set-up, transactions and migrations for the catalog.

SQLite: WAL, foreign keys, a busy timeout, and write transactions that begin
IMMEDIATE (the write lock is taken at BEGIN, so two writers queue instead of
failing with "database is locked" on lock upgrade). PostgreSQL when
``CONCEPTLIB_DATABASE_URL`` names one.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError
from sqlmodel import Session

from conceptlib.catalog import dialect, migrations
from conceptlib.catalog.models import utcnow
from conceptlib.errors import (
    CatalogConflict,
    CatalogCorrupt,
    CatalogError,
    CatalogLocked,
    CatalogTooNew,
)

T = TypeVar("T")

#: SQLSTATEs of a transaction the server aborted because of a concurrent one
#: (PostgreSQL: deadlock_detected, serialization_failure).
_CONFLICT_SQLSTATES = {"40P01", "40001"}


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


def translate_db_error(exc: BaseException, where: str) -> CatalogError:
    """Turn a driver error into the typed error a user can act on."""
    text = str(getattr(exc, "orig", exc))
    if getattr(getattr(exc, "orig", exc), "sqlstate", None) in _CONFLICT_SQLSTATES:
        return CatalogConflict(
            f"the catalog {where} aborted a write that conflicted with a concurrent one "
            f"({text.splitlines()[0]})",
            hint="run the command again: nothing of the aborted write was applied",
        )
    if _is_locked(exc):
        return CatalogLocked(
            f"the catalog {where} is locked by another writer past the busy timeout",
            hint="wait for the other conceptlib process to finish, or raise "
            "CONCEPTLIB_BUSY_TIMEOUT (seconds)",
        )
    low = text.lower()
    if "not a database" in low or "malformed" in low or "corrupt" in low:
        return CatalogCorrupt(
            f"the catalog {where} is corrupt ({text.splitlines()[0]})",
            hint="restore it from a backup, or move it aside and re-import your embeddings",
        )
    if "disk" in low and ("full" in low or "i/o" in low):
        from conceptlib.errors import DiskFull

        return DiskFull(f"writing the catalog {where} failed: {text.splitlines()[0]}")  # type: ignore[return-value]
    return CatalogError(f"catalog error at {where}: {text.splitlines()[0] if text else exc!r}")


class Catalog:
    """A connection factory for one catalog database."""

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        url = dialect.normalize_url(url)
        self.url = url
        self.busy_timeout_s = busy_timeout_s
        self.is_sqlite = url.startswith("sqlite")
        self.where = url.split("///", 1)[-1] if self.is_sqlite else _redact_url(url)
        if self.is_sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False}
            )
            self._install_sqlite_hooks()
        else:
            self.engine = create_engine(
                url,
                pool_pre_ping=True,
                connect_args={"connect_timeout": max(1, int(busy_timeout_s))},
            )
        self.dialect_name = self.engine.dialect.name

    def _install_sqlite_hooks(self) -> None:
        timeout = self.busy_timeout_s

        @event.listens_for(self.engine, "connect")
        def _connect(dbapi_connection, _record):  # noqa: ANN001
            # Let SQLAlchemy, not pysqlite, decide when transactions begin.
            dbapi_connection.isolation_level = None
            dialect.sqlite_pragmas(dbapi_connection, timeout)

        @event.listens_for(self.engine, "begin")
        def _begin(conn):  # noqa: ANN001
            readonly = conn.get_execution_options().get("conceptlib_readonly", False)
            conn.exec_driver_sql(dialect.sqlite_begin_statement(readonly))

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """Driver errors become the typed errors a user can act on. A unique or
        foreign-key violation passes through: the library turns it into its own error."""
        try:
            yield
        except IntegrityError:
            raise
        except (OperationalError, DatabaseError, sqlite3.OperationalError) as exc:
            raise translate_db_error(exc, self.where) from exc

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A session in one write transaction, committed on success, rolled back on error."""
        with (
            self._translated(),
            Session(self.engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only connection (a deferred transaction on SQLite)."""
        with self._translated(), self.engine.connect() as conn:
            conn = conn.execution_options(conceptlib_readonly=True)
            with conn.begin():
                yield conn

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """A write connection in one transaction (Core, no ORM)."""
        with self._translated(), self.engine.connect() as conn, conn.begin():
            yield conn

    def integrity_problems(self) -> list[str]:
        """The database's integrity problems (an empty list means intact).

        On SQLite the checks run on a fresh connection of their own (never a pooled one:
        from SQLite 3.45 a long-lived connection checks FTS5 against a stale copy of its
        segment list and reports a sound index as malformed once another process has
        written), inside a write transaction of their own, begun IMMEDIATE (FTS5's ``integrity-check`` is a
        write: taken up front, the lock waits for a concurrent writer instead of failing
        with "database is locked" when it commits meanwhile), rolled back at the end.

        Raises:
            CatalogLocked: another writer held the lock past the busy timeout.
        """
        path = self.where if self.is_sqlite else ""
        if not self.is_sqlite or not path or path == ":memory:":
            with self.read() as conn:
                return dialect.integrity_problems(conn, self.dialect_name)
        with self._translated():
            raw = sqlite3.connect(path, timeout=self.busy_timeout_s, isolation_level=None)
            try:
                dialect.sqlite_pragmas(raw, self.busy_timeout_s)
                raw.execute(dialect.sqlite_begin_statement(readonly=False))
                try:
                    return dialect.sqlite_integrity_problems(
                        lambda sql: raw.execute(sql).fetchall()
                    )
                finally:
                    raw.execute("ROLLBACK")
            finally:
                raw.close()

    def retrying(self, work: Callable[[], T], *, attempts: int = 6) -> T:
        """Run ``work`` (which opens its own write transaction) and run it again when the
        database aborts it as a conflict with a concurrent writer (:class:`CatalogConflict`:
        on PostgreSQL two writers inserting the same unique keys in different orders
        deadlock, and the server aborts one of them). The pause between attempts grows
        (10 ms to about 0.3 s, jittered); the last attempt's conflict is raised.
        """
        for attempt in range(attempts):
            try:
                return work()
            except CatalogConflict:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.01 * (2**attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    def write_retrying(self, work: Callable[[Session], T], *, attempts: int = 6) -> T:
        """Run ``work(session)`` in a write transaction of its own (:meth:`write`), and in a
        fresh one again when the database aborts it as a conflict (:meth:`retrying`). Every
        write of the library goes through here, so no writer dies of a deadlock a retry
        would have cleared. ``work`` must be safe to run again: it reads what it needs
        inside the transaction or from values computed before it.
        """

        def once() -> T:
            with self.write() as session:
                return work(session)

        return self.retrying(once, attempts=attempts)

    # ------------------------------------------------------------------ migrations

    def schema_version(self) -> int:
        with self.connection() as conn:
            versions = migrations.applied_versions(conn)
        return max(versions, default=0)

    def migrate(self, target: int | None = None) -> list[int]:
        """Apply pending migrations up to ``target`` (default: all). Returns those applied."""
        target = migrations.LATEST if target is None else target
        applied: list[int] = []
        for attempt in range(3):
            try:
                with self.connection() as conn:
                    dialect.lock_for_migration(conn, self.dialect_name)
                    done = set(migrations.applied_versions(conn))
                if done and max(done) > migrations.LATEST:
                    raise CatalogTooNew(
                        f"the catalog {self.where} has schema version {max(done)}; this conceptlib "
                        f"knows up to {migrations.LATEST}",
                        hint="upgrade conceptlib",
                    )
                for m in migrations.MIGRATIONS:
                    if m.version in done or m.version > target:
                        continue
                    with self.connection() as conn:
                        dialect.lock_for_migration(conn, self.dialect_name)
                        # Re-check inside the write transaction: another process may have
                        # applied it while we waited for the lock.
                        if m.version in migrations.applied_versions(conn):
                            continue
                        m.apply(conn)
                        conn.exec_driver_sql(
                            "INSERT INTO schema_migrations (version, name, applied_at) "
                            "VALUES (?, ?, ?)"
                            if self.is_sqlite
                            else "INSERT INTO schema_migrations (version, name, applied_at) "
                            "VALUES (%s, %s, %s)",
                            (m.version, m.name, utcnow()),
                        )
                    applied.append(m.version)
                return applied
            except CatalogLocked:
                if attempt == 2:
                    raise
                time.sleep(0.2)
        return applied

    def dispose(self) -> None:
        self.engine.dispose()


def _redact_url(url: str) -> str:
    """Hide the password of a database URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url

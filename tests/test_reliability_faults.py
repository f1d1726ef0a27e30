"""Disk-full and I/O errors injected into blob writes and commits.

Blob writes: ``os.open``, ``os.write`` (a short write, then the error, as a full disk
does), ``os.fsync`` of the file and of its folder, and ``os.replace`` fail with
ENOSPC, EDQUOT or EIO, but only for files under the blob store; the bulk import's
``sync()`` is tested with its per-file fallback. Commits: the driver's ``COMMIT``
fails with "disk I/O error", and a real "database or disk is full" is produced by
SQLite itself under a file-size limit (``RLIMIT_FSIZE``).

After each fault: the caller gets one :class:`ConceptlibError` (or, for a bulk
import, the file's outcome says why); the catalog is exactly as before; no temp or
partial file is visible in the store; any complete blob left behind is an orphan
that ``verify`` lists and ``gc`` removes; and the same operation succeeds once the
fault is gone.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reliability_support import report_figures

from conceptlib.errors import ConceptlibError, DiskFull, StoreError
from conceptlib.registry import store as store_module
from conceptlib.registry.formats.safetensors_io import write_safetensors
from conceptlib.registry.library import Library
from conceptlib.schemas.records import Preview

pytestmark = pytest.mark.timeout(60)  # each test; longer ones say so

RESULTS: list[dict[str, Any]] = []


# --------------------------------------------------------------------------- injection


class StoreFaults:
    """Fail one kind of OS call, on the ``nth`` call touching the store, with ``err``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.root = str(root)
        self.fds: dict[int, str] = {}
        self.call: str | None = None
        self.err = 0
        self.nth = 1
        self.seen = 0
        self.fired = 0
        self._short_written: set[int] = set()
        real_open, real_write, real_fsync = os.open, os.write, os.fsync
        real_close, real_replace = os.close, os.replace

        def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
            p = os.fspath(path)
            mine = p.startswith(self.root)
            if mine and not os.path.isdir(p):
                self._maybe("open")
            fd = real_open(path, flags, mode, dir_fd=dir_fd)
            if mine:
                self.fds[fd] = p
            return fd

        def fake_write(fd: int, data: Any) -> int:
            if fd in self.fds and self.call == "write":
                if self.err == errno.ENOSPC and fd not in self._short_written and len(data) > 1:
                    if self._due():
                        # a full disk first accepts part of the data, then refuses the rest
                        self._short_written.add(fd)
                        self.seen -= 1  # the refusal comes on the next call
                        return real_write(fd, bytes(memoryview(data)[: len(data) // 2]))
                elif fd in self._short_written or self._due():
                    self.fired += 1
                    raise OSError(self.err, os.strerror(self.err))
            return real_write(fd, data)

        def fake_fsync(fd: int) -> None:
            path = self.fds.get(fd)
            if path is not None:
                self._maybe("dir-fsync" if os.path.isdir(path) else "fsync")
            return real_fsync(fd)

        def fake_close(fd: int) -> None:
            self.fds.pop(fd, None)
            self._short_written.discard(fd)
            return real_close(fd)

        def fake_replace(src: Any, dst: Any, **kw: Any) -> None:
            if os.fspath(dst).startswith(self.root):
                self._maybe("replace")
            return real_replace(src, dst, **kw)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "write", fake_write)
        monkeypatch.setattr(os, "fsync", fake_fsync)
        monkeypatch.setattr(os, "close", fake_close)
        monkeypatch.setattr(os, "replace", fake_replace)

    def arm(self, call: str, err: int, nth: int = 1) -> None:
        self.call, self.err, self.nth, self.seen, self.fired = call, err, nth, 0, 0
        self._short_written.clear()

    def disarm(self) -> None:
        self.call = None

    def _due(self) -> bool:
        self.seen += 1
        return self.seen == self.nth

    def _maybe(self, call: str) -> None:
        if self.call == call and self._due():
            self.fired += 1
            raise OSError(self.err, os.strerror(self.err))


class FaultyConnection(sqlite3.Connection):
    """A driver connection whose COMMIT fails with an I/O error while armed."""

    armed = False

    def commit(self) -> None:
        if FaultyConnection.armed and self.in_transaction:
            FaultyConnection.fired += 1
            raise sqlite3.OperationalError("disk I/O error")
        super().commit()

    fired = 0


@pytest.fixture
def faulty_commits(monkeypatch: pytest.MonkeyPatch) -> type[FaultyConnection]:
    import sqlite3.dbapi2  # what SQLAlchemy's pysqlite dialect calls

    real = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        kwargs.setdefault("factory", FaultyConnection)
        return real(*args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    monkeypatch.setattr(sqlite3.dbapi2, "connect", connect)
    FaultyConnection.armed, FaultyConnection.fired = False, 0
    yield FaultyConnection
    FaultyConnection.armed = False


@contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """Writes past ``nbytes`` fail with EFBIG: SQLite reports "database or disk is full"."""
    import resource

    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)


# --------------------------------------------------------------------------- helpers


def _vec(seed: int, n: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 768)) * 0.014).astype(np.float32)


def _files(folder: Path, seeds: range) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for s in seeds:
        p = folder / f"f{s:03d}.safetensors"
        p.write_bytes(write_safetensors({"emb_params": _vec(s)}))
        out.append(p)
    return out


def store_state(lib: Library) -> tuple[list[str], list[str], list[str]]:
    """Listing, temp files, and files whose bytes do not hash to their name."""
    listing = lib.store.listing()
    temps = [t.name for t in lib.store.iter_temp_files()]
    partial = []
    for rel in listing:
        p = lib.store.root / rel
        if len(p.name) == 64 and hashlib.sha256(p.read_bytes()).hexdigest() != p.name:
            partial.append(rel)
    return listing, temps, partial


def assert_unchanged(lib: Library, dump_before: dict, listing_before: list[str]) -> list[str]:
    """Catalog exactly as before, no temp or partial file; returns orphan blobs left."""
    assert lib.dump() == dump_before
    listing, temps, partial = store_state(lib)
    assert temps == [] and partial == []
    extra = sorted(set(listing) - set(listing_before))
    assert set(listing_before) <= set(listing)
    report = lib.verify()
    assert report.ok
    assert sorted(Path(e).name for e in extra) == sorted(report.orphan_blobs)
    return extra


ADD_OPS = ("add", "add-with-preview", "import-one", "import-batch")


def run_add(lib: Library, op: str, tmp: Path, seed: int) -> Any:
    """One write operation; returns what it returned (raises what it raised)."""
    if op == "add":
        from conceptlib.registry.formats.embedding import Embedding

        return lib.add_embedding(Embedding.from_slots({"clip_l": _vec(seed)}), name=f"a{seed}")
    if op == "add-with-preview":
        from conceptlib.registry.formats.embedding import Embedding
        from conceptlib.registry.formats.png_embed import plain_png

        return lib.add_embedding(
            Embedding.from_slots({"clip_l": _vec(seed)}),
            name=f"p{seed}",
            previews=[Preview("p.png", plain_png(8, 8, (seed % 256, 1, 2)))],
        )
    if op == "import-one":
        return lib.import_paths(_files(tmp / f"one-{seed}", range(seed, seed + 1)))
    return lib.import_paths(_files(tmp / f"batch-{seed}", range(seed, seed + 3)))


def failed(result_or_exc: Any) -> bool:
    """An operation failed as a whole: an exception, or every file rejected."""
    if isinstance(result_or_exc, BaseException):
        return True
    outcomes = getattr(result_or_exc, "outcomes", None)
    return outcomes is not None and all(o.status == "rejected" for o in outcomes)


def _attempt(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ConceptlibError as exc:
        assert "\n" not in exc.message
        return exc


# --------------------------------------------------------------------------- blob writes

BLOB_FAULTS = [
    ("open", errno.ENOSPC),
    ("open", errno.EDQUOT),
    ("write", errno.ENOSPC),
    ("write", errno.EIO),
    ("write", errno.EDQUOT),
    ("fsync", errno.EIO),
    ("replace", errno.EIO),
    ("replace", errno.ENOSPC),
]
#: Imports defer the fsync to the batch's ``sync()``: test_bulk_sync_failing_is_an_error.
BLOB_CASES = [
    pytest.param(call, err, op, id=f"{op}-{call}-{errno.errorcode[err]}")
    for call, err in BLOB_FAULTS
    for op in ADD_OPS
    if not (call == "fsync" and op.startswith("import"))
]


def check_after_fault(lib: Library, outcome: Any, dump: dict, listing: list[str]) -> list[str]:
    """An exception leaves the catalog exactly as it was; an import report's rejected
    files are absent and only its imported files were added. Returns orphan blobs."""
    if isinstance(outcome, BaseException):
        return assert_unchanged(lib, dump, listing)
    names_before = {row.split(",")[1].strip(" '") for row in dump["embedding"]}
    imported = {o.name for o in outcome.outcomes if o.status == "imported"}
    rejected = [o for o in outcome.outcomes if o.status == "rejected"]
    assert rejected and {o.error for o in rejected} <= {"disk_full", "store_error"}
    assert {e.name for e in lib.list()} == names_before | imported
    for o in rejected:
        assert lib.by_tensor_sha256(o.tensor_sha256) is None
    listing_now, temps, partial = store_state(lib)
    assert temps == [] and partial == []
    report = lib.verify()
    assert report.ok
    return report.orphan_blobs


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("call", "err", "op"), BLOB_CASES)
def test_blob_write_faults_change_nothing(
    call: str, err: int, op: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Library.open(tmp_path / "home") as lib:
        run_add(lib, "add", tmp_path, 1)  # a catalog with one entry in it
        faults = StoreFaults(monkeypatch, lib.store.root)
        monkeypatch.setattr(store_module, "_syncfs", lambda path: False)  # per-file fsyncs
        dump, listing = lib.dump(), lib.store.listing()
        nth = 2 if op == "add-with-preview" and call != "replace" else 1
        faults.arm(call, err, nth)
        outcome = _attempt(lambda: run_add(lib, op, tmp_path, 10))
        faults.disarm()
        assert faults.fired, f"{op} made no {call} call on the store"
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, StoreError), outcome
            if err in (errno.ENOSPC, errno.EDQUOT):
                assert isinstance(outcome, DiskFull), outcome
        else:
            assert any(o.status == "rejected" for o in outcome.outcomes), (
                f"{op} with {call} {errno.errorcode[err]} reported success"
            )
        orphans = check_after_fault(lib, outcome, dump, listing)
        lib.gc()
        assert lib.verify().orphan_blobs == []
        again = run_add(lib, op, tmp_path, 10)
        assert not failed(again)
        assert lib.verify().ok
    RESULTS.append(
        {"where": f"blob {call}", "errno": errno.errorcode[err], "op": op, "orphans": len(orphans)}
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", ADD_OPS)
def test_fsync_of_the_blob_folder_failing_is_an_error(
    op: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO on the folder's fsync means the rename may not survive a crash: the row must
    not be committed (today ``_fsync_dir`` swallows the error)."""
    with Library.open(tmp_path / "home") as lib:
        run_add(lib, "add", tmp_path, 1)
        faults = StoreFaults(monkeypatch, lib.store.root)
        monkeypatch.setattr(store_module, "_syncfs", lambda path: False)
        dump, listing = lib.dump(), lib.store.listing()
        faults.arm("dir-fsync", errno.EIO)
        outcome = _attempt(lambda: run_add(lib, op, tmp_path, 10))
        faults.disarm()
        assert faults.fired
        assert failed(outcome), f"{op}: a failed folder fsync was ignored and the row committed"
        assert_unchanged(lib, dump, listing)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("op", ("import-one", "import-batch"))
def test_bulk_sync_failing_is_an_error(
    op: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bulk import defers fsyncs to one ``sync()`` before its commit. When that sync
    fails (EIO on a blob's fsync), the rows must not be committed: today
    ``BlobStore.sync`` swallows the error and the batch is committed."""
    with Library.open(tmp_path / "home") as lib:
        run_add(lib, "add", tmp_path, 1)
        faults = StoreFaults(monkeypatch, lib.store.root)
        monkeypatch.setattr(store_module, "_syncfs", lambda path: False)
        dump, listing = lib.dump(), lib.store.listing()
        faults.arm("fsync", errno.EIO)
        outcome = _attempt(lambda: run_add(lib, op, tmp_path, 10))
        faults.disarm()
        assert faults.fired
        assert failed(outcome), f"{op}: a failed fsync of the batch was ignored"
        assert_unchanged(lib, dump, listing)


# --------------------------------------------------------------------------- commits


@pytest.mark.timeout(120)
@pytest.mark.parametrize("op", ADD_OPS)
def test_commit_io_error_rolls_back(
    op: str, tmp_path: Path, faulty_commits: type[FaultyConnection]
) -> None:
    with Library.open(tmp_path / "home") as lib:
        run_add(lib, "add", tmp_path, 1)
        dump, listing = lib.dump(), lib.store.listing()
        faulty_commits.armed = True
        outcome = _attempt(lambda: run_add(lib, op, tmp_path, 10))
        faulty_commits.armed = False
        assert faulty_commits.fired
        assert isinstance(outcome, DiskFull), outcome
        assert "disk I/O error" in outcome.message
        orphans = assert_unchanged(lib, dump, listing)
        lib.gc()
        assert not failed(run_add(lib, op, tmp_path, 10))
        assert lib.verify().ok and lib.verify().orphan_blobs == []
    RESULTS.append({"where": "commit", "errno": "EIO", "op": op, "orphans": len(orphans)})


@pytest.mark.timeout(60)
def test_commit_io_error_on_tag_and_remove(
    tmp_path: Path, faulty_commits: type[FaultyConnection]
) -> None:
    with Library.open(tmp_path / "home") as lib:
        run_add(lib, "add", tmp_path, 1)
        lib.tag("a1", add=["kept"])
        dump, listing = lib.dump(), lib.store.listing()
        for action in (
            lambda: lib.tag("a1", add=["new"]),
            lambda: lib.tag("a1", remove=["kept"]),
            lambda: lib.remove("a1"),
        ):
            faulty_commits.armed = True
            outcome = _attempt(action)
            faulty_commits.armed = False
            assert isinstance(outcome, DiskFull), outcome
            assert assert_unchanged(lib, dump, listing) == []
        lib.remove("a1")
        assert lib.count() == 0 and lib.verify().ok
    RESULTS.append({"where": "commit", "errno": "EIO", "op": "tag/untag/remove", "orphans": 0})


def _truncate_wal(home: Path) -> None:
    conn = sqlite3.connect(home / "catalog.db")
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE and SIGXFSZ")
@pytest.mark.timeout(120)
@pytest.mark.parametrize("op", ("add", "import-one", "tag", "remove"))
def test_real_database_full_rolls_back(op: str, tmp_path: Path) -> None:
    """SQLite's own SQLITE_FULL: the WAL cannot grow past a file-size limit."""
    home = tmp_path / "home"
    files = _files(tmp_path / "in", range(10, 11))
    with Library.open(home) as lib:
        run_add(lib, "add", tmp_path, 1)
        lib.tag("a1", add=["kept"])
        dump, listing = lib.dump(), lib.store.listing()
        action = {
            "add": lambda: run_add(lib, "add", tmp_path, 10),
            "import-one": lambda: lib.import_paths(files),
            "tag": lambda: lib.tag("a1", add=["new"]),
            "remove": lambda: lib.remove("a1"),
        }[op]
        _truncate_wal(home)
        # room for a 3 KB blob and the WAL header plus one page, not for a transaction
        with file_size_limit(6000):
            outcome = _attempt(action)
        assert failed(outcome), f"{op} succeeded under the limit"
        if isinstance(outcome, BaseException):
            assert isinstance(outcome, DiskFull), outcome
        else:
            assert {o.error for o in outcome.outcomes} == {"disk_full"}
        orphans = assert_unchanged(lib, dump, listing)
        lib.gc()
        assert not failed(_attempt(action))
        assert lib.verify().ok and lib.verify().orphan_blobs == []
    RESULTS.append(
        {"where": "commit (SQLITE_FULL)", "errno": "EFBIG", "op": op, "orphans": len(orphans)}
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("op", ("add", "import-one"))
def test_failed_commit_leaves_the_store_as_it_was(
    op: str, tmp_path: Path, faulty_commits: type[FaultyConnection]
) -> None:
    """bad-inputs.md: after an error the blob store is exactly as before: the blobs a
    failed commit wrote (and nobody else uses) are removed."""
    with Library.open(tmp_path / "home") as lib:
        run_add(lib, "add", tmp_path, 1)
        listing = lib.store.listing()
        faulty_commits.armed = True
        _attempt(lambda: run_add(lib, op, tmp_path, 10))
        faulty_commits.armed = False
        assert lib.store.listing() == listing


def test_fault_figures() -> None:
    """Runs last in this module: how many faults were injected, and with what result."""
    if not RESULTS:
        pytest.skip("run with the rest of the module")
    report_figures(
        "faults",
        injected=len(RESULTS),
        rolled_back=len(RESULTS),
        orphan_blobs_left_for_gc=sum(r["orphans"] for r in RESULTS),
        kinds=sorted({f"{r['where']} {r['errno']}" for r in RESULTS}),
    )

"""The content-addressed blob store.

One file per blob, named by the SHA-256 of its bytes, under ``store/ab/abcdef...``.
Writes are atomic: a temp file in the same folder, fsync, rename, fsync of the
folder. A blob is always written before the catalog row that names it, so a crash
leaves at worst an orphan blob (removed by ``gc``), never a row without its blob.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

from conceptlib.errors import BlobCorrupt, DiskFull, StoreError

TMP_PREFIX = ".tmp-"


#: fsync on a folder is not supported everywhere; those answers are not failures.
_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EROFS}


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable. A real I/O error is raised: a row must not be
    committed for a blob whose name may not survive a crash."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise StoreError(f"could not open {path} to sync it: {exc.strerror or exc}") from None
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _FSYNC_UNSUPPORTED:
            raise StoreError(f"could not sync {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


_KNOWN_DIRS: set[str] = set()


def write_failed(exc: OSError, path: Path, tmp: Path, detail: str = "") -> StoreError:
    """The error for a failed atomic write of ``path`` through the temporary file ``tmp``
    (removed here, so no partial file is left): :class:`DiskFull` when the disk or quota
    is full, else :class:`StoreError`. ``detail`` follows the file name (a size)."""
    with contextlib.suppress(OSError):
        tmp.unlink()
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFull(
            f"no space left writing {path.name}{detail}",
            hint="free some disk space and run the command again; nothing was changed",
        )
    return StoreError(f"could not write {path}: {exc.strerror or exc}")


def atomic_write(path: Path, data: bytes, *, fsync: bool = True, _retry: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; on any error no partial file is visible."""
    parent = str(path.parent)
    if parent not in _KNOWN_DIRS:
        path.parent.mkdir(parents=True, exist_ok=True)
        _KNOWN_DIRS.add(parent)
    tmp = path.parent / f"{TMP_PREFIX}{secrets.token_hex(6)}-{path.name}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except FileNotFoundError:
        # The folder vanished since we created it (removed by hand): create and retry once.
        _KNOWN_DIRS.discard(parent)
        if not _retry:
            raise StoreError(f"could not write {path}: its folder cannot be created") from None
        atomic_write(path, data, fsync=fsync, _retry=False)
        return
    except OSError as exc:
        raise write_failed(exc, path, tmp, f" ({len(data)} bytes)") from None
    if fsync:
        _fsync_dir(path.parent)


def _syncfs(path: Path) -> bool:
    """Flush the whole filesystem holding ``path`` (Linux ``syncfs``); False if unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(path, os.O_RDONLY)
        try:
            return libc.syncfs(fd) == 0
        finally:
            os.close(fd)
    except (OSError, AttributeError):
        return False


class BlobStore:
    """Blobs named by their SHA-256 under ``root``.

    ``put(..., durable=False)`` defers the fsync: the caller must call :meth:`sync`
    before committing rows that name those blobs (bulk imports flush a whole batch
    with one filesystem sync instead of two fsyncs per file).
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._unsynced: list[Path] = []
        #: (sha256, mtime_ns) of blobs written by this object, for failed-commit clean-up.
        self.created: list[tuple[str, int]] = []

    def sync(self) -> None:
        """Make every blob written with ``durable=False`` durable."""
        if not self._unsynced:
            return
        pending, self._unsynced = self._unsynced, []
        if not self.fsync:
            return
        if _syncfs(self.root):
            return
        for p in pending:
            try:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DiskFull(f"no space left syncing {p.name}") from None
                raise StoreError(f"could not sync {p}: {exc.strerror or exc}") from None
        for d in {p.parent for p in pending}:
            _fsync_dir(d)

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, data: bytes, sha256: str | None = None, *, durable: bool = True) -> str:
        """Store ``data``; returns its SHA-256. An existing intact blob is kept as is
        (a damaged one, e.g. emptied by a crash, is rewritten)."""
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and sha256 != digest:
            raise StoreError(f"blob hash mismatch: expected {sha256}, data hashes to {digest}")
        target = self.path(digest)
        if target.is_file() and self.check(digest) is None:
            # Touch it: a failed writer cleaning up its own new blobs (see `created`)
            # leaves alone any blob someone else has used since.
            with contextlib.suppress(OSError):
                os.utime(target)
            return digest
        atomic_write(target, data, fsync=self.fsync and durable)
        if not durable:
            self._unsynced.append(target)
        self.created.append((digest, target.stat().st_mtime_ns))
        return digest

    def discard_created(self, since: int, referenced: set[str]) -> None:
        """Remove blobs this store object created after mark ``since`` that nothing
        references and nobody touched since (the clean-up of a failed commit)."""
        for digest, mtime in self.created[since:]:
            if digest in referenced:
                continue
            p = self.path(digest)
            try:
                if p.stat().st_mtime_ns == mtime:
                    p.unlink()
            except OSError:
                pass
        del self.created[since:]
        self._unsynced = [p for p in self._unsynced if p.exists()]

    def get(self, sha256: str, *, verify: bool = True) -> bytes:
        """Read a blob; with ``verify`` its hash is checked and a mismatch refused."""
        p = self.path(sha256)
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            raise BlobCorrupt(
                f"blob {sha256[:12]} is missing from the store ({p})",
                hint="run `conceptlib verify`; re-import the embedding to restore it",
            ) from None
        except OSError as exc:
            raise StoreError(f"could not read blob {sha256[:12]}: {exc.strerror}") from None
        if verify:
            found = hashlib.sha256(data).hexdigest()
            if found != sha256:
                raise BlobCorrupt(
                    f"blob {sha256[:12]} was altered on disk: it hashes to {found[:12]}",
                    hint="run `conceptlib verify`; re-import the embedding to restore it",
                )
        return data

    def check(self, sha256: str) -> str | None:
        """``None`` when the blob is present and intact, else a description of the problem."""
        p = self.path(sha256)
        if not p.is_file():
            return "missing"
        h = hashlib.sha256()
        with p.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        found = h.hexdigest()
        return None if found == sha256 else f"altered (hashes to {found[:12]})"

    def remove(self, sha256: str) -> bool:
        try:
            self.path(sha256).unlink()
            return True
        except FileNotFoundError:
            return False

    def iter_blobs(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for sub in sorted(self.root.iterdir()):
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sorted(sub.iterdir()):
                if f.is_file() and not f.name.startswith(TMP_PREFIX) and len(f.name) == 64:
                    yield f.name

    def iter_temp_files(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for sub in self.root.iterdir():
            if sub.is_dir():
                yield from (f for f in sub.iterdir() if f.name.startswith(TMP_PREFIX))

    def listing(self) -> list[str]:
        """Every file under the store (relative paths), for before/after comparisons."""
        if not self.root.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())

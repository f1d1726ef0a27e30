"""Keeping a library sound: checking every blob against its hash and the database's
integrity (``verify``), and removing what no row names (``gc``).

:class:`~conceptlib.registry.library.Library` exposes these as ``verify()`` and
``gc()``; the functions take the library as their first argument.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from conceptlib.errors import ConceptlibError
from conceptlib.registry.formats.embedding import sha256_hex
from conceptlib.schemas.records import VerifyReport

if TYPE_CHECKING:
    from conceptlib.registry.library import Library

__all__ = [
    "GC_GRACE_S",
    "GcResult",
    "collect_garbage",
    "delete_unreferenced_db_blobs",
    "referenced_blobs",
    "verify",
    "young_files",
]

ProgressCallback = Callable[[int, int, str], None]

#: Every blob a row names: an entry's vectors, its original file (kept by imports to be
#: written back by exports, :mod:`~conceptlib.registry.originals`) and its previews.
_REFERENCED = (
    "SELECT tensor_sha256 FROM embedding UNION SELECT file_sha256 FROM embedding "
    "UNION SELECT sha256 FROM preview"
)


def referenced_blobs(lib: Library) -> set[str]:
    """SHA-256 of every blob a row names (embeddings, their original files, previews).

    An entry's original file is named by ``file_sha256`` whether or not it was kept
    (trained entries, older catalogs): a name without a blob is not a problem."""
    with lib.reader() as r:
        rows = r._exec(_REFERENCED)
    return {x[0] for x in rows}


def delete_unreferenced_db_blobs(lib: Library, shas: Sequence[str]) -> None:
    """Drop database blobs that no row names (re-checked inside the transaction)."""
    from sqlalchemy import text

    def delete() -> None:
        with lib.catalog.connection() as conn:
            for sha in shas:
                conn.execute(
                    text(f"DELETE FROM blob WHERE sha256 = :s AND sha256 NOT IN ({_REFERENCED})"),
                    {"s": sha},
                )

    lib.catalog.retrying(delete)  # idempotent: run again when aborted as a conflict


def verify(lib: Library, *, on_progress: ProgressCallback | None = None) -> VerifyReport:
    """Check every blob against its hash, and the database's integrity."""

    report = VerifyReport()
    try:
        report.problems += lib.catalog.integrity_problems()
    except ConceptlibError as exc:
        report.problems.append(exc.message)
    if report.problems:
        report.integrity = "failed"
    with lib.reader() as r:
        rows = r._exec(
            "SELECT name, tensor_sha256, 'embedding' FROM embedding UNION ALL "
            "SELECT e.name, p.sha256, 'preview ' || p.filename FROM preview p "
            "JOIN embedding e ON e.id = p.embedding_id"
        )
    total = len(rows)
    referenced = set()
    for i, (ename, sha, what) in enumerate(rows):
        referenced.add(sha)
        problem = lib.store.check(sha)
        if problem == "missing" and lib.shares_blobs:
            # The local store is a cache: the database copy is what counts.
            with lib.reader() as r:
                data = r.blob(sha)
            problem = (
                "missing (also from the shared catalog)"
                if data is None
                else (None if sha256_hex(data) == sha else "altered in the shared catalog")
            )
        report.checked_blobs += 1
        if problem:
            report.problems.append(f"{ename}: {what} blob {sha[:12]} is {problem}")
        if on_progress:
            on_progress(i + 1, total, ename)
    # Original files are optional (not every entry has one): check those that are here.
    with lib.reader() as r:
        kept = r._exec("SELECT name, file_sha256 FROM embedding")
    for ename, sha in kept:
        if sha in referenced or not sha or not lib.store.has(sha):
            continue
        referenced.add(sha)
        report.checked_blobs += 1
        problem = lib.store.check(sha)
        if problem:
            report.problems.append(f"{ename}: original file blob {sha[:12]} is {problem}")
    report.orphan_blobs = [s for s in lib.store.iter_blobs() if s not in referenced]
    return report


#: ``gc``'s default grace period (seconds): files younger than this are spared, since
#: an import running elsewhere writes its blobs just before committing their rows.
GC_GRACE_S = 60.0


class GcResult(list):
    """What ``gc`` removed (a list of blob SHA-256 and temp-file names, as before), plus
    ``spared``: the orphans kept because they are younger than ``grace_s`` seconds."""

    def __init__(self, removed: Sequence[str], spared: Sequence[str], grace_s: float) -> None:
        super().__init__(removed)
        self.spared = list(spared)
        self.grace_s = grace_s


def young_files(paths: Sequence[Path], grace_s: float) -> list[Path]:
    """The files among ``paths`` modified less than ``grace_s`` seconds ago (what ``gc``
    with that grace period spares); files that vanished count as young."""
    if grace_s <= 0:
        return []
    cutoff = time.time() - grace_s
    young = []
    for p in paths:
        try:
            if p.stat().st_mtime >= cutoff:
                young.append(p)
        except OSError:
            young.append(p)
    return young


def collect_garbage(lib: Library, *, dry_run: bool = False, grace_s: float = 0.0) -> GcResult:
    """Remove blobs no row names, and temp files left by interrupted writes.

    ``grace_s`` spares blobs and temp files younger than that many seconds: a
    concurrent import writes (or touches, when reused) its blobs before committing
    the rows that name them, so a grace period keeps ``gc`` from racing it.

    Returns:
        The removed blobs' SHA-256 and the removed temp files' names (what would be
        removed, with ``dry_run``), with ``.spared``: the orphans (and temp files)
        kept for being younger than ``grace_s``.
    """
    referenced = referenced_blobs(lib)
    orphans = {lib.store.path(s): s for s in lib.store.iter_blobs() if s not in referenced}
    young = set(young_files(list(orphans), grace_s))
    removed = [s for p, s in orphans.items() if p not in young]
    all_temps = list(lib.store.iter_temp_files())
    young_temps = set(young_files(all_temps, grace_s))
    temps = [t for t in all_temps if t not in young_temps]
    spared = [orphans[p] for p in orphans if p in young] + [t.name for t in young_temps]
    if not dry_run:
        # Re-read the references right before deleting: a concurrent import may
        # have committed a row for a blob that looked orphaned a moment ago.
        referenced = referenced_blobs(lib)
        removed = [s for s in removed if s not in referenced]
        for s in removed:
            lib.store.remove(s)
        if lib.shares_blobs:
            with lib.reader() as r:
                db_orphans = [
                    x[0]
                    for x in r._exec(f"SELECT sha256 FROM blob WHERE sha256 NOT IN ({_REFERENCED})")
                ]
            delete_unreferenced_db_blobs(lib, db_orphans)
        for t in temps:
            with suppress(OSError):
                t.unlink()
    return GcResult(removed + [str(t.name) for t in temps], spared, grace_s)

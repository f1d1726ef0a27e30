"""Importing files and folders into the catalog: the loop behind
:meth:`~conceptlib.registry.library.Library.import_paths`.

Each file is read into a :class:`~conceptlib.registry.pending.PendingEntry`, checked
against the catalog and against the files before it in the same import (the same
name rules either way), and committed in batches. One bad file is that file's
rejection, never the end of the import.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.errors import ConceptlibError, EmbeddingFileError, NameCollision, UsageError
from conceptlib.registry import fields
from conceptlib.registry.folders import collect_files
from conceptlib.registry.pending import PendingEntry, name_for_family, prepare_file, validate_tag
from conceptlib.schemas.enums import Kind
from conceptlib.schemas.names import name_key
from conceptlib.schemas.records import ImportOutcome, ImportReport

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

ProgressCallback = Callable[[int, int, str], None]

#: Entries committed per transaction.
IMPORT_BATCH = 256


def import_paths(
    lib: Library,
    paths: Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    name: str | None = None,
    kind: Kind | str | None = None,
    tags: Sequence[str] = (),
    base_model: str | None = None,
    token: str | None = None,
    on_progress: ProgressCallback | None = None,
) -> ImportReport:
    """Import embedding files and whole A1111 / ComfyUI / InvokeAI embedding folders.

    Each file ends up ``imported``, ``present`` (naming the existing entry) or
    ``rejected`` (with the reason). ``name`` and ``token`` (the trigger token) apply to
    one file. On a ``present`` file, the options given (``kind``, ``tags``,
    ``base_model``, ``token``) are applied to the existing entry and listed in the
    outcome's ``changes``; ``name`` is not (``rename`` does that), which its ``notes``
    say. A derived name held by an entry of another family gets the family appended
    (``sd15/fancy-neg.pt`` and ``sdxl/fancy-neg.safetensors`` become ``fancy-neg`` and
    ``fancy-neg-sdxl``); every derived name or token is listed in the outcome's
    ``derived``. The name rules (no handle twice, no ``foo_N`` inside a multi-vector
    ``foo``'s diffusers expansion) hold inside one import exactly as against the
    catalog, in any order. Files a folder walk passed over are in ``report.skipped``.

    Raises:
        UsageError: ``name`` or ``token`` with more than one file.
        InvalidName: ``token`` or a tag breaks the name rules (before any file is read).
    """
    walked: list[tuple[Path, str]] = []
    files = list(collect_files(paths, recursive=recursive, skipped=walked))
    for option, value in (("--name", name), ("--token", token)):
        if value is not None and len(files) != 1:
            raise UsageError(f"{option} applies to one file; {len(files)} files were given")
    if token is not None:
        token = fields.checked_token(token)
    user_tags = [validate_tag(t) for t in tags]
    kind_value = Kind(kind).value if kind else None
    report = ImportReport(skipped=[{"path": str(f), "reason": why} for f, why in walked])
    batch: list[tuple[PendingEntry, ImportOutcome]] = []
    batch_keys: dict[str, tuple[str, int]] = {}  # name/token key -> (name, vectors)
    families: dict[str, tuple[str, str]] = {}  # name key -> (name, family), whole import
    seen_tensors: dict[str, str] = {}
    total = len(files)
    mark = len(lib.store.created)
    prepared = _prepared(files, name, kind_value, user_tags, base_model, token)
    for i, f, make in prepared:
        outcome = ImportOutcome(path=str(f), status="rejected")
        try:
            pending = make()
            outcome.tensor_sha256 = pending.tensor_sha256
            outcome.flags = list(pending.embedding.flags)
            outcome.notes = list(pending.notes)
            existing = (
                None
                if pending.tensor_sha256 in seen_tensors
                else lib.by_tensor_sha256(pending.tensor_sha256)
            )
            if pending.tensor_sha256 in seen_tensors:
                # Earlier in this import: the options given already apply to it.
                outcome.status, outcome.existing = "present", seen_tensors[pending.tensor_sha256]
                outcome.name = outcome.existing
            elif existing is not None:
                outcome.status, outcome.existing, outcome.name = (
                    "present",
                    existing.name,
                    existing.name,
                )
                outcome.changes, applied = _apply_options(
                    lib, existing, name, kind_value, user_tags, base_model, token
                )
                outcome.notes += applied
                outcome.token = outcome.changes.get("token", [None, existing.token])[1]
            else:
                if name is None:
                    _keep_families_apart(lib, pending, families)
                try:
                    with lib.reader() as r:
                        lib._check_names(r, pending, batch_keys)
                except NameCollision:
                    # Another writer may have committed these vectors meanwhile.
                    raced = lib.by_tensor_sha256(pending.tensor_sha256)
                    if raced is None:
                        raise
                    outcome.status, outcome.existing, outcome.name = (
                        "present",
                        raced.name,
                        raced.name,
                    )
                else:
                    lib._store_pending(pending)
                    batch.append((pending, outcome))
                    n = pending.embedding.num_vectors
                    batch_keys[name_key(pending.name)] = (pending.name, n)
                    batch_keys[name_key(pending.token)] = (pending.name, n)
                    families[name_key(pending.name)] = (
                        pending.name,
                        pending.embedding.family.value,
                    )
                    seen_tensors[pending.tensor_sha256] = pending.name
                    outcome.name, outcome.token = pending.name, pending.token
                    outcome.derived = [d.to_dict() for d in pending.derived]
        except ConceptlibError as exc:
            outcome.status, outcome.reason, outcome.error = "rejected", exc.message, exc.code
            outcome.existing = getattr(exc, "existing", None)
            outcome.exception = exc
        except OSError as exc:
            # Anything the file system says about one file (a name too long, a
            # permission, a file gone meanwhile) is that file's rejection.
            err = EmbeddingFileError(
                f"cannot be read: {exc.strerror or type(exc).__name__}", path=str(f)
            )
            outcome.status, outcome.reason, outcome.error = "rejected", err.message, err.code
            outcome.exception = err
        except (
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            AttributeError,
            OverflowError,
            RecursionError,
        ) as exc:
            # A reader bug must not abort a folder import: reject this file, go on.
            err = EmbeddingFileError(
                f"could not be read ({type(exc).__name__}: {exc}); please report this file",
                path=str(f),
            )
            outcome.status, outcome.reason, outcome.error = "rejected", err.message, err.code
            outcome.exception = err
        report.outcomes.append(outcome)
        if len(batch) >= IMPORT_BATCH:
            lib._flush(batch, mark)
            batch, batch_keys = [], {}  # committed: the catalog holds their handles now
            mark = len(lib.store.created)
        if on_progress:
            on_progress(i + 1, total, str(f))
    lib._flush(batch, mark)
    return report


def _prepared(
    files: Sequence[Path],
    name: str | None,
    kind: str | None,
    tags: list[str],
    base_model: str | None,
    token: str | None,
) -> Iterator[tuple[int, Path, Callable[[], PendingEntry]]]:
    """``(file index, file, make)`` for each entry to import: ``make()`` returns the
    pending entry or raises why it cannot be one. A LoRA file with ``bundle_emb.*``
    tensors gives one item per bundled embedding (:mod:`~conceptlib.registry.bundles`);
    any other file one item (:func:`~conceptlib.registry.pending.prepare_file`)."""
    from conceptlib.registry.bundles import prepare_bundles
    from conceptlib.registry.formats.bundle import has_bundles

    def fail(exc: Exception) -> Callable[[], PendingEntry]:
        def make() -> PendingEntry:
            raise exc

        return make

    for i, f in enumerate(files):
        if not has_bundles(f):
            yield i, f, partial(prepare_file, f, name, kind, tags, base_model, token=token)
            continue
        try:
            _lora, items = prepare_bundles(f, name, kind, tags, base_model, token=token)
        except (ConceptlibError, OSError) as exc:
            yield i, f, fail(exc)
            continue
        for item in items:
            yield i, f, fail(item) if isinstance(item, Exception) else partial(lambda p: p, item)


def _keep_families_apart(
    lib: Library, p: PendingEntry, families: Mapping[str, tuple[str, str]]
) -> None:
    """A derived name held by an entry of another family (in the catalog or earlier in
    this import) gets the family appended, recorded in ``p.derived``."""
    holder = lib.find(p.name)
    held = (holder.name, holder.family) if holder else families.get(name_key(p.name))
    if held is not None and held[1] != p.embedding.family.value:
        name_for_family(p, *held)


def _apply_options(
    lib: Library,
    existing: EmbeddingInfo,
    name: str | None,
    kind: str | None,
    tags: Sequence[str],
    base_model: str | None,
    token: str | None,
) -> tuple[dict[str, Any], list[str]]:
    """Apply an import's options to the entry a file turned out to be already.

    Kind, base model and token change in one transaction
    (:meth:`~conceptlib.registry.library.Library.update`, which checks them all first,
    so a refused token changes nothing), then the tags are added. A different ``name``
    is not applied; the note says how to rename.

    Returns:
        ``changes`` (field -> ``[old, new]``; ``tags``: the tags added) and ``notes``.
    """
    changes: dict[str, Any] = {}
    for field, value in (("kind", kind), ("base_model", base_model), ("token", token)):
        if value is not None and value != getattr(existing, field):
            changes[field] = [getattr(existing, field), value]
    if changes:
        lib.update(existing.name, **{k: new for k, (_old, new) in changes.items()})
    added = [t for t in tags if t not in existing.tags]
    if added:
        lib.tag(existing.name, add=added)
        changes["tags"] = added
    notes = []
    given = [
        option
        for option, value in (
            ("--kind", kind),
            ("--tag", tags),
            ("--base-model", base_model),
            ("--token", token),
        )
        if value
    ]
    if given and not changes:
        notes.append(f"{', '.join(given)}: already so, nothing changed")
    if name is not None and name_key(name) != name_key(existing.name):
        notes.append(
            f"--name {name} was not applied: these vectors are already {existing.name!r} "
            f"(conceptlib rename {existing.name} NEW renames it)"
        )
    return changes, notes

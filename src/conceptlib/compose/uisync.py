"""``ui-sync``: keep a UI's embeddings folder in step with the catalog.

The chosen entries (all, or those with ``--tag`` / ``--family``) are written into the
folder in the UI's layout, with the sidecars that UI shows:

==========  ==========================  ============================================
UI          embedding file              sidecars
==========  ==========================  ============================================
a1111       ``<name>.safetensors``      ``<name>.json`` (description, activation text,
                                        ``sd version``, negative flag),
                                        ``<name>.preview.png``, ``<name>.civitai.info``
comfyui     ``<name>.safetensors``      ``<name>.preview.png``, ``<name>.civitai.info``
invokeai    ``<name>.safetensors``      none (InvokeAI keeps metadata in its database);
                                        ``<name>`` as InvokeAI triggers it
swarmui     ``<name>.safetensors``      ``<name>.preview.png``, ``<name>.civitai.info``;
                                        ``<name>.swarm.json`` when the file's header
                                        has no ModelSpec (an original written back)
==========  ==========================  ============================================

The embedding files are those of ``export --for-prompt`` (:func:`~.export.files_for`:
the original file when it has this layout, else fresh bytes with ModelSpec metadata).
Entries of a family the UI does not load are skipped with the reason.

The folder keeps a manifest, :data:`MANIFEST_NAME`, listing every file this command
wrote with its SHA-256. A file is replaced or removed only while its bytes are still
the ones recorded; a file changed since (by the UI's metadata editor, by hand) is left
alone and reported as a conflict, and so is a file the manifest does not list: one
this command did not write is never overwritten or removed. Running it twice writes
nothing the second time. Every write is atomic (a temporary file, then a rename); the
manifest lists a file before it is written, so an interrupted run leaves nothing it
does not know about. Links inside the folder are never followed. Several UIs' folders
can be fed from one catalog: each folder has its own manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.errors import ConceptlibError, UsageError

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

__all__ = [
    "MANIFEST_NAME",
    "SYNC_UIS",
    "SyncAction",
    "SyncReport",
    "SyncSkip",
    "UiTarget",
    "ui_sync",
]

MANIFEST_NAME = ".conceptlib-sync.json"
#: A manifest larger than this is not one we wrote (a few hundred bytes per file).
MAX_MANIFEST_BYTES = 8 * 1024 * 1024
#: Largest preview image copied into a UI folder.
MAX_PREVIEW_BYTES = 16 * 1024 * 1024
_SD_VERSION = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3", "flux": "Flux"}
_ALL_FAMILIES = frozenset({"sd1", "sd2", "sdxl", "sd3", "flux"})
_CLIP_FAMILIES = frozenset({"sd1", "sd2", "sdxl"})


@dataclass(frozen=True)
class UiTarget:
    """What one UI's embeddings folder takes.

    Attributes:
        label: the UI's name in messages.
        layout: the export layout whose files it gets (a UI of :mod:`.formats`).
        families: the families whose embeddings the UI loads.
        sidecars: the sidecars written: ``a1111-json``, ``preview``, ``civitai-info``,
            ``swarm-json``.
        why_not: what the UI does with another family's file (the skip reason).
    """

    label: str
    layout: str
    families: frozenset[str]
    sidecars: tuple[str, ...]
    why_not: str


#: The UIs ``ui-sync --for`` writes. A1111 and InvokeAI load embeddings for the CLIP
#: text encoders of SD 1.x, 2.x and SDXL; ComfyUI loads each encoder's key (``clip_l``,
#: ``clip_g``, ``t5xxl``), so SD3 and FLUX embeddings too, and SwarmUI runs on ComfyUI.
UI_TARGETS: dict[str, UiTarget] = {
    "a1111": UiTarget(
        "A1111",
        "a1111",
        _CLIP_FAMILIES,
        ("a1111-json", "preview", "civitai-info"),
        "A1111 loads SD 1.x, SD 2.x and SDXL embeddings only",
    ),
    "comfyui": UiTarget(
        "ComfyUI", "comfyui", _ALL_FAMILIES, ("preview", "civitai-info"), "ComfyUI cannot load it"
    ),
    "invokeai": UiTarget(
        "InvokeAI",
        "invokeai",
        _CLIP_FAMILIES,
        (),
        "InvokeAI's embedding probe knows SD 1.x, SD 2.x and SDXL widths only",
    ),
    "swarmui": UiTarget(
        "SwarmUI",
        "comfyui",
        _ALL_FAMILIES,
        ("preview", "civitai-info", "swarm-json"),
        "SwarmUI cannot load it",
    ),
}
SYNC_UIS = tuple(UI_TARGETS)


@dataclass
class SyncAction:
    """One file: ``action`` is ``write`` (new), ``update`` (ours, contents changed),
    ``remove`` (ours, no longer selected), ``unchanged``, or ``conflict`` (left alone:
    ``reason`` says why). ``path`` is relative to the folder."""

    action: str
    path: str
    entry: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SyncSkip:
    """A selected entry that is not written (``reason``)."""

    name: str
    family: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SyncReport:
    """The plan (``dry_run``) or what was done."""

    ui: str
    folder: str
    dry_run: bool
    entries: list[str] = field(default_factory=list)
    actions: list[SyncAction] = field(default_factory=list)
    skipped: list[SyncSkip] = field(default_factory=list)

    def count(self, action: str) -> int:
        return sum(1 for a in self.actions if a.action == action)

    @property
    def conflicts(self) -> list[SyncAction]:
        return [a for a in self.actions if a.action == "conflict"]

    @property
    def changed(self) -> bool:
        return any(a.action in ("write", "update", "remove") for a in self.actions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ui": self.ui,
            "folder": self.folder,
            "dry_run": self.dry_run,
            "entries": self.entries,
            "actions": [a.to_dict() for a in self.actions],
            "skipped": [s.to_dict() for s in self.skipped],
            "counts": {
                k: self.count(k) for k in ("write", "update", "remove", "unchanged", "conflict")
            },
        }


# --------------------------------------------------------------------------- manifest


@dataclass
class _Record:
    sha256: str
    entry: str | None = None
    #: A hash being written right now (an interrupted run left it): also ours.
    pending: str | None = None

    def ours(self, sha: str) -> bool:
        return sha in (self.sha256, self.pending)


def _check_rel(rel: Any) -> str:
    """A manifest path or a planned file name: one plain, visible file name."""
    if (
        not isinstance(rel, str)
        or not rel
        or len(rel.encode("utf-8", "surrogatepass")) > 255
        or rel.startswith(".")
        or any(c in rel for c in "/\\\0")
        or not rel.isprintable()
    ):
        raise ValueError(f"{rel!r:.80} is not a plain file name")
    return rel


def _read_manifest(folder: Path, ui: str) -> dict[str, _Record]:
    """The manifest's records (empty when there is none).

    Raises:
        UsageError: a manifest that cannot be read, or one written for another UI:
            nothing is guessed about which files are ours.
    """
    path = folder / MANIFEST_NAME
    if not os.path.lexists(path):
        return {}
    hint = f"move {MANIFEST_NAME} away to start over (files it listed are then treated as not ours)"
    if path.is_symlink() or not path.is_file():
        raise UsageError(f"{path} is not a regular file; expected ui-sync's manifest", hint=hint)
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint=hint) from None
    try:
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES // (1024 * 1024)} MiB")
        d = json.loads(raw.decode("utf-8"))
        if not isinstance(d, dict) or d.get("tool") != "conceptlib" or d.get("version") != 1:
            raise ValueError("not a conceptlib ui-sync manifest (version 1)")
        files = d.get("files")
        if not isinstance(files, dict):
            raise ValueError("'files' is not an object")
        out: dict[str, _Record] = {}
        for rel, rec in files.items():
            _check_rel(rel)
            if not isinstance(rec, dict) or not _is_sha(rec.get("sha256")):
                raise ValueError(f"the record of {rel!r:.80} has no sha256")
            pending = rec.get("pending")
            entry = rec.get("entry")
            out[rel] = _Record(
                rec["sha256"],
                entry if isinstance(entry, str) else None,
                pending if _is_sha(pending) else None,
            )
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UsageError(f"{path} cannot be read as ui-sync's manifest: {exc}", hint=hint) from None
    if d.get("ui") != ui:
        raise UsageError(
            f"{folder} is kept in sync for {str(d.get('ui'))[:40]!r}, not {ui}; one folder "
            "belongs to one UI",
            hint="give each UI its own folder",
        )
    return out


def _is_sha(value: Any) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _manifest_bytes(ui: str, records: dict[str, _Record]) -> bytes:
    files = {}
    for rel in sorted(records):
        r = records[rel]
        rec: dict[str, Any] = {"sha256": r.sha256}
        if r.entry:
            rec["entry"] = r.entry
        if r.pending:
            rec["pending"] = r.pending
        files[rel] = rec
    d = {"tool": "conceptlib", "version": 1, "ui": ui, "files": files}
    return (json.dumps(d, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- files


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _current_sha(path: Path) -> str | None:
    """SHA-256 of the regular file at ``path`` (None: it cannot be read)."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _image_suffix(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".preview.png"
    if data.startswith(b"\xff\xd8\xff"):
        return ".preview.jpg"
    return None


def _preview(library: Library, info: EmbeddingInfo) -> bytes | None:
    """The entry's first preview picture (role ``preview``, then ``sample``, ``grid``)
    that is a PNG or JPEG and still matches its hash; None when it has none."""
    order = {"preview": 0, "sample": 1, "grid": 2}
    for p in sorted((p for p in info.previews if p.role in order), key=lambda p: order[p.role]):
        if p.size > MAX_PREVIEW_BYTES:
            continue
        try:
            data = library.preview_path(info, p.filename).read_bytes()
        except (OSError, ConceptlibError):
            continue
        if _sha(data) == p.sha256 and _image_suffix(data):
            return data
    return None


def _a1111_json(info: EmbeddingInfo, trigger: str) -> bytes:
    """A1111's ``<name>.json`` (its extra-networks card metadata)."""
    words = info.extra.get("trained_words")
    words = [w for w in words if isinstance(w, str)] if isinstance(words, list) else []
    negative = str(info.kind) == "negative"
    d: dict[str, Any] = {
        "description": info.description or "",
        "activation text": ", ".join(words) if words else trigger,
        "sd version": _SD_VERSION.get(str(info.family), "Unknown"),
        # ModelSpec's name for the flag; SwarmUI reads it from a .json beside a model too.
        "is_negative_embedding": "true" if negative else "false",
    }
    if negative:
        d["notes"] = "A negative embedding: put it in the negative prompt."
    return (json.dumps(d, indent=4, ensure_ascii=False) + "\n").encode("utf-8")


def _civitai_info(info: EmbeddingInfo) -> bytes | None:
    """``<name>.civitai.info`` (the model-version JSON the Civitai Helper extension keeps)
    from what ``civitai info`` / a Civitai pull recorded; None when nothing is known."""
    civ = info.extra.get("civitai")
    if not isinstance(civ, dict) or not civ.get("version_id"):
        return None
    model = {
        "name": civ.get("model_name"),
        "type": civ.get("model_type"),
        "nsfw": civ.get("nsfw"),
        "tags": civ.get("tags"),
    }
    d = {
        "id": civ.get("version_id"),
        "modelId": civ.get("model_id"),
        "name": civ.get("version_name"),
        "air": civ.get("air"),
        "baseModel": civ.get("base_model"),
        "trainedWords": civ.get("trained_words") or [],
        "description": info.description,
        "model": {k: v for k, v in model.items() if v is not None},
        "files": [
            {
                "type": "Model",
                "hashes": {"SHA256": info.file_sha256.upper(), "AutoV2": info.autov2},
            }
        ],
    }
    d = {k: v for k, v in d.items() if v is not None}
    return (json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _swarm_json(info: EmbeddingInfo, layout: str, data: bytes) -> bytes | None:
    """``<name>.swarm.json`` (SwarmUI's metadata beside a model) for a file whose header
    has no ModelSpec keys of its own; None otherwise."""
    from conceptlib.registry.formats.safetensors_io import parse_header
    from conceptlib.registry.modelspec import export_metadata

    try:
        meta = parse_header(data)[1]
    except ConceptlibError:
        return None
    if "modelspec.sai_model_spec" in meta:
        return None
    fmt = "sdxl" if str(info.family) == "sdxl" else "safetensors"
    spec = {k: v for k, v in export_metadata(info, fmt, data).items() if k.startswith("modelspec.")}
    return (json.dumps(spec, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _entry_files(library: Library, info: EmbeddingInfo, target: UiTarget) -> dict[str, bytes]:
    """Relative file name -> bytes of one entry in ``target``'s folder."""
    from conceptlib.compose.export import files_for
    from conceptlib.compose.formats import ui_trigger

    files = dict(files_for(library, info, target.layout))
    if len(files) != 1:
        raise UsageError(f"the {target.layout} layout wrote {len(files)} files for {info.name}")
    rel, data = next(iter(files.items()))
    stem, dot, suffix = rel.rpartition(".")
    if not dot or suffix != "safetensors":
        raise UsageError(f"the {target.layout} layout wrote {rel!r}, not a .safetensors file")
    out = {_check_rel(rel): data}
    if "a1111-json" in target.sidecars:
        out[f"{stem}.json"] = _a1111_json(info, ui_trigger(target.layout, info))
    if "preview" in target.sidecars:
        picture = _preview(library, info)
        if picture is not None:
            out[f"{stem}{_image_suffix(picture)}"] = picture
    if "civitai-info" in target.sidecars:
        civ = _civitai_info(info)
        if civ is not None:
            out[f"{stem}.civitai.info"] = civ
    if "swarm-json" in target.sidecars:
        swarm = _swarm_json(info, target.layout, data)
        if swarm is not None:
            out[f"{stem}.swarm.json"] = swarm
    return {_check_rel(r): d for r, d in out.items()}


# --------------------------------------------------------------------------- plan


def _selected(
    library: Library, tags: Sequence[str], family: str | None, names: Sequence[str]
) -> list[EmbeddingInfo]:
    """The selected entries, in full (search results leave previews out)."""
    if names:
        infos = [library.get(n) for n in names]
        from conceptlib.catalog.query import normalize_tag

        wanted = {normalize_tag(t) for t in tags}
        return [
            i
            for i in infos
            if wanted <= set(i.tags) and (family is None or str(i.family) == family)
        ]
    return [library.get(i.name) for i in library.search(tags=tuple(tags), family=family)]


def _desired(
    library: Library, infos: list[EmbeddingInfo], target: UiTarget, report: SyncReport
) -> dict[str, tuple[str, bytes]]:
    """rel -> (entry name, bytes) of every selected entry the UI can use; the others
    go to ``report.skipped``."""
    from conceptlib.errors import UntriggerableName
    from conceptlib.schemas.names import name_key

    out: dict[str, tuple[str, bytes]] = {}
    taken: dict[str, str] = {}
    for info in infos:
        fam = str(info.family)
        if fam not in target.families:
            report.skipped.append(SyncSkip(info.name, fam, f"a {fam} embedding: {target.why_not}"))
            continue
        try:
            files = _entry_files(library, info, target)
        except (UntriggerableName, UsageError) as exc:
            report.skipped.append(SyncSkip(info.name, fam, exc.message))
            continue
        except ValueError as exc:
            report.skipped.append(SyncSkip(info.name, fam, f"no usable file name ({exc})"))
            continue
        clash = next((taken[name_key(r)] for r in files if name_key(r) in taken), None)
        if clash is not None:
            report.skipped.append(
                SyncSkip(
                    info.name,
                    fam,
                    f"{target.label} would name its file as {clash!r}'s (names differing only "
                    f"in case or accents); rename one of them",
                )
            )
            continue
        for rel, data in files.items():
            taken[name_key(rel)] = info.name
            out[rel] = (info.name, data)
        report.entries.append(info.name)
    return out


def _blocked(folder: Path, rel: str) -> str | None:
    """Why ``folder/rel`` must not be touched (a link, a folder, not a regular file)."""
    path = folder / rel
    if path.is_symlink():
        return "a link: ui-sync never follows links in the folder"
    if path.is_dir():
        return "a folder stands there"
    if not path.is_file():
        return "not a regular file"
    if not os.access(path, os.R_OK):
        return "it cannot be read"
    return None


def _plan(
    folder: Path,
    desired: dict[str, tuple[str, bytes]],
    records: dict[str, _Record],
    report: SyncReport,
) -> tuple[dict[str, bytes], list[str], dict[str, _Record]]:
    """Decide each file's action. Returns (rel -> bytes to write, rels to remove, the
    manifest's records after the run)."""
    writes: dict[str, bytes] = {}
    removes: list[str] = []
    final: dict[str, _Record] = {}
    for rel in sorted(desired):
        entry, data = desired[rel]
        want = _sha(data)
        rec = records.get(rel)
        path = folder / rel
        if not os.path.lexists(path):
            report.actions.append(SyncAction("write", rel, entry))
            writes[rel] = data
            final[rel] = _Record(want, entry)
            continue
        why = _blocked(folder, rel)
        current = None if why else _current_sha(path)
        if why:
            report.actions.append(SyncAction("conflict", rel, entry, why))
        elif rec is None:
            if current == want:  # the same bytes, put there by someone else: left as is
                report.actions.append(
                    SyncAction("unchanged", rel, entry, "the same file, not written by ui-sync")
                )
            else:
                report.actions.append(
                    SyncAction("conflict", rel, entry, "a file ui-sync did not write; left alone")
                )
            continue
        elif not rec.ours(current):
            report.actions.append(
                SyncAction("conflict", rel, entry, "changed since ui-sync wrote it; left alone")
            )
        elif current == want:
            report.actions.append(SyncAction("unchanged", rel, entry))
            final[rel] = _Record(want, entry)
            continue
        else:
            report.actions.append(SyncAction("update", rel, entry))
            writes[rel] = data
            final[rel] = _Record(want, entry)
            continue
        if rec is not None:
            final[rel] = _Record(rec.sha256, rec.entry)  # still ours on record: reported again
    for rel in sorted(set(records) - set(desired)):
        rec = records[rel]
        path = folder / rel
        if not os.path.lexists(path):
            continue  # gone already: forgotten
        why = _blocked(folder, rel)
        if why is None and rec.ours(_current_sha(path)):
            report.actions.append(SyncAction("remove", rel, rec.entry))
            removes.append(rel)
            continue
        report.actions.append(
            SyncAction(
                "conflict",
                rel,
                rec.entry,
                (why or "changed since ui-sync wrote it") + "; no longer selected, left alone",
            )
        )
        final[rel] = _Record(rec.sha256, rec.entry)
    return writes, removes, final


def _check_folder(folder: Path) -> None:
    """The folder itself: an existing file there is refused."""
    if os.path.lexists(folder) and not folder.is_dir():
        raise UsageError(
            f"{folder} is not a folder; expected the UI's embeddings folder",
            hint="give the folder the UI loads embeddings from",
            path=str(folder),
        )


def ui_sync(
    library: Library,
    folder: str | os.PathLike[str],
    ui: str,
    *,
    tags: Sequence[str] = (),
    family: str | None = None,
    names: Sequence[str] = (),
    dry_run: bool = False,
) -> SyncReport:
    """Make ``folder`` hold exactly the selected entries in UI ``ui``'s layout.

    Args:
        library: the catalog.
        folder: the UI's embeddings folder (created if missing).
        ui: one of :data:`SYNC_UIS`.
        tags: only entries with every one of these tags.
        family: only entries of this family.
        names: only these entries (each must exist); with no filter, every entry.
        dry_run: plan only; nothing in the folder changes.

    Returns:
        The report: each file's action (``write``, ``update``, ``remove``,
        ``unchanged``, ``conflict`` with its reason) and each skipped entry's reason.

    Raises:
        UsageError: an unknown UI or family; a path that is not a folder; a manifest
            that cannot be read or belongs to another UI.
        NotFound: a name not in the catalog.
        StoreError, DiskFull: writing failed (what was written is in the manifest).
    """
    from conceptlib.registry.store import atomic_write
    from conceptlib.schemas.enums import Family

    target = UI_TARGETS.get(ui)
    if target is None:
        raise UsageError(f"unknown UI {ui!r}; expected one of {', '.join(SYNC_UIS)}")
    if family is not None:
        try:
            family = Family(family).value
        except ValueError:
            raise UsageError(
                f"unknown family {family!r}; expected one of {', '.join(f.value for f in Family)}"
            ) from None
    root = Path(folder).expanduser()
    _check_folder(root)
    report = SyncReport(ui=ui, folder=str(root), dry_run=dry_run)
    records = _read_manifest(root, ui) if root.is_dir() else {}
    infos = _selected(library, tags, family, names)
    desired = _desired(library, infos, target, report)
    writes, removes, final = _plan(root, desired, records, report)
    if dry_run or not (writes or removes or final != records):
        return report
    manifest = root / MANIFEST_NAME
    # The manifest names each file before it is written: an interrupted run leaves no
    # file it would not recognise as its own next time.
    during = dict(records)
    for rel, data in writes.items():
        old = records.get(rel)
        during[rel] = _Record(old.sha256 if old else _sha(data), final[rel].entry, _sha(data))
    if writes:
        atomic_write(manifest, _manifest_bytes(ui, during))
    for rel, data in writes.items():
        atomic_write(root / rel, data)
    for rel in removes:
        with contextlib.suppress(FileNotFoundError):
            (root / rel).unlink()
    atomic_write(manifest, _manifest_bytes(ui, final))
    return report

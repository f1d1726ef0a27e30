"""``civitai info``: look entries up on Civitai by hash and fill in what the catalog lacks.

For each entry: ``GET /api/v1/model-versions/by-hash/{file_sha256}`` (404: unknown, a
normal outcome), then ``GET /api/v1/models/{modelId}`` for tags and license flags, then
the version's preview images (at most ``previews`` of them, each capped and checked to
be a PNG, JPEG or WebP image). Everything is fetched and checked before anything is
written; the entry then changes in one transaction: the fields it lacks (description,
base model, trained words, tags) and ``extra["civitai"]`` (AIR, ids, names, license
flags, nsfw, creator, the endpoint, and ``filled``: which fields came from Civitai).
An entry whose lookup fails is left exactly as it was; the others go on.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from conceptlib.errors import CivitaiError, ConceptlibError
from conceptlib.registry.civitai.api import CivitaiVersion, apply_model, parse_version
from conceptlib.registry.civitai.client import CivitaiClient, checked_url

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

#: Largest preview image downloaded (bytes).
MAX_PREVIEW_BYTES = 8 * 1024 * 1024
#: Largest preview image decoded (pixels): anything bigger is no preview.
MAX_PREVIEW_PIXELS = 4096 * 4096
#: Previews downloaded per entry by default.
DEFAULT_PREVIEWS = 2
MAX_PREVIEWS = 8

ProgressCallback = Callable[[int, int, str], None]


@dataclass
class InfoOutcome:
    """One entry's lookup: ``status`` is ``updated``, ``unchanged`` (found, nothing to
    fill), ``unknown`` (Civitai has no file with this hash) or ``failed`` (``error``)."""

    name: str
    status: str
    air: str | None = None
    filled: list[str] = field(default_factory=list)
    previews: int = 0
    error: str | None = None
    code: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class InfoReport:
    outcomes: list[InfoOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def unknown(self) -> list[str]:
        return [o.name for o in self.outcomes if o.status == "unknown"]

    @property
    def failed(self) -> list[InfoOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "updated": self.count("updated"),
            "unchanged": self.count("unchanged"),
            "unknown": self.unknown,
            "failed": len(self.failed),
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


def checked_image(data: bytes, what: str) -> str:
    """The extension (``png``, ``jpg``, ``webp``) of an image that decodes; raises
    :class:`CivitaiError` for anything else (other formats, bombs, broken files)."""
    from PIL import Image

    kinds = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if fmt not in kinds:
                raise CivitaiError(f"{what}: not a PNG, JPEG or WebP image")
            w, h = im.size
            if w * h > MAX_PREVIEW_PIXELS:
                raise CivitaiError(f"{what}: {w}x{h} pixels is too large for a preview")
            im.verify()
    except CivitaiError:
        raise
    except Exception:
        raise CivitaiError(f"{what}: not a readable image") from None
    return kinds[fmt]


def lookup(
    client: CivitaiClient, file_sha256: str, *, with_model: bool = True
) -> CivitaiVersion | None:
    """The model version whose file has this SHA-256, or ``None`` (404)."""
    found = client.get_json(
        f"/api/v1/model-versions/by-hash/{file_sha256.upper()}", "the lookup by hash"
    )
    if found is None:
        return None
    v = parse_version(found)
    if with_model:
        model = client.get_json(f"/api/v1/models/{v.model_id}", f"model {v.model_id}")
        if model is not None:
            apply_model(v, model)
    return v


def fetch_previews(
    client: CivitaiClient, v: CivitaiVersion, limit: int, notes: list[str]
) -> list[tuple[str, bytes]]:
    """Up to ``limit`` verified images of ``v`` as ``(filename, bytes)``; an unusable
    image is skipped with a note (it never stops the rest)."""
    out: list[tuple[str, bytes]] = []
    for i, url in enumerate(v.image_urls[: max(0, limit) * 2]):
        if len(out) >= limit:
            break
        what = f"preview image {i + 1}"
        try:
            data = client.download(checked_url(url, what), MAX_PREVIEW_BYTES, what)
            ext = checked_image(data, what)
        except CivitaiError as exc:
            notes.append(f"{exc.message}; skipped")
            continue
        out.append((f"civitai-{v.version_id}-{i + 1}.{ext}", data))
    return out


def _plan(info: EmbeddingInfo, v: CivitaiVersion) -> tuple[dict[str, Any], list[str], list[str]]:
    """Column values to set, tags to add, and the names of the fields filled."""
    from conceptlib.registry.pending import _tag_ok, validate_tag

    values: dict[str, Any] = {}
    filled: list[str] = []
    if not info.description and v.description:
        values["description"] = v.description
        filled.append("description")
    if not info.base_model and v.base_model:
        values["base_model"] = v.base_model
        filled.append("base_model")
    if not info.extra.get("trained_words") and v.trained_words:
        filled.append("trained_words")
    new_tags = sorted({validate_tag(t) for t in v.tags if _tag_ok(t)} - set(info.tags))
    if new_tags:
        filled.append("tags")
    return values, new_tags, filled


def apply(
    lib: Library,
    info: EmbeddingInfo,
    v: CivitaiVersion,
    previews: Sequence[tuple[str, bytes]],
    *,
    endpoint: str,
    matched: str = "sha256",
) -> InfoOutcome:
    """Write what ``v`` adds to ``info`` in one transaction (blobs first; on failure the
    blobs written are removed again and the entry is unchanged)."""
    from conceptlib.catalog import dialect
    from conceptlib.catalog.models import EmbeddingRow, EmbeddingTagRow, PreviewRow, utcnow
    from conceptlib.registry.library import _safe_filename

    values, new_tags, filled = _plan(info, v)
    have = {p.sha256 for p in info.previews}
    extra = dict(info.extra)
    if "trained_words" in filled:
        extra["trained_words"] = v.trained_words
    record = v.record(endpoint, matched)
    old = extra.get("civitai") if isinstance(extra.get("civitai"), dict) else {}
    record["filled"] = sorted(set(old.get("filled", [])) | set(filled))
    changed = bool(values or new_tags) or {k: x for k, x in old.items()} != record
    extra["civitai"] = record
    values["extra"] = json.dumps(extra, sort_keys=True, default=str)
    with lib._cleanup_on_failure():
        rows = []
        for filename, data in previews:
            sha = lib.store.put(data)
            if sha in have:
                continue
            have.add(sha)
            rows.append((_safe_filename(filename), sha, len(data)))

        def _write(session: Any) -> None:
            row = session.get(EmbeddingRow, info.id)
            for column, value in values.items():
                setattr(row, column, value)
            ids = dialect.ensure_tags(session.connection(), lib.catalog.dialect_name, new_tags)
            for t in new_tags:
                session.add(EmbeddingTagRow(embedding_id=info.id, tag_id=ids[t]))
            for filename, sha, size in rows:
                session.add(
                    PreviewRow(
                        embedding_id=info.id,
                        filename=filename,
                        role="preview",
                        sha256=sha,
                        size=size,
                    )
                )
            if lib.shares_blobs and rows:
                blobs = {sha: lib.store.get(sha, verify=False) for _f, sha, _s in rows}
                dialect.insert_blobs(
                    session.connection(), lib.catalog.dialect_name, blobs, utcnow()
                )
            row.updated_at = utcnow()
            session.flush()
            dialect.refresh_fts(session.connection(), lib.catalog.dialect_name, info.id)

        lib.catalog.write_retrying(_write)
    if rows:
        filled.append("previews")
    return InfoOutcome(
        name=info.name,
        status="updated" if (changed or rows) else "unchanged",
        air=v.air,
        filled=filled,
        previews=len(rows),
    )


def civitai_info(
    lib: Library,
    names: Sequence[str] = (),
    *,
    all_entries: bool = False,
    previews: int = DEFAULT_PREVIEWS,
    client: CivitaiClient | None = None,
    on_progress: ProgressCallback | None = None,
) -> InfoReport:
    """Look up ``names`` (or every entry with ``all_entries``) on Civitai by file SHA-256.

    Args:
        names: entries by name or trigger token (each resolved before any request).
        previews: preview images to download per entry (0 to 8).

    Returns:
        An :class:`InfoReport`; one entry's failure (a :class:`CivitaiError`) is its
        outcome, never the others'. Errors of the whole service (unreachable, refused
        token) stop the loop: they would fail every entry the same way.

    Raises:
        NotFound: a name that is not in the catalog; UsageError: neither names nor
        ``all_entries``; CivitaiAuthError, CivitaiUnavailable.
    """
    from conceptlib.errors import CivitaiAuthError, CivitaiUnavailable, UsageError

    if bool(names) == bool(all_entries):
        raise UsageError("civitai info takes entry NAMEs or --all (not both)")
    previews = max(0, min(int(previews), MAX_PREVIEWS))
    infos = lib.list() if all_entries else [lib.resolve(n) for n in dict.fromkeys(names)]
    own = client is None
    client = client or CivitaiClient()
    report = InfoReport()
    try:
        for i, info in enumerate(infos):
            if on_progress:
                on_progress(i, len(infos), info.name)
            notes: list[str] = []
            try:
                v = lookup(client, info.file_sha256)
                if v is None:
                    report.outcomes.append(InfoOutcome(info.name, "unknown"))
                    continue
                imgs = fetch_previews(client, v, previews, notes)
                outcome = apply(lib, info, v, imgs, endpoint=client.settings.endpoint)
            except (CivitaiAuthError, CivitaiUnavailable):
                raise
            except ConceptlibError as exc:
                outcome = InfoOutcome(info.name, "failed", error=exc.message, code=exc.code)
            outcome.notes += notes
            report.outcomes.append(outcome)
        if on_progress:
            on_progress(len(infos), len(infos), "")
    finally:
        if own:
            client.close()
    return report

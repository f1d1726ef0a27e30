"""``pull civitai:VERSION_ID`` / ``pull urn:air:...:civitai:M@V``: one embedding from Civitai.

``GET /api/v1/model-versions/{id}`` (an AIR without ``@V`` takes the model's newest
version from ``/api/v1/models/{id}``) names the files; the embedding file (``--file``,
else the primary ``Model`` file) is downloaded with a size cap and its SHA-256 checked
against the API's ``hashes.SHA256`` before it is read. It is then read like an
imported file (the same readers and name rules) and registered with source
``civitai`` and ``source_ref`` the AIR, with the version's facts in
``extra["civitai"]``. Nothing is written until every check has passed.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.errors import (
    CivitaiBadReply,
    CivitaiIntegrityError,
    CivitaiNotEmbedding,
    CivitaiNotFound,
    UsageError,
)
from conceptlib.registry.civitai.api import CivitaiFile, CivitaiVersion, apply_model, parse_spec
from conceptlib.registry.civitai.api import parse_version as _parse_version
from conceptlib.registry.civitai.client import CivitaiClient
from conceptlib.registry.civitai.info import DEFAULT_PREVIEWS, fetch_previews

if TYPE_CHECKING:
    from conceptlib.registry.library import Library


@dataclass
class CivitaiPullOutcome:
    """``status``: ``pulled`` (new entry) or ``present`` (the same vectors were already
    registered as ``name``: nothing changed)."""

    status: str
    name: str
    air: str
    version_id: int
    model_id: int
    file: str
    sha256: str
    token: str | None = None
    previews: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _version(client: CivitaiClient, model_id: int | None, version_id: int | None) -> CivitaiVersion:
    if version_id is None:
        model = client.get_json(f"/api/v1/models/{model_id}", f"model {model_id}")
        if model is None:
            raise CivitaiNotFound(f"Civitai has no model {model_id}")
        versions = model.get("modelVersions")
        first = versions[0] if isinstance(versions, list) and versions else None
        vid = first.get("id") if isinstance(first, dict) else None
        if isinstance(vid, bool) or not isinstance(vid, int) or vid <= 0:
            raise CivitaiBadReply(f"model {model_id}: the reply lists no version")
        version_id = vid
    found = client.get_json(f"/api/v1/model-versions/{version_id}", f"model version {version_id}")
    if found is None:
        raise CivitaiNotFound(f"Civitai has no model version {version_id}")
    v = _parse_version(found)
    if v.version_id != version_id:
        raise CivitaiBadReply(
            f"asked for version {version_id}, the reply is version {v.version_id}"
        )
    if model_id is not None and v.model_id != model_id:
        raise CivitaiBadReply(
            f"version {version_id} belongs to model {v.model_id}, not {model_id} as the AIR says"
        )
    model = client.get_json(f"/api/v1/models/{v.model_id}", f"model {v.model_id}")
    if model is not None:
        apply_model(v, model)
    return v


def _pick(v: CivitaiVersion, filename: str | None) -> CivitaiFile:
    files = [f for f in v.files if f.download_url]
    if filename:
        chosen = [f for f in files if f.name == filename]
        if not chosen:
            names = ", ".join(repr(f.name) for f in files[:10]) or "none"
            raise UsageError(f"version {v.version_id} has no file {filename!r}; its files: {names}")
        return chosen[0]
    models = [f for f in files if (f.type or "Model") == "Model"]
    primary = [f for f in models if f.primary]
    if primary or len(models) == 1:
        return (primary or models)[0]
    if not models:
        raise CivitaiBadReply(f"version {v.version_id}: the reply lists no downloadable file")
    raise UsageError(
        f"version {v.version_id} has several files: "
        + ", ".join(repr(f.name) for f in models[:10]),
        hint="choose one with --file NAME",
    )


def _safe_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/")).strip(". ") or "embedding.safetensors"
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in base)[:120]
    return cleaned or "embedding.safetensors"


def pull_civitai(
    lib: Library,
    spec: str,
    *,
    filename: str | None = None,
    name: str | None = None,
    token: str | None = None,
    previews: int = DEFAULT_PREVIEWS,
    client: CivitaiClient | None = None,
) -> CivitaiPullOutcome:
    """Download, verify and register one embedding from Civitai.

    Args:
        spec: ``civitai:VERSION_ID`` or ``urn:air:ECO:embedding:civitai:MODEL[@VERSION]``.
        filename: the file to take when the version has several.
        name, token: register under this name / trigger token (default: from the file name,
            as ``import`` does: A1111 triggers an embedding by its file name).
        previews: preview images to keep (0 to 8).

    Raises:
        UsageError (a bad spec or --file), CivitaiNotFound (404), CivitaiNotEmbedding,
        CivitaiIntegrityError (no hash listed, or the bytes differ), CivitaiBadReply,
        CivitaiUnavailable, CivitaiAuthError, EmbeddingFileError (the file is not a
        usable embedding), NameCollision, InvalidName. Nothing is registered on any of
        them.
    """
    from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
    from conceptlib.registry.pending import _tag_ok, prepare_file, validate_tag
    from conceptlib.schemas.enums import Kind, Source
    from conceptlib.schemas.records import Preview

    model_id, version_id = parse_spec(spec)
    own = client is None
    client = client or CivitaiClient()
    try:
        v = _version(client, model_id, version_id)
        if not v.is_embedding:
            raise CivitaiNotEmbedding(
                f"version {v.version_id} is a {v.model_type}, not a textual-inversion embedding"
            )
        f = _pick(v, filename)
        if not f.sha256:
            raise CivitaiIntegrityError(
                f"version {v.version_id}: the API lists no SHA-256 for {f.name!r}; refusing "
                "a file that cannot be checked"
            )
        if f.size_kb is not None and f.size_kb * 1024 > MAX_EMBEDDING_FILE_BYTES:
            raise CivitaiBadReply(
                f"{f.name!r} is {f.size_kb:.0f} KB; expected an embedding of at most "
                f"{MAX_EMBEDDING_FILE_BYTES // (1024 * 1024)} MiB"
            )
        data = client.download(f.download_url, MAX_EMBEDDING_FILE_BYTES, f"downloading {f.name!r}")
        got = hashlib.sha256(data).hexdigest()
        if got != f.sha256:
            raise CivitaiIntegrityError(
                f"{f.name!r}: SHA-256 {got[:12]} differs from the listed {f.sha256[:12]} "
                f"({len(data)} bytes); nothing was registered",
                hint="run the command again; if it persists, the server is serving wrong bytes",
            )
        notes: list[str] = []
        with tempfile.TemporaryDirectory(prefix="conceptlib-civitai-") as tmp:
            path = Path(tmp) / _safe_name(f.name)
            path.write_bytes(data)
            pending = prepare_file(path, name, None, [], None, token=token)
        existing = lib.by_tensor_sha256(pending.tensor_sha256)
        out = CivitaiPullOutcome(
            status="present",
            name=existing.name if existing else pending.name,
            air=v.air,
            version_id=v.version_id,
            model_id=v.model_id,
            file=f.name,
            sha256=got,
            token=existing.token if existing else pending.token,
        )
        if existing is not None:
            return out
        imgs = fetch_previews(client, v, max(0, min(previews, 8)), notes)
        lowered = {t.lower() for t in v.tags}
        kind = (
            Kind.NEGATIVE.value
            if lowered & {"negative", "negative embedding"}
            else Kind.STYLE.value
            if "style" in lowered
            else pending.kind
        )
        extra = dict(pending.extra)
        extra["civitai"] = v.record(client.settings.endpoint, "version_id")
        if v.trained_words:
            extra["trained_words"] = v.trained_words
        info = lib.add_embedding(
            pending.embedding,
            name=pending.name,
            token=pending.token,
            kind=kind,
            source=Source.CIVITAI,
            source_ref=v.air,
            file_bytes=data,
            base_model=v.base_model,
            tags=sorted({validate_tag(t) for t in v.tags if _tag_ok(t)}),
            description=v.description,
            previews=[Preview(fn, d, "preview") for fn, d in imgs],
            extra=extra,
        )
        out.status, out.name, out.token, out.previews = "pulled", info.name, info.token, len(imgs)
        out.notes = [d.why for d in pending.derived if d.why] + notes
        return out
    finally:
        if own:
            client.close()

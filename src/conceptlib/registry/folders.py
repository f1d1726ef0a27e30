"""Files on disk: walking import folders and reading the sidecars beside embeddings.

What A1111, ComfyUI and InvokeAI keep next to an embedding file: A1111's
``<name>.preview.png`` and ``<name>.json`` (``description``, ``activation text``,
``sd version``, ``notes``; written by its extra-networks "edit metadata" dialog), and
Civitai's ``<name>.civitai.info`` (the model-version JSON that the Civitai Helper
extension saves). Nothing here writes to the catalog.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptlib.schemas.enums import Kind, Source

__all__ = [
    "IMAGE_SUFFIXES",
    "SIDECAR_SUFFIXES",
    "Sidecar",
    "collect_files",
    "file_stem",
    "read_sidecars",
]

#: Files beside embeddings that are metadata, not embeddings.
SIDECAR_SUFFIXES = (".preview.png", ".civitai.info", ".json", ".txt", ".md", ".yaml", ".yml")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def file_stem(path: Path) -> str:
    """The name of an embedding file without its extension (``x.safetensors`` -> ``x``)."""
    name = path.name
    for suffix in (".safetensors", ".pt", ".bin", ".ckpt", ".png", ".webp"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_sidecar(p: Path) -> bool:
    low = p.name.lower()
    if low.startswith("."):
        return True
    return any(low.endswith(s) for s in SIDECAR_SUFFIXES)


def _is_companion(p: Path) -> bool:
    """``learned_embeds_2.safetensors`` is read together with its pair."""
    low = p.name.lower()
    if low.startswith("learned_embeds_2."):
        return any(p.parent.glob("learned_embeds.*"))
    return False


def collect_files(
    paths: Iterable[str | os.PathLike[str]],
    *,
    recursive: bool,
    skipped: list[tuple[Path, str]] | None = None,
) -> Iterator[Path]:
    """Expand folders into candidate embedding files (sidecars and previews skipped).

    A plain image inside a folder is skipped unless it carries an embedding (A1111's
    text chunk or side strips); a path given explicitly is always tried.

    Args:
        paths: files and folders.
        recursive: descend into sub-folders.
        skipped: when given, every file (and, without ``recursive``, every sub-folder)
            a folder walk passed over is appended as ``(path, reason)``: hidden,
            preview image, sidecar, the second file of an SDXL pair, an image without
            an embedding, a sub-folder, not a regular file.
    """

    def skip(f: Path, reason: str) -> None:
        if skipped is not None:
            skipped.append((f, reason))

    for raw in paths:
        p = Path(raw).expanduser()
        if p.is_dir():
            it = p.rglob("*") if recursive else p.iterdir()
            for f in sorted(it):
                if f.is_dir():
                    if not recursive:
                        skip(f, "a sub-folder (give --recursive to import it)")
                    continue
                reason = _skip_reason(f, p)
                if reason is not None:
                    skip(f, reason)
                    continue
                yield f
        elif p.exists():
            yield p
        else:
            # Reported per file, never fatal for the rest.
            yield p


def _skip_reason(f: Path, root: Path) -> str | None:
    """Why a folder walk passes over ``f`` (None: it is a candidate embedding file)."""
    if any(part.startswith(".") for part in f.relative_to(root).parts):
        return "hidden"
    if not f.is_file():
        return "not a regular file"
    low = f.name.lower()
    if low.endswith(".preview.png"):
        return "a preview image (kept with its embedding)"
    if _is_sidecar(f):
        return "a sidecar (metadata read with its embedding)"
    if _is_companion(f):
        return "the second file of an SDXL pair (read with learned_embeds)"
    if f.suffix.lower() in IMAGE_SUFFIXES and not _image_has_embedding(f):
        return "an image without an embedding"
    return None


def _image_has_embedding(path: Path) -> bool:
    """Whether an image in a folder carries an A1111 embedding, decided by content.

    A PNG's chunks are walked (the ``sd-ti-embedding`` chunk may sit anywhere, after
    megabytes of pixel data); without the chunk, a PNG's or WebP's side strips are
    looked at (:func:`~conceptlib.registry.formats.png_embed.image_may_hold_embedding`).
    JPEGs (which cannot hold the strips losslessly; A1111 writes PNG), plain
    pictures and images over the embedding size cap are skipped.
    """
    from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
    from conceptlib.registry.formats.png_embed import image_may_hold_embedding

    try:
        with path.open("rb") as f:
            data = f.read(MAX_EMBEDDING_FILE_BYTES + 1)
    except OSError:
        return False
    return len(data) <= MAX_EMBEDDING_FILE_BYTES and image_may_hold_embedding(data)


@dataclass
class Sidecar:
    description: str | None = None
    notes: str | None = None
    tags: list[str] = field(default_factory=list)
    trained_words: list[str] = field(default_factory=list)
    base_model: str | None = None
    kind: str | None = None
    source: str | None = None
    preview: tuple[str, bytes] | None = None


def read_sidecars(path: Path) -> Sidecar:
    """Pick up ``<name>.preview.png``, A1111 ``<name>.json`` and Civitai ``<name>.civitai.info``."""
    sc = Sidecar()
    stem = file_stem(path)
    folder = path.parent
    preview = folder / f"{stem}.preview.png"
    if preview.is_file():
        try:
            data = preview.read_bytes()
            if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) < 32 * 1024 * 1024:
                sc.preview = (preview.name, data)
        except OSError:
            pass
    meta = folder / f"{stem}.json"
    if meta.is_file():
        d = _read_json(meta)
        if isinstance(d, dict):
            desc = d.get("description")
            sc.description = str(desc) if desc else None
            notes = d.get("notes")
            sc.notes = str(notes) if notes else None
            words = d.get("activation text")
            if isinstance(words, str) and words.strip():
                sc.trained_words = [w.strip() for w in words.split(",") if w.strip()]
            bm = d.get("sd version")
            if isinstance(bm, str) and bm and bm.lower() != "unknown":
                sc.base_model = bm
    info = folder / f"{stem}.civitai.info"
    if info.is_file():
        d = _read_json(info)
        if isinstance(d, dict):
            sc.source = Source.CIVITAI.value
            if isinstance(d.get("baseModel"), str):
                sc.base_model = d["baseModel"]
            words = d.get("trainedWords")
            if isinstance(words, list):
                sc.trained_words = [str(w) for w in words if isinstance(w, (str, int))]
            model = d.get("model") if isinstance(d.get("model"), dict) else {}
            tags = d.get("tags") or model.get("tags") or []
            if isinstance(tags, list):
                sc.tags = [t if isinstance(t, str) else str(t.get("name", "")) for t in tags if t]
            desc = d.get("description") or model.get("description")
            if isinstance(desc, str) and desc and not sc.description:
                sc.description = _strip_html(desc)
            lowered = {t.lower() for t in sc.tags}
            if "negative" in lowered or "negative embedding" in lowered:
                sc.kind = Kind.NEGATIVE.value
            elif "style" in lowered:
                sc.kind = Kind.STYLE.value
    return sc


def _read_json(p: Path) -> Any:
    try:
        if p.stat().st_size > 4 * 1024 * 1024:
            return None
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _strip_html(text: str) -> str:
    import re

    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()

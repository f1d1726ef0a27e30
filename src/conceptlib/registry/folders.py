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
    if _leaves(f, root):
        return "a link that leads out of the folder being imported"
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


def _leaves(f: Path, root: Path) -> bool:
    """Whether ``f`` is a symbolic link (or sits under one) whose target lies outside
    ``root``: a folder import reads what is in the folder, never a file a link points
    at elsewhere (a private key, a device). Unresolvable links count as leaving."""
    try:
        if not f.is_symlink() and f.resolve().parent == f.parent.resolve():
            return False
        target = f.resolve(strict=True)
        return not target.is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return True


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


#: A sidecar is a small text file; a preview a small PNG. Larger ones are not read.
MAX_SIDECAR_BYTES = 4 * 1024 * 1024
MAX_PREVIEW_BYTES = 32 * 1024 * 1024
#: JSON nested deeper than this is not a sidecar any tool writes.
MAX_SIDECAR_DEPTH = 32


@dataclass
class Sidecar:
    """What the files beside an embedding say about it.

    ``warnings`` names each sidecar that was present but could not be used (too large,
    not JSON, nested too deep, a field of the wrong type) and why; the embedding itself
    is imported all the same, without that sidecar's facts.
    """

    description: str | None = None
    notes: str | None = None
    tags: list[str] = field(default_factory=list)
    trained_words: list[str] = field(default_factory=list)
    base_model: str | None = None
    kind: str | None = None
    source: str | None = None
    preview: tuple[str, bytes] | None = None
    warnings: list[str] = field(default_factory=list)


class _BadSidecar(Exception):
    """A sidecar that is present but unusable (the message says why)."""


def read_sidecars(path: Path) -> Sidecar:
    """Pick up ``<name>.preview.png``, A1111 ``<name>.json`` and Civitai ``<name>.civitai.info``.

    Layouts: A1111's extra-networks metadata (``description``, ``notes``, ``activation
    text``, ``sd version``) and the Civitai model-version JSON that the Civitai Helper
    extension saves (``baseModel``, ``trainedWords``, ``tags``, ``description``,
    ``model.tags``/``model.description``). Each file is read with a size cap; a sidecar
    that is unusable for any reason (including an ``OSError`` such as a name too long
    for the file system) is skipped with a warning and never stops the embedding.
    """
    sc = Sidecar()
    stem = file_stem(path)
    folder = path.parent
    preview = folder / f"{stem}.preview.png"
    try:
        data = _read_capped(preview, MAX_PREVIEW_BYTES)
        if data is not None:
            if data.startswith(b"\x89PNG\r\n\x1a\n"):
                sc.preview = (preview.name, data)
            else:
                sc.warnings.append(f"{preview.name}: not a PNG image; preview skipped")
    except _BadSidecar as exc:
        sc.warnings.append(f"{preview.name}: {exc}; preview skipped")
    for suffix, reader in ((".json", _apply_a1111_json), (".civitai.info", _apply_civitai)):
        side = folder / f"{stem}{suffix}"
        try:
            d = _read_json(side)
            if d is None:
                continue
            if not isinstance(d, dict):
                raise _BadSidecar(f"expected a JSON object, found {type(d).__name__}")
            reader(sc, d)
        except _BadSidecar as exc:
            sc.warnings.append(f"{side.name}: {exc}; sidecar ignored")
    return sc


def _text(d: dict[str, Any], key: str) -> str | None:
    value = d.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _BadSidecar(f"{key!r} is {type(value).__name__}, expected text")
    return value


def _apply_a1111_json(sc: Sidecar, d: dict[str, Any]) -> None:
    desc, notes = _text(d, "description"), _text(d, "notes")
    words, bm = _text(d, "activation text"), _text(d, "sd version")
    sc.description = desc
    sc.notes = notes
    if words and words.strip():
        sc.trained_words = [w.strip() for w in words.split(",") if w.strip()]
    if bm and bm.lower() != "unknown":
        sc.base_model = bm


def _apply_civitai(sc: Sidecar, d: dict[str, Any]) -> None:
    model = d.get("model")
    if model is None:
        model = {}
    if not isinstance(model, dict):
        raise _BadSidecar(f"'model' is {type(model).__name__}, expected an object")
    base_model = _text(d, "baseModel")
    words = d.get("trainedWords")
    if words is not None and not isinstance(words, list):
        raise _BadSidecar(f"'trainedWords' is {type(words).__name__}, expected a list")
    tags = d.get("tags") or model.get("tags") or []
    if not isinstance(tags, list):
        raise _BadSidecar(f"'tags' is {type(tags).__name__}, expected a list")
    tag_names = []
    for t in tags:
        if isinstance(t, dict):
            t = t.get("name")
        if isinstance(t, str) and t:
            tag_names.append(t)
        elif t not in (None, ""):
            raise _BadSidecar(f"a tag is {type(t).__name__}, expected text or {{'name': text}}")
    desc = _text(d, "description") or _text(model, "description")
    # Everything checked: apply.
    sc.source = Source.CIVITAI.value
    if base_model:
        sc.base_model = base_model
    if words is not None:
        sc.trained_words = [str(w) for w in words if isinstance(w, (str, int))]
    sc.tags = tag_names
    if desc and not sc.description:
        sc.description = _strip_html(desc)
    lowered = {t.lower() for t in sc.tags}
    if "negative" in lowered or "negative embedding" in lowered:
        sc.kind = Kind.NEGATIVE.value
    elif "style" in lowered:
        sc.kind = Kind.STYLE.value


def _read_capped(p: Path, cap: int) -> bytes | None:
    """``p``'s bytes, or None when there is no such file; reads at most ``cap`` + 1 bytes.

    Raises:
        _BadSidecar: larger than ``cap``, not a regular file, or unreadable (any
            ``OSError``, e.g. a name too long for the file system).
    """
    try:
        if not p.exists() and not p.is_symlink():
            return None
        if _leaves(p, p.parent):
            raise _BadSidecar("a link that leads out of its folder")
        if not p.is_file():
            raise _BadSidecar("not a regular file")
        with p.open("rb") as fh:
            data = fh.read(cap + 1)
    except OSError as exc:
        raise _BadSidecar(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if len(data) > cap:
        raise _BadSidecar(f"larger than {cap // (1024 * 1024)} MiB")
    return data


def _read_json(p: Path) -> Any:
    """A sidecar's JSON, or None when there is no such file (size- and depth-capped)."""
    data = _read_capped(p, MAX_SIDECAR_BYTES)
    if data is None:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _BadSidecar("not UTF-8 text") from None
    if _nesting(text) > MAX_SIDECAR_DEPTH:
        raise _BadSidecar(f"JSON nested deeper than {MAX_SIDECAR_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise _BadSidecar("not valid JSON") from None


def _nesting(text: str) -> int:
    """The deepest bracket nesting of JSON ``text`` (strings skipped), without parsing it:
    a sidecar nested thousands deep is refused before ``json.loads`` recurses."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def _strip_html(text: str) -> str:
    import re

    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()

"""Gallery thumbnails: made once with Pillow, cached under ``CONCEPTLIB_HOME/cache/thumbs``.

A preview is decoded only when its file and its pixel count are under caps (a small
PNG can declare a 100,000 x 100,000 canvas); one that is too large or unreadable gets
the placeholder, like an entry without previews. The cache is keyed by the preview's
SHA-256 and the thumbnail size, and written atomically (temp file, rename), so two
requests for the same thumbnail never see half a file.
"""

from __future__ import annotations

import io
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from conceptlib.errors import ConceptlibError
from conceptlib.registry.store import atomic_write

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo, PreviewInfo

#: Longest side of a thumbnail, in pixels.
THUMB_SIZE = 320
#: Largest preview file decoded for a thumbnail.
MAX_PREVIEW_BYTES = 32 * 1024 * 1024
#: Most pixels a preview may declare (Pillow's own bomb limit is about 89 million).
MAX_PIXELS = 40_000_000
#: Which preview stands for an entry, best first (a loss curve is no picture of it).
ROLE_ORDER = ("preview", "sample", "grid")
#: Image types previews are served and decoded as, by their first bytes.
IMAGE_TYPES = {
    b"\x89PNG\r\n\x1a\n": ("PNG", "image/png"),
    b"\xff\xd8\xff": ("JPEG", "image/jpeg"),
    b"RIFF": ("WEBP", "image/webp"),
}


def image_type(head: bytes) -> tuple[str, str] | None:
    """``(Pillow format, media type)`` of an image by its first bytes, or ``None``."""
    for magic, kind in IMAGE_TYPES.items():
        if head.startswith(magic) and (magic != b"RIFF" or head[8:12] == b"WEBP"):
            return kind
    return None


def cover(info: EmbeddingInfo) -> PreviewInfo | None:
    """The preview that stands for ``info`` in the gallery, or ``None``."""
    for role in ROLE_ORDER:
        for p in info.previews:
            if p.role == role:
                return p
    return None


def decode_capped(data: bytes, size: int = THUMB_SIZE):  # noqa: ANN201
    """``data`` decoded as an RGB(A) Pillow image no larger than ``size``, or ``None``
    when it is not a PNG, JPEG or WebP, declares more than :data:`MAX_PIXELS`, or
    does not decode."""
    from PIL import Image

    kind = image_type(data[:16])
    if kind is None or len(data) > MAX_PREVIEW_BYTES:
        return None
    try:
        with Image.open(io.BytesIO(data), formats=[kind[0]]) as im:
            if im.width * im.height > MAX_PIXELS or im.width < 1 or im.height < 1:
                return None
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            im.load()
            out = im.convert("RGBA" if "A" in im.getbands() else "RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None
    out.thumbnail((size, size))
    return out


def thumbnail(library: Library, info: EmbeddingInfo) -> Path | None:
    """The cached thumbnail of ``info``'s cover preview (made now if missing), or
    ``None`` when it has no usable preview."""
    p = cover(info)
    if p is None:
        return None
    folder = library.settings.cache_dir / "thumbs"
    target = folder / f"{p.sha256}-{THUMB_SIZE}.webp"
    if target.is_file():
        return target
    try:
        path = library.preview_path(info, p.filename)
        with open(path, "rb") as fh:
            data = fh.read(MAX_PREVIEW_BYTES + 1)
    except (OSError, ConceptlibError):  # a missing blob is shown as no preview
        return None
    im = decode_capped(data)
    if im is None:
        return None
    buf = io.BytesIO()
    im.save(buf, "WEBP", quality=82)
    try:  # a cache: no fsync; a full disk means no thumbnail, not an error page
        atomic_write(target, buf.getvalue(), fsync=False)
    except ConceptlibError:
        return None
    return target


#: Placeholder colours by family (light background, dark text).
_COLOURS = {"sd1": "#dbeafe", "sd2": "#dcfce7", "sdxl": "#fae8ff"}


def placeholder_svg(family: str, kind: str) -> str:
    """A square SVG naming the family and kind, for entries without a usable preview
    (both values come from the catalog's enums; they are escaped all the same)."""
    colour = _COLOURS.get(family, "#e5e7eb")
    fam, knd = escape(family.upper()), escape(kind)
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="320" height="320" '
        'viewBox="0 0 320 320">'
        f'<rect width="320" height="320" fill="{colour}"/>'
        '<text x="160" y="150" font-family="sans-serif" font-size="44" font-weight="bold" '
        f'fill="#1f2937" text-anchor="middle">{fam}</text>'
        '<text x="160" y="200" font-family="sans-serif" font-size="28" '
        f'fill="#4b5563" text-anchor="middle">{knd}</text>'
        "</svg>"
    )

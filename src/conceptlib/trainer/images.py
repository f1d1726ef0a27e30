"""Training images: collect, validate, decode to RGB, hash, and turn into pixels.

A path that does not exist is :class:`~conceptlib.errors.ImageNotFound` (a
``NotFound``, exit 6). Refused with :class:`~conceptlib.errors.ImageError`
(bad-inputs 28-29): files that are not images (whatever their extension),
truncated files, decompression bombs (more than :data:`MAX_IMAGE_PIXELS` pixels,
checked from the header before decoding), PNG text chunks that decompress beyond
Pillow's cap, and fewer than ``min_images`` images. CMYK, 16-bit, float, alpha
and palette images are converted to 8-bit RGB (alpha composited over white); EXIF
orientation is applied. All images identical gives a warning, not an error.

``training_images_hash`` is the SHA-256 of the sorted per-image SHA-256 hex digests
of the file bytes, joined with ``"\\n"`` (no trailing newline)::

    sha256("\\n".join(sorted(sha256(file_bytes).hexdigest() for each image)))

so it does not depend on file names, their order, or the folder they sit in. A run
with captions hashes ``"conceptlib-captioned-images/1"`` followed by the sorted
``"<image sha256> <caption sha256>"`` lines instead (the caption as trained, UTF-8).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conceptlib.errors import ImageError, ImageNotFound

#: Most pixels one training image may have (a 6,000 x 6,000 photo is 36 M).
MAX_IMAGE_PIXELS = 50_000_000
#: Largest image file read (bytes).
MAX_IMAGE_FILE_BYTES = 256 * 1024 * 1024
#: Fewest training images accepted by default (the paper used 3-5).
MIN_TRAINING_IMAGES = 3
#: First line of the images hash of a captioned run (see :func:`training_images_hash`).
CAPTIONED_HASH_RECIPE = "conceptlib-captioned-images/1"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


@dataclass
class TrainingImages:
    """Validated training images.

    Attributes:
        images: decoded 8-bit RGB images, in input order.
        paths: the file each image came from.
        sha256s: SHA-256 hex digest of each file's bytes.
        warnings: things worth telling the user (e.g. all images identical).
    """

    images: list[Any]
    paths: list[Path]
    sha256s: list[str]
    warnings: list[str] = field(default_factory=list)
    #: each image's caption as trained (:mod:`conceptlib.trainer.captions`), or None
    captions: list[str] | None = None

    @property
    def count(self) -> int:
        return len(self.images)

    @property
    def hash(self) -> str:
        return training_images_hash(self.sha256s, self.captions)


def training_images_hash(digests: Iterable[str], captions: Sequence[str] | None = None) -> str:
    """SHA-256 of the sorted per-image SHA-256 hex digests joined with ``\\n``.

    With ``captions`` (one per digest, in the same order) each line is instead
    ``"<image sha256> <sha256 of the caption's UTF-8>"``, and the lines are preceded by
    the line ``conceptlib-captioned-images/1``: a caption change changes the hash, and
    a run without captions keeps the hash it always had.
    """
    if captions is None:
        return hashlib.sha256("\n".join(sorted(digests)).encode("ascii")).hexdigest()
    lines = sorted(
        f"{d} {hashlib.sha256(c.encode('utf-8')).hexdigest()}"
        for d, c in zip(digests, captions, strict=True)
    )
    return hashlib.sha256("\n".join([CAPTIONED_HASH_RECIPE, *lines]).encode("ascii")).hexdigest()


def collect_image_paths(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders into image files.

    A folder contributes its files with an image extension (not recursive, hidden
    files skipped, sorted by name); a file named explicitly is always tried, so a
    non-image fails loudly instead of being skipped. Duplicates are dropped.

    Raises:
        ImageNotFound: a path that does not exist (exit 6, like every "not found").
        ImageError: a path that is neither a regular file nor a folder.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(
                c
                for c in p.iterdir()
                if c.is_file() and not c.name.startswith(".") and c.suffix.lower() in IMAGE_SUFFIXES
            )
        elif p.is_file():
            found = [p]
        elif p.exists():  # a device, a pipe or a socket: never read from
            raise ImageError(f"{p}: not a regular file or a folder", path=str(p))
        else:
            raise ImageNotFound(f"{p}: no such file or folder", path=str(p))
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def _scale_to_uint8(arr: np.ndarray, full_scale: float) -> np.ndarray:
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def to_rgb(img: Any) -> Any:
    """Convert any Pillow image to 8-bit RGB (alpha over white, 16-bit scaled down)."""
    from PIL import Image, ImageOps

    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        full = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(_scale_to_uint8(arr, full), mode="L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        full = 1.0 if np.nanmax(arr, initial=0.0) <= 1.0 else 255.0
        return Image.fromarray(_scale_to_uint8(np.nan_to_num(arr), full), mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def open_image(data: bytes, *, path: str | None = None, max_pixels: int = MAX_IMAGE_PIXELS) -> Any:
    """Decode ``data`` into an 8-bit RGB Pillow image, refusing bombs and broken files."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    f"image is {width}x{height} = {width * height:,} pixels; the cap is "
                    f"{max_pixels:,} (a decompression bomb or far larger than training needs)",
                    path=path,
                    pixels=width * height,
                )
            img.seek(0)
            img.load()
            return to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"decompression bomb refused ({exc})", path=path) from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(
            "not an image Pillow can read; expected PNG, JPEG, WebP, ...", path=path
        ) from exc
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, EOFError...
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "truncated" in detail.lower() or isinstance(exc, EOFError):
            msg = f"truncated or damaged image ({detail})"
        elif "too large" in detail.lower():
            msg = f"image metadata too large ({detail}); refusing an oversized text chunk"
        else:
            msg = f"cannot decode image ({type(exc).__name__}: {detail})"
        raise ImageError(msg, path=path) from exc


def load_training_images(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    min_images: int = MIN_TRAINING_IMAGES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> TrainingImages:
    """Collect, validate and decode the training images named by ``inputs``.

    Raises:
        ImageError: a missing path, an unreadable or hostile image, or fewer than
            ``min_images`` images.
    """
    paths = collect_image_paths(inputs)
    if len(paths) < min_images:
        shown = ", ".join(str(p) for p in paths[:5]) or "none"
        raise ImageError(
            f"found {len(paths)} training image(s) ({shown}); expected at least {min_images}",
            found=len(paths),
            expected=min_images,
        )
    images, digests, pixel_digests = [], [], set()
    for p in paths:
        size = p.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            raise ImageError(
                f"file is {size:,} bytes; expected at most {MAX_IMAGE_FILE_BYTES:,}", path=str(p)
            )
        if size == 0:
            raise ImageError("empty file; expected an image", path=str(p))
        data = p.read_bytes()
        img = open_image(data, path=str(p), max_pixels=max_pixels)
        images.append(img)
        digests.append(hashlib.sha256(data).hexdigest())
        pixel_digests.add(hashlib.sha256(img.tobytes() + repr(img.size).encode()).hexdigest())
    notes = []
    if len(images) > 1 and len(pixel_digests) == 1:
        notes.append(
            f"all {len(images)} training images are identical; the concept will learn one picture"
        )
    return TrainingImages(images=images, paths=paths, sha256s=digests, warnings=notes)


@dataclass(frozen=True)
class CropGeometry:
    """Where one training square came from: SDXL's size and crop conditioning.

    SDXL's UNet is conditioned on six numbers per image, ``(original_h, original_w,
    crop_top, crop_left, target_h, target_w)`` (Podell et al. 2023, "SDXL", section 2.2;
    the ``add_time_ids`` of diffusers' SDXL pipelines and training scripts). The crop
    offsets are in pixels of the image resized so that its short side is the training
    resolution (the frame the crop is taken from), as diffusers' and kohya's SDXL
    trainers compute them.

    Attributes:
        original_h, original_w: the image's own size in pixels, before any resize.
        top, left: the square crop's top-left corner, in pixels of the resized image.
        flipped_left: the crop's left offset in the mirrored image (``resized_w - left -
            resolution``), what the mirrored latent is conditioned on.
        target_h, target_w: the trained size when it is not the square ``resolution``
            (an aspect-ratio bucket, :mod:`conceptlib.trainer.buckets`).
    """

    original_h: int
    original_w: int
    top: int
    left: int
    flipped_left: int
    target_h: int | None = None
    target_w: int | None = None

    def time_ids(self, resolution: int, *, flipped: bool = False) -> list[int]:
        """``[original_h, original_w, crop_top, crop_left, target_h, target_w]``; the
        target is ``resolution`` square unless the geometry has its own (a bucket)."""
        left = self.flipped_left if flipped else self.left
        th = self.target_h if self.target_h is not None else resolution
        tw = self.target_w if self.target_w is not None else resolution
        return [self.original_h, self.original_w, self.top, left, th, tw]


def _square(w: int, h: int) -> tuple[int, int, int]:
    """The centre square of a ``w x h`` image: ``(side, left, top)`` in its pixels."""
    side = min(w, h)
    return side, (w - side) // 2, (h - side) // 2


def crop_geometry(images: Sequence[Any], resolution: int) -> list[CropGeometry]:
    """The :class:`CropGeometry` of each image as :func:`to_pixels` crops it."""
    out = []
    for img in images:
        w, h = img.size
        side, left, top = _square(w, h)
        scale = resolution / side
        resized_w = round(w * scale)
        crop_left, crop_top = round(left * scale), round(top * scale)
        out.append(
            CropGeometry(
                original_h=h,
                original_w=w,
                top=crop_top,
                left=crop_left,
                flipped_left=resized_w - crop_left - resolution,
            )  # fmt: skip
        )
    return out


def to_pixels(images: Sequence[Any], resolution: int) -> np.ndarray:
    """Center-crop each image to a square, resize to ``resolution``; ``[N, 3, r, r]`` in [-1, 1].

    The crop of each image is described by :func:`crop_geometry`.
    """
    from PIL import Image

    out = np.empty((len(images), 3, resolution, resolution), dtype=np.float32)
    for i, img in enumerate(images):
        w, h = img.size
        side, left, top = _square(w, h)
        square = img.crop((left, top, left + side, top + side))
        square = square.resize((resolution, resolution), Image.Resampling.LANCZOS)
        arr = np.asarray(square, dtype=np.float32).transpose(2, 0, 1)
        out[i] = arr / 127.5 - 1.0
    return out

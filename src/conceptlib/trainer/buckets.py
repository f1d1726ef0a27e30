"""Aspect-ratio buckets: train non-square images without cutting the concept off.

With ``--buckets`` (kohya sd-scripts' ``enable_bucket`` option, OneTrainer's aspect-ratio
bucketing) each image is resized to the bucket whose aspect ratio is nearest its own,
instead of centre-cropping a square:

* the buckets are the sizes ``w x h`` with both sides multiples of ``reso_steps`` (64 px;
  8 px below 256 px, i.e. for the tiny models) between ``min_reso`` and ``max_reso``
  (default half and twice the resolution) and an area of at most ``resolution**2``:
  for each width ``w``, ``h`` is the largest multiple of the step with ``w * h <=
  resolution**2``, and the transposed size too (:func:`bucket_sizes`);
* an image goes to the bucket nearest its aspect ratio in log scale (a 2:1 and a 1:2
  image are equally far from square), ties to the larger area (:func:`assign_bucket`);
* it is resized so that it covers the bucket, keeping its aspect ratio, and only the
  remainder is cut, centred (:func:`bucket_geometry`);
* with ``no_upscale`` (kohya's ``bucket_no_upscale``) an image is never enlarged: its
  bucket is its own size (scaled down to the area when larger) rounded down to the
  step, whatever ``min_reso`` / ``max_reso`` say.

SDXL's size and crop conditioning follows each image: ``(original_h, original_w,
crop_top, crop_left, bucket_h, bucket_w)`` (the target size is the bucket's, not
``r x r``). The engine caches the latents per bucket, draws every batch from one
bucket (one static shape per bucket: one compiled graph each), and picks the bucket
of each step with a CPU generator seeded by the run's seed, weighted by the bucket's
image count; its state is in the checkpoint, so a resumed run draws the same buckets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptlib.errors import UsageError
from conceptlib.trainer.images import CropGeometry

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class BucketSettings:
    """Resolved bucket options (pixels)."""

    reso_steps: int
    min_reso: int
    max_reso: int
    no_upscale: bool

    def config(self) -> dict[str, Any]:
        return {
            "bucket_reso_steps": self.reso_steps,
            "min_bucket_reso": self.min_reso,
            "max_bucket_reso": self.max_reso,
            "bucket_no_upscale": self.no_upscale,
        }


def check_bucket_options(
    enabled: bool,
    reso_steps: int | None,
    min_reso: int | None,
    max_reso: int | None,
    no_upscale: bool,
    resolution: int | None,
) -> None:
    """Refuse bucket options that cannot work, before anything loads (``resolution``
    ``None``: the model's, checked again by :func:`resolve_buckets` once known).

    Raises:
        UsageError: (exit 2) a bucket option without ``--buckets``, a step that is not
            a positive multiple of 8, sides that are not multiples of the step, or
            ``min > max``.
    """
    given = [n for n, v in (("--bucket-reso-steps", reso_steps), ("--min-bucket-reso", min_reso),
                            ("--max-bucket-reso", max_reso)) if v is not None]  # fmt: skip
    if no_upscale:
        given.append("--bucket-no-upscale")
    if not enabled:
        if given:
            raise UsageError(f"{', '.join(given)} needs --buckets", hint="add --buckets")
        return
    if resolution is not None:
        resolve_buckets(resolution, reso_steps, min_reso, max_reso, no_upscale)
    elif reso_steps is not None and (reso_steps < 8 or reso_steps % 8):
        raise UsageError(f"--bucket-reso-steps {reso_steps}: expected a positive multiple of 8")


def resolve_buckets(
    resolution: int,
    reso_steps: int | None = None,
    min_reso: int | None = None,
    max_reso: int | None = None,
    no_upscale: bool = False,
) -> BucketSettings:
    """The bucket settings for ``resolution``, defaults filled in and checked.

    Raises:
        UsageError: (exit 2) as :func:`check_bucket_options`, and ``resolution`` outside
            ``min_reso..max_reso``.
    """
    step = reso_steps if reso_steps is not None else (64 if resolution >= 256 else 8)
    if step < 8 or step % 8:
        raise UsageError(f"--bucket-reso-steps {step}: expected a positive multiple of 8")
    lo = min_reso if min_reso is not None else max(step, resolution // 2 // step * step)
    hi = max_reso if max_reso is not None else resolution * 2 // step * step
    for flag, value in (("--min-bucket-reso", lo), ("--max-bucket-reso", hi)):
        if value < step or value % step:
            raise UsageError(
                f"{flag} {value}: expected a multiple of --bucket-reso-steps ({step}), at "
                f"least {step}"
            )
    if not lo <= resolution <= hi:
        raise UsageError(
            f"--min-bucket-reso {lo} / --max-bucket-reso {hi}: expected the resolution "
            f"({resolution}) between them"
        )
    return BucketSettings(step, lo, hi, bool(no_upscale))


def bucket_sizes(resolution: int, settings: BucketSettings) -> list[tuple[int, int]]:
    """Every bucket ``(w, h)``, sorted by aspect ratio (the square one included when the
    step divides the resolution)."""
    step, lo, hi = settings.reso_steps, settings.min_reso, settings.max_reso
    area = resolution * resolution
    sizes: set[tuple[int, int]] = set()
    for w in range(lo, hi + 1, step):
        h = min(hi, area // w // step * step)
        if h >= lo:
            sizes.update({(w, h), (h, w)})
    if resolution % step == 0:
        sizes.add((resolution, resolution))
    return sorted(sizes, key=lambda s: (s[0] / s[1], -s[0] * s[1]))


def assign_bucket(
    width: int, height: int, resolution: int, settings: BucketSettings,
    sizes: Sequence[tuple[int, int]] | None = None,
) -> tuple[int, int]:  # fmt: skip
    """The bucket ``(w, h)`` of a ``width x height`` image."""
    step = settings.reso_steps
    if settings.no_upscale:
        w, h = float(width), float(height)
        if w * h > resolution * resolution:
            scale = math.sqrt(resolution * resolution / (w * h))
            w, h = w * scale, h * scale
        return max(step, int(w) // step * step), max(step, int(h) // step * step)
    sizes = sizes or bucket_sizes(resolution, settings)
    ratio = math.log(width / height)
    return min(sizes, key=lambda s: (round(abs(math.log(s[0] / s[1]) - ratio), 9), -s[0] * s[1]))


def bucket_geometry(
    width: int, height: int, bucket: tuple[int, int]
) -> tuple[CropGeometry, tuple[int, int]]:
    """How a ``width x height`` image fills ``bucket``: its :class:`CropGeometry` (crop
    offsets in the resized frame, target size the bucket's) and that resized size."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    rw, rh = max(bw, round(width * scale)), max(bh, round(height * scale))
    left, top = (rw - bw) // 2, (rh - bh) // 2
    geo = CropGeometry(original_h=height, original_w=width, top=top, left=left,
                       flipped_left=rw - left - bw, target_h=bh, target_w=bw)  # fmt: skip
    return geo, (rw, rh)


@dataclass
class BucketPixels:
    """The images of one bucket, ready for the VAE.

    Attributes:
        size: ``(w, h)`` in pixels.
        images: the index of each image in the run's image list.
        pixels: ``[n, 3, h, w]`` float32 in [-1, 1].
        geometry: each image's :class:`CropGeometry`.
        resolution: the run's resolution (its previews' size).
    """

    size: tuple[int, int]
    images: list[int]
    pixels: np.ndarray
    geometry: list[CropGeometry]
    resolution: int


def to_bucket_pixels(
    images: Sequence[Any], resolution: int, settings: BucketSettings
) -> list[BucketPixels]:
    """Group ``images`` (Pillow RGB) into buckets, each resized and cropped to its size;
    buckets sorted by size, images in input order."""
    from PIL import Image

    sizes = bucket_sizes(resolution, settings)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(assign_bucket(*img.size, resolution, settings, sizes), []).append(i)
    out = []
    for size in sorted(groups):
        bw, bh = size
        arr = np.empty((len(groups[size]), 3, bh, bw), dtype=np.float32)
        geos = []
        for j, i in enumerate(groups[size]):
            geo, (rw, rh) = bucket_geometry(*images[i].size, size)
            im = images[i].resize((rw, rh), Image.Resampling.LANCZOS)
            im = im.crop((geo.left, geo.top, geo.left + bw, geo.top + bh))
            arr[j] = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
            geos.append(geo)
        out.append(BucketPixels(size, list(groups[size]), arr, geos, resolution))
    return out


def bucket_counts(buckets: Sequence[BucketPixels]) -> dict[str, int]:
    """``{"WxH": images}``, for the run's config and log."""
    return {f"{b.size[0]}x{b.size[1]}": len(b.images) for b in buckets}


@dataclass
class LatentBucket:
    """One bucket's cached latents on the device (rows: the images, then their mirrors).

    Attributes:
        mean, std: VAE posterior ``[rows, c, h/8, w/8]``.
        time_ids: SDXL size/crop conditioning ``[rows, 6]`` (``None`` for SD 1.x/2.x).
        image: the run's image index of each row (for per-image prompts).
        count: images in the bucket (its weight when drawing buckets).
    """

    mean: torch.Tensor
    std: torch.Tensor
    time_ids: torch.Tensor | None
    image: torch.Tensor
    count: int


def encode_buckets(
    engine: Any, buckets: Sequence[BucketPixels], *, flip: bool
) -> list[LatentBucket]:
    """Encode every bucket once with ``engine``'s VAE (``engine._encode_images``)."""
    import torch

    from conceptlib.schemas.enums import Family

    out = []
    for b in buckets:
        mean, std = engine._encode_images(b.pixels, flip=flip)
        rows = [g.time_ids(0) for g in b.geometry]
        image = list(b.images)
        if flip:
            rows += [g.time_ids(0, flipped=True) for g in b.geometry]
            image += list(b.images)
        time_ids = (
            torch.tensor(rows, device=engine.device, dtype=torch.float32)
            if engine.family == Family.SDXL
            else None
        )
        idx = torch.tensor(image, device=engine.device, dtype=torch.long)
        out.append(LatentBucket(mean, std, time_ids, idx, len(b.images)))
    return out


def pick_bucket(weights: torch.Tensor, generator: torch.Generator) -> int:
    """A bucket index drawn with probability proportional to ``weights`` (a CPU tensor;
    with a CPU ``generator`` this never waits for the device)."""
    import torch

    if generator.device.type != "cpu":
        weights = weights.to(generator.device)
    return int(torch.multinomial(weights, 1, generator=generator))


def config_entries(
    settings: BucketSettings | None, buckets: Sequence[BucketPixels] | None
) -> dict[str, Any]:
    """What the run's config records about buckets."""
    if settings is None:
        return {"buckets": False}
    return {"buckets": True, **settings.config(), "bucket_counts": bucket_counts(buckets or [])}


def describe(buckets: Sequence[BucketPixels]) -> str:
    """One log line: ``"3 aspect-ratio buckets: 40x24 (2), 32x32 (1), ..."``."""
    shown = ", ".join(f"{k} ({v})" for k, v in bucket_counts(buckets).items())
    return f"{len(buckets)} aspect-ratio bucket(s): {shown}"

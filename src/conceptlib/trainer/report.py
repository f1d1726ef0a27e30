"""Training reports drawn with Pillow: the loss curve and the grid of samples."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

_BG = (255, 255, 255)
_AXIS = (60, 60, 60)
_GRID = (225, 225, 225)
_RAW = (170, 190, 220)
_SMOOTH = (200, 60, 40)
_CLIP_I = (30, 130, 60)
_CLIP_T = (120, 60, 170)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def loss_curve_png(
    losses: Sequence[float],
    *,
    title: str = "training loss",
    width: int = 720,
    height: int = 400,
    quality: Sequence[dict[str, Any]] = (),
) -> bytes:
    """A PNG of the per-step loss (light) and its moving average (bold); with
    ``quality`` (``{"step", "clip_i", "clip_t"}`` each), CLIP-I and CLIP-T as markers
    on a second axis (right)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), _BG)
    d = ImageDraw.Draw(img)
    small, big = _font(12), _font(15)
    left, right, top, bottom = 70, (60 if quality else 20), 40, 45
    pw, ph = width - left - right, height - top - bottom
    d.text((left, 10), title, fill=_AXIS, font=big)
    finite = [v for v in losses if math.isfinite(v)]
    n = len(losses)
    if not finite:
        d.text((left, top + ph // 2), "no finite loss values", fill=_AXIS, font=small)
        return _png(img)
    window = max(1, n // 25)
    avg = smooth([v if math.isfinite(v) else finite[-1] for v in losses], window)
    ordered = sorted(finite)
    lo = ordered[0]
    hi = ordered[min(len(ordered) - 1, int(0.98 * (len(ordered) - 1)) + 1)]  # clip rare spikes
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def xy(i: int, v: float) -> tuple[float, float]:
        x = left + (pw * i / max(1, n - 1))
        y = top + ph * (1 - (min(max(v, lo), hi) - lo) / (hi - lo))
        return x, y

    for k in range(5):
        y = top + ph * k / 4
        d.line([(left, y), (left + pw, y)], fill=_GRID)
        d.text((5, y - 7), _fmt(hi - (hi - lo) * k / 4), fill=_AXIS, font=small)
    d.rectangle([left, top, left + pw, top + ph], outline=_AXIS)
    raw = [xy(i, v) for i, v in enumerate(losses) if math.isfinite(v)]
    if len(raw) > 1:
        d.line(raw, fill=_RAW, width=1)
    line = [xy(i, v) for i, v in enumerate(avg)]
    if len(line) > 1:
        d.line(line, fill=_SMOOTH, width=3)
    d.text((left, top + ph + 8), "step 1", fill=_AXIS, font=small)
    label = f"step {n}"
    d.text(
        (left + pw - d.textlength(label, font=small), top + ph + 8), label, fill=_AXIS, font=small
    )
    legend = f"per step (light), mean of {window} (bold); last {_fmt(avg[-1])}"
    if quality:
        _quality_axis(d, quality, n, left, top, pw, ph, small)
        last = quality[-1]
        legend += f"; CLIP-I {last['clip_i']:.3f} (green), CLIP-T {last['clip_t']:.3f} (purple)"
    d.text(
        (left + pw // 2 - d.textlength(legend, font=small) // 2, top + ph + 24),
        legend,
        fill=_AXIS,
        font=small,
    )
    return _png(img)


def _quality_axis(
    d: Any, quality: Sequence[dict[str, Any]], n: int, left: int, top: int, pw: int, ph: int,
    font: Any,
) -> None:  # fmt: skip
    """CLIP-I (green) and CLIP-T (purple) per scored step, on a right axis over their
    own range."""
    values = [float(q[k]) for q in quality for k in ("clip_i", "clip_t")]
    lo, hi = min(values), max(values)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    pad = 0.1 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    for k in range(5):
        y = top + ph * k / 4
        d.text((left + pw + 4, y - 7), f"{hi - (hi - lo) * k / 4:.3f}", fill=_AXIS, font=font)
    for key, colour in (("clip_i", _CLIP_I), ("clip_t", _CLIP_T)):
        points = []
        for q in quality:
            x = left + pw * (int(q["step"]) - 1) / max(1, n - 1)
            y = top + ph * (1 - (float(q[key]) - lo) / (hi - lo))
            points.append((x, y))
            d.ellipse([x - 4, y - 4, x + 4, y + 4], outline=colour, width=2)
        if len(points) > 1:
            d.line(points, fill=colour, width=1)


def sample_grid_png(
    rows: Sequence[tuple[str, Sequence[Any]]],
    *,
    cell: int = 160,
    columns: Sequence[str] = (),
) -> bytes:
    """A grid with one labelled row per entry of ``rows`` (``(label, images)``) and,
    with ``columns``, a header naming each column (the prompt of its images)."""
    from PIL import Image, ImageDraw

    cols = max((len(imgs) for _, imgs in rows), default=1)
    label_w, gap = 90, 4
    head = 34 if columns else 0
    width = label_w + cols * (cell + gap)
    height = head + max(1, len(rows)) * (cell + gap) + gap
    grid = Image.new("RGB", (width, height), _BG)
    d = ImageDraw.Draw(grid)
    font = _font(14)
    small = _font(11)
    for c, text in enumerate(columns[:cols]):
        x = label_w + c * (cell + gap)
        for k, line in enumerate(_wrap(d, text, small, cell, lines=2)):
            d.text((x, 3 + 14 * k), line, fill=_AXIS, font=small)
    for r, (label, imgs) in enumerate(rows):
        y = head + gap + r * (cell + gap)
        d.text((6, y + cell // 2 - 8), label, fill=_AXIS, font=font)
        for c, im in enumerate(imgs):
            # Small samples are enlarged with nearest-neighbour so pixels stay visible.
            resample = Image.Resampling.NEAREST if im.width < cell else Image.Resampling.LANCZOS
            grid.paste(
                im.convert("RGB").resize((cell, cell), resample), (label_w + c * (cell + gap), y)
            )
    return _png(grid)


def _wrap(d: Any, text: str, font: Any, width: int, *, lines: int) -> list[str]:
    """``text`` in at most ``lines`` lines of ``width`` pixels (the last cut with ...)."""
    out: list[str] = []
    for word in text.split():
        if out and d.textlength(out[-1] + " " + word, font=font) <= width:
            out[-1] += " " + word
        else:
            out.append(word)
    if len(out) > lines:
        out = out[:lines]
        out[-1] += " ..."
    for i, line in enumerate(out):
        while len(line) > 1 and d.textlength(line, font=font) > width:
            line = line[:-2] + "…"
        out[i] = line
    return out


def png_bytes(image: Any) -> bytes:
    return _png(image)


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()

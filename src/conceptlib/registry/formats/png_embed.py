"""A1111's "embedding in an image": a PNG or WebP that carries the embedding twice.

1. A PNG text chunk ``sd-ti-embedding`` holds the embedding as base64 JSON, tensors
   written as ``{"TORCHTENSOR": [[...], ...]}``. The PNG is parsed here chunk by
   chunk, with a CRC check on every chunk and caps on chunk and text sizes; only
   that chunk is decompressed, with a bounded output.
2. The picture's side strips hold the same JSON (A1111's
   ``modules/textual_inversion/image_embedding.py``, ``insert_image_data_embed``):
   zlib-compressed, each byte split into its high and low nibble, the two nibble
   streams laid out row by row as RGB pixels ``[height, columns, 3]`` in a strip
   left of the picture (low nibbles) and one right of it (high nibbles), each
   separated from the picture by one black column; each strip's nibbles are XOR-ed
   with the low nibble of an LCG key stream (``a = 1664525``, ``c = 1013904223``,
   ``m = 2**32``, seed 0, each state taken ``% 255``) and the high nibbles of the
   strips carry a decorative dot pattern. Reading crops black borders, takes the
   first and last all-zero (low nibble) columns as the separators, XORs the key
   stream back, joins the nibbles and inflates. This is the only copy a WebP has,
   and the one left when a PNG's text chunks were stripped (by an image host or an
   editor).

The text chunk is read when present (as A1111 does); the pixels are decoded only
without it, after the image's dimensions are checked against :data:`MAX_IMAGE_SIDE`
and :data:`MAX_IMAGE_PIXELS`, with Pillow's decompression-bomb check made an error,
and the inflated JSON is capped like the text chunk's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import struct
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from conceptlib.errors import (
    AmbiguousEmbedding,
    BadTensor,
    CorruptFile,
    EmbeddingFileError,
    FileTooLarge,
    UnsupportedContent,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_KEY = "sd-ti-embedding"
#: Largest chunk accepted; an embedding's base64 JSON is at most a few MB.
MAX_CHUNK_BYTES = 16 * 1024 * 1024
#: Largest decoded text (after zTXt/iTXt decompression) of the embedding chunk, and of
#: all ``sd-ti-embedding`` chunks of one file together (a PNG may repeat the chunk;
#: a hundred small compressed copies must not cost a hundred times this).
MAX_TEXT_BYTES = 16 * 1024 * 1024
MAX_CHUNKS = 100_000
#: Largest side and pixel count decoded when looking for the side-strip encoding. A
#: 75-vector SD 2.x embedding needs about 0.5 M pixels of strips; the caps leave room
#: for a large preview and keep the decoded RGB array under 50 MB.
MAX_IMAGE_SIDE = 16_384
MAX_IMAGE_PIXELS = 16 * 1024 * 1024
#: A1111's key stream (``image_embedding.lcg``): a 32-bit LCG from seed 0.
LCG_A, LCG_C, LCG_M = 1664525, 1013904223, 2**32


def is_png(data: bytes) -> bool:
    """The 8-byte PNG signature."""
    return data[:8] == PNG_SIGNATURE


def is_webp(data: bytes) -> bool:
    """A RIFF container of type WEBP."""
    return len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def iter_png_chunks(data: bytes, *, path: str | None = None) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(type, body)`` for each chunk up to ``IEND``, checking structure and CRCs.

    Raises:
        CorruptFile: bad signature, truncation, bad CRC, no IHDR first, no IEND.
        FileTooLarge: a chunk larger than :data:`MAX_CHUNK_BYTES`.
    """
    if not is_png(data):
        raise CorruptFile("file does not start with the PNG signature", path=path)
    pos = len(PNG_SIGNATURE)
    count = 0
    while True:
        if pos + 8 > len(data):
            raise CorruptFile(f"PNG is truncated at byte {pos} (no IEND chunk)", path=path)
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        if length > 0x7FFFFFFF:
            raise CorruptFile(f"PNG chunk at byte {pos} claims {length} bytes", path=path)
        if length > MAX_CHUNK_BYTES:
            raise FileTooLarge(
                f"PNG chunk {ctype!r} is {length} bytes; expected at most {MAX_CHUNK_BYTES}",
                path=path,
            )
        end = pos + 8 + length + 4
        if end > len(data):
            raise CorruptFile(
                f"PNG chunk {ctype!r} at byte {pos} runs past the end of the file (truncated)",
                path=path,
            )
        body = data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[end - 4 : end])
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            raise CorruptFile(f"PNG chunk {ctype!r} at byte {pos} has a bad CRC", path=path)
        if count == 0 and ctype != b"IHDR":
            raise CorruptFile(f"PNG starts with chunk {ctype!r}; expected IHDR", path=path)
        count += 1
        if count > MAX_CHUNKS:
            raise CorruptFile(f"PNG has more than {MAX_CHUNKS} chunks", path=path)
        yield ctype, body
        if ctype == b"IEND":
            return
        pos = end


def _inflate(
    blob: bytes,
    what: str,
    path: str | None,
    *,
    whole: bool = False,
    limit: int = MAX_TEXT_BYTES,
) -> bytes:
    """zlib-inflate ``blob`` to at most ``limit`` bytes; ``whole``: the stream must end.

    Never produces more than ``limit + 1`` bytes, whatever the stream claims.
    """
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(blob, limit + 1)
    except zlib.error as exc:
        raise CorruptFile(f"{what} does not decompress ({exc})", path=path) from None
    if len(out) > limit or inflater.unconsumed_tail:
        if limit < MAX_TEXT_BYTES:
            raise FileTooLarge(
                f"{what} and the {TEXT_KEY!r} chunks before it decompress to more than "
                f"{MAX_TEXT_BYTES} bytes in all",
                path=path,
            )
        raise FileTooLarge(f"{what} decompresses to more than {MAX_TEXT_BYTES} bytes", path=path)
    if whole and not inflater.eof:
        raise CorruptFile(f"{what} is truncated (its zlib stream does not end)", path=path)
    return out


def _text_of(
    ctype: bytes, body: bytes, path: str | None, limit: int = MAX_TEXT_BYTES
) -> tuple[str, bytes | None]:
    """Keyword and raw text of a text chunk; the text only for ``sd-ti-embedding``.

    A compressed text is inflated to at most ``limit`` bytes (what is left of the
    file's budget).
    """
    key_raw, sep, rest = body.partition(b"\x00")
    if not sep:
        raise CorruptFile(f"PNG {ctype.decode('ascii', 'replace')} chunk has no keyword", path=path)
    key = key_raw.decode("latin-1")
    if key != TEXT_KEY:
        return key, None
    what = f"PNG {ctype.decode('ascii')} chunk {TEXT_KEY!r}"
    if ctype == b"tEXt":
        return key, rest
    if ctype == b"zTXt":
        if not rest or rest[0] != 0:
            raise CorruptFile(f"{what} uses an unknown compression method", path=path)
        return key, _inflate(rest[1:], what, path, limit=limit)
    # iTXt: flag, method, language\0, translated keyword\0, UTF-8 text
    if len(rest) < 2:
        raise CorruptFile(f"{what} is truncated", path=path)
    flag, method = rest[0], rest[1]
    parts = rest[2:].split(b"\x00", 2)
    if len(parts) != 3:
        raise CorruptFile(f"{what} is malformed", path=path)
    text = parts[2]
    if flag:
        if method != 0:
            raise CorruptFile(f"{what} uses an unknown compression method", path=path)
        text = _inflate(text, what, path, limit=limit)
    return key, text


def _tensor_hook(obj: dict[str, Any]) -> Any:
    if "TORCHTENSOR" in obj:
        try:
            with np.errstate(over="ignore"):  # beyond float32: Inf, refused as a BadTensor
                return np.asarray(obj["TORCHTENSOR"], dtype=np.float64).astype(np.float32)
        except (ValueError, TypeError, OverflowError):
            raise BadTensor(
                "TORCHTENSOR value is not a rectangular array of numbers; expected [[float, ...], ...]"
            ) from None
    return obj


def _decode_json(raw: bytes, what: str, path: str | None) -> dict[str, Any]:
    """A1111's embedding JSON (tensors as ``TORCHTENSOR`` lists) to a dict of arrays."""
    try:
        obj = json.loads(raw.decode("utf-8"), object_hook=_tensor_hook)
    except BadTensor as exc:
        raise BadTensor(exc.message, path=path) from None
    except UnicodeDecodeError:
        raise CorruptFile(f"{what} does not hold UTF-8 JSON", path=path) from None
    except json.JSONDecodeError as exc:
        raise CorruptFile(f"{what} is not JSON ({exc.msg} at {exc.pos})", path=path) from None
    except ValueError:  # an integer too long to parse (Python's int_max_str_digits)
        raise CorruptFile(f"{what} holds a number too long to parse", path=path) from None
    except RecursionError:
        raise CorruptFile(f"{what} nests JSON too deeply", path=path) from None
    if not isinstance(obj, dict):
        raise UnsupportedContent(
            f"{what} holds a JSON {type(obj).__name__}; expected an object with string_to_param",
            path=path,
        )
    return obj


def decode_embedding_text(text: bytes, *, path: str | None = None) -> dict[str, Any]:
    """Decode A1111's base64 JSON (tensors as ``TORCHTENSOR`` lists) to a dict of arrays."""
    try:
        raw = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CorruptFile(f"PNG chunk {TEXT_KEY!r} is not base64", path=path) from None
    return _decode_json(raw, f"PNG chunk {TEXT_KEY!r}", path)


# --------------------------------------------------------------------------- side strips


def lcg_key(n: int) -> np.ndarray:
    """The first ``n`` values of A1111's key stream, low nibble only (uint8 ``[n]``).

    State ``s_{k+1} = (a * s_k + c) mod 2**32`` from ``s_0 = 0``; value ``s_k % 255``
    (A1111's ``image_embedding.lcg``), of which the strips use ``& 0x0F``. Computed
    by doubling: the states ``k..2k`` are the states ``0..k`` advanced by ``k`` steps,
    one affine map whose coefficients compose; so no Python loop per pixel.
    """
    states = np.empty(n, dtype=np.uint64)
    if n:
        states[0] = LCG_C
    filled, a_k, c_k = 1, LCG_A, LCG_C  # (a_k, c_k): advance by `filled` steps
    while filled < n:
        take = min(filled, n - filled)
        states[filled : filled + take] = (
            states[:take] * np.uint64(a_k) + np.uint64(c_k)
        ) & np.uint64(LCG_M - 1)  # < 2**64: both factors are below 2**32
        a_k, c_k = (a_k * a_k) % LCG_M, (a_k * c_k + c_k) % LCG_M
        filled += take
    return ((states % np.uint64(255)) & np.uint64(0x0F)).astype(np.uint8)


def _strips(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The low- and high-nibble strips of an ``[h, w, 3]`` uint8 picture, or None.

    None when the picture has no two all-zero (low nibble) columns with equal,
    non-empty strips outside them: a plain picture.
    """
    lit = (rgb > 0).all(axis=2)  # black borders: no pixel with every channel lit
    rows, cols = np.flatnonzero(lit.any(axis=1)), np.flatnonzero(lit.any(axis=0))
    if not rows.size:
        return None
    low = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] & 0x0F
    black = np.flatnonzero(~low.any(axis=(0, 2)))
    if black.size < 2:
        return None
    lower, upper = low[:, : black[0]], low[:, black[-1] + 1 :]
    if not lower.size or lower.shape != upper.shape:
        return None
    return lower, upper


def _looks_like_zlib(head: bytes) -> bool:
    """RFC 1950 header: deflate, a window of at most 32 KiB, no preset dictionary, FCHECK."""
    return (
        len(head) >= 2
        and head[0] & 0x0F == 8
        and head[0] >> 4 <= 7
        and not head[1] & 0x20
        and (head[0] << 8 | head[1]) % 31 == 0
    )


def _strip_bytes(rgb: np.ndarray, *, head_only: bool = False) -> bytes | None:
    """The zlib stream A1111 hid in the strips (or its first 2 bytes), or None."""
    found = _strips(rgb)
    if found is None:
        return None
    lower, upper = found
    if head_only:  # the first two bytes are the first pixel's red and green
        lower, upper = lower[0, 0, :2], upper[0, 0, :2]
    key = lcg_key(lower.size).reshape(lower.shape)
    joined = ((upper ^ key) << 4) | (lower ^ key)
    out = joined.tobytes()
    return out if _looks_like_zlib(out) else None


def _check_size(width: int, height: int, fmt: str, path: str | None) -> None:
    if width > MAX_IMAGE_SIDE or height > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS:
        raise FileTooLarge(
            f"{fmt} image is {width} x {height} pixels; expected at most {MAX_IMAGE_SIDE} a side "
            f"and {MAX_IMAGE_PIXELS} pixels (an embedding image is a preview with two strips)",
            path=path,
        )


def _decode_rgb(data: bytes, fmt: str, path: str | None) -> np.ndarray:
    """Decode the picture as ``[h, w, 3]`` uint8 after checking its size from the header.

    A PNG's size comes from its IHDR (already checked by :func:`iter_png_chunks`)
    before Pillow sees the file; a WebP's from Pillow's header parse, before any
    pixel is decoded.

    Raises:
        FileTooLarge: a side over :data:`MAX_IMAGE_SIDE` or more than
            :data:`MAX_IMAGE_PIXELS` pixels, or Pillow's decompression-bomb check
            (its warning made an error).
        CorruptFile: Pillow cannot decode the image.
    """
    from PIL import Image

    if fmt == "PNG":
        _check_size(*struct.unpack(">II", data[16:24]), fmt, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                _check_size(*im.size, fmt, path)
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except EmbeddingFileError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FileTooLarge(f"{fmt} image is too large to decode ({exc})", path=path) from None
    except MemoryError:
        raise FileTooLarge(f"{fmt} image is too large to decode", path=path) from None
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, EOFError...
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise CorruptFile(f"{fmt} image cannot be decoded ({lines[0][:120]})", path=path) from None


def read_strip_embedding(
    data: bytes, fmt: str, *, path: str | None = None
) -> dict[str, Any] | None:
    """The embedding A1111 hid in a PNG's or WebP's side strips, or None for a plain picture.

    Args:
        data: the image file.
        fmt: ``"PNG"`` or ``"WEBP"`` (the container, already recognised).
        path: where it came from, for messages.

    Returns:
        The decoded dict, as :func:`read_png_embedding`; None when the picture has no
        strips whose first bytes start a zlib stream.

    Raises:
        FileTooLarge: the image's dimensions (before decoding) or the inflated JSON
            exceed the caps.
        CorruptFile: the image cannot be decoded, or strips that start a zlib stream
            do not inflate to complete UTF-8 JSON.
        BadTensor, UnsupportedContent: as for the text chunk.
    """
    blob = _strip_bytes(_decode_rgb(data, fmt, path))
    if blob is None:
        return None
    what = f"{fmt} side-strip data"
    return _decode_json(_inflate(blob, what, path, whole=True), what, path)


def read_png_embedding(data: bytes, *, path: str | None = None) -> dict[str, Any]:
    """Return the A1111 embedding dict stored in a PNG: its text chunk, else its side strips.

    Args:
        data: the PNG file.
        path: where it came from, for messages.

    Returns:
        The decoded dict (``string_to_param`` values as float32 numpy arrays, plus
        ``name``, ``step``, ``sd_checkpoint`` ... as written).

    Raises:
        CorruptFile: broken PNG structure, CRC, base64, JSON, pixels or strip data.
        FileTooLarge: oversized chunks, decompressed text, image dimensions or strip data.
        UnsupportedContent: a PNG with neither the chunk nor the strips (a plain image).
        AmbiguousEmbedding: several ``sd-ti-embedding`` chunks that differ.

    Memory: only the first chunk's text is kept (the others are compared by their
    SHA-256 as they come), and all the chunks' texts together may inflate to at most
    :data:`MAX_TEXT_BYTES`; so a small PNG repeating a compressed chunk costs at most
    that, not that times the number of chunks.
    """
    first: bytes | None = None
    digests: set[bytes] = set()
    count = 0
    budget = MAX_TEXT_BYTES
    for ctype, body in iter_png_chunks(data, path=path):
        if ctype in (b"tEXt", b"zTXt", b"iTXt"):
            _key, text = _text_of(ctype, body, path, limit=budget)
            if text is None:
                continue
            if len(text) > budget:
                raise FileTooLarge(
                    f"PNG's {TEXT_KEY!r} chunks hold more than {MAX_TEXT_BYTES} bytes of text "
                    "in all",
                    path=path,
                )
            budget -= len(text)
            count += 1
            digests.add(hashlib.sha256(text).digest())
            if first is None:
                first = text
    if len(digests) > 1:
        raise AmbiguousEmbedding(
            f"PNG has {count} {TEXT_KEY!r} chunks, {len(digests)} different; expected one",
            path=path,
            candidates=[f"chunk {i}" for i in range(min(count, 16))],
        )
    if first is not None:
        return decode_embedding_text(first, path=path)
    obj = read_strip_embedding(data, "PNG", path=path)
    if obj is None:
        raise UnsupportedContent(
            f"PNG image has no {TEXT_KEY!r} text chunk and no embedding in the picture's side "
            "strips; expected an A1111 embedding image",
            path=path,
        )
    return obj


def read_webp_embedding(data: bytes, *, path: str | None = None) -> dict[str, Any]:
    """Return the A1111 embedding dict kept in a (lossless) WebP's side strips.

    A WebP has no text chunk for it: A1111 reads the strips only.

    Raises:
        CorruptFile: a RIFF header whose size does not match the file; pixels that
            cannot be decoded; broken strip data.
        FileTooLarge: image dimensions or strip data over the caps.
        UnsupportedContent: a WebP without the strips (a plain image, or a lossy one).
    """
    (size,) = struct.unpack("<I", data[4:8])
    if size + 8 > len(data):
        raise CorruptFile(
            f"WebP header claims {size + 8} bytes but the file has {len(data)} (truncated)",
            path=path,
        )
    obj = read_strip_embedding(data, "WEBP", path=path)
    if obj is None:
        raise UnsupportedContent(
            "WebP image has no embedding in the picture's side strips (a plain or lossy "
            "image); expected an A1111 embedding image, a PNG with an "
            f"{TEXT_KEY!r} chunk, .pt or .safetensors",
            path=path,
        )
    return obj


def image_may_hold_embedding(data: bytes) -> bool:
    """Whether an image found in a folder should be tried as an embedding.

    True for a PNG with an ``sd-ti-embedding`` text chunk anywhere (its chunks are
    walked, so the position does not matter), and for a PNG or WebP whose side
    strips start a zlib stream (the picture is decoded within the size caps, and
    only the first two strip bytes are un-XOR-ed). A damaged PNG naming the chunk is
    tried too, so the damage is reported. Anything else (JPEG, plain pictures,
    oversized images) is not: never raises.
    """
    png = is_png(data)
    if png:
        try:
            for ctype, body in iter_png_chunks(data):
                if ctype in (b"tEXt", b"zTXt", b"iTXt") and body.startswith(
                    TEXT_KEY.encode() + b"\x00"
                ):
                    return True
        except (CorruptFile, FileTooLarge):
            return TEXT_KEY.encode() in data
    elif not is_webp(data):
        return False
    try:
        rgb = _decode_rgb(data, "PNG" if png else "WEBP", None)
    except (CorruptFile, FileTooLarge):
        return False
    return _strip_bytes(rgb, head_only=True) is not None


# --------------------------------------------------------------------------- writing


def _chunk(ctype: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(ctype + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", crc)


def plain_png(width: int = 64, height: int = 64, rgb: tuple[int, int, int] = (40, 40, 40)) -> bytes:
    """A small solid-colour RGB PNG, written without an imaging library."""
    row = b"\x00" + bytes(rgb) * width
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(row * height, 9))
        + _chunk(b"IEND", b"")
    )


def text_chunk(key: str, text: bytes, *, kind: str = "tEXt") -> bytes:
    """One PNG text chunk (``tEXt``, ``zTXt`` or ``iTXt``) holding ``text`` under ``key``."""
    kw = key.encode("latin-1")
    if kind == "tEXt":
        return _chunk(b"tEXt", kw + b"\x00" + text)
    if kind == "zTXt":
        return _chunk(b"zTXt", kw + b"\x00\x00" + zlib.compress(text, 9))
    if kind == "iTXt":
        return _chunk(b"iTXt", kw + b"\x00\x01\x00" + b"\x00\x00" + zlib.compress(text, 9))
    raise ValueError(f"unknown PNG text chunk kind {kind!r}")


def insert_chunks(png: bytes, chunks: list[bytes]) -> bytes:
    """Insert ready-made chunks into ``png`` just before its ``IEND``."""
    iend = png.rfind(b"IEND")
    if not is_png(png) or iend < 12:
        raise CorruptFile("image is not a PNG with an IEND chunk")
    at = iend - 4
    return png[:at] + b"".join(chunks) + png[at:]


def embedding_text(data: dict[str, Any]) -> bytes:
    """A1111's base64 JSON for an embedding dict (arrays become ``TORCHTENSOR`` lists)."""

    def default(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return {"TORCHTENSOR": value.astype(np.float32).tolist()}
        if hasattr(value, "detach"):
            return {"TORCHTENSOR": value.detach().cpu().float().numpy().tolist()}
        raise TypeError(f"cannot write {type(value).__name__} into an embedding PNG")

    return base64.b64encode(json.dumps(data, default=default).encode("utf-8"))


def write_png_embedding(
    vectors: np.ndarray,
    *,
    name: str,
    step: int = 0,
    sd_checkpoint: str | None = None,
    sd_checkpoint_name: str | None = None,
    image: bytes | None = None,
    kind: str = "tEXt",
) -> bytes:
    """Write an A1111 embedding image: ``image`` (or a plain square) plus the text chunk.

    Args:
        vectors: the ``[n, d]`` vectors of one text encoder (SD 1.x or 2.x).
        name: the A1111 ``name`` field.
        step, sd_checkpoint, sd_checkpoint_name: the other A1111 fields.
        image: a PNG to carry the chunk; a small plain image if None.
        kind: ``tEXt`` (what A1111 writes), ``zTXt`` or ``iTXt``.

    Returns:
        The PNG bytes.
    """
    payload = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": np.asarray(vectors, dtype=np.float32)},
        "name": name,
        "step": step,
        "sd_checkpoint": sd_checkpoint,
        "sd_checkpoint_name": sd_checkpoint_name,
    }
    return insert_chunks(
        image or plain_png(), [text_chunk(TEXT_KEY, embedding_text(payload), kind=kind)]
    )

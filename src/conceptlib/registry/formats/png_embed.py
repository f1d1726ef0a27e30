"""A1111's "embedding in an image": a PNG whose ``sd-ti-embedding`` text chunk holds
the embedding as base64 JSON, tensors written as ``{"TORCHTENSOR": [[...], ...]}``.

The PNG is parsed here chunk by chunk, with a CRC check on every chunk and caps on
chunk and text sizes; the pixels are never decoded, so a decompression bomb in the
image data costs nothing. Only the ``sd-ti-embedding`` chunk is decompressed, with a
bounded output. A1111 also hides a copy in the picture's side strips; conceptlib
reads the text chunk only, and says so when a PNG or WebP has none.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from conceptlib.errors import (
    AmbiguousEmbedding,
    BadTensor,
    CorruptFile,
    FileTooLarge,
    UnsupportedContent,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_KEY = "sd-ti-embedding"
#: Largest chunk accepted; an embedding's base64 JSON is at most a few MB.
MAX_CHUNK_BYTES = 16 * 1024 * 1024
#: Largest decoded text (after zTXt/iTXt decompression) of the embedding chunk.
MAX_TEXT_BYTES = 16 * 1024 * 1024
MAX_CHUNKS = 100_000


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


def _inflate(blob: bytes, what: str, path: str | None) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(blob, MAX_TEXT_BYTES + 1)
    except zlib.error as exc:
        raise CorruptFile(f"PNG {what} does not decompress ({exc})", path=path) from None
    if len(out) > MAX_TEXT_BYTES or inflater.unconsumed_tail:
        raise FileTooLarge(
            f"PNG {what} decompresses to more than {MAX_TEXT_BYTES} bytes", path=path
        )
    return out


def _text_of(ctype: bytes, body: bytes, path: str | None) -> tuple[str, bytes | None]:
    """Keyword and raw text of a text chunk; the text only for ``sd-ti-embedding``."""
    key_raw, sep, rest = body.partition(b"\x00")
    if not sep:
        raise CorruptFile(f"PNG {ctype.decode('ascii', 'replace')} chunk has no keyword", path=path)
    key = key_raw.decode("latin-1")
    if key != TEXT_KEY:
        return key, None
    what = f"{ctype.decode('ascii')} chunk {TEXT_KEY!r}"
    if ctype == b"tEXt":
        return key, rest
    if ctype == b"zTXt":
        if not rest or rest[0] != 0:
            raise CorruptFile(f"PNG {what} uses an unknown compression method", path=path)
        return key, _inflate(rest[1:], what, path)
    # iTXt: flag, method, language\0, translated keyword\0, UTF-8 text
    if len(rest) < 2:
        raise CorruptFile(f"PNG {what} is truncated", path=path)
    flag, method = rest[0], rest[1]
    parts = rest[2:].split(b"\x00", 2)
    if len(parts) != 3:
        raise CorruptFile(f"PNG {what} is malformed", path=path)
    text = parts[2]
    if flag:
        if method != 0:
            raise CorruptFile(f"PNG {what} uses an unknown compression method", path=path)
        text = _inflate(text, what, path)
    return key, text


def _tensor_hook(obj: dict[str, Any]) -> Any:
    if "TORCHTENSOR" in obj:
        try:
            return np.asarray(obj["TORCHTENSOR"], dtype=np.float64).astype(np.float32)
        except (ValueError, TypeError, OverflowError):
            raise BadTensor(
                "TORCHTENSOR value is not a rectangular array of numbers; expected [[float, ...], ...]"
            ) from None
    return obj


def decode_embedding_text(text: bytes, *, path: str | None = None) -> dict[str, Any]:
    """Decode A1111's base64 JSON (tensors as ``TORCHTENSOR`` lists) to a dict of arrays."""
    try:
        raw = base64.b64decode(b"".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CorruptFile(f"PNG chunk {TEXT_KEY!r} is not base64", path=path) from None
    try:
        obj = json.loads(raw.decode("utf-8"), object_hook=_tensor_hook)
    except BadTensor as exc:
        raise BadTensor(exc.message, path=path) from None
    except UnicodeDecodeError:
        raise CorruptFile(f"PNG chunk {TEXT_KEY!r} does not hold UTF-8 JSON", path=path) from None
    except json.JSONDecodeError as exc:
        raise CorruptFile(
            f"PNG chunk {TEXT_KEY!r} is not JSON ({exc.msg} at {exc.pos})", path=path
        ) from None
    except ValueError:  # an integer too long to parse (Python's int_max_str_digits)
        raise CorruptFile(
            f"PNG chunk {TEXT_KEY!r} holds a number too long to parse", path=path
        ) from None
    except RecursionError:
        raise CorruptFile(f"PNG chunk {TEXT_KEY!r} nests JSON too deeply", path=path) from None
    if not isinstance(obj, dict):
        raise UnsupportedContent(
            f"PNG chunk {TEXT_KEY!r} holds a JSON {type(obj).__name__}; expected an object with "
            "string_to_param",
            path=path,
        )
    return obj


def read_png_embedding(data: bytes, *, path: str | None = None) -> dict[str, Any]:
    """Return the A1111 embedding dict stored in a PNG's ``sd-ti-embedding`` chunk.

    Args:
        data: the PNG file.
        path: where it came from, for messages.

    Returns:
        The decoded dict (``string_to_param`` values as float32 numpy arrays, plus
        ``name``, ``step``, ``sd_checkpoint`` ... as written).

    Raises:
        CorruptFile: broken PNG structure, CRC, base64 or JSON.
        FileTooLarge: oversized chunks or decompressed text.
        UnsupportedContent: a PNG without the chunk (a plain image, or an embedding
            kept only in the image's side strips).
        AmbiguousEmbedding: several ``sd-ti-embedding`` chunks that differ.
    """
    found: list[bytes] = []
    for ctype, body in iter_png_chunks(data, path=path):
        if ctype in (b"tEXt", b"zTXt", b"iTXt"):
            _key, text = _text_of(ctype, body, path)
            if text is not None:
                found.append(text)
    if not found:
        raise UnsupportedContent(
            f"PNG image has no {TEXT_KEY!r} text chunk; expected an A1111 embedding image "
            "(embeddings kept only in the picture's side strips are not read)",
            path=path,
        )
    if len(set(found)) > 1:
        raise AmbiguousEmbedding(
            f"PNG has {len(found)} different {TEXT_KEY!r} chunks; expected one",
            path=path,
            candidates=[f"chunk {i}" for i in range(len(found))],
        )
    return decode_embedding_text(found[0], path=path)


def read_webp_embedding(data: bytes, *, path: str | None = None) -> dict[str, Any]:
    """WebP embedding images carry the data only in their side strips: refused clearly.

    Raises:
        CorruptFile: a RIFF header whose size does not match the file.
        UnsupportedContent: always otherwise.
    """
    (size,) = struct.unpack("<I", data[4:8])
    if size + 8 > len(data):
        raise CorruptFile(
            f"WebP header claims {size + 8} bytes but the file has {len(data)} (truncated)",
            path=path,
        )
    raise UnsupportedContent(
        "WebP image: an embedding in a WebP is kept only in the picture's side strips, which "
        f"conceptlib does not read; expected a PNG with an {TEXT_KEY!r} chunk, .pt or "
        ".safetensors",
        path=path,
    )


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

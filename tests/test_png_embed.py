"""A1111 embedding images: the sd-ti-embedding chunk, and PNGs that must be refused."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from fixtures_formats import make_png_embedding, make_webp, png_with_text, rand_vectors
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from conceptlib.errors import (
    AmbiguousEmbedding,
    BadTensor,
    CorruptFile,
    FileTooLarge,
    UnsupportedContent,
)
from conceptlib.registry.formats import png_embed, read_embedding_bytes
from conceptlib.registry.formats.embedding import Embedding
from conceptlib.registry.formats.png_embed import (
    TEXT_KEY,
    insert_chunks,
    iter_png_chunks,
    plain_png,
    read_png_embedding,
    text_chunk,
)


def _b64json(obj: object) -> bytes:
    return base64.b64encode(json.dumps(obj).encode())


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 8),
    width=st.sampled_from([768, 1024]),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["tEXt", "zTXt", "iTXt"]),
)
def test_png_round_trip(n: int, width: int, seed: int, kind: str) -> None:
    vectors = rand_vectors(n, width, seed=seed)
    data = make_png_embedding(vectors, name="ukiyoe", kind=kind, step=42)
    parsed = read_embedding_bytes(data, path="ukiyoe.png")
    assert (parsed.format, parsed.container, parsed.name_hint) == ("a1111-png", "png", "ukiyoe")
    assert parsed.metadata["step"] == 42
    expected = Embedding.from_single(vectors)
    assert parsed.embedding.tensor_sha256 == expected.tensor_sha256


def test_the_image_stays_a_valid_png() -> None:
    data = make_png_embedding(rand_vectors(2, 768))
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.size == (64, 64)
    assert TEXT_KEY in img.text  # what A1111 itself reads


def test_chunk_goes_into_a_given_image() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (10, 7), (200, 10, 10)).save(buf, format="PNG")
    data = make_png_embedding(rand_vectors(1, 768), image=buf.getvalue())
    assert Image.open(io.BytesIO(data)).size == (10, 7)
    assert read_png_embedding(data)["name"] == "cat-toy"


def test_pillow_written_text_chunk_is_read() -> None:
    from PIL.PngImagePlugin import PngInfo

    vectors = rand_vectors(2, 1024, seed=4)
    payload = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": {"TORCHTENSOR": vectors.tolist()}},
        "name": "pil",
        "step": 7,
        "sd_checkpoint": "abc",
        "sd_checkpoint_name": "v2-1",
    }
    info = PngInfo()
    info.add_text(TEXT_KEY, _b64json(payload).decode())
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, format="PNG", pnginfo=info)
    parsed = read_embedding_bytes(buf.getvalue())
    assert parsed.name_hint == "pil"
    assert parsed.metadata["sd_checkpoint_name"] == "v2-1"
    np.testing.assert_array_equal(parsed.embedding.vectors["clip_h"], vectors)


def test_png_without_the_chunk() -> None:
    with pytest.raises(UnsupportedContent, match="no 'sd-ti-embedding' text chunk"):
        read_embedding_bytes(plain_png(), path="photo.png")
    other = insert_chunks(plain_png(), [text_chunk("parameters", b"a photo of a cat")])
    with pytest.raises(UnsupportedContent, match="side strips"):
        read_embedding_bytes(other)


def test_bad_crc_and_truncation() -> None:
    data = make_png_embedding(rand_vectors(1, 768))
    at = data.index(b"tEXt") + 10
    flipped = data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]
    with pytest.raises(CorruptFile, match="bad CRC"):
        read_embedding_bytes(flipped, path="x.png")
    with pytest.raises(CorruptFile, match="truncated"):
        read_embedding_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFile, match="IHDR"):
        read_png_embedding(png_embed.PNG_SIGNATURE + png_embed._chunk(b"tEXt", b"a\x00b"))


def test_oversized_chunk_is_refused_before_reading() -> None:
    head = plain_png()[:33]  # signature + IHDR
    huge = struct.pack(">I", png_embed.MAX_CHUNK_BYTES + 1) + b"tEXt"
    with pytest.raises(FileTooLarge, match="tEXt"):
        list(iter_png_chunks(head + huge + b"\x00" * 16))
    with pytest.raises(CorruptFile):
        list(iter_png_chunks(head + struct.pack(">I", 2**31) + b"tEXt"))


def test_ztxt_bomb_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(png_embed, "MAX_TEXT_BYTES", 1024 * 1024)
    bomb = zlib.compress(b"A" * (8 * 1024 * 1024), 9)  # ~8 KB that inflates to 8 MB
    data = insert_chunks(
        plain_png(), [png_embed._chunk(b"zTXt", TEXT_KEY.encode() + b"\x00\x00" + bomb)]
    )
    with pytest.raises(FileTooLarge, match="decompresses"):
        read_embedding_bytes(data)


def test_pixel_bomb_is_never_decoded() -> None:
    """A PNG that claims 100000 x 100000 pixels: the chunk is read, the pixels never."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    png = (
        png_embed.PNG_SIGNATURE
        + png_embed._chunk(b"IHDR", ihdr)
        + png_embed._chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
        + png_embed._chunk(b"IEND", b"")
    )
    data = make_png_embedding(rand_vectors(1, 768), image=png)
    assert read_embedding_bytes(data).embedding.num_vectors == 1


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        (b"!!! not base64 !!!", CorruptFile, "not base64"),
        (base64.b64encode(b"\xff\xfe"), CorruptFile, "UTF-8"),
        (base64.b64encode(b"{not json"), CorruptFile, "not JSON"),
        (base64.b64encode(b"[1, 2]"), UnsupportedContent, "JSON list"),
        (base64.b64encode(b"[" * 100_000), CorruptFile, "JSON"),
        (
            _b64json({"string_to_param": {"*": {"TORCHTENSOR": [[1.0, 2.0], [3.0]]}}}),
            BadTensor,
            "rectangular",
        ),
        (_b64json({"string_to_param": {"*": {"TORCHTENSOR": [["a"]]}}}), BadTensor, "rectangular"),
        (_b64json({"name": "x"}), UnsupportedContent, "without tensors"),
    ],
)
def test_malformed_payloads(text: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        read_embedding_bytes(png_with_text(text), path="bad.png")


def test_two_different_chunks_are_ambiguous() -> None:
    a = text_chunk(TEXT_KEY, _b64json({"string_to_param": {"*": {"TORCHTENSOR": [[0.0] * 768]}}}))
    b = text_chunk(TEXT_KEY, _b64json({"string_to_param": {"*": {"TORCHTENSOR": [[1.0] * 768]}}}))
    with pytest.raises(AmbiguousEmbedding):
        read_embedding_bytes(insert_chunks(plain_png(), [a, b]))
    assert read_embedding_bytes(insert_chunks(plain_png(), [a, a])).embedding.flags == ["all_zero"]


def test_webp_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedContent, match="WebP"):
        read_embedding_bytes(make_webp(), path="x.webp")
    with pytest.raises(CorruptFile, match="truncated"):
        read_embedding_bytes(make_webp()[:-4])

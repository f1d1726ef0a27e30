"""Training images: validation (bad-inputs 28-29), mode conversion, the images hash."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from conceptlib.errors import ImageError, NotFound, UsageError
from conceptlib.trainer.images import (
    load_training_images,
    open_image,
    to_pixels,
    training_images_hash,
)
from conceptlib.trainer.samples import sample_images, write_sample_images
from conceptlib.trainer.templates import OBJECT_TEMPLATES, STYLE_TEMPLATES, load_templates


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size (a decompression bomb) with a tiny IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _chunk(b"IEND", b"")
    )


def _png_rgb16(width: int, height: int) -> bytes:
    rows = b"".join(
        b"\x00" + np.full((width, 3), 40000, dtype=">u2").tobytes() for _ in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def test_sample_images_are_deterministic_and_distinct(tmp_path):
    a = [im.tobytes() for im in sample_images(4, size=64)]
    b = [im.tobytes() for im in sample_images(4, size=64)]
    assert a == b
    assert len(set(a)) == 4
    paths = write_sample_images(tmp_path, 3, size=48)
    assert [p.name for p in paths] == ["toy-00.png", "toy-01.png", "toy-02.png"]


def test_images_hash_follows_the_documented_recipe(tmp_path):
    paths = write_sample_images(tmp_path / "imgs", 3, size=32)
    imgs = load_training_images([tmp_path / "imgs"])
    digests = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in paths)
    expected = hashlib.sha256("\n".join(digests).encode()).hexdigest()
    assert imgs.hash == expected == training_images_hash(reversed(digests))
    assert imgs.count == 3
    # Independent of order, names and folders.
    renamed = tmp_path / "other"
    renamed.mkdir()
    for i, p in enumerate(reversed(paths)):
        (renamed / f"z{i}.png").write_bytes(p.read_bytes())
    assert load_training_images([renamed]).hash == expected


def test_folder_and_files_mix_and_duplicates_drop(tmp_path):
    paths = write_sample_images(tmp_path, 3, size=32)
    (tmp_path / "notes.txt").write_text("not an image, skipped in folders")
    imgs = load_training_images([tmp_path, paths[0]])
    assert imgs.count == 3


def test_too_few_images(tmp_path):
    write_sample_images(tmp_path, 2, size=32)
    with pytest.raises(ImageError, match="expected at least 3"):
        load_training_images([tmp_path])
    assert load_training_images([tmp_path], min_images=2).count == 2


def test_all_identical_images_warn(tmp_path):
    data = _png(sample_images(1, size=32)[0])
    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(data)
    imgs = load_training_images([tmp_path])
    assert imgs.count == 3
    assert any("identical" in w for w in imgs.warnings)


def test_not_an_image_with_an_image_extension(tmp_path):
    write_sample_images(tmp_path, 3, size=32)
    (tmp_path / "fake.png").write_text("hello, I am text")
    with pytest.raises(ImageError, match="fake.png") as exc:
        load_training_images([tmp_path])
    assert "not an image" in str(exc.value)


def test_truncated_png_and_jpeg(tmp_path):
    img = sample_images(1, size=64)[0]
    png = _png(img)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    for name, data in (("cut.png", png[: len(png) // 2]), ("cut.jpg", buf.getvalue()[:300])):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(ImageError, match=name):
            load_training_images([p], min_images=1)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_training_images([p], min_images=1)


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(30000, 30000))
    with pytest.raises(ImageError, match="pixels"):
        load_training_images([p], min_images=1)
    # The cap is a parameter; Pillow's own bomb check is caught too.
    with pytest.raises(ImageError):
        open_image(_png_header_only(20000, 20000), max_pixels=10**12)


def test_oversized_text_chunk_is_refused():
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * (PngImagePlugin.MAX_TEXT_CHUNK + 10), zip=True)
    data = _png(sample_images(1, size=16)[0], pnginfo=info)
    with pytest.raises(ImageError, match="too large"):
        open_image(data, path="big-text.png")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("CMYK", (16, 16), (0, 255, 255, 0)),
        lambda: Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)),
        lambda: Image.new("RGBA", (16, 16), (255, 0, 0, 0)),
        lambda: Image.new("LA", (16, 16), (10, 128)),
        lambda: Image.new("P", (16, 16), 3),
        lambda: Image.new("1", (16, 16), 1),
        lambda: Image.new("F", (16, 16), 0.5),
    ],
    ids=["cmyk", "gray16", "rgba", "la", "palette", "bilevel", "float"],
)
def test_modes_are_converted_to_rgb(make):
    img = make()
    fmt = "TIFF" if img.mode in ("CMYK", "F") else "PNG"
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    out = open_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (16, 16)


def test_sixteen_bit_values_are_scaled_not_clipped():
    gray = open_image(_png(Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16))))
    assert np.asarray(gray)[0, 0].tolist() == [128, 128, 128]
    rgb = open_image(_png_rgb16(8, 8))
    assert rgb.mode == "RGB"
    assert abs(int(np.asarray(rgb)[0, 0, 0]) - 40000 // 257) <= 1


def test_transparent_pixels_become_white():
    out = open_image(_png(Image.new("RGBA", (4, 4), (255, 0, 0, 0))))
    assert np.asarray(out)[0, 0].tolist() == [255, 255, 255]


def test_missing_path(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_training_images([tmp_path / "nope"])


def test_to_pixels_center_crops_and_scales():
    wide = Image.new("RGB", (40, 20), (255, 255, 255))
    wide.paste((0, 0, 0), (0, 0, 10, 20))  # a black band on the left, cropped away
    px = to_pixels([wide], 8)
    assert px.shape == (1, 3, 8, 8) and px.dtype == np.float32
    assert np.allclose(px, 1.0)


def test_templates(tmp_path):
    assert load_templates(None, kind="object") == list(OBJECT_TEMPLATES)
    assert load_templates(None, kind="style") == list(STYLE_TEMPLATES)
    assert all(t.count("{}") == 1 for t in OBJECT_TEMPLATES + STYLE_TEMPLATES)
    f = tmp_path / "t.txt"
    f.write_text("# mine\na drawing of {}\n\n{} on a table\n")
    assert load_templates(f) == ["a drawing of {}", "{} on a table"]
    f.write_text("no placeholder here\n")
    with pytest.raises(UsageError, match="exactly one"):
        load_templates(f)
    with pytest.raises(NotFound, match="does not exist"):
        load_templates(tmp_path / "missing.txt")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("a photo of a {} on a {table}", "named field"),
        ("a {} next to a {}", "2 '{}' fields"),
        ("a {} and {0}", "named field"),
        ("a {} on a {", "unmatched"),
        ("a {!r} photo", "plain '{}'"),
    ],
)
def test_a_template_that_would_fail_at_the_first_step_fails_when_read(tmp_path, line, why):
    """Before, ``a photo of a {} on a {table}`` passed (one ``{}``) and the run died with a
    KeyError after the base model had loaded."""
    f = tmp_path / "t.txt"
    f.write_text(f"a drawing of {{}}\n{line}\n")
    with pytest.raises(UsageError, match=why) as err:
        load_templates(f)
    assert ":2:" in err.value.message
    assert line not in err.value.message  # the file's text is not echoed back


def test_an_oversized_templates_file_is_refused_before_it_is_read_whole(tmp_path):
    from conceptlib.trainer.templates import MAX_TEMPLATES_BYTES

    f = tmp_path / "huge.txt"
    with f.open("wb") as fh:
        fh.truncate(MAX_TEMPLATES_BYTES * 64)  # sparse: cheap on disk
    with pytest.raises(UsageError, match="over 1024 KiB"):
        load_templates(f)


def test_train_refuses_bad_templates_before_loading_the_base_model(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import conceptlib.models.base as base_mod
    from conceptlib.cli.main import cli

    monkeypatch.setattr(base_mod, "load_base", lambda *a, **k: pytest.fail("model loaded"))
    images = tmp_path / "imgs"
    images.mkdir()
    bad = tmp_path / "t.txt"
    bad.write_text("a {} on a {table}\n")
    args = ["train", str(images), "--name", "tmpl-check", "--init", "toy", "--base", "tiny-sd1"]
    result = CliRunner().invoke(cli, [*args, "--templates", str(bad), "--device", "cpu"])
    assert result.exit_code == 2, result.output
    assert "named field" in result.output
    result = CliRunner().invoke(cli, [*args, "--templates", str(tmp_path / "nope.txt")])
    assert result.exit_code == 6, result.output
    assert "does not exist" in result.output

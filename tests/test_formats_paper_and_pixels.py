"""Files real users bring: the Textual Inversion paper's ``.pt`` (token ids as int64
tensors) and A1111 embedding images whose data lives only in the picture's side
strips (PNG without its text chunk, lossless WebP), found by content in folders.

The side strips are written by our own encoder in ``fixtures_formats`` (from the
public description of A1111's ``image_embedding.py``), never by A1111's code.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_support import import_is_refused
from click.testing import CliRunner
from fixtures_formats import (
    in_torch_zip,
    lcg_reference,
    make_a1111_pt,
    make_paper_pt,
    make_png_embedding,
    make_strip_image,
    picture,
    rand_vectors,
    save_image,
    strip_payload,
    strip_png_text,
    tensor_pickle,
    torch_bytes,
)

from conceptlib.cli.main import cli
from conceptlib.errors import (
    BadTensor,
    CorruptFile,
    FileTooLarge,
    UnsafeFile,
    UnsupportedContent,
)
from conceptlib.registry.formats import png_embed, read_embedding_bytes, safe_pickle
from conceptlib.registry.formats.png_embed import insert_chunks, plain_png, text_chunk
from conceptlib.registry.formats.safe_pickle import safe_torch_load

torch = pytest.importorskip("torch")
PIL_Image = pytest.importorskip("PIL.Image")


# --------------------------------------------------------------------------- the paper's .pt


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("token", ["1d", "view"])
@pytest.mark.parametrize("width", [768, 1024])
def test_paper_layout_reads_with_exact_vectors(legacy: bool, token: str, width: int) -> None:
    vec = rand_vectors(3, width, seed=width)
    parsed = read_embedding_bytes(make_paper_pt(vec, legacy=legacy, token=token), path="p.pt")
    assert (parsed.format, parsed.container) == (
        "a1111-pt",
        "torch-legacy" if legacy else "torch-zip",
    )
    (slot,) = parsed.embedding.vectors
    np.testing.assert_array_equal(parsed.embedding.vectors[slot], vec)
    assert parsed.metadata["string_to_token"] == {"*": 265}
    assert parsed.name_hint is None  # the paper's code writes no name


def test_paper_layout_with_its_parameter_dict() -> None:
    """The code keeps the vectors in an nn.ParameterDict (zip: torch >= 1.6)."""
    vec = rand_vectors(2, 768, seed=3)
    parsed = read_embedding_bytes(make_paper_pt(vec, parameter_dict=True))
    np.testing.assert_array_equal(parsed.embedding.vectors["clip_l"], vec)
    assert parsed.metadata["parameter_dict"] is True
    assert parsed.metadata["string_to_token"] == {"*": 265}


def test_int64_token_ids_load_as_data() -> None:
    obj = safe_torch_load(make_paper_pt(rand_vectors(1, 768), token="view"))
    tid = obj["string_to_token"]["*"]
    assert tid.dtype == torch.int64 and tid.shape == () and int(tid) == 265


def test_allow_list_names_int64_storage_as_data_only() -> None:
    assert ("torch", "LongStorage") in safe_pickle.STORAGE_TYPES
    assert ("torch", "LongStorage") not in safe_pickle.FLOAT_STORAGE_TYPES
    for other in ("IntStorage", "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage"):
        assert ("torch", other) not in safe_pickle.STORAGE_TYPES


@pytest.mark.parametrize(
    ("dtype", "storage"),
    [
        ("int32", "IntStorage"),
        ("int16", "ShortStorage"),
        ("int8", "CharStorage"),
        ("uint8", "ByteStorage"),
        ("bool", "BoolStorage"),
    ],
)
def test_other_integer_storages_are_unsupported_not_unsafe(dtype: str, storage: str) -> None:
    """No embedding file holds these: refused as content, named, never called a threat."""
    data = make_paper_pt(rand_vectors(1, 768), token="1d", token_dtype=getattr(torch, dtype))
    with pytest.raises(UnsupportedContent, match=rf"torch\.{storage}") as info:
        read_embedding_bytes(data, path="t.pt")
    assert not isinstance(info.value, UnsafeFile)
    assert "int64 token ids" in str(info.value)


def _int_vectors(layout: str) -> tuple[bytes, str]:
    ints = torch.ones(2, 768, dtype=torch.int64)
    if layout == "a1111":
        return make_a1111_pt(ints, parameter=False), "string_to_param['*']"
    if layout == "paper":
        obj = {"string_to_token": {"*": torch.tensor([265])}, "string_to_param": {"*": ints}}
        return torch_bytes(obj), "string_to_param['*']"
    if layout == "emb_params":
        return torch_bytes({"emb_params": ints}), "emb_params"
    if layout == "diffusers":
        return torch_bytes({"<cat-toy>": ints}, legacy=True), "<cat-toy>"
    if layout == "sdxl":
        g = torch.zeros(2, 1280) + 0.01
        return torch_bytes({"clip_l": ints, "clip_g": g}), "learned_embeds"
    raise AssertionError(layout)


@pytest.mark.parametrize("layout", ["a1111", "paper", "emb_params", "diffusers", "sdxl"])
def test_integer_tensor_where_the_vectors_belong_is_a_bad_tensor(layout: str) -> None:
    data, key = _int_vectors(layout)
    with pytest.raises(BadTensor, match=r"dtype int64; expected a float tensor") as info:
        read_embedding_bytes(data, path="ints.pt")
    if layout != "sdxl":
        assert repr(key) in str(info.value)


# --------------------------------------------------------------------------- tensor views


def _view_zip(storage: str = "FloatStorage", numel: int = 768, **view: object) -> bytes:
    itemsize = safe_pickle.STORAGE_TYPES[("torch", storage)]
    pkl = tensor_pickle(numel=numel, shape=view.pop("shape", (1, 768)), storage=storage, **view)
    return in_torch_zip(pkl, records={"0": bytes(numel * itemsize)})


@pytest.mark.parametrize("storage", ["FloatStorage", "LongStorage"])
@pytest.mark.parametrize(
    ("view", "match"),
    [
        ({"offset": 1}, "reaches element 768 of storage 0, which holds 768"),
        ({"shape": (2, 768)}, "reaches element 1535"),
        ({"stride": (768, 2)}, "reaches element 1534"),
        ({"offset": -1}, "offset -1"),
        ({"offset": "0"}, "offset '0'"),
        ({"stride": (768,)}, "do not fit its size"),
        ({"stride": (768, -1)}, "stride"),
        ({"shape": (1, True)}, "size"),
        ({"shape": (1, 1, 1, 1, 1, 1, 1, 1, 768)}, "at most 8"),
    ],
)
def test_tensor_views_are_checked_against_their_storage(
    storage: str, view: dict[str, object], match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offset, size and stride: counts that stay inside the storage, for every dtype."""
    calls: list[int] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(1))
    with pytest.raises(CorruptFile, match=match):
        safe_torch_load(_view_zip(storage, **view), path="v.pt")
    assert calls == []  # refused by the walk, before torch saw the file


@pytest.mark.parametrize("storage", ["FloatStorage", "LongStorage"])
def test_a_stride_zero_view_claiming_billions_of_elements_is_too_large(
    storage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One stored element, expanded (stride 0) to 10**12 rows: refused before torch runs."""
    calls: list[int] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(1))
    data = _view_zip(storage, numel=1, shape=(10**12, 768), stride=(0, 0))
    with pytest.raises(FileTooLarge, match="elements"):
        safe_torch_load(data)
    assert calls == []


def test_valid_views_still_load() -> None:
    """Offsets and strides inside the storage (a transposed view, a 0-d element) load."""
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4) / 100
    obj = safe_torch_load(torch_bytes({"t": base.t(), "e": base[1, 2], "z": base[:0]}))
    np.testing.assert_array_equal(obj["t"].numpy(), base.t().numpy())
    assert float(obj["e"]) == pytest.approx(0.06) and obj["z"].shape == (0, 4)


# --------------------------------------------------------------------------- the key stream


@pytest.mark.parametrize("n", [0, 1, 2, 3, 255, 256, 1000, 4097])
def test_key_stream_matches_its_definition(n: int) -> None:
    np.testing.assert_array_equal(png_embed.lcg_key(n), lcg_reference(n))


# --------------------------------------------------------------------------- side strips


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize(("n", "width", "border"), [(1, 768, 0), (3, 1024, 0), (8, 768, 3)])
def test_side_strip_round_trip_with_exact_vectors(
    fmt: str, n: int, width: int, border: int
) -> None:
    vec = rand_vectors(n, width, seed=n)
    data = make_strip_image(strip_payload(vec, name="ukiyoe", step=42), fmt=fmt, border=border)
    parsed = read_embedding_bytes(data, path=f"x.{fmt.lower()}")
    assert (parsed.format, parsed.container) == ("a1111-png", fmt.lower())
    assert parsed.name_hint == "ukiyoe"
    assert parsed.metadata["step"] == 42
    (slot,) = parsed.embedding.vectors
    np.testing.assert_array_equal(parsed.embedding.vectors[slot], vec)


def test_strips_beside_a_tall_and_a_short_picture() -> None:
    vec = rand_vectors(4, 768, seed=9)
    for height, width in ((200, 30), (7, 120)):
        data = make_strip_image(strip_payload(vec), pic=picture(height, width, seed=height))
        np.testing.assert_array_equal(read_embedding_bytes(data).embedding.vectors["clip_l"], vec)


def test_text_chunk_wins_when_both_are_there() -> None:
    """A1111 reads the chunk first; here the chunk and the strips say different things."""
    chunk_vec, strip_vec = rand_vectors(1, 768, seed=1), rand_vectors(1, 768, seed=2)
    img = make_strip_image(strip_payload(strip_vec))
    both = make_png_embedding(chunk_vec, image=img)
    np.testing.assert_array_equal(read_embedding_bytes(both).embedding.vectors["clip_l"], chunk_vec)
    np.testing.assert_array_equal(
        read_embedding_bytes(strip_png_text(both)).embedding.vectors["clip_l"], strip_vec
    )


@pytest.mark.parametrize(
    ("name", "rgb"),
    [
        ("noise", picture(64, 64)),
        ("black", np.zeros((32, 32, 3), np.uint8)),
        (
            "gradient",
            np.broadcast_to(np.arange(64, dtype=np.uint8)[None, :, None] * 4, (16, 64, 3)),
        ),
        (
            "letterboxed",  # black bars and black columns, but no strips
            np.pad(picture(40, 40), ((0, 0), (6, 6), (0, 0))),
        ),
        (
            "two-black-lines",  # the columns are found, the "strips" are not zlib
            np.concatenate(
                [picture(20, 9, 1), np.zeros((20, 1, 3), np.uint8), picture(20, 5, 2)]
                + [np.zeros((20, 1, 3), np.uint8), picture(20, 9, 3)],
                axis=1,
            ),
        ),
    ],
)
@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_plain_pictures_hold_no_embedding(name: str, rgb: np.ndarray, fmt: str) -> None:
    data = save_image(rgb, fmt)
    with pytest.raises(UnsupportedContent, match="side strips"):
        read_embedding_bytes(data, path=f"{name}.{fmt.lower()}")
    assert png_embed.image_may_hold_embedding(data) is False


def _broken_strips(kind: str) -> bytes:
    good = json.dumps(strip_payload(rand_vectors(2, 768))).encode()
    stream = zlib.compress(good, 9)
    if kind == "truncated":  # the strips end where the stream was cut (48 rows x 3)
        cut = len(stream) // 2 // 144 * 144
        return make_strip_image(stream[:cut], compress=False, pad=False)
    if kind == "flipped":
        bad = bytearray(stream)
        for i in range(10, 40):
            bad[i] ^= 0x5A
        return make_strip_image(bytes(bad), compress=False)
    if kind == "not-json":
        return make_strip_image(b"{not json")
    if kind == "not-utf8":
        return make_strip_image(b"\xff\xfe\xfd")
    if kind == "json-list":
        return make_strip_image(b"[1, 2]")
    if kind == "ragged":
        return make_strip_image(b'{"string_to_param": {"*": {"TORCHTENSOR": [[1.0], []]}}}')
    if kind == "no-tensors":
        return make_strip_image(b'{"name": "x"}')
    if kind == "nan":
        vec = np.full((1, 768), np.nan, np.float32)
        return make_strip_image(json.dumps(strip_payload(vec)).encode())
    if kind == "bomb":  # 18 KB of strips that inflate to 17 MiB
        return make_strip_image(b" " * (17 * 1024 * 1024))
    raise AssertionError(kind)


BROKEN_STRIPS = {
    "truncated": (CorruptFile, "side-strip data is truncated"),
    "flipped": (CorruptFile, "side-strip data does not decompress"),
    "not-json": (CorruptFile, "side-strip data is not JSON"),
    "not-utf8": (CorruptFile, "does not hold UTF-8 JSON"),
    "json-list": (UnsupportedContent, "holds a JSON list"),
    "ragged": (BadTensor, "rectangular"),
    "no-tensors": (UnsupportedContent, "without tensors"),
    "nan": (BadTensor, "NaN"),
    "bomb": (FileTooLarge, "side-strip data decompresses to more than"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN_STRIPS))
def test_broken_strip_data_is_a_typed_error(kind: str) -> None:
    error, match = BROKEN_STRIPS[kind]
    with pytest.raises(error, match=match) as info:
        read_embedding_bytes(_broken_strips(kind), path="broken.png")
    assert "broken.png" in str(info.value)


def _png_claiming(width: int, height: int) -> bytes:
    head = plain_png(4, 4)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return head[:8] + png_embed._chunk(b"IHDR", ihdr) + head[33:]


def test_pixel_dimensions_are_checked_before_any_pixel_is_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[int] = []
    real_open = PIL_Image.open
    monkeypatch.setattr(PIL_Image, "open", lambda *a, **k: opened.append(1) or real_open(*a, **k))
    with pytest.raises(FileTooLarge, match="100000 x 100000 pixels"):
        read_embedding_bytes(_png_claiming(100_000, 100_000), path="bomb.png")
    with pytest.raises(FileTooLarge, match="20000 x 8 pixels"):
        read_embedding_bytes(_png_claiming(20_000, 8), path="wide.png")
    assert opened == []  # a PNG's size comes from its IHDR, before Pillow sees it
    assert png_embed.image_may_hold_embedding(_png_claiming(100_000, 100_000)) is False


def test_webp_dimensions_are_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_strip_image(strip_payload(rand_vectors(1, 768)), fmt="WEBP")
    converted: list[int] = []
    real_convert = PIL_Image.Image.convert
    monkeypatch.setattr(
        PIL_Image.Image, "convert", lambda *a, **k: converted.append(1) or real_convert(*a, **k)
    )
    monkeypatch.setattr(png_embed, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(FileTooLarge, match="pixels"):
        read_embedding_bytes(data, path="x.webp")
    assert converted == []


def test_pillow_decompression_bomb_check_stays_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's own limit (lowered here) is an error, not a warning that lets decoding on."""
    data = strip_png_text(make_strip_image(strip_payload(rand_vectors(1, 768))))
    width, height = PIL_Image.open(io.BytesIO(data)).size
    # between Pillow's limit and twice it Pillow only warns: that warning is an error here
    monkeypatch.setattr(PIL_Image, "MAX_IMAGE_PIXELS", width * height * 3 // 4)
    with pytest.raises(FileTooLarge, match="too large to decode"):
        read_embedding_bytes(data, path="x.png")
    monkeypatch.setattr(PIL_Image, "MAX_IMAGE_PIXELS", 20)  # past 2x: Pillow's own error
    with pytest.raises(FileTooLarge, match="too large to decode"):
        read_embedding_bytes(data, path="x.png")


def test_undecodable_pixels_are_corrupt() -> None:
    png = plain_png(8, 8)
    at = png.index(b"IDAT") + 4
    body_len = struct.unpack(">I", png[at - 8 : at - 4])[0]
    garbage = bytes(body_len)
    broken = png[: at - 4] + b"IDAT" + garbage + struct.pack(">I", zlib.crc32(b"IDAT" + garbage))
    broken += png[at + body_len + 4 :]
    with pytest.raises(CorruptFile, match="cannot be decoded"):
        read_embedding_bytes(broken, path="x.png")


# --------------------------------------------------------------------------- through the CLI


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


REFUSED: dict[str, tuple[str, object, int, str]] = {
    # name: (suffix, bytes factory, exit code, fragment of the one error line)
    "int32-token": (
        ".pt",
        lambda: make_paper_pt(rand_vectors(1, 768), token="1d", token_dtype=torch.int32),
        3,
        "torch.IntStorage",
    ),
    "int64-vectors": (".pt", lambda: _int_vectors("emb_params")[0], 3, "dtype int64"),
    "view-out-of-bounds": (".pt", lambda: _view_zip(offset=1), 3, "reaches element 768"),
    "stride-0-giant": (
        ".pt",
        lambda: _view_zip(numel=1, shape=(10**12, 768), stride=(0, 0)),
        3,
        "elements",
    ),
    "plain-png": (".png", lambda: save_image(picture(32, 32)), 3, "no embedding"),
    "plain-webp": (".webp", lambda: save_image(picture(32, 32), "WEBP"), 3, "no embedding"),
    "truncated-strips": (
        ".png",
        lambda: _broken_strips("truncated"),
        3,
        "side-strip data is truncated",
    ),
    "flipped-strips": (".png", lambda: _broken_strips("flipped"), 3, "does not decompress"),
    "strip-bomb": (".png", lambda: _broken_strips("bomb"), 3, "decompresses to more than"),
    "pixel-bomb": (".png", lambda: _png_claiming(100_000, 100_000), 3, "pixels"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_files_exit_with_one_line_and_change_nothing(
    case: str, tmp_path: Path, lib, runner: CliRunner, catalog_snapshot
) -> None:
    from conceptlib.registry.samples import sample_embedding

    lib.add_embedding(sample_embedding("sd1", 1, 9), name="existing")
    home = lib.settings.home
    lib.close()
    suffix, factory, code, fragment = REFUSED[case]
    path = tmp_path / f"file{suffix}"  # a neutral name: the fragment must come from the reason
    path.write_bytes(factory())  # type: ignore[operator]
    import_is_refused(path, home, code=code, fragment=fragment, snapshot=catalog_snapshot)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_paper_pt_imports_under_its_file_name(
    legacy: bool, tmp_path: Path, lib, runner: CliRunner
) -> None:
    vec = rand_vectors(2, 768, seed=21)
    path = tmp_path / "my-concept.pt"
    path.write_bytes(make_paper_pt(vec, legacy=legacy))
    lib.close()
    res = runner.invoke(cli, ["import", str(path), "--json"])
    assert res.exit_code == 0, res.output
    (o,) = json.loads(res.output)["files"]
    assert (o["status"], o["name"], o["token"]) == ("imported", "my-concept", "my-concept")
    from conceptlib.registry.library import Library

    with Library.open() as again:
        np.testing.assert_array_equal(again.load("my-concept").vectors["clip_l"], vec)
        assert again.get("my-concept").extra["file_metadata"]["string_to_token"] == {"*": 265}


@pytest.mark.parametrize("how", ["png-chunk", "png-strips", "png-stripped-chunk", "webp-strips"])
def test_the_name_inside_an_image_is_the_name_and_token(
    how: str, tmp_path: Path, lib, runner: CliRunner
) -> None:
    """A1111 triggers an embedding image by the ``name`` in its data, not the file name."""
    vec = rand_vectors(2, 768, seed=len(how))
    if how == "png-chunk":
        data, suffix = make_png_embedding(vec, name="ukiyoe-500"), ".png"
    elif how == "png-strips":
        data, suffix = make_strip_image(strip_payload(vec, name="ukiyoe-500")), ".png"
    elif how == "png-stripped-chunk":
        both = make_strip_image(strip_payload(vec, name="ukiyoe-500"), with_text=True)
        assert png_embed.TEXT_KEY.encode() in both
        data, suffix = strip_png_text(both), ".png"
        assert png_embed.TEXT_KEY.encode() not in data
    else:
        data, suffix = make_strip_image(strip_payload(vec, name="ukiyoe-500"), fmt="WEBP"), ".webp"
    path = tmp_path / f"download (3){suffix}"
    path.write_bytes(data)
    lib.close()
    res = runner.invoke(cli, ["import", str(path), "--json"])
    assert res.exit_code == 0, res.output
    (o,) = json.loads(res.output)["files"]
    assert (o["status"], o["name"], o["token"]) == ("imported", "ukiyoe-500", "ukiyoe-500")
    from conceptlib.registry.library import Library

    with Library.open() as again:
        np.testing.assert_array_equal(again.load("ukiyoe-500").vectors["clip_l"], vec)


def test_a_pt_keeps_its_file_name_and_records_its_name_field(
    tmp_path: Path, lib, runner: CliRunner
) -> None:
    """A1111 triggers a .pt by its file name; the name inside is kept as a fact."""
    path = tmp_path / "renamed-by-user.pt"
    path.write_bytes(make_a1111_pt(rand_vectors(1, 768, seed=5), name="original-name"))
    lib.close()
    res = runner.invoke(cli, ["import", str(path), "--json"])
    assert res.exit_code == 0, res.output
    (o,) = json.loads(res.output)["files"]
    assert (o["name"], o["token"]) == ("renamed-by-user", "renamed-by-user")
    from conceptlib.registry.library import Library

    with Library.open() as again:
        assert again.get("renamed-by-user").extra["name_in_file"] == "original-name"


# --------------------------------------------------------------------------- folders


def _big_png_with_late_chunk(vec: np.ndarray) -> bytes:
    """A PNG whose sd-ti-embedding chunk comes after ~200 KB of noisy pixel data."""
    rng = np.random.default_rng(5)
    noisy = save_image(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8))
    data = make_png_embedding(vec, image=noisy)
    assert data.index(png_embed.TEXT_KEY.encode()) > 64 * 1024
    return data


def test_folder_import_finds_images_by_content(tmp_path: Path, lib, runner: CliRunner) -> None:
    folder = tmp_path / "embeddings"
    folder.mkdir()
    vecs = {k: rand_vectors(1, 768, seed=i + 40) for i, k in enumerate(("late", "strip", "webp"))}
    (folder / "late-chunk.png").write_bytes(_big_png_with_late_chunk(vecs["late"]))
    (folder / "strips-only.png").write_bytes(
        make_strip_image(strip_payload(vecs["strip"], name="strips-only"))
    )
    (folder / "strips.webp").write_bytes(
        make_strip_image(strip_payload(vecs["webp"], name="webp-strips"), fmt="WEBP")
    )
    (folder / "holiday.png").write_bytes(save_image(picture(64, 64, seed=7)))
    (folder / "holiday.webp").write_bytes(save_image(picture(64, 64, seed=8), "WEBP"))
    buf = io.BytesIO()
    PIL_Image.fromarray(picture(32, 32)).save(buf, format="JPEG")
    (folder / "photo.jpg").write_bytes(buf.getvalue())
    (folder / "named-like-one.jpg").write_bytes(buf.getvalue() + b"sd-ti-embedding")
    (folder / "late-chunk.preview.png").write_bytes(save_image(picture(16, 16)))
    lib.close()
    res = runner.invoke(cli, ["import", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    by = {Path(o["path"]).name: o for o in report["files"]}
    assert set(by) == {"late-chunk.png", "strips-only.png", "strips.webp"}
    assert all(o["status"] == "imported" for o in by.values())
    assert by["strips.webp"]["name"] == "webp-strips"
    skipped = {Path(s["path"]).name for s in report["skipped_files"]}
    assert {"holiday.png", "holiday.webp", "photo.jpg", "named-like-one.jpg"} <= skipped
    from conceptlib.registry.library import Library

    with Library.open() as again:
        np.testing.assert_array_equal(again.load("cat-toy").vectors["clip_l"], vecs["late"])
        np.testing.assert_array_equal(again.load("strips-only").vectors["clip_l"], vecs["strip"])


def test_a_damaged_png_naming_the_chunk_is_tried_and_reported(tmp_path: Path, lib) -> None:
    """Skipping it would hide the damage: it is tried, and its import says what is wrong."""
    from conceptlib.registry.folders import collect_files

    data = make_png_embedding(rand_vectors(1, 768))
    at = data.index(b"tEXt") + 40  # inside the base64 text: the CRC no longer matches
    (tmp_path / "damaged.png").write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
    (tmp_path / "plain.png").write_bytes(plain_png())
    (tmp_path / "other-text.png").write_bytes(
        insert_chunks(plain_png(), [text_chunk("parameters", b"sd-ti-embedding in a prompt")])
    )
    found = [p.name for p in collect_files([tmp_path], recursive=False)]
    assert found == ["damaged.png"]
    (o,) = lib.import_paths([tmp_path]).outcomes
    assert (Path(o.path).name, o.status) == ("damaged.png", "rejected")
    assert isinstance(o.exception, CorruptFile) and "bad CRC" in (o.reason or "")
    assert lib.count() == 0

"""Every layout read by content and written back: round trips, metadata, bad inputs."""

from __future__ import annotations

import json
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from fixtures_formats import (
    in_torch_zip,
    lfs_pointer,
    make_7z,
    make_a1111_pt,
    make_diffusers_bin,
    make_diffusers_safetensors,
    make_diffusers_sdxl_pair,
    make_emb_params_pt,
    make_emb_params_safetensors,
    make_lora_bundle,
    make_png_embedding,
    make_pti,
    make_sdxl,
    malicious_pickle,
    rand_vectors,
    raw_safetensors,
    torch_bytes,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from conceptlib.errors import (
    AmbiguousEmbedding,
    BadTensor,
    CorruptFile,
    EmptyFile,
    FamilyMismatch,
    FileTooLarge,
    InvalidName,
    LfsPointerFile,
    NotFound,
    UnknownFormat,
    UnsafeFile,
    UnsupportedContent,
    UsageError,
)
from conceptlib.registry.formats import (
    READ_FORMATS,
    WRITE_FORMATS,
    ParsedFile,
    describe_bytes,
    is_sdxl_companion,
    read_embedding_bytes,
    read_embedding_file,
    write_embedding,
)
from conceptlib.registry.formats.embedding import Embedding
from conceptlib.registry.formats.safetensors_io import write_safetensors

torch = pytest.importorskip("torch")

FAMILY_WIDTHS = {
    "sd1": {"clip_l": 768},
    "sd2": {"clip_h": 1024},
    "sdxl": {"clip_l": 768, "clip_g": 1280},
}


def _emb(family: str, n: int, seed: int, scale: float = 0.4) -> Embedding:
    slots = {
        s: rand_vectors(n, d, seed=seed + i, scale=scale)
        for i, (s, d) in enumerate(FAMILY_WIDTHS[family].items())
    }
    return Embedding.from_slots(slots)


def _read_files(files: dict[str, bytes]) -> ParsedFile:
    if "learned_embeds_2.safetensors" in files:
        return read_embedding_bytes(
            files["learned_embeds.safetensors"],
            path="learned_embeds.safetensors",
            companion=files["learned_embeds_2.safetensors"],
        )
    ((name, data),) = files.items()
    return read_embedding_bytes(data, path=name)


def _same(parsed: ParsedFile, emb: Embedding) -> None:
    assert parsed.embedding.tensor_sha256 == emb.tensor_sha256
    assert parsed.embedding.slots == emb.slots
    for slot in emb.slots:
        np.testing.assert_array_equal(parsed.embedding.vectors[slot], emb.vectors[slot])


embeddings = st.builds(
    _emb,
    family=st.sampled_from(sorted(FAMILY_WIDTHS)),
    n=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-2, 50.0),
)

# --------------------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(emb=embeddings, fmt=st.sampled_from(WRITE_FORMATS))
def test_write_then_read_round_trips(emb: Embedding, fmt: str) -> None:
    sdxl_only = fmt == "sdxl"
    one_encoder_only = fmt == "a1111-pt"
    if (sdxl_only and emb.family.value != "sdxl") or (
        one_encoder_only and emb.family.value == "sdxl"
    ):
        with pytest.raises(UsageError):
            write_embedding(emb, fmt, name="cat-toy", token="<cat-toy>")
        return
    files = write_embedding(emb, fmt, name="cat-toy", token="<cat-toy>")
    parsed = _read_files(files)
    _same(parsed, emb)
    assert parsed.format in READ_FORMATS
    if fmt == "diffusers":
        assert parsed.token == "<cat-toy>"
        assert parsed.metadata["safetensors_metadata"] == {"format": "pt"}
    if fmt == "a1111-pt":
        assert parsed.name_hint == "cat-toy"
        assert parsed.metadata["sd_checkpoint"] is None


@settings(max_examples=15, deadline=None)
@given(emb=embeddings)
def test_same_vectors_same_identity_in_every_format(emb: Embedding) -> None:
    hashes = set()
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in WRITE_FORMATS:
            try:
                files = write_embedding(emb, fmt, name="x", token="<x>")
            except UsageError:
                continue
            folder = Path(tmp) / fmt
            folder.mkdir()
            for rel, data in files.items():
                (folder / rel).write_bytes(data)
            first = folder / next(iter(files))
            hashes.add(read_embedding_file(first).embedding.tensor_sha256)
    assert hashes == {emb.tensor_sha256}


def _fixture_cases(emb: Embedding) -> list[tuple[str, bytes, bytes | None, str, str]]:
    """(label, data, companion, expected format, expected container) for every producer."""
    fam = emb.family.value
    v = emb.vectors
    cases: list[tuple[str, bytes, bytes | None, str, str]] = []
    if fam == "sdxl":
        cl, g = v["clip_l"], v["clip_g"]
        cases += [
            ("sdxl package", make_sdxl(cl, g), None, "sdxl", "safetensors"),
            ("sdxl conceptlib", make_sdxl(cl, g, writer="conceptlib"), None, "sdxl", "safetensors"),
            ("sdxl torch", make_sdxl(cl, g, writer="torch"), None, "sdxl", "safetensors"),
            ("sdxl .pt", make_sdxl(cl, g, writer="torch-pt"), None, "sdxl", "torch-zip"),
            # names the other way round: slots come from widths
            (
                "sdxl swapped names",
                make_sdxl(g, cl, keys=("clip_l", "clip_g")),
                None,
                "sdxl",
                "safetensors",
            ),
            (
                "embedding/embedding_2",
                make_sdxl(g, cl, keys=("embedding", "embedding_2")),
                None,
                "sdxl",
                "safetensors",
            ),
            ("pti sdxl", make_pti(cl, g), None, "pti", "safetensors"),
            ("bundle sdxl", make_lora_bundle("cat", cl, g), None, "pti", "safetensors"),
            (
                "diffusers pair",
                *make_diffusers_sdxl_pair("<cat>", cl, g),
                "diffusers-sdxl-pair",
                "safetensors",
            ),
        ]
    else:
        (arr,) = v.values()
        cases += [
            ("a1111 param", make_a1111_pt(arr), None, "a1111-pt", "torch-zip"),
            ("a1111 tensor", make_a1111_pt(arr, parameter=False), None, "a1111-pt", "torch-zip"),
            (
                "a1111 ParameterDict",
                make_a1111_pt(arr, parameter_dict=True),
                None,
                "a1111-pt",
                "torch-zip",
            ),
            ("a1111 legacy", make_a1111_pt(arr, legacy=True), None, "a1111-pt", "torch-legacy"),
            ("emb_params .pt", make_emb_params_pt(arr), None, "emb_params", "torch-zip"),
            (
                "emb_params legacy",
                make_emb_params_pt(arr, legacy=True),
                None,
                "emb_params",
                "torch-legacy",
            ),
            ("emb_params st", make_emb_params_safetensors(arr), None, "emb_params", "safetensors"),
            (
                "emb_params ours",
                make_emb_params_safetensors(arr, writer="conceptlib"),
                None,
                "emb_params",
                "safetensors",
            ),
            (
                "emb_params torch",
                make_emb_params_safetensors(arr, writer="torch"),
                None,
                "emb_params",
                "safetensors",
            ),
            ("diffusers bin", make_diffusers_bin("<cat>", arr), None, "diffusers", "torch-zip"),
            (
                "diffusers st",
                make_diffusers_safetensors("<cat>", arr),
                None,
                "diffusers",
                "safetensors",
            ),
            ("pti", make_pti(arr), None, "pti", "safetensors"),
            ("bundle", make_lora_bundle("cat", arr), None, "pti", "safetensors"),
            ("png tEXt", make_png_embedding(arr), None, "a1111-png", "png"),
            ("png zTXt", make_png_embedding(arr, kind="zTXt"), None, "a1111-png", "png"),
            ("png iTXt", make_png_embedding(arr, kind="iTXt"), None, "a1111-png", "png"),
            (
                "bare tensor",
                torch_bytes(torch.from_numpy(arr.copy())),
                None,
                "diffusers",
                "torch-zip",
            ),
        ]
        if arr.shape[0] == 1:
            cases += [
                (
                    "diffusers 1-D bin",
                    make_diffusers_bin("<cat>", arr[0]),
                    None,
                    "diffusers",
                    "torch-zip",
                ),
                (
                    "diffusers 1-D st",
                    make_diffusers_safetensors("<cat>", arr[0]),
                    None,
                    "diffusers",
                    "safetensors",
                ),
            ]
    return cases


@settings(max_examples=25, deadline=None)
@given(emb=embeddings)
def test_every_producer_reads_to_the_same_embedding(emb: Embedding) -> None:
    for label, data, companion, fmt, container in _fixture_cases(emb):
        parsed = read_embedding_bytes(data, path=label, companion=companion)
        assert (label, parsed.format, parsed.container) == (label, fmt, container)
        _same(parsed, emb)
        json.dumps(parsed.metadata)  # JSON-safe


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_other_float_dtypes_are_widened(dtype: str) -> None:
    arr = rand_vectors(2, 768, seed=9)
    t = torch.from_numpy(arr).to(getattr(torch, dtype))
    parsed = read_embedding_bytes(make_emb_params_pt(t))
    np.testing.assert_array_equal(parsed.embedding.vectors["clip_l"], t.float().numpy())
    st_bytes = make_emb_params_safetensors(t, writer="torch")
    assert read_embedding_bytes(st_bytes).embedding.tensor_sha256 == parsed.embedding.tensor_sha256


# --------------------------------------------------------------------------- what the file says


def test_a1111_metadata_and_name() -> None:
    parsed = read_embedding_bytes(
        make_a1111_pt(
            rand_vectors(3, 768),
            name="ukiyoe",
            step=1500,
            sd_checkpoint="a9263745",
            sd_checkpoint_name="v1-5",
        )
    )
    assert parsed.format == "a1111-pt"
    assert parsed.token is None
    assert parsed.name_hint == "ukiyoe"
    assert parsed.metadata["step"] == 1500
    assert parsed.metadata["sd_checkpoint"] == "a9263745"
    assert parsed.metadata["sd_checkpoint_name"] == "v1-5"
    assert parsed.embedding.family.value == "sd1"
    assert parsed.embedding.num_vectors == 3


def test_old_parameter_dict_is_flagged() -> None:
    parsed = read_embedding_bytes(make_a1111_pt(rand_vectors(1, 1024), parameter_dict=True))
    assert parsed.metadata["parameter_dict"] is True
    assert parsed.embedding.family.value == "sd2"


def test_safetensors_metadata_is_kept() -> None:
    meta = {
        "modelspec.architecture": "stable-diffusion-xl-v1-base/textual-inversion",
        "ss_steps": "300",
    }
    parsed = read_embedding_bytes(
        make_sdxl(rand_vectors(2, 768), rand_vectors(2, 1280), metadata=meta)
    )
    assert parsed.metadata["safetensors_metadata"] == meta
    assert parsed.token is None


def test_swapped_slot_names_are_noted() -> None:
    parsed = read_embedding_bytes(make_sdxl(rand_vectors(2, 1280), rand_vectors(2, 768)))
    assert parsed.metadata["slot_names_swapped"] is True
    assert parsed.embedding.vectors["clip_g"].shape == (2, 1280)


def test_generic_keys_give_no_token() -> None:
    for key in ("*", "emb_params", "clip_h", "embedding"):
        parsed = read_embedding_bytes(write_safetensors({key: rand_vectors(1, 1024)}))
        assert parsed.token is None, key
    assert (
        read_embedding_bytes(make_diffusers_bin("<cat-toy>", rand_vectors(1, 768))).token
        == "<cat-toy>"
    )


def test_bundle_name_is_the_hint() -> None:
    parsed = read_embedding_bytes(
        make_lora_bundle("my-style", rand_vectors(2, 768), rand_vectors(2, 1280))
    )
    assert parsed.name_hint == "my-style"
    assert parsed.metadata["bundle"] == "my-style"
    assert parsed.metadata["ignored_tensors"] == 3


def test_pickle_named_safetensors_reads_by_content(tmp_path: Path) -> None:
    target = tmp_path / "cat.safetensors"
    target.write_bytes(make_a1111_pt(rand_vectors(2, 768)))
    parsed = read_embedding_file(target)
    assert (parsed.format, parsed.container) == ("a1111-pt", "torch-zip")


# --------------------------------------------------------------------------- files on disk


def test_diffusers_sdxl_pair_on_disk(tmp_path: Path) -> None:
    cl, g = rand_vectors(2, 768, 1), rand_vectors(2, 1280, 2)
    main, comp = make_diffusers_sdxl_pair("<cat>", cl, g)
    (tmp_path / "learned_embeds.safetensors").write_bytes(main)
    (tmp_path / "learned_embeds_2.safetensors").write_bytes(comp)
    expected = Embedding.from_slots({"clip_l": cl, "clip_g": g}).tensor_sha256
    for target in (
        tmp_path,
        tmp_path / "learned_embeds.safetensors",
        tmp_path / "learned_embeds_2.safetensors",
    ):
        parsed = read_embedding_file(target)
        assert parsed.format == "diffusers-sdxl-pair"
        assert parsed.token == "<cat>"
        assert parsed.embedding.tensor_sha256 == expected
    assert is_sdxl_companion(tmp_path / "learned_embeds_2.safetensors")
    assert not is_sdxl_companion(tmp_path / "learned_embeds.safetensors")


def test_diffusers_sdxl_pair_as_bin(tmp_path: Path) -> None:
    cl, g = rand_vectors(1, 768, 1), rand_vectors(1, 1280, 2)
    (tmp_path / "learned_embeds.bin").write_bytes(make_diffusers_bin("<t>", cl))
    (tmp_path / "learned_embeds_2.bin").write_bytes(make_diffusers_bin("<t>", g))
    parsed = read_embedding_file(tmp_path / "learned_embeds.bin")
    assert (parsed.format, parsed.container) == ("diffusers-sdxl-pair", "torch-zip")


def test_lone_companion_is_refused(tmp_path: Path) -> None:
    lone = tmp_path / "learned_embeds_2.safetensors"
    lone.write_bytes(make_diffusers_safetensors("<cat>", rand_vectors(2, 1280)))
    with pytest.raises(UnsupportedContent, match=r"learned_embeds\.safetensors is not beside it"):
        read_embedding_file(lone)


def test_pair_with_different_tokens_is_refused() -> None:
    main = make_diffusers_safetensors("<a>", rand_vectors(1, 768))
    comp = make_diffusers_safetensors("<b>", rand_vectors(1, 1280))
    with pytest.raises(UnsupportedContent, match="'<a>'.*'<b>'"):
        read_embedding_bytes(main, path="learned_embeds.safetensors", companion=comp)


def test_single_diffusers_file_without_companion(tmp_path: Path) -> None:
    (tmp_path / "learned_embeds.safetensors").write_bytes(
        make_diffusers_safetensors("<x>", rand_vectors(4, 768))
    )
    parsed = read_embedding_file(tmp_path)
    assert (parsed.format, parsed.token) == ("diffusers", "<x>")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        read_embedding_file(tmp_path / "missing.pt")
    with pytest.raises(UsageError, match="folder"):
        read_embedding_file(tmp_path)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFile, match="empty.pt"):
        read_embedding_file(empty)
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as fh:
        fh.truncate(17 * 1024 * 1024)  # sparse: refused from its size, never read
    with pytest.raises(FileTooLarge, match=str(17 * 1024 * 1024)):
        read_embedding_file(big)
    lfs = tmp_path / "lfs.safetensors"
    lfs.write_bytes(lfs_pointer())
    with pytest.raises(
        LfsPointerFile, match="is a Git LFS pointer, not the weights; run git lfs pull"
    ):
        read_embedding_file(lfs)


# --------------------------------------------------------------------------- bad inputs (1-18)


def _good_st() -> bytes:
    return make_emb_params_safetensors(rand_vectors(2, 768))


def test_bad_1_empty() -> None:
    with pytest.raises(EmptyFile, match="0 bytes"):
        read_embedding_bytes(b"", path="x.pt")


def test_bad_2_lfs_pointer() -> None:
    with pytest.raises(LfsPointerFile) as info:
        read_embedding_bytes(lfs_pointer(1234), path="x.safetensors")
    assert "1234" in str(info.value) and "git lfs pull" in str(info.value)


def test_bad_3_truncated_or_appended_safetensors() -> None:
    good = _good_st()
    with pytest.raises(CorruptFile, match="truncated"):
        read_embedding_bytes(good[:-10], path="x.safetensors")
    with pytest.raises(CorruptFile, match="8 unexpected bytes"):
        read_embedding_bytes(good + bytes(8), path="x.safetensors")


def test_bad_4_header_length() -> None:
    header = {"emb_params": {"dtype": "F32", "shape": [1, 768], "data_offsets": [0, 3072]}}
    with pytest.raises(CorruptFile, match="claims 900000 bytes"):
        read_embedding_bytes(raw_safetensors(header, bytes(3072), header_len=900_000))
    with pytest.raises(FileTooLarge, match=str(2**40)):
        read_embedding_bytes(raw_safetensors(header, bytes(3072), header_len=2**40))


def test_bad_5_header_text() -> None:
    with pytest.raises(CorruptFile, match="UTF-8"):
        read_embedding_bytes(raw_safetensors(b'{"a\xff": 1}'))
    with pytest.raises(CorruptFile, match="not JSON"):
        read_embedding_bytes(raw_safetensors(b"{nope"))
    dup = b'{"a": {"dtype": "F32", "shape": [768], "data_offsets": [0, 3072]}, "a": {"dtype": "F32", "shape": [768], "data_offsets": [0, 3072]}}'
    with pytest.raises(CorruptFile, match="twice"):
        read_embedding_bytes(raw_safetensors(dup, bytes(3072)))
    overlap = {
        "a": {"dtype": "F32", "shape": [768], "data_offsets": [0, 3072]},
        "b": {"dtype": "F32", "shape": [768], "data_offsets": [3000, 6072]},
    }
    with pytest.raises(CorruptFile, match="overlaps"):
        read_embedding_bytes(raw_safetensors(overlap, bytes(6072)))
    gap = {"a": {"dtype": "F32", "shape": [768], "data_offsets": [8, 3080]}}
    with pytest.raises(CorruptFile, match="gap of 8 bytes"):
        read_embedding_bytes(raw_safetensors(gap, bytes(3080)))


def test_bad_6_dtype_and_size() -> None:
    for dtype in ("I32", "BOOL"):
        header = {
            "emb_params": {
                "dtype": dtype,
                "shape": [768],
                "data_offsets": [0, 3072 if dtype == "I32" else 768],
            }
        }
        with pytest.raises(BadTensor, match=dtype):
            read_embedding_bytes(raw_safetensors(header, bytes(3072 if dtype == "I32" else 768)))
    header = {"emb_params": {"dtype": "F7", "shape": [768], "data_offsets": [0, 3072]}}
    with pytest.raises(BadTensor, match="F7"):
        read_embedding_bytes(raw_safetensors(header, bytes(3072)))
    header = {"emb_params": {"dtype": "F32", "shape": [2, 768], "data_offsets": [0, 3072]}}
    with pytest.raises(BadTensor, match="6144"):
        read_embedding_bytes(raw_safetensors(header, bytes(3072)))


def test_bad_7_pickle_named_safetensors_is_a_pickle(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"
    target = tmp_path / "x.safetensors"
    target.write_bytes(malicious_pickle("os.system", sentinel, 2))
    with pytest.raises(UnsafeFile, match=r"os\.system"):
        read_embedding_file(target)
    assert not sentinel.exists()


def test_bad_10_archives() -> None:
    with pytest.raises(UnsupportedContent, match="7z"):
        read_embedding_bytes(make_7z())
    with pytest.raises(UnsafeFile, match=r"\.\./x"):
        read_embedding_bytes(in_torch_zip(b"\x80\x02}.", extra_names={"../x": b""}))


def test_bad_12_no_tensors() -> None:
    with pytest.raises(UnsupportedContent, match="without tensors.*'name'"):
        read_embedding_bytes(torch_bytes({"name": "x", "step": 3}))
    with pytest.raises(UnsupportedContent, match="list"):
        read_embedding_bytes(torch_bytes([torch.zeros(1, 768)]))
    with pytest.raises(UnsupportedContent, match=r"string_to_param\['\*'\] is a str"):
        read_embedding_bytes(torch_bytes({"string_to_param": {"*": "nope"}}))


def test_bad_13_widths_and_sdxl_slots() -> None:
    with pytest.raises(FamilyMismatch, match="width 1000"):
        read_embedding_bytes(make_diffusers_safetensors("<x>", rand_vectors(2, 1000)))
    with pytest.raises(
        FamilyMismatch, match=r"x\.bin: SDXL embedding without clip_l \(clip_g=\[2, 1280\]\)"
    ):
        read_embedding_bytes(make_diffusers_safetensors("<x>", rand_vectors(2, 1280)), path="x.bin")
    with pytest.raises(FamilyMismatch, match=r"clip_l \[2, 768\] but no clip_g"):
        read_embedding_bytes(write_safetensors({"clip_l": rand_vectors(2, 768)}))
    with pytest.raises(FamilyMismatch, match="no clip_l"):
        read_embedding_bytes(write_safetensors({"clip_g": rand_vectors(2, 1280)}))
    with pytest.raises(FamilyMismatch, match="unequal row counts"):
        read_embedding_bytes(make_sdxl(rand_vectors(2, 768), rand_vectors(3, 1280)))
    with pytest.raises(FamilyMismatch, match="same width"):
        read_embedding_bytes(make_sdxl(rand_vectors(2, 768), rand_vectors(2, 768)))
    # three 1024-wide vectors are never read as four 768-wide ones
    parsed = read_embedding_bytes(make_emb_params_safetensors(rand_vectors(3, 1024)))
    assert parsed.embedding.vectors["clip_h"].shape == (3, 1024)


def test_bad_14_several_terms_or_keys() -> None:
    terms = {"*": rand_vectors(1, 768), "other": rand_vectors(1, 768)}
    with pytest.raises(AmbiguousEmbedding, match="2 terms") as info:
        read_embedding_bytes(make_a1111_pt(None, terms=terms))
    assert info.value.candidates == ["*", "other"]
    st_bytes = write_safetensors(
        {"<a>": rand_vectors(1, 768), "<b>": rand_vectors(1, 768), "<c>": rand_vectors(2, 768)}
    )
    with pytest.raises(AmbiguousEmbedding, match="3 unrelated tensors") as info:
        read_embedding_bytes(st_bytes, path="multi.safetensors")
    assert info.value.candidates == ["<a>", "<b>", "<c>"]
    assert "multi.safetensors" in str(info.value)
    with pytest.raises(AmbiguousEmbedding):
        read_embedding_bytes(
            write_safetensors({"emb_params": rand_vectors(1, 768), "x": rand_vectors(1, 768)})
        )
    lora = {f"lora_unet_{i}.weight": np.zeros((4, 4), np.float32) for i in range(20)}
    with pytest.raises(UnsupportedContent, match="LoRA"):
        read_embedding_bytes(write_safetensors(lora))
    two_bundles = make_lora_bundle("a", rand_vectors(1, 768))
    with pytest.raises(AmbiguousEmbedding, match="bundles 2"):
        tensors = {
            "bundle_emb.a.clip_l": rand_vectors(1, 768),
            "bundle_emb.b.clip_l": rand_vectors(1, 768),
        }
        assert two_bundles
        read_embedding_bytes(write_safetensors(tensors))


def test_bad_15_shapes() -> None:
    with pytest.raises(BadTensor, match=r"no vectors \(shape \[0, 768\]\)"):
        read_embedding_bytes(make_emb_params_safetensors(np.zeros((0, 768), np.float32)))
    with pytest.raises(BadTensor, match=r"shape \[\]"):
        read_embedding_bytes(torch_bytes({"emb_params": torch.tensor(1.0)}))
    with pytest.raises(BadTensor, match=r"shape \[2, 2, 768\]"):
        read_embedding_bytes(make_emb_params_safetensors(np.zeros((2, 2, 768), np.float32)))


@pytest.mark.parametrize(
    ("value", "found"), [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (1e5, "100000")]
)
def test_bad_16_values(value: float, found: str) -> None:
    arr = rand_vectors(2, 768)
    arr[1, 5] = value
    for data in (make_emb_params_safetensors(arr), make_a1111_pt(arr), make_png_embedding(arr)):
        with pytest.raises(BadTensor, match=found):
            read_embedding_bytes(data)


def test_bad_17_zero_and_outlier_norms_are_flagged() -> None:
    zero = read_embedding_bytes(make_emb_params_safetensors(np.zeros((2, 768), np.float32)))
    assert zero.embedding.flags == ["all_zero"]
    loud = read_embedding_bytes(make_emb_params_safetensors(np.full((1, 768), 100.0, np.float32)))
    assert loud.embedding.flags == ["norm_outlier"]


def test_bad_18_too_many_vectors() -> None:
    with pytest.raises(BadTensor, match="76 vectors"):
        read_embedding_bytes(make_emb_params_safetensors(rand_vectors(76, 768)))
    assert (
        read_embedding_bytes(
            make_emb_params_safetensors(rand_vectors(75, 768))
        ).embedding.num_vectors
        == 75
    )


# --------------------------------------------------------------------------- unknown content


@pytest.mark.parametrize(
    ("data", "looks"),
    [
        (b"hello world, this is text", "text (25 bytes)"),
        (b"<!DOCTYPE html><html>", "HTML text"),
        (b'{"emb_params": [1, 2]}', "JSON-like text"),
        (b"\x1f\x8b\x08\x00\x00\x00", "gzip data"),
        (b"GIF89a\x01\x00", "a GIF image"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "a JPEG image"),
        (b"\x00\x01\x02\x03\xfe\xfd\xfc", "binary data starting 00 01 02"),
        # text that happens to start like a protocol-0 pickle opener
        (b"cat toy\nhello world\n", "text (20 bytes)"),
        (b"(hello) there", "text (13 bytes)"),
        # ... or with a string, number or None opcode (V, S, I, L, F, N, X...)
        (b"Vacation toy photos\nfrom 2020\n", "text (30 bytes)"),
        (b"S'hello' she said\n", "text (18 bytes)"),
        (b"Internal toy notes.\n", "text (20 bytes)"),
        (b"Not a toy.", "text (10 bytes)"),
        (b"Look.\n.", "text (7 bytes)"),
    ],
)
def test_unknown_format_says_what_it_saw(data: bytes, looks: str) -> None:
    with pytest.raises(UnknownFormat) as info:
        read_embedding_bytes(data, path="mystery.pt")
    message = str(info.value)
    assert looks in message
    assert "safetensors" in message and "PNG" in message
    assert message.startswith("mystery.pt: ")
    assert "\n" not in message
    assert looks in describe_bytes(data)
    # The file's content is never echoed back (a text file could carry terminal escapes).
    assert "hello" not in message and "toy" not in message and "[1, 2]" not in message


def test_oversized_bytes_are_refused() -> None:
    with pytest.raises(FileTooLarge):
        read_embedding_bytes(b"\x00" * (16 * 1024 * 1024 + 1))


# --------------------------------------------------------------------------- writers


def test_writer_layouts() -> None:
    sd1 = _emb("sd1", 2, 1)
    sdxl = _emb("sdxl", 2, 1)
    files = write_embedding(sd1, "a1111-pt", name="cat-toy", token="<cat-toy>")
    assert list(files) == ["cat-toy.pt"]
    obj = torch.load(__import__("io").BytesIO(files["cat-toy.pt"]), weights_only=True)
    assert obj["string_to_token"] == {"*": 265}
    assert set(obj) == {
        "string_to_token",
        "string_to_param",
        "name",
        "step",
        "sd_checkpoint",
        "sd_checkpoint_name",
    }
    assert obj["sd_checkpoint"] is None and obj["name"] == "cat-toy"
    assert list(write_embedding(sd1, "safetensors", name="c", token="t")) == ["c.safetensors"]
    from safetensors.numpy import load

    assert list(
        load(write_embedding(sd1, "safetensors", name="c", token="t")["c.safetensors"])
    ) == ["emb_params"]
    assert sorted(load(write_embedding(sdxl, "sdxl", name="c", token="t")["c.safetensors"])) == [
        "clip_g",
        "clip_l",
    ]
    pair = write_embedding(sdxl, "diffusers", name="c", token="<c>")
    assert sorted(pair) == ["learned_embeds.safetensors", "learned_embeds_2.safetensors"]
    assert list(load(pair["learned_embeds_2.safetensors"])) == ["<c>"]
    assert load(pair["learned_embeds_2.safetensors"])["<c>"].shape == (2, 1280)


def test_writer_refusals() -> None:
    sd1, sdxl = _emb("sd1", 1, 0), _emb("sdxl", 1, 0)
    with pytest.raises(UsageError, match="use the sdxl format"):
        write_embedding(sdxl, "a1111-pt", name="x", token="x")
    with pytest.raises(UsageError, match="sd1"):
        write_embedding(sd1, "sdxl", name="x", token="x")
    with pytest.raises(UsageError, match="unknown write format"):
        write_embedding(sd1, "ckpt", name="x", token="x")
    with pytest.raises(UsageError, match="token"):
        write_embedding(sd1, "diffusers", name="x", token="")
    with pytest.raises(InvalidName):
        write_embedding(sd1, "safetensors", name="../evil", token="x")


def test_written_safetensors_header_is_deterministic() -> None:
    emb = _emb("sdxl", 3, 4)
    a = write_embedding(emb, "sdxl", name="x", token="x")
    b = write_embedding(emb, "sdxl", name="x", token="x")
    assert a == b
    assert a["x.safetensors"] == emb.canonical_bytes()
    (n,) = struct.unpack("<Q", a["x.safetensors"][:8])
    assert n % 8 == 0


def test_importing_the_readers_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, conceptlib.registry.formats, conceptlib.registry.formats.png_embed; "
        "print(sorted(m for m in ('torch', 'PIL', 'safetensors') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_refusal_is_one_line_naming_the_file(tmp_path: Path) -> None:
    good_zip = make_emb_params_pt(rand_vectors(1, 768))
    bad_inputs = [
        b"",
        lfs_pointer(),
        b"random text",
        make_7z(),
        _good_st()[:-3],
        raw_safetensors(b"{nope"),
        good_zip[: len(good_zip) // 2],
        in_torch_zip(b"\x80\x02}q\x00(X\x01\x00\x00\x00a\xff"),
        malicious_pickle("os.system", tmp_path / "s", 0),
        torch_bytes({"name": "x"}),
        make_sdxl(rand_vectors(2, 768), rand_vectors(3, 1280)),
        make_emb_params_safetensors(rand_vectors(80, 768)),
        make_png_embedding(rand_vectors(1, 768))[:-20],
    ]
    for data in bad_inputs:
        with pytest.raises(Exception) as info:
            read_embedding_bytes(data, path="where/it.pt")
        message = str(info.value)
        assert "\n" not in message, message
        assert "where/it.pt" in message, message
        assert info.value.__class__.__module__ == "conceptlib.errors", message
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- issue 13


@pytest.mark.parametrize("opener", ["V", "S"])
@pytest.mark.parametrize("protocol", [0, 1])
def test_a_headerless_pickle_opening_with_a_string_is_read_as_a_pickle(
    opener: str, protocol: int, tmp_path: Path
) -> None:
    """Protocol 0/1 streams have no header; one that opens with V/S is still a pickle."""
    sentinel = tmp_path / "sentinel"
    text = f"touch {sentinel}"
    if opener == "V":
        evil = b"V" + text.encode() + b"\np0\n0cos\nsystem\n(g0\ntR."
    else:
        evil = b"S'" + text.encode() + b"'\np0\n0cos\nsystem\n(g0\ntR."
    if protocol == 1:  # binary opcodes after the text opener
        evil = evil.replace(b"(g0\ntR", b"(h\x00tR")
    with pytest.raises(UnsafeFile, match=r"os\.system") as info:
        read_embedding_bytes(evil, path="evil.pt")
    assert "not executed" in str(info.value)
    # a harmless one is a plain pickle, not an unknown format; a second pickle after it
    # is walked too
    with pytest.raises(UnsupportedContent, match="plain Python pickle"):
        read_embedding_bytes(opener.encode() + b"'x'\n." if opener == "S" else b"Vx\n.")
    with pytest.raises(UnsafeFile, match=r"os\.system"):
        read_embedding_bytes(b"Vx\n." + evil)
    assert not sentinel.exists()


def test_an_embedding_state_dict_imports_like_the_same_tensor_in_a_dict(tmp_path: Path) -> None:
    """``{"weight": [n, 768]}``: nn.Embedding's state_dict; "weight" names no trigger."""
    vec = rand_vectors(3, 768, seed=4)
    emb = torch.nn.Embedding(3, 768)
    with torch.no_grad():
        emb.weight.copy_(torch.from_numpy(vec))
    for data in (torch_bytes(emb.state_dict()), torch_bytes({"weight": torch.from_numpy(vec)})):
        parsed = read_embedding_bytes(data, path="style.pt")
        assert (parsed.format, parsed.token) == ("diffusers", None)
        np.testing.assert_array_equal(parsed.embedding.vectors["clip_l"], vec)


@pytest.mark.parametrize(
    "shape",
    [[0, 2**63 - 1], [0, 2**64], [2**40, 2**40, 0], [0, 16 * 1024 * 1024 + 1], [2**20, 2**20, 0]],
)
def test_safetensors_shapes_beyond_any_file_are_corrupt(shape: list[int]) -> None:
    """Zero elements, but dimensions numpy cannot represent: refused from the header."""
    data = raw_safetensors({"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
    with pytest.raises(CorruptFile, match="non-zero product is at most 16777216") as info:
        read_embedding_bytes(data, path="dims.safetensors")
    assert str(info.value).startswith("dims.safetensors: ") and len(str(info.value)) < 300
    # a zero-size tensor with sane dimensions is read (and refused for its shape)
    ok = raw_safetensors({"a": {"dtype": "F32", "shape": [0, 768], "data_offsets": [0, 0]}})
    with pytest.raises(BadTensor, match="no vectors"):
        read_embedding_bytes(ok)


def _ztxt(text: bytes) -> bytes:
    from conceptlib.registry.formats.png_embed import TEXT_KEY, _chunk

    return _chunk(b"zTXt", TEXT_KEY.encode() + b"\x00\x00" + zlib.compress(text, 9))


def test_repeated_png_text_chunks_share_one_text_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from conceptlib.registry.formats import png_embed

    vec = rand_vectors(1, 768, seed=2)
    text = png_embed.embedding_text({"string_to_param": {"*": vec}, "name": "x"})
    plain = png_embed.plain_png(8, 8)
    same = png_embed.insert_chunks(plain, [_ztxt(text)] * 3)
    np.testing.assert_array_equal(read_embedding_bytes(same).embedding.vectors["clip_l"], vec)
    other = png_embed.embedding_text({"string_to_param": {"*": vec * 2}, "name": "x"})
    differ = png_embed.insert_chunks(plain, [_ztxt(text), _ztxt(other), _ztxt(text)])
    with pytest.raises(AmbiguousEmbedding, match="3 'sd-ti-embedding' chunks, 2 different"):
        read_embedding_bytes(differ)
    # each chunk under the cap, all of them together over it
    monkeypatch.setattr(png_embed, "MAX_TEXT_BYTES", len(text) * 2 + 10)
    with pytest.raises(FileTooLarge, match="in all") as info:
        read_embedding_bytes(same, path="many.png")
    assert str(info.value).startswith("many.png: ")

"""Blends (parents recorded, rows matched or resampled) and export --for-prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from conceptlib.compose.blend import (
    blend,
    blend_vectors,
    parse_parent,
    parse_parents,
    resample_rows,
)
from conceptlib.compose.export import export_for_prompt
from conceptlib.errors import (
    AlreadyExists,
    BlendError,
    FamilyMismatch,
    InvalidWeight,
    UnknownEmbedding,
    UsageError,
)
from conceptlib.registry.formats import read_embedding_bytes
from conceptlib.registry.samples import sample_embedding


@pytest.fixture
def catalog(lib):
    lib.add_embedding(sample_embedding("sd1", 2, 1), name="cat-toy", token="<cat-toy>")
    lib.add_embedding(sample_embedding("sd1", 2, 2), name="dog-toy", kind="object")
    lib.add_embedding(sample_embedding("sd1", 4, 3), name="ukiyoe", kind="style")
    lib.add_embedding(sample_embedding("sd2", 2, 4), name="golem")
    lib.add_embedding(sample_embedding("sdxl", 2, 5), name="neon-xl", token="<neon>")
    lib.add_embedding(sample_embedding("sdxl", 1, 6), name="rain-xl")
    lib.add_embedding(sample_embedding("sd1", 8, 7), name="easynegative", kind="negative")
    return lib


# --------------------------------------------------------------------------- blend


def test_blend_matched_rows_records_parents(catalog):
    result = blend(catalog, "catdog", [("cat-toy", 0.5), ("<dog-toy>", 0.5)])
    assert result.row_mode == "matched" and result.resampled == {}
    info = result.info
    assert info.source == "blend" and info.family == "sd1" and info.num_vectors == 2
    cat, dog = catalog.get("cat-toy"), catalog.get("dog-toy")
    assert info.parents == [
        {"tensor_sha256": cat.tensor_sha256, "name": "cat-toy", "weight": 0.5},
        {"tensor_sha256": dog.tensor_sha256, "name": "dog-toy", "weight": 0.5},
    ]
    assert info.extra["blend"]["row_mode"] == "matched"
    assert info.kind == "object"
    want = 0.5 * catalog.load(cat).vectors["clip_l"] + 0.5 * catalog.load(dog).vectors["clip_l"]
    got = catalog.load(info).vectors["clip_l"]
    assert np.allclose(got, want, atol=1e-7)
    # reproducible from what was recorded: the same tensors again
    with pytest.raises(AlreadyExists):
        blend(catalog, "catdog-again", [("cat-toy", 0.5), ("dog-toy", 0.5)])


def test_blend_resamples_and_says_so(catalog):
    result = blend(catalog, "cat-ukiyoe", [("cat-toy", 0.7), ("ukiyoe", 0.3)])
    assert result.row_mode == "resampled" and result.rows == 4
    assert result.resampled == {"cat-toy": [2, 4]}
    assert any("resampled (linear) to 4 rows" in n for n in result.notes)
    assert result.info.num_vectors == 4 and result.info.kind == "other"
    recipe = result.info.extra["blend"]
    # trace and reproduce from the recorded parents and recipe
    parents = [catalog.by_tensor_sha256(p["tensor_sha256"]) for p in result.info.parents]
    vectors, rows, changed = blend_vectors(
        [catalog.load(p) for p in parents],
        [p["weight"] for p in result.info.parents],
        resample=recipe["method"],
        rows=recipe["rows"],
    )
    assert rows == 4 and changed == [0]
    assert np.array_equal(vectors["clip_l"], catalog.load(result.info).vectors["clip_l"])

    near = blend(catalog, "cat-ukiyoe-n", [("cat-toy", 0.5), ("ukiyoe", 0.5)], resample="nearest")
    assert near.method == "nearest" and near.info.extra["blend"]["method"] == "nearest"
    with pytest.raises(BlendError, match="resample='none'"):
        blend(catalog, "x", [("cat-toy", 0.5), ("ukiyoe", 0.5)], resample="none")


def test_blend_sdxl_both_slots_and_weight_note(catalog):
    result = blend(catalog, "neon-rain", [("neon-xl", 0.6), ("rain-xl", 0.6)])
    assert result.info.family == "sdxl" and result.info.num_vectors == 2
    assert any("sum to 1.2" in n for n in result.notes)
    emb = catalog.load(result.info)
    assert set(emb.vectors) == {"clip_l", "clip_g"}


def test_resample_rows():
    m = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert np.array_equal(resample_rows(m, 3), m)
    five = resample_rows(m, 5)
    assert np.allclose(five[:, 0], [0, 1, 2, 3, 4]) and five.dtype == np.float32
    assert np.array_equal(resample_rows(m[:1], 4), np.repeat(m[:1], 4, axis=0))
    assert np.array_equal(resample_rows(m, 5, "nearest")[:, 0], [0, 2, 2, 4, 4])
    assert np.allclose(resample_rows(m, 2)[:, 0], [0, 4])


@pytest.mark.parametrize(
    "parents, error, fragment",
    [
        ([("cat-toy", 0.5), ("golem", 0.5)], FamilyMismatch, "one family"),
        ([("cat-toy", 0.5), ("neon-xl", 0.5)], FamilyMismatch, "sdxl"),
        ([("cat-toy", 0.5), ("cat-toy", 0.5)], BlendError, "twice"),
        ([("cat-toy", float("nan"))], BlendError, "finite"),
        ([], BlendError, "at least one"),
        ([("cat-tpy", 1.0)], UnknownEmbedding, "cat-tpy"),
    ],
)
def test_blend_errors(catalog, catalog_snapshot, _isolated_home, parents, error, fragment):
    before = catalog_snapshot(_isolated_home)
    with pytest.raises(error, match=fragment):
        blend(catalog, "bad-blend", parents)
    assert catalog_snapshot(_isolated_home) == before


def test_parse_parents():
    assert parse_parent("cat-toy:0.5") == ("cat-toy", 0.5)
    assert parse_parent("cat-toy") == ("cat-toy", None)
    assert parse_parents(["a", "b"]) == [("a", 0.5), ("b", 0.5)]
    with pytest.raises(InvalidWeight, match="not a number"):
        parse_parent("cat-toy:half")
    with pytest.raises(BlendError, match="every parent a weight or none"):
        parse_parents(["a:0.5", "b"])


def test_blend_cli(catalog, monkeypatch):
    from conceptlib.cli import main

    monkeypatch.setitem(main.COMMANDS, "blend", ("conceptlib.cli.compose:blend_cmd", "x"))
    runner = CliRunner()
    res = runner.invoke(
        main.cli, ["blend", "cat-mix", "cat-toy:0.5", "ukiyoe:0.5", "--tag", "mixed"]
    )
    assert res.exit_code == 0, res.output
    assert "registered cat-mix" in res.output and "resampled" in res.output
    assert catalog.get("cat-mix").tags == ["mixed"]
    res = runner.invoke(main.cli, ["blend", "cat-mix2", "cat-toy", "dog-toy", "--json"])
    data = json.loads(res.output)
    assert data["row_mode"] == "matched" and data["weights"] == {"cat-toy": 0.5, "dog-toy": 0.5}
    assert len(data["embedding"]["parents"]) == 2
    res = runner.invoke(main.cli, ["blend", "bad-mix", "cat-toy:x", "dog-toy:0.5"])
    assert res.exit_code == 2 and "not a number" in res.output
    res = runner.invoke(main.cli, ["blend", "bad-mix", "cat-toy:0.5", "golem:0.5"])
    assert res.exit_code == 3 and "one family" in res.output


# --------------------------------------------------------------------------- export


PROMPT = "a photo of <cat-toy> in <ukiyoe:0.8> style, <neon>"


def _read(path, companion=None):
    return read_embedding_bytes(path.read_bytes(), path=str(path), companion=companion)


@pytest.mark.parametrize("fmt", ["a1111", "comfyui", "invokeai"])
def test_export_for_prompt_one_file_per_embedding(catalog, tmp_path, fmt):
    out = tmp_path / fmt
    paths = export_for_prompt(catalog, PROMPT, fmt, out, negative="<easynegative>")
    names = ["cat-toy", "ukiyoe", "neon-xl", "easynegative"]
    assert paths == [out / f"{n}.safetensors" for n in names]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths)
    for name, path in zip(names, paths, strict=True):
        info = catalog.get(name)
        assert _read(path).embedding.tensor_sha256 == info.tensor_sha256


def test_export_for_prompt_a1111_pt(catalog, tmp_path):
    paths = export_for_prompt(catalog, "<cat-toy> <ukiyoe>", "a1111", tmp_path, pt=True)
    assert [p.name for p in paths] == ["cat-toy.pt", "ukiyoe.pt"]
    parsed = _read(paths[0])
    assert parsed.format == "a1111-pt"
    assert parsed.embedding.tensor_sha256 == catalog.get("cat-toy").tensor_sha256


def test_export_for_prompt_diffusers_folders(catalog, tmp_path):
    paths = export_for_prompt(catalog, PROMPT, "diffusers", tmp_path)
    rel = sorted(str(p.relative_to(tmp_path)) for p in paths)
    assert rel == [
        "cat-toy/learned_embeds.safetensors",
        "neon-xl/learned_embeds.safetensors",
        "neon-xl/learned_embeds_2.safetensors",
        "ukiyoe/learned_embeds.safetensors",
    ]
    cat = _read(tmp_path / "cat-toy" / "learned_embeds.safetensors")
    assert cat.token == "<cat-toy>"
    xl = _read(
        tmp_path / "neon-xl" / "learned_embeds.safetensors",
        companion=(tmp_path / "neon-xl" / "learned_embeds_2.safetensors").read_bytes(),
    )
    assert xl.token == "<neon>"
    assert xl.embedding.tensor_sha256 == catalog.get("neon-xl").tensor_sha256


def test_export_for_prompt_errors(catalog, tmp_path):
    with pytest.raises(UnknownEmbedding):
        export_for_prompt(catalog, "<nope>", "a1111", tmp_path / "x")
    assert not (tmp_path / "x").exists()
    with pytest.raises(UsageError, match="unknown format"):
        export_for_prompt(catalog, "<cat-toy>", "fooocus", tmp_path / "x")
    export_for_prompt(catalog, "<cat-toy>", "a1111", tmp_path / "y")
    (tmp_path / "y" / "cat-toy.safetensors").write_bytes(b"another file")
    with pytest.raises(AlreadyExists, match="already exists with other contents"):
        export_for_prompt(catalog, "<cat-toy> <ukiyoe>", "a1111", tmp_path / "y")
    assert not (tmp_path / "y" / "ukiyoe.safetensors").exists()  # nothing half-written
    assert (tmp_path / "y" / "cat-toy.safetensors").read_bytes() == b"another file"
    assert (
        len(export_for_prompt(catalog, "<cat-toy>", "a1111", tmp_path / "y", overwrite=True)) == 1
    )
    # a prompt without embeddings says so (it used to write nothing and succeed)
    with pytest.raises(UsageError, match="names no embeddings"):
        export_for_prompt(catalog, "just text", "comfyui", tmp_path / "z")
    with pytest.raises(UsageError, match="negative prompt name no embeddings"):
        export_for_prompt(catalog, "just text", "comfyui", tmp_path / "z", negative="blurry")
    assert not (tmp_path / "z").exists()


def test_export_for_prompt_without_embeddings_is_a_usage_error_in_the_cli(catalog, tmp_path):
    from click.testing import CliRunner

    from conceptlib.cli.main import cli

    before = catalog.dump()
    out = tmp_path / "ui"
    result = CliRunner().invoke(
        cli, ["export", "--for-prompt", "a photo of a cat", "--format", "a1111", "-o", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "error: the prompt names no embeddings, so there is nothing to export" in result.output
    assert "hint: name catalog embeddings as <name>" in result.output
    assert not out.exists()
    assert catalog.dump() == before


def test_export_for_prompt_cli_helper(catalog, tmp_path, capsys):
    from conceptlib.cli.compose import run_export_for_prompt

    run_export_for_prompt("<cat-toy>", "comfyui", str(tmp_path), as_json=True)
    data = json.loads(capsys.readouterr().out)
    assert data["files"] == [str(tmp_path / "cat-toy.safetensors")]


# --------------------------------------------------------------------------- tokens for tokenizers


@pytest.mark.timeout(240)
def test_mixed_case_multi_vector_token_uses_every_vector_in_diffusers(lib, tmp_path):
    """``BadHandV4`` with 3 vectors: the exported files are keyed by the form CLIP's
    tokenizer gives the prompt, so diffusers' own ``load_textual_inversion`` expands the
    prompt ``compose --format diffusers`` writes into all 3 vectors (a mixed-case key is
    never matched: the prompt is lower-cased, one vector used)."""
    from click.testing import CliRunner
    from compose_support import tiny_cache_dir

    from conceptlib.cli.main import cli
    from conceptlib.models.tiny import load_tiny

    emb = sample_embedding("sd1", 3, 40)
    lib.add_embedding(emb, name="BadHandV4", kind="negative")
    (single,) = lib.export("BadHandV4", "diffusers", tmp_path / "single")
    assert single.name == "BadHandV4.safetensors"  # named after the entry
    folder = tmp_path / "ui"
    export_for_prompt(lib, "<BadHandV4>", "diffusers", folder)
    res = CliRunner().invoke(cli, ["compose", "a hand, <BadHandV4>", "--format", "diffusers"])
    assert res.exit_code == 0, res.output
    prompt = res.output.splitlines()[0]
    assert prompt == "a hand, badhandv4"
    tokens = ["badhandv4", "badhandv4_1", "badhandv4_2"]
    for source in (str(single), str(folder / "BadHandV4")):
        pipe = load_tiny("tiny-sd1", cache_dir=tiny_cache_dir())
        pipe.load_textual_inversion(source)
        text = pipe.maybe_convert_prompt(prompt, pipe.tokenizer)
        ids = pipe.tokenizer(text).input_ids
        added = pipe.tokenizer.convert_tokens_to_ids(tokens)
        assert [i for i in ids if i in added] == added, (source, text)
        rows = pipe.text_encoder.get_input_embeddings().weight[added].detach().numpy()
        np.testing.assert_allclose(rows, emb.vectors["clip_l"], atol=1e-6)

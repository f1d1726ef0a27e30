"""compose() end to end on the tiny models, dry runs, errors, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner
from compose_support import assert_restored, encoder_state, fresh_base, link_tiny_into_home
from PIL import Image

from conceptlib.compose.compose import compose, parse_infotext, peek_family
from conceptlib.errors import (
    BaseModelError,
    ConflictingWeights,
    IncompatibleEmbedding,
    InvalidWeight,
    PartialCompatibility,
    PromptSyntaxError,
    TokenBudgetExceeded,
    UnknownEmbedding,
    UsageError,
)
from conceptlib.registry.samples import sample_embedding
from conceptlib.schemas.enums import Family

FAST = {"steps": 2, "guidance": 5.0, "width": 32, "height": 32}


def a1111_file_hash(library, name, folder):
    """A1111's hash (first 12 hex of the SHA-256 of the whole file) of the file
    ``export --for-prompt --format a1111`` writes for ``name`` (issue 12)."""
    import hashlib

    from conceptlib.compose.export import export_for_prompt

    (path,) = export_for_prompt(library, f"<{name}>", "a1111", folder, overwrite=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.fixture(scope="module")
def sd1():
    return fresh_base("tiny-sd1")


@pytest.fixture(scope="module")
def sdxl():
    return fresh_base("tiny-sdxl")


@pytest.fixture
def lib(_isolated_home):
    """SQLite only: generation does not depend on the catalog backend, and is slow."""
    from conceptlib.registry.library import Library

    with Library.open() as library:
        yield library


@pytest.fixture
def catalog(lib):
    lib.add_embedding(sample_embedding("sd1", 2, 1), name="cat-toy", token="<cat-toy>")
    lib.add_embedding(sample_embedding("sd1", 3, 2), name="ukiyoe", kind="style")
    lib.add_embedding(sample_embedding("sd1", 8, 3), name="easynegative", kind="negative")
    lib.add_embedding(sample_embedding("sd2", 2, 4), name="golem")
    lib.add_embedding(sample_embedding("sdxl", 2, 5), name="neon-xl")
    return lib


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to build a diffusers pipeline fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    import diffusers

    import conceptlib.models.base as base

    monkeypatch.setattr(base, "load_base", refuse)
    for cls in (diffusers.StableDiffusionPipeline, diffusers.StableDiffusionXLPipeline):
        monkeypatch.setattr(cls, "from_pretrained", refuse)
        monkeypatch.setattr(cls, "__init__", refuse)


def test_compose_end_to_end_on_tiny_sd1(catalog, sd1, tmp_path):
    before = encoder_state(sd1.pipeline)
    out = tmp_path / "out.png"
    result = compose(
        "a photo of <cat-toy> in <ukiyoe:0.8> style",
        negative="<easynegative>, blurry",
        base=sd1,
        library=catalog,
        seed=7,
        n=2,
        out=out,
        **FAST,
    )
    assert result.images == [tmp_path / "out-1.png", tmp_path / "out-2.png"]
    assert result.seeds == [7, 8] and result.sampler == "DDIM"
    assert result.expanded_prompt == (
        "a photo of <cat-toy> <cat-toy>_1 in <ukiyoe:0.8> <ukiyoe:0.8>_1 <ukiyoe:0.8>_2 style"
    )
    assert result.expanded_negative.startswith("<easynegative> <easynegative>_1")
    assert not result.warnings
    assert [b.exact for b in result.budgets] == [True, True]
    cat_hash = a1111_file_hash(catalog, "cat-toy", tmp_path / "ti")
    for path, seed in zip(result.images, result.seeds, strict=True):
        image = Image.open(path)
        assert image.size == (32, 32)
        info = parse_infotext(image.text["parameters"])
        # A1111's syntax in A1111's chunk (issue 12); ours is in the conceptlib chunk
        assert info["prompt"] == "a photo of cat-toy in (ukiyoe:0.8) style"
        assert info["negative"] == "easynegative, blurry"
        p = info["params"]
        assert p["Steps"] == "2" and p["Sampler"] == "DDIM" and p["CFG scale"] == "5"
        assert p["Seed"] == str(seed) and p["Size"] == "32x32"
        # no single checkpoint file, no Model hash; our fingerprint has its own field
        assert "Model hash" not in p
        assert p["Conceptlib base fingerprint"] == sd1.fingerprint
        assert p["Model"] == "conceptlib/tiny-sd1"
        hashes = dict(x.split(": ") for x in p["TI hashes"].split(", "))
        assert hashes["cat-toy"] == cat_hash and set(hashes) == {
            "cat-toy",
            "ukiyoe",
            "easynegative",
        }
        record = json.loads(image.text["conceptlib"])
        assert record["seed"] == seed and record["base"]["fingerprint"] == sd1.fingerprint
        assert record["prompt"] == "a photo of <cat-toy> in <ukiyoe:0.8> style"
        assert {e["name"]: e["weight"] for e in record["embeddings"]}["ukiyoe"] == 0.8
    # the pipeline is exactly as before
    assert_restored(sd1.pipeline, before)

    # the same seed reproduces the image; the embeddings change it
    again = compose(
        "a photo of <cat-toy> in <ukiyoe:0.8> style",
        negative="<easynegative>, blurry",
        base=sd1,
        library=catalog,
        seed=8,
        out=tmp_path / "again.png",
        **FAST,
    )
    same = np.asarray(Image.open(again.images[0]))
    assert np.array_equal(same, np.asarray(Image.open(result.images[1])))
    # in conceptlib's syntax a bare name is a word (A1111's syntax triggers it: issue 15)
    plain = compose(
        "a photo of cat-toy in ukiyoe style",
        negative="easynegative, blurry",
        base=sd1,
        library=catalog,
        seed=8,
        out=tmp_path / "plain.png",
        syntax="conceptlib",
        **FAST,
    )
    assert not np.array_equal(same, np.asarray(Image.open(plain.images[0])))
    assert "TI hashes" not in plain.infotexts[0]


def test_sd1_on_sdxl_warns_strict_fails_before_loading(catalog, sdxl, tmp_path, monkeypatch):
    before = encoder_state(sdxl.pipeline)
    result = compose(
        "<cat-toy> and <neon-xl>",
        base=sdxl,
        library=catalog,
        seed=1,
        out=tmp_path / "x.png",
        **FAST,
    )
    assert len(result.warnings) == 2 and "<cat-toy>" in result.warnings[0]
    # what the UIs do with it (issue 12): A1111 skips it, so TI hashes leave it out
    assert "A1111 and InvokeAI will not apply <cat-toy>" in result.warnings[1]
    assert {e.name: e.compatibility for e in result.embeddings} == {
        "cat-toy": "partial",
        "neon-xl": "full",
    }
    image = Image.open(result.images[0])
    assert image.size == (32, 32)
    params = parse_infotext(image.text["parameters"])
    assert params["prompt"] == "cat-toy and neon-xl"
    assert [x.split(": ")[0] for x in params["params"]["TI hashes"].split(", ")] == ["neon-xl"]
    assert_restored(sdxl.pipeline, before)

    import conceptlib.models.base as base

    monkeypatch.setattr(base, "load_base", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(PartialCompatibility) as err:
        compose("<cat-toy>", base="tiny-sdxl", library=catalog, strict=True, out=tmp_path / "y.png")
    assert "768 + 1280" in err.value.message and "clip_l [2, 768]" in err.value.message
    assert not (tmp_path / "y.png").exists()


def test_incompatible_family_fails_with_shapes_and_widths(catalog, no_model_loading, tmp_path):
    with pytest.raises(IncompatibleEmbedding) as err:
        compose("a <golem>", base="tiny-sd1", library=catalog, out=tmp_path / "g.png")
    msg = err.value.message
    assert "<golem> is an sd2 embedding (clip_h [2, 1024])" in msg and "768 wide" in msg
    assert err.value.facts["model_widths"] == [768]
    with pytest.raises(IncompatibleEmbedding, match=r"clip_g \[2, 1280\], clip_l \[2, 768\]"):
        compose("<neon-xl>", base="tiny-sd1", library=catalog, dry_run=True)


def test_dry_run_loads_no_model(catalog, no_model_loading, tmp_path):
    result = compose(
        "a <cat-toy> in <ukiyoe:0.5>",
        negative="<easynegative>",
        base="tiny-sd1",
        library=catalog,
        dry_run=True,
        out=tmp_path / "d.png",
    )
    assert result.dry_run and result.images == [] and not (tmp_path / "d.png").exists()
    assert result.base_family == "sd1"
    assert (
        result.expanded_prompt
        == "a <cat-toy> <cat-toy>_1 in <ukiyoe:0.5> <ukiyoe:0.5>_1 <ukiyoe:0.5>_2"
    )
    names = {e.name: e for e in result.embeddings}
    assert names["easynegative"].used_in == ["negative prompt"]
    assert names["cat-toy"].a1111_hash == a1111_file_hash(catalog, "cat-toy", tmp_path / "ti")
    assert [b.exact for b in result.budgets] == [False, True]  # no text: exact
    # no base at all is fine for a dry run: compatibility is unknown
    result = compose("<golem>", base=None, library=catalog, dry_run=True)
    assert result.embeddings[0].compatibility == "unknown"


def test_dry_run_cli_imports_no_torch(catalog, tmp_path):
    """A dry run from the command line never imports torch, diffusers or transformers."""
    code = textwrap.dedent(
        """
        import json, sys
        from conceptlib.cli.compose import compose_cmd
        compose_cmd.main(["a <cat-toy>", "--base", "tiny-sd1", "--dry-run", "--json"],
                         standalone_mode=False)
        heavy = [m for m in ("torch", "diffusers", "transformers") if m in sys.modules]
        print(json.dumps({"heavy": heavy}))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    out = run.stdout
    report = json.loads(out[out.rindex("{") :])
    assert report["heavy"] == []
    data = json.loads(out[: out.rindex("{")])
    assert data["dry_run"] is True and data["embeddings"][0]["name"] == "cat-toy"


def test_budget_is_checked_early_and_exactly(catalog, sd1, tmp_path, monkeypatch):
    """Issue 15: a prompt over 75 positions is chunked; only one over MAX_CHUNKS
    chunks (a cap on untrusted input) is refused, early when the estimate shows it."""
    from conceptlib.compose.chunks import MAX_CHUNKS

    long_text = "a " * (75 * MAX_CHUNKS - 2)
    import conceptlib.models.base as base

    with monkeypatch.context() as m:
        m.setattr(base, "load_base", lambda *a, **k: pytest.fail("model loaded"))
        with pytest.raises(TokenBudgetExceeded) as err:
            compose(long_text + "<easynegative>", base="tiny-sd1", library=catalog, dry_run=True)
        assert f"at least {MAX_CHUNKS + 1} chunks" in err.value.message
        ok = compose("a " * 70 + "<easynegative>", base="tiny-sd1", library=catalog, dry_run=True)
        assert ok.budgets[0].chunks == [70, 8]
    # words the tiny tokenizer splits: the estimate passes, the exact count does not
    odd = "qzxv " * (75 * MAX_CHUNKS // 2)
    with pytest.raises(TokenBudgetExceeded) as err:
        compose(odd + "<cat-toy>", base=sd1, library=catalog, out=tmp_path / "b.png", **FAST)
    assert "needs" in err.value.message and "at least" not in err.value.message
    assert err.value.facts["exact"] is True
    assert not (tmp_path / "b.png").exists()


@pytest.mark.parametrize(
    "prompt, negative, error",
    [
        ("a <cat-tpy>", None, UnknownEmbedding),
        ("a <cat-toy:0.5> <cat-toy>", None, ConflictingWeights),
        ("a <cat-toy:heavy>", None, InvalidWeight),
        ("a <cat-toy", None, PromptSyntaxError),
        ("a cat", "<nope>", UnknownEmbedding),
    ],
)
def test_prompt_errors_before_loading(catalog, no_model_loading, prompt, negative, error):
    with pytest.raises(error):
        compose(prompt, negative, base="tiny-sd1", library=catalog)


def test_weights_may_differ_between_prompt_and_negative(catalog, no_model_loading):
    result = compose("<cat-toy:0.5>", "<cat-toy>", base="tiny-sd1", library=catalog, dry_run=True)
    assert [(e.placeholder, e.weight) for e in result.embeddings] == [
        ("<cat-toy:0.5>", 0.5),
        ("<cat-toy>", 1.0),
    ]


def test_base_model_that_cannot_be_loaded(catalog, tmp_path):
    with pytest.raises(BaseModelError):
        compose(
            "<cat-toy>", base=str(tmp_path / "missing"), library=catalog, out=tmp_path / "o.png"
        )
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(BaseModelError, match="model_index.json"):
        compose("<cat-toy>", base=str(empty), library=catalog, out=tmp_path / "o.png")
    broken = tmp_path / "broken"
    (broken / "text_encoder").mkdir(parents=True)
    (broken / "model_index.json").write_text("{}")
    (broken / "text_encoder" / "config.json").write_text('{"hidden_size": 768}')
    with pytest.raises(BaseModelError):
        compose("<cat-toy>", base=str(broken), library=catalog, out=tmp_path / "o.png")
    assert not (tmp_path / "o.png").exists()


def test_usage_errors(catalog, sd1, tmp_path):
    with pytest.raises(UsageError, match="no base model"):
        compose("<cat-toy>", base=None, library=catalog)
    with pytest.raises(UsageError, match="steps"):
        compose("<cat-toy>", base=sd1, library=catalog, steps=0)
    existing = tmp_path / "taken.png"
    existing.write_bytes(b"x")
    with pytest.raises(UsageError, match="already exists"):
        compose("<cat-toy>", base=sd1, library=catalog, out=existing, **FAST)
    assert existing.read_bytes() == b"x"


def test_peek_family(tmp_path):
    from compose_support import tiny_folder

    assert peek_family("tiny-sd1") == Family.SD1
    assert peek_family("tiny-sdxl") == Family.SDXL
    assert peek_family(str(tiny_folder("tiny-sdxl"))) == Family.SDXL
    assert peek_family(str(tmp_path / "nothing")) is None
    assert peek_family("org/not-cached") is None


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli(monkeypatch):
    """The real ``conceptlib`` group with the compose commands registered."""
    from conceptlib.cli import main

    monkeypatch.setitem(main.COMMANDS, "compose", ("conceptlib.cli.compose:compose_cmd", "x"))
    monkeypatch.setitem(main.COMMANDS, "blend", ("conceptlib.cli.compose:blend_cmd", "x"))
    return main.cli


def test_cli_compose_generates(catalog, cli, tmp_path, _isolated_home):
    link_tiny_into_home(_isolated_home)
    out = tmp_path / "cli.png"
    args = ["compose", "a <cat-toy>", "--negative", "<easynegative>", "--base", "tiny-sd1"]
    args += ["--steps", "2", "--width", "32", "--height", "32", "--seed", "3", "-o", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output and out.is_file()
    assert parse_infotext(Image.open(out).text["parameters"])["params"]["Seed"] == "3"


def test_cli_dry_run_json_and_table(catalog, cli, tmp_path):
    res = CliRunner().invoke(cli, ["compose", "<ukiyoe:0.5>", "--base", "tiny-sd1", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "dry run" in res.output and "<ukiyoe:0.5>_2" in res.output and "ukiyoe" in res.output
    res = CliRunner().invoke(cli, ["compose", "<ukiyoe>", "--dry-run", "--json"])
    data = json.loads(res.output)
    assert data["embeddings"][0]["a1111_hash"] == a1111_file_hash(catalog, "ukiyoe", tmp_path)


@pytest.mark.parametrize(
    "fmt, expected",
    [
        ("a1111", "a cat-toy, (ukiyoe:0.8)"),
        ("comfyui", "a embedding:cat-toy, (embedding:ukiyoe:0.8)"),
        ("invokeai", "a <cat-toy>, (<ukiyoe>)0.8"),
        ("diffusers", "a <cat-toy>, ukiyoe"),
    ],
)
def test_cli_format(catalog, cli, fmt, expected):
    res = CliRunner().invoke(
        cli,
        ["compose", "a <cat-toy>, <ukiyoe:0.8>", "--negative", "<easynegative>", "--format", fmt],
    )
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == expected
    assert lines[1].startswith("Negative prompt: ") and "easynegative" in lines[1]
    res = CliRunner().invoke(cli, ["compose", "<cat-toy>", "--format", fmt, "--json"])
    assert json.loads(res.output)["format"] == fmt


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["compose", "a <cat-tpy>", "--dry-run"], 6, "did you mean: <cat-toy>"),
        (["compose", "<cat-toy:x>", "--dry-run"], 2, "not a number"),
        (["compose", "<cat-toy:1> <cat-toy:2>", "--dry-run"], 2, "two weights"),
        (["compose", "<golem>", "--base", "tiny-sd1", "--dry-run"], 3, "1024"),
        (["compose", "<cat-toy>", "--base", "tiny-sdxl", "--strict", "--dry-run"], 3, "--strict"),
        (["compose", "a " * 2500 + "<easynegative>", "--dry-run"], 3, "at most 32 are encoded"),
        (["compose", "<cat-toy>"], 2, "no base model"),
    ],
)
def test_cli_errors(catalog, cli, args, code, fragment):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == code, res.output
    assert fragment in res.output

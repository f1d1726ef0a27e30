"""``compose --from IMAGE.png`` reruns an image's prompt, negative prompt, seed, steps and
guidance with the local entries (issue "Compose prompts as people write them", item 8)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from PIL import Image, PngImagePlugin

from conceptlib.cli.main import cli
from conceptlib.registry.samples import sample_embedding

A1111_INFOTEXT = (
    "a photo of cat-toy, (masterpiece:1.2)\nNegative prompt: blurry\n"
    "Steps: 3, Sampler: Euler, CFG scale: 5.5, Seed: 1234, Size: 32x32"
)


def png_with(path, text: str) -> str:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return str(path)


@pytest.fixture
def found(lib, tmp_path):
    lib.add_embedding(sample_embedding("sd1", 1, 3), name="cat-toy")
    lib.close()
    return png_with(tmp_path / "found.png", A1111_INFOTEXT)


def dry_run(*args: str) -> dict:
    res = CliRunner().invoke(cli, ["compose", *args, "--base", "tiny-sd1", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_the_image_settings_are_rerun(found):
    out = dry_run("--from", found)
    assert out["prompt"] == "a photo of cat-toy, (masterpiece:1.2)"
    assert out["negative"] == "blurry"
    assert out["syntax"] == {"prompt": "a1111", "negative prompt": "a1111"}
    assert (out["steps"], out["guidance"]) == (3, 5.5)
    assert [e["name"] for e in out["embeddings"]] == ["cat-toy"]


def test_options_given_override_the_image(found):
    out = dry_run("a cat-toy", "--from", found, "--steps", "7", "--negative", "dark")
    assert (out["prompt"], out["negative"], out["steps"], out["guidance"]) == (
        "a cat-toy",
        "dark",
        7,
        5.5,
    )


@pytest.mark.timeout(240)
def test_the_rerun_image_has_the_same_seed_and_steps(found, tmp_path):
    out = tmp_path / "again.png"
    args = ["compose", "--from", found, "--base", "tiny-sd1", "-o", str(out), "--device", "cpu"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    params = Image.open(out).text["parameters"]
    assert params.startswith("a photo of cat-toy, (masterpiece:1.2)\nNegative prompt: blurry\n")
    assert "Steps: 3," in params and "CFG scale: 5.5," in params and "Seed: 1234," in params


def test_an_image_naming_what_the_catalog_lacks_is_refused(
    found, tmp_path, _isolated_home, catalog_snapshot
):
    missing = png_with(
        tmp_path / "missing.png",
        'a photo of missing-thing\nSteps: 3, Seed: 1, TI hashes: "missing-thing: 0123456789ab"',
    )
    before = catalog_snapshot(_isolated_home)
    out = tmp_path / "never.png"
    res = CliRunner().invoke(
        cli, ["compose", "--from", missing, "--base", "tiny-sd1", "-o", str(out)]
    )
    assert res.exit_code == 6, res.output
    assert (
        "error: cannot rerun" in res.output
        and "'missing-thing' is not in the catalog" in res.output
    )
    assert not out.exists()
    assert catalog_snapshot(_isolated_home) == before


def test_a_prompt_or_an_image_is_needed(lib):
    lib.close()
    res = CliRunner().invoke(cli, ["compose", "--base", "tiny-sd1", "--dry-run"])
    assert res.exit_code == 2
    assert "give a PROMPT, or --from IMAGE.png" in res.output

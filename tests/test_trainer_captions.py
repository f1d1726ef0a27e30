"""Per-image captions (issue 14 item 10): reading caption files as untrusted text,
filling templates, the images-hash recipe, the engine's per-image prompts, CLI errors."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner
from compose_support import fresh_base, link_tiny_into_home, tiny_cache_dir

from conceptlib.errors import ImageError, UsageError
from conceptlib.trainer import captions as cap
from conceptlib.trainer.images import training_images_hash
from conceptlib.trainer.loop import TextualInversion
from conceptlib.trainer.samples import write_sample_images
from conceptlib.trainer.templates import load_templates
from conceptlib.trainer.train import train

FAST = {"batch": 2, "sample_every": 0, "sample_steps": 1, "steps": 2, "register": False}


@pytest.fixture
def images(tmp_path):
    write_sample_images(tmp_path / "imgs", 3, size=40)
    return tmp_path / "imgs"


def _paths(folder):
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")


def _side(folder, i, ext=".txt"):
    """The caption file beside the i-th image."""
    return _paths(folder)[i].with_suffix(ext)


# ----------------------------------------------------------------- reading one caption


@pytest.mark.parametrize(
    ("data", "text"),
    [
        (b"\xef\xbb\xbfa red toy\n", "a red toy"),  # UTF-8 byte-order mark dropped
        (b"a toy\r\non\tgrass  \n\n", "a toy on grass"),  # whitespace collapsed
        ("une poupée".encode("utf-16"), "une poupée"),  # UTF-16 with its mark
        (b"", ""),
        (b"  \n ", ""),
    ],
)
def test_caption_text_is_cleaned(data, text):
    assert cap.clean_caption(data, source="x.txt") == text


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"PK\x03\x04\x00\x00binary", "a binary file"),
        (b"caf\xe9 au lait", "not UTF-8 text"),
        (b"red \x1b[31mtoy", "control character U+001B"),
        ("evil \u202etxt.exe".encode(), "control character U+202E"),
        (b"a\x7ftoy", "control character U+007F"),
    ],
)
def test_hostile_captions_are_refused_without_echoing_them(data, fragment, tmp_path):
    path = tmp_path / "0.txt"
    path.write_bytes(data)
    with pytest.raises(ImageError) as err:
        cap.read_caption_file(path)
    assert fragment in err.value.message and str(path) in err.value.message
    assert err.value.exit_code == 3
    assert "toy" not in err.value.message and "lait" not in err.value.message


def test_huge_and_non_file_captions_are_refused(tmp_path):
    big = tmp_path / "big.txt"
    big.write_bytes(b"a " * cap.MAX_CAPTION_BYTES)
    with pytest.raises(ImageError, match="over 16 KiB"):
        cap.read_caption_file(big)
    folder = tmp_path / "dir.txt"
    folder.mkdir()
    with pytest.raises(ImageError, match="not a regular file"):
        cap.read_caption_file(folder)


def test_filename_words_follow_a1111():
    assert cap.filename_words("photos/01-a toy on a table.png") == "a toy on a table"
    assert cap.filename_words("photos/12 red car.jpg") == "red car"
    assert cap.filename_words("photos/toy.png") == "toy"


# ----------------------------------------------------------------- modes


def test_modes_read_files_or_file_names_and_missing_files_are_named(images):
    paths = _paths(images)
    _side(images, 0).write_text("a red toy")
    _side(images, 1).write_bytes(b"")
    assert cap.load_captions(paths, "off") is None
    auto = cap.load_captions(paths, "auto")
    assert auto.texts == ["a red toy", "", "toy-02"]
    assert auto.sources == [str(_side(images, 0)), str(_side(images, 1)), "filename"]
    assert auto.warnings == [
        "1 image(s) have an empty caption; their prompts are the templates alone"
    ]
    assert cap.load_captions(paths, "filename").texts == ["toy-00", "toy-01", "toy-02"]
    with pytest.raises(ImageError) as err:
        cap.load_captions(paths, "txt")
    assert "1 of 3 images have no caption file" in err.value.message
    assert str(_side(images, 2)) in err.value.message
    _side(images, 2, ".caption").write_text("a blue toy")
    with pytest.raises(ImageError, match="2 of 3 images have no caption file"):
        cap.load_captions(paths, "txt", ".caption")
    assert cap.load_captions(paths, "auto", ".caption").texts == ["toy-00", "toy-01", "a blue toy"]


@pytest.mark.parametrize(
    ("mode", "ext", "fragment"),
    [("sidecar", ".txt", "--captions 'sidecar'"), ("txt", "txt", "--caption-extension"),
     ("txt", ".png", "not an image suffix"), ("txt", ".a/b", "--caption-extension")],
)  # fmt: skip
def test_bad_caption_options(mode, ext, fragment):
    with pytest.raises(UsageError) as err:
        cap.check_caption_options(mode, ext)
    assert fragment in err.value.message


# ----------------------------------------------------------------- templates and prompts


def test_filewords_without_captions_is_refused_and_captioned_runs_get_their_template():
    with pytest.raises(UsageError, match=r"template 2 uses \[filewords\] but --captions is off"):
        cap.caption_templates(["a {}", "{}, [filewords]"], "off", given=True)
    assert cap.caption_templates(["a photo of a {}"], "txt", given=False) == ["{}, [filewords]"]
    assert cap.caption_templates(["a {} [filewords]"], "txt", given=True) == ["a {} [filewords]"]


def test_a1111_template_files_use_name_and_filewords(tmp_path):
    f = tmp_path / "subject_filewords.txt"
    f.write_text("a photo of a [name], [filewords]\nart by [name]\n")
    assert load_templates(f) == ["a photo of a {}, [filewords]", "art by {}"]


def test_image_templates_fill_filewords_or_use_a_caption_naming_the_concept():
    caps = cap.Captions(
        texts=["a red toy", "", "my Cat-Toy on {grass}", "[name] at the beach"],
        sources=["0.txt", "1.txt", "2.txt", "3.txt"],
    )
    out = cap.image_templates(["a photo of {}, [filewords]", "[filewords], by {}"], caps, "cat-toy")
    assert out[0] == ["a photo of {}, a red toy", "a red toy, by {}"]
    assert out[1] == ["a photo of {}", "by {}"]  # no dangling comma
    assert out[2] == ["my {} on {{grass}}"] * 2  # the caption is the prompt; braces kept
    assert out[3] == ["{} at the beach"] * 2
    assert out[2][0].format("<p>") == "my <p> on {grass}"


def test_image_templates_refusals():
    twice = cap.Captions(texts=["cat-toy and cat-toy"], sources=["0.txt"])
    with pytest.raises(ImageError, match="names the concept 2 times"):
        cap.image_templates(["{}, [filewords]"], twice, "cat-toy")
    plain = cap.Captions(texts=["a toy"], sources=["0.txt"])
    with pytest.raises(UsageError, match="the caption would be unused"):
        cap.image_templates(["a photo of {}"], plain, "cat-toy")
    # "cat-toys" is another word, not the trigger
    other = cap.Captions(texts=["two cat-toys"], sources=["0.txt"])
    assert cap.image_templates(["{}, [filewords]"], other, "cat-toy") == [["{}, two cat-toys"]]


def test_prompt_length_check_warns_on_cut_and_refuses_a_hidden_placeholder():
    from conceptlib.models.base import base_tokenizers

    toks = base_tokenizers("tiny-sd1", cache_dir=tiny_cache_dir())
    long = " ".join(["red"] * 90)
    assert cap.check_prompt_lengths([["{}, a toy"]], ["0.png"], toks, 1) == []
    notes = cap.check_prompt_lengths([["{}, " + long]], ["0.png"], toks, 1)
    assert notes == ["warning: 1 captioned prompt(s) are longer than 77 tokens; their end is cut"]
    with pytest.raises(UsageError, match="the prompt of 0.png is too long for the clip_l"):
        cap.check_prompt_lengths([[long + ", {}"]], ["0.png"], toks, 1)


# ----------------------------------------------------------------- the images hash


def test_hash_recipe_counts_captions_and_keeps_the_old_hash_without_them():
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    old = hashlib.sha256("\n".join(sorted([a, b])).encode()).hexdigest()
    assert training_images_hash([a, b]) == old
    assert training_images_hash([b, a], None) == old
    lines = sorted(f"{d} {hashlib.sha256(c.encode()).hexdigest()}"
                   for d, c in ((a, "a red toy"), (b, "")))  # fmt: skip
    want = hashlib.sha256("\n".join(["conceptlib-captioned-images/1", *lines]).encode()).hexdigest()
    assert training_images_hash([a, b], ["a red toy", ""]) == want
    assert training_images_hash([b, a], ["", "a red toy"]) == want  # order does not matter
    assert training_images_hash([a, b], ["a blue toy", ""]) != want
    assert training_images_hash([a, b], ["", ""]) != old  # captioned, even when empty


# ----------------------------------------------------------------- the engine


def test_engine_gives_each_image_its_own_prompts():
    import numpy as np

    base = fresh_base("tiny-sd1")
    per_image = [["a {} on grass", "{} by the sea"], ["a red {}", "a red {}"]]
    pixels = np.zeros((2, 3, 32, 32), np.float32)
    ti = TextualInversion(base, pixels, ["{}, [filewords]"], name="cap-thing", init="toy",
                          image_templates=per_image, batch=8, total_steps=1)  # fmt: skip
    try:
        assert ti.templates == per_image[0]  # previews use the first image's prompts
        d = ti._draw(torch.Generator().manual_seed(0), 8)
        _, _, _, ids = ti._source(d)
        for row, i, t in zip(ids[0].tolist(), d["idx"].tolist(), d["tmpl"].tolist(), strict=True):
            text = per_image[i % 2][t].format(ti.placeholder_text)
            assert row == ti._tokenize(base.slots[0], [text])[0].tolist(), (i, t)
        assert len({i % 2 for i in d["idx"].tolist()}) == 2  # both images (and mirrors) drawn
    finally:
        ti.close()


# ----------------------------------------------------------------- train() and the CLI


def test_train_records_captions_and_notes_unused_caption_files(images, tmp_path):
    for i, text in enumerate(["a red toy", "a cap-thing on grass", "a blue toy"]):
        _side(images, i).write_text(text)
    lines = []
    plain = train([images], name="cap-thing", init="toy", run_dir=tmp_path / "a", log=lines.append,
                  cache_dir=tiny_cache_dir(), **FAST)  # fmt: skip
    assert plain.config["captions"] == "off"
    assert any("3 of 3 images have a .txt caption file" in line for line in lines)
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in _paths(images)]
    assert plain.config["training_images_hash"] == training_images_hash(digests)
    got = train([images], name="cap-thing", init="toy", run_dir=tmp_path / "b", captions="txt",
                cache_dir=tiny_cache_dir(), **FAST)  # fmt: skip
    assert (got.config["captions"], got.config["caption_extension"]) == ("txt", ".txt")
    assert got.config["training_images_hash"] == training_images_hash(
        digests, ["a red toy", "a cap-thing on grass", "a blue toy"]
    )


def _cli(args):
    from conceptlib.cli.main import cli

    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize(
    ("extra", "setup", "code", "fragment"),
    [
        (["--captions", "txt"], None, 3, "3 of 3 images have no caption file"),
        (["--captions", "txt"], "binary", 3, "a binary file; expected a UTF-8 text caption"),
        (["--templates", "TPL"], None, 2, "uses [filewords] but --captions is off"),
        (["--captions", "txt", "--templates", "object"], "plain", 2, "caption would be unused"),
        (["--caption-extension", ".png", "--captions", "txt"], None, 2, "not an image suffix"),
    ],
)
def test_cli_caption_errors_fail_before_the_model_loads(
    extra, setup, code, fragment, images, tmp_path, _isolated_home, catalog_snapshot, monkeypatch
):
    from conceptlib.models import base as base_mod

    def no_load(*a, **k):
        raise AssertionError("the base model must not load")

    monkeypatch.setattr(base_mod, "load_base", no_load)
    link_tiny_into_home(_isolated_home)
    if setup == "binary":
        for i in range(3):
            _side(images, i).write_bytes(b"\x00\x01")
    elif setup == "plain":
        for i in range(3):
            _side(images, i).write_text("a toy")
    tpl = tmp_path / "tpl.txt"
    tpl.write_text("a photo of {}, [filewords]\n")
    extra = [str(tpl) if e == "TPL" else e for e in extra]
    before = catalog_snapshot(_isolated_home)
    out = _cli(["train", str(images), "--name", "cap-thing", "--init", "toy", *extra])
    assert out.exit_code == code, out.output
    first = out.output.strip().splitlines()[0]
    assert first.startswith("error: ") and fragment in out.output, out.output
    assert catalog_snapshot(_isolated_home) == before
    assert not (_isolated_home / "runs" / "cap-thing").exists()


def test_cli_captions_are_recorded(images, _isolated_home):
    link_tiny_into_home(_isolated_home)
    _side(images, 0).write_text("a red toy")
    out = _cli(["train", str(images), "--name", "cap-thing", "--init", "toy", "--steps", "1",
                "--batch", "1", "--sample-every", "0", "--captions", "auto", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    cfg = json.loads(out.output)["config"]
    assert (cfg["captions"], cfg["caption_extension"]) == ("auto", ".txt")

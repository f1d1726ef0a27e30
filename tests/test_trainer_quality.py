"""CLIP-I / CLIP-T of a run's validation images (``train --clip-model``), stored with
the run and its kept steps, shown by ``show``, drawn on the loss plot and sorted by
``search --sort``. The CLIP model is tiny and random, built from config: its numbers
mean nothing, the plumbing is what is tested."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from compose_support import tiny_cache_dir
from PIL import Image

from conceptlib.cli.main import cli
from conceptlib.registry.library import Library
from conceptlib.registry.samples import sample_embedding
from conceptlib.schemas.records import TrainingRunRecord
from conceptlib.trainer.quality import ClipScorer, resolve_clip_model
from conceptlib.trainer.report import loss_curve_png
from conceptlib.trainer.samples import write_sample_images
from conceptlib.trainer.steps import register_step, step_path
from conceptlib.trainer.train import train


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A CLIPModel with 2-layer, 32-wide towers, its tokenizer (the tiny models') and a
    32 px image processor, saved as a CLIP folder is."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    from conceptlib.models.tiny import build_vocab

    vocab, merges = build_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=list(merges), pad_token="<|endoftext|>",
                        model_max_length=77)  # fmt: skip
    tower = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=len(vocab), max_position_embeddings=77,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                           crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    ).save_pretrained(folder)  # fmt: skip
    return folder


@pytest.fixture
def images(tmp_path):
    return write_sample_images(tmp_path / "imgs", 3, size=48)[0].parent


def test_scores_are_the_cosines_clip_itself_gives(tiny_clip, images):
    from transformers import CLIPModel, CLIPProcessor

    train_imgs = [Image.open(p).convert("RGB") for p in sorted(images.iterdir())]
    gen = [im.rotate(90) for im in train_imgs[:2]]
    prompts = ["a photo of {} on a beach", "a red {}"]
    scores = ClipScorer(resolve_clip_model(tiny_clip), device="cpu", reference=train_imgs).score(
        gen, prompts
    )
    # The same numbers from CLIP's own forward pass: logits are cosines x logit scale.
    model = CLIPModel.from_pretrained(tiny_clip).eval()
    proc = CLIPProcessor.from_pretrained(tiny_clip)
    with torch.no_grad():
        out = model(**proc(text=["a photo of on a beach", "a red"], images=gen,
                           return_tensors="pt", padding=True))  # fmt: skip
        per_text = out.logits_per_image / model.logit_scale.exp()
        i_out = model(**proc(text=["x"], images=gen + train_imgs, return_tensors="pt"))
    emb = torch.nn.functional.normalize(i_out.image_embeds, dim=-1)
    expected_i = float((emb[:2] @ emb[2:].T).mean())
    assert scores["clip_t"] == pytest.approx(float(per_text.diagonal().mean()), abs=1e-5)
    assert scores["clip_i"] == pytest.approx(expected_i, abs=1e-5)


def test_run_stores_clip_scores_per_step_and_shows_them(tiny_clip, images, _isolated_home):
    with Library.open() as lib:
        result = train(
            [images], name="clip-toy", init="toy", steps=4, batch=2, sample_every=0,
            sample_steps=1, checkpoint_every=0, save_every=2, cache_dir=tiny_cache_dir(),
            library=lib, clip_model=str(tiny_clip), tensorboard=False,
        )  # fmt: skip
        (run,) = lib.get("clip-toy").training_runs
    steps = [q["step"] for q in result.quality]
    assert steps == [2, 4]
    for q in result.quality:
        assert -1 <= q["clip_i"] <= 1 and -1 <= q["clip_t"] <= 1
    last = result.quality[-1]
    assert (run.clip_i, run.clip_t) == (last["clip_i"], last["clip_t"])
    assert run.metrics == {"quality": result.quality}
    assert run.config["clip_model"] == str(tiny_clip)
    for q in result.quality:  # each kept step's JSON holds its own scores
        sidecar = json.loads(step_path(result.run_dir, "clip-toy", q["step"]).with_suffix(".json")
                             .read_text())  # fmt: skip
        assert (sidecar["clip_i"], sidecar["clip_t"]) == (q["clip_i"], q["clip_t"])
    runner = CliRunner()
    out = runner.invoke(cli, ["show", "clip-toy"])
    assert out.exit_code == 0, out.output
    assert f"{last['clip_i']:.4f} / {last['clip_t']:.4f}" in out.output
    assert f"2: {result.quality[0]['clip_i']:.3f}" in out.output
    shown = json.loads(runner.invoke(cli, ["show", "clip-toy", "--json"]).output)
    assert shown["training_runs"][0]["clip_i"] == last["clip_i"]
    # A kept step registered later carries its own scores.
    info = register_step("clip-toy", 2)
    assert info.training_runs[0].clip_i == result.quality[0]["clip_i"]


def test_loss_plot_draws_the_scores_on_a_second_axis():
    losses = list(np.linspace(0.5, 0.1, 40))
    plain = Image.open(io.BytesIO(loss_curve_png(losses)))
    quality = [{"step": 20, "clip_i": 0.6, "clip_t": 0.2},
               {"step": 40, "clip_i": 0.7, "clip_t": 0.25}]  # fmt: skip
    drawn = Image.open(io.BytesIO(loss_curve_png(losses, quality=quality)))
    colours = {c for _, c in drawn.getcolors(1 << 20)}
    assert (30, 130, 60) in colours and (120, 60, 170) in colours  # CLIP-I, CLIP-T markers
    assert (30, 130, 60) not in {c for _, c in plain.getcolors(1 << 20)}


def _add_scored(lib, name, seed, clip_i, clip_t):
    runs = [] if clip_i is None else [TrainingRunRecord(config={}, steps=1, clip_i=clip_i,
                                                        clip_t=clip_t)]  # fmt: skip
    lib.add_embedding(sample_embedding("sd1", 1, seed), name=name, training_runs=runs)


def test_search_sorts_by_clip_scores_best_first():
    with Library.open() as lib:
        _add_scored(lib, "b-mid", 1, 0.5, 0.9)
        _add_scored(lib, "a-none", 2, None, None)
        _add_scored(lib, "c-top", 3, 0.8, 0.1)
        _add_scored(lib, "d-low", 4, 0.2, 0.5)
    runner = CliRunner()

    def order(*args):
        out = runner.invoke(cli, ["search", *args, "--json"])
        assert out.exit_code == 0, out.output
        return [e["name"] for e in json.loads(out.output)]

    assert order("--sort", "clip-i") == ["c-top", "b-mid", "d-low", "a-none"]
    assert order("--sort", "clip-t") == ["b-mid", "d-low", "c-top", "a-none"]
    assert order("--sort", "clip-i", "--limit", "2") == ["c-top", "b-mid"]
    assert order() == ["a-none", "b-mid", "c-top", "d-low"]


def test_catalog_at_version_4_upgrades_with_its_training_runs(tmp_path):
    from conceptlib.catalog import migrations
    from conceptlib.catalog.db import Catalog
    from conceptlib.config import load_settings

    home = tmp_path / "old-home"
    with Library.open(home) as lib:
        lib.add_embedding(sample_embedding("sd1", 1, 9), name="old-toy",
                          training_run=TrainingRunRecord(config={"lr": 0.1}, steps=7))  # fmt: skip
    cat = Catalog(load_settings(home).url)
    with cat.connection() as conn:  # back to version 4: what an older conceptlib left
        for index in ("ix_training_run_embedding_clip_i", "ix_training_run_embedding_clip_t"):
            conn.exec_driver_sql(f"DROP INDEX {index}")
        for column in ("clip_i", "clip_t", "metrics"):
            conn.exec_driver_sql(f"ALTER TABLE training_run DROP COLUMN {column}")
        conn.exec_driver_sql("DROP INDEX ix_embedding_tag_tag_id_embedding_id")  # 6, too
        conn.exec_driver_sql("CREATE INDEX ix_embedding_tag_tag_id ON embedding_tag (tag_id)")
        conn.exec_driver_sql("DELETE FROM schema_migrations WHERE version >= 5")
    assert cat.schema_version() == 4
    cat.dispose()
    with Library.open(home) as lib:
        assert lib.catalog.schema_version() == migrations.LATEST == 6
        (run,) = lib.get("old-toy").training_runs
        assert (run.steps, run.config, run.clip_i, run.metrics) == (7, {"lr": 0.1}, None, {})
        _add_scored(lib, "new-toy", 10, 0.3, 0.3)
    out = CliRunner().invoke(cli, ["search", "--sort", "clip-i", "--json"],
                             env={"CONCEPTLIB_HOME": str(home)})  # fmt: skip
    assert [e["name"] for e in json.loads(out.output)] == ["new-toy", "old-toy"]


def test_bad_clip_model_fails_before_loading_and_changes_nothing(
    images, tmp_path, _isolated_home, catalog_snapshot
):
    not_clip = tmp_path / "not-clip"
    not_clip.mkdir()
    (not_clip / "config.json").write_text('{"model_type": "bert"}')
    before = catalog_snapshot(_isolated_home)
    runner = CliRunner()
    base = ["train", str(images), "--name", "clip-toy", "--init", "toy", "--steps", "2",
            "--base", "./no-such-base"]  # fmt: skip
    for ref, message in (
        (str(tmp_path / "missing"), "not a folder of a CLIP model or a repo id"),
        (str(not_clip), "is not the config of a CLIP model"),
        ("someone/clip-not-cached", "not a local folder or a repo in the local Hugging Face"),
    ):
        out = runner.invoke(cli, [*base, "--clip-model", ref])
        assert out.exit_code == 2, (ref, out.output)
        assert message in " ".join(out.output.split()), (ref, out.output)
    assert catalog_snapshot(_isolated_home) == before
    assert not (_isolated_home / "runs").exists()


def test_a_scored_run_travels_in_the_hub_manifest():
    """``concept.json`` carries a run's scores and a pull reads them back (its schema
    forbids unknown keys: without the fields there, no trained entry could be pushed)."""
    from conceptlib.registry.hub.fetch import _training_runs
    from conceptlib.registry.hub.manifest import build_manifest

    with Library.open() as lib:
        _add_scored(lib, "hub-toy", 11, 0.42, 0.21)
        manifest, _ = build_manifest(lib, lib.get("hub-toy"))
    (run,) = manifest.training_runs
    assert (run.clip_i, run.clip_t) == (0.42, 0.21)
    (record,) = _training_runs(manifest)
    assert (record.clip_i, record.clip_t, record.metrics) == (0.42, 0.21, {})

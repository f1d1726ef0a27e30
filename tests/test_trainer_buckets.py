"""Aspect-ratio buckets (issue 14 item 12): bucket sizes and assignment, the resize and
its SDXL size/crop ids, one bucket per batch, exact resume, options and CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from compose_support import fresh_base, link_tiny_into_home, tiny_cache_dir
from PIL import Image

from conceptlib.errors import UsageError
from conceptlib.trainer import buckets as bk
from conceptlib.trainer.checkpoint import load_checkpoint
from conceptlib.trainer.loop import TextualInversion
from conceptlib.trainer.samples import sample_images
from conceptlib.trainer.train import train

FAST = {"batch": 2, "sample_every": 0, "sample_steps": 1, "register": False}
TINY = bk.resolve_buckets(32)


def _odd_images() -> list[Image.Image]:
    """Wide (about 2:1), tall (1:2), square, and wide again."""
    src = sample_images(4, size=128)
    sizes = [(101, 50), (40, 80), (64, 64), (90, 45)]
    return [im.resize(s) for im, s in zip(src, sizes, strict=True)]


@pytest.fixture
def odd_folder(tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    for i, im in enumerate(_odd_images()):
        im.save(folder / f"{i}.png")
    return folder


# ----------------------------------------------------------------- sizes and assignment


def test_defaults_follow_the_resolution():
    assert bk.BucketSettings(8, 16, 64, False) == TINY
    assert bk.resolve_buckets(512) == bk.BucketSettings(64, 256, 1024, False)
    assert bk.resolve_buckets(1024) == bk.BucketSettings(64, 512, 2048, False)


def test_bucket_sizes_keep_the_area_and_the_step():
    sizes = bk.bucket_sizes(32, TINY)
    assert sizes == [(16, 64), (16, 56), (16, 48), (24, 40), (32, 32), (40, 24), (48, 16),
                     (56, 16), (64, 16)]  # fmt: skip
    assert all(w * h <= 32 * 32 and w % 8 == 0 == h % 8 for w, h in sizes)
    sd15 = bk.bucket_sizes(512, bk.resolve_buckets(512))
    assert (512, 512) in sd15 and (640, 384) in sd15 and (384, 640) in sd15
    assert (768, 320) in sd15 and (1024, 256) in sd15


@pytest.mark.parametrize(
    ("size", "bucket"),
    [((101, 50), (40, 24)), ((40, 80), (24, 40)), ((64, 64), (32, 32)), ((300, 100), (48, 16)),
     ((1000, 10), (64, 16)), ((33, 31), (32, 32))],
)  # fmt: skip
def test_each_image_goes_to_the_nearest_aspect_ratio(size, bucket):
    assert bk.assign_bucket(*size, 32, TINY) == bucket


def test_no_upscale_keeps_small_images_small():
    s = bk.resolve_buckets(32, no_upscale=True)
    assert bk.assign_bucket(20, 12, 32, s) == (16, 8)
    assert bk.assign_bucket(5, 30, 32, s) == (8, 24)
    # larger than the area: shrunk to it (45.3 x 22.6), then rounded down
    assert bk.assign_bucket(200, 100, 32, s) == (40, 16)
    assert bk.assign_bucket(2048, 1024, 1024, bk.resolve_buckets(1024, no_upscale=True)) == (
        1408,
        704,
    )


def test_geometry_covers_the_bucket_and_crops_only_the_remainder():
    geo, resized = bk.bucket_geometry(101, 50, (40, 24))
    # scale max(40/101, 24/50) = 0.48: 48 x 24, 8 px too wide, 4 cut on each side
    assert resized == (48, 24)
    assert geo.time_ids(32) == [50, 101, 0, 4, 24, 40]
    assert geo.time_ids(32, flipped=True) == [50, 101, 0, 4, 24, 40]
    geo, resized = bk.bucket_geometry(40, 80, (24, 40))
    assert resized == (24, 48)
    assert geo.time_ids(32) == [80, 40, 4, 0, 40, 24]
    geo, resized = bk.bucket_geometry(90, 45, (40, 24))  # 48 x 24 again; odd remainder
    assert geo.time_ids(32) == [45, 90, 0, 4, 24, 40]
    geo, resized = bk.bucket_geometry(102, 50, (40, 24))  # 49 x 24: 9 to cut
    assert (resized, geo.left, geo.flipped_left) == ((49, 24), 4, 5)


def test_pixels_are_grouped_by_bucket():
    groups = bk.to_bucket_pixels(_odd_images(), 32, TINY)
    assert [(g.size, g.images) for g in groups] == [((24, 40), [1]), ((32, 32), [2]),
                                                    ((40, 24), [0, 3])]  # fmt: skip
    assert groups[2].pixels.shape == (2, 3, 24, 40)
    assert groups[0].pixels.shape == (1, 3, 40, 24)
    assert float(groups[2].pixels.min()) >= -1.0 and float(groups[2].pixels.max()) <= 1.0
    assert bk.bucket_counts(groups) == {"24x40": 1, "32x32": 1, "40x24": 2}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"reso_steps": 12}, "--bucket-reso-steps 12: expected a positive multiple of 8"),
        ({"min_reso": 20}, "--min-bucket-reso 20: expected a multiple of --bucket-reso-steps"),
        ({"min_reso": 40}, "expected the resolution (32) between them"),
        ({"max_reso": 24}, "expected the resolution (32) between them"),
    ],
)
def test_bad_bucket_options(kwargs, fragment):
    with pytest.raises(UsageError) as err:
        bk.resolve_buckets(32, **kwargs)
    assert fragment in err.value.message
    with pytest.raises(UsageError, match="--bucket-no-upscale needs --buckets"):
        bk.check_bucket_options(False, None, None, None, True, None)


# ----------------------------------------------------------------- the engine


def _engine(base, images, **kw):
    return TextualInversion(base, bk.to_bucket_pixels(images, 32, TINY), ["a photo of {}"],
                            name="bucket-thing", init="toy", batch=3, total_steps=8, **kw)  # fmt: skip


def test_sdxl_gets_each_samples_bucket_ids_and_every_batch_is_one_bucket():
    imgs = _odd_images()
    ti = _engine(fresh_base("tiny-sdxl"), imgs)
    try:
        assert [b.mean.shape[-2:] for b in ti.buckets] == [(10, 6), (8, 8), (6, 10)]
        wide = ti.buckets[2]
        assert wide.time_ids.tolist() == [
            [50, 101, 0, 4, 24, 40], [45, 90, 0, 4, 24, 40],  # the images
            [50, 101, 0, 4, 24, 40], [45, 90, 0, 4, 24, 40],  # their mirrors
        ]  # fmt: skip
        assert ti.buckets[0].time_ids.tolist() == [[80, 40, 4, 0, 40, 24]] * 2
        assert wide.image.tolist() == [0, 3, 0, 3]
        seen = []
        real = ti.unet_fn

        def spy(noisy, t, **kw):
            seen.append((tuple(noisy.shape), kw["added_cond_kwargs"]["time_ids"].clone()))
            return real(noisy, t, **kw)

        ti.unet_fn = spy
        drawn = set()
        for _ in range(6):
            d = ti._draw(ti.generator, 3)
            ti._loss(d)
            b = ti.buckets[d["bucket"]]
            shape, time_ids = seen[-1]
            assert shape == (3, *b.mean.shape[1:])  # one bucket, one static shape
            assert torch.equal(time_ids.float(), b.time_ids[d["idx"]])
            drawn.add(d["bucket"])
        assert len(drawn) > 1
    finally:
        ti.close()


def test_bucket_draws_are_weighted_by_image_count_and_seeded():
    weights = torch.tensor([1.0, 1.0, 2.0])
    picks = [bk.pick_bucket(weights, torch.Generator().manual_seed(0)) for _ in range(3)]
    assert len(set(picks)) == 1  # same seed, same bucket
    g = torch.Generator().manual_seed(5)
    counts = np.bincount([bk.pick_bucket(weights, g) for _ in range(400)], minlength=3)
    assert counts.sum() == 400 and 150 < counts[2] < 250 and counts[0] > 50 and counts[1] > 50


# ----------------------------------------------------------------- train() and the CLI


def test_train_with_buckets_records_them_and_resume_is_exact(odd_folder, tmp_path):
    from conceptlib.trainer.checkpoint import CHECKPOINT_NAME

    class Stop(Exception):
        pass

    def kill_at_2(p):
        if p.phase == "train" and p.step == 2:
            raise Stop

    common = dict(name="bucket-thing", init="toy", steps=3, checkpoint_every=1, buckets=True,
                  cache_dir=tiny_cache_dir(), seed=4, **FAST)  # fmt: skip
    straight = train([odd_folder], run_dir=tmp_path / "a", **common)
    cfg = straight.config
    assert cfg["buckets"] is True
    assert (cfg["bucket_reso_steps"], cfg["min_bucket_reso"], cfg["max_bucket_reso"]) == (8, 16, 64)
    assert cfg["bucket_counts"] == {"24x40": 1, "32x32": 1, "40x24": 2}
    run = tmp_path / "b"
    with pytest.raises(Stop):
        train([odd_folder], run_dir=run, progress=kill_at_2, **common)
    state, _ = load_checkpoint(run / CHECKPOINT_NAME)
    assert "bucket_generator" in state
    with pytest.raises(Exception, match="buckets: checkpoint True, now False"):
        train([odd_folder], run_dir=run, resume=True, **dict(common, buckets=False))
    with pytest.raises(Exception, match="max_bucket_reso: checkpoint 64, now 48"):
        train([odd_folder], run_dir=run, resume=True, **dict(common, max_bucket_reso=48))
    resumed = train([odd_folder], run_dir=run, resume=True, **common)
    assert resumed.resumed_from in (1, 2)
    for slot, vec in straight.embedding.vectors.items():
        np.testing.assert_array_equal(resumed.embedding.vectors[slot], vec)


def _cli(args):
    from conceptlib.cli.main import cli

    return CliRunner().invoke(cli, args)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--bucket-no-upscale"], "--bucket-no-upscale needs --buckets"),
        (["--min-bucket-reso", "16"], "--min-bucket-reso needs --buckets"),
        (["--buckets", "--bucket-reso-steps", "12"], "expected a positive multiple of 8"),
        (["--buckets", "--resolution", "32", "--min-bucket-reso", "48"], "between them"),
    ],
)
def test_cli_bucket_errors_fail_before_the_model_loads(
    extra, fragment, odd_folder, _isolated_home, catalog_snapshot, monkeypatch
):
    from conceptlib.models import base as base_mod

    def no_load(*a, **k):
        raise AssertionError("the base model must not load")

    monkeypatch.setattr(base_mod, "load_base", no_load)
    before = catalog_snapshot(_isolated_home)
    out = _cli(["train", str(odd_folder), "--name", "bucket-thing", "--init", "toy", *extra])
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines()[0].startswith("error: ")
    assert fragment in out.output
    assert catalog_snapshot(_isolated_home) == before
    assert not (_isolated_home / "runs" / "bucket-thing").exists()


def test_cli_buckets_are_recorded(odd_folder, _isolated_home):
    link_tiny_into_home(_isolated_home)
    out = _cli(["train", str(odd_folder), "--name", "bucket-thing", "--init", "toy", "--steps",
                "1", "--batch", "1", "--sample-every", "0", "--buckets", "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    cfg = json.loads(out.output)["config"]
    assert cfg["buckets"] is True and cfg["bucket_counts"]["40x24"] == 2

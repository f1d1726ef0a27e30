"""Trainer options for real users: SDXL size/crop conditioning, prediction type and zero
terminal SNR, CLIP skip, learning-rate schedules, SDXL preview negatives, CLI options."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from compose_support import fresh_base, link_tiny_into_home, tiny_cache_dir, tiny_folder
from PIL import Image

from conceptlib.errors import UsageError
from conceptlib.registry.library import Library
from conceptlib.trainer import loop
from conceptlib.trainer.images import crop_geometry, to_pixels
from conceptlib.trainer.loop import TextualInversion
from conceptlib.trainer.samples import sample_images, write_sample_images
from conceptlib.trainer.schedule import build_schedule, halved, parse_lr
from conceptlib.trainer.train import train

FAST = {"batch": 2, "sample_every": 0, "sample_steps": 1}


@pytest.fixture
def images(tmp_path):
    write_sample_images(tmp_path / "imgs", 3, size=48)
    return tmp_path / "imgs"


def _odd_images() -> list[Image.Image]:
    """Three images of different shapes: wide with an odd margin, tall, square."""
    src = sample_images(3, size=128)
    return [src[0].resize((101, 50)), src[1].resize((40, 80)), src[2].resize((64, 64))]


# ----------------------------------------------------------------- 1. SDXL size/crop ids


def test_crop_geometry_keeps_original_size_and_crop_corner_per_image_and_mirror():
    geo = crop_geometry(_odd_images(), 32)
    # 101x50 -> resized 65x32 (scale 0.64); crop left floor(51/2)=25 -> 16; mirrored 65-16-32
    assert geo[0].time_ids(32) == [50, 101, 0, 16, 32, 32]
    assert geo[0].time_ids(32, flipped=True) == [50, 101, 0, 17, 32, 32]
    # 40x80 -> 32x64: crop top 20 -> 16, no horizontal margin
    assert geo[1].time_ids(32) == [80, 40, 16, 0, 32, 32]
    assert geo[1].time_ids(32, flipped=True) == [80, 40, 16, 0, 32, 32]
    assert geo[2].time_ids(32) == geo[2].time_ids(32, flipped=True) == [64, 64, 0, 0, 32, 32]


def test_sdxl_unet_gets_each_latents_own_time_ids(monkeypatch):
    imgs = _odd_images()
    base = fresh_base("tiny-sdxl")
    ti = TextualInversion(base, to_pixels(imgs, 32), ["a photo of {}"], name="geo-thing",
                          init="toy", batch=6, geometry=crop_geometry(imgs, 32))  # fmt: skip
    try:
        expected = [g.time_ids(32) for g in crop_geometry(imgs, 32)]
        expected += [g.time_ids(32, flipped=True) for g in crop_geometry(imgs, 32)]
        assert ti.add_time_ids.tolist() == expected
        seen = {}
        real = ti.unet_fn

        def spy(noisy, t, **kw):
            seen["time_ids"] = kw["added_cond_kwargs"]["time_ids"].clone()
            return real(noisy, t, **kw)

        ti.unet_fn = spy
        d = ti._draw(torch.Generator().manual_seed(3), 6)
        ti._loss(d)
        want = torch.tensor([expected[i] for i in d["idx"].tolist()], dtype=torch.float32)
        assert torch.equal(seen["time_ids"].float(), want)
    finally:
        ti.close()


# ----------------------------------------------------------------- 2. prediction type, ZTSNR


def _capture_target(monkeypatch):
    got = {}

    def fake(pred, target, *, step):
        got["target"] = target.detach().clone()
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    monkeypatch.setattr(loop, "compute_loss", fake)
    return got


def test_forced_v_prediction_and_zero_terminal_snr_change_the_target_and_schedule(monkeypatch):
    from diffusers import DDPMScheduler
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    base = fresh_base("tiny-sd1")
    original = base.pipeline.scheduler
    assert original.config.prediction_type == "epsilon"
    got = _capture_target(monkeypatch)
    ti = TextualInversion(base, to_pixels(sample_images(3, size=48), 32), ["a {}"],
                          name="vpred-thing", init="toy", batch=2,
                          prediction_type="v_prediction", zero_terminal_snr=True)  # fmt: skip
    try:
        assert ti.prediction_type == "v_prediction"
        betas = DDPMScheduler.from_config(original.config).betas
        want = torch.cumprod(1.0 - rescale_zero_terminal_snr(betas), dim=0)
        torch.testing.assert_close(ti.alphas_cumprod, want.float())
        assert float(ti.alphas_cumprod[-1]) == 0.0
        # the sample images denoise with the same target and schedule
        sched = base.pipeline.scheduler.config
        assert sched.prediction_type == "v_prediction" and sched.rescale_betas_zero_snr
        d = ti._draw(torch.Generator().manual_seed(0), 2)
        ti._loss(d)
        z = ti.mean[d["idx"]] + ti.std[d["idx"]] * d["eps"]
        ab = ti.alphas_cumprod[d["t"]].view(-1, 1, 1, 1)
        torch.testing.assert_close(got["target"], ab.sqrt() * d["noise"] - (1 - ab).sqrt() * z)
    finally:
        ti.close()
    assert base.pipeline.scheduler is original


def test_single_file_v_pred_marker_warns_and_the_forced_type_is_recorded(images, tmp_path):
    from ldm_layout import ldm_state_dict
    from safetensors.torch import save_file

    from conceptlib.models.base import load_base
    from conceptlib.models.single_file import single_file_markers

    ckpt = tmp_path / "vpred-finetune.safetensors"
    tensors = ldm_state_dict(load_base(tiny_folder("tiny-sd1")).pipeline)
    tensors["v_pred"] = torch.zeros(0)
    tensors["ztsnr"] = torch.zeros(0)
    save_file(tensors, str(ckpt))
    assert single_file_markers(ckpt) == {"v_pred": True, "ztsnr": True}
    common = dict(name="vpred-thing", init="toy", steps=1, register=False, base=str(ckpt),
                  base_config=str(tiny_folder("tiny-sd1")), **FAST)  # fmt: skip
    lines: list[str] = []
    plain = train([images], run_dir=tmp_path / "a", log=lines.append, **common)
    assert plain.config["prediction_type"] == "epsilon"
    assert plain.config["base_markers"] == {"v_pred": True, "ztsnr": True}
    warned = [x for x in lines if x.startswith("warning:")]
    assert any("v_pred marker" in x and "--prediction-type v_prediction" in x for x in warned)
    assert any("ztsnr marker" in x and "--zero-terminal-snr" in x for x in warned)
    lines.clear()
    forced = train([images], run_dir=tmp_path / "b", log=lines.append,
                   prediction_type="v_prediction", zero_terminal_snr=True, **common)  # fmt: skip
    assert forced.config["prediction_type"] == "v_prediction"
    assert forced.config["zero_terminal_snr"] is True
    assert not [x for x in lines if x.startswith("warning:")]


# ----------------------------------------------------------------- 3. CLIP skip


def test_clip_skip_reads_an_earlier_layer_through_the_final_norm():
    base = fresh_base("tiny-sd1")
    px = to_pixels(sample_images(3, size=48), 32)
    ti = TextualInversion(base, px, ["a {}"], name="skip-thing", init="toy", clip_skip=2)
    try:
        ids = ti.template_ids
        enc = base.slots[0].encoder
        with torch.no_grad():
            got, _ = ti.encode_prompts(ids)
            hidden = enc(ids[0], output_hidden_states=True).hidden_states
            want = getattr(enc, "text_model", enc).final_layer_norm(hidden[-2])
            last = enc(ids[0]).last_hidden_state
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, last)
    finally:
        ti.close()
    with pytest.raises(UsageError, match=r"--clip-skip 3: .* allows 1 to 2"):
        TextualInversion(base, px, ["a {}"], name="skip-thing", init="toy", clip_skip=3)
    with pytest.raises(UsageError, match=r"--clip-skip 2: .*sdxl\) allows 1 to 1"):
        TextualInversion(fresh_base("tiny-sdxl"), px, ["a {}"], name="skip-thing",
                         init="toy", clip_skip=2)  # fmt: skip


# ----------------------------------------------------------------- 6. SDXL preview negatives


def test_sdxl_previews_use_zeros_for_the_empty_negative(monkeypatch):
    base = fresh_base("tiny-sdxl")
    calls = []

    class Out:
        images = [None]

    monkeypatch.setattr(type(base.pipeline), "__call__", lambda self, **kw: calls.append(kw) or Out)
    ti = TextualInversion(base, to_pixels(sample_images(3, size=48), 32), ["a {}"],
                          name="neg-thing", init="toy")  # fmt: skip
    try:
        ti.generate(["a {}"], steps=1)
        (kw,) = calls
        assert not kw["negative_prompt_embeds"].any()
        assert not kw["negative_pooled_prompt_embeds"].any()
        assert kw["prompt_embeds"].any()
        calls.clear()
        ti.generate(["a {}"], steps=1, negative="blurry")
        assert calls[0]["negative_prompt_embeds"].any()
    finally:
        ti.close()


# ----------------------------------------------------------------- 11. learning-rate schedules


def test_lr_schedules_give_the_right_rate_per_step():
    const = build_schedule(0.01, steps=10)
    assert [const.rate(k) for k in (1, 10)] == [0.01, 0.01]
    warm = build_schedule(0.01, kind="constant_with_warmup", warmup_steps=4, steps=10)
    assert [warm.rate(k) for k in range(1, 7)] == pytest.approx(
        [0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01]
    )
    cos = build_schedule(0.01, kind="cosine", warmup_steps=2, steps=10)
    assert cos.rate(1) == pytest.approx(0.005) and cos.rate(3) == pytest.approx(0.01)
    assert cos.rate(7) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert cos.rate(10) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    a1111 = build_schedule("0.05:10, 0.02:20, 0.005:200", steps=200)
    assert [a1111.rate(k) for k in (1, 10, 11, 20, 21, 200)] == [
        0.05, 0.05, 0.02, 0.02, 0.005, 0.005,
    ]  # fmt: skip
    assert parse_lr("0.05:10, 0.001") == ((0.05, 10), (0.001, None))
    assert halved("0.05:10, 0.001") == "0.025:10, 0.0005" and halved(0.005) == "0.0025"


@pytest.mark.parametrize(
    ("lr", "options", "fragment"),
    [
        ("0.05:10, 0.02:5", {}, "above the previous step (10)"),
        ("0.05, 0.02:20", {}, "only the last rate may omit"),
        ("0.05:10, -1", {}, "expected a positive number"),
        ("0.05:10, 0.02:20", {}, "ends at step 20 but --steps is 30"),
        ("0.05:10, 0.01", {"kind": "cosine"}, "goes with --lr-schedule constant"),
        (0.01, {"warmup_steps": 5}, "needs a schedule with a warm-up"),
        (0.01, {"kind": "cosine", "warmup_steps": 30}, "expected fewer than --steps (30)"),
        (0.01, {"kind": "linear"}, "expected one of constant"),
    ],
)
def test_bad_lr_schedules_are_refused(lr, options, fragment):
    with pytest.raises(UsageError) as exc:
        build_schedule(lr, steps=30, **options)
    assert fragment in exc.value.message + (exc.value.hint or "")


def test_engine_steps_at_the_scheduled_rate_and_resume_is_exact(images, tmp_path):
    from conceptlib.trainer.checkpoint import CHECKPOINT_NAME

    class Stop(Exception):
        pass

    common = dict(name="cosine-thing", init="toy", steps=5, checkpoint_every=2, register=False,
                  seed=3, lr="0.02:2, 0.01", lr_schedule="constant", cache_dir=tiny_cache_dir(),
                  **FAST)  # fmt: skip
    rates = []
    real_step = TextualInversion.step

    def spy(self):
        real_step(self)
        rates.append(self.optimizer.param_groups[0]["lr"])

    TextualInversion.step = spy
    try:
        straight = train([images], run_dir=tmp_path / "a", **common)
    finally:
        TextualInversion.step = real_step
    assert rates == [0.02, 0.02, 0.01, 0.01, 0.01]
    assert straight.config["lr"] == "0.02:2, 0.01"
    assert straight.config["lr_schedule"] == "constant"

    def kill_at_3(p):
        if p.phase == "train" and p.step == 3:
            raise Stop

    with pytest.raises(Stop):
        train([images], run_dir=tmp_path / "b", progress=kill_at_3, **common)
    assert (tmp_path / "b" / CHECKPOINT_NAME).is_file()
    resumed = train([images], run_dir=tmp_path / "b", resume=True, **common)
    assert resumed.resumed_from == 2
    for slot, vec in straight.embedding.vectors.items():
        np.testing.assert_array_equal(resumed.embedding.vectors[slot], vec)
    with pytest.raises(Stop):
        train([images], run_dir=tmp_path / "c", progress=kill_at_3, **common)
    with pytest.raises(Exception, match="lr_schedule: checkpoint 'constant', now 'cosine'"):
        train([images], run_dir=tmp_path / "c", resume=True,
              **dict(common, lr=0.01, lr_schedule="cosine"))  # fmt: skip


# ----------------------------------------------------------------- CLI: options, errors


def test_cli_new_options_are_recorded_and_show_prints_clip_skip(images, _isolated_home):
    from conceptlib.cli.main import cli

    link_tiny_into_home(_isolated_home)
    runner = CliRunner()
    args = ["train", str(images), "--name", "opt-thing", "--init", "toy", "--steps", "2",
            "--batch", "1", "--sample-every", "0", "--clip-skip", "2", "--no-flip",
            "--weight-decay", "0.01", "--lr", "0.01", "--lr-schedule", "cosine",
            "--lr-warmup-steps", "1", "--prediction-type", "v_prediction", "--json"]  # fmt: skip
    out = runner.invoke(cli, args)
    assert out.exit_code == 0, out.output
    cfg = json.loads(out.output)["config"]
    assert (cfg["clip_skip"], cfg["flip"], cfg["weight_decay"], cfg["lr"]) == (2, False, 0.01, 0.01)
    assert (cfg["lr_schedule"], cfg["lr_warmup_steps"]) == ("cosine", 1)
    assert (cfg["prediction_type"], cfg["zero_terminal_snr"]) == ("v_prediction", False)
    with Library.open() as lib:
        info = lib.get("opt-thing")
    assert info.extra["clip_skip"] == 2
    shown = runner.invoke(cli, ["show", "opt-thing"])
    assert shown.exit_code == 0 and "clip skip" in shown.output


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--clip-skip", "13"], "--clip-skip"),
        (["--lr", "0.05:10, 0.02:20"], "ends at step 20 but --steps is 30"),
        (["--lr", "fast"], "expected a positive number"),
        (["--lr-warmup-steps", "5"], "needs a schedule with a warm-up"),
        (["--prediction-type", "sample"], "--prediction-type"),
        (["--weight-decay", "-1"], "--weight-decay"),
    ],
)
def test_cli_bad_options_fail_before_anything_loads(
    extra, fragment, images, _isolated_home, catalog_snapshot, monkeypatch
):
    from conceptlib.cli.main import cli
    from conceptlib.models import base as base_mod

    def no_load(*a, **k):
        raise AssertionError("the base model must not load")

    monkeypatch.setattr(base_mod, "load_base", no_load)
    before = catalog_snapshot(_isolated_home)
    out = CliRunner().invoke(cli, ["train", str(images), "--name", "bad-thing", "--init", "toy",
                                   "--steps", "30", *extra])  # fmt: skip
    assert out.exit_code == 2, out.output
    assert fragment in out.output
    assert catalog_snapshot(_isolated_home) == before
    assert not (_isolated_home / "runs" / "bad-thing").exists()

"""The memory estimate (measured table) and gradient checkpointing."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from compose_support import fresh_base

from conceptlib.models.tiny import TINY_RESOLUTION
from conceptlib.schemas.enums import Family
from conceptlib.trainer import memory
from conceptlib.trainer.images import to_pixels
from conceptlib.trainer.loop import TextualInversion
from conceptlib.trainer.samples import sample_images

PIXELS = to_pixels(sample_images(3, size=64), TINY_RESOLUTION)


def test_the_table_gives_back_its_measured_peaks():
    for m in memory.MEASURED:
        weights = memory.FAMILY_PARAMETERS[m.family] * memory.DTYPE_BYTES[m.precision]
        acts, basis = memory.activations_bytes(
            m.family, m.resolution, m.batch, m.precision, checkpointing=False
        )
        assert (weights + acts) / memory.GIB == pytest.approx(m.peak_gib, rel=1e-6)
        assert m.where in basis


def test_activations_scale_with_pixels_batch_dtype_and_checkpointing():
    a = memory.activations_bytes(Family.SD1, 512, 8, "bf16", checkpointing=False)[0]
    assert memory.activations_bytes(Family.SD1, 256, 8, "bf16", checkpointing=False)[0] == (
        pytest.approx(a / 4, rel=1e-6)
    )
    assert memory.activations_bytes(Family.SD1, 512, 2, "bf16", checkpointing=False)[0] == (
        pytest.approx(a / 4, rel=1e-6)
    )
    assert memory.activations_bytes(Family.SD1, 512, 8, "fp32", checkpointing=False)[0] == (
        pytest.approx(2 * a, rel=1e-6)
    )
    ck, basis = memory.activations_bytes(Family.SD1, 512, 8, "bf16", checkpointing=True)
    assert ck == pytest.approx(a * memory.CHECKPOINTING_FACTOR[Family.SD1], rel=1e-6)
    assert "checkpointing" in basis
    # SD 2.x has no measurement of its own: SD 1.5's per-pixel figure, said so
    sd2, basis2 = memory.activations_bytes(Family.SD2, 512, 8, "bf16", checkpointing=False)
    assert sd2 == pytest.approx(a, rel=1e-6) and "from sd1" in basis2
    assert memory.activations_bytes(Family.FLUX, 512, 8, "bf16", checkpointing=False)[0] is None


def test_sdxl_1024_batch_4_does_not_fit_a_24_gib_card_without_checkpointing():
    """Issue 14 item 9: SDXL at 1024 px, batch 4, does not fit 24 GB today."""
    weights = memory.FAMILY_PARAMETERS[Family.SDXL] * 2
    acts = memory.activations_bytes(Family.SDXL, 1024, 4, "bf16", checkpointing=False)[0]
    assert weights / memory.GIB == pytest.approx(6.46, abs=0.01)
    assert (weights + acts) / memory.GIB > 24


def test_weights_are_counted_exactly_from_the_loaded_model():
    bm = fresh_base("tiny-sd1")
    pipe = bm.pipeline
    expected = sum(
        t.numel() * t.element_size()
        for m in (pipe.unet, pipe.vae, pipe.text_encoder)
        for t in m.state_dict().values()
    )
    # plus the buffers a state dict leaves out (CLIP's position ids): they are in memory too
    persistent = {k for m in (pipe.unet, pipe.vae, pipe.text_encoder) for k in m.state_dict()}
    left_out = [b for k, b in pipe.text_encoder.named_buffers() if k not in persistent]
    assert left_out  # CLIP's position ids
    expected += sum(b.numel() * b.element_size() for b in left_out)
    assert memory.weights_bytes(bm) == expected
    est = memory.estimate(bm, resolution=32, batch=4, precision="fp32", checkpointing=False)
    assert est.peak_bytes is None and "test model" in est.message()
    assert f"{expected / memory.GIB:.2f} GiB" in est.message()


def _full_size_on_cuda(family: Family) -> SimpleNamespace:
    """A stand-in for a loaded full-size model on a GPU: tiny modules (the weights count
    is not what is checked here), the family's table, a CUDA device string."""
    bm = fresh_base("tiny-sd1")
    return SimpleNamespace(pipeline=bm.pipeline, slots=bm.slots, family=family, is_tiny=False,
                           device="cuda", ref="stand-in")  # fmt: skip


def test_auto_turns_checkpointing_on_when_the_run_does_not_fit(monkeypatch):
    base = _full_size_on_cuda(Family.SDXL)
    monkeypatch.setattr(memory, "free_memory", lambda device: 17 * memory.GIB)
    on, why, est, lines = memory.choose_checkpointing(
        None, base, resolution=1024, batch=4, accumulate=1, precision="bf16"
    )
    assert on and est.gradient_checkpointing and "does not fit" in why
    assert lines[0].startswith("expected peak ~") and "(17.0 GiB free)" in lines[0]
    assert "gradient checkpointing on" in lines[1]
    # batch 8 does not fit even with it: the same images per step as a smaller batch
    on, why, est, lines = memory.choose_checkpointing(
        None, base, resolution=1024, batch=8, accumulate=1, precision="bf16"
    )
    assert on and est.fits() is False
    (warning,) = [line for line in lines if line.startswith("warning:")]
    b = memory.largest_batch(est)
    assert 1 <= b < 8
    assert f"--batch {b} --accumulate {-(-8 // b)}" in warning
    # the user's choice wins; a run that fits stays off
    off = memory.choose_checkpointing(False, base, resolution=1024, batch=4, accumulate=1,
                                      precision="bf16")  # fmt: skip
    assert off[0] is False and off[1] == "as asked"
    small = memory.choose_checkpointing(None, base, resolution=512, batch=1, accumulate=1,
                                        precision="bf16")  # fmt: skip
    assert small[0] is False and "fits" in small[1]


def test_auto_keeps_checkpointing_off_on_a_cpu():
    bm = fresh_base("tiny-sd1")
    on, why, _, lines = memory.choose_checkpointing(None, bm, resolution=32, batch=4,
                                                    accumulate=1, precision="fp32")  # fmt: skip
    assert not on and "not a CUDA device" in why
    assert len(lines) == 1 and "expected peak" in lines[0]
    assert memory.choose_checkpointing(True, bm, resolution=32, batch=4, accumulate=1,
                                       precision="fp32")[0] is True  # fmt: skip


def test_checkpointing_gives_the_same_loss_and_gradient_with_less_memory():
    bm = fresh_base("tiny-sd1")
    results = {}
    for ckpt in (False, True):
        ti = TextualInversion(bm, PIXELS, ["a photo of a {}"], name="ck", init="toy", batch=2,
                              gradient_checkpointing=ckpt)  # fmt: skip
        try:
            assert ti.unet.is_gradient_checkpointing is ckpt
            peak = memory.measure_step_peak(ti, seed=3)
            d = ti._draw(torch.Generator().manual_seed(3), 2)
            loss = ti._loss(d)
            loss.backward()
            results[ckpt] = (float(loss.detach()), ti.params["clip_l"].grad.clone(), peak)
        finally:
            ti.close()
        assert bm.pipeline.unet.is_gradient_checkpointing is False  # close() undoes it
    (l0, g0, p0), (l1, g1, p1) = results[False], results[True]
    assert l1 == pytest.approx(l0, rel=1e-6)
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-8)
    assert 0 < p1 < p0  # the UNet's activations are recomputed, not kept


def test_measured_peak_grows_with_the_batch():
    bm = fresh_base("tiny-sd1")
    ti = TextualInversion(bm, PIXELS, ["a photo of a {}"], name="pk", init="toy", batch=2)
    try:
        peaks = [memory.measure_step_peak(ti, batch=b) for b in (1, 2, 4)]
        assert all(p.grad is None for p in ti.params.values())
    finally:
        ti.close()
    assert peaks[0] < peaks[1] < peaks[2]
    assert np.isclose(peaks[2] - peaks[1], 2 * (peaks[1] - peaks[0]), rtol=0.25)

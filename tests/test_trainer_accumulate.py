"""Gradient accumulation: N micro-batches of --batch make one optimizer step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compose_support import fresh_base

from conceptlib.models.tiny import TINY_RESOLUTION
from conceptlib.trainer.checkpoint import RESUME_DEFAULTS, check_resumable
from conceptlib.trainer.images import to_pixels
from conceptlib.trainer.loop import TextualInversion
from conceptlib.trainer.samples import sample_images
from conceptlib.trainer.schedule import build_schedule

PIXELS = to_pixels(sample_images(3, size=64), TINY_RESOLUTION)
TEMPLATES = ["a photo of a {}", "a {} on a table"]


def _engine(name: str, **kw) -> TextualInversion:
    opts = {"name": "acc", "init": "toy", "seed": 5, "total_steps": 4, "lr": 0.05}
    opts.update(kw)
    return TextualInversion(fresh_base(name), PIXELS, TEMPLATES, **opts)


def _run(name: str, steps: int, **kw) -> tuple[list[float], dict[str, np.ndarray]]:
    ti = _engine(name, **kw)
    try:
        for _ in range(steps):
            ti.step()
        return ti.read_losses(0, steps), ti.vectors()
    finally:
        ti.close()


def _first_step(name: str, **kw) -> tuple[float, dict[str, np.ndarray]]:
    """The first step's loss and the gradient the optimizer stepped with."""
    ti = _engine(name, **kw)
    try:
        ti.step()
        return ti.read_losses(0, 1)[0], {k: p.grad.numpy().copy() for k, p in ti.params.items()}
    finally:
        ti.close()


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl"])
def test_two_micro_batches_of_two_update_like_one_batch_of_four(name):
    """The draws of an optimizer step are made at once and split, and each micro-batch's
    loss is divided by their number: the loss and the gradient the optimizer steps with
    equal batch 4's to float tolerance (Adam's update is a function of that gradient)."""
    whole_loss, whole = _first_step(name, batch=4)
    acc_loss, acc = _first_step(name, batch=2, accumulate=2)
    assert acc_loss == pytest.approx(whole_loss, rel=1e-5)
    for slot in whole:
        assert np.abs(whole[slot]).max() > 0
        np.testing.assert_allclose(acc[slot], whole[slot], rtol=1e-4, atol=1e-7)
    split_loss, split = _first_step(name, batch=1, accumulate=4)
    assert split_loss == pytest.approx(whole_loss, rel=1e-5)
    for slot in whole:
        np.testing.assert_allclose(split[slot], whole[slot], rtol=1e-4, atol=1e-7)


def test_a_step_counts_optimizer_steps_and_the_schedule_follows_them():
    schedule = build_schedule(0.05, kind="cosine", warmup_steps=1, steps=4)
    ti = _engine("tiny-sd1", batch=1, accumulate=3, lr_schedule=schedule)
    try:
        seen = []
        real_step = ti.optimizer.step

        def counting_step(*a, **k):
            seen.append(ti.optimizer.param_groups[0]["lr"])
            return real_step(*a, **k)

        ti.optimizer.step = counting_step
        for _ in range(2):
            ti.step()
        assert ti.step_count == 2
        assert seen == [schedule.rate(1), schedule.rate(2)]  # one optimizer step each
    finally:
        ti.close()


def test_resume_in_the_middle_of_an_accumulated_run_is_exact():
    _, straight = _run("tiny-sd1", 4, batch=1, accumulate=2)
    first = _engine("tiny-sd1", batch=1, accumulate=2)
    try:
        for _ in range(2):
            first.step()
        state = first.state_dict()
    finally:
        first.close()
    second = _engine("tiny-sd1", batch=1, accumulate=2)
    try:
        second.load_state_dict(state)
        for _ in range(2):
            second.step()
        resumed = second.vectors()
        losses = second.read_losses(0, 4)
    finally:
        second.close()
    np.testing.assert_array_equal(resumed["clip_l"], straight["clip_l"])
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_resume_refuses_another_accumulate(tmp_path):
    from conceptlib.errors import TrainingError

    base = dict(RESUME_DEFAULTS, steps=10)
    with pytest.raises(TrainingError, match="accumulate: checkpoint 2, now 4"):
        check_resumable({**base, "accumulate": 2}, {**base, "accumulate": 4}, 5, tmp_path / "c")
    # a checkpoint from before --accumulate existed ran with 1
    older = {k: v for k, v in base.items() if k != "accumulate"}
    assert check_resumable(older, {**base, "accumulate": 1}, 5, tmp_path / "c") == []


def test_the_fp16_grad_scaler_sees_every_micro_batch():
    """fp16: the scaled micro-batch losses accumulate, one scaler step per optimizer step."""
    from compose_support import tiny_cache_dir

    from conceptlib.models.base import load_base

    bm = load_base("tiny-sd1", dtype=torch.float16, cache_dir=tiny_cache_dir())
    ti = TextualInversion(bm, PIXELS, TEMPLATES, name="acc16", init="toy", batch=1,
                          accumulate=2, total_steps=2)  # fmt: skip
    try:
        before = ti.vectors()["clip_l"]
        for _ in range(2):
            ti.step()
        assert ti.scaler is not None
        assert np.all(np.isfinite(ti.read_losses(0, 2)))
        assert np.abs(ti.vectors()["clip_l"] - before).max() > 0
    finally:
        ti.close()

"""The capture-safe step, the CUDA-graph selection and its fallback, the attention choice.

The CUDA parts themselves are marked ``gpu`` (skipped without CUDA): a GPU session runs
them with ``bash bench/gpu_session.sh``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from compose_support import fresh_base, link_tiny_into_home, tiny_cache_dir

from conceptlib.errors import UsageError
from conceptlib.models.tiny import TINY_RESOLUTION
from conceptlib.trainer import fast_step
from conceptlib.trainer.images import to_pixels
from conceptlib.trainer.loop import TextualInversion
from conceptlib.trainer.samples import sample_images, write_sample_images

PIXELS = to_pixels(sample_images(3, size=64), TINY_RESOLUTION)
CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]


# ----------------------------------------------------------------- selection, before loading


@pytest.mark.parametrize(
    ("kw", "graph", "why"),
    [
        ({"device": "cpu"}, False, "need a CUDA device; this run is on cpu"),
        ({"device": "mps"}, False, "need a CUDA device; this run is on mps"),
        ({"device": "cuda", "compile": True}, False, "--compile"),
        ({"device": "cuda", "precision": "fp16"}, False, "fp16"),
        ({"device": "cuda", "static_shapes": False}, False, "shapes change"),
        ({"device": "cuda"}, True, "static shapes on CUDA"),
    ],
)
def test_auto_uses_the_graph_where_it_can_and_says_why_not(kw, graph, why):
    opts = {"precision": "bf16", "compile": False, **kw}
    choice = fast_step.select_cuda_graphs("auto", **opts)
    assert choice.graph is graph and why in choice.reason
    assert choice.to_dict()["cuda_graphs"] == "auto"
    assert ("one CUDA graph" if graph else "eager") in choice.message()
    if graph:
        assert fast_step.select_cuda_graphs("on", **opts).graph
    else:
        with pytest.raises(UsageError, match="--cuda-graphs on: .*" + why.split(";")[0]):
            fast_step.select_cuda_graphs("on", **opts)
    off = fast_step.select_cuda_graphs("off", **opts)
    assert not off.graph and off.reason == "--cuda-graphs off"


def test_bad_step_options_are_refused():
    with pytest.raises(UsageError, match="--cuda-graphs 'always'"):
        fast_step.check_step_options(1, "always", device="cpu", precision="fp32", compile=False)
    with pytest.raises(UsageError, match="--accumulate 0: expected 1 to"):
        fast_step.check_step_options(0, "off", device="cpu", precision="fp32", compile=False)


# ----------------------------------------------------------------- the step on a CPU


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl"])
def test_accumulated_checkpointed_steps_never_read_values_back(name, read_back_guard):
    """With --accumulate and checkpointing too, no .item()/float()/bool()/.cpu() and no
    synchronize inside a step: the step a CUDA graph records must have none."""
    ti = TextualInversion(fresh_base(name), PIXELS, ["a photo of a {}"], name="sync", init="toy",
                          batch=1, accumulate=2, gradient_checkpointing=True, total_steps=2)  # fmt: skip
    try:
        read_back_guard["on"] = True
        for _ in range(2):
            ti.step()
        read_back_guard["on"] = False
        assert np.all(np.isfinite(ti.read_losses(0, 2)))
    finally:
        read_back_guard["on"] = False
        ti.close()


def test_the_graph_optimizer_trains_like_the_eager_one():
    """The CUDA-graph step's fused AdamW (capturable, the learning rate a device tensor
    that set_lr fills) runs on a CPU too: same vectors as the plain fused AdamW."""
    from conceptlib.trainer.schedule import build_schedule

    schedule = build_schedule(0.05, kind="cosine", warmup_steps=1, steps=3)
    out = {}
    for graph_optimizer in (False, True):
        ti = TextualInversion(fresh_base("tiny-sd1"), PIXELS, ["a photo of a {}"], name="opt",
                              init="toy", batch=2, seed=2, total_steps=3,
                              lr_schedule=schedule)  # fmt: skip
        try:
            if graph_optimizer:
                group = ti.optimizer.param_groups[0]
                ti.optimizer = fast_step.capturable_optimizer(
                    list(ti.params.values()), group["lr"], group["weight_decay"]
                )
                ti._lr = ti.optimizer.param_groups[0]["lr"]
            for _ in range(3):
                ti.step()
            if graph_optimizer:
                assert ti.optimizer.param_groups[0]["lr"] is ti._lr  # the same tensor
                assert float(ti._lr) == pytest.approx(schedule.rate(3))
            out[graph_optimizer] = ti.vectors()["clip_l"]
        finally:
            ti.close()
    np.testing.assert_allclose(out[True], out[False], rtol=1e-6, atol=1e-7)


def test_the_warm_up_before_capture_is_undone():
    """The eager steps run before a capture leave the vectors and the optimizer as they
    were: fresh state zeros, a resumed state its values."""
    ti = TextualInversion(fresh_base("tiny-sd1"), PIXELS, ["a photo of a {}"], name="warm",
                          init="toy", batch=2, total_steps=4)  # fmt: skip
    try:
        graph = fast_step.CudaGraphStep(ti, ti._optimise)
        d = ti._draw(torch.Generator().manual_seed(0), 2)
        start = ti.vectors()["clip_l"]
        snap = graph._snapshot()
        for _ in range(2):
            ti._optimise(d)
        graph._restore(snap)
        np.testing.assert_array_equal(ti.vectors()["clip_l"], start)
        state = next(iter(ti.optimizer.state.values()))
        assert all(float(v.abs().sum()) == 0 for v in state.values())
        ti._optimise(d)  # now with state: a snapshot keeps its values
        kept = {k: v.clone() for k, v in state.items()}
        moved = ti.vectors()["clip_l"]
        snap = graph._snapshot()
        ti._optimise(d)
        graph._restore(snap)
        np.testing.assert_array_equal(ti.vectors()["clip_l"], moved)
        for k, v in state.items():
            torch.testing.assert_close(v, kept[k], rtol=0, atol=0)
    finally:
        ti.close()


def test_a_capture_that_fails_falls_back_to_the_eager_step_with_a_note():
    """An engine told to use the graph where capture is impossible (here: no CUDA) steps
    eagerly, says so once, and trains exactly like the eager engine."""
    runs = {}
    for graphs in (False, True):
        ti = TextualInversion(fresh_base("tiny-sd1"), PIXELS, ["a photo of a {}"], name="fb",
                              init="toy", batch=2, seed=7, total_steps=3,
                              cuda_graphs=graphs)  # fmt: skip
        try:
            assert ti.step_mode == ("cuda-graph" if graphs else "eager")
            for _ in range(3):
                ti.step()
            notes = ti.pop_notes()
            assert ti.step_mode == "eager" and ti.pop_notes() == []
            runs[graphs] = (ti.read_losses(0, 3), ti.vectors()["clip_l"], notes)
        finally:
            ti.close()
    (eager_losses, eager_vec, eager_notes), (fb_losses, fb_vec, fb_notes) = runs[False], runs[True]
    assert eager_notes == []
    (note,) = fb_notes
    assert note.startswith("CUDA graphs: capture failed, eager step from now on")
    np.testing.assert_allclose(fb_losses, eager_losses, rtol=1e-6)
    np.testing.assert_allclose(fb_vec, eager_vec, rtol=1e-6, atol=1e-7)


def test_compile_time_is_reported_once():
    ti = TextualInversion(fresh_base("tiny-sd1"), PIXELS, ["a photo of a {}"], name="ct",
                          init="toy", batch=1, total_steps=2, compile="aot_eager")  # fmt: skip
    try:
        ti.step()
        (note,) = ti.pop_notes()
        assert note.startswith("torch.compile: the first step took ") and note.endswith(
            " s (compiling)"
        )
        ti.step()
        assert ti.pop_notes() == []
    finally:
        ti.close()


def test_attention_is_pytorchs_default_off_cuda():
    bm = fresh_base("tiny-sd1")
    sizes = fast_step.head_sizes(bm.pipeline.unet)
    assert sizes and all(s > 0 for s in sizes)
    choice = fast_step.choose_attention(bm.pipeline.unet, "cpu", torch.float32, 32)
    assert choice == {"backend": None, "reason": "PyTorch's default on cpu", "ms": {}}
    with fast_step.attention_context(choice):  # a no-op
        pass


# ----------------------------------------------------------------- through train() and the CLI


def test_train_records_the_step_choices_and_prints_the_estimate(tmp_path):
    from conceptlib.trainer.train import train

    write_sample_images(tmp_path / "imgs", 3, size=48)
    lines = []
    result = train([tmp_path / "imgs"], name="fast-thing", init="toy", steps=2, batch=1,
                   accumulate=2, gradient_checkpointing=True, cuda_graphs="auto",
                   sample_every=0, sample_steps=1, register=False, run_dir=tmp_path / "run",
                   cache_dir=tiny_cache_dir(), log=lines.append)  # fmt: skip
    cfg = result.config
    assert cfg["accumulate"] == 2 and cfg["gradient_checkpointing"] is True
    assert cfg["cuda_graphs"] == "auto"
    step = cfg["step"]
    assert step["graph"] is False and "need a CUDA device; this run is on cpu" in step["reason"]
    assert step["gradient_checkpointing"] is True and step["checkpointing_reason"] == "as asked"
    assert cfg["memory_estimate"]["gradient_checkpointing"] is True
    assert any(line.startswith("expected peak: frozen weights") for line in lines)
    assert "gradient checkpointing on (as asked)" in lines
    assert any(line.startswith("step: eager (CUDA graphs need a CUDA device") for line in lines)
    assert len(result.losses) == 2


def test_cli_cuda_graphs_on_without_cuda_fails_before_anything_loads(
    tmp_path, _isolated_home, catalog_snapshot, monkeypatch
):
    from conceptlib.cli.main import cli
    from conceptlib.models import base as base_mod

    def no_load(*a, **k):
        raise AssertionError("the base model must not load")

    monkeypatch.setattr(base_mod, "load_base", no_load)
    write_sample_images(tmp_path / "imgs", 3, size=48)
    link_tiny_into_home(_isolated_home)
    before = catalog_snapshot(_isolated_home)
    for extra, fragment in (
        (["--cuda-graphs", "on", "--device", "cpu"], "--cuda-graphs on: CUDA graphs need a CUDA"),
        (["--accumulate", "0"], "--accumulate"),
    ):
        out = CliRunner().invoke(cli, ["train", str(tmp_path / "imgs"), "--name", "bad-thing",
                                       "--init", "toy", *extra])  # fmt: skip
        assert out.exit_code == 2, out.output
        assert fragment in out.output
    assert catalog_snapshot(_isolated_home) == before
    assert not (_isolated_home / "runs" / "bad-thing").exists()


def test_device_name_on_cuda_names_the_gpu(monkeypatch):
    """A CUDA run records its GPU's name (the function was misspelt: every CUDA run
    failed at its first log line)."""
    from conceptlib.trainer.run import device_name

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert device_name(torch.device("cuda")) == "cuda (NVIDIA H200)"


# ----------------------------------------------------------------- on a GPU


def _cuda_engine(**kw) -> TextualInversion:
    from conceptlib.models.base import load_base

    bm = load_base("tiny-sd1", device="cuda", dtype=torch.float32, cache_dir=tiny_cache_dir())
    opts = {"name": "gpu", "init": "toy", "batch": 2, "seed": 3, "total_steps": 6}
    opts.update(kw)
    return TextualInversion(bm, PIXELS, ["a photo of a {}", "a {} on a table"], **opts)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("accumulate", [1, 2])
def test_gpu_graph_step_equals_the_eager_step_and_resumes_exactly(accumulate):
    runs = {}
    for graphs in (False, True):
        ti = _cuda_engine(cuda_graphs=graphs, accumulate=accumulate)
        try:
            for _ in range(4):
                ti.step()
            assert ti.step_mode == ("cuda-graph" if graphs else "eager"), ti.pop_notes()
            runs[graphs] = (ti.read_losses(0, 4), ti.vectors()["clip_l"], ti.state_dict())
            if graphs:
                assert ti._graph.captures == 1
        finally:
            ti.close()
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=1e-4, atol=1e-5)
    # resume: 2 graph steps, a new engine from that state, 2 more == 4 straight
    first = _cuda_engine(cuda_graphs=True, accumulate=accumulate)
    try:
        for _ in range(2):
            first.step()
        state = first.state_dict()
    finally:
        first.close()
    second = _cuda_engine(cuda_graphs=True, accumulate=accumulate)
    try:
        second.load_state_dict(state)
        for _ in range(2):
            second.step()
        np.testing.assert_array_equal(second.vectors()["clip_l"], runs[True][1])
    finally:
        second.close()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_graph_steps_never_synchronise():
    ti = _cuda_engine(cuda_graphs=True, gradient_checkpointing=True)
    try:
        ti.step()  # the capture (its warm-up may sync)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                ti.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert ti.step_mode == "cuda-graph"
        assert np.all(np.isfinite(ti.read_losses(0, 4)))
    finally:
        ti.close()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_gpu_attention_backend_is_chosen_by_measurement_and_cached():
    ti = _cuda_engine()
    try:
        choice = ti.attention
        assert choice["backend"] in choice["ms"] and choice["ms"]
        assert fast_step.choose_attention(ti.unet, ti.device, ti.dtype, 32) is choice
        assert any(n.startswith("attention: ") for n in ti.pop_notes())
    finally:
        ti.close()


def test_the_continue_command_keeps_the_step_options():
    """Ctrl-C prints the command to continue: --no-gradient-checkpointing (a flag whose
    value is False) and the other new options are kept in it."""
    from conceptlib.cli.train import _command_line, train_cmd

    ctx = train_cmd.make_context("train", ["imgs", "--name", "x-thing", "--init", "toy",
                                           "--no-gradient-checkpointing", "--accumulate", "3",
                                           "--cuda-graphs", "auto"])  # fmt: skip
    line = _command_line(ctx, resume=True)
    assert line == ("conceptlib train imgs --name x-thing --init toy --accumulate 3 "
                    "--no-gradient-checkpointing --cuda-graphs auto --resume")  # fmt: skip

"""The textual-inversion step: tiny models, frozen rows, initializer, SDXL pooling, math."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from compose_support import fresh_base, tiny_cache_dir, tiny_folder

from conceptlib.models.base import load_base
from conceptlib.models.fingerprint import tiny_fingerprint
from conceptlib.models.tiny import TINY_RESOLUTION, build_vocab, ensure_tiny, tiny_path
from conceptlib.schemas.enums import Family
from conceptlib.trainer.images import to_pixels
from conceptlib.trainer.loop import TextualInversion, placeholder_tokens, pooled_index
from conceptlib.trainer.samples import sample_images

PIXELS = to_pixels(sample_images(3, size=64), TINY_RESOLUTION)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_tiny_models_build_once_with_real_widths():
    folder = ensure_tiny("tiny-sd1", tiny_cache_dir())
    stamp = (folder / "unet" / "config.json").stat().st_mtime_ns
    assert ensure_tiny("tiny-sd1", tiny_cache_dir()) == folder  # cached: not rebuilt
    assert (folder / "unet" / "config.json").stat().st_mtime_ns == stamp
    assert folder == tiny_path("tiny-sd1", tiny_cache_dir())
    sd1, sdxl = fresh_base("tiny-sd1"), fresh_base("tiny-sdxl")
    assert sd1.family == Family.SD1 and sdxl.family == Family.SDXL
    assert [s.width for s in sd1.slots] == [768]
    assert [(s.slot, s.width) for s in sdxl.slots] == [("clip_l", 768), ("clip_g", 1280)]
    assert sdxl.pipeline.unet.config.cross_attention_dim == 2048
    assert sd1.model_id == "conceptlib/tiny-sd1" and sdxl.model_id == "conceptlib/tiny-sdxl"
    assert sd1.fingerprint == tiny_fingerprint("tiny-sd1") != sdxl.fingerprint
    tok = sd1.pipeline.tokenizer
    assert tok.tokenize("a photo of a toy") == ["a</w>", "photo</w>", "of</w>", "a</w>", "toy</w>"]
    assert tok.eos_token_id == len(build_vocab()[0]) - 1  # CLIP layout: specials last


def test_tiny_build_is_deterministic(tmp_path):
    other = ensure_tiny("tiny-sd1", tmp_path)
    for part in ("text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        a = hashlib.sha256((other / part).read_bytes()).hexdigest()
        b = hashlib.sha256((tiny_folder("tiny-sd1") / part).read_bytes()).hexdigest()
        assert a == b, part


def test_tiny_vae_round_trips_latents():
    vae = fresh_base("tiny-sd1").pipeline.vae
    x = torch.from_numpy(PIXELS)
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        back = vae.encode(vae.decode(z).sample.clamp(-1, 1)).latent_dist.mean
    assert torch.allclose(z[:, :3], torch.nn.functional.avg_pool2d(x, 4), atol=1e-4)
    assert torch.allclose(back, z, atol=1e-3)


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl"])
def test_only_the_new_rows_learn(name):
    bm = fresh_base(name)
    pipe = bm.pipeline
    modules = {"unet": pipe.unet, "vae": pipe.vae} | {s.slot: s.encoder for s in bm.slots}
    before = {k: _state(m) for k, m in modules.items()}
    tables = [s.encoder.get_input_embeddings() for s in bm.slots]
    ti = TextualInversion(bm, PIXELS, ["a photo of a {}"], name="probe", init="toy", vectors=2,
                          lr=5e-2, batch=2, total_steps=3)  # fmt: skip
    start = ti.vectors()
    for _ in range(3):
        ti.step()
    ti.close()
    for key, module in modules.items():
        after = module.state_dict()
        for param, value in before[key].items():
            assert torch.equal(after[param], value), f"{key}.{param} changed"
    assert [s.encoder.get_input_embeddings() for s in bm.slots] == tables  # restored
    for slot, vec in ti.vectors().items():
        assert vec.shape == start[slot].shape and vec.dtype == np.float32
        assert not np.allclose(vec, start[slot])
    assert set(ti.vectors()) == ({"clip_l", "clip_g"} if name == "tiny-sdxl" else {"clip_l"})
    assert all(p.dtype == torch.float32 for p in ti.params.values())


def test_initializer_tokens_cycle_and_are_reported():
    bm = fresh_base("tiny-sd1")
    table = bm.slots[0].encoder.get_input_embeddings().weight.detach()
    tok = bm.pipeline.tokenizer
    teddy, bear = tok.convert_tokens_to_ids(["teddy</w>", "bear</w>"])
    ti = TextualInversion(bm, PIXELS, ["a photo of a {}"], name="c", init="teddy bear",
                          vectors=3, total_steps=1)  # fmt: skip
    v = ti.vectors()["clip_l"]
    for row, tid in zip(v, [teddy, bear, teddy], strict=True):
        assert np.array_equal(row, table[tid].numpy())
    msg = ti.init_reports[0].message("teddy bear")
    assert "2 tokens" in msg and "cycle" in msg
    ti.close()
    one = TextualInversion(bm, PIXELS, ["a photo of a {}"], name="d", init="teddy bear",
                           vectors=1, total_steps=1)  # fmt: skip
    assert "only 1 vector" in one.init_reports[0].message("teddy bear")
    one.close()
    single = TextualInversion(bm, PIXELS, ["a photo of a {}"], name="e", init="toy",
                              vectors=1, total_steps=1)  # fmt: skip
    assert single.init_reports[0].message("toy") is None
    single.close()


def test_sdxl_pooled_embedding_is_read_at_end_of_text():
    bm = fresh_base("tiny-sdxl")
    ti = TextualInversion(bm, PIXELS, ["a photo of a {}"], name="pool", init="toy",
                          vectors=2, total_steps=1)  # fmt: skip
    ids_g = ti.template_ids[1][:1]
    eos = bm.pipeline.tokenizer_2.eos_token_id
    placeholder_pos = (ids_g[0] >= ti._merged[1][2].first_id).nonzero().flatten().tolist()
    idx = int(pooled_index(ids_g, eos)[0])
    assert int(ids_g[0, idx]) == eos
    assert idx == placeholder_pos[-1] + 1  # right after the placeholder, where the text ends
    assert int(ids_g.argmax(dim=-1)[0]) in placeholder_pos  # what argmax would have picked
    with torch.no_grad():
        emb, pooled = ti.encode_prompts([ti.template_ids[0][:1], ids_g])
        enc = bm.slots[1].encoder
        last = enc(ids_g).last_hidden_state
        expected = enc.text_projection(last[0, idx])
    assert emb.shape == (1, 77, 2048)
    assert torch.allclose(pooled[0], expected, atol=1e-6)
    ti.close()


def test_placeholder_tokens_and_template_tokenization():
    assert placeholder_tokens("Cat Toy!", 2) == ["<cat-toy_0>", "<cat-toy_1>"]
    bm = fresh_base("tiny-sd1")
    ti = TextualInversion(bm, PIXELS, ["a photo of a {}", "{} on a table"], name="t",
                          init="toy", vectors=3, total_steps=1)  # fmt: skip
    ids = ti.template_ids[0]
    first = ti._merged[0][2].first_id
    assert ids.shape == (2, 77)
    assert ((ids >= first).sum(dim=1) == 3).all()  # every template holds all 3 vectors
    ti.close()


def test_first_loss_and_gradient_match_a_plain_reference_loop():
    """With the same draws, our step equals the textbook computation: the whole
    embedding matrix resized, the text encoder fed input ids, scheduler.add_noise."""
    import copy

    from diffusers import DDPMScheduler

    bm = fresh_base("tiny-sd1")
    ti = TextualInversion(bm, PIXELS, ["a photo of a {}"], name="ref", init="toy",
                          vectors=2, batch=2, total_steps=1, flip=False)  # fmt: skip
    draws = ti._draw(torch.Generator().manual_seed(3), 2)
    loss = ti._loss(draws)
    loss.backward()
    ours = ti.params["clip_l"].grad.clone()
    ids = ti.template_ids[0][draws["tmpl"]]
    ti.close()

    ref_encoder = copy.deepcopy(bm.pipeline.text_encoder)
    table = ref_encoder.get_input_embeddings().weight.detach()
    start = ti.vectors()["clip_l"]
    full = torch.nn.Parameter(torch.cat([table, torch.as_tensor(start)]))
    ref_encoder.resize_token_embeddings(full.shape[0])
    ref_encoder.get_input_embeddings().weight = full
    sched = DDPMScheduler.from_config(bm.pipeline.scheduler.config)
    with torch.no_grad():
        post = bm.pipeline.vae.encode(torch.from_numpy(PIXELS)[draws["idx"]]).latent_dist
        z = (post.mean + post.std * draws["eps"]) * bm.pipeline.vae.config.scaling_factor
    noisy = sched.add_noise(z, draws["noise"], draws["t"])
    emb = ref_encoder(ids).last_hidden_state
    pred = bm.pipeline.unet(noisy, draws["t"], encoder_hidden_states=emb).sample
    ref = torch.nn.functional.mse_loss(pred, draws["noise"])
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(ours, full.grad[table.shape[0] :], rtol=1e-4, atol=1e-8)
    # The reference gives every row in the prompt a gradient (hence its restore step);
    # ours never computes one for the frozen table.
    assert full.grad[: table.shape[0]].abs().sum() > 0
    assert bm.pipeline.text_encoder.get_input_embeddings().weight.grad is None


def test_load_base_refuses_what_it_cannot_use(tmp_path):
    from conceptlib.errors import BaseModelError

    with pytest.raises(BaseModelError, match="not found"):
        load_base("no-such-model-here")
    (tmp_path / "plain").mkdir()
    with pytest.raises(BaseModelError, match="model_index.json"):
        load_base(tmp_path / "plain")
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(BaseModelError, match="safetensors"):
        load_base(ckpt)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [("tiny-sd1", torch.float32), ("tiny-sdxl", torch.float32), ("tiny-sd1", torch.float16)],
)
def test_a_step_never_reads_values_back(name, dtype, read_back_guard):
    """No .item()/float()/bool()/.cpu() in the step, the optimizer or the fp16 grad
    scaler: on CUDA each would stall the GPU until the step's kernels finish."""
    bm = load_base(name, dtype=dtype, cache_dir=tiny_cache_dir())
    ti = TextualInversion(bm, PIXELS, ["a photo of a {}"], name="sync", init="toy",
                          batch=2, total_steps=3)  # fmt: skip
    try:
        assert (ti.scaler is not None) == (dtype == torch.float16)
        read_back_guard["on"] = True
        for _ in range(3):
            ti.step()
        read_back_guard["on"] = False
        losses = ti.read_losses(0, 3)  # the one read-back, outside the steps
    finally:
        read_back_guard["on"] = False
        ti.close()
    assert len(losses) == 3 and all(np.isfinite(losses))


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl"])
def test_images_are_encoded_and_templates_tokenized_once(name, monkeypatch):
    bm = fresh_base(name)
    calls = {"encode": 0, "tokenize": 0}
    vae = bm.pipeline.vae
    real_encode = vae.encode

    def counting_encode(*args, **kwargs):
        calls["encode"] += 1
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(vae, "encode", counting_encode)
    for tokenizer_cls in {type(slot.tokenizer) for slot in bm.slots}:
        real_call = tokenizer_cls.__call__

        def counting_call(self, *args, _real=real_call, **kwargs):
            calls["tokenize"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(tokenizer_cls, "__call__", counting_call)
    templates = ["a photo of a {}", "a {} on a table", "a close-up photo of the {}"]
    ti = TextualInversion(bm, PIXELS, templates, name="once", init="toy", batch=2,
                          total_steps=4)  # fmt: skip
    try:
        # set-up: 3 images + 3 mirrors in chunks of 4; one call per tokenizer for all
        # templates, one per tokenizer for the initializer
        assert calls["encode"] == 2
        assert calls["tokenize"] == 2 * len(bm.slots)
        assert tuple(ti.mean.shape) == (6, 4, 8, 8) and tuple(ti.std.shape) == (6, 4, 8, 8)
        before = dict(calls)
        for _ in range(4):
            ti.step()
        assert calls == before  # steps sample the cached posteriors and token ids
    finally:
        ti.close()


def test_attention_runs_through_scaled_dot_product_attention():
    from diffusers.models.attention_processor import AttnProcessor2_0

    for name in ("tiny-sd1", "tiny-sdxl"):
        bm = fresh_base(name)
        processors = bm.pipeline.unet.attn_processors.values()
        assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors)
        for slot in bm.slots:
            assert slot.encoder.config._attn_implementation == "sdpa"


def test_compiled_unet_trains_like_the_eager_one():
    """``compile`` wraps the UNet in torch.compile; the ``aot_eager`` backend traces the
    same graphs (forward and backward) as inductor without its minute of C++ builds."""
    runs = {}
    for compile_ in (False, "aot_eager"):
        bm = fresh_base("tiny-sd1")
        ti = TextualInversion(bm, PIXELS, ["a photo of a {}"], name="comp", init="toy",
                              batch=2, seed=4, total_steps=3, compile=compile_)  # fmt: skip
        try:
            assert (ti.unet_fn is not ti.unet) == bool(compile_)
            for _ in range(3):
                ti.step()
            runs[compile_] = (ti.read_losses(0, 3), ti.vectors()["clip_l"])
        finally:
            ti.close()
    (eager_losses, eager_vec), (comp_losses, comp_vec) = runs[False], runs["aot_eager"]
    np.testing.assert_allclose(comp_losses, eager_losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(comp_vec, eager_vec, rtol=1e-5, atol=1e-6)

"""load_embeddings: one resize per encoder, exact restore, families, clashes.

Real transformers/diffusers models (tiny, random, built from config); no mocks.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from compose_support import assert_restored, clip_text_host, encoder_state, fresh_base

from conceptlib.compose.loader import (
    LoadItem,
    PartialCompatibilityWarning,
    load_embeddings,
    pipeline_family,
)
from conceptlib.errors import IncompatibleEmbedding, LoaderError, PartialCompatibility
from conceptlib.registry.samples import sample_embedding
from conceptlib.schemas.enums import Family


@pytest.fixture(scope="module")
def sd1():
    return fresh_base("tiny-sd1")


@pytest.fixture(scope="module")
def sdxl():
    return fresh_base("tiny-sdxl")


def test_text_encoder_from_config_roundtrip():
    host = clip_text_host()
    before = encoder_state(host)
    e1, e2 = sample_embedding("sd1", 3, 1), sample_embedding("sd1", 1, 2)
    with load_embeddings(host, [("<cat-toy>", e1, 1.0), ("<ukiyoe>", e2, 0.5)]) as loaded:
        tok, enc = host.tokenizer, host.text_encoder
        assert loaded.family == Family.SD1
        assert loaded.tokens["<cat-toy>"] == ["<cat-toy>", "<cat-toy>_1", "<cat-toy>_2"]
        assert len(tok) == before["text_encoder"]["len"] + 4
        assert enc.config.vocab_size == len(tok)
        w = enc.get_input_embeddings().weight
        ids = loaded.token_ids["text_encoder"]
        assert torch.equal(w[ids["<cat-toy>_2"]], torch.from_numpy(e1.vectors["clip_l"][2]))
        assert torch.allclose(w[ids["<ukiyoe>"]], torch.from_numpy(e2.vectors["clip_l"][0]) * 0.5)
        # old rows are a bit-identical copy
        assert torch.equal(
            w[: before["text_encoder"]["len"]], before["text_encoder"]["weight_copy"]
        )
        assert tok.tokenize("a <CAT-TOY> <ukiyoe>") == ["a</w>", "<cat-toy>", "<ukiyoe>"]
        assert loaded.expand("a <CAT-TOY>, <cat-toy>_1") == (
            "a <cat-toy> <cat-toy>_1 <cat-toy>_2, <cat-toy>_1"
        )
        out = enc(tok("a <cat-toy>", return_tensors="pt").input_ids).last_hidden_state
        assert torch.isfinite(out).all()
    assert_restored(host, before)


def test_restores_after_an_exception_inside_the_block():
    host = clip_text_host()
    before = encoder_state(host)
    with (
        pytest.raises(RuntimeError),
        load_embeddings(host, [("<a>", sample_embedding("sd1", 2, 3))]),
    ):
        raise RuntimeError("boom")
    assert_restored(host, before)


def test_one_resize_per_encoder(monkeypatch):
    """The matrix is rebuilt once per encoder, whatever the number of embeddings."""
    host = clip_text_host()
    calls = []
    original = host.text_encoder.set_input_embeddings

    def counting(module):
        calls.append(module.weight.shape[0])
        return original(module)

    monkeypatch.setattr(host.text_encoder, "set_input_embeddings", counting)
    items = [(f"<e{i}>", sample_embedding("sd1", 1 + i % 3, i), 1.0) for i in range(12)]
    with load_embeddings(host, items):
        assert len(calls) == 1
    assert len(calls) == 2  # the load, and putting the original back


def test_same_text_features_as_diffusers_load_textual_inversion():
    """Our vectors give the text features that diffusers' own loader gives."""
    from diffusers.loaders import TextualInversionLoaderMixin

    class Host(TextualInversionLoaderMixin):
        hf_device_map = None

        def __init__(self, seed):
            made = clip_text_host(seed=seed)
            self.tokenizer, self.text_encoder = made.tokenizer, made.text_encoder

        @property
        def components(self):
            return {"tokenizer": self.tokenizer, "text_encoder": self.text_encoder}

    ours_host, their_host = Host(3), Host(3)
    embs = [("<toy>", sample_embedding("sd1", 3, 11)), ("<ink>", sample_embedding("sd1", 1, 12))]
    prompt = "a <toy> on a table, <ink> style"

    def features(host):
        text = host.maybe_convert_prompt(prompt, host.tokenizer)
        ids = host.tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            return ids, host.text_encoder(ids).last_hidden_state

    with load_embeddings(ours_host, [(t, e, 1.0) for t, e in embs]):
        ours_ids, ours = features(ours_host)
    for t, e in embs:
        their_host.load_textual_inversion({t: torch.from_numpy(e.vectors["clip_l"])}, token=t)
    their_ids, theirs = features(their_host)
    assert torch.equal(ours_ids, their_ids)
    assert torch.equal(ours, theirs)


def test_sd_pipeline_restore_and_generation(sd1):
    pipe = sd1.pipeline
    before = encoder_state(pipe)
    with load_embeddings(pipe, [("<toy>", sample_embedding("sd1", 4, 5), 0.8)]) as loaded:
        assert pipeline_family(pipe) == Family.SD1
        # diffusers expands the multi-vector token by itself
        assert pipe.maybe_convert_prompt("a <toy>", pipe.tokenizer) == (
            "a " + " ".join(loaded.tokens["<toy>"])
        )
        img = pipe(
            "a <toy>",
            num_inference_steps=1,
            height=32,
            width=32,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images
        assert img.shape == (1, 32, 32, 3)
    assert_restored(pipe, before)


def test_sdxl_both_encoders_and_restore(sdxl):
    pipe = sdxl.pipeline
    before = encoder_state(pipe)
    xl = sample_embedding("sdxl", 2, 7)
    with load_embeddings(pipe, [("<neon>", xl, 1.0)]) as loaded:
        assert loaded.family == Family.SDXL and not loaded.warnings
        ids1 = loaded.token_ids["text_encoder"]
        ids2 = loaded.token_ids["text_encoder_2"]
        assert ids1 == ids2  # the prompt tokenizes to the same positions in both
        w1 = pipe.text_encoder.get_input_embeddings().weight
        w2 = pipe.text_encoder_2.get_input_embeddings().weight
        assert torch.equal(w1[ids1["<neon>_1"]], torch.from_numpy(xl.vectors["clip_l"][1]))
        assert torch.equal(w2[ids2["<neon>_1"]], torch.from_numpy(xl.vectors["clip_g"][1]))
        assert pipe.text_encoder_2.config.vocab_size == len(pipe.tokenizer_2)
    assert_restored(pipe, before)


def test_sd1_on_sdxl_warns_and_fills_the_second_encoder(sdxl):
    pipe = sdxl.pipeline
    before = encoder_state(pipe)
    e = sample_embedding("sd1", 2, 8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with load_embeddings(pipe, [("<old>", e, 1.0)]) as loaded:
            assert loaded.partial == ["<old>"]
            assert "first text encoder" in loaded.warnings[0]
            w2 = pipe.text_encoder_2.get_input_embeddings().weight
            mean = before["text_encoder_2"]["weight_copy"].mean(dim=0)
            for t in loaded.tokens["<old>"]:
                assert torch.allclose(w2[loaded.token_ids["text_encoder_2"][t]], mean)
                assert pipe.tokenizer_2.tokenize(t) == [t]
    assert any(issubclass(w.category, PartialCompatibilityWarning) for w in caught)
    assert_restored(pipe, before)

    with (
        pytest.warns(PartialCompatibilityWarning),
        load_embeddings(pipe, [("<old>", e, 1.0)], partial_fill="zero") as loaded,
    ):
        w2 = pipe.text_encoder_2.get_input_embeddings().weight
        assert not w2[loaded.token_ids["text_encoder_2"]["<old>"]].any()
    assert_restored(pipe, before)


def test_sd1_on_sdxl_strict_refuses_before_any_change(sdxl):
    pipe = sdxl.pipeline
    before = encoder_state(pipe)
    with (
        pytest.raises(PartialCompatibility) as err,
        load_embeddings(pipe, [("<old>", sample_embedding("sd1", 1, 8))], strict=True),
    ):
        pass  # pragma: no cover
    assert "768 + 1280" in err.value.message and "[1, 768]" in err.value.message
    assert_restored(pipe, before)


def test_sd2_on_sd1_fails_with_shapes_and_widths(sd1):
    pipe = sd1.pipeline
    before = encoder_state(pipe)
    items = [("<ok>", sample_embedding("sd1", 1, 1)), ("<golem>", sample_embedding("sd2", 2, 9))]
    with pytest.raises(IncompatibleEmbedding) as err, load_embeddings(pipe, items):
        pass  # pragma: no cover
    msg = err.value.message
    assert "sd2" in msg and "clip_h [2, 1024]" in msg and "768 wide" in msg
    assert err.value.facts["model_widths"] == [768]
    assert_restored(pipe, before)


def test_sdxl_on_sd1_fails(sd1):
    with (
        pytest.raises(IncompatibleEmbedding, match="sdxl"),
        load_embeddings(sd1.pipeline, [("<x>", sample_embedding("sdxl", 1, 9))]),
    ):
        pass  # pragma: no cover


@pytest.mark.parametrize(
    "items, match",
    [
        ([("cat", 1)], "already in tokenizer's vocabulary"),
        ([("<a>", 2), ("<a>_1", 1)], "also a token of"),
        ([("<a>", 1), ("<A>", 1)], "also a token of"),
        ([("two words", 1)], "empty or has spaces"),
        ([("", 1)], "empty or has spaces"),
    ],
)
def test_token_clashes_refused_before_any_change(items, match):
    host = clip_text_host()
    before = encoder_state(host)
    load = [(tok, sample_embedding("sd1", n, i), 1.0) for i, (tok, n) in enumerate(items)]
    with pytest.raises(LoaderError, match=match), load_embeddings(host, load):
        pass  # pragma: no cover
    assert_restored(host, before)


def test_nested_blocks_restore_in_order():
    host = clip_text_host()
    before = encoder_state(host)
    with load_embeddings(host, [("<a>", sample_embedding("sd1", 2, 1))]):
        middle = encoder_state(host)
        with load_embeddings(host, [("<b>", sample_embedding("sd1", 1, 2))]):
            assert len(host.tokenizer) == before["text_encoder"]["len"] + 3
        assert_restored(host, middle)
    assert_restored(host, before)


def test_load_item_and_empty_list():
    host = clip_text_host()
    before = encoder_state(host)
    with load_embeddings(host, []) as loaded:
        assert loaded.tokens == {}
        assert loaded.expand("a cat") == "a cat"
    e = sample_embedding("sd1", 1, 4)
    with load_embeddings(host, [LoadItem("<x>", e, weight=-1.0, name="x")]) as loaded:
        w = host.text_encoder.get_input_embeddings().weight
        got = w[loaded.token_ids["text_encoder"]["<x>"]].detach().numpy()
        assert np.array_equal(got, -e.vectors["clip_l"][0])
    assert_restored(host, before)


def test_diffusers_loads_inside_the_block_are_undone_too(sd1):
    """transformers' resize swaps the weight of the module it finds: ours, not the original."""
    pipe = sd1.pipeline
    before = encoder_state(pipe)
    with load_embeddings(pipe, [("<ours>", sample_embedding("sd1", 2, 1))]):
        pipe.load_textual_inversion(
            {"<theirs>": torch.from_numpy(sample_embedding("sd1", 1, 2).vectors["clip_l"])}
        )
        assert "<theirs>" in pipe.tokenizer.get_vocab()
    assert "<theirs>" not in pipe.tokenizer.get_vocab()
    assert_restored(pipe, before)

"""Helpers for the compose tests: real tiny models built from config, cached per session."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

_CACHE: dict[str, Any] = {}


def tiny_cache_dir() -> Path:
    """One folder per test session where the tiny models are built once."""
    if "dir" not in _CACHE:
        _CACHE["dir"] = Path(tempfile.mkdtemp(prefix="conceptlib-compose-tiny-"))
        atexit.register(shutil.rmtree, _CACHE["dir"], ignore_errors=True)
    return _CACHE["dir"]


def tiny_folder(name: str) -> Path:
    from conceptlib.models.tiny import ensure_tiny

    return ensure_tiny(name, tiny_cache_dir())


def fresh_base(name: str) -> Any:
    """A freshly loaded tiny base model (its own pipeline object)."""
    from conceptlib.models.base import load_base

    tiny_folder(name)
    return load_base(name, cache_dir=tiny_cache_dir())


def link_tiny_into_home(home: Path) -> None:
    """Make ``--base tiny-sd1`` in CLI tests find the session's already built models."""
    from conceptlib.models.tiny import tiny_path

    for name in ("tiny-sd1", "tiny-sdxl"):
        src = tiny_folder(name)
        dst = tiny_path(name, home / "cache")
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            os.symlink(src, dst, target_is_directory=True)


def clip_text_host(width: int = 768, *, seed: int = 0) -> SimpleNamespace:
    """A real CLIP tokenizer and text encoder built from config, as a pipeline-like object."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # The tiny models' byte-level BPE vocabulary (built in code by conceptlib.models.tiny).
    tok = CLIPTokenizer.from_pretrained(tiny_folder("tiny-sd1") / "tokenizer")
    vocab = tok.get_vocab()
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=8,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    return SimpleNamespace(tokenizer=tok, text_encoder=CLIPTextModel(config).eval())


def encoder_state(host: Any) -> dict[str, Any]:
    """Everything the loader must put back, captured for comparison."""
    out: dict[str, Any] = {}
    for tok_attr, enc_attr in (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2")):
        tok = getattr(host, tok_attr, None)
        enc = getattr(host, enc_attr, None)
        if tok is None:
            continue
        module = enc.get_input_embeddings()
        out[enc_attr] = {
            "len": len(tok),
            "vocab": tok.get_vocab(),
            "added": {i: str(t) for i, t in tok.added_tokens_decoder.items()},
            "backend": tok._tokenizer,
            "module": module,
            "weight": module.weight,
            "weight_copy": module.weight.detach().clone(),
            "config_vocab": enc.config.vocab_size,
            "vocab_attr": vars(enc).get("vocab_size", "absent"),
            "ids": tok("a photo of <cat-toy> and a cat, painting").input_ids,
            "decode": tok.decode(tok("a red cat").input_ids),
        }
    return out


def assert_restored(host: Any, before: dict[str, Any]) -> None:
    import torch

    after = encoder_state(host)
    assert after.keys() == before.keys()
    for key, b in before.items():
        a = after[key]
        assert a["len"] == b["len"]
        assert a["vocab"] == b["vocab"]
        assert a["added"] == b["added"]
        assert a["backend"] is b["backend"]
        assert a["module"] is b["module"]
        assert a["weight"] is b["weight"]
        assert torch.equal(a["weight"], b["weight_copy"])
        assert a["config_vocab"] == b["config_vocab"]
        assert a["vocab_attr"] == b["vocab_attr"]
        assert a["ids"] == b["ids"]
        assert a["decode"] == b["decode"]

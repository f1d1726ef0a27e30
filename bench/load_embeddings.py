"""Benchmark: loading K embeddings into a full-size CLIP ViT-L text encoder.

Ours (``conceptlib.compose.loader.load_embeddings``: one matrix rebuild, one
tokenizer copy) against diffusers' ``load_textual_inversion`` called once per
embedding, side by side in one run, on the same encoder and the same embeddings.

The encoder is CLIP ViT-L/14's text tower built from config (vocab 49408, width
768, 12 layers, random weights: the weights do not change the cost). No tokenizer
can be downloaded, so a byte-level BPE vocabulary of the same size (49408 tokens,
48894 merges) is generated with a fixed seed and written as ``vocab.json`` +
``merges.txt`` into a temporary folder, then loaded with ``CLIPTokenizer``.

For each K it checks that both loaders put the same vectors on the same tokens,
and that unloading leaves the encoder identical (same embedding tensor, bit-equal
values, ``config.vocab_size``, tokenizer length and vocabulary, and encodings).

Run:
    python bench/load_embeddings.py                  # K = 10, 50, 200
    python bench/load_embeddings.py --k 10 50 --repeat 5 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

VOCAB_SIZE = 49408
SAMPLE = "a photo of a cat-toy on the beach, watercolor painting, highly detailed"


def bytes_to_unicode() -> dict[int, str]:
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_clip_vocab(folder: Path, seed: int = 0) -> None:
    """A CLIP-layout BPE vocabulary of exactly 49408 tokens, from seeded random words."""
    rng = random.Random(seed)
    base = list(bytes_to_unicode().values())
    tokens = base + [c + "</w>" for c in base]
    known = set(tokens)
    merges: list[str] = []
    merge_set: set[tuple[str, str]] = set()
    target = VOCAB_SIZE - 2
    letters = "abcdefghijklmnopqrstuvwxyz"
    while len(tokens) < target:
        word = "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1 and len(tokens) < target:
            a, b = symbols[0], symbols[1]
            if (a, b) not in merge_set:
                merge_set.add((a, b))
                merges.append(f"{a} {b}")
            if a + b not in known:
                known.add(a + b)
                tokens.append(a + b)
            symbols = [a + b, *symbols[2:]]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )


class TextHost:
    """What ``load_textual_inversion`` needs of a pipeline: a tokenizer and a text encoder."""

    hf_device_map = None

    def __init__(self, tokenizer: Any, text_encoder: Any) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder

    @property
    def components(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "text_encoder": self.text_encoder}


def make_host(tok_dir: Path) -> Any:
    import torch
    from diffusers.loaders import TextualInversionLoaderMixin
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    class DiffusersHost(TextHost, TextualInversionLoaderMixin):
        pass

    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir), model_max_length=77)
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=768,
        bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1,
        pad_token_id=VOCAB_SIZE - 1,
    )
    torch.manual_seed(0)
    encoder = CLIPTextModel(config).eval().requires_grad_(False)
    return DiffusersHost(tokenizer, encoder)


def make_embeddings(k: int) -> list[tuple[str, Any]]:
    """K SD 1.x embeddings with 1-4 vectors (2.5 on average), tokens ``<bench-i>``."""
    from conceptlib.registry.samples import sample_embedding

    return [(f"<bench-{i}>", sample_embedding("sd1", 1 + i % 4, 10_000 + i)) for i in range(k)]


def state(host: Any) -> dict[str, Any]:
    tok, enc = host.tokenizer, host.text_encoder
    w = enc.get_input_embeddings().weight
    return {
        "weight": w,
        "copy": w.detach().clone(),
        "config_vocab": enc.config.vocab_size,
        "len": len(tok),
        "vocab": tok.get_vocab(),
        "ids": tok(SAMPLE).input_ids,
    }


def compare(host: Any, before: dict[str, Any]) -> dict[str, bool]:
    import torch

    now = state(host)
    return {
        "same_tensor_object": now["weight"] is before["weight"],
        "matrix_bit_equal": now["copy"].shape == before["copy"].shape
        and torch.equal(now["copy"], before["copy"]),
        "config_vocab_size": now["config_vocab"] == before["config_vocab"],
        "tokenizer_len": now["len"] == before["len"],
        "tokenizer_vocab": now["vocab"] == before["vocab"],
        "encodings": now["ids"] == before["ids"],
    }


def rows_for(host: Any, tokens: list[str]) -> Any:
    import torch

    ids = host.tokenizer.convert_tokens_to_ids(tokens)
    w = host.text_encoder.get_input_embeddings().weight
    return w[torch.tensor(ids)].detach().clone()


def run_ours(host: Any, embs: list[tuple[str, Any]], repeat: int) -> dict[str, Any]:
    from conceptlib.compose.loader import load_embeddings

    before = state(host)
    loads, unloads, rows, all_tokens = [], [], None, []
    for _ in range(repeat):
        cm = load_embeddings(host, [(t, e, 1.0) for t, e in embs])
        t0 = time.perf_counter()
        loaded = cm.__enter__()
        t1 = time.perf_counter()
        all_tokens = [t for seq in loaded.tokens.values() for t in seq]
        rows = rows_for(host, all_tokens)
        t2 = time.perf_counter()
        cm.__exit__(None, None, None)
        t3 = time.perf_counter()
        loads.append(t1 - t0)
        unloads.append(t3 - t2)
    restored = compare(host, before)
    restored["original_weight_untouched"] = (
        restored["same_tensor_object"] and (restored["matrix_bit_equal"])
    )
    return {
        "load_s": statistics.median(loads),
        "unload_s": statistics.median(unloads),
        "loads": loads,
        "restored": restored,
        "rows": rows,
        "tokens": all_tokens,
    }


def run_diffusers(
    host: Any, embs: list[tuple[str, Any]], repeat: int, *, mean_resizing: bool = True
) -> dict[str, Any]:
    """diffusers' ``load_textual_inversion`` once per embedding, then one unload.

    ``mean_resizing=False`` is a what-if variant: transformers 5 initializes the rows
    each resize adds from the old rows' mean and covariance (most of the cost); the
    variant turns that off, leaving the per-call reallocation and copy.
    """
    import functools

    import torch
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    dlog.set_verbosity_error()
    tlog.set_verbosity_error()
    encoder = host.text_encoder
    before = state(host)
    module = encoder.get_input_embeddings()
    data, n_rows = module.weight.data, module.num_embeddings
    if not mean_resizing:
        encoder.resize_token_embeddings = functools.partial(
            type(encoder).resize_token_embeddings, encoder, mean_resizing=False
        )
    loads, unloads, restored, tokens, rows = [], [], {}, [], None
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            for token, emb in embs:
                host.load_textual_inversion(
                    {token: torch.from_numpy(emb.vectors["clip_l"])}, token=token
                )
            t1 = time.perf_counter()
            tokens = [
                t for t, e in embs for t in [t] + [f"{t}_{i}" for i in range(1, e.num_vectors)]
            ]
            rows = rows_for(host, tokens)
            t2 = time.perf_counter()
            host.unload_textual_inversion()
            t3 = time.perf_counter()
            loads.append(t1 - t0)
            unloads.append(t3 - t2)
            restored = compare(host, before)
            restored["original_weight_untouched"] = module.weight.data.shape == data.shape and (
                torch.equal(module.weight.data, before["copy"])
            )
            # Put the original back so that every repeat (and the next K) starts the
            # same: transformers' resize replaces the *original* weight's data with the
            # enlarged matrix (``old.weight.data = new.weight.data``) and diffusers'
            # unload then sets a fresh module, so the original parameter stays enlarged.
            module.weight.data, module.num_embeddings = data, n_rows
            encoder.set_input_embeddings(module)
            encoder.config.vocab_size = before["config_vocab"]
    finally:
        vars(encoder).pop("resize_token_embeddings", None)
    return {
        "load_s": statistics.median(loads),
        "unload_s": statistics.median(unloads),
        "loads": loads,
        "restored": restored,
        "rows": rows,
        "tokens": tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[10, 50, 200])
    parser.add_argument("--repeat", type=int, default=3, help="runs of ours per K (median)")
    parser.add_argument(
        "--repeat-diffusers", type=int, default=1, help="runs of diffusers per K (median)"
    )
    parser.add_argument(
        "--no-variant",
        action="store_true",
        help="skip the what-if run of diffusers with transformers' mean_resizing off",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_clip_vocab(Path(tmp))
        host = make_host(Path(tmp))
        setup = time.perf_counter() - t0
    print(
        f"CLIP ViT-L text encoder from config: vocab {len(host.tokenizer)}, "
        f"{sum(p.numel() for p in host.text_encoder.parameters()) / 1e6:.1f}M params "
        f"(set-up {setup:.1f} s); torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    results = []
    print(
        "| K | vectors | ours load (s) | ours unload (s) | diffusers load (s) "
        "| diffusers unload (s) | speed-up | diffusers, mean_resizing off (s) | speed-up "
        "| same vectors | ours restores | diffusers restores |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in args.k:
        embs = make_embeddings(k)
        run_ours(host, embs, 1)  # warm-up (allocator, tokenizer caches)
        ours = run_ours(host, embs, args.repeat)
        theirs = run_diffusers(host, embs, args.repeat_diffusers)
        plain = None if args.no_variant else run_diffusers(host, embs, 1, mean_resizing=False)
        same = ours["tokens"] == theirs["tokens"] and torch.equal(ours["rows"], theirs["rows"])
        vectors = sum(e.num_vectors for _, e in embs)
        speedup = theirs["load_s"] / ours["load_s"]
        plain_cols = "n/a | n/a"
        if plain is not None:
            plain_cols = f"{plain['load_s']:.2f} | {plain['load_s'] / ours['load_s']:.0f}x"
        ours_ok = all(ours["restored"].values())
        their_bad = [k2 for k2, v in theirs["restored"].items() if not v]
        print(
            f"| {k} | {vectors} | {ours['load_s']:.3f} | {ours['unload_s']:.4f} "
            f"| {theirs['load_s']:.2f} | {theirs['unload_s']:.3f} | {speedup:.0f}x "
            f"| {plain_cols} | {same} "
            f"| {'yes' if ours_ok else ours['restored']} "
            f"| {'yes' if not their_bad else 'no: ' + ', '.join(their_bad)} |",
            flush=True,
        )
        keys = ("load_s", "unload_s", "loads", "restored")
        results.append(
            {
                "k": k,
                "vectors": vectors,
                "ours": {key: ours[key] for key in keys},
                "diffusers": {key: theirs[key] for key in keys},
                "diffusers_no_mean_resizing": (
                    {key: plain[key] for key in keys} if plain is not None else None
                ),
                "speedup": speedup,
                "same_vectors": same,
            }
        )
    print(f"load average at end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    for r in results:
        bad = [k for k, v in r["diffusers"]["restored"].items() if not v]
        print(f"K={r['k']}: after diffusers' unload, differs in: {', '.join(bad) or 'nothing'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()

"""Encode chunked prompts into the conditioning a diffusers pipeline takes.

Each chunk of a :class:`~conceptlib.compose.chunks.ChunkPlan` becomes 77 token ids
(start, up to 75 positions, end, then the tokenizer's pad token: what diffusers itself
pads with) and is encoded on its own by every text encoder; the chunks are concatenated
along the sequence (``[1, 77 * chunks, width]``), and the encoders along the features
(SDXL: 768 + 1280). The hidden states are those diffusers uses: the last layer for one
encoder (SD 1.x, SD 2.x), the penultimate of both for SDXL (earlier layers with a CLIP
skip above 1: :mod:`conceptlib.models.clip_skip`), whose pooled vector comes
from the second encoder's first chunk (as A1111 and ComfyUI take it). The prompt and the
negative prompt are padded to the same number of chunks with the encoding of an empty
chunk (A1111 pads the shorter conditioning the same way).

Attention weights (A1111, ComfyUI, InvokeAI syntax) are applied per chunk and encoder:

* ``a1111`` (A1111 / Forge / SD.Next, ``modules/sd_hijack_clip.py``, emphasis
  "Original"): multiply each position's hidden state by its weight, then rescale the
  chunk so that its mean is the mean before weighting;
* ``comfyui`` (``comfy/sd1_clip.py``, ``encode_token_weights``) and ``compel``
  (InvokeAI): move each weighted position away from (or towards) the empty prompt's
  encoding at that position: ``z_empty + (z - z_empty) * w``. Compel lowers weights
  below 1 by blending with an encoding without those tokens instead; here the same
  interpolation is used for both directions.

Shapes: ids ``[1, 77]`` (int64); hidden states float (the encoder's dtype).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from conceptlib.compose.chunks import ChunkPlan, Position

#: How each syntax's attention weights are applied (see the module docstring).
WEIGHTING = {"conceptlib": "a1111", "a1111": "a1111", "comfyui": "comfyui", "invokeai": "compel"}


@dataclass
class Conditioning:
    """One prompt's encoding: ``embeds`` ``[1, 77 * chunks, width]`` and, for SDXL,
    ``pooled`` ``[1, 1280]`` (from the first chunk)."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None
    chunks: int


def chunk_ids(tokenizer: Any, positions: Sequence[Position], window: int) -> list[int]:
    """The 77 token ids of one chunk: start, the positions, end, then padding."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = [int(i) for i in tokenizer.convert_tokens_to_ids([p.token for p in positions])]
    return [bos, *ids, eos] + [pad] * (window - len(positions))


def _hidden(
    spec: Any, ids: list[int], two_encoders: bool, clip_skip: int = 1
) -> tuple[torch.Tensor, Any]:
    from conceptlib.models.clip_skip import select_hidden

    enc = spec.encoder
    tensor = torch.tensor([ids], dtype=torch.long, device=enc.device)
    out = enc(tensor, output_hidden_states=True)
    z = select_hidden(enc, out, clip_skip, sdxl=two_encoders)
    pooled = getattr(out, "text_embeds", None)
    return z, pooled


def _weigh(z: torch.Tensor, weights: torch.Tensor, mode: str, empty: torch.Tensor) -> torch.Tensor:
    w = weights.to(device=z.device, dtype=z.dtype).reshape(1, -1, 1)
    if mode == "a1111":
        before = z.mean()
        z = z * w
        return z * (before / z.mean())
    return empty + (z - empty) * w


def encode_plan(
    specs: Sequence[Any], plan: ChunkPlan | None, *, weighting: str = "a1111", clip_skip: int = 1
) -> Conditioning:
    """Encode ``plan`` (``None``: the empty prompt, one chunk) with every encoder.

    ``specs`` are the pipeline's :class:`~conceptlib.compose.loader.EncoderSpec` with
    any embeddings already loaded; ``weighting`` is ``a1111``, ``comfyui`` or ``compel``;
    ``clip_skip`` the layer read, A1111's convention (:mod:`conceptlib.models.clip_skip`).
    """
    window = plan.window if plan is not None else 75
    chunks = plan.chunks if plan is not None else [[]]
    two = len(specs) > 1
    per_encoder: list[torch.Tensor] = []
    pooled = None
    for spec in specs:
        empty_z, _ = _hidden(spec, chunk_ids(spec.tokenizer, [], window), two, clip_skip)
        encoded = []
        for k, positions in enumerate(chunks):
            z, p = _hidden(spec, chunk_ids(spec.tokenizer, positions, window), two, clip_skip)
            weights = [1.0] + [pos.attention for pos in positions]
            weights += [1.0] * (window + 2 - len(weights))
            if any(w != 1.0 for w in weights):
                z = _weigh(z, torch.tensor(weights), weighting, empty_z)
            encoded.append(z)
            if k == 0 and p is not None:
                pooled = p
        per_encoder.append(torch.cat(encoded, dim=1))
    return Conditioning(embeds=torch.cat(per_encoder, dim=-1), pooled=pooled, chunks=len(chunks))


def pad_to(cond: Conditioning, chunks: int, empty: Conditioning) -> Conditioning:
    """``cond`` with empty chunks appended up to ``chunks`` chunks."""
    if cond.chunks >= chunks:
        return cond
    extra = [empty.embeds] * (chunks - cond.chunks)
    embeds = torch.cat([cond.embeds, *extra], dim=1)
    return Conditioning(embeds=embeds, pooled=cond.pooled, chunks=chunks)


def pipeline_kwargs(
    specs: Sequence[Any],
    plan: ChunkPlan,
    negative: ChunkPlan | None,
    *,
    weighting: str = "a1111",
    negative_weighting: str = "a1111",
    zero_negative: bool = False,
    clip_skip: int = 1,
) -> dict[str, torch.Tensor]:
    """The ``prompt_embeds`` (and negative, pooled) arguments of a diffusers pipeline call.

    ``zero_negative``: no negative prompt and the pipeline zeroes the unconditional
    input itself (SDXL's ``force_zeros_for_empty_prompt``): no negative is passed.
    ``clip_skip``: the layer every prompt is read from (:mod:`conceptlib.models.clip_skip`).
    """
    with torch.inference_mode():
        pos = encode_plan(specs, plan, weighting=weighting, clip_skip=clip_skip)
        out: dict[str, torch.Tensor] = {}
        if negative is None and zero_negative:
            out["prompt_embeds"] = pos.embeds
            if pos.pooled is not None:
                out["pooled_prompt_embeds"] = pos.pooled
            return out
        empty = encode_plan(specs, None, clip_skip=clip_skip)
        neg = (
            encode_plan(specs, negative, weighting=negative_weighting, clip_skip=clip_skip)
            if negative
            else empty
        )
        n = max(pos.chunks, neg.chunks)
        pos, neg = pad_to(pos, n, empty), pad_to(neg, n, empty)
        out["prompt_embeds"] = pos.embeds
        out["negative_prompt_embeds"] = neg.embeds
        if pos.pooled is not None and neg.pooled is not None:
            out["pooled_prompt_embeds"] = pos.pooled
            out["negative_pooled_prompt_embeds"] = neg.pooled
        return out

"""CLIP skip: which text-encoder layer the conditioning is read from.

A1111's convention (its "Clip skip" setting and infotext field, which Civitai shows):
``1`` is the layer a pipeline uses by default, ``N`` reads ``N - 1`` layers earlier.

* SD 1.x / 2.x: 1 = the last hidden state; N > 1 = the output of the N-th layer from
  the end, passed through the encoder's final layer norm (A1111's
  ``modules/sd_hijack_clip.py``; diffusers' ``clip_skip=N-1``).
* SDXL: 1 = the penultimate hidden state of both encoders, without the final layer
  norm (what stock SDXL uses); N reads N - 1 layers before it. The pooled vector
  always comes from the last layer.

The trainer (:mod:`conceptlib.trainer.loop`) and composing
(:mod:`conceptlib.compose.encode`) both read layers through :func:`select_hidden`, so
an embedding trained at a CLIP skip is used at the same one.
"""

from __future__ import annotations

from typing import Any

#: Largest CLIP skip accepted anywhere (A1111's range; the model's own layer count is
#: checked too, by :func:`most_clip_skip`).
MAX_CLIP_SKIP = 12


def most_clip_skip(encoders: Any, *, sdxl: bool) -> int:
    """The largest CLIP skip ``encoders`` (text encoders with a ``config``) allow: the
    smaller layer count, one less for SDXL (which already reads the penultimate)."""
    layers = min(int(e.config.num_hidden_layers) for e in encoders)
    return layers - 1 if sdxl else layers


def select_hidden(encoder: Any, output: Any, clip_skip: int, *, sdxl: bool) -> Any:
    """The conditioning hidden state ``[batch, tokens, width]`` of one encoder's
    ``output`` (run with ``output_hidden_states=True`` unless SD 1.x/2.x at skip 1)."""
    if sdxl:
        return output.hidden_states[-(clip_skip + 1)]
    if clip_skip == 1:
        return output.last_hidden_state
    # transformers < 5 nests the layers under text_model; 5 flattens them
    norm = getattr(encoder, "text_model", encoder).final_layer_norm
    return norm(output.hidden_states[-clip_skip])

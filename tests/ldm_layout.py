"""Write a diffusers pipeline as an original-layout (LDM, "A1111") single-file checkpoint.

Single-file ``.safetensors`` checkpoints hold the whole model under the key names of
the original Stable Diffusion code (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.*`` / ``conditioner.embedders.*``). None
can be downloaded here, so the tests make one from a tiny diffusers pipeline: the
mapping below is written from the original architecture's module names, independent
of diffusers' own converter, so loading the file back checks both our plumbing and
that the layout is the real one.
"""

from __future__ import annotations

from typing import Any

# --------------------------------------------------------------------------- UNet

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _resnet_key(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET[head]}.{tail}"


def _unet_keys(unet: Any) -> dict[str, str]:
    """diffusers UNet key -> LDM key (without the ``model.diffusion_model.`` prefix)."""
    cfg = unet.config
    layers = int(cfg.layers_per_block)
    n_down = len(cfg.down_block_types)
    out: dict[str, str] = {}
    for key in unet.state_dict():
        parts = key.split(".")
        if parts[0] == "time_embedding":
            ldm = {"linear_1": "time_embed.0", "linear_2": "time_embed.2"}[parts[1]]
            out[key] = f"{ldm}.{parts[2]}"
        elif parts[0] == "add_embedding":
            ldm = {"linear_1": "label_emb.0.0", "linear_2": "label_emb.0.2"}[parts[1]]
            out[key] = f"{ldm}.{parts[2]}"
        elif parts[0] == "conv_in":
            out[key] = f"input_blocks.0.0.{parts[1]}"
        elif parts[0] == "conv_norm_out":
            out[key] = f"out.0.{parts[1]}"
        elif parts[0] == "conv_out":
            out[key] = f"out.2.{parts[1]}"
        elif parts[0] == "down_blocks":
            b, kind, i = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            if kind == "downsamplers":
                idx = 1 + b * (layers + 1) + layers
                out[key] = f"input_blocks.{idx}.0.op.{parts[-1]}"
                continue
            idx = 1 + b * (layers + 1) + i
            if kind == "resnets":
                out[key] = f"input_blocks.{idx}.0.{_resnet_key(rest)}"
            else:
                out[key] = f"input_blocks.{idx}.1.{rest}"
        elif parts[0] == "mid_block":
            kind, i = parts[1], int(parts[2])
            rest = ".".join(parts[3:])
            if kind == "resnets":
                out[key] = f"middle_block.{2 * i}.{_resnet_key(rest)}"
            else:
                out[key] = f"middle_block.1.{rest}"
        elif parts[0] == "up_blocks":
            b, kind, i = int(parts[1]), parts[2], int(parts[3])
            rest = ".".join(parts[4:])
            has_attention = "CrossAttn" in cfg.up_block_types[b]
            if kind == "upsamplers":
                idx = b * (layers + 1) + layers
                out[key] = f"output_blocks.{idx}.{2 if has_attention else 1}.conv.{parts[-1]}"
                continue
            idx = b * (layers + 1) + i
            if kind == "resnets":
                out[key] = f"output_blocks.{idx}.0.{_resnet_key(rest)}"
            else:
                out[key] = f"output_blocks.{idx}.1.{rest}"
        else:  # pragma: no cover - a layout this writer does not know
            raise KeyError(key)
    assert n_down == len(cfg.up_block_types)
    return out


# --------------------------------------------------------------------------- VAE


def _vae_state(vae: Any) -> dict[str, Any]:
    n_up = len(vae.config.up_block_types)
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
    out: dict[str, Any] = {}
    for key, value in vae.state_dict().items():
        parts = key.split(".")
        side = parts[0]
        if side in ("quant_conv", "post_quant_conv"):
            out[key] = value
            continue
        name = parts[1]
        rest = parts[2:]
        if name == "conv_norm_out":
            ldm = f"{side}.norm_out.{'.'.join(rest)}"
        elif name in ("conv_in", "conv_out"):
            ldm = key
        elif name in ("down_blocks", "up_blocks"):
            b, kind, i = int(rest[0]), rest[1], rest[2]
            tail = [p if p != "conv_shortcut" else "nin_shortcut" for p in rest[3:]]
            level = b if name == "down_blocks" else n_up - 1 - b
            group = "down" if name == "down_blocks" else "up"
            if kind == "resnets":
                ldm = f"{side}.{group}.{level}.block.{i}.{'.'.join(tail)}"
            else:
                sample = "downsample" if kind == "downsamplers" else "upsample"
                ldm = f"{side}.{group}.{level}.{sample}.{'.'.join(tail)}"
        elif name == "mid_block":
            kind, i = rest[0], int(rest[1])
            tail = rest[2:]
            if kind == "resnets":
                tail = [p if p != "conv_shortcut" else "nin_shortcut" for p in tail]
                ldm = f"{side}.mid.block_{i + 1}.{'.'.join(tail)}"
            else:
                module = attn[tail[0]]
                ldm = f"{side}.mid.attn_1.{module}.{tail[-1]}"
                if module != "norm" and value.ndim == 2:
                    value = value[:, :, None, None]  # 1x1 convolutions in the original
        else:  # pragma: no cover
            raise KeyError(key)
        out[ldm] = value
    return out


# --------------------------------------------------------------------------- text encoders


def _hf_clip_state(encoder: Any, prefix: str) -> dict[str, Any]:
    """A transformers CLIP text model under ``prefix`` in the original (``text_model.``) layout."""
    out = {}
    for key, value in encoder.state_dict().items():
        if key.startswith("text_projection") or key.endswith("position_ids"):
            continue
        inner = key if key.startswith("text_model.") else f"text_model.{key}"
        out[prefix + inner] = value
    return out


def _open_clip_state(encoder: Any, prefix: str) -> dict[str, Any]:
    """A transformers CLIP text model with projection as an OpenCLIP text tower."""
    import torch

    state = {
        (k[len("text_model.") :] if k.startswith("text_model.") else k): v
        for k, v in encoder.state_dict().items()
        if not k.endswith("position_ids")
    }
    out = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
        prefix + "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    names = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    layers = int(encoder.config.num_hidden_layers)
    for n in range(layers):
        src = f"encoder.layers.{n}."
        dst = f"{prefix}transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            q, k, v = (state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv")
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([q, k, v])
            for hf, oc in names.items():
                out[f"{dst}{oc}.{kind}"] = state.pop(f"{src}{hf}.{kind}")
    assert not state, sorted(state)
    return out


# --------------------------------------------------------------------------- pipeline


def ldm_state_dict(pipe: Any) -> dict[str, Any]:
    """The whole pipeline (UNet, VAE, text encoders) under original-layout key names."""
    out: dict[str, Any] = {}
    unet_state = pipe.unet.state_dict()
    for key, ldm in _unet_keys(pipe.unet).items():
        out[f"model.diffusion_model.{ldm}"] = unet_state[key]
    for key, value in _vae_state(pipe.vae).items():
        out[f"first_stage_model.{key}"] = value
    if getattr(pipe, "text_encoder_2", None) is not None:
        out.update(_hf_clip_state(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        out.update(_open_clip_state(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    else:
        out.update(_hf_clip_state(pipe.text_encoder, "cond_stage_model.transformer."))
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def save_single_file(pipe: Any, path: Any) -> None:
    """Write ``pipe`` as one original-layout ``.safetensors`` checkpoint."""
    from safetensors.torch import save_file

    save_file(ldm_state_dict(pipe), str(path))

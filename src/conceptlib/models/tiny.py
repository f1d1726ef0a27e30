"""Built-in tiny Stable-Diffusion-shaped models for the demo and the tests.

``tiny-sd1`` and ``tiny-sdxl`` have the real text widths (768, and 768 + 1280 for
SDXL) so their embeddings have real shapes, but few layers and small UNet/VAE
blocks, so they train on a CPU in seconds. They are built in code from fixed seeds
with a small byte-level BPE tokenizer (also built in code), saved with
``save_pretrained`` under ``<cache_dir>/tiny/<name>-v<TINY_VERSION>`` on first use
and loaded from there afterwards.

They carry their own base-model ids (``conceptlib/tiny-sd1``,
``conceptlib/tiny-sdxl``) so that what is trained on them never passes for a real
SD 1.5 or SDXL concept. Their text encoders and UNets are random (for plumbing,
tests and benchmarks, not for pictures); their VAE is exact instead (see
:func:`_exact_vae`), so images written by the pipeline encode back to the latents
that made them.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from conceptlib.models.libraries import _dtype_kwargs, quiet_libraries

#: Bump when anything below changes the built models: it is part of the cache key
#: and of the base-model fingerprint.
TINY_VERSION = 1

TINY_MODELS: dict[str, str] = {
    "tiny-sd1": "conceptlib/tiny-sd1",
    "tiny-sdxl": "conceptlib/tiny-sdxl",
}

#: Pixels per side the tiny models are built for (their VAE downsamples by 4).
TINY_RESOLUTION = 32

_SEED = 20240501
#: Latents are block-mean colours in [-1, 1]; this scales them to about unit spread.
_LATENT_SCALE = 2.0

# Words of the built-in vocabulary: every word the prompt templates use, plus common
# nouns, colours and adjectives so that initializer words tokenize like real ones.
_WORDS = """
a an the of in on at by with from for to and or is it its this that my your our one two
three some small big large little tiny huge cool nice good weird clean dirty dark bright
light old new young modern close up far rendition rendering photo photograph picture
image painting drawing sketch illustration art artwork style work piece poster depiction
scene cropped bad good low high quality resolution blurry sharp detailed pixelated jpeg
black white red green blue yellow orange purple pink brown gray grey gold silver
colorful toy cat dog bird fish horse cow sheep car truck bike boat plane train house
tree flower sun moon sky sea beach mountain river city street room table chair cup
bottle book lamp clock robot teddy bear doll ball duck box hat shoe bag ring person man
woman child face hand eye portrait landscape still life statue sculpture figure figurine
object thing stuff water fire wood stone metal glass paper plastic cloth grass snow rain
cloud night day morning evening shadow reflection background foreground center left
right top bottom front back side view angle shot camera lens film watercolor oil acrylic
ink pencil charcoal pastel digital vector cartoon anime comic realistic abstract surreal
vintage retro minimal minimalist impressionist expressionist cubist baroque gothic
ukiyoe pattern texture shape circle square triangle star heart line dot stripe spot
""".split()  # noqa: SIM905 - a word list reads better as text


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (GPT-2 / CLIP)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The tiny CLIP vocabulary and BPE merges.

    Layout as in CLIP: the 256 byte characters, the same with the end-of-word
    suffix ``</w>``, the merge results, then ``<|startoftext|>`` and
    ``<|endoftext|>`` as the two last ids. Every word of the word list is one token.
    """
    from transformers import CLIPTokenizer

    base = list(_bytes_to_unicode().values())
    tokens: list[str] = base + [c + "</w>" for c in base]
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    merge_set: set[tuple[str, str]] = set()

    def add_merge(a: str, b: str) -> None:
        if (a, b) not in merge_set:
            merge_set.add((a, b))
            merges.append((a, b))
        if a + b not in known:
            known.add(a + b)
            tokens.append(a + b)

    words = list(dict.fromkeys(_WORDS))
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            add_merge(symbols[0], symbols[1])
            symbols = [symbols[0] + symbols[1], *symbols[2:]]

    # Merges are applied by rank, so a word can be cut where a shorter word's merge
    # wins first ("c|at</w>"). Join such pieces with extra, later merges until every
    # word of the list is a single token.
    for _ in range(8):
        vocab = {t: i for i, t in enumerate([*tokens, "<|startoftext|>", "<|endoftext|>"])}
        tok = CLIPTokenizer(vocab=vocab, merges=list(merges))
        split = False
        for word in words:
            pieces = tok.tokenize(word)
            while len(pieces) > 1:
                split = True
                add_merge(pieces[0], pieces[1])
                pieces = [pieces[0] + pieces[1], *pieces[2:]]
        if not split:
            return vocab, merges
    raise RuntimeError("tiny tokenizer: merges did not converge")  # pragma: no cover


def _write_tokenizer(folder: Path, *, pad_token: str) -> None:
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token, model_max_length=77)
    tok.save_pretrained(folder)


def _text_config(vocab: dict[str, int], *, width: int, heads: int, act: str) -> Any:
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=width,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=width,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def _scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def _vae(scaling_factor: float) -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=TINY_RESOLUTION,
        scaling_factor=scaling_factor,
        force_upcast=True,
    )


# --------------------------------------------------------------------------- the tiny VAE
#
# The tiny VAE is exact rather than random: its encoder takes the mean colour of
# each 4x4 pixel block (latent channels R, G, B and their sum) and its decoder paints
# each block in that colour, so decode -> encode returns the latents (up to 8-bit
# rounding). That is what lets the planted-concept test go through real image files.
# It is built inside the ordinary AutoencoderKL layout: every residual branch and
# attention output is zeroed (those blocks become identities), 2x2 averages and
# nearest upsampling are set in the (down|up)sampling convolutions, and each
# GroupNorm sees channel pairs (+x, -x) next to a large constant pair (+K, -K):
# the group mean is then exactly 0 and its spread ~K, so the norm only rescales,
# and SiLU(a) - SiLU(-a) = a undoes the activation.

_ANCHOR = 100.0


def _exact_vae(vae: Any) -> None:
    import torch

    k = _ANCHOR
    enc, dec = vae.encoder, vae.decoder
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
        # With conv2 and to_out zeroed (above), every resnet and attention is an identity.
        # encoder: RGB -> 2x2 mean -> 2x2 mean, laid out as (+c, -c) pairs and an anchor pair
        for c in range(3):
            enc.conv_in.weight[c, c, 1, 1] = 1.0
            enc.down_blocks[0].downsamplers[0].conv.weight[c, c, 0:2, 0:2] = 0.25
            enc.down_blocks[1].resnets[0].conv_shortcut.weight[c, c, 0, 0] = 1.0
            down = enc.down_blocks[1].downsamplers[0].conv
            down.weight[2 * c, c, 0:2, 0:2] = 0.25
            down.weight[2 * c + 1, c, 0:2, 0:2] = -0.25
        down.bias[6], down.bias[7] = k, -k
        # the last GroupNorm has 8 channels per group: (R,-R,G,-G,B,-B,K,-K); spread K/2
        sigma = k / 2
        for c in range(3):
            enc.conv_out.weight[c, 2 * c, 1, 1] = sigma
            enc.conv_out.weight[c, 2 * c + 1, 1, 1] = -sigma
            enc.conv_out.weight[3, 2 * c, 1, 1] = sigma / 3**0.5
            enc.conv_out.weight[3, 2 * c + 1, 1, 1] = -sigma / 3**0.5
        enc.conv_out.bias[4:] = -14.0  # log-variance: a nearly deterministic posterior
        for q in (vae.quant_conv, vae.post_quant_conv):
            for c in range(q.weight.shape[0]):
                q.weight[c, c, 0, 0] = 1.0
        # decoder: latents R, G, B -> nearest x2 -> nearest x2 -> (+c, -c, K, -K) groups
        for c in range(3):
            dec.conv_in.weight[c, c, 1, 1] = 1.0
            for block in dec.up_blocks[:2]:
                block.upsamplers[0].conv.weight[c, c, 1, 1] = 1.0
            short = dec.up_blocks[2].resnets[0].conv_shortcut
            short.weight[4 * c, c, 0, 0] = 1.0
            short.weight[4 * c + 1, c, 0, 0] = -1.0
            short.bias[4 * c + 2], short.bias[4 * c + 3] = k, -k
            dec.conv_out.weight[c, 4 * c, 1, 1] = k / 2**0.5
            dec.conv_out.weight[c, 4 * c + 1, 1, 1] = -k / 2**0.5


def _build(name: str, folder: Path) -> None:
    """Build tiny model ``name`` from its fixed seed and save it into ``folder``."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tok_dir = folder / "_tok"
    _write_tokenizer(tok_dir / "tokenizer", pad_token="<|endoftext|>")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir / "tokenizer")
    vocab = tokenizer.get_vocab()
    latent = TINY_RESOLUTION // 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        text_encoder = CLIPTextModel(
            _text_config(vocab, width=768, heads=12, act="quick_gelu")
        ).eval()
        if name == "tiny-sd1":
            unet = UNet2DConditionModel(
                sample_size=latent,
                in_channels=4,
                out_channels=4,
                block_out_channels=(32, 64),
                layers_per_block=1,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=768,
                attention_head_dim=8,
                norm_num_groups=8,
            )
            pipe = StableDiffusionPipeline(
                vae=_vae(_LATENT_SCALE),
                text_encoder=text_encoder,
                tokenizer=tokenizer,
                unet=unet,
                scheduler=_scheduler(),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
            )
        elif name == "tiny-sdxl":
            _write_tokenizer(tok_dir / "tokenizer_2", pad_token="!")
            tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir / "tokenizer_2")
            text_encoder_2 = CLIPTextModelWithProjection(
                _text_config(vocab, width=1280, heads=20, act="gelu")
            ).eval()
            unet = UNet2DConditionModel(
                sample_size=latent,
                in_channels=4,
                out_channels=4,
                block_out_channels=(32, 64),
                layers_per_block=1,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=2048,
                attention_head_dim=(4, 8),
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=1280 + 6 * 8,
                norm_num_groups=8,
            )
            pipe = StableDiffusionXLPipeline(
                vae=_vae(_LATENT_SCALE),
                text_encoder=text_encoder,
                text_encoder_2=text_encoder_2,
                tokenizer=tokenizer,
                tokenizer_2=tokenizer_2,
                unet=unet,
                scheduler=_scheduler(),
                force_zeros_for_empty_prompt=True,
                add_watermarker=False,
            )
        else:  # pragma: no cover - guarded by the caller
            raise KeyError(name)
        _exact_vae(pipe.vae)
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(tok_dir)
    (folder / "conceptlib-tiny.json").write_text(
        json.dumps({"name": name, "model_id": TINY_MODELS[name], "version": TINY_VERSION}),
        encoding="utf-8",
    )


def tiny_path(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where tiny model ``name`` is (or will be) cached."""
    if cache_dir is None:
        from conceptlib.config import load_settings

        cache_dir = load_settings().cache_dir
    return Path(cache_dir) / "tiny" / f"{name}-v{TINY_VERSION}"


def ensure_tiny(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Build tiny model ``name`` into the cache unless it is there; return its folder.

    The folder appears atomically (built in a temporary sibling, then renamed), so a
    killed build or two processes building at once never leave a half-written model.
    """
    if name not in TINY_MODELS:
        raise KeyError(name)
    target = tiny_path(name, cache_dir)
    if (target / "conceptlib-tiny.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        with quiet_libraries():
            _build(name, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "conceptlib-tiny.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tiny(
    name: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    dtype: Any = None,
) -> Any:
    """Load tiny model ``name`` (building it on first use) as a diffusers pipeline."""
    import torch
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    folder = ensure_tiny(name, cache_dir)
    cls = StableDiffusionXLPipeline if name == "tiny-sdxl" else StableDiffusionPipeline
    pipe = cls.from_pretrained(
        folder, local_files_only=True, **_dtype_kwargs(dtype or torch.float32)
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)

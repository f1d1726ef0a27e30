"""Training throughput: conceptlib's textual-inversion step vs a plain reference loop.

Both run in one process on the same models, interleaved (ours, reference, ours,
reference...), with the same batch, resolution, dtype and attention kernel, and
gradient checkpointing off on both. Per-step time is ``(T(long) - T(short)) /
(long - short)`` so start-up and compilation do not count.

* **ours**: :class:`conceptlib.trainer.loop.TextualInversion`: VAE posterior cached
  once, frozen models in the run's dtype, one fp32 ``[n, d]`` parameter merged into
  the frozen table, templates tokenized once, no host sync in the step, fused AdamW
  on CUDA, optional ``torch.compile`` (``--compile``).
* **reference**: what the common scripts do (diffusers' ``textual_inversion.py``):
  the VAE encodes the batch every step, the whole token-embedding matrix is in the
  optimizer (AdamW, weight decay 1e-2) and the other rows are copied back after each
  step, the text encoder stays fp32 under autocast, prompts are tokenized every
  step, and the loss is read with ``.item()`` every step.

Models: on a GPU (``--size full``, the default there) SD 1.5 and SDXL shaped models
built from config with random weights (configs in docs of the reference study:
UNet 859.5 M / 2567.5 M parameters, CLIP ViT-L and OpenCLIP bigG text towers, a
synthetic 49408-token tokenizer); speed does not depend on weight values. On a CPU
(``--size tiny``, the default there) the built-in tiny-sd1 / tiny-sdxl: a smoke test.

Reported per model: ms/step, samples/s, speed-up, executed and useful TFLOP per step
(counted with ``torch.utils.flop_counter``; useful = UNet forward + backward to its
inputs + text encoder forward + backward, i.e. our step), MFU against ``--peak-tflops``
(default 800, H100/H200 dense bf16; none on a CPU), and peak GPU memory.

Usage:
    python bench/train_throughput.py                       # auto: full on CUDA, tiny on CPU
    python bench/train_throughput.py --model sd15 --batch 8 --resolution 512 --compile
    python bench/train_throughput.py --json out.json --markdown
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from conceptlib.models import BaseModel, load_base, quiet_libraries  # noqa: E402
from conceptlib.schemas.enums import Family  # noqa: E402
from conceptlib.trainer.loop import TextualInversion  # noqa: E402
from conceptlib.trainer.templates import OBJECT_TEMPLATES  # noqa: E402

PEAK_TFLOPS = 800.0


# --------------------------------------------------------------------------- models


def synthetic_tokenizer(size: int = 49408) -> Any:
    """A CLIP tokenizer with ``size`` entries: the tiny vocabulary padded with filler."""
    from transformers import CLIPTokenizer

    from conceptlib.models.tiny import build_vocab

    vocab, merges = build_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])][:-2]
    tokens += [f"filler{i}</w>" for i in range(size - 2 - len(tokens))]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={t: i for i, t in enumerate(tokens)}, merges=merges, model_max_length=77
    )


def _text_encoder(
    tok: Any, *, width: int, layers: int, heads: int, ffn: int, act: str, proj: bool
) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=width, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, projection_dim=width,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
    )  # fmt: skip
    return (CLIPTextModelWithProjection if proj else CLIPTextModel)(cfg)


def full_size(model: str, device: str, dtype: torch.dtype) -> BaseModel:
    """SD 1.5 / SDXL shaped pipelines with random weights (configs: docs' reference study)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    tok = synthetic_tokenizer()
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False)  # fmt: skip
    vae_kw = dict(
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
    )  # fmt: skip
    with torch.device(device):  # initialise on the device: much faster than on the CPU
        if model == "sd15":
            unet = UNet2DConditionModel(
                sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                cross_attention_dim=768, attention_head_dim=8,
            )  # fmt: skip
            te = _text_encoder(
                tok, width=768, layers=12, heads=12, ffn=3072, act="quick_gelu", proj=False
            )
            pipe = StableDiffusionPipeline(
                vae=AutoencoderKL(**vae_kw, scaling_factor=0.18215), text_encoder=te, tokenizer=tok,
                unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False,
            )  # fmt: skip
            family = Family.SD1
        else:
            unet = UNet2DConditionModel(
                sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                cross_attention_dim=2048, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
            )  # fmt: skip
            te = _text_encoder(
                tok, width=768, layers=12, heads=12, ffn=3072, act="quick_gelu", proj=False
            )
            te2 = _text_encoder(
                tok, width=1280, layers=32, heads=20, ffn=5120, act="gelu", proj=True
            )
            pipe = StableDiffusionXLPipeline(
                vae=AutoencoderKL(**vae_kw, scaling_factor=0.13025, force_upcast=True),
                text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=copy.deepcopy(tok),
                unet=unet, scheduler=sched, add_watermarker=False,
            )  # fmt: skip
            family = Family.SDXL
    pipe.to(device, dtype)
    return BaseModel(pipe, family, "bench", f"bench-{model}", f"bench/{model}", device, dtype)


# --------------------------------------------------------------------------- the two loops


class Reference:
    """The common scripts' step: VAE every step, whole matrix optimized, rows restored."""

    def __init__(self, bm: BaseModel, pixels: np.ndarray, batch: int, seed: int) -> None:
        self.bm, self.batch = bm, batch
        self.device = torch.device(bm.device)
        self.dtype = bm.dtype
        pipe = bm.pipeline
        self.unet, self.vae = pipe.unet, pipe.vae
        self.slots = []
        for s in bm.slots:
            tok = copy.deepcopy(s.tokenizer)
            tok.add_tokens(["<ref-token>"])
            enc = copy.deepcopy(s.encoder).float()  # fp32 text encoder, autocast outside
            enc.requires_grad_(False)
            enc.resize_token_embeddings(len(tok), mean_resizing=False)
            table = enc.get_input_embeddings().weight
            table.requires_grad_(True)
            self.slots.append(
                (tok, enc, table, table.detach().clone(), tok.convert_tokens_to_ids("<ref-token>"))
            )
        self.optimizer = torch.optim.AdamW([s[2] for s in self.slots], lr=5e-3, weight_decay=1e-2)
        self.pixels = torch.from_numpy(pixels).to(self.device)
        self.templates = [t.format("<ref-token>") for t in OBJECT_TEMPLATES]
        self.alphas = pipe.scheduler.alphas_cumprod.to(self.device)
        self.rng = np.random.default_rng(seed)
        self.g = torch.Generator(device=self.device).manual_seed(seed)
        self.last_loss = 0.0

    def step(self) -> None:
        b = self.batch
        idx = self.rng.integers(0, self.pixels.shape[0], b)
        x = self.pixels[torch.as_tensor(idx, device=self.device)]
        flip = torch.as_tensor(self.rng.random(b) < 0.5, device=self.device).view(-1, 1, 1, 1)
        x = torch.where(flip, torch.flip(x, dims=[3]), x)
        prompts = [self.templates[i] for i in self.rng.integers(0, len(self.templates), b)]
        autocast = torch.autocast(
            self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
        )
        with autocast:
            with torch.no_grad():
                vae_dtype = torch.float32 if self.vae.dtype == torch.float32 else self.dtype
                z = self.vae.encode(x.to(vae_dtype)).latent_dist.sample(self.g)
                z = z * self.vae.config.scaling_factor
            noise = torch.randn(z.shape, generator=self.g, device=self.device, dtype=z.dtype)
            t = torch.randint(0, 1000, (b,), generator=self.g, device=self.device)
            a = self.alphas[t].view(-1, 1, 1, 1)
            noisy = a.sqrt() * z + (1 - a).sqrt() * noise
            hidden, pooled = [], None
            for tok, enc, *_ in self.slots:
                ids = tok(
                    prompts,
                    padding="max_length",
                    max_length=77,
                    truncation=True,
                    return_tensors="pt",
                )
                out = enc(ids.input_ids.to(self.device), output_hidden_states=True)
                if self.bm.family == Family.SDXL:
                    hidden.append(out.hidden_states[-2])
                    pooled = out[0] if out[0].ndim == 2 else pooled
                else:
                    hidden.append(out.last_hidden_state)
            kwargs = {}
            if self.bm.family == Family.SDXL:
                r = x.shape[-1]
                time_ids = torch.tensor([[r, r, 0, 0, r, r]], device=self.device).repeat(b, 1)
                kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
            pred = self.unet(
                noisy.to(self.dtype), t, torch.cat(hidden, -1).to(self.dtype), **kwargs
            ).sample
            loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for _, _, table, original, new_id in self.slots:
                keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)
                keep[new_id] = False
                table[keep] = original[keep]
        self.last_loss = loss.detach().item()  # the scripts log it every step


# --------------------------------------------------------------------------- timing


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(step: Any, n: int, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return time.perf_counter() - start


def flops_of(step: Any) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def bench_base(model: str, args: argparse.Namespace) -> tuple[BaseModel, int]:
    """The base model of a benchmark (full size from config, or tiny) and its resolution."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.precision]
    with quiet_libraries():
        if args.size == "full":
            bm = full_size(model, args.device, dtype)
        else:
            bm = load_base(
                "tiny-sd1" if model == "sd15" else "tiny-sdxl", device=args.device, dtype=dtype
            )
    native = (1024 if model == "sdxl" else 512) if args.size == "full" else 32
    return bm, args.resolution or native


def bench_model(model: str, args: argparse.Namespace) -> dict[str, Any]:
    device = args.device
    bm, res = bench_base(model, args)
    rng = np.random.default_rng(0)
    pixels = rng.uniform(-1, 1, (max(8, args.batch), 3, res, res)).astype(np.float32)
    ref = Reference(bm, pixels, args.batch, seed=0)  # before ours swaps the embedding layer
    ours = TextualInversion(bm, pixels, OBJECT_TEMPLATES, name="bench", init="toy", batch=args.batch,
                            total_steps=args.long + 8, compile=args.compile,
                            cuda_graphs=args.cuda_graphs and device.startswith("cuda"),
                            gradient_checkpointing=args.checkpointing)  # fmt: skip
    runners = {"ours": ours.step, "reference": ref.step}
    for step in runners.values():  # warm-up (and compilation)
        for _ in range(args.warmup):
            step()
    flops = {k: flops_of(step) for k, step in runners.items()} if not args.compile else {}
    per_step: dict[str, list[float]] = {k: [] for k in runners}
    peak: dict[str, float] = {}
    for _ in range(args.rounds):
        for k, step in runners.items():  # interleaved A/B
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            short = timed(step, args.short, device)
            long = timed(step, args.long, device)
            per_step[k].append((long - short) / (args.long - args.short))
            if device.startswith("cuda"):
                peak[k] = max(peak.get(k, 0.0), torch.cuda.max_memory_allocated() / 2**30)
    ours.close()
    out: dict[str, Any] = {
        "model": model,
        "size": args.size,
        "batch": args.batch,
        "resolution": res,
    }
    useful = flops.get("ours")
    for k in runners:
        s = statistics.median(per_step[k])
        row = {"ms_per_step": s * 1e3, "samples_per_s": args.batch / s, "steps_per_s": 1 / s}
        if k in flops:
            row["executed_tflop_per_step"] = flops[k] / 1e12
        if useful and device.startswith("cuda"):
            row["mfu"] = useful * (1 / s) / (args.peak_tflops * 1e12)
        if k in peak:
            row["peak_gib"] = peak[k]
        out[k] = row
    if useful:
        out["useful_tflop_per_step"] = useful / 1e12
    out["speedup"] = out["ours"]["steps_per_s"] / out["reference"]["steps_per_s"]
    return out


def markdown(results: list[dict[str, Any]], args: argparse.Namespace, machine: str) -> str:
    lines = [
        f"Machine: {machine}. Precision {args.precision}, batch {args.batch}, "
        f"per-step time = (T({args.long}) - T({args.short})) / {args.long - args.short}, "
        f"median of {args.rounds} interleaved rounds.",
        "",
        "| model | size | res | loop | ms/step | samples/s | executed TFLOP/step | MFU | peak GiB | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for k in ("ours", "reference"):
            row = r[k]
            mfu = f"{row['mfu']:.1%}" if "mfu" in row else "n/a"
            peak = f"{row['peak_gib']:.1f}" if "peak_gib" in row else "n/a"
            ex = (
                f"{row['executed_tflop_per_step']:.4g}"
                if "executed_tflop_per_step" in row
                else "n/a"
            )
            speed = f"**{r['speedup']:.2f}x**" if k == "ours" else "1.00x"
            lines.append(
                f"| {r['model']} | {r['size']} | {r['resolution']} | {k} | {row['ms_per_step']:.1f} | "
                f"{row['samples_per_s']:.2f} | {ex} | {mfu} | {peak} | {speed} |"
            )
    useful = ", ".join(
        f"{r['model']} {r['useful_tflop_per_step']:.4g}"
        for r in results
        if "useful_tflop_per_step" in r
    )
    if useful:
        lines += ["", f"Useful TFLOP per step (our step, counted): {useful}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["sd15", "sdxl", "both"], default="both")
    p.add_argument("--size", choices=["full", "tiny"], default="full" if cuda else "tiny")
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument(
        "--precision", choices=["bf16", "fp16", "fp32"], default="bf16" if cuda else "fp32"
    )
    p.add_argument("--batch", type=int, default=8 if cuda else 4)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--short", type=int, default=100 if cuda else 3)
    p.add_argument("--long", type=int, default=600 if cuda else 15)
    p.add_argument("--warmup", type=int, default=10 if cuda else 2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile our UNet")
    p.add_argument("--cuda-graphs", action="store_true", help="our step as one CUDA graph")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (ours)")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS)
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--plan", type=int, default=0, metavar="N",
                   help="plan mode: N concepts x --batch against one concept at N x --batch "
                   "(bench/plan_throughput.py)")  # fmt: skip
    args = p.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = True
    machine = (
        f"{torch.cuda.get_device_name()} , torch {torch.__version__}"
        if cuda
        else f"{platform.processor() or platform.machine()} CPU x{torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    models = ["sd15", "sdxl"] if args.model == "both" else [args.model]
    if args.plan:
        from plan_throughput import bench_plan, plan_markdown

        results = [bench_plan(m, args) for m in models]
        markdown_of: Any = plan_markdown
    else:
        results = [bench_model(m, args) for m in models]
        markdown_of = markdown
    payload = {
        "machine": machine,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(payload, indent=2))
    print(markdown_of(results, args, machine) if args.markdown else json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()

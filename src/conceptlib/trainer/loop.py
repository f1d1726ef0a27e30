"""The textual-inversion step: only the new rows learn.

:class:`TextualInversion` holds everything one run needs on the device:

* one fp32 parameter ``[n, d]`` per text-encoder slot, merged into the frozen
  token-embedding lookup by :class:`MergedEmbedding` (placeholder ids are the ids
  the tokenizer gave the new tokens, just past the frozen table); the frozen table,
  the encoders, the UNet and the VAE never receive gradients or updates;
* the templates, tokenized once per tokenizer;
* the VAE posterior (mean, std) of every image and of its mirror image, encoded
  once; each step samples ``z = mean + std * eps``;
* one seeded ``torch.Generator`` for every random draw, so a run is reproducible and
  a checkpoint that stores the generator state resumes bit-for-bit.

A step does no host synchronisation: the loss is written into a device buffer that
the caller reads every few steps (:meth:`TextualInversion.read_losses`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from conceptlib.errors import TrainingError, UsageError
from conceptlib.schemas.enums import Family
from conceptlib.trainer.images import CropGeometry
from conceptlib.trainer.schedule import LRSchedule

if TYPE_CHECKING:
    import torch

    from conceptlib.models.base import BaseModel
    from conceptlib.trainer.buckets import BucketPixels, LatentBucket


def placeholder_tokens(name: str, n: int) -> list[str]:
    """The tokens standing for the concept inside training prompts: ``<slug_0>``..."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "concept"
    return [f"<{slug}_{i}>" for i in range(n)]


def pooled_index(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Position of the first end-of-text token in each row of ``input_ids``.

    SDXL's pooled text embedding is read there. Taking ``argmax(input_ids)`` instead
    (what CLIP configs with ``eos_token_id == 2`` do) picks the placeholder once new
    tokens with higher ids are added: diffusers' SDXL training script has that bug.
    """
    import torch

    return (input_ids == eos_token_id).to(torch.int32).argmax(dim=-1)


def _make_merged_embedding_class() -> type:
    import torch

    class MergedEmbedding(torch.nn.Module):
        """A frozen ``nn.Embedding`` with trainable rows for ids ``first_id ..``."""

        def __init__(self, frozen: torch.nn.Embedding, rows: torch.nn.Parameter, first_id: int):
            super().__init__()
            self.frozen = frozen
            # A list keeps the parameter out of the encoder's parameters(): its dtype
            # and device queries keep answering for the frozen weights.
            self._rows = [rows]
            self.first_id = first_id

        @property
        def weight(self) -> torch.Tensor:
            return self.frozen.weight

        @property
        def rows(self) -> torch.nn.Parameter:
            return self._rows[0]

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            rows = self._rows[0]
            is_new = input_ids >= self.first_id
            base = self.frozen(torch.where(is_new, torch.zeros_like(input_ids), input_ids))
            offset = (input_ids - self.first_id).clamp(0, rows.shape[0] - 1)
            new = rows[offset].to(base.dtype)
            return torch.where(is_new.unsqueeze(-1), new, base)

    return MergedEmbedding


@dataclass
class InitReport:
    """How the initializer word became the initial vectors of one slot."""

    slot: str
    tokens: list[str]
    token_ids: list[int]
    vectors: int

    def message(self, init: str) -> str | None:
        k = len(self.tokens)
        shown = ", ".join(self.tokens)
        if k == 1:
            if self.vectors > 1:
                return (
                    f"{self.slot}: initializer {init!r} is one token; all {self.vectors} vectors "
                    "start from it"
                )
            return None
        if self.vectors >= k:
            return (
                f"{self.slot}: initializer {init!r} is {k} tokens ({shown}); the {self.vectors} "
                f"vectors cycle through them (vector i starts from token i mod {k})"
            )
        return (
            f"{self.slot}: initializer {init!r} is {k} tokens ({shown}) but there are only "
            f"{self.vectors} vector(s); cycling uses the first {self.vectors} "
            f"({', '.join(self.tokens[: self.vectors])})"
        )


class TextualInversion:
    """One textual-inversion run on a loaded base model.

    Args:
        base: the loaded frozen base model (its tokenizers get the placeholder tokens).
        pixels: ``[N, 3, r, r]`` float32 images in [-1, 1].
        templates: prompt templates, each with one ``{}``.
        name: concept name (used to make the placeholder tokens).
        init: initializer text; its tokens give the initial vectors (cycled).
        vectors: number of vectors per slot.
        lr: AdamW learning rate.
        batch: images per step.
        seed: seed of the run's generator.
        weight_decay: AdamW weight decay on the new rows.
        flip: also cache mirrored images and sample them half the time.
        compile: wrap the UNet in ``torch.compile``: ``True`` for the default (inductor)
            backend, or a backend's name (``"aot_eager"`` traces without generating code).
        image_templates: per image, one format string per template (captions filled in,
            :func:`~conceptlib.trainer.captions.image_templates`); ``templates`` then only
            names the run's templates. ``pixels`` may instead be a list of
            :class:`~conceptlib.trainer.buckets.BucketPixels` (aspect-ratio buckets).

    The encoders' embedding layers are swapped for :class:`MergedEmbedding` until
    :meth:`close` (also on a failure inside the constructor).
    """

    def __init__(
        self,
        base: BaseModel,
        pixels: np.ndarray | Sequence[BucketPixels],
        templates: Sequence[str],
        *,
        name: str,
        init: str,
        vectors: int = 1,
        lr: float = 5e-3,
        batch: int = 4,
        seed: int = 0,
        weight_decay: float = 0.0,
        flip: bool = True,
        compile: bool | str = False,
        total_steps: int = 1,
        geometry: Sequence[CropGeometry] | None = None,
        prediction_type: str | None = None,
        zero_terminal_snr: bool = False,
        clip_skip: int = 1,
        lr_schedule: LRSchedule | None = None,
        image_templates: Sequence[Sequence[str]] | None = None,
        init_vectors: dict[str, np.ndarray] | None = None,
        accumulate: int = 1,
        gradient_checkpointing: bool = False,
        cuda_graphs: bool = False,
    ) -> None:
        import torch

        self.base = base
        self._init_vectors = init_vectors  # --init-from: the starting rows, by slot
        self.device = torch.device(base.device)
        self.dtype = base.dtype
        self.family = base.family
        self.batch = int(batch)
        self.num_vectors = int(vectors)
        self.step_count = 0
        self.clip_skip = int(clip_skip)
        self.lr_schedule = lr_schedule or LRSchedule(((float(lr), None),), steps=total_steps)
        pipe = base.pipeline
        self._scheduler = pipe.scheduler  # put back by close()
        self.unet = pipe.unet
        self.vae = pipe.vae
        for module in (pipe.unet, pipe.vae, *(s.encoder for s in base.slots)):
            module.requires_grad_(False)
            module.eval()
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        # Picks each step's aspect-ratio bucket on the host (no device sync).
        self.bucket_generator = torch.Generator().manual_seed(int(seed))
        self.buckets: list[LatentBucket] | None = None
        self.latent_image: torch.Tensor | None = None  # image of each latent row (captions)
        self._merged: list[tuple[Any, Any, Any]] = []  # (encoder, original, merged)
        self.accumulate = int(accumulate)  # micro-batches of `batch` per optimizer step
        self.notes: list[str] = []  # lines for the run's log (pop_notes)
        self._graph: Any = None  # fast_step.CudaGraphStep when the step is a CUDA graph
        self._lr: Any = None  # its learning rate, a device tensor
        self._checkpointing = False
        self.attention: dict[str, Any] | None = None  # the SDPA backend chosen on CUDA
        self._compile_timed = not compile
        try:
            check_clip_skip(base, self.clip_skip)
            self._setup(pixels, templates, name=name, init=init, lr=lr, weight_decay=weight_decay,
                        flip=flip, compile=compile, total_steps=total_steps, geometry=geometry,
                        prediction_type=prediction_type, image_templates=image_templates,
                        zero_terminal_snr=zero_terminal_snr)  # fmt: skip
            self._configure_step(gradient_checkpointing, cuda_graphs)
        except BaseException:
            self.close()
            raise

    def _setup(
        self,
        pixels: np.ndarray | Sequence[BucketPixels],
        templates: Sequence[str],
        *,
        name: str,
        init: str,
        lr: float,
        weight_decay: float,
        flip: bool,
        compile: bool | str,
        total_steps: int,
        geometry: Sequence[CropGeometry] | None,
        prediction_type: str | None,
        zero_terminal_snr: bool,
        image_templates: Sequence[Sequence[str]] | None = None,
    ) -> None:
        import torch

        base, pipe = self.base, self.base.pipeline
        # ---- placeholder tokens and trainable rows
        self.tokens = placeholder_tokens(name, self.num_vectors)
        self.placeholder_text = " ".join(self.tokens)
        self.params: dict[str, torch.nn.Parameter] = {}
        self.init_reports: list[InitReport] = []
        merged_cls = _make_merged_embedding_class()
        for slot in base.slots:
            tok, enc = slot.tokenizer, slot.encoder
            frozen = enc.get_input_embeddings()
            vocab = int(frozen.weight.shape[0])
            # A previous run on this pipeline may have added them already: reuse those.
            known = tok.get_vocab()
            tok.add_tokens([t for t in self.tokens if t not in known])
            ids = tok.convert_tokens_to_ids(self.tokens)
            if ids != list(range(ids[0], ids[0] + len(ids))) or ids[0] < vocab:
                raise TrainingError(
                    f"{slot.slot} tokenizer gave the placeholder tokens ids {ids}; expected "
                    f"consecutive ids from {vocab} (the size of its embedding table)"
                )
            if self._init_vectors is not None:  # --init-from: a registered entry's rows
                start = torch.as_tensor(self._init_vectors[slot.slot], dtype=torch.float32)
                self._add_rows(slot, start, ids[0], merged_cls)
                continue
            init_ids = tok(init, add_special_tokens=False).input_ids
            if not init_ids:
                raise UsageError(
                    f"--init {init!r} has no tokens in the {slot.slot} tokenizer; expected "
                    "word(s) close to the concept"
                )
            pieces = tok.convert_ids_to_tokens(init_ids)
            added = [t for t, i in zip(pieces, init_ids, strict=True) if i >= vocab]
            if added:
                # Tokens past the frozen table (this run's placeholders, or tokens an
                # earlier run or loader added to this pipeline) have no vector to start from.
                raise UsageError(
                    f"--init {init!r} holds {', '.join(map(repr, added))}, added to the "
                    f"{slot.slot} tokenizer after the model was made; expected word(s) of "
                    "the base model's own vocabulary",
                    hint="pass ordinary word(s) close to the concept, e.g. --init toy",
                )
            report = InitReport(slot.slot, pieces, list(init_ids), self.num_vectors)
            self.init_reports.append(report)
            table = frozen.weight.detach()
            rows = [init_ids[i % len(init_ids)] for i in range(self.num_vectors)]
            start = table[torch.tensor(rows, device=table.device)].float()
            self._add_rows(slot, start, ids[0], merged_cls)

        # ---- templates, tokenized once per tokenizer
        self.templates = list(templates)
        rows = self.templates
        if image_templates is not None:  # row image * T + template: T prompts per image
            rows = [t for per in image_templates for t in per]
            self.templates = list(image_templates[0])  # previews: the first image's prompts
        prompts = [t.format(self.placeholder_text) for t in rows]
        self.template_ids = [self._tokenize(s, prompts) for s in base.slots]
        first = self.template_ids[0]
        start_id = self._merged[0][2].first_id
        present = (first >= start_id).sum(dim=1)
        if bool((present != self.num_vectors).any()):
            i = int((present != self.num_vectors).nonzero()[0, 0])
            what = f"template {rows[i]!r}" if image_templates is None else (
                f"the prompt of image {i // len(self.templates) + 1}")  # fmt: skip
            raise TrainingError(f"{what} is too long: the placeholder falls outside 77 tokens")
        self.eos_ids = [int(s.tokenizer.eos_token_id) for s in base.slots]

        # ---- noise schedule
        sched = pipe.scheduler.config
        self.prediction_type = prediction_type or sched.get("prediction_type", "epsilon")
        self.zero_terminal_snr = bool(zero_terminal_snr or sched.get("rescale_betas_zero_snr"))
        from diffusers import DDPMScheduler

        # diffusers' own rescale (rescale_zero_terminal_snr, Lin et al. 2023, "Common
        # Diffusion Noise Schedules and Sample Steps are Flawed", algorithm 1).
        ddpm = DDPMScheduler.from_config(
            sched,
            prediction_type=self.prediction_type,
            rescale_betas_zero_snr=self.zero_terminal_snr,
        )
        pipe.scheduler = sampling_scheduler(
            pipe.scheduler, self.prediction_type, self.zero_terminal_snr
        )
        self.num_train_timesteps = int(ddpm.config.num_train_timesteps)
        self.alphas_cumprod = ddpm.alphas_cumprod.to(self.device, torch.float32)

        # ---- images: VAE posterior of each image and its mirror, once
        if not isinstance(pixels, np.ndarray):  # aspect-ratio buckets
            from conceptlib.trainer.buckets import encode_buckets

            self.resolution = int(pixels[0].resolution)
            self.buckets = encode_buckets(self, pixels, flip=flip)
            self.bucket_weights = torch.tensor([float(b.count) for b in self.buckets])
        else:
            self.resolution = int(pixels.shape[-1])
            if image_templates is not None:
                n = int(pixels.shape[0])
                self.latent_image = torch.arange(n, device=self.device).repeat(2 if flip else 1)
            self.mean, self.std = self._encode_images(pixels, flip=flip)
            self.num_latents = int(self.mean.shape[0])
        if self.family == Family.SDXL and self.buckets is None:
            # Per cached latent: its image's original size and crop corner (the mirrored
            # latents with the mirrored left offset), as diffusers' SDXL scripts do.
            r = self.resolution
            geo = list(geometry) if geometry is not None else None
            if geo is not None and len(geo) != int(pixels.shape[0]):
                raise TrainingError(f"{len(geo)} crop geometries for {int(pixels.shape[0])} images")
            rows = (
                [g.time_ids(r) for g in geo]
                if geo is not None
                else [[r, r, 0, 0, r, r]] * len(pixels)
            )
            if flip:
                rows += (
                    [g.time_ids(r, flipped=True) for g in geo]
                    if geo is not None
                    else [[r, r, 0, 0, r, r]] * len(pixels)
                )
            self.add_time_ids = torch.tensor(rows, device=self.device, dtype=torch.float32)

        # ---- optimizer and loss buffer
        # Fused AdamW keeps its step counter on the device and never reads it back
        # (the for-each version calls .item() on it every step). CPUs have it since
        # torch 2.4; older ones fall back.
        params = list(self.params.values())
        try:
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:  # pragma: no cover - torch < 2.4 on a CPU
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.dtype == torch.float16 else None
        )
        self.loss_buffer = torch.zeros(max(1, total_steps), device=self.device, dtype=torch.float32)
        if self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
        self.unet_fn = self.unet
        if compile:
            backend = compile if isinstance(compile, str) else "inductor"
            self.unet_fn = torch.compile(self.unet, dynamic=False, backend=backend)

    # ------------------------------------------------------------------ set-up helpers

    def _add_rows(self, slot: Any, start: torch.Tensor, first_id: int, merged_cls: type) -> None:
        """Train ``start`` (``[n, d]``) as the rows of ids ``first_id``... of ``slot``."""
        import torch

        enc = slot.encoder
        frozen = enc.get_input_embeddings()
        param = torch.nn.Parameter(start.to(self.device, torch.float32).clone())
        self.params[slot.slot] = param
        merged = merged_cls(frozen, param, first_id)
        enc.set_input_embeddings(merged)
        self._merged.append((enc, frozen, merged))

    def _tokenize(self, slot: Any, prompts: list[str]) -> torch.Tensor:
        tok = slot.tokenizer
        length = min(int(tok.model_max_length), int(slot.encoder.config.max_position_embeddings))
        ids = tok(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        return ids.input_ids.to(self.device)

    def _encode_images(
        self, pixels: np.ndarray, *, flip: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        vae = self.vae
        cfg = vae.config
        upcast = bool(cfg.get("force_upcast", False)) and self.dtype != torch.float32
        vae_dtype = torch.float32 if upcast else self.dtype
        if upcast:
            vae.to(torch.float32)
        x = torch.from_numpy(pixels)
        if flip:
            x = torch.cat([x, torch.flip(x, dims=[3])])
        scale = float(cfg.scaling_factor)
        shift = float(cfg.get("shift_factor", None) or 0.0)
        means, stds = [], []
        with torch.no_grad():
            for chunk in x.split(4):
                dist = vae.encode(chunk.to(self.device, vae_dtype)).latent_dist
                means.append((dist.mean.float() - shift) * scale)
                stds.append(dist.std.float() * scale)
        if upcast:
            vae.to(self.dtype)
        return torch.cat(means), torch.cat(stds)

    # ------------------------------------------------------------------ model calls

    def encode_prompts(
        self, ids: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text conditioning the way the diffusers pipelines build it, from token ids.

        SD 1.x/2.x: the last hidden state; with ``clip_skip`` N > 1 the output of the
        N-th layer from the end, through the encoder's final layer norm (A1111's CLIP
        skip; diffusers' ``clip_skip=N-1``). SDXL: both encoders' hidden states
        ``clip_skip`` layers before the last (1: the penultimate, stock SDXL)
        concatenated, and the pooled embedding of the second encoder read at the
        end-of-text token (:func:`pooled_index`) of its last layer, then projected.
        """
        import torch

        from conceptlib.models.clip_skip import select_hidden

        slots = self.base.slots
        n = self.clip_skip
        if self.family != Family.SDXL:
            enc = slots[0].encoder
            out = enc(ids[0], output_hidden_states=n > 1)
            return select_hidden(enc, out, n, sdxl=False), None
        out_l = slots[0].encoder(ids[0], output_hidden_states=True)
        out_g = slots[1].encoder(ids[1], output_hidden_states=True)
        idx = pooled_index(ids[1], self.eos_ids[1])
        last = out_g.last_hidden_state
        pooled = slots[1].encoder.text_projection(
            last[torch.arange(last.shape[0], device=last.device), idx]
        )
        pairs = zip(slots, (out_l, out_g), strict=True)
        hidden = [select_hidden(s.encoder, o, n, sdxl=True) for s, o in pairs]
        return torch.cat(hidden, dim=-1), pooled

    def encode_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encode_prompts([self._tokenize(s, list(texts)) for s in self.base.slots])

    def _unet(
        self,
        noisy: torch.Tensor,
        t: torch.Tensor,
        emb: torch.Tensor,
        pooled: Any,
        time_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs: dict[str, Any] = {}
        if self.family == Family.SDXL:
            kwargs["added_cond_kwargs"] = {
                "text_embeds": pooled.to(self.dtype),
                "time_ids": time_ids.to(self.dtype),
            }
        return self.unet_fn(
            noisy.to(self.dtype), t, encoder_hidden_states=emb.to(self.dtype), **kwargs
        ).sample

    def _draw(self, generator: torch.Generator, batch: int) -> dict[str, Any]:
        import torch

        dev = self.device
        bucket = None
        if self.buckets is None:
            mean = self.mean
        else:  # one bucket per batch, weighted by its image count
            from conceptlib.trainer.buckets import pick_bucket

            own = generator is self.generator
            bucket = pick_bucket(self.bucket_weights, self.bucket_generator if own else generator)
            mean = self.buckets[bucket].mean
        idx = torch.randint(0, int(mean.shape[0]), (batch,), generator=generator, device=dev)
        tmpl = torch.randint(0, len(self.templates), (batch,), generator=generator, device=dev)
        eps = torch.randn((batch, *mean.shape[1:]), generator=generator, device=dev)
        noise = torch.randn(eps.shape, generator=generator, device=dev)
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=dev)
        d = {"idx": idx, "tmpl": tmpl, "eps": eps, "noise": noise, "t": t}
        if bucket is not None:
            d["bucket"] = bucket
        return d

    def _source(self, d: dict[str, Any]) -> tuple[Any, Any, Any, list[Any]]:
        """A draw's latent mean and std, SDXL time ids (``None`` otherwise) and prompt
        token ids per slot (row ``image * T + template`` when prompts are per image)."""
        if "bucket" in d:
            b = self.buckets[d["bucket"]]
            mean, std, time_ids, image = b.mean, b.std, b.time_ids, b.image
        else:
            mean, std, image = self.mean, self.std, self.latent_image
            time_ids = self.add_time_ids if self.family == Family.SDXL else None
        rows = d["tmpl"]
        if image is not None and len(self.template_ids[0]) > len(self.templates):
            rows = image[d["idx"]] * len(self.templates) + d["tmpl"]
        return mean, std, time_ids, [ids[rows] for ids in self.template_ids]

    def _loss(self, d: dict[str, torch.Tensor]) -> torch.Tensor:
        noisy, target, ids, time_ids = self._inputs(d)
        emb, pooled = self.encode_prompts(ids)
        pred = self._unet(noisy, d["t"], emb, pooled, time_ids)
        return compute_loss(pred, target, step=self.step_count)

    def _inputs(self, d: dict[str, torch.Tensor]) -> tuple[Any, Any, list[Any], Any]:
        """A draw's noisy latents, target, token ids per slot and SDXL time ids (a plan
        run, :mod:`conceptlib.trainer.multi`, batches several concepts' inputs)."""
        mean, std, all_time_ids, ids = self._source(d)
        z = mean[d["idx"]] + std[d["idx"]] * d["eps"]
        ab = self.alphas_cumprod[d["t"]].view(-1, 1, 1, 1)
        noisy = ab.sqrt() * z + (1 - ab).sqrt() * d["noise"]
        if self.prediction_type == "v_prediction":
            target = ab.sqrt() * d["noise"] - (1 - ab).sqrt() * z
        elif self.prediction_type == "sample":
            target = z
        else:
            target = d["noise"]
        time_ids = all_time_ids[d["idx"]] if all_time_ids is not None else None
        return noisy, target, ids, time_ids

    # ------------------------------------------------------------------ training

    def _configure_step(self, gradient_checkpointing: bool, cuda_graphs: bool) -> None:
        """Gradient checkpointing, the SDPA backend (CUDA) and the CUDA-graph step
        (:mod:`conceptlib.trainer.fast_step`); undone by :meth:`close`."""
        from conceptlib.trainer import fast_step

        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing(fast_step.checkpoint_function())
            self._checkpointing = True
        if self.device.type == "cuda":
            self.attention = fast_step.choose_attention(
                self.unet, self.device, self.dtype, self.resolution
            )
            self.notes.append(f"attention: {self.attention['backend'] or 'default'} "
                              f"({self.attention['reason']})")  # fmt: skip
        if not cuda_graphs:
            return
        if self.buckets is not None:
            self.notes.append("CUDA graphs: eager step (aspect-ratio buckets change the shape)")
            return
        group = self.optimizer.param_groups[0]
        self.optimizer = fast_step.capturable_optimizer(
            list(self.params.values()), float(group["lr"]), float(group["weight_decay"])
        )
        self._lr = self.optimizer.param_groups[0]["lr"]
        self._graph = fast_step.CudaGraphStep(self, self._optimise)

    @property
    def step_mode(self) -> str:
        """``cuda-graph`` or ``eager``: how :meth:`step` runs now."""
        return "cuda-graph" if self._graph is not None else "eager"

    def pop_notes(self) -> list[str]:
        """Lines for the run's log since the last call (attention choice, compile time,
        a CUDA-graph capture that fell back)."""
        notes, self.notes = self.notes, []
        return notes

    def step(self) -> None:
        """One optimizer step over ``accumulate`` micro-batches of ``batch``; the loss
        (their mean) lands in ``loss_buffer[step]`` (no host sync).

        The ``accumulate * batch`` samples are drawn at once and split, so
        ``accumulate=2, batch=2`` draws and updates what ``batch=4`` does.
        """
        import time

        started = time.perf_counter()
        d = self._draw(self.generator, self.batch * self.accumulate)
        self.set_lr(self.lr_schedule.rate(self.step_count + 1))
        loss = self._graph_step(d) if self._graph is not None else self._optimise(d)
        if self.step_count >= self.loss_buffer.shape[0]:
            self._grow_buffer(self.step_count + 1)
        self.loss_buffer[self.step_count] = loss
        self.step_count += 1
        if not self._compile_timed:  # the first compiled step is mostly compilation
            self._compile_timed = True
            self.notes.append(f"torch.compile: the first step took "
                              f"{time.perf_counter() - started:.1f} s (compiling)")  # fmt: skip

    def _graph_step(self, d: dict[str, Any]) -> torch.Tensor:
        try:
            return self._graph.run(d)
        except RuntimeError as exc:  # capture impossible here: eager from now on
            if self._graph.graph is not None:
                raise
            self._graph = None
            self.notes.append(f"CUDA graphs: capture failed, eager step from now on ({exc})")
            return self._optimise(d)

    def _optimise(self, d: dict[str, Any]) -> torch.Tensor:
        """Zero the gradient, forward and backward each micro-batch of ``d`` (its loss
        divided by their number: the gradient of the mean), one optimizer step. Returns
        the mean loss as a device tensor. The body of the CUDA graph, too."""
        from conceptlib.trainer.fast_step import attention_context

        n, b = self.accumulate, self.batch
        self.optimizer.zero_grad(set_to_none=True)
        total = None
        with attention_context(self.attention):
            for i in range(n):
                part = d if n == 1 else {
                    k: v[i * b : (i + 1) * b] if hasattr(v, "shape") else v for k, v in d.items()
                }  # fmt: skip
                loss = self._loss(part)
                scaled = loss if n == 1 else loss / n
                if self.scaler is not None:
                    self.scaler.scale(scaled).backward()
                else:
                    scaled.backward()
                total = loss.detach() if total is None else total + loss.detach()
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
        return total if n == 1 else total / n

    def _grow_buffer(self, size: int) -> None:
        import torch

        grown = torch.zeros(max(size, 2 * self.loss_buffer.shape[0]), device=self.device)
        grown[: self.loss_buffer.shape[0]] = self.loss_buffer
        self.loss_buffer = grown

    def read_losses(self, start: int, stop: int) -> list[float]:
        """Losses of steps ``start..stop-1`` (0-based): one host sync."""
        return [float(x) for x in self.loss_buffer[start:stop].cpu().tolist()]

    def eval_loss(self, *, draws: int = 64, seed: int = 12345, batch: int | None = None) -> float:
        """Mean loss over ``draws`` fixed (image, template, noise, timestep) draws.

        The draws come from their own generator, so the value only depends on the
        current vectors: compare vectors on equal terms (the planted-concept check).
        """
        import torch

        g = torch.Generator(device=self.device).manual_seed(seed)
        batch = batch or self.batch
        total, seen = 0.0, 0
        with torch.no_grad():
            while seen < draws:
                b = min(batch, draws - seen)
                total += float(self._loss(self._draw(g, b))) * b
                seen += b
        return total / draws

    # ------------------------------------------------------------------ vectors and state

    def vectors(self) -> dict[str, np.ndarray]:
        """The current vectors ``{slot: float32 [n, d]}``."""
        return {k: p.detach().float().cpu().numpy().copy() for k, p in self.params.items()}

    @contextlib.contextmanager
    def using_vectors(self, vectors: dict[str, np.ndarray]) -> Iterator[None]:
        """Temporarily replace the trained vectors (for evaluation and generation)."""
        import torch

        saved = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(torch.as_tensor(np.asarray(vectors[k], dtype=np.float32)))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(saved[k])

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to continue exactly: vectors, optimizer, RNG, step, losses."""

        state: dict[str, Any] = {
            "step": self.step_count,
            "vectors": {k: p.detach().cpu().clone() for k, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "losses": self.loss_buffer[: self.step_count].detach().cpu().clone(),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.buckets is not None:
            state["bucket_generator"] = self.bucket_generator.get_state()
        return state

    def set_lr(self, lr: float) -> None:
        """Use learning rate ``lr`` for the next optimizer step (:meth:`step` sets the
        schedule's rate before each; the optimizer's moments are kept)."""
        for group in self.optimizer.param_groups:
            if self._lr is not None:  # the CUDA graph reads this device tensor
                group["lr"] = self._lr
                self._lr.fill_(float(lr))
            else:
                group["lr"] = float(lr)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        import torch

        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(state["vectors"][k].to(p.device, p.dtype))
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step_count = int(state["step"])
        losses = state["losses"].to(self.device, torch.float32)
        if losses.shape[0] > self.loss_buffer.shape[0]:
            self._grow_buffer(losses.shape[0])
        self.loss_buffer[: losses.shape[0]] = losses
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self._graph is not None:  # new optimizer state tensors: capture again
            self._graph.invalidate()
        if self.buckets is not None and "bucket_generator" in state:
            self.bucket_generator.set_state(state["bucket_generator"])

    # ------------------------------------------------------------------ samples

    def generate(
        self,
        prompts: Sequence[str],
        *,
        seed: int = 0,
        steps: int = 30,
        guidance: float = 7.5,
        negative: str = "",
    ) -> list[Any]:
        """Images from the frozen pipeline with the current vectors; ``{}`` in a prompt
        is replaced by the placeholder tokens. Uses its own generator."""
        import torch

        pipe = self.base.pipeline
        texts = [p.format(self.placeholder_text) if "{}" in p else p for p in prompts]
        images = []
        with torch.no_grad():
            emb, pooled = self.encode_texts(texts)
            zeros = (
                self.family == Family.SDXL
                and not negative
                and bool(pipe.config.get("force_zeros_for_empty_prompt", True))
            )
            if zeros:  # stock SDXL: an empty negative prompt is zeros, not its encoding
                neg, neg_pooled = torch.zeros_like(emb), torch.zeros_like(pooled)
            else:
                neg, neg_pooled = self.encode_texts([negative] * len(texts))
            for i in range(len(texts)):
                kwargs: dict[str, Any] = {
                    "prompt_embeds": emb[i : i + 1].to(self.dtype),
                    "negative_prompt_embeds": neg[i : i + 1].to(self.dtype),
                }
                if pooled is not None:
                    kwargs["pooled_prompt_embeds"] = pooled[i : i + 1].to(self.dtype)
                    kwargs["negative_pooled_prompt_embeds"] = neg_pooled[i : i + 1].to(self.dtype)
                g = torch.Generator(device=self.device).manual_seed(seed + i)
                out = pipe(
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    height=self.resolution,
                    width=self.resolution,
                    generator=g,
                    **kwargs,
                )
                images.append(out.images[0])
        return images

    def close(self) -> None:
        """Put the frozen embedding tables back into the encoders."""
        for enc, original, _ in self._merged:
            enc.set_input_embeddings(original)
        self._merged = []
        self.base.pipeline.scheduler = self._scheduler
        if getattr(self, "_checkpointing", False):
            self.unet.disable_gradient_checkpointing()
            self._checkpointing = False


def compute_loss(pred: torch.Tensor, target: torch.Tensor, *, step: int) -> torch.Tensor:
    """Mean squared error in fp32 (a module-level function so tests can inject a NaN)."""
    import torch.nn.functional as F

    return F.mse_loss(pred.float(), target.float())


#: Prediction types ``--prediction-type`` takes (what the UNet was trained to output).
PREDICTION_TYPES = ("epsilon", "v_prediction")


def clip_layers(base: BaseModel) -> int:
    """The most ``clip_skip`` the base model's text encoders allow.

    SD 1.x/2.x: the encoder's layer count (N counts from its last layer). SDXL: one
    less than the smaller encoder's (N counts from the penultimate layer it already uses).
    """
    from conceptlib.models.clip_skip import most_clip_skip

    return most_clip_skip([s.encoder for s in base.slots], sdxl=base.family == Family.SDXL)


def check_clip_skip(base: BaseModel, clip_skip: int) -> None:
    """Refuse a ``clip_skip`` the base model's encoders do not have layers for.

    Raises:
        UsageError: (exit 2) ``clip_skip`` below 1 or past :func:`clip_layers`.
    """
    most = clip_layers(base)
    if not 1 <= clip_skip <= most:
        raise UsageError(
            f"--clip-skip {clip_skip}: {base.model_id} ({base.family.value}) allows 1 to {most}"
        )


def sampling_scheduler(scheduler: Any, prediction_type: str, zero_terminal_snr: bool) -> Any:
    """``scheduler`` reconfigured for ``prediction_type`` (and zero terminal SNR), so the
    sample images denoise with the target the run trains on; ``scheduler`` itself when
    nothing changes. A scheduler class without ``rescale_betas_zero_snr`` is replaced by
    diffusers' ``DDIMScheduler`` with ``timestep_spacing="trailing"`` (what Lin et al.
    pair the rescale with)."""
    import inspect

    cfg = scheduler.config
    same = cfg.get("prediction_type", "epsilon") == prediction_type and bool(
        cfg.get("rescale_betas_zero_snr", False)
    ) == bool(zero_terminal_snr)
    if same:
        return scheduler
    cls = type(scheduler)
    extra: dict[str, Any] = {"prediction_type": prediction_type}
    if zero_terminal_snr:
        if "rescale_betas_zero_snr" not in inspect.signature(cls.__init__).parameters:
            from diffusers import DDIMScheduler

            cls = DDIMScheduler
        extra.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return cls.from_config(cfg, **extra)

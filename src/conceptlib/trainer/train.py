"""``train()``: images in, a registered concept out.

The steps, in order: validate the name (before any work), load and validate the
images, load the base model, build the :class:`~conceptlib.trainer.loop.TextualInversion`
run, resume from its checkpoint if asked, train with periodic checkpoints and
samples, draw the loss curve and the sample grid, and register the embedding with
a training-run row (full config, steps, final loss, wall time, device, base-model
fingerprint, training-images hash, initializer).

The function never prints: it reports through ``progress`` (a callable receiving
:class:`TrainProgress`) and ``log`` (a callable receiving one line of text).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.errors import InvalidName, NameCollision, TrainingError, UsageError
from conceptlib.schemas.enums import Kind
from conceptlib.trainer.results import TrainingInterrupted, TrainProgress, TrainResult
from conceptlib.trainer.run import Run, device_name

if TYPE_CHECKING:
    from conceptlib.models.base import BaseModel
    from conceptlib.registry.library import Library

__all__ = ["TrainProgress", "TrainResult", "TrainingInterrupted", "train"]

#: Defaults for a real base model on a GPU (documented in docs/training.md).
DEFAULT_STEPS = 2000
DEFAULT_LR = 5e-3
DEFAULT_BATCH = 4
DEFAULT_CHECKPOINT_EVERY = 250
DEFAULT_SAMPLE_EVERY = 500

PRECISIONS = ("bf16", "fp16", "fp32")


def _check_options(
    name: str, init: str | None, vectors: int, steps: int, lr: float | str, batch: int, kind: str
) -> str:
    from conceptlib.config import MAX_VECTORS
    from conceptlib.schemas.names import validate_name
    from conceptlib.trainer.loop import placeholder_tokens

    name = validate_name(name)
    if init is None:  # --init-from: the vectors come from a registered entry
        init = ""
    elif not init.strip():
        raise UsageError("--init is empty; expected word(s) close to the concept, e.g. --init toy")
    # The placeholder tokens are added to the tokenizer, past its embedding table:
    # an initializer holding one has no vector to start from.
    folded = init.casefold()
    for token in placeholder_tokens(name, vectors):
        if token in folded:
            raise UsageError(
                f"--init {init!r} holds {token!r}, the placeholder token this run adds for "
                f"{name!r}; expected existing word(s) to start the vectors from",
                hint="pass ordinary word(s) close to the concept, e.g. --init toy",
            )
    if not 1 <= vectors <= MAX_VECTORS:
        raise UsageError(f"--vectors {vectors}: expected 1 to {MAX_VECTORS}")
    if steps < 1:
        raise UsageError(f"--steps {steps}: expected at least 1")
    if isinstance(lr, (int, float)) and not (lr > 0 and math.isfinite(lr)):
        raise UsageError(f"--lr {lr}: expected a positive number")
    if batch < 1:
        raise UsageError(f"--batch {batch}: expected at least 1")
    try:
        Kind(kind)
    except ValueError as exc:
        raise UsageError(f"--kind {kind!r}: expected object or style") from exc
    return name


def _check_run_options(
    *,
    lr: float | str,
    lr_schedule: str,
    lr_warmup_steps: int,
    steps: int,
    prediction_type: str | None,
    clip_skip: int,
    weight_decay: float,
) -> tuple[float | str, Any]:
    """Check the optimisation and conditioning options before anything loads.

    Returns:
        ``lr`` as recorded (a float, or the A1111 schedule text) and its
        :class:`~conceptlib.trainer.schedule.LRSchedule`.
    """
    from conceptlib.models.clip_skip import MAX_CLIP_SKIP
    from conceptlib.trainer.loop import PREDICTION_TYPES
    from conceptlib.trainer.schedule import build_schedule

    schedule = build_schedule(lr, kind=lr_schedule, warmup_steps=lr_warmup_steps, steps=steps)
    plain = len(schedule.pieces) == 1 and schedule.pieces[0][1] is None
    if prediction_type is not None and prediction_type not in PREDICTION_TYPES:
        raise UsageError(
            f"--prediction-type {prediction_type!r}: expected one of {', '.join(PREDICTION_TYPES)}"
        )
    if not 1 <= clip_skip <= MAX_CLIP_SKIP:
        raise UsageError(f"--clip-skip {clip_skip}: expected 1 (the last layer) to {MAX_CLIP_SKIP}")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise UsageError(f"--weight-decay {weight_decay}: expected 0 or a positive number")
    return (schedule.pieces[0][0] if plain else str(lr)), schedule


def _schedule_warnings(
    bm: Any, prediction_type: str | None, zero_terminal_snr: bool
) -> tuple[str, bool, list[str]]:
    """The prediction type and zero-terminal-SNR the run uses, and warnings when a
    single-file checkpoint's markers (``v_pred``, ``ztsnr``) disagree with them."""
    cfg = bm.pipeline.scheduler.config
    configured = cfg.get("prediction_type", "epsilon")
    chosen = prediction_type or configured
    ztsnr = bool(zero_terminal_snr or cfg.get("rescale_betas_zero_snr", False))
    notes = []
    src = "--prediction-type" if prediction_type else "its base config"
    if bm.markers.get("v_pred") and chosen != "v_prediction":
        notes.append(
            f"warning: {bm.model_id} carries the v_pred marker (a v-prediction model) but "
            f"{src} says {chosen}: the run trains on the wrong target; pass "
            "--prediction-type v_prediction"
        )
    if bm.markers and not bm.markers.get("v_pred") and prediction_type == "v_prediction":
        notes.append(
            f"warning: {bm.model_id} has no v_pred marker; --prediction-type v_prediction "
            "is right only if the model was trained to predict v"
        )
    if bm.markers.get("ztsnr") and not ztsnr:
        notes.append(
            f"warning: {bm.model_id} carries the ztsnr marker (trained with zero terminal "
            "SNR) but the run's noise schedule is not rescaled; pass --zero-terminal-snr"
        )
    if ztsnr and chosen == "epsilon":
        notes.append(
            "warning: zero terminal SNR with epsilon prediction: the last timestep is pure "
            "noise and the target is undefined there; v-prediction is what it is made for"
        )
    return chosen, ztsnr, notes


def _check_registrable(
    library: Library, name: str, tags: Sequence[str], *, new_version: bool = False
) -> None:
    """Fail before training, not after, when the result could not be registered."""
    from conceptlib.registry.pending import validate_tag
    from conceptlib.schemas.vocabulary import is_common_word

    for tag in tags:
        validate_tag(tag)
    if is_common_word(name):
        raise InvalidName(
            f"the name {name!r} is an ordinary word: as a trigger it would silently change "
            f"what {name!r} means in every prompt",
            hint=f"choose a distinctive --name, e.g. {name}-style or my-{name}",
        )
    existing = library.find(name)
    if existing is not None and not new_version:  # --init-from NAME under NAME: a version
        raise NameCollision(
            f"the name {name!r} is taken by an existing embedding ({existing.name})",
            hint="choose another --name, or remove the existing entry first",
            existing=existing.name,
        )


def _check_trigger(
    name: str, vectors: int, tokenizers: Sequence[tuple[str, Any]], base: str
) -> None:
    """Refuse a name whose trigger token(s) are words of the base model's tokenizers.

    The trigger of a concept is its name, and a multi-vector one adds ``name_1``...
    too (:func:`~conceptlib.schemas.names.expansion_tokens`); every tokenizer (both of
    SDXL) is checked with the rule the prompt loader applies
    (:func:`~conceptlib.schemas.vocabulary.is_tokenizer_word`). Such a name would be
    trained and registered, then refused by ``compose``, and an export would take over
    the plain word in every UI (A1111 and ComfyUI match the file name).

    Raises:
        InvalidName: (exit 2) naming the token, the tokenizer and distinct names to use.
    """
    from conceptlib.schemas.names import expansion_tokens
    from conceptlib.schemas.vocabulary import is_common_word, is_tokenizer_word

    vocabs = [(slot, tok, tok.get_vocab()) for slot, tok in tokenizers]

    def is_word(candidate: str) -> tuple[str, str] | None:
        for t in expansion_tokens(candidate, vectors):
            for slot, tok, vocab in vocabs:
                if is_tokenizer_word(tok, t, vocab=vocab):
                    return t, slot
        return None

    found = is_word(name)
    if found is None:
        return
    token, slot = found
    what = (
        f"the name {name!r} is"
        if token == name
        else f"with --vectors {vectors}, the name {name!r} adds the token {token!r}, which is"
    )
    others = [
        c
        for c in (f"my-{name}", f"{name}-style", f"{name}-concept", f"{name}-ti")
        if not is_common_word(c) and is_word(c) is None
    ][:2]
    raise InvalidName(
        f"{what} already a word of {base}'s {slot} tokenizer: as a trigger it would change "
        f"what {token!r} means in every prompt, here and in every UI it is exported to",
        hint="choose a --name that is not a word"
        + (f", e.g. {' or '.join(others)}" if others else ""),
        name=name,
        token=token,
        tokenizer=slot,
    )


def _precision(precision: str | None, device: str) -> tuple[str, Any]:
    import torch

    if precision is None:
        precision = "bf16" if device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    return precision, dtype


def train(
    images: Sequence[str | os.PathLike[str]],
    *,
    name: str,
    init: str | None = None,
    base: str | os.PathLike[str] | BaseModel = "tiny-sd1",
    vectors: int | None = None,
    kind: str = "object",
    steps: int = DEFAULT_STEPS,
    lr: float | str = DEFAULT_LR,
    batch: int = DEFAULT_BATCH,
    resolution: int | None = None,
    seed: int = 0,
    templates: str | os.PathLike[str] | None = None,
    tags: Sequence[str] = (),
    description: str | None = None,
    precision: str | None = None,
    resume: bool = False,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    sample_every: int = DEFAULT_SAMPLE_EVERY,
    sample_steps: int | None = None,
    save_every: int | None = None,
    init_from: str | None = None,
    validation_prompts: Sequence[str] = (),
    validation_negative: str | None = None,
    validation_seed: int = 1000,
    validation_guidance: float = 7.5,
    clip_model: str | os.PathLike[str] | None = None,
    tensorboard: bool = True,
    weight_decay: float = 0.0,
    flip: bool = True,
    lr_schedule: str = "constant",
    lr_warmup_steps: int = 0,
    prediction_type: str | None = None,
    zero_terminal_snr: bool = False,
    clip_skip: int = 1,
    captions: str = "off",
    caption_extension: str = ".txt",
    buckets: bool = False,
    bucket_reso_steps: int | None = None,
    min_bucket_reso: int | None = None,
    max_bucket_reso: int | None = None,
    bucket_no_upscale: bool = False,
    compile: bool | str = False,
    accumulate: int = 1,
    gradient_checkpointing: bool | None = None,
    cuda_graphs: str = "off",
    device: str | None = None,
    base_config: str | os.PathLike[str] | None = None,
    min_images: int | None = None,
    library: Library | None = None,
    register: bool = True,
    run_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a textual-inversion embedding on ``images`` and register it.

    Args:
        images: image files and/or folders (a folder contributes its image files).
        name: the concept's name in the catalog (also its trigger token). When
            registering, a name that is already a word of the base model's tokenizers
            (``ukiyoe`` on a model that knows it; with ``vectors > 1`` also ``name_1``...;
            both SDXL tokenizers) is refused before images or weights load.
        init: initializer word(s) (or ``init_from``); their tokens give the initial
            vectors, cycled. Must be words of the base model's vocabulary (not the
            run's placeholder tokens).
        base: ``tiny-sd1``, ``tiny-sdxl``, a diffusers folder, a ``.safetensors``
            checkpoint, a repo id in the local Hugging Face cache, or an already
            loaded :class:`~conceptlib.models.base.BaseModel` (its tokenizers keep
            the placeholder tokens afterwards).
        vectors: vectors per text-encoder slot (1-75; default 1, or ``init_from``'s).
        kind: ``object`` or ``style``; picks the default templates.
        steps, lr, batch: optimisation length, AdamW learning rate, images per step.
            ``lr`` may be A1111's step syntax, ``"0.05:10, 0.02:20, 0.005"`` (rate until
            step; :mod:`conceptlib.trainer.schedule`). It is not scaled by ``batch``.
        lr_schedule, lr_warmup_steps: ``constant``, ``constant_with_warmup`` or
            ``cosine``, and the steps of linear warm-up (:mod:`conceptlib.trainer.schedule`).
        resolution: training image side; default the base model's native size.
        seed: seed of every random draw of the run.
        templates: ``object``, ``style`` or a text file (default: by ``kind``).
        tags, description: stored with the entry.
        precision: ``bf16``/``fp16``/``fp32`` for the frozen models; default bf16 on
            CUDA, fp32 on a CPU. The trained vectors are always fp32.
        resume: continue from the run folder's checkpoint. Its settings must match,
            except ``lr``, ``precision``, ``steps`` and the device: each change is
            recorded as ``{"step", "setting", "old", "new"}`` in the run's
            ``config["resume_changes"]``.
        checkpoint_every: write a checkpoint every this many steps (0: never).
        sample_every: generate samples every this many steps (0: only at the end).
        sample_steps: denoising steps for samples (default 20 tiny, 30 otherwise).
        save_every: keep a loadable copy of the vectors every this many steps and at
            the last one (``None``: off; else 1 to ``steps``), with its preview grid, in
            ``RUN/steps/`` (:mod:`conceptlib.trainer.steps`; A1111's "save a copy of
            embedding every N steps"); register one later with
            :func:`~conceptlib.trainer.steps.register_step`.
        init_from: start from this registered entry's vectors instead of ``init``
            (not both); ``vectors`` is the entry's, its family must be the base model's;
            the new entry lists it in ``parents``, and under the entry's own ``name`` is
            its next version (:mod:`conceptlib.trainer.init_from`).
        validation_prompts, validation_negative, validation_seed, validation_guidance:
            what the run renders at each sample point and kept step (default: the first
            two templates, seed 1000, guidance 7.5); the concept is ``{}`` or ``name``
            (:mod:`conceptlib.trainer.validation`). ``sample_steps`` is their steps.
        clip_model: a CLIP model folder or cached repo id: score the validation images
            with CLIP-I / CLIP-T (:mod:`conceptlib.trainer.quality`).
        tensorboard: write TensorBoard event files in ``RUN/tensorboard/``.
        weight_decay, flip: AdamW weight decay (on the trained rows only); also train on
            mirrored images (off for text, logos and anything asymmetric).
        prediction_type: ``epsilon`` or ``v_prediction``: force the UNet's target
            (default: the scheduler config's). A single-file checkpoint's ``v_pred`` /
            ``ztsnr`` markers that disagree give a warning in ``log``.
        zero_terminal_snr: rescale the betas to zero terminal SNR (diffusers'
            ``rescale_betas_zero_snr``; Lin et al. 2023), for models trained that way.
        clip_skip: text-encoder layer the conditioning is read from, A1111's convention:
            1 = the last layer (SD 1.x/2.x) or, for SDXL, the penultimate layer stock
            SDXL uses; N reads N-1 layers earlier. Recorded in the run and in the
            entry's ``extra["clip_skip"]``.
        captions, caption_extension: per-image captions: ``off``, ``txt`` (a caption file
            with ``caption_extension`` beside each image), ``filename`` (A1111's words of
            the file name) or ``auto`` (the file where there is one); they fill the
            templates' ``[filewords]`` and count in the images hash
            (:mod:`conceptlib.trainer.captions`).
        buckets, bucket_reso_steps, min_bucket_reso, max_bucket_reso, bucket_no_upscale:
            aspect-ratio buckets instead of a centre-cropped square, and their step,
            smallest and largest side, and never-enlarge option (defaults: 64 px (8 below
            256 px), half and twice the resolution; :mod:`conceptlib.trainer.buckets`).
        compile: ``torch.compile`` the UNet (worth it on CUDA): ``True`` for inductor, or
            a backend's name.
        accumulate, gradient_checkpointing, cuda_graphs: micro-batches of ``batch`` per
            optimizer step; checkpointing the UNet (``None``: on when the memory estimate
            says the run does not fit the GPU); ``auto``/``on``/``off`` for the CUDA-graph
            step (:mod:`conceptlib.trainer.memory`, :mod:`conceptlib.trainer.fast_step`).
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps``, or ``None``/``"auto"`` (CUDA when
            available); checked first (:func:`~conceptlib.models.base.resolve_device`).
        base_config: for a single-file ``base``: the diffusers folder (or cached repo id)
            of a model of the same architecture, whose configs and tokenizers are used.
        min_images: fewest images accepted (default 3).
        library: where to register (default: :meth:`Library.open`).
        register: ``False`` to only write the run folder.
        run_dir: the run folder (default ``<CONCEPTLIB_HOME>/runs/<name>``).
        cache_dir: where tiny models are cached (default ``<CONCEPTLIB_HOME>/cache``).
        progress: called with :class:`TrainProgress` every few steps.
        log: called with each log line (initializer handling, warnings, checkpoints).

    Raises:
        DeviceUnavailable, UsageError, InvalidName, NameCollision, ImageNotFound,
        ImageError, BaseModelError, FamilyMismatch: bad inputs, all before any
        training step (exit 2, 2, 2, 5, 6, 3, 3, 3 in the CLI).
        NaNLoss: the loss became NaN/Inf, or the vectors left what the importer accepts
            (non-finite, or beyond fp16's range); the last good checkpoint is kept.
        TrainingError: an unfinished run without ``resume``, nothing to resume, or a
            checkpoint of a different run or with vectors the importer would refuse.
        TrainingInterrupted: Ctrl-C (a ``KeyboardInterrupt``), naming the checkpoint kept.
    """
    from conceptlib.config import load_settings
    from conceptlib.models.base import BaseModel, base_tokenizers, load_base, resolve_device
    from conceptlib.models.libraries import quiet_libraries
    from conceptlib.trainer.checkpoint import require_checkpoint
    from conceptlib.trainer.images import (
        MIN_TRAINING_IMAGES,
        crop_geometry,
        load_training_images,
        to_pixels,
    )
    from conceptlib.trainer.loop import TextualInversion
    from conceptlib.trainer.templates import load_templates

    run = Run(progress=progress, log=log, steps=steps, checkpoint_every=checkpoint_every)
    from conceptlib.trainer import init_from as start_mod
    from conceptlib.trainer.outputs import RunOutputs, check_outputs, check_tokenizers

    start_mod.check_start(init, init_from)
    name = _check_options(name, init, vectors or 1, steps, lr, batch, kind)
    run.outputs = RunOutputs(check_outputs(
        name=name, prompts=validation_prompts, negative=validation_negative,
        seed=validation_seed, guidance=validation_guidance, clip_model=clip_model,
        tensorboard=tensorboard), name)  # fmt: skip
    for w in run.outputs.options.warnings:
        run.say(w)
    from conceptlib.trainer.steps import check_save_every

    check_save_every(save_every, steps)
    lr, schedule = _check_run_options(
        lr=lr, lr_schedule=lr_schedule, lr_warmup_steps=lr_warmup_steps, steps=steps,
        prediction_type=prediction_type, clip_skip=clip_skip,
        weight_decay=weight_decay,
    )  # fmt: skip
    from conceptlib.trainer import buckets as bucket_mod
    from conceptlib.trainer import captions as caption_mod

    caption_mod.check_caption_options(captions, caption_extension)
    bucket_mod.check_bucket_options(buckets, bucket_reso_steps, min_bucket_reso,
                                    max_bucket_reso, bucket_no_upscale, resolution)  # fmt: skip
    loaded = base if isinstance(base, BaseModel) else None
    if loaded is None:  # a device or precision this machine cannot use fails first
        dev = resolve_device(device)
        precision, dtype = _precision(precision, dev)
    from conceptlib.trainer import fast_step, memory

    step_choice = fast_step.check_step_options(
        accumulate, cuda_graphs, device=dev if loaded is None else loaded.device,
        precision=precision or {"torch.float16": "fp16"}.get(str(loaded.dtype), "bf16"),
        compile=compile, static_shapes=not buckets)  # fmt: skip
    owned_library = None
    if (register or init_from is not None) and library is None:
        from conceptlib.registry.library import Library

        library = owned_library = Library.open()
    try:
        start = None
        if init_from is not None:  # the entry's vectors, before anything loads
            start = start_mod.load_init_from(library, init_from, init=init, vectors=vectors,
                                             name=name)  # fmt: skip
            run.parents, run.replaces = [start.parent(start.info.name)], (
                start.info if start.same_name else None)  # fmt: skip
        vectors = start.info.num_vectors if start is not None else (vectors or 1)
        if register:
            _check_registrable(library, name, tags, new_version=run.replaces is not None)
        settings = library.settings if library is not None else load_settings()
        folder = start_mod.run_folder_name(name, start)
        run.set_dir(Path(run_dir) if run_dir else settings.runs_dir / folder)
        if resume:
            require_checkpoint(run.ckpt_path)  # before the minutes of loading a base model
        elif run.ckpt_path.exists():
            raise TrainingError(
                f"an unfinished run of {name!r} has a checkpoint at {run.ckpt_path}",
                hint="pass --resume to continue it, or delete the file to start over",
                path=str(run.ckpt_path),
            )
        template_list = load_templates(templates, kind=kind)
        template_list = caption_mod.caption_templates(
            template_list, captions, given=templates is not None
        )
        tiny_cache = Path(cache_dir) if cache_dir else settings.cache_dir
        early = None
        if register or captions != "off" or start or validation_prompts:  # the trigger (and
            early = (  # captions, prompts, family) against the real vocabulary, before
                # images and weights
                [(s.slot, s.tokenizer) for s in loaded.slots]
                if loaded is not None
                else base_tokenizers(base, cache_dir=tiny_cache, config=base_config)
            )
            if early and register:
                _check_trigger(name, vectors, early, str(getattr(base, "ref", base)))
            check_tokenizers(
                run.outputs.options, start, early, vectors, str(getattr(base, "ref", base))
            )

        run.report(0, None, phase="setup")
        imgs = load_training_images(
            images, min_images=MIN_TRAINING_IMAGES if min_images is None else min_images
        )
        for w in imgs.warnings:
            run.say(f"warning: {w}")
        per_image, notes = caption_mod.prepare_captions(
            imgs, captions, caption_extension, template_list, name=name, vectors=vectors,
            tokenizers=early,
        )  # fmt: skip
        for note in notes:
            run.say(note)
        run.outputs.load_scorer(dev if loaded is None else loaded.device, imgs.images)
        run.inputs_checked()
        if loaded is not None:
            bm = loaded
            precision = precision or {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(
                str(bm.dtype), "fp32"
            )
        else:
            bm = load_base(base, device=dev, dtype=dtype, cache_dir=tiny_cache, config=base_config)
        if register:  # single-file checkpoints without --base-config get their tokenizers here
            _check_trigger(name, vectors, [(s.slot, s.tokenizer) for s in bm.slots], bm.ref)
        if per_image is not None and not early:  # a single file without --base-config
            tokenizers = [(s.slot, s.tokenizer) for s in bm.slots]
            for note in caption_mod.check_prompt_lengths(
                per_image, [str(p) for p in imgs.paths], tokenizers, vectors
            ):
                run.say(note)
        if bm.is_tiny:
            run.say(f"note: {bm.ref} is a built-in test model; pass --base for a real one")
        start_mod.check_loaded(start, bm)  # family and widths (also for a single file)
        if not early:  # a single file without --base-config: its tokenizers only now
            check_tokenizers(run.outputs.options, None, [(s.slot, s.tokenizer) for s in bm.slots],
                             vectors, bm.ref)  # fmt: skip
        sample_steps = sample_steps or (20 if bm.is_tiny else 30)
        res = int(resolution or bm.native_resolution)
        if res % 8 or res < 16:
            raise UsageError(f"--resolution {res}: expected a multiple of 8, at least 16")
        from conceptlib.trainer.loop import check_clip_skip

        check_clip_skip(bm, clip_skip)
        ckpt, ckpt_why, mem, mem_lines = memory.choose_checkpointing(
            gradient_checkpointing, bm, resolution=res, batch=batch, accumulate=accumulate,
            precision=precision)  # fmt: skip
        for line in mem_lines:
            run.say(line)
        bset = None
        if buckets:
            bset = bucket_mod.resolve_buckets(
                res, bucket_reso_steps, min_bucket_reso, max_bucket_reso, bucket_no_upscale
            )
        bucketed = bucket_mod.to_bucket_pixels(imgs.images, res, bset) if bset else None
        if bucketed:
            run.say(bucket_mod.describe(bucketed))
        prediction, ztsnr, notes = _schedule_warnings(bm, prediction_type, zero_terminal_snr)
        for note in notes:
            run.say(note)
        run.say(
            f"base {bm.model_id} ({bm.family.value}), {imgs.count} images at {res}px, "
            f"{bm.device} {precision}"
        )
        config = {
            "name": name, "init": init, "base": bm.ref, "base_model": bm.model_id,
            "base_config": str(base_config) if base_config is not None else None,
            "base_model_fingerprint": bm.fingerprint, "family": bm.family.value,
            "vectors": vectors, "kind": str(Kind(kind)), "steps": steps, "lr": lr,
            "batch": batch, "resolution": res, "seed": seed,
            "templates": str(templates) if templates is not None else None,
            "template_count": len(template_list),
            "templates_sha256": hashlib.sha256("\n".join(template_list).encode()).hexdigest(),
            "tags": list(tags), "precision": precision, "device": bm.device,
            "checkpoint_every": checkpoint_every, "sample_every": sample_every,
            "save_every": save_every, "accumulate": accumulate, "cuda_graphs": cuda_graphs,
            "gradient_checkpointing": ckpt, "memory_estimate": mem.to_dict(),
            "weight_decay": weight_decay, "flip": flip, "compile": compile,
            "lr_schedule": lr_schedule, "lr_warmup_steps": lr_warmup_steps,
            "prediction_type": prediction, "zero_terminal_snr": ztsnr,
            "base_markers": dict(bm.markers), "clip_skip": clip_skip,
            "training_images_hash": imgs.hash, "training_image_count": imgs.count,
            "captions": captions, "caption_extension": caption_extension,
            **bucket_mod.config_entries(bset, bucketed),
            **start_mod.init_config(start), **run.outputs.options.config(),
            "sample_steps": sample_steps,
            "conceptlib_version": _version(), "resume_changes": [],
        }  # fmt: skip
        # diffusers warns through its logger when the VAE is upcast for encoding, and
        # its SDXL pipeline with a FutureWarning when sampling in fp16: the library is quiet.
        with quiet_libraries():
            engine = TextualInversion(
                bm, bucketed or to_pixels(imgs.images, res), template_list, name=name,
                init=init or "", init_vectors=start.vectors if start else None,
                vectors=vectors, lr=schedule.rate(1), batch=batch, seed=seed,
                weight_decay=weight_decay, flip=flip, compile=compile, total_steps=steps,
                geometry=None if bset else crop_geometry(imgs.images, res),
                prediction_type=prediction, image_templates=per_image,
                zero_terminal_snr=ztsnr, clip_skip=clip_skip, lr_schedule=schedule,
                accumulate=accumulate, gradient_checkpointing=ckpt, cuda_graphs=step_choice.graph,
            )  # fmt: skip
            run.engine = engine
            config["step"] = fast_step.step_record(step_choice, engine, ckpt_why)
            shown = [step_choice.message()] if cuda_graphs != "off" else []
            for note in shown + engine.pop_notes():
                run.say(note)
            try:
                for r in engine.init_reports:
                    msg = r.message(init)
                    if msg:
                        run.say(msg)
                if resume:
                    run.resume(engine, config)
                run.keep = {
                    "format": "conceptlib-kept-steps/1",
                    "config": config,
                    "device": device_name(engine.device),
                    "description": description,
                    "init_tokens": {r.slot: r.tokens for r in engine.init_reports},
                    "parents": run.parents,
                }
                run.outputs.open_board(run.dir, config, engine.step_count)
                run.train(engine, config, checkpoint_every=checkpoint_every, sample_every=sample_every,
                          sample_steps=sample_steps, save_every=save_every or 0)  # fmt: skip
                return run.finish(
                    engine, bm, config, imgs, name=name, init=init, kind=kind, tags=tags,
                    description=description, precision=precision,
                    library=library if register else None,
                )  # fmt: skip
            finally:
                run.outputs.close()  # the event files flushed: at the end, on errors, Ctrl-C
                engine.close()
    except Exception:
        run.ended("failed")  # the progress file; no-op before the run folder is known
        raise
    except KeyboardInterrupt as exc:
        raise run.interrupted() from exc
    finally:
        if owned_library is not None:
            owned_library.close()


def _version() -> str:
    from conceptlib import __version__

    return __version__

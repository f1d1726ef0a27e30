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
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from conceptlib.errors import InvalidName, NameCollision, NaNLoss, TrainingError, UsageError
from conceptlib.schemas.enums import Kind

if TYPE_CHECKING:
    from conceptlib.models.base import BaseModel
    from conceptlib.registry.formats.embedding import Embedding
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

#: Defaults for a real base model on a GPU (documented in docs/training.md).
DEFAULT_STEPS = 2000
DEFAULT_LR = 5e-3
DEFAULT_BATCH = 4
DEFAULT_CHECKPOINT_EVERY = 250
DEFAULT_SAMPLE_EVERY = 500
#: Steps between reads of the loss on a GPU (each read is a host sync).
SYNC_EVERY_CUDA = 10
#: ``final_loss`` is the mean loss of the last this-many steps.
FINAL_LOSS_WINDOW = 50

PRECISIONS = ("bf16", "fp16", "fp32")


@dataclass
class TrainProgress:
    """One progress report: sent after set-up and then every few steps."""

    step: int
    total: int
    loss: float | None  # mean loss since the previous report
    steps_per_s: float | None
    eta_s: float | None
    phase: str = "train"  # "setup" | "train" | "samples" | "done"


@dataclass
class TrainResult:
    """What a run produced (``to_dict()`` is what ``train --json`` prints)."""

    name: str
    embedding: Embedding
    info: EmbeddingInfo | None
    config: dict[str, Any]
    steps: int
    final_loss: float
    wall_time_s: float
    device: str
    precision: str
    family: str
    base_model: str
    base_model_fingerprint: str
    training_images_hash: str
    training_image_count: int
    initializer: str
    init_tokens: dict[str, list[str]]
    losses: list[float]
    run_dir: Path
    embedding_path: Path
    loss_curve_path: Path
    sample_paths: list[Path] = field(default_factory=list)
    grid_path: Path | None = None
    kept_steps: list[int] = field(default_factory=list)
    resumed_from: int | None = None
    log: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("embedding", "info", "losses")}
        for k in ("run_dir", "embedding_path", "loss_curve_path", "grid_path"):
            out[k] = str(out[k]) if out[k] is not None else None
        out["sample_paths"] = [str(p) for p in self.sample_paths]
        out["tensor_sha256"] = self.embedding.tensor_sha256
        out["registered"] = self.info is not None
        out["info"] = self.info.to_dict() if self.info is not None else None
        return out


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (a ``KeyboardInterrupt``) during :func:`train`, with where the run stands.

    It is still a ``KeyboardInterrupt``, so code catching that keeps working; ``str()``
    is a one-line summary. ``conceptlib train`` turns it into lines naming the kept
    checkpoint and the exact command that continues the run (exit status 130).

    Attributes:
        step: steps done when interrupted (``None``: training had not started).
        total: the run's ``steps``.
        run_dir: the run folder (``None``: interrupted before it was known).
        checkpoint: the checkpoint kept for ``resume=True`` (``None``: none exists).
        checkpoint_step: the step it holds, when known.
        checkpoint_every: steps between checkpoints (0: none are written).
    """

    def __init__(
        self,
        *,
        step: int | None,
        total: int,
        run_dir: Path | None,
        checkpoint: Path | None,
        checkpoint_step: int | None,
        checkpoint_every: int,
    ) -> None:
        self.step = step
        self.total = total
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        self.checkpoint_step = checkpoint_step
        self.checkpoint_every = checkpoint_every
        super().__init__(self.summary())

    def summary(self) -> str:
        at = f"at step {self.step} of {self.total}" if self.step is not None else "during set-up"
        if self.checkpoint is not None:
            held = f" (step {self.checkpoint_step})" if self.checkpoint_step is not None else ""
            return f"interrupted {at}; the checkpoint{held} is kept at {self.checkpoint}"
        every = (
            f"every {self.checkpoint_every} steps"
            if self.checkpoint_every
            else "--checkpoint-every 0"
        )
        return f"interrupted {at}, before any checkpoint ({every}): nothing to resume"


def _check_options(
    name: str, init: str, vectors: int, steps: int, lr: float | str, batch: int, kind: str
) -> str:
    from conceptlib.config import MAX_VECTORS
    from conceptlib.schemas.names import validate_name
    from conceptlib.trainer.loop import placeholder_tokens

    name = validate_name(name)
    if not init.strip():
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
    from conceptlib.trainer.loop import MAX_CLIP_SKIP, PREDICTION_TYPES
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


def _check_registrable(library: Library, name: str, tags: Sequence[str]) -> None:
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
    if existing is not None:
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
    init: str,
    base: str | os.PathLike[str] | BaseModel = "tiny-sd1",
    vectors: int = 1,
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
    weight_decay: float = 0.0,
    flip: bool = True,
    lr_schedule: str = "constant",
    lr_warmup_steps: int = 0,
    prediction_type: str | None = None,
    zero_terminal_snr: bool = False,
    clip_skip: int = 1,
    compile: bool | str = False,
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
        init: initializer word(s); their tokens give the initial vectors, cycled. Must
            be words of the base model's vocabulary (not the run's placeholder tokens).
        base: ``tiny-sd1``, ``tiny-sdxl``, a diffusers folder, a ``.safetensors``
            checkpoint, a repo id in the local Hugging Face cache, or an already
            loaded :class:`~conceptlib.models.base.BaseModel` (its tokenizers keep
            the placeholder tokens afterwards).
        vectors: vectors per text-encoder slot (1-75).
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
        compile: ``torch.compile`` the UNet (worth it on CUDA): ``True`` for inductor, or
            a backend's name.
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

    run = _Run(progress=progress, log=log, steps=steps, checkpoint_every=checkpoint_every)
    name = _check_options(name, init, vectors, steps, lr, batch, kind)
    from conceptlib.trainer.steps import check_save_every

    check_save_every(save_every, steps)
    lr, schedule = _check_run_options(
        lr=lr, lr_schedule=lr_schedule, lr_warmup_steps=lr_warmup_steps, steps=steps,
        prediction_type=prediction_type, clip_skip=clip_skip,
        weight_decay=weight_decay,
    )  # fmt: skip
    loaded = base if isinstance(base, BaseModel) else None
    if loaded is None:  # a device or precision this machine cannot use fails first
        dev = resolve_device(device)
        precision, dtype = _precision(precision, dev)
    owned_library = None
    if register and library is None:
        from conceptlib.registry.library import Library

        library = owned_library = Library.open()
    try:
        if register:
            _check_registrable(library, name, tags)
        settings = library.settings if library is not None else load_settings()
        run.set_dir(Path(run_dir) if run_dir else settings.runs_dir / name)
        if resume:
            require_checkpoint(run.ckpt_path)  # before the minutes of loading a base model
        elif run.ckpt_path.exists():
            raise TrainingError(
                f"an unfinished run of {name!r} has a checkpoint at {run.ckpt_path}",
                hint="pass --resume to continue it, or delete the file to start over",
                path=str(run.ckpt_path),
            )
        template_list = load_templates(templates, kind=kind)
        tiny_cache = Path(cache_dir) if cache_dir else settings.cache_dir
        if register:  # the trigger against the real vocabulary, before images and weights
            early = (
                [(s.slot, s.tokenizer) for s in loaded.slots]
                if loaded is not None
                else base_tokenizers(base, cache_dir=tiny_cache, config=base_config)
            )
            if early:
                _check_trigger(name, vectors, early, str(getattr(base, "ref", base)))

        run.report(0, None, phase="setup")
        imgs = load_training_images(
            images, min_images=MIN_TRAINING_IMAGES if min_images is None else min_images
        )
        for w in imgs.warnings:
            run.say(f"warning: {w}")
        if loaded is not None:
            bm = loaded
            precision = precision or {"torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(
                str(bm.dtype), "fp32"
            )
        else:
            bm = load_base(base, device=dev, dtype=dtype, cache_dir=tiny_cache, config=base_config)
        if register:  # single-file checkpoints without --base-config get their tokenizers here
            _check_trigger(name, vectors, [(s.slot, s.tokenizer) for s in bm.slots], bm.ref)
        if bm.is_tiny:
            run.say(f"note: {bm.ref} is a built-in test model; pass --base for a real one")
        res = int(resolution or bm.native_resolution)
        if res % 8 or res < 16:
            raise UsageError(f"--resolution {res}: expected a multiple of 8, at least 16")
        from conceptlib.trainer.loop import check_clip_skip

        check_clip_skip(bm, clip_skip)
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
            "save_every": save_every,
            "weight_decay": weight_decay, "flip": flip, "compile": compile,
            "lr_schedule": lr_schedule, "lr_warmup_steps": lr_warmup_steps,
            "prediction_type": prediction, "zero_terminal_snr": ztsnr,
            "base_markers": dict(bm.markers), "clip_skip": clip_skip,
            "training_images_hash": imgs.hash, "training_image_count": imgs.count,
            "conceptlib_version": _version(), "resume_changes": [],
        }  # fmt: skip
        # diffusers warns through its logger when the VAE is upcast for encoding, and
        # its SDXL pipeline with a FutureWarning when sampling in fp16: the library is quiet.
        with quiet_libraries():
            engine = TextualInversion(
                bm, to_pixels(imgs.images, res), template_list, name=name, init=init,
                vectors=vectors, lr=schedule.rate(1), batch=batch, seed=seed,
                weight_decay=weight_decay, flip=flip, compile=compile, total_steps=steps,
                geometry=crop_geometry(imgs.images, res), prediction_type=prediction,
                zero_terminal_snr=ztsnr, clip_skip=clip_skip, lr_schedule=schedule,
            )  # fmt: skip
            run.engine = engine
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
                    "device": _device_name(engine.device),
                    "description": description,
                    "init_tokens": {r.slot: r.tokens for r in engine.init_reports},
                }
                run.train(engine, config, checkpoint_every=checkpoint_every, sample_every=sample_every,
                          sample_steps=sample_steps or (20 if bm.is_tiny else 30),
                          save_every=save_every or 0)  # fmt: skip
                return run.finish(
                    engine, bm, config, imgs, name=name, init=init, kind=kind, tags=tags,
                    description=description, precision=precision,
                    library=library if register else None,
                )  # fmt: skip
            finally:
                engine.close()
    except KeyboardInterrupt as exc:
        raise run.interrupted() from exc
    finally:
        if owned_library is not None:
            owned_library.close()


def _version() -> str:
    from conceptlib import __version__

    return __version__


class _Run:
    """The bookkeeping of one ``train()`` call: log, progress, losses, samples, outputs."""

    def __init__(self, *, progress: Any, log: Any, steps: int, checkpoint_every: int) -> None:
        self.progress = progress
        self.log = log
        self.steps = steps
        self.checkpoint_every = checkpoint_every
        self.engine: Any = None
        self.dir_known = False
        self.lines: list[str] = []
        self.started = time.perf_counter()
        self.train_seconds = 0.0  # time spent in steps (not samples, not checkpoints)
        self.previous_wall = 0.0  # wall time of the interrupted part, when resuming
        self.resumed_from: int | None = None
        self.last_good: int | None = None
        self.losses: list[float] = []
        self.sample_rows: list[tuple[str, list[Any]]] = []
        self.sample_paths: list[Path] = []
        self.final_images: list[Any] = []
        self.keep: dict[str, Any] = {}  # the run's record for kept steps (run.json)
        self.kept_steps: list[int] = []
        self.dir = Path(".")
        self.ckpt_path = Path(".")

    def set_dir(self, run_dir: Path) -> None:
        from conceptlib.trainer.checkpoint import CHECKPOINT_NAME

        self.dir = run_dir
        self.ckpt_path = run_dir / CHECKPOINT_NAME
        self.dir_known = True

    def interrupted(self) -> TrainingInterrupted:
        """What Ctrl-C leaves behind: the steps done and the checkpoint kept (if any)."""
        ckpt = self.ckpt_path if self.dir_known and self.ckpt_path.is_file() else None
        return TrainingInterrupted(
            step=self.engine.step_count if self.engine is not None else None,
            total=self.steps,
            run_dir=self.dir if self.dir_known else None,
            checkpoint=ckpt,
            checkpoint_step=self.last_good if ckpt is not None else None,
            checkpoint_every=self.checkpoint_every,
        )

    def say(self, line: str) -> None:
        self.lines.append(line)
        if self.log is not None:
            self.log(line)

    def report(
        self, step: int, loss: float | None, *, phase: str = "train", rate: float | None = None
    ) -> None:
        if self.progress is not None:
            eta = (self.steps - step) / rate if rate else None
            self.progress(TrainProgress(step, self.steps, loss, rate, eta, phase))

    def wall(self) -> float:
        return self.previous_wall + (time.perf_counter() - self.started)

    def resume(self, engine: Any, config: dict[str, Any]) -> None:
        """Continue from the checkpoint: same settings except :data:`RESUME_MAY_CHANGE
        <conceptlib.trainer.checkpoint.RESUME_MAY_CHANGE>`, each change recorded in
        ``config["resume_changes"]``; vectors that would fail the importer are refused."""
        from conceptlib.trainer.checkpoint import check_resumable, load_checkpoint, vectors_problem

        path = self.ckpt_path
        state, saved = load_checkpoint(path)
        try:
            step = int(state["step"])
            wall = float(state.get("wall_time_s", 0.0))
            vectors = state["vectors"]
            shapes = {k: tuple(v.shape) for k, v in vectors.items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TrainingError(f"{path}: unreadable checkpoint ({exc!r})", path=str(path)) from exc
        changes = check_resumable(saved, config, step, path)
        expected = {k: tuple(p.shape) for k, p in engine.params.items()}
        if shapes != expected:
            raise TrainingError(
                f"cannot resume {path}: it holds vectors {shapes}, this run trains {expected}",
                hint="delete the checkpoint to start over",
                path=str(path),
            )
        problem = vectors_problem(vectors)
        if problem is not None:
            raise TrainingError(
                f"cannot resume {path}: its vectors at step {step} would not pass the import "
                f"checks ({problem})",
                hint="delete the checkpoint and start over with a lower --lr",
                path=str(path),
            )
        try:
            engine.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise TrainingError(
                f"{path}: the checkpoint does not fit this run ({type(exc).__name__}: {exc})",
                path=str(path),
            ) from exc
        fresh = changes[len(saved.get("resume_changes") or []) :]
        config["resume_changes"] = changes
        self.previous_wall = wall
        self.resumed_from = self.last_good = engine.step_count
        shown = ", ".join(f"{c['setting']} {c['old']} -> {c['new']}" for c in fresh)
        self.say(
            f"resumed from {path} at step {engine.step_count}" + (f" with {shown}" if shown else "")
        )

    def samples(self, engine: Any, step: int, n_steps: int) -> None:
        from conceptlib.trainer.checkpoint import atomic_write_bytes
        from conceptlib.trainer.report import png_bytes

        self.report(step, None, phase="samples")
        images = engine.generate(engine.templates[:2], seed=1000, steps=n_steps)
        for i, im in enumerate(images):
            p = self.dir / "samples" / f"step-{step:06d}-{i}.png"
            atomic_write_bytes(p, png_bytes(im))
            self.sample_paths.append(p)
        self.sample_rows.append((f"step {step}", images))
        self.final_images = images

    def train(
        self,
        engine: Any,
        config: dict[str, Any],
        *,
        checkpoint_every: int,
        sample_every: int,
        sample_steps: int,
        save_every: int = 0,
    ) -> None:
        """Step until ``steps``; read the loss at sync points; checkpoint, sample and
        keep a copy of the vectors every ``save_every`` steps (0: never)."""
        import numpy as np

        from conceptlib.trainer.checkpoint import save_checkpoint, vectors_problem

        steps = self.steps
        self.losses = engine.read_losses(0, engine.step_count)
        read_upto = first = engine.step_count
        sync_every = SYNC_EVERY_CUDA if engine.device.type == "cuda" else 1
        self.report(first, self.losses[-1] if self.losses else None)
        tick = time.perf_counter()
        while engine.step_count < steps:
            engine.step()
            s = engine.step_count
            ckpt_now = bool(checkpoint_every) and s % checkpoint_every == 0 and s < steps
            sample_now = bool(sample_every) and s % sample_every == 0 and s < steps
            keep_now = bool(save_every) and s % save_every == 0 and s < steps
            if not (s % sync_every == 0 or s == steps or ckpt_now or sample_now or keep_now):
                continue
            fresh = engine.read_losses(read_upto, s)  # the one host sync
            self.train_seconds += time.perf_counter() - tick
            bad = next((i for i, v in enumerate(fresh) if not math.isfinite(v)), None)
            if bad is not None:
                self._nan(read_upto + bad + 1, fresh[bad], config)
            self.losses.extend(fresh)
            read_upto = s
            rate = (s - first) / self.train_seconds if self.train_seconds > 0 else None
            self.report(s, float(np.mean(fresh)), rate=rate)
            if ckpt_now:
                state = engine.state_dict()
                # A checkpoint is "good" (kept on NaN, resumed from) only with vectors
                # the importer would take: finite and within fp16's range.
                problem = vectors_problem(state["vectors"])
                if problem is not None:
                    self._diverged(s, problem, config)
                state["wall_time_s"] = self.wall()
                save_checkpoint(self.ckpt_path, state, config)
                self.last_good = s
            if sample_now:
                self.samples(engine, s, sample_steps)
            if keep_now:
                self.keep_step(engine, s, sample_steps, sampled=sample_now)
            tick = time.perf_counter()
        self.samples(engine, steps, sample_steps)
        if save_every:
            self.keep_step(engine, steps, sample_steps, sampled=True)

    def keep_step(self, engine: Any, step: int, sample_steps: int, *, sampled: bool) -> None:
        """Keep the vectors at ``step`` and their grid (the samples just drawn, when
        ``sampled``; else drawn now the way :meth:`samples` draws them)."""
        from conceptlib.trainer.checkpoint import vectors_problem
        from conceptlib.trainer.steps import save_step

        vectors = engine.vectors()
        if vectors_problem(vectors) is not None:
            return  # the next checkpoint or the end reports the divergence
        if sampled:
            images = self.final_images
        else:
            self.report(step, None, phase="samples")
            images = engine.generate(engine.templates[:2], seed=1000, steps=sample_steps)
        save_step(self.dir, name=self.keep["config"]["name"], step=step, vectors=vectors,
                  images=images, losses=self.losses, wall_time_s=self.wall(),
                  run_facts=self.keep)  # fmt: skip
        self.kept_steps.append(step)

    def _all_kept(self, name: str) -> list[int]:
        """Every step kept in the run folder (a resumed run's earlier ones too)."""
        from conceptlib.trainer.steps import kept_steps

        return kept_steps(self.dir, name) if self.kept_steps else []

    def _kept(self) -> str:
        if self.last_good is None:
            return "no checkpoint had been written yet"
        return f"the last good checkpoint (step {self.last_good}) is kept at {self.ckpt_path}"

    def _remedy(self, config: dict[str, Any]) -> str:
        """The hint after a NaN loss or diverged vectors: options ``train`` has."""
        import shlex

        from conceptlib.trainer.schedule import halved

        lower = shlex.quote(halved(config["lr"]))
        if self.last_good is not None:
            hint = f"resume with a lower learning rate: --resume --lr {lower}"
        else:
            hint = f"start again with a lower learning rate: --lr {lower}"
        if config.get("precision") == "fp16":
            hint += " (or --precision bf16 or fp32 instead of fp16)"
        return hint

    def _nan(self, step: int, value: float, config: dict[str, Any]) -> NoReturn:
        raise NaNLoss(
            f"the loss became {value} at step {step}; training stopped and {self._kept()}",
            hint=self._remedy(config),
            step=step,
            checkpoint=str(self.ckpt_path) if self.last_good is not None else None,
        )

    def _diverged(self, step: int, problem: str, config: dict[str, Any]) -> NoReturn:
        raise NaNLoss(
            f"the vectors diverged by step {step} ({problem}); training stopped and {self._kept()}",
            hint=self._remedy(config),
            step=step,
            checkpoint=str(self.ckpt_path) if self.last_good is not None else None,
        )

    def finish(
        self,
        engine: Any,
        bm: Any,
        config: dict[str, Any],
        imgs: Any,
        *,
        name: str,
        init: str,
        kind: str,
        tags: Sequence[str],
        description: str | None,
        precision: str,
        library: Library | None,
    ) -> TrainResult:
        """Write the embedding and the reports, register, and drop the checkpoint."""
        import numpy as np

        from conceptlib.registry.formats.embedding import Embedding
        from conceptlib.trainer.checkpoint import atomic_write_bytes, vectors_problem
        from conceptlib.trainer.report import loss_curve_png, png_bytes, sample_grid_png

        vectors = engine.vectors()
        problem = vectors_problem(vectors)
        if problem is not None:
            self._diverged(self.steps, problem, config)
        emb = Embedding.from_slots(vectors)
        window = self.losses[-FINAL_LOSS_WINDOW:]
        final_loss = float(np.mean(window)) if window else float("nan")
        emb_path = self.dir / "learned_embeds.safetensors"
        atomic_write_bytes(emb_path, emb.canonical_bytes())
        title = f"{name} on {bm.model_id}: {self.steps} steps, lr {config['lr']}, batch {config['batch']}"
        loss_png = loss_curve_png(self.losses, title=title)
        atomic_write_bytes(self.dir / "loss.png", loss_png)
        grid_png = sample_grid_png(self.sample_rows)
        atomic_write_bytes(self.dir / "samples.png", grid_png)
        device = _device_name(engine.device)
        init_tokens = {r.slot: r.tokens for r in engine.init_reports}
        info = None
        if library is not None:
            from conceptlib.schemas.records import Preview, TrainingRunRecord

            previews = [
                Preview(filename="loss.png", data=loss_png, role="loss_curve"),
                Preview(filename="samples.png", data=grid_png, role="grid"),
            ] + [
                Preview(filename=f"sample-{i}.png", data=png_bytes(im), role="sample")
                for i, im in enumerate(self.final_images)
            ]
            facts = {
                "base_model": bm.model_id,
                "base_model_fingerprint": bm.fingerprint,
                "training_images_hash": imgs.hash,
                "training_image_count": imgs.count,
                "initializer": init,
            }
            record = TrainingRunRecord(
                config=config, steps=self.steps, final_loss=final_loss,
                wall_time_s=self.wall(), device=device, **facts,
            )  # fmt: skip
            info = library.add_embedding(
                emb, name=name, kind=kind, source="trained", source_ref=str(self.dir),
                tags=tags, description=description, previews=previews, training_run=record,
                extra={"init_tokens": init_tokens, "precision": precision,
                       "clip_skip": config.get("clip_skip", 1)}, **facts,
            )  # fmt: skip
            self.say(f"registered {info.name} ({info.tensor_sha256[:12]})")
        # The run is complete: its checkpoint would only block the next run of this name.
        self.ckpt_path.unlink(missing_ok=True)
        self.report(self.steps, final_loss, phase="done")
        return TrainResult(
            name=name, embedding=emb, info=info, config=config, steps=self.steps,
            final_loss=final_loss, wall_time_s=self.wall(), device=device, precision=precision,
            family=bm.family.value, base_model=bm.model_id,
            base_model_fingerprint=bm.fingerprint, training_images_hash=imgs.hash,
            training_image_count=imgs.count, initializer=init, init_tokens=init_tokens,
            losses=self.losses, run_dir=self.dir, embedding_path=emb_path,
            loss_curve_path=self.dir / "loss.png", sample_paths=self.sample_paths,
            grid_path=self.dir / "samples.png", kept_steps=self._all_kept(name), resumed_from=self.resumed_from, log=self.lines,
        )  # fmt: skip


def _device_name(device: Any) -> str:
    if device.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"

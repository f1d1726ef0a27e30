"""Many concepts in one run: a plan file trained against one frozen base model.

:func:`train_plan` reads a plan (:mod:`conceptlib.trainer.plan`), checks all of it
before the base model loads, builds one :class:`~conceptlib.trainer.loop.TextualInversion`
per concept on the same loaded pipeline, and steps them together with
:class:`MultiConcept`: each step draws every concept's batch from that concept's own
generator, runs the text encoder(s) and the UNet once on the concatenated batch, and
minimises the sum of the concepts' mean losses. A concept's rows appear only in its
own prompts, so the gradient of that sum with respect to them is the gradient of the
concept's own loss: each concept (its own ``nn.Parameter`` per slot, its own AdamW
state, its own learning-rate schedule and seed) follows the trajectory it would follow
trained alone with the same seed, to float tolerance (the batched matrix products
round differently). The bookkeeping of each concept (losses, samples, kept steps, the
final registration with its own training-run record) is :class:`~conceptlib.trainer.run.Run`'s.

Under ``torchrun`` (``RANK`` and ``WORLD_SIZE`` set) each process trains its share of
the plan (:mod:`conceptlib.trainer.distributed`), every one registering into the same
catalog.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.errors import ConceptlibError, TrainingError
from conceptlib.schemas.enums import Family, Kind
from conceptlib.trainer.results import TrainingInterrupted, TrainProgress, TrainResult

if TYPE_CHECKING:
    import torch

    from conceptlib.registry.library import Library
    from conceptlib.trainer.loop import TextualInversion
    from conceptlib.trainer.plan import ConceptSpec, Plan

#: Format of a plan run's checkpoint (every concept's state in one file).
PLAN_CHECKPOINT = "conceptlib-plan-checkpoint/1"


class MultiConcept:
    """Several :class:`TextualInversion` concepts on one pipeline, stepped as one batch.

    The engines must have been built in order on the same base model (each wraps the
    embedding layer the previous one installed, so the last one's layer resolves every
    concept's placeholder ids) and are closed in reverse order by :meth:`close`.
    """

    def __init__(self, engines: Sequence[TextualInversion], *, compile: bool | str = False):
        import torch

        if not engines:
            raise TrainingError("a plan run needs at least one concept")
        self.engines = list(engines)
        self.lead = self.engines[-1]
        self.device = self.lead.device
        self.family = self.lead.family
        self.step_count = self.lead.step_count
        self.scaler = (
            torch.amp.GradScaler(self.device.type) if self.lead.dtype == torch.float16 else None
        )
        if compile:
            backend = compile if isinstance(compile, str) else "inductor"
            self.lead.unet_fn = torch.compile(self.lead.unet, dynamic=False, backend=backend)

    def step(self) -> None:
        """One optimisation step of every concept (no host sync); each concept's loss
        lands in its own ``loss_buffer``."""
        from conceptlib.trainer.fast_step import attention_context

        with attention_context(getattr(self.lead, "attention", None)):
            losses = self._optimise()
        for e, loss in zip(self.engines, losses, strict=True):
            if e.step_count >= e.loss_buffer.shape[0]:
                e._grow_buffer(e.step_count + 1)
            e.loss_buffer[e.step_count] = loss.detach()
            e.step_count += 1
        self.step_count += 1

    def _optimise(self) -> list[torch.Tensor]:
        """Draw each concept's batch from its own generator, one forward and backward
        of the concatenated batch (loss: the sum of the concepts' mean losses), then each
        concept's optimizer step. Returns the concepts' losses (device tensors)."""
        import torch

        from conceptlib.trainer import loop

        parts, sizes, ts = [], [], []
        for e in self.engines:
            d = e._draw(e.generator, e.batch)
            parts.append(e._inputs(d))
            sizes.append(int(d["t"].shape[0]))
            ts.append(d["t"])
        noisy = torch.cat([p[0] for p in parts])
        ids = [torch.cat([p[2][k] for p in parts]) for k in range(len(parts[0][2]))]
        time_ids = torch.cat([p[3] for p in parts]) if self.family == Family.SDXL else None
        emb, pooled = self.lead.encode_prompts(ids)
        pred = self.lead._unet(noisy, torch.cat(ts), emb, pooled, time_ids)
        losses = [
            loop.compute_loss(chunk, p[1], step=e.step_count)
            for e, p, chunk in zip(self.engines, parts, pred.split(sizes), strict=True)
        ]
        total = torch.stack(losses).sum()
        for e in self.engines:
            e.set_lr(e.lr_schedule.rate(e.step_count + 1))
            e.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            for e in self.engines:
                self.scaler.step(e.optimizer)
            self.scaler.update()
        else:
            total.backward()
            for e in self.engines:
                e.optimizer.step()
        return losses

    def state_dict(self, names: Sequence[str], walls: Sequence[float]) -> dict[str, Any]:
        concepts = {}
        for name, e, wall in zip(names, self.engines, walls, strict=True):
            state = e.state_dict()
            state["wall_time_s"] = wall
            concepts[name] = state
        out: dict[str, Any] = {"step": self.step_count, "concepts": concepts}
        if self.scaler is not None:
            out["scaler"] = self.scaler.state_dict()
        return out

    def close(self) -> None:
        for e in reversed(self.engines):
            e.close()


@dataclass
class PlanResult:
    """What :func:`train_plan` produced (``to_dict()`` is what ``train-plan --json`` prints).

    ``results`` are this process's concepts; ``concepts`` the result of every concept of
    the plan as dictionaries (under ``torchrun``: gathered from every rank), and
    ``failures`` the errors of other ranks.
    """

    plan: Path
    sha256: str
    run_dir: Path
    rank: int
    world_size: int
    results: list[TrainResult]
    concepts: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": str(self.plan),
            "plan_sha256": self.sha256,
            "run_dir": str(self.run_dir),
            "world_size": self.world_size,
            "dry_run": self.dry_run,
            "concepts": self.concepts,
            "failures": self.failures,
        }


@dataclass
class _Prepared:
    """One concept checked and ready to train: its images, templates, schedule."""

    spec: ConceptSpec
    imgs: Any
    templates: list[str]
    schedule: Any
    rank: int
    per_image: list[list[str]] | None = None  # captions: the templates of each image
    start: Any = None  # init_from: the entry's vectors (init_from.InitFrom)


def plan_dir_name(plan: Plan) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", plan.path.stem).strip("-.") or "plan"
    return f"plan-{stem[:64]}"


def checkpoint_name(rank: int, world_size: int) -> str:
    from conceptlib.trainer.checkpoint import CHECKPOINT_NAME

    if world_size == 1:
        return CHECKPOINT_NAME
    return f"checkpoint-rank{rank}-of-{world_size}.safetensors"


def train_plan(
    plan_file: str | os.PathLike[str],
    *,
    resume: bool = False,
    dry_run: bool = False,
    device: str | None = None,
    library: Library | None = None,
    register: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Callable[[str, TrainProgress], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> PlanResult:
    """Train every concept of the plan at ``plan_file`` together and register each.

    Args:
        plan_file: the TOML plan (:mod:`conceptlib.trainer.plan`).
        resume: continue the plan run's checkpoint (same rules as ``train(resume=True)``,
            checked per concept; the set of concepts must be the same).
        dry_run: check everything (the plan, names, catalog, images, templates,
            tokenizers, checkpoint) and return what would train, without loading the
            base model or training.
        device: overrides the plan's ``device``. Under ``torchrun`` a plain ``cuda``
            becomes ``cuda:LOCAL_RANK``.
        library, register, cache_dir: as for :func:`~conceptlib.trainer.train.train`.
        progress: called with ``(concept name, TrainProgress)``.
        log: called with each log line (a concept's lines start with its name).

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) the process group is
    set up (gloo on a CPU, NCCL on CUDA), this rank trains the concepts at positions
    ``rank, rank + world_size, ...`` of the plan, and the results (or errors) of every
    rank are gathered into :attr:`PlanResult.concepts` / :attr:`PlanResult.failures`.

    Raises:
        The errors of ``train()`` (usage, names, images, base model, NaN...), their
        messages naming the plan, the concept and the key; all but NaN and
        interruptions before the base model loads.
    """
    from conceptlib.trainer.distributed import Group, dist_env

    env = dist_env()
    rank, world, local_rank = env if env is not None else (0, 1, 0)
    if dry_run or world == 1:
        return _train_plan(plan_file, rank=rank, world=world, local_rank=local_rank,
                           resume=resume, dry_run=dry_run, device=device, library=library,
                           register=register, cache_dir=cache_dir, progress=progress,
                           log=log)  # fmt: skip
    group = Group(rank, world, local_rank)
    try:
        outcome: dict[str, Any]
        try:
            result = _train_plan(plan_file, rank=rank, world=world, local_rank=local_rank,
                                 resume=resume, dry_run=False, device=device, library=library,
                                 register=register, cache_dir=cache_dir, progress=progress,
                                 log=log, group=group)  # fmt: skip
            outcome = {"rank": rank, "concepts": result.concepts}
            error: Exception | None = None
        except Exception as exc:  # the other ranks wait in gather(): tell them, then raise
            facts = (
                {**exc.to_dict(), "exit_code": exc.exit_code}
                if isinstance(exc, ConceptlibError)
                else {"error": "error", "message": f"{type(exc).__name__}: {exc}", "exit_code": 1}
            )
            outcome = {"rank": rank, "error": facts}
            error, result = exc, None
        gathered = group.gather(outcome)
        if error is not None:
            raise error
        assert result is not None
        result.concepts = [c for o in gathered for c in o.get("concepts", [])]
        result.concepts.sort(key=lambda c: c.get("plan_index", 0))
        result.failures = [dict(o["error"], rank=o["rank"]) for o in gathered if "error" in o]
        return result
    finally:
        group.close()


def _train_plan(
    plan_file: str | os.PathLike[str],
    *,
    rank: int,
    world: int,
    local_rank: int,
    resume: bool,
    dry_run: bool,
    device: str | None,
    library: Library | None,
    register: bool,
    cache_dir: str | os.PathLike[str] | None,
    progress: Callable[[str, TrainProgress], None] | None,
    log: Callable[[str], None] | None,
    group: Any = None,
) -> PlanResult:
    from conceptlib.config import load_settings
    from conceptlib.models.base import base_tokenizers, resolve_device
    from conceptlib.trainer import captions as caption_mod
    from conceptlib.trainer import init_from as start_mod
    from conceptlib.trainer.images import MIN_TRAINING_IMAGES, load_training_images
    from conceptlib.trainer.outputs import check_tokenizers
    from conceptlib.trainer.plan import check_plan, in_concept, read_plan
    from conceptlib.trainer.templates import load_templates
    from conceptlib.trainer.train import _check_registrable, _check_trigger, _precision

    plan = read_plan(plan_file)
    s = plan.settings
    schedules = check_plan(plan)
    with in_concept(plan, None, "device"):
        dev = resolve_device(device if device is not None else s["device"])
        if world > 1 and dev == "cuda":
            dev = f"cuda:{local_rank}"
    with in_concept(plan, None, "precision"):
        precision, dtype = _precision(s["precision"], dev)
    if group is not None:
        group.start(dev)
    owned = None
    if (register or any(c.init_from for c in plan.concepts)) and library is None:
        from conceptlib.registry.library import Library

        library = owned = Library.open()
    try:
        starts: dict[str, Any] = {}
        for c in plan.concepts:  # init_from: the entry's vectors, before anything loads
            if c.init_from is not None:
                with in_concept(plan, c, "init_from"):
                    start = start_mod.load_init_from(
                        library, c.init_from, init=c.init,
                        vectors=c.vectors if c.vectors_given else None, name=c.name,
                    )  # fmt: skip
                c.vectors = start.info.num_vectors
                starts[c.name] = start
        if register:
            for c in plan.concepts:
                with in_concept(plan, c, "name"):
                    replaces = c.name in starts and starts[c.name].same_name
                    _check_registrable(library, c.name, c.tags, new_version=replaces)
        settings = library.settings if library is not None else load_settings()
        run_dir = Path(s["run_dir"]) if s["run_dir"] else settings.runs_dir / plan_dir_name(plan)
        ckpt_path = run_dir / checkpoint_name(rank, world)
        _check_checkpoint(plan, ckpt_path, resume)
        tiny_cache = Path(cache_dir) if cache_dir else settings.cache_dir
        early = base_tokenizers(s["base"], cache_dir=tiny_cache, config=s["base_config"])
        for c in plan.concepts if early else ():  # names and initializers against the vocabulary
            if register:
                with in_concept(plan, c, "name"):
                    _check_trigger(c.name, c.vectors, early, str(s["base"]))
            if c.init:
                with in_concept(plan, c, "init"):
                    _check_init_tokens(c.init, early)
            with in_concept(plan, c, "validation_prompts" if c.name not in starts else None):
                check_tokenizers(c.outputs, starts.get(c.name), early, c.vectors, str(s["base"]))
        prepared = []
        for i, c in enumerate(plan.concepts):
            with in_concept(plan, c, "templates"):
                templates = load_templates(c.templates, kind=c.kind)
                templates = caption_mod.caption_templates(
                    templates, c.captions, given=c.templates is not None
                )
            with in_concept(plan, c, "images"):
                imgs = load_training_images(
                    c.images,
                    min_images=MIN_TRAINING_IMAGES if s["min_images"] is None else s["min_images"],
                )
            with in_concept(plan, c, "captions"):
                per_image, notes = caption_mod.prepare_captions(
                    imgs, c.captions, c.caption_extension, templates, name=c.name,
                    vectors=c.vectors, tokenizers=early,
                )  # fmt: skip
            for note in notes if log else ():
                log(f"{c.name}: {note}")
            prepared.append(_Prepared(c, imgs, templates, schedules[c.name], i % world,
                                      per_image, starts.get(c.name)))  # fmt: skip
        mine = [p for p in prepared if p.rank == rank]
        if dry_run:
            return PlanResult(
                plan=plan.path, sha256=plan.sha256, run_dir=run_dir, rank=rank, world_size=world,
                results=[], dry_run=True,
                concepts=[_dry(plan, p, dev, precision) for p in prepared],
            )  # fmt: skip
        if not mine:
            say = log or (lambda line: None)
            say(f"rank {rank} of {world}: no concept of the plan falls to this rank")
            return PlanResult(plan=plan.path, sha256=plan.sha256, run_dir=run_dir, rank=rank,
                              world_size=world, results=[])  # fmt: skip
        results = _train_share(
            plan, mine, run_dir=run_dir, ckpt_path=ckpt_path, dev=dev, dtype=dtype,
            precision=precision, resume=resume, library=library if register else None,
            tiny_cache=tiny_cache, progress=progress, log=log, rank=rank, world=world,
            early=bool(early),
        )  # fmt: skip
        concepts = []
        for p, r in zip(mine, results, strict=True):
            d = r.to_dict()
            d.update(plan_index=p.spec.index, rank=rank)
            concepts.append(d)
        return PlanResult(plan=plan.path, sha256=plan.sha256, run_dir=run_dir, rank=rank,
                          world_size=world, results=results, concepts=concepts)  # fmt: skip
    finally:
        if owned is not None:
            owned.close()


def _check_init_tokens(init: str, tokenizers: Sequence[tuple[str, Any]]) -> None:
    """An initializer every tokenizer turns into tokens (before the weights load; the
    engine checks again, as ``train`` does)."""
    from conceptlib.errors import UsageError

    for slot, tok in tokenizers:
        if not tok(init, add_special_tokens=False).input_ids:
            raise UsageError(
                f"init {init!r} has no tokens in the {slot} tokenizer; expected word(s) close "
                "to the concept"
            )


def _check_checkpoint(plan: Plan, ckpt_path: Path, resume: bool) -> None:
    from conceptlib.trainer.checkpoint import require_checkpoint

    if resume:
        require_checkpoint(ckpt_path)
    elif ckpt_path.exists():
        raise TrainingError(
            f"an unfinished run of plan {str(plan.path)!r} has a checkpoint at {ckpt_path}",
            hint="pass --resume to continue it, or delete the file to start over",
            path=str(ckpt_path),
        )


def _dry(plan: Plan, p: _Prepared, dev: str, precision: str) -> dict[str, Any]:
    c = p.spec
    return {
        "plan_index": c.index, "name": c.name, "rank": p.rank, "init": c.init, "kind": c.kind,
        "vectors": c.vectors, "lr": c.lr, "lr_schedule": c.lr_schedule, "seed": c.seed,
        "batch": c.batch, "tags": c.tags, "training_image_count": p.imgs.count,
        "training_images_hash": p.imgs.hash, "template_count": len(p.templates),
        "base": plan.settings["base"], "steps": plan.settings["steps"], "device": dev,
        "precision": precision,
    }  # fmt: skip


def _config(plan: Plan, p: _Prepared, bm: Any, res: int, precision: str, prediction: str,
            ztsnr: bool, world: int, outputs: Any, memory: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """The concept's run config: ``train()``'s keys (buckets off), plus where the plan
    put it."""
    from conceptlib.trainer.checkpoint import RESUME_DEFAULTS
    from conceptlib.trainer.init_from import init_config
    from conceptlib.trainer.train import _version

    c, s = p.spec, plan.settings
    config = {
        "name": c.name, "init": c.init, "base": bm.ref, "base_model": bm.model_id,
        "base_config": s["base_config"],
        "base_model_fingerprint": bm.fingerprint, "family": bm.family.value,
        "vectors": c.vectors, "kind": str(Kind(c.kind)), "steps": s["steps"], "lr": c.lr,
        "batch": c.batch, "resolution": res, "seed": c.seed, "templates": c.templates,
        "template_count": len(p.templates),
        "templates_sha256": hashlib.sha256("\n".join(p.templates).encode()).hexdigest(),
        "tags": list(c.tags), "precision": precision, "device": bm.device,
        "checkpoint_every": s["checkpoint_every"], "sample_every": s["sample_every"],
        "save_every": s["save_every"], "weight_decay": c.weight_decay, "flip": c.flip,
        "compile": s["compile"], "lr_schedule": c.lr_schedule,
        "lr_warmup_steps": c.lr_warmup_steps, "prediction_type": prediction,
        "zero_terminal_snr": ztsnr, "base_markers": dict(bm.markers),
        "clip_skip": s["clip_skip"], "training_images_hash": p.imgs.hash,
        "training_image_count": p.imgs.count, "captions": c.captions,
        "caption_extension": c.caption_extension, "buckets": False, **init_config(p.start),
        **memory, **outputs.options.config(),
        "sample_steps": s["sample_steps"], "conceptlib_version": _version(),
        "resume_changes": [],
        "plan": {
            "path": str(plan.path), "sha256": plan.sha256, "index": c.index,
            "concepts": plan.names, "world_size": world, "rank": p.rank,
        },
        "co_trained": [n for n in plan.names if n != c.name],
    }  # fmt: skip
    for key, value in RESUME_DEFAULTS.items():  # settings of train() a plan leaves at default
        config.setdefault(key, value)
    return config


def _train_share(
    plan: Plan,
    mine: list[_Prepared],
    *,
    run_dir: Path,
    ckpt_path: Path,
    dev: str,
    dtype: Any,
    precision: str,
    resume: bool,
    library: Library | None,
    tiny_cache: Path,
    progress: Callable[[str, TrainProgress], None] | None,
    log: Callable[[str], None] | None,
    rank: int,
    world: int,
    early: bool = True,
) -> list[TrainResult]:
    """Load the base model once, build every concept of this rank, train, register."""
    from conceptlib.models.base import load_base
    from conceptlib.models.libraries import quiet_libraries
    from conceptlib.trainer import init_from as start_mod
    from conceptlib.trainer import memory
    from conceptlib.trainer.images import crop_geometry, to_pixels
    from conceptlib.trainer.loop import TextualInversion, check_clip_skip
    from conceptlib.trainer.outputs import RunOutputs, check_tokenizers
    from conceptlib.trainer.plan import in_concept
    from conceptlib.trainer.run import Run, device_name
    from conceptlib.trainer.train import _check_trigger, _schedule_warnings

    s = plan.settings
    steps = s["steps"]
    say = log or (lambda line: None)
    runs: list[Run] = []
    for p in mine:
        name = p.spec.name
        run = Run(
            progress=(lambda r, n=name: progress(n, r)) if progress else None,
            log=(lambda line, n=name: say(f"{n}: {line}")) if log else None,
            steps=steps, checkpoint_every=s["checkpoint_every"],
        )  # fmt: skip
        run.set_dir(run_dir / start_mod.run_folder_name(name, p.start))
        run.ckpt_path = ckpt_path  # the plan's one checkpoint: kept on NaN, named on Ctrl-C
        run.outputs = RunOutputs(p.spec.outputs, name)
        for w in run.outputs.options.warnings:
            run.say(w)
        if p.start is not None:
            run.parents = [p.start.parent(p.start.info.name)]
            run.replaces = p.start.info if p.start.same_name else None
        runs.append(run)
    engine: MultiConcept | None = None
    try:
        for run in runs:
            run.report(0, None, phase="setup")
        for p, run in zip(mine, runs, strict=True):
            with in_concept(plan, p.spec, "clip_model"):
                run.outputs.load_scorer(dev, p.imgs.images)
        for run in runs:  # images and captions were checked when the plan was prepared
            run.inputs_checked()
        with in_concept(plan, None, "base"):
            bm = load_base(s["base"], device=dev, dtype=dtype, cache_dir=tiny_cache,
                           config=s["base_config"])  # fmt: skip
        if library is not None:
            for p in mine:
                with in_concept(plan, p.spec, "name"):
                    _check_trigger(p.spec.name, p.spec.vectors,
                                   [(x.slot, x.tokenizer) for x in bm.slots], bm.ref)  # fmt: skip
        for p in mine:
            with in_concept(plan, p.spec, "init_from"):
                start_mod.check_loaded(p.start, bm)  # family and widths
            if not early:  # a single file without base_config: its tokenizers only now
                with in_concept(plan, p.spec, "validation_prompts"):
                    check_tokenizers(p.spec.outputs, None,
                                     [(x.slot, x.tokenizer) for x in bm.slots],
                                     p.spec.vectors, bm.ref)  # fmt: skip
        res = int(s["resolution"] or bm.native_resolution)
        with in_concept(plan, None, "clip_skip"):
            check_clip_skip(bm, s["clip_skip"])
        ckpt, _why, mem, mem_lines = memory.choose_checkpointing(
            s["gradient_checkpointing"], bm, resolution=res,
            batch=sum(p.spec.batch for p in mine), accumulate=1, precision=precision,
        )  # fmt: skip
        for line in mem_lines:
            say(line)
        memory_keys = {"gradient_checkpointing": ckpt, "memory_estimate": mem.to_dict()}
        prediction, ztsnr, notes = _schedule_warnings(bm, s["prediction_type"],
                                                      s["zero_terminal_snr"])  # fmt: skip
        for note in notes:
            say(note)
        shown = ", ".join(p.spec.name for p in mine)
        where = f" (rank {rank} of {world})" if world > 1 else ""
        say(f"plan {plan.path.name}: base {bm.model_id} ({bm.family.value}) at {res}px, "
            f"{bm.device} {precision}; training {shown}{where}")  # fmt: skip
        configs = [
            _config(plan, p, bm, res, precision, prediction, ztsnr, world, run.outputs, memory_keys)
            for p, run in zip(mine, runs, strict=True)
        ]
        engines: list[TextualInversion] = []
        with quiet_libraries():
            try:
                for i, (p, run) in enumerate(zip(mine, runs, strict=True)):
                    c = p.spec
                    lead = i == len(mine) - 1  # the one UNet: checkpointed (and restored) once
                    with in_concept(plan, c):
                        engines.append(TextualInversion(
                            bm, to_pixels(p.imgs.images, res), p.templates, name=c.name,
                            init=c.init or "", vectors=c.vectors, lr=p.schedule.rate(1),
                            batch=c.batch, seed=c.seed, weight_decay=c.weight_decay,
                            flip=c.flip, total_steps=steps,
                            geometry=crop_geometry(p.imgs.images, res),
                            prediction_type=prediction, zero_terminal_snr=ztsnr,
                            clip_skip=s["clip_skip"], lr_schedule=p.schedule,
                            image_templates=p.per_image,
                            init_vectors=p.start.vectors if p.start else None,
                            gradient_checkpointing=ckpt and lead,
                        ))  # fmt: skip
                    run.engine = engines[-1]
                engine = MultiConcept(engines, compile=s["compile"])
            except BaseException:
                for e in reversed(engines):
                    e.close()
                raise
            try:
                for p, run, e in zip(mine, runs, engines, strict=True):
                    for r in e.init_reports:
                        msg = r.message(p.spec.init)
                        if msg:
                            run.say(msg)
                if resume:
                    _resume(engine, runs, configs, ckpt_path, plan, [p.spec for p in mine])
                for p, run, config in zip(mine, runs, configs, strict=True):
                    run.keep = {
                        "format": "conceptlib-kept-steps/1", "config": config,
                        "device": device_name(engine.device),
                        "description": p.spec.description,
                        "init_tokens": {r.slot: r.tokens for r in run.engine.init_reports},
                        "parents": run.parents,
                    }  # fmt: skip
                    run.outputs.open_board(run.dir, config, run.engine.step_count)
                _loop(engine, runs, configs, ckpt_path, steps=steps, plan=plan,
                      sample_steps=s["sample_steps"] or (20 if bm.is_tiny else 30),
                      checkpoint_every=s["checkpoint_every"], sample_every=s["sample_every"],
                      save_every=s["save_every"] or 0)  # fmt: skip
                from conceptlib.trainer.checkpoint import vectors_problem

                for run, e, config in zip(runs, engines, configs, strict=True):
                    problem = vectors_problem(e.vectors())  # before any is registered
                    if problem is not None:
                        with in_concept(plan, _spec(plan, config)):
                            run._diverged(steps, problem, config)
                results = []
                for p, run, e, config in zip(mine, runs, engines, configs, strict=True):
                    c = p.spec
                    results.append(run.finish(
                        e, bm, config, p.imgs, name=c.name, init=c.init, kind=c.kind,
                        tags=c.tags, description=c.description, precision=precision,
                        library=library,
                    ))  # fmt: skip
                return results
            finally:
                for run in runs:
                    run.outputs.close()  # the event files flushed: the end, errors, Ctrl-C
                engine.close()
    except Exception:
        for run in runs:  # every concept stops with the plan (a finished one stays done)
            run.ended("failed")
        raise
    except KeyboardInterrupt as exc:
        for run in runs:
            run.ended("interrupted")  # the progress files (a finished concept's stays done)
        last = max((r.last_good for r in runs if r.last_good is not None), default=None)
        kept = ckpt_path if ckpt_path.is_file() else None
        raise TrainingInterrupted(
            step=engine.step_count if engine is not None else None, total=steps,
            run_dir=run_dir, checkpoint=kept, checkpoint_step=last if kept else None,
            checkpoint_every=s["checkpoint_every"],
        ) from exc  # fmt: skip


def _resume(
    engine: MultiConcept,
    runs: list[Any],
    configs: list[dict[str, Any]],
    path: Path,
    plan: Plan,
    specs: list[ConceptSpec],
) -> None:
    """Every concept from the plan checkpoint, checked as ``train(resume=True)`` checks."""
    from conceptlib.trainer.checkpoint import load_checkpoint
    from conceptlib.trainer.plan import in_concept

    names = [c.name for c in specs]
    state, saved = load_checkpoint(path)
    try:
        if saved.get("format") != PLAN_CHECKPOINT:
            raise TrainingError(f"{path}: not a plan run's checkpoint", path=str(path))
        states, saved_configs = state["concepts"], saved["concepts"]
        held = sorted(states)
        step = int(state["step"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TrainingError(f"{path}: unreadable checkpoint ({exc!r})", path=str(path)) from exc
    if held != sorted(names) or sorted(saved_configs) != held:
        raise TrainingError(
            f"cannot resume {path}: it holds the concepts {', '.join(held)}; this run trains "
            f"{', '.join(names)}",
            hint="resume with the same concepts (and the same number of processes), or "
            "delete the checkpoint to start over",
            path=str(path),
        )
    for spec, run, e, config in zip(specs, runs, engine.engines, configs, strict=True):
        with in_concept(plan, spec):
            run.restore(e, config, states[spec.name], saved_configs[spec.name], path)
    if engine.scaler is not None and "scaler" in state:
        engine.scaler.load_state_dict(state["scaler"])
    engine.step_count = step


def _loop(
    engine: MultiConcept,
    runs: list[Any],
    configs: list[dict[str, Any]],
    ckpt_path: Path,
    *,
    plan: Plan,
    steps: int,
    checkpoint_every: int,
    sample_every: int,
    sample_steps: int,
    save_every: int,
) -> None:
    """Step until ``steps``; read every concept's losses at the sync points (as
    :meth:`Run.train <conceptlib.trainer.run.Run.train>` does for one), checkpoint all
    concepts in one file, sample and keep steps per concept."""
    import numpy as np

    from conceptlib.trainer.checkpoint import save_checkpoint, vectors_problem
    from conceptlib.trainer.plan import in_concept
    from conceptlib.trainer.run import SYNC_EVERY_CUDA, points_due

    engines = engine.engines
    for run, e in zip(runs, engines, strict=True):
        run.losses = e.read_losses(0, e.step_count)
        run.report(e.step_count, run.losses[-1] if run.losses else None)
    read_upto = first = engine.step_count
    sync_every = SYNC_EVERY_CUDA if engine.device.type == "cuda" else 1
    tick = time.perf_counter()
    while engine.step_count < steps:
        engine.step()
        s = engine.step_count
        ckpt_now, sample_now, keep_now = points_due(
            s, steps, checkpoint_every=checkpoint_every, sample_every=sample_every,
            save_every=save_every,
        )  # fmt: skip
        if not (s % sync_every == 0 or s == steps or ckpt_now or sample_now or keep_now):
            continue
        elapsed = time.perf_counter() - tick
        for run, e, config in zip(runs, engines, configs, strict=True):
            fresh = e.read_losses(read_upto, s)  # one host sync per concept
            run.train_seconds += elapsed
            bad = next((i for i, v in enumerate(fresh) if not math.isfinite(v)), None)
            if bad is not None:
                with in_concept(plan, _spec(plan, config)):
                    run._nan(read_upto + bad + 1, fresh[bad], config)
            run.losses.extend(fresh)
            run.outputs.losses(read_upto + 1, fresh, e.lr_schedule.rate)
            rate = (s - first) / run.train_seconds if run.train_seconds > 0 else None
            run.report(s, float(np.mean(fresh)), rate=rate)
        read_upto = s
        if ckpt_now:
            names = [c["name"] for c in configs]
            state = engine.state_dict(names, [run.wall() for run in runs])
            for run, config in zip(runs, configs, strict=True):
                problem = vectors_problem(state["concepts"][config["name"]]["vectors"])
                if problem is not None:
                    with in_concept(plan, _spec(plan, config)):
                        run._diverged(s, problem, config)
            saved = {"format": PLAN_CHECKPOINT, "plan_sha256": plan.sha256,
                     "concepts": {c["name"]: c for c in configs}}  # fmt: skip
            save_checkpoint(ckpt_path, state, saved)
            for run in runs:
                run.last_good = s
        if sample_now:
            for run, e in zip(runs, engines, strict=True):
                run.samples(e, s, sample_steps)
        if keep_now:
            for run, e in zip(runs, engines, strict=True):
                run.keep_step(e, s, sample_steps, sampled=sample_now)
        tick = time.perf_counter()
    for run, e in zip(runs, engines, strict=True):
        run.samples(e, steps, sample_steps)
        if save_every:
            run.keep_step(e, steps, sample_steps, sampled=True)


def _spec(plan: Plan, config: dict[str, Any]) -> ConceptSpec:
    return plan.concepts[int(config["plan"]["index"]) - 1]

"""The bookkeeping of one ``train()`` call: log, progress, losses, checkpoints,
samples, kept steps, and the final registration."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from conceptlib.errors import NaNLoss, TrainingError
from conceptlib.trainer.results import TrainingInterrupted, TrainProgress, TrainResult

if TYPE_CHECKING:
    from conceptlib.registry.library import Library

#: Steps between reads of the loss on a GPU (each read is a host sync).
SYNC_EVERY_CUDA = 10
#: ``final_loss`` is the mean loss of the last this-many steps.
FINAL_LOSS_WINDOW = 50


def points_due(
    step: int, steps: int, *, checkpoint_every: int, sample_every: int, save_every: int
) -> tuple[bool, bool, bool]:
    """Whether ``step`` is a checkpoint, sample or kept step (each ``every`` 0: never;
    the last step is none of them: the run's end writes its own outputs)."""

    def due(every: int) -> bool:
        return bool(every) and step % every == 0 and step < steps

    return due(checkpoint_every), due(sample_every), due(save_every)


class Run:
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
        from conceptlib.trainer.outputs import OutputOptions, RunOutputs
        from conceptlib.trainer.validation import Validation

        # What is rendered, scored and logged (train() sets the run's own options).
        self.outputs = RunOutputs(OutputOptions(Validation(), [], tensorboard=False), "")
        self.sample_columns: list[str] = []
        self.parents: list[dict[str, Any]] = []  # --init-from: the entry it started from
        self.replaces: Any = None  # --init-from under the entry's own name: that entry
        self.dir = Path(".")
        self.ckpt_path = Path(".")
        self.progress_file: Any = None  # the run folder's progress.json, once it is known
        self.inputs_ok = False  # progress.json is written only after the inputs' checks

    def set_dir(self, run_dir: Path) -> None:
        from conceptlib.trainer.checkpoint import CHECKPOINT_NAME
        from conceptlib.trainer.progress_file import ProgressFile

        self.dir = run_dir
        self.ckpt_path = run_dir / CHECKPOINT_NAME
        self.dir_known = True
        self.progress_file = ProgressFile(run_dir, run_dir.name, self.steps)

    def interrupted(self) -> TrainingInterrupted:
        """What Ctrl-C leaves behind: the steps done and the checkpoint kept (if any)."""
        ckpt = self.ckpt_path if self.dir_known and self.ckpt_path.is_file() else None
        self.ended("interrupted")
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
        eta = (self.steps - step) / rate if rate else None
        if self.progress_file is not None and self.inputs_ok:  # before the callback
            last = f"samples/{self.sample_paths[-1].name}" if self.sample_paths else None
            self.progress_file.update(step, loss, phase=phase, steps_per_s=rate, eta_s=eta,
                                      last_sample=last)  # fmt: skip
        if self.progress is not None:
            self.progress(TrainProgress(step, self.steps, loss, rate, eta, phase))

    def inputs_checked(self) -> None:
        """The user's inputs (options, images, captions) passed their checks: from here
        on the run folder shows progress; a run refused before leaves no file there."""
        self.inputs_ok = True
        if self.progress_file is not None:
            self.progress_file.update(0, None, phase="setup")

    def ended(self, phase: str) -> None:
        """The run folder's progress file says the run ended (failed, interrupted)."""
        if self.progress_file is not None:
            step = self.engine.step_count if self.engine is not None else None
            self.progress_file.end(phase, step)

    def wall(self) -> float:
        return self.previous_wall + (time.perf_counter() - self.started)

    def resume(self, engine: Any, config: dict[str, Any]) -> None:
        """Continue from the checkpoint: same settings except :data:`RESUME_MAY_CHANGE
        <conceptlib.trainer.checkpoint.RESUME_MAY_CHANGE>`, each change recorded in
        ``config["resume_changes"]``; vectors that would fail the importer are refused."""
        from conceptlib.trainer.checkpoint import load_checkpoint

        state, saved = load_checkpoint(self.ckpt_path)
        self.restore(engine, config, state, saved, self.ckpt_path)

    def restore(
        self, engine: Any, config: dict[str, Any], state: Any, saved: Any, path: Path
    ) -> None:
        """:meth:`resume` from a checkpoint already read (a plan run's file holds the
        ``state`` and ``saved`` config of each of its concepts)."""
        from conceptlib.trainer.checkpoint import check_resumable, vectors_problem

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
        if self.outputs is not None and isinstance(state.get("quality"), list):
            self.outputs.quality = [q for q in state["quality"] if isinstance(q, dict)]
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
        images, self.sample_columns = self.outputs.render(engine, step, n_steps)
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
            for note in engine.pop_notes() if getattr(engine, "notes", None) else ():
                self.say(note)
            s = engine.step_count
            ckpt_now, sample_now, keep_now = points_due(
                s, steps, checkpoint_every=checkpoint_every, sample_every=sample_every,
                save_every=save_every,
            )  # fmt: skip
            if not (s % sync_every == 0 or s == steps or ckpt_now or sample_now or keep_now):
                continue
            fresh = engine.read_losses(read_upto, s)  # the one host sync
            self.train_seconds += time.perf_counter() - tick
            bad = next((i for i, v in enumerate(fresh) if not math.isfinite(v)), None)
            if bad is not None:
                self._nan(read_upto + bad + 1, fresh[bad], config)
            self.losses.extend(fresh)
            self.outputs.losses(read_upto + 1, fresh, engine.lr_schedule.rate)
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
                state["quality"] = list(self.outputs.quality)
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
            images, _ = self.outputs.render(engine, step, sample_steps)
        save_step(self.dir, name=self.keep["config"]["name"], step=step, vectors=vectors,
                  images=images, losses=self.losses, wall_time_s=self.wall(),
                  run_facts=self.keep, metrics=self.outputs.at(step))  # fmt: skip
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
        self.ended("failed")
        raise NaNLoss(
            f"the loss became {value} at step {step}; training stopped and {self._kept()}",
            hint=self._remedy(config),
            step=step,
            checkpoint=str(self.ckpt_path) if self.last_good is not None else None,
        )

    def _diverged(self, step: int, problem: str, config: dict[str, Any]) -> NoReturn:
        self.ended("failed")
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
        quality = self.outputs.quality
        loss_png = loss_curve_png(self.losses, title=title, quality=quality)
        atomic_write_bytes(self.dir / "loss.png", loss_png)
        grid_png = sample_grid_png(self.sample_rows, columns=self.sample_columns)
        atomic_write_bytes(self.dir / "samples.png", grid_png)
        device = device_name(engine.device)
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
            from conceptlib.trainer.steps import add_version

            record = TrainingRunRecord(
                config=config, steps=self.steps, final_loss=final_loss,
                wall_time_s=self.wall(), device=device, **self.outputs.at(self.steps),
                metrics={"quality": quality} if quality else {}, **facts,
            )  # fmt: skip
            info = add_version(
                library, emb, self.replaces, name=name, kind=kind, source="trained",
                source_ref=str(self.dir), tags=tags, description=description,
                previews=previews, training_run=record, parents=self.parents,
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
            quality=list(quality), parents=list(info.parents if info else self.parents),
            tensorboard_dir=self.outputs.board.dir if self.outputs.board else None,
        )  # fmt: skip


def device_name(device: Any) -> str:
    if device.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    import platform

    return f"cpu ({platform.processor() or platform.machine()})"

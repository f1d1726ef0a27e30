"""A run's outputs beyond the vectors: the validation images, their CLIP-I / CLIP-T
scores, and the TensorBoard event files (:mod:`~conceptlib.trainer.validation`,
:mod:`~conceptlib.trainer.quality`, :mod:`~conceptlib.trainer.tensorboard`).

:func:`check_outputs` checks the options before anything loads; :class:`RunOutputs`
renders, scores and logs for :class:`~conceptlib.trainer.run.Run` at its sync points.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptlib.trainer.validation import Validation


@dataclass
class OutputOptions:
    """The checked output options of a run."""

    validation: Validation
    warnings: list[str]
    clip_model: str | None = None
    clip_folder: Path | None = None
    tensorboard: bool = True

    def config(self) -> dict[str, Any]:
        return {**self.validation.config(), "clip_model": self.clip_model,
                "tensorboard": self.tensorboard}  # fmt: skip


def check_outputs(
    *,
    name: str,
    prompts: Sequence[str],
    negative: str | None,
    seed: int,
    guidance: float,
    clip_model: str | os.PathLike[str] | None,
    tensorboard: bool,
) -> OutputOptions:
    """Check the validation, CLIP and TensorBoard options (nothing loads; a
    ``clip_model`` is found and its config read).

    Raises:
        UsageError: (exit 2) see :func:`~conceptlib.trainer.validation.check_validation`
            and :func:`~conceptlib.trainer.quality.resolve_clip_model`.
    """
    from conceptlib.trainer.validation import check_validation

    validation, warnings = check_validation(
        prompts, name=name, negative=negative, seed=seed, guidance=guidance
    )
    folder = None
    if clip_model is not None:
        from conceptlib.trainer.quality import resolve_clip_model

        folder = resolve_clip_model(clip_model)
    return OutputOptions(validation, warnings, str(clip_model) if clip_model else None,
                         folder, bool(tensorboard))  # fmt: skip


@dataclass
class RunOutputs:
    """Renders the validation images, scores them, and logs to TensorBoard."""

    options: OutputOptions
    name: str
    scorer: Any = None  # a quality.ClipScorer when --clip-model is given
    board: Any = None  # a tensorboard.TensorBoardLog while the run writes one
    #: One ``{"step", "clip_i", "clip_t"}`` per scored step, in order.
    quality: list[dict[str, Any]] = field(default_factory=list)

    def load_scorer(self, device: Any, reference: Sequence[Any]) -> None:
        """Load ``--clip-model`` and embed the training images (before training)."""
        if self.options.clip_folder is not None:
            from conceptlib.trainer.quality import ClipScorer

            self.scorer = ClipScorer(self.options.clip_folder, device=device, reference=reference)

    def open_board(self, run_dir: Path, config: dict[str, Any], step: int) -> None:
        """Start the event files (a resumed run purges what followed ``step``)."""
        if self.options.tensorboard:
            from conceptlib.trainer.tensorboard import TensorBoardLog

            self.board = TensorBoardLog(run_dir, purge_step=step or None)
            self.board.config(config, step)

    def losses(self, first_step: int, losses: Sequence[float], rate: Any) -> None:
        if self.board is not None:
            self.board.losses(first_step, losses, rate)

    def render(self, engine: Any, step: int, n_steps: int) -> tuple[list[Any], list[str]]:
        """The validation images at ``step`` and the column labels of their grid row;
        scored and logged."""
        v = self.options.validation
        prompts = v.prompts_for(engine.templates)
        images = engine.generate(
            prompts, seed=v.seed, steps=n_steps, guidance=v.guidance, negative=v.negative
        )
        if self.scorer is not None:
            scores = self.scorer.score(images, prompts)
            self.quality = [q for q in self.quality if q["step"] != step]
            self.quality.append({"step": step, **scores})
            if self.board is not None:
                self.board.quality(step, scores)
        if self.board is not None:
            self.board.images(step, images)
        from conceptlib.trainer.validation import column_labels

        return images, column_labels(prompts, self.name)

    def at(self, step: int) -> dict[str, float]:
        """``{"clip_i", "clip_t"}`` scored at ``step`` (empty when not scored)."""
        for q in self.quality:
            if q["step"] == step:
                return {"clip_i": q["clip_i"], "clip_t": q["clip_t"]}
        return {}

    def close(self) -> None:
        """Flush and close the event files (the end, an error, Ctrl-C)."""
        if self.board is not None:
            board, self.board = self.board, None
            board.close()


def check_tokenizers(
    options: OutputOptions,
    start: Any,
    tokenizers: Sequence[tuple[str, Any]] | None,
    vectors: int,
    base: str,
) -> None:
    """With the base model's tokenizers (before its weights load when they can be had
    cheaply): the validation prompts fit, and an ``--init-from`` entry is of its family.

    Raises:
        UsageError: (exit 2) a prompt too long; FamilyMismatch: (exit 3) another family.
    """
    if not tokenizers:
        return
    from conceptlib.trainer.init_from import check_family, family_of_slots
    from conceptlib.trainer.validation import check_token_counts

    check_token_counts(options.validation, tokenizers, vectors)
    family = family_of_slots(tokenizers)
    if start is not None and family is not None:
        check_family(start, family, base)

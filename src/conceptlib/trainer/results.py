"""What a training run reports and returns: progress, the result, an interruption.

Kept apart from :mod:`conceptlib.trainer.train` (the orchestration) and
:mod:`conceptlib.trainer.run` (the bookkeeping) so both can name them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conceptlib.registry.formats.embedding import Embedding
    from conceptlib.schemas.records import EmbeddingInfo


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
    initializer: str | None
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
    #: ``{"step", "clip_i", "clip_t"}`` per scored step (``clip_model``).
    quality: list[dict[str, Any]] = field(default_factory=list)
    #: ``init_from``: the entry the run started from (its ``parents`` record).
    parents: list[dict[str, Any]] = field(default_factory=list)
    tensorboard_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("embedding", "info", "losses")}
        for k in ("run_dir", "embedding_path", "loss_curve_path", "grid_path", "tensorboard_dir"):
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

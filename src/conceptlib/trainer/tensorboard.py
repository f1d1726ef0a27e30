"""TensorBoard event files of a run, written with tensorboardX.

``RUN/tensorboard/`` (the folder to give TensorBoard as its log directory) gets:

* scalars ``train/loss`` (every step) and ``train/lr`` (the schedule's rate), written
  at the run's sync points from the losses already read back (no extra host sync);
* ``quality/clip_i`` and ``quality/clip_t`` at each scored step (``--clip-model``);
* images ``samples/<i>`` (the validation images) at each sample point;
* text ``config`` (the run's config as JSON), once.

A resumed run purges what the interrupted one logged after its checkpoint's step
(TensorBoard's ``purge_step``), so the curves do not double back. ``--no-tensorboard``
turns it off.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"


class TensorBoardLog:
    """One run's event writer (``tensorboardX.SummaryWriter``)."""

    def __init__(self, run_dir: Path, *, purge_step: int | None = None) -> None:
        from tensorboardX import SummaryWriter

        self.dir = Path(run_dir) / TENSORBOARD_DIR
        # The event file is named after the second it was opened in (and the host): a
        # run resumed within that second would truncate the interrupted run's file. A
        # nanosecond suffix keeps both, in order (TensorBoard reads them sorted by name).
        self.writer = SummaryWriter(
            logdir=str(self.dir), purge_step=purge_step or None, flush_secs=30,
            filename_suffix=f".{time.time_ns()}",
        )  # fmt: skip

    def config(self, config: dict[str, Any], step: int) -> None:
        text = json.dumps(config, sort_keys=True, indent=1, default=str)
        # TensorBoard renders text as Markdown: a code block keeps the JSON as it is.
        self.writer.add_text("config", "```\n" + text.replace("```", "'''") + "\n```", step)

    def losses(self, first_step: int, losses: Sequence[float], rate: Any) -> None:
        """``losses[k]`` is step ``first_step + k``'s loss; ``rate(step)`` its lr."""
        for k, value in enumerate(losses):
            step = first_step + k
            self.writer.add_scalar("train/loss", float(value), step)
            self.writer.add_scalar("train/lr", float(rate(step)), step)

    def images(self, step: int, images: Sequence[Any]) -> None:
        import numpy as np

        for i, im in enumerate(images):
            arr = np.asarray(im.convert("RGB"))
            self.writer.add_image(f"samples/{i}", arr, step, dataformats="HWC")

    def quality(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"quality/{key}", float(value), step)

    def close(self) -> None:
        """Flush and close (at the end, on an error and on Ctrl-C)."""
        self.writer.flush()
        self.writer.close()

"""The run folder's ``progress.json``: where a run stands, for readers outside the
process (``conceptlib serve``'s runs page).

Written atomically at the points where the run already reports progress (never an
extra host sync), at most once every :data:`MIN_INTERVAL_S` seconds of wall time
except when the phase changes, and once more when the run ends (done, failed,
interrupted). A failed write is ignored: the file is a view, never the run's state.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import time
from pathlib import Path
from typing import Any

#: The ``format`` field of the file.
PROGRESS_FORMAT = "conceptlib-progress/1"
#: The file's name in the run folder.
PROGRESS_NAME = "progress.json"
#: Least wall time between two writes of the same phase (seconds).
MIN_INTERVAL_S = 1.0
#: The phases a run goes through; the last three end it.
PHASES = ("setup", "train", "samples", "done", "failed", "interrupted")
ENDED = ("done", "failed", "interrupted")


def _number(value: float | None) -> float | None:
    """A finite float, else ``None`` (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class ProgressFile:
    """Writes ``<run_dir>/progress.json`` for one run."""

    def __init__(self, run_dir: Path, name: str, total: int) -> None:
        self.path = Path(run_dir) / PROGRESS_NAME
        self.name = name
        self.total = total
        self.last: dict[str, Any] | None = None  # the last fields written
        self.written_at: float | None = None  # time.monotonic() of that write

    def update(
        self,
        step: int,
        loss: float | None,
        *,
        phase: str,
        steps_per_s: float | None = None,
        eta_s: float | None = None,
        last_sample: str | None = None,
    ) -> None:
        """Record a progress report; written unless one of the same phase was written
        less than :data:`MIN_INTERVAL_S` ago (a phase change is always written)."""
        if self.last is not None and self.last["phase"] in ENDED:
            return  # an ended run's file is final
        now = time.monotonic()
        same_phase = self.last is not None and self.last["phase"] == phase
        if same_phase and self.written_at is not None and now - self.written_at < MIN_INTERVAL_S:
            return
        self._write(
            {
                "step": int(step),
                "loss": _number(loss),
                "steps_per_s": _number(steps_per_s),
                "eta_s": _number(eta_s),
                "phase": phase,
                "last_sample": last_sample,
            },
            now,
        )

    def end(self, phase: str, step: int | None = None, loss: float | None = None) -> None:
        """The run ended (``done``, ``failed`` or ``interrupted``): the final write,
        keeping the last step, loss and sample known unless given."""
        if phase not in ENDED:
            raise ValueError(f"not an end phase: {phase!r}")
        if self.last is None or self.last["phase"] in ENDED:
            return  # never reported (refused before set-up: leave no file), or already ended
        last = self.last
        self._write(
            {
                "step": int(step) if step is not None else last["step"],
                "loss": _number(loss) if loss is not None else last["loss"],
                "steps_per_s": None,
                "eta_s": None,
                "phase": phase,
                "last_sample": last["last_sample"],
            },
            time.monotonic(),
        )

    def _write(self, fields: dict[str, Any], now: float) -> None:
        from conceptlib.trainer.checkpoint import atomic_write_bytes

        doc = {
            "format": PROGRESS_FORMAT,
            "name": self.name,
            "total": int(self.total),
            **fields,
            "updated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "pid": os.getpid(),
        }
        try:
            atomic_write_bytes(self.path, json.dumps(doc, allow_nan=False).encode("utf-8"))
        except (OSError, ValueError):
            return  # a view of the run: never what stops it
        self.last, self.written_at = fields, now

"""Training runs in progress, read from their run folders (``CONCEPTLIB_HOME/runs/<name>``).

A run folder holds a checkpoint while the run is unfinished (the trainer removes it
once the concept is registered), and ``samples/step-NNNNNN-i.png`` as samples are
made. The checkpoint is a safetensors file whose metadata holds the run's config and
the layout of its state (the step, and the tensor with every loss so far); only its
header and the loss tensor are read, each under a cap, never the whole file, and
nothing here imports the trainer or torch. A checkpoint that cannot be read is listed
with its problem rather than hidden.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The file a run keeps while unfinished (the trainer's ``CHECKPOINT_NAME``).
CHECKPOINT_NAME = "checkpoint.safetensors"
#: The checkpoint layout read here (the trainer's ``CHECKPOINT_FORMAT``).
CHECKPOINT_FORMAT = "conceptlib-textual-inversion-checkpoint/2"
#: Largest safetensors header read (a checkpoint's header is a few KiB).
MAX_HEADER = 1024 * 1024
#: Most losses read back (a float32 each).
MAX_LOSSES = 1_000_000
#: Most run folders listed.
MAX_RUNS = 200


@dataclass
class RunStatus:
    """One unfinished run.

    Attributes:
        name: the run folder's name (the concept being trained).
        folder: the run folder.
        step, steps: the step of the last checkpoint and the steps asked for.
        loss: the mean loss of the last (up to) 10 steps at that checkpoint.
        losses: every loss recorded so far (for a small curve).
        updated: when the checkpoint was last written (Unix time).
        last_sample: the newest sample image, if any.
        problem: why the checkpoint could not be read, if it could not.
    """

    name: str
    folder: Path
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    losses: list[float] = field(default_factory=list)
    updated: float = 0.0
    last_sample: Path | None = None
    problem: str | None = None

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.updated)


def runs_in_progress(runs_dir: Path) -> list[RunStatus]:
    """Every run folder under ``runs_dir`` that holds a checkpoint, newest first."""
    if not runs_dir.is_dir():
        return []
    out: list[RunStatus] = []
    for folder in sorted(runs_dir.iterdir())[: MAX_RUNS * 5]:
        ckpt = folder / CHECKPOINT_NAME
        if folder.is_symlink() or not folder.is_dir() or not ckpt.is_file():
            continue
        status = RunStatus(name=folder.name, folder=folder, updated=ckpt.stat().st_mtime)
        try:
            _read_checkpoint(ckpt, status)
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            status.problem = f"unreadable checkpoint ({type(exc).__name__})"
        status.last_sample = _last_sample(folder)
        out.append(status)
        if len(out) >= MAX_RUNS:
            break
    out.sort(key=lambda r: r.updated, reverse=True)
    return out


def find_run(runs_dir: Path, name: str) -> RunStatus | None:
    """The unfinished run whose folder is named ``name`` (looked up among the listed
    ones, never joined to a path)."""
    for run in runs_in_progress(runs_dir):
        if run.name == name:
            return run
    return None


def _last_sample(folder: Path) -> Path | None:
    samples = folder / "samples"
    if not samples.is_dir() or samples.is_symlink():
        return None
    pngs = sorted(p for p in samples.glob("step-*.png") if p.is_file() and not p.is_symlink())
    return pngs[-1] if pngs else None


def _read_checkpoint(path: Path, status: RunStatus) -> None:
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > MAX_HEADER:
            raise ValueError("header too large")
        header = json.loads(fh.read(n))
        meta = header.get("__metadata__") or {}
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a conceptlib checkpoint")
        config = json.loads(meta["config"])
        state = dict(json.loads(meta["state"])["dict"])
        status.steps = _int(config.get("steps"))
        status.step = _int(state["step"]["value"])
        tensor = state.get("losses", {}).get("tensor")
        entry = header.get(tensor) if isinstance(tensor, str) else None
        if isinstance(entry, dict) and entry.get("dtype") == "F32":
            start, end = (int(x) for x in entry["data_offsets"])
            count = (end - start) // 4
            if 0 <= start <= end and count <= MAX_LOSSES:
                fh.seek(8 + n + start)
                raw = fh.read(count * 4)
                losses = list(struct.unpack(f"<{len(raw) // 4}f", raw[: len(raw) // 4 * 4]))
                status.losses = losses
                tail = losses[-10:]
                status.loss = sum(tail) / len(tail) if tail else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def sparkline_points(losses: list[float], width: int = 240, height: int = 48) -> str:
    """``losses`` as the ``points`` of an SVG polyline (at most ``width`` points)."""
    finite = [x for x in losses if x == x and abs(x) != float("inf")]
    if len(finite) < 2:
        return ""
    stride = max(1, len(finite) // width)
    pts = finite[::stride]
    lo, hi = min(pts), max(pts)
    span = (hi - lo) or 1.0
    step = width / (len(pts) - 1)
    return " ".join(
        f"{i * step:.1f},{height - (v - lo) / span * (height - 2) - 1:.1f}"
        for i, v in enumerate(pts)
    )

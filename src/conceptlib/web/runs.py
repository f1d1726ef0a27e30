"""Training runs, read from their run folders (``CONCEPTLIB_HOME/runs/<name>``, and a
plan's ``runs/plan-<plan>/<concept>``).

A run folder holds ``progress.json`` (the trainer's live step, loss, rate, phase and
last sample, rewritten about once a second: :mod:`conceptlib.trainer.progress_file`),
a checkpoint while the run is unfinished (the trainer removes it once the concept is
registered), and ``samples/step-NNNNNN-i.png`` as samples are made. The progress file
is read first, under a size cap, each field checked (type, range; the last sample a
plain file name in the folder's ``samples/``, never a symlink); the checkpoint is a
safetensors file whose metadata holds the run's config and the layout of its state
(the step, and the tensor with every loss so far); only its header and the loss
tensor are read, each under a cap, never the whole file. Nothing here imports the
trainer or torch. A file that cannot be read is listed with its problem rather than
hidden. A run whose progress file says it ended, or whose process is gone, is not
"in progress".
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
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
#: The trainer's progress file (``conceptlib.trainer.progress_file``), its format and cap.
PROGRESS_NAME = "progress.json"
PROGRESS_FORMAT = "conceptlib-progress/1"
MAX_PROGRESS = 64 * 1024
PHASES = ("setup", "train", "samples", "done", "failed", "interrupted")
ENDED = ("done", "failed", "interrupted")
#: A run not updated for this long is stale when its process cannot be checked.
STALE_AFTER_S = 600.0
#: Largest step count, rate (steps/s) and ETA (s) believed.
MAX_STEPS = 10**9
_SAMPLE = re.compile(r"samples/([A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\.png)")
#: Most sub-folders of a run folder looked at for a plan's per-concept runs.
MAX_SUBFOLDERS = 100


@dataclass
class RunStatus:
    """One unfinished run.

    Attributes:
        name: the run folder's name (the concept being trained; ``plan-x/<concept>``
            for a plan's concept).
        folder: the run folder.
        step, steps: the live step (the progress file's; else the last checkpoint's)
            and the steps asked for.
        loss: the mean loss since the previous report (progress file), or of the last
            (up to) 10 steps at the checkpoint.
        losses: every loss recorded at the last checkpoint (for a small curve).
        updated: when the progress file (else the checkpoint) was last written.
        last_sample: the newest sample image, if any.
        problem: why the run's files could not be read, if they could not.
        phase: the progress file's phase (``None``: no progress file).
        steps_per_s, eta_s: the rate and time left, when known.
        checkpoint_step: the step of the last checkpoint, when there is one.
        has_progress: whether the folder holds a progress file (read or not).
        state: ``running``, or ``done``/``failed``/``interrupted`` as the file says,
            or ``stale`` (its process is gone, or it stopped updating).
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
    phase: str | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    checkpoint_step: int | None = None
    state: str = "running"
    has_progress: bool = False

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def age_s(self) -> float:
        return max(0.0, time.time() - self.updated)


def runs_in_progress(runs_dir: Path) -> list[RunStatus]:
    """The runs still going (see :func:`list_runs`), newest first."""
    return [r for r in list_runs(runs_dir) if r.running]


def list_runs(runs_dir: Path) -> list[RunStatus]:
    """Every run folder under ``runs_dir`` (and a plan's per-concept folders one level
    down) that holds a progress file or a checkpoint, newest first."""
    if not runs_dir.is_dir() or runs_dir.is_symlink():
        return []
    out: list[RunStatus] = []
    for folder in sorted(runs_dir.iterdir())[: MAX_RUNS * 5]:
        if folder.is_symlink() or not folder.is_dir():
            continue
        candidates = [(folder.name, folder)]
        try:
            subs = sorted(folder.iterdir())[: MAX_SUBFOLDERS * 10]
        except OSError:
            subs = []
        candidates += [
            (f"{folder.name}/{sub.name}", sub)
            for sub in subs
            if not sub.is_symlink() and _plain_file(sub / PROGRESS_NAME)
        ][:MAX_SUBFOLDERS]
        for name, where in candidates:
            status = _read_run(name, where)
            if status is not None:
                out.append(status)
        if len(out) >= MAX_RUNS:
            break
    out.sort(key=lambda r: r.updated, reverse=True)
    return out[:MAX_RUNS]


def find_run(runs_dir: Path, name: str) -> RunStatus | None:
    """The run whose folder is named ``name`` (looked up among the listed ones, never
    joined to a path)."""
    for run in list_runs(runs_dir):
        if run.name == name:
            return run
    return None


def _plain_file(path: Path) -> bool:
    return not path.is_symlink() and path.is_file()


def _read_run(name: str, folder: Path) -> RunStatus | None:
    ckpt, prog = folder / CHECKPOINT_NAME, folder / PROGRESS_NAME
    has_ckpt, has_prog = _plain_file(ckpt), _plain_file(prog)
    if not has_ckpt and not has_prog:
        return None
    status = RunStatus(name=name, folder=folder, has_progress=has_prog)
    if has_prog:
        status.updated = prog.lstat().st_mtime  # until the file's own updated_at is read
    if has_ckpt:
        status.updated = max(status.updated, ckpt.stat().st_mtime)
        try:
            _read_checkpoint(ckpt, status)
            status.checkpoint_step = status.step
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            status.problem = f"unreadable checkpoint ({type(exc).__name__})"
    status.last_sample = _last_sample(folder)
    if has_prog:
        try:
            _apply_progress(_read_progress(prog), folder, status)
            status.problem = None  # the live file stands in for an unreadable checkpoint
        except (OSError, ValueError, OverflowError, RecursionError) as exc:
            if not has_ckpt:
                status.problem = f"unreadable progress file ({exc})"[:200]
    return status


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not a number JSON allows")


def _read_progress(path: Path) -> dict[str, Any]:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(MAX_PROGRESS + 1)
    if len(raw) > MAX_PROGRESS:
        raise ValueError(f"larger than {MAX_PROGRESS // 1024} KiB")
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError:
        raise ValueError("not JSON") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(doc, dict) or doc.get("format") != PROGRESS_FORMAT:
        raise ValueError("not a conceptlib progress file")
    return doc


def _field_int(doc: dict[str, Any], key: str, lo: int, hi: int) -> int:
    v = doc.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"bad {key}")
    return v


def _field_float(doc: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = doc.get(key)
    if v is None:
        return None
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ValueError(f"bad {key}")
    v = float(v)
    if not math.isfinite(v) or not lo <= v <= hi:
        raise ValueError(f"bad {key}")
    return v


def _apply_progress(doc: dict[str, Any], folder: Path, status: RunStatus) -> None:
    """Check every field of ``doc`` (raising ``ValueError`` at the first bad one),
    then set ``status`` from it."""
    total = _field_int(doc, "total", 1, MAX_STEPS)
    step = _field_int(doc, "step", 0, total)
    loss = _field_float(doc, "loss", -1e30, 1e30)
    rate = _field_float(doc, "steps_per_s", 0.0, 1e9)
    eta = _field_float(doc, "eta_s", 0.0, 1e12)
    phase = doc.get("phase")
    if phase not in PHASES:
        raise ValueError("bad phase")
    pid = _field_int(doc, "pid", 1, 2**31 - 1)
    updated_at = doc.get("updated_at")
    if not isinstance(updated_at, str) or len(updated_at) > 64:
        raise ValueError("bad updated_at")
    try:
        when = _dt.datetime.fromisoformat(updated_at)
    except ValueError:
        raise ValueError("bad updated_at") from None  # its message would echo the text
    if when.tzinfo is None:
        raise ValueError("bad updated_at (no time zone)")
    sample = _sample_of(doc.get("last_sample"), folder)
    status.step, status.steps, status.loss = step, total, loss
    status.steps_per_s, status.eta_s, status.phase = rate, eta, phase
    status.updated = when.timestamp()
    if sample is not None:
        status.last_sample = sample
    status.state = (
        phase if phase in ENDED else ("running" if _alive(pid, status.updated) else "stale")
    )


def _sample_of(value: Any, folder: Path) -> Path | None:
    """``samples/<name>.png`` as a regular file in ``folder`` (no symlink on the way)."""
    if value is None:
        return None
    m = _SAMPLE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError("bad last_sample")
    samples = folder / "samples"
    path = samples / m.group(1)
    if samples.is_symlink() or not samples.is_dir() or not _plain_file(path):
        return None  # named, but not (or no longer) there
    return path


def _alive(pid: int, updated: float) -> bool:
    """Whether process ``pid`` exists; judged by the file's age when it cannot be checked."""
    if os.name == "posix":
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # it exists, run by another user
        except OSError:
            pass
        else:
            return True
    return time.time() - updated <= STALE_AFTER_S


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

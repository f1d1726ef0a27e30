"""Small, atomic training checkpoints.

A checkpoint holds what resuming needs and nothing else: the vectors, the
optimizer state, the generator state, the step, the losses so far, and the run's
config (to refuse resuming a different run). It is kilobytes, written to a
temporary file in the same folder, fsynced, then renamed over the old one, so a
kill at any moment leaves either the previous checkpoint or the new one.

It is read back with ``torch.load(weights_only=True)``: tensors, numbers, strings
and containers only.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from conceptlib.errors import TrainingError

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "conceptlib-textual-inversion-checkpoint/1"

#: Config keys that must match for a run to be resumed (``steps`` may grow).
RESUME_KEYS = (
    "base_model_fingerprint",
    "training_images_hash",
    "init",
    "vectors",
    "kind",
    "lr",
    "batch",
    "resolution",
    "seed",
    "templates_sha256",
    "precision",
    "weight_decay",
    "flip",
)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_checkpoint(
    path: str | os.PathLike[str], state: dict[str, Any], config: dict[str, Any]
) -> None:
    """Write ``state`` (from ``TextualInversion.state_dict``) and ``config`` atomically."""
    import torch

    payload = {
        "format": CHECKPOINT_FORMAT,
        "config_json": json.dumps(config, sort_keys=True),
        **state,
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    remove_stale_temp_files(path)
    atomic_write_bytes(path, buf.getvalue())


def remove_stale_temp_files(path: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files that killed writes of ``path`` left behind (one run writes its
    checkpoint at a time, so any such file is dead)."""
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed.append(stale)
    return removed


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint; return ``(state, config)``.

    Raises:
        TrainingError: missing, unreadable, or not a conceptlib checkpoint.
    """
    import torch

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise TrainingError(
            f"no checkpoint to resume at {path}",
            hint="start the run without --resume",
            path=str(path),
        ) from exc
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise TrainingError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})", path=str(path)
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a conceptlib training checkpoint", path=str(path))
    config = json.loads(payload.pop("config_json"))
    payload.pop("format")
    return payload, config


def check_resumable(saved: dict[str, Any], current: dict[str, Any], step: int, path: Path) -> None:
    """Refuse to resume a checkpoint written by a run with different settings."""
    diffs = [k for k in RESUME_KEYS if saved.get(k) != current.get(k)]
    if diffs:
        shown = "; ".join(
            f"{k}: checkpoint {saved.get(k)!r}, now {current.get(k)!r}" for k in diffs
        )
        raise TrainingError(
            f"cannot resume {path}: the run's settings differ ({shown})",
            hint="resume with the same settings, or delete the checkpoint to start over",
            path=str(path),
        )
    if int(current["steps"]) < step:
        raise TrainingError(
            f"cannot resume {path}: it is at step {step}, past --steps {current['steps']}",
            path=str(path),
        )

"""Small, atomic training checkpoints.

A checkpoint holds what resuming needs and nothing else: the vectors, the
optimizer state, the generator state, the step, the losses so far, and the run's
config (to refuse resuming a different run). It is kilobytes, written to a
temporary file in the same folder, fsynced, then renamed over the old one, so a
kill at any moment leaves either the previous checkpoint or the new one.

The file is a safetensors file: the tensors (vectors, optimizer moments, generator
state, losses) are its tensors, and everything else (the nesting of the state, its
numbers and strings, the config) is JSON in its metadata. No pickle is written or
read, so a tampered run folder can at worst hold wrong numbers.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from conceptlib.errors import TrainingError

CHECKPOINT_NAME = "checkpoint.safetensors"
#: conceptlib 0.1.0 wrote pickled checkpoints under this name; they are not read.
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "conceptlib-textual-inversion-checkpoint/2"

#: Config keys that must match for a run to be resumed.
RESUME_KEYS = (
    "base_model_fingerprint",
    "training_images_hash",
    "init",
    "vectors",
    "kind",
    "batch",
    "resolution",
    "seed",
    "templates_sha256",
    "weight_decay",
    "flip",
    "lr_schedule",
    "lr_warmup_steps",
    "prediction_type",
    "zero_terminal_snr",
    "clip_skip",
    "captions",
    "buckets",
    "bucket_reso_steps",
    "min_bucket_reso",
    "max_bucket_reso",
    "bucket_no_upscale",
    # --init-from: the entry's vectors (by hash). The outputs (validation prompts,
    # --clip-model, --no-tensorboard) may change, as --sample-every may: they
    # change what is rendered and measured, not what is learned.
    "init_from_sha256",
    # --accumulate: the draws of an optimizer step (--gradient-checkpointing and
    # --cuda-graphs change how a step runs, not what it computes: they may change).
    "accumulate",
)
#: What a checkpoint written before a setting existed ran with (read as its value).
RESUME_DEFAULTS: dict[str, Any] = {
    "lr_schedule": "constant",
    "lr_warmup_steps": 0,
    "zero_terminal_snr": False,
    "clip_skip": 1,
    "captions": "off",
    "buckets": False,
    "accumulate": 1,
}
#: Config keys that may differ on resume, each change recorded in the run's
#: ``resume_changes``: the remedies a NaN loss names (a lower ``--lr``, another
#: ``--precision``), a longer ``--steps``, and the device the run continues on.
RESUME_MAY_CHANGE = ("lr", "precision", "steps", "device")


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


# --------------------------------------------------------------------------- state <-> JSON + tensors


def _encode(obj: Any, tensors: dict[str, Any]) -> Any:
    """``obj`` as JSON, its tensors moved into ``tensors`` (named ``t0``, ``t1``...)."""
    import torch

    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"tensor": name}
    if isinstance(obj, dict):
        for key in obj:
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise TypeError(f"checkpoint keys must be str or int, not {type(key).__name__}")
        return {"dict": [[k, _encode(v, tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"list" if isinstance(obj, list) else "tuple": [_encode(v, tensors) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint")


def _decode(node: Any, tensors: dict[str, Any]) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise ValueError("malformed state")
    ((kind, value),) = node.items()
    if kind == "tensor":
        return tensors[value]
    if kind == "dict":
        return {k: _decode(v, tensors) for k, v in value}
    if kind == "list":
        return [_decode(v, tensors) for v in value]
    if kind == "tuple":
        return tuple(_decode(v, tensors) for v in value)
    if kind == "value":
        return value
    raise ValueError(f"malformed state (unknown node {kind!r})")


def save_checkpoint(
    path: str | os.PathLike[str], state: dict[str, Any], config: dict[str, Any]
) -> None:
    """Write ``state`` (from ``TextualInversion.state_dict``) and ``config`` atomically."""
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    skeleton = _encode(state, tensors)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(config, sort_keys=True),
        "state": json.dumps(skeleton),
    }
    data = save(tensors, metadata=metadata)
    remove_stale_temp_files(path)
    atomic_write_bytes(path, data)


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
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    require_checkpoint(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrainingError(f"{path}: cannot read the checkpoint ({exc})", path=str(path)) from exc
    try:
        metadata = _header_metadata(data)
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(f"{path}: not a conceptlib training checkpoint", path=str(path))
        state = _decode(json.loads(metadata["state"]), load(data))
        config = json.loads(metadata["config"])
    except TrainingError:
        raise
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:
        raise TrainingError(
            f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})", path=str(path)
        ) from exc
    if not isinstance(state, dict) or not isinstance(config, dict):
        raise TrainingError(f"{path}: not a conceptlib training checkpoint", path=str(path))
    return state, config


def require_checkpoint(path: str | os.PathLike[str]) -> None:
    """Raise a clear ``TrainingError`` unless there is a checkpoint at ``path`` to resume."""
    path = Path(path)
    if path.is_file():
        return
    legacy = path.with_name(LEGACY_CHECKPOINT_NAME)
    if legacy.is_file():
        raise TrainingError(
            f"{legacy} was written by conceptlib 0.1.0 (a pickled checkpoint), which this "
            "version does not read",
            hint="delete it and start the run again without --resume",
            path=str(legacy),
        )
    raise TrainingError(
        f"no checkpoint to resume at {path}",
        hint="start the run without --resume",
        path=str(path),
    )


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's bytes (ValueError if malformed)."""
    if len(data) < 8:
        raise ValueError("too short for a safetensors file")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header longer than the file")
    header = json.loads(data[8 : 8 + n])
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise ValueError("no metadata")
    return metadata


def check_resumable(
    saved: dict[str, Any], current: dict[str, Any], step: int, path: Path
) -> list[dict[str, Any]]:
    """Refuse to resume a checkpoint written by a run with different settings.

    Every key of :data:`RESUME_KEYS` must match; those of :data:`RESUME_MAY_CHANGE` may
    differ (``steps`` only upwards of the checkpoint's step).

    Returns:
        The run's changes so far: the checkpoint's own ``resume_changes`` followed by
        one ``{"step", "setting", "old", "new"}`` per setting that differs now.

    Raises:
        TrainingError: a setting of :data:`RESUME_KEYS` differs, the checkpoint is past
            ``--steps``, or its record of changes is malformed.
    """

    def old(key: str) -> Any:
        if key == "prediction_type":  # older runs trained on the scheduler config's
            return saved.get(key, current.get(key))
        return saved.get(key, RESUME_DEFAULTS.get(key))

    diffs = [k for k in RESUME_KEYS if old(k) != current.get(k)]
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {old(k)!r}, now {current.get(k)!r}" for k in diffs)
        raise TrainingError(
            f"cannot resume {path}: the run's settings differ ({shown})",
            hint="resume with the same settings (only --lr, --precision, --steps and --device "
            "may change), or delete the checkpoint to start over",
            path=str(path),
        )
    if int(current["steps"]) < step:
        raise TrainingError(
            f"cannot resume {path}: it is at step {step}, past --steps {current['steps']}",
            hint=f"pass --steps {step} or more",
            path=str(path),
        )
    history = saved.get("resume_changes", [])
    if not isinstance(history, list) or not all(
        isinstance(c, dict) and set(c) == {"step", "setting", "old", "new"} for c in history
    ):
        raise TrainingError(f"{path}: unreadable checkpoint (resume_changes)", path=str(path))
    changes = list(history)
    for key in RESUME_MAY_CHANGE:
        old, new = saved.get(key), current.get(key)
        if old != new:
            if not isinstance(old, (str, int, float)) or isinstance(old, bool):
                raise TrainingError(f"{path}: unreadable checkpoint ({key})", path=str(path))
            changes.append({"step": step, "setting": key, "old": old, "new": new})
    return changes


def vectors_problem(vectors: dict[str, Any]) -> str | None:
    """Why ``vectors`` (slot -> ``[n, d]`` tensor or array) could not be imported, or ``None``.

    The rule is the importer's own (:meth:`Embedding.from_slots
    <conceptlib.registry.formats.embedding.Embedding.from_slots>`): every value finite
    and at most fp16's largest value (65504) in magnitude, shapes of one family. Only
    vectors that pass it make a "good" checkpoint: the one a NaN loss keeps and
    ``--resume`` goes back to.
    """
    from conceptlib.errors import ConceptlibError
    from conceptlib.registry.formats.embedding import Embedding

    try:
        Embedding.from_slots(vectors)
    except ConceptlibError as exc:
        return exc.message
    return None

"""Kept steps: the embedding every N steps of a run, and registering one of them.

Textual inversion overfits, so people keep the vectors every few steps and pick the
best one from its previews afterwards: A1111's "Save a copy of embedding to log
directory every N steps", kohya's ``save_every_n_steps`` option, diffusers'
``save_steps``. ``train(save_every=N)`` keeps, in the run folder::

    RUN/steps/<name>-<step>.safetensors   the vectors at that step (the layout A1111 and
                                          ComfyUI read: ``emb_params`` for SD 1.x/2.x,
                                          ``clip_l`` + ``clip_g`` for SDXL)
    RUN/steps/<name>-<step>.png           its preview grid (the run's own sampling)
    RUN/steps/<name>-<step>.json          step, tensor SHA-256, loss, wall time
    RUN/steps/run.json                    the run's config and facts (for registering)

every N steps and at the last step; each file is written atomically.
:func:`register_step` turns a kept step into a catalog entry without the images or
the base model: what the entry records comes from ``run.json``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.errors import AlreadyExists, NameCollision, TrainingError, UsageError

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

STEPS_DIR = "steps"
RUN_FILE = "run.json"
RUN_FORMAT = "conceptlib-kept-steps/1"
#: Largest ``run.json`` / step sidecar / preview read back (they are kilobytes).
MAX_SIDECAR_BYTES = 1 << 20
MAX_PREVIEW_BYTES = 16 << 20


def check_save_every(save_every: int | None, steps: int) -> None:
    """``save_every`` must be ``None`` (off) or 1 to ``steps``.

    Raises:
        UsageError: (exit 2) otherwise.
    """
    if save_every is None:
        return
    if isinstance(save_every, bool) or not isinstance(save_every, int) or save_every < 1:
        raise UsageError(f"--save-every {save_every}: expected at least 1 (steps between copies)")
    if save_every > steps:
        raise UsageError(
            f"--save-every {save_every}: expected at most --steps {steps}",
            hint=f"e.g. --save-every {max(1, steps // 10)}",
        )


def step_path(run_dir: str | os.PathLike[str], name: str, step: int) -> Path:
    """``RUN/steps/<name>-<step>.safetensors``: the kept vectors at ``step``."""
    return Path(run_dir) / STEPS_DIR / f"{name}-{step}.safetensors"


def kept_steps(run_dir: str | os.PathLike[str], name: str) -> list[int]:
    """The steps kept in ``run_dir`` for ``name``, ascending (``[]`` when none)."""
    folder = Path(run_dir) / STEPS_DIR
    if not folder.is_dir():
        return []
    pattern = re.compile(re.escape(name) + r"-([1-9][0-9]{0,9})\.safetensors")
    found = []
    for p in folder.iterdir():
        m = pattern.fullmatch(p.name)
        if m and p.with_suffix(".json").is_file():
            found.append(int(m.group(1)))
    return sorted(found)


def save_step(
    run_dir: Path,
    *,
    name: str,
    step: int,
    vectors: dict[str, Any],
    images: Sequence[Any],
    losses: Sequence[float],
    wall_time_s: float,
    run_facts: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> Path:
    """Keep the vectors (slot -> ``[n, d]`` float32) at ``step`` with their preview grid.

    ``losses`` are the per-step losses up to ``step``; the sidecar's ``final_loss`` is the
    mean of their last 50 (as a finished run's); ``metrics`` (CLIP-I / CLIP-T) are added
    to it. Returns the embedding file's path.
    """
    from conceptlib.registry.formats.embedding import Embedding
    from conceptlib.registry.formats.write import write_embedding
    from conceptlib.trainer.checkpoint import atomic_write_bytes
    from conceptlib.trainer.report import sample_grid_png

    emb = Embedding.from_slots(vectors)
    (data,) = write_embedding(emb, "safetensors", name=name, token=name).values()
    path = step_path(run_dir, name, step)
    window = [v for v in losses[-50:] if math.isfinite(v)]
    sidecar = {
        "step": step,
        "tensor_sha256": emb.tensor_sha256,
        "final_loss": sum(window) / len(window) if window else None,
        "wall_time_s": wall_time_s,
        **(metrics or {}),  # clip_i, clip_t (--clip-model)
    }
    atomic_write_bytes(path.with_suffix(".png"), sample_grid_png([(f"step {step}", list(images))]))
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.parent / RUN_FILE, json.dumps(run_facts, sort_keys=True).encode())
    # The sidecar last: a step counts as kept only once all its files are there.
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(sidecar).encode())
    return path


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SIDECAR_BYTES + 1)
    except OSError as exc:
        raise TrainingError(f"{path}: cannot read ({exc.strerror})", path=str(path)) from None
    if len(data) > MAX_SIDECAR_BYTES:
        raise TrainingError(f"{path}: larger than {MAX_SIDECAR_BYTES} bytes", path=str(path))
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise TrainingError(f"{path}: not valid JSON", path=str(path)) from None
    if not isinstance(obj, dict):
        raise TrainingError(f"{path}: expected a JSON object", path=str(path))
    return obj


def _read_preview(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PREVIEW_BYTES + 1)
    except OSError:
        return None
    if len(data) > MAX_PREVIEW_BYTES or not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    return data


def _kept_text(steps: list[int]) -> str:
    if not steps:
        return "it keeps no steps (train with --save-every N to keep some)"
    return "it keeps steps " + ", ".join(str(s) for s in steps)


def register_step(
    name: str,
    step: int,
    *,
    library: Library | None = None,
    run_dir: str | os.PathLike[str] | None = None,
) -> EmbeddingInfo:
    """Register the vectors a run kept at ``step`` as the entry ``name``.

    The run is ``run_dir`` (default ``<CONCEPTLIB_HOME>/runs/<name>``), trained with
    ``save_every``. The entry's training run records ``steps = step``, the run's config
    (with ``kept_step``), its base model, images hash and initializer; ``source_ref``
    is the run folder and ``extra["kept_step"]`` the step.

    Versions (the rule ``pull`` follows): a free ``name`` gets version 1; a ``name``
    held by an entry trained in the same run folder is kept as ``name@vN`` (token
    ``name@vN``) and the step becomes ``name`` with version N+1. Nothing is replaced.

    Raises:
        UsageError: (exit 2) ``step`` below 1, no such run, or no kept ``step`` (the
            message lists the kept steps).
        NameCollision: (exit 5) ``name`` is held by an entry from elsewhere.
        AlreadyExists: (exit 5) these vectors are registered already (named).
        TrainingError: (exit 8) the kept files are unreadable or do not match.
        EmbeddingFileError: (exit 3/4) the kept file is not a readable embedding.
    """
    from conceptlib.config import load_settings
    from conceptlib.registry.formats.read import read_embedding_file
    from conceptlib.schemas.names import validate_name

    name = validate_name(name)
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise UsageError(f"--register-step {step}: expected a step of at least 1")
    owned = None
    if library is None:
        from conceptlib.registry.library import Library

        library = owned = Library.open()
    try:
        settings = library.settings if library is not None else load_settings()
        folder = Path(run_dir) if run_dir is not None else settings.runs_dir / name
        facts_path = folder / STEPS_DIR / RUN_FILE
        if not facts_path.is_file():
            raise UsageError(
                f"no kept steps of {name!r} at {folder}",
                hint="train with --save-every N first; --register-step N then registers step N",
            )
        kept = kept_steps(folder, name)
        if step not in kept:
            raise UsageError(
                f"the run of {name!r} at {folder} has no kept step {step}: {_kept_text(kept)}",
                hint=f"pass one of them, e.g. --register-step {kept[-1]}" if kept else None,
            )
        path = step_path(folder, name, step)
        facts = _read_json(facts_path)
        sidecar = _read_json(path.with_suffix(".json"))
        config = facts.get("config")
        if facts.get("format") != RUN_FORMAT or not isinstance(config, dict):
            raise TrainingError(f"{facts_path}: not a conceptlib run record", path=str(facts_path))
        if config.get("name") != name:
            raise UsageError(
                f"{folder} holds a run of another concept, not {name!r}", path=str(folder)
            )
        emb = read_embedding_file(path).embedding
        if emb.tensor_sha256 != sidecar.get("tensor_sha256") or sidecar.get("step") != step:
            raise TrainingError(
                f"{path}: the vectors do not match the run's record of step {step} "
                "(the file was changed after training)",
                path=str(path),
            )
        twin = library.by_tensor_sha256(emb.tensor_sha256)
        if twin is not None:
            raise AlreadyExists(
                f"step {step} of {name!r} is registered already, as {twin.name!r}",
                existing=twin.name,
            )
        current = library.find(name)
        parent = current is not None and current.tensor_sha256 == config.get("init_from_sha256")
        if current is not None and current.source_ref != str(folder) and not parent:
            raise NameCollision(
                f"the name {name!r} is taken by an entry not trained in {folder} "
                f"({current.source_ref or current.source})",
                hint="remove or rename that entry first",
                existing=current.name,
            )
        return _add(library, emb, name, step, folder, config, facts, sidecar, path, current)
    finally:
        if owned is not None:
            owned.close()


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _add(
    lib: Library,
    emb: Any,
    name: str,
    step: int,
    folder: Path,
    config: dict[str, Any],
    facts: dict[str, Any],
    sidecar: dict[str, Any],
    path: Path,
    current: EmbeddingInfo | None,
) -> EmbeddingInfo:
    from conceptlib.schemas.records import Preview, TrainingRunRecord

    count = config.get("training_image_count")
    known = {
        "base_model": _text(config.get("base_model")),
        "base_model_fingerprint": _text(config.get("base_model_fingerprint")),
        "training_images_hash": _text(config.get("training_images_hash")),
        "training_image_count": count if isinstance(count, int) else None,
        "initializer": _text(config.get("init")),
    }
    quality = {k: _number(sidecar.get(k)) for k in ("clip_i", "clip_t")}
    record = TrainingRunRecord(
        config=dict(config, kept_step=step), steps=step,
        final_loss=_number(sidecar.get("final_loss")),
        wall_time_s=_number(sidecar.get("wall_time_s")),
        device=_text(facts.get("device")), **quality, **known,
    )  # fmt: skip
    grid = _read_preview(path.with_suffix(".png"))
    previews = [Preview(filename="samples.png", data=grid, role="grid")] if grid else []
    tags = [t for t in config.get("tags") or [] if isinstance(t, str)]
    extra = {"kept_step": step, "precision": _text(config.get("precision")),
             "clip_skip": config.get("clip_skip", 1)}  # fmt: skip
    if isinstance(facts.get("init_tokens"), dict):
        extra["init_tokens"] = facts["init_tokens"]
    kind = config.get("kind") if config.get("kind") in ("object", "style") else "object"
    add = dict(
        name=name, kind=kind, source="trained", source_ref=str(folder), tags=tags,
        description=_text(facts.get("description")), previews=previews,
        training_run=record, extra=extra, **known,
    )  # fmt: skip
    parents = facts.get("parents")  # --init-from: the entry the run started from
    if isinstance(parents, list) and all(isinstance(p, dict) for p in parents):
        add["parents"] = parents
    return add_version(lib, emb, current, **add)


def add_version(lib: Library, emb: Any, current: EmbeddingInfo | None, **add: Any) -> EmbeddingInfo:
    """Register ``emb`` as ``add["name"]``; when ``current`` holds that name, keep it as
    ``NAME@vN`` (token ``NAME@vN``, as ``pull`` keeps versions) and register ``emb``
    as version N+1 (a parent in ``add["parents"]`` that is ``current`` is recorded
    under its new name)."""
    if current is None:
        return lib.add_embedding(emb, **add)
    from conceptlib.schemas.names import strip_brackets

    suffix = f"@v{current.version}"
    retired_name = f"{current.name}{suffix}"
    inner = strip_brackets(current.token)  # <token> -> <token@vN>, as pull keeps versions
    retired_token = f"<{inner}{suffix}>" if inner != current.token else f"{inner}{suffix}"
    lib.rename(current.name, retired_name, token=retired_token)
    add["parents"] = [
        dict(p, name=retired_name) if p.get("tensor_sha256") == current.tensor_sha256 else p
        for p in add.get("parents", ())
    ]
    try:
        return lib.add_embedding(emb, version=current.version + 1, **add)
    except BaseException:
        lib.rename(retired_name, current.name, token=current.token)
        raise

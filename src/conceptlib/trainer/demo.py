"""The README's main job, end to end on a CPU: train, register, find, report.

``run_demo`` writes a few procedural sample images (a toy on varied backgrounds),
trains a concept on them with the built-in ``tiny-sd1`` model, registers it,
finds it again with ``search``, and leaves its loss curve and sample grid in
``out_dir``. Nothing is downloaded; it takes well under two minutes on a laptop CPU.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.trainer.train import TrainProgress

DEMO_NAME = "demo-toy"
DEMO_STEPS = 120


def _free_name(library: Library, base: str) -> str:
    name, n = base, 1
    while library.find(name) is not None:
        n += 1
        name = f"{base}-{n}"
    return name


def run_demo(
    library: Library,
    out_dir: str | os.PathLike[str],
    *,
    steps: int = DEMO_STEPS,
    progress: Callable[[TrainProgress], None] | None = None,
    log: Callable[[str], None] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run the training demo into ``out_dir``; return what happened (JSON-safe).

    The concept is named ``demo-toy`` (``demo-toy-2``... when taken) and tagged
    ``demo``. ``out_dir`` receives ``images/``, ``run/`` (the run folder),
    ``loss.png`` and ``samples.png``.
    """
    from conceptlib.trainer.samples import write_sample_images
    from conceptlib.trainer.train import train

    out = Path(out_dir)
    images = write_sample_images(out / "images", 6, size=128)
    name = _free_name(library, DEMO_NAME)
    result = train(
        [out / "images"],
        name=name,
        init="toy",
        base="tiny-sd1",
        steps=steps,
        lr=5e-3,
        batch=4,
        seed=0,
        tags=("demo",),
        description="demo concept: an orange toy, trained by `conceptlib demo` on generated images",
        checkpoint_every=max(1, steps // 3),
        sample_every=max(1, steps // 3),
        sample_steps=10,
        library=library,
        run_dir=out / "run",
        cache_dir=cache_dir,
        progress=progress,
        log=log,
    )
    loss_png = shutil.copyfile(result.loss_curve_path, out / "loss.png")
    grid_png = shutil.copyfile(result.grid_path, out / "samples.png") if result.grid_path else None
    found = [e.name for e in library.search(name)]
    first = result.losses[: max(1, len(result.losses) // 10)]
    return {
        "name": name,
        "images": [str(p) for p in images],
        "base_model": result.base_model,
        "base_model_fingerprint": result.base_model_fingerprint,
        "training_images_hash": result.training_images_hash,
        "steps": result.steps,
        "first_loss": sum(first) / len(first),
        "final_loss": result.final_loss,
        "wall_time_s": result.wall_time_s,
        "device": result.device,
        "search": {"query": name, "found": found},
        "loss_curve": str(loss_png),
        "sample_grid": str(grid_png) if grid_png else None,
        "embedding": str(result.embedding_path),
        "tensor_sha256": result.embedding.tensor_sha256,
    }

"""How much memory a training run needs, and whether gradient checkpointing is on.

The expected peak is **frozen weights + activations**:

* frozen weights: the bytes of every parameter and buffer of the loaded UNet, VAE
  and text encoders (exact, :func:`weights_bytes`), or, before loading, the family's
  known parameter counts (:data:`FAMILY_PARAMETERS`) times the dtype's size;
* activations: from a **measured** peak (:data:`MEASURED`: ``torch.cuda.
  max_memory_allocated`` during training steps on a GPU), as
  ``(peak - weights) / batch`` per image, scaled by pixel count to other resolutions,
  by batch, and by the dtype's size (the table is bf16; fp32 doubles it).

The measured peaks come from ``bench/train_throughput.py`` on one H200, whose process
also held the reference loop's fp32 text encoders and optimizer state (about 0.9 GiB
for SD 1.5, 4 GiB for SDXL): the per-image figure derived from them is an upper bound.
``bench/memory_table.py`` measures our step alone (and with checkpointing) on a GPU;
its figures replace these when a GPU session has run it.

With gradient checkpointing the UNet keeps only each block's input and recomputes
the rest during the backward. :data:`CHECKPOINTING_FACTOR` is the activation memory
with it as a fraction of without; its GPU figure is still to be measured, and the
value used until then is the one measured on a CPU with :func:`measure_step_peak`
(peak live tensor bytes of one loss + backward, full-size SD 1.5 / SDXL UNets at
256 px; see BENCHMARKS.md).
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from conceptlib.schemas.enums import Family

if TYPE_CHECKING:
    from conceptlib.models.base import BaseModel

GIB = 2**30

#: Parameters of the frozen models (UNet + VAE + text encoders) of each family's
#: full-size architecture: counted on the models ``bench/train_throughput.py`` builds
#: from the published configs (SD 1.5: 859.5 M + 83.7 M + 123.1 M; SDXL: 2567.5 M +
#: 83.7 M + 123.1 M + 694.7 M); SD 2.x: 865.9 M + 83.7 M + 340.4 M (OpenCLIP ViT-H).
FAMILY_PARAMETERS = {
    Family.SD1: 1_066_235_307,
    Family.SD2: 1_289_952_427,
    Family.SDXL: 3_468_837_867,
}

#: Bytes per element of each ``--precision``.
DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class PeakMeasurement:
    """One measured training peak: family, resolution, batch, precision, GiB, where."""

    family: Family
    resolution: int
    batch: int
    precision: str
    peak_gib: float
    where: str

    def activations_per_image(self) -> float:
        """Bytes of activations per image at this resolution and precision."""
        weights = FAMILY_PARAMETERS[self.family] * DTYPE_BYTES[self.precision]
        return (self.peak_gib * GIB - weights) / self.batch


_H200 = "H200, bf16, bench/train_throughput.py, 2026-11-29 (gpu-measurements.md)"
#: The measured peaks (no gradient checkpointing). SD 2.x has none: it uses SD 1.5's
#: per-pixel figure (a UNet of the same shape and size).
MEASURED = (
    PeakMeasurement(Family.SD1, 512, 8, "bf16", 9.1, _H200),
    PeakMeasurement(Family.SDXL, 1024, 8, "bf16", 52.2, _H200),
)

#: Activations with gradient checkpointing / without, per family. SD 1.5: 0.48 measured
#: on a CPU (``python bench/memory_table.py --cpu --model sd15 --resolution 128 --batch 1``:
#: peak live tensor bytes, full-size UNet, fp32: 0.133 GiB without, 0.064 with), rounded
#: up; SD 2.x and SDXL: SD 1.5's figure, not measured. The GPU figures are to be
#: measured (``bench/memory_table.py`` on a GPU).
CHECKPOINTING_FACTOR = {Family.SD1: 0.5, Family.SD2: 0.5, Family.SDXL: 0.5}
#: Where :data:`CHECKPOINTING_FACTOR` comes from (printed with the estimate).
CHECKPOINTING_SOURCE = "SD 1.5's, measured on a CPU; GPU figure to be measured"
#: The run is expected to fit when its activations times this are at most the free memory.
HEADROOM = 1.1


def weights_bytes(base: BaseModel) -> int:
    """Bytes of every parameter and buffer of the loaded frozen models (exact)."""
    pipe = base.pipeline
    modules = [pipe.unet, pipe.vae, *(s.encoder for s in base.slots)]
    total = 0
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            total += t.numel() * t.element_size()
    return total


def _measurement(family: Family) -> PeakMeasurement | None:
    key = Family.SD1 if family == Family.SD2 else family
    return next((m for m in MEASURED if m.family == key), None)


@dataclass
class MemoryEstimate:
    """The expected peak of one run and the memory the device has free."""

    family: str
    resolution: int
    batch: int
    precision: str
    gradient_checkpointing: bool
    weights_bytes: int
    activations_bytes: int | None
    basis: str
    device: str
    free_bytes: int | None = None

    @property
    def peak_bytes(self) -> int | None:
        if self.activations_bytes is None:
            return None
        return self.weights_bytes + self.activations_bytes

    def fits(self) -> bool | None:
        """Whether the activations fit the free memory (the weights are loaded already);
        ``None`` when either is unknown."""
        if self.activations_bytes is None or self.free_bytes is None:
            return None
        return self.activations_bytes * HEADROOM <= self.free_bytes

    def message(self) -> str:
        free = f" ({self.free_bytes / GIB:.1f} GiB free)" if self.free_bytes is not None else ""
        if self.peak_bytes is None:
            return (
                f"expected peak: frozen weights {self.weights_bytes / GIB:.2f} GiB; activations "
                f"not estimated ({self.basis}) on {self.device}{free}"
            )
        ckpt = ", gradient checkpointing" if self.gradient_checkpointing else ""
        return (
            f"expected peak ~{self.peak_bytes / GIB:.1f} GiB on {self.device}{free}: weights "
            f"{self.weights_bytes / GIB:.1f} + activations {self.activations_bytes / GIB:.1f} "
            f"(batch {self.batch}, {self.resolution}px, {self.precision}{ckpt}; {self.basis})"
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["peak_bytes"] = self.peak_bytes
        return out


def activations_bytes(
    family: Family, resolution: int, batch: int, precision: str, *, checkpointing: bool
) -> tuple[int | None, str]:
    """Activation bytes of a step from :data:`MEASURED`, and a line saying how."""
    m = _measurement(family)
    if m is None:
        return None, f"no measured figures for {family.value}"
    scale = (resolution / m.resolution) ** 2 * DTYPE_BYTES[precision] / DTYPE_BYTES[m.precision]
    per_image = m.activations_per_image() * scale
    basis = f"from {m.family.value} at {m.resolution}px, batch {m.batch}: {m.where}"
    if checkpointing:
        per_image *= CHECKPOINTING_FACTOR[family]
        basis += f"; checkpointing x{CHECKPOINTING_FACTOR[family]:g}, {CHECKPOINTING_SOURCE}"
    return int(per_image * batch), basis


def free_memory(device: str) -> int | None:
    """Free bytes on ``device``: ``torch.cuda.mem_get_info`` on CUDA, the memory the
    kernel calls available on a CPU (Linux); ``None`` where unknown (MPS, others)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type == "cpu" and hasattr(os, "sysconf"):
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            return None
    return None


def estimate(
    base: BaseModel,
    *,
    resolution: int,
    batch: int,
    precision: str,
    checkpointing: bool,
    free_bytes: int | None = None,
) -> MemoryEstimate:
    """The expected peak of a run on the loaded ``base`` (its weights counted exactly).

    The built-in tiny models have no measured figures: only their weights are given.
    """
    if base.is_tiny:
        acts, basis = None, f"no measured figures for the test model {base.ref}"
    else:
        acts, basis = activations_bytes(
            base.family, resolution, batch, precision, checkpointing=checkpointing
        )
    return MemoryEstimate(
        family=base.family.value, resolution=resolution, batch=batch, precision=precision,
        gradient_checkpointing=checkpointing, weights_bytes=weights_bytes(base),
        activations_bytes=acts, basis=basis, device=str(base.device), free_bytes=free_bytes,
    )  # fmt: skip


def largest_batch(est: MemoryEstimate) -> int:
    """The largest batch whose activations fit ``est.free_bytes`` (0 if not even one)."""
    if est.activations_bytes is None or est.free_bytes is None:
        return est.batch
    per_image = est.activations_bytes / est.batch
    return int(est.free_bytes // (per_image * HEADROOM)) if per_image > 0 else est.batch


def choose_checkpointing(
    requested: bool | None,
    base: BaseModel,
    *,
    resolution: int,
    batch: int,
    accumulate: int,
    precision: str,
) -> tuple[bool, str, MemoryEstimate, list[str]]:
    """Gradient checkpointing on or off and why, the estimate for that choice, and log
    lines (the estimate; checkpointing when on; a warning when the run may not fit).

    ``requested`` ``True``/``False`` is the user's; ``None`` ("auto") turns it on only on
    CUDA when the estimate without it does not fit the free memory. When even with
    checkpointing it does not fit, a line suggests ``--batch B --accumulate N`` with the
    same images per optimizer step.
    """
    import torch

    free = free_memory(base.device)
    plain = estimate(base, resolution=resolution, batch=batch, precision=precision,
                     checkpointing=False, free_bytes=free)  # fmt: skip
    on_cuda = torch.device(base.device).type == "cuda"
    if requested is not None:
        chosen, why = bool(requested), "as asked"
    elif not on_cuda:
        chosen, why = False, "auto: off (not a CUDA device)"
    elif plain.fits() is False:
        chosen, why = True, "auto: on (the run does not fit without it)"
    else:
        chosen, why = False, "auto: off (the run fits without it)"
    est = plain if not chosen else estimate(
        base, resolution=resolution, batch=batch, precision=precision, checkpointing=True,
        free_bytes=free,
    )  # fmt: skip
    lines = [est.message()] + ([f"gradient checkpointing on ({why})"] if chosen else [])
    if on_cuda and est.fits() is False:
        ckpt = est if chosen else estimate(
            base, resolution=resolution, batch=batch, precision=precision, checkpointing=True,
            free_bytes=free,
        )  # fmt: skip
        b = max(1, min(batch - 1, largest_batch(ckpt)))
        n = math.ceil(batch * accumulate / b)
        lines.append(
            f"warning: batch {batch} may not fit this device; the same {batch * accumulate} "
            f"images per step fit better as --batch {b} --accumulate {n}"
            + ("" if chosen else " --gradient-checkpointing")
        )
    return chosen, why, est, lines


# --------------------------------------------------------------------------- measuring


def _tensor_outputs(out: Any) -> list[Any]:
    import torch
    from torch.utils._pytree import tree_flatten

    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _live_bytes_mode() -> Any:
    """A ``TorchDispatchMode`` counting the bytes of tensor storages allocated under it
    while they are alive, and their peak. Views and in-place results add a reference
    to a storage it already counts; storages from before (weights, caches) are not counted."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = 0
            self.peak = 0
            self.refs: dict[int, list[int]] = {}

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
            out = func(*args, **(kwargs or {}))
            allocates = not func.is_view and not func._schema.is_mutable
            for t in _tensor_outputs(out):
                self._track(t, allocates)
            return out

        def _track(self, t: Any, allocates: bool) -> None:
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key == 0:
                return
            entry = self.refs.get(key)
            if entry is None:
                if not allocates:
                    return
                entry = self.refs[key] = [0, storage.nbytes()]
                self.live += entry[1]
                self.peak = max(self.peak, self.live)
            entry[0] += 1
            weakref.finalize(t, self._release, key)

        def _release(self, key: int) -> None:
            entry = self.refs.get(key)
            if entry is None:
                return
            entry[0] -= 1
            if entry[0] <= 0:
                self.live -= entry[1]
                del self.refs[key]

    return LiveBytes()


def measure_step_peak(engine: Any, *, batch: int | None = None, seed: int = 0) -> int:
    """Peak bytes of the tensors one loss and its backward allocate on ``engine``
    (a :class:`~conceptlib.trainer.loop.TextualInversion`), on any device: what
    ``torch.cuda.max_memory_allocated`` would add to the weights, without the
    allocator's rounding. The gradient of the rows is dropped afterwards."""
    import torch

    g = torch.Generator(device=engine.device).manual_seed(seed)
    draws = engine._draw(g, batch or engine.batch)
    mode = _live_bytes_mode()
    with mode:
        loss = engine._loss(draws)
        loss.backward()
        del loss
    for p in engine.params.values():
        p.grad = None
    return int(mode.peak)

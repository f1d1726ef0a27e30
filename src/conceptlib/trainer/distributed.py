"""A plan run across processes, GPUs and machines, with ``torchrun``.

``torchrun`` (``python -m torch.distributed.run``) starts the processes and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each;
:func:`conceptlib.trainer.multi.train_plan` sees them (:func:`dist_env`), joins the
process group (gloo on a CPU, NCCL on CUDA) and trains its share of the plan. The
concepts are independent, so the ranks never exchange gradients: the group is only
used to gather every rank's results (or errors) at the end, which is also the
barrier after which rank 0 prints the summary.
"""

from __future__ import annotations

import os
from typing import Any

from conceptlib.errors import UsageError


def dist_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from ``torchrun``'s environment, or ``None``
    outside it (``RANK`` or ``WORLD_SIZE`` unset).

    Raises:
        UsageError: values that are not integers or out of range.
    """
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if rank is None or world is None:
        return None
    try:
        r, w = int(rank), int(world)
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise UsageError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by torchrun)"
        ) from exc
    if not (w >= 1 and 0 <= r < w and local >= 0):
        raise UsageError(f"RANK {r} and WORLD_SIZE {w}: expected 0 <= RANK < WORLD_SIZE")
    return r, w, local


class Group:
    """The process group of a plan run (joined by :meth:`start`, left by :meth:`close`)."""

    def __init__(self, rank: int, world_size: int, local_rank: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.local_rank = local_rank
        self.owned = False
        self.started = False

    def start(self, device: str) -> None:
        """Join the group: NCCL when this rank trains on CUDA, else gloo. A group the
        caller already set up (``torch.distributed.is_initialized()``) is used as is."""
        import torch
        import torch.distributed as dist

        self.started = True
        if dist.is_initialized():
            return
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", rank=self.rank, world_size=self.world_size
        )
        self.owned = True

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (every rank must call it)."""
        import torch.distributed as dist

        if not self.started:  # failed before joining: the others are waiting for it
            self.start("cpu")
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False

"""The training step on a GPU: one CUDA graph per step shape, and the attention kernel.

A textual-inversion step has a fixed shape (batch, resolution, templates of 77
tokens), so the whole of it after the random draw (text encoders, UNet forward,
backward to the trained rows, fused AdamW with ``capturable=True``, the loss kept on
the device) can be recorded once as a CUDA graph and replayed: the host launches one
graph instead of thousands of kernels (the profile in gpu-measurements.md shows the
GPU waiting 12 ms per SD 1.5 step for the host).

* :func:`select_cuda_graphs` decides, before any model loads, whether a run uses the
  graph (``--cuda-graphs auto|on|off``) and why not when it does not: not a CUDA
  device, ``--compile`` (inductor's own graphs conflict), fp16 (its grad scaler reads
  the inf check back), or shapes that change.
* :class:`CudaGraphStep` captures the step at the first call and replays it. The draw
  stays eager (the same generator, the same numbers as the eager step), its tensors
  are copied into static buffers. The warm-up before capture runs on a side stream,
  and the vectors and optimizer state are put back afterwards, so the run is the same
  as an eager one; a failed capture falls back to the eager step with a note.
* :func:`choose_attention` times each SDPA backend on the UNet's head sizes once per
  device and process and keeps the fastest (``torch.nn.attention.sdpa_kernel``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from conceptlib.errors import UsageError

#: ``--cuda-graphs`` values.
CUDA_GRAPH_MODES = ("auto", "on", "off")
#: Eager steps run on a side stream before the capture (cuBLAS/cuDNN workspaces, the
#: optimizer's state); their effect on the vectors and the optimizer is undone.
WARMUP_STEPS = 3


@dataclass
class StepChoice:
    """How a run's step executes: recorded in the run's config as ``step``."""

    cuda_graphs: str  # what was asked: auto, on, off
    graph: bool  # whether the step is a CUDA graph
    reason: str  # why (or why not)
    gradient_checkpointing: bool = False
    checkpointing_reason: str = ""
    attention: dict[str, Any] | None = None  # the SDPA choice on CUDA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        return f"step: {'one CUDA graph' if self.graph else 'eager'} ({self.reason})"


def check_cuda_graphs(mode: str) -> str:
    """``mode`` if it is one of :data:`CUDA_GRAPH_MODES` (UsageError otherwise)."""
    if mode not in CUDA_GRAPH_MODES:
        raise UsageError(f"--cuda-graphs {mode!r}: expected one of {', '.join(CUDA_GRAPH_MODES)}")
    return mode


def select_cuda_graphs(
    mode: str,
    *,
    device: str,
    precision: str,
    compile: bool | str,
    static_shapes: bool = True,
) -> StepChoice:
    """Whether the step runs as a CUDA graph, decided before any model loads.

    ``auto`` uses the graph wherever it can and says why not elsewhere; ``on`` refuses
    (UsageError, exit 2) a run where it cannot; ``off`` never uses it.
    """
    import torch

    check_cuda_graphs(mode)
    if mode == "off":
        return StepChoice(mode, False, "--cuda-graphs off")
    dev = torch.device(device)
    if dev.type != "cuda":
        why = f"CUDA graphs need a CUDA device; this run is on {device}"
    elif compile:
        why = "--compile: torch.compile's code is not captured in an outer graph"
    elif precision == "fp16":
        why = "fp16: its grad scaler reads the inf check back every step; use bf16"
    elif not static_shapes:
        why = "the step's shapes change between steps"
    else:
        return StepChoice(mode, True, f"--cuda-graphs {mode}: static shapes on CUDA")
    if mode == "on":
        raise UsageError(f"--cuda-graphs on: {why}", hint="use --cuda-graphs auto or off")
    return StepChoice(mode, False, why)


def capturable_optimizer(params: list[Any], lr: float, weight_decay: float) -> Any:
    """Fused AdamW that a CUDA graph can hold: its step counter and learning rate are
    device tensors (``capturable=True``, a tensor ``lr`` that :meth:`set_lr` fills)."""
    import torch

    device = params[0].device
    return torch.optim.AdamW(
        params,
        lr=torch.tensor(float(lr), device=device),
        weight_decay=weight_decay,
        fused=True,
        capturable=True,
    )


class CudaGraphStep:
    """The step of ``engine`` (a ``TextualInversion``) as one CUDA graph.

    ``body(draws)`` is the engine's whole optimisation (zero grad, forward and backward
    of every micro-batch, optimizer step) returning the loss as a device tensor.
    """

    def __init__(self, engine: Any, body: Callable[[dict[str, Any]], Any]) -> None:
        self.engine = engine
        self.body = body
        self.graph: Any = None
        self.static: dict[str, Any] = {}
        self.loss: Any = None
        self.captures = 0

    def invalidate(self) -> None:
        """Drop the graph (the optimizer state was replaced: a resume); the next step
        captures again."""
        self.graph = None
        self.static = {}
        self.loss = None

    def run(self, draws: dict[str, Any]) -> Any:
        if self.graph is None:
            self._capture(draws)
        for k, v in draws.items():
            self.static[k].copy_(v, non_blocking=True)
        self.graph.replay()
        return self.loss

    def _snapshot(self) -> tuple[dict[str, Any], dict[Any, dict[str, Any]]]:
        opt = self.engine.optimizer
        params = {k: p.detach().clone() for k, p in self.engine.params.items()}
        state = {
            p: {k: v.clone() if hasattr(v, "clone") else v for k, v in s.items()}
            for p, s in opt.state.items()
        }
        return params, state

    def _restore(self, snapshot: tuple[dict[str, Any], dict[Any, dict[str, Any]]]) -> None:
        import torch

        params, state = snapshot
        with torch.no_grad():
            for k, p in self.engine.params.items():
                p.copy_(params[k])
            for p, s in self.engine.optimizer.state.items():
                before = state.get(p, {})
                for k, v in s.items():
                    if not isinstance(v, torch.Tensor):
                        continue
                    if k in before:
                        v.copy_(before[k])
                    else:  # made by the warm-up: a fresh state is all zeros (step 0)
                        v.zero_()

    def _capture(self, draws: dict[str, Any]) -> None:
        import torch

        self.static = {k: v.clone() for k, v in draws.items()}
        snapshot = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.body(self.static)
        torch.cuda.current_stream().wait_stream(side)
        self._restore(snapshot)
        self.engine.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.loss = self.body(self.static)
        self.graph = graph
        self.captures += 1


# --------------------------------------------------------------------------- attention

_ATTENTION_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}


def head_sizes(unet: Any) -> list[int]:
    """The head sizes of the UNet's attention layers (40/80/160 for SD 1.5, 64 for SDXL)."""
    sizes = set()
    for m in unet.modules():
        heads = getattr(m, "heads", None)
        to_q = getattr(m, "to_q", None)
        if isinstance(heads, int) and heads > 0 and to_q is not None:
            sizes.add(int(to_q.out_features) // heads)
    return sorted(sizes)


def _time_backend(backend: Any, dim: int, dtype: Any, device: Any, tokens: int) -> float | None:
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    q = torch.randn(8, 8, tokens, dim, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn_like(q, requires_grad=True)
    v = torch.randn_like(q, requires_grad=True)
    try:
        with sdpa_kernel([backend]):
            for _ in range(2):  # warm-up
                F.scaled_dot_product_attention(q, k, v).sum().backward()
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(5):
                F.scaled_dot_product_attention(q, k, v).sum().backward()
            torch.cuda.synchronize(device)
    except RuntimeError:  # not available for this head size, dtype or GPU
        return None
    return (time.perf_counter() - start) / 5


def choose_attention(unet: Any, device: Any, dtype: Any, resolution: int) -> dict[str, Any]:
    """The fastest SDPA backend for the UNet's head sizes on ``device`` (CUDA only),
    timed once per process (forward + backward, self-attention at the largest token
    count the UNet's attention sees, capped at 4096), with every timing recorded.

    Returns ``{"backend": name | None, "reason": ..., "ms": {backend: {head: ms}}}``;
    ``backend`` is ``None`` off CUDA (PyTorch picks).
    """
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return {"backend": None, "reason": f"PyTorch's default on {dev.type}", "ms": {}}
    from torch.nn.attention import SDPBackend

    sizes = head_sizes(unet)
    tokens = min(4096, (resolution // 8) ** 2)
    key = (torch.cuda.get_device_name(dev), str(dtype), tuple(sizes), tokens)
    if key in _ATTENTION_CACHE:
        return _ATTENTION_CACHE[key]
    candidates = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                  SDPBackend.CUDNN_ATTENTION]  # fmt: skip
    ms: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    for backend in candidates:
        row = {}
        for dim in sizes:
            t = _time_backend(backend, dim, dtype, dev, tokens)
            if t is None:
                row = {}
                break
            row[str(dim)] = round(t * 1e3, 3)
        if row:
            ms[backend.name] = row
            totals[backend.name] = sum(row.values())
    if not totals:
        choice = {"backend": None, "reason": "no backend ran every head size", "ms": ms}
    else:
        best = min(totals, key=totals.__getitem__)
        choice = {"backend": best, "reason": f"fastest on head sizes {sizes}, {tokens} tokens",
                  "ms": ms}  # fmt: skip
    _ATTENTION_CACHE[key] = choice
    return choice


@contextlib.contextmanager
def attention_context(choice: dict[str, Any] | None) -> Iterator[None]:
    """Run the block with the chosen SDPA backend first (others stay as fallbacks)."""
    if not choice or not choice.get("backend"):
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    best = SDPBackend[choice["backend"]]
    order = [best] + [
        b
        for b in (
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
            SDPBackend.CUDNN_ATTENTION,
            SDPBackend.MATH,
        )  # fmt: skip
        if b != best
    ]
    with sdpa_kernel(order, set_priority=True):
        yield


def checkpoint_function() -> Callable[..., Any]:
    """Gradient checkpointing for diffusers blocks without saving the RNG state: the
    frozen UNet in eval mode draws no random numbers, and reading the CUDA RNG state
    inside a graph capture fails."""
    from torch.utils.checkpoint import checkpoint

    def run(module: Any, *args: Any) -> Any:
        return checkpoint(module.__call__, *args, use_reentrant=False, preserve_rng_state=False)

    return run


#: Most micro-batches ``--accumulate`` takes.
MAX_ACCUMULATE = 1024


def check_step_options(
    accumulate: int,
    cuda_graphs: str,
    *,
    device: str,
    precision: str,
    compile: bool | str,
    static_shapes: bool = True,
) -> StepChoice:
    """``--accumulate`` and ``--cuda-graphs``, checked before any model loads."""
    if not 1 <= accumulate <= MAX_ACCUMULATE:
        raise UsageError(f"--accumulate {accumulate}: expected 1 to {MAX_ACCUMULATE}")
    return select_cuda_graphs(cuda_graphs, device=device, precision=precision, compile=compile,
                              static_shapes=static_shapes)  # fmt: skip


def step_record(choice: StepChoice, engine: Any, checkpointing_reason: str) -> dict[str, Any]:
    """What the run's config records as ``step``: the graph choice as it stands after
    set-up, checkpointing and why, and the attention backend."""
    if choice.graph and engine.step_mode != "cuda-graph":
        choice.reason = "the engine fell back to the eager step"
    choice.graph = engine.step_mode == "cuda-graph"
    choice.gradient_checkpointing = bool(engine._checkpointing)
    choice.checkpointing_reason = checkpointing_reason
    choice.attention = engine.attention
    return choice.to_dict()

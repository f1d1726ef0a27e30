"""Learning-rate schedules: the rate of every step is a function of the step alone.

Two ways to give a schedule, checked before the base model loads:

* ``--lr RATE`` with ``--lr-schedule``:

  - ``constant``: ``RATE`` at every step;
  - ``constant_with_warmup``: ``RATE * k / W`` at steps ``k = 1..W`` (``W`` =
    ``--lr-warmup-steps``), then ``RATE``;
  - ``cosine``: the warm-up, then half a cosine from ``RATE`` down towards 0 over the
    remaining steps: ``RATE * 0.5 * (1 + cos(pi * (k - W - 1) / (steps - W)))``.

  These are the shapes of diffusers' ``get_scheduler`` (``constant``,
  ``constant_with_warmup``, ``cosine``) and kohya's ``--lr_scheduler``; ours counts
  steps from 1, so the first step of a warm-up already moves (``RATE / W``) instead of
  taking a step at rate 0.

* A1111's step syntax for the rate itself: ``"0.05:10, 0.02:20, 0.005:200"`` means
  0.05 for steps 1-10, 0.02 for steps 11-20, 0.005 for steps 21-200 (AUTOMATIC1111's
  ``modules/textual_inversion/learn_schedule.py``). The last rate may omit its step
  (it then lasts to the end of the run). A1111 stops training at the last rate's step;
  here a schedule that ends before ``--steps`` is refused, so a run never stops early
  by surprise. It goes with ``--lr-schedule constant`` only.

Because the rate depends only on the step (and the run's ``steps``), a resumed run
takes exactly the rates the uninterrupted run would have.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from conceptlib.errors import UsageError

LR_SCHEDULES = ("constant", "constant_with_warmup", "cosine")
#: Longest ``--lr`` text read (an A1111 schedule of a few hundred pieces).
MAX_LR_TEXT = 4096


@dataclass(frozen=True)
class LRSchedule:
    """A learning-rate schedule over ``steps`` steps.

    Attributes:
        pieces: ``((rate, last_step), ...)``; ``last_step`` ``None`` means to the end.
        kind: one of :data:`LR_SCHEDULES`.
        warmup_steps: steps of linear warm-up (``constant_with_warmup``, ``cosine``).
        steps: the run's total steps (the cosine's length).
    """

    pieces: tuple[tuple[float, int | None], ...]
    kind: str = "constant"
    warmup_steps: int = 0
    steps: int = 1

    @property
    def peak(self) -> float:
        """The largest rate of the schedule."""
        return max(rate for rate, _ in self.pieces)

    def rate(self, step: int) -> float:
        """The learning rate of step ``step`` (1-based: the first step is 1)."""
        base = self.pieces[-1][0]
        for rate, last in self.pieces:
            if last is None or step <= last:
                base = rate
                break
        w = self.warmup_steps
        if self.kind != "constant" and w and step <= w:
            return base * step / w
        if self.kind == "cosine":
            span = max(1, self.steps - w)
            progress = min(1.0, max(0.0, (step - w - 1) / span))
            return base * 0.5 * (1.0 + math.cos(math.pi * progress))
        return base


def _positive(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and math.isfinite(value)):
        raise UsageError(
            f"--lr {what}: expected a positive number or A1111 steps like '0.005:100, 0.001:1000'"
        )
    return value


def parse_lr(lr: float | str) -> tuple[tuple[float, int | None], ...]:
    """``--lr`` as ``((rate, last_step), ...)``: a number, or A1111's ``rate:step, ...``.

    Raises:
        UsageError: (exit 2) not a positive finite number, a step that is not a whole
            number above the previous one, or a rate without a step before the last.
    """
    if isinstance(lr, (int, float)) and not isinstance(lr, bool):
        return ((_positive(repr(float(lr)), repr(lr)), None),)
    text = str(lr)
    if len(text) > MAX_LR_TEXT:
        raise UsageError(f"--lr is {len(text):,} characters long; expected at most {MAX_LR_TEXT:,}")
    parts = [p.strip() for p in text.split(",")]
    shown = repr(text if len(text) <= 60 else text[:60] + "...")
    if not parts or any(not p for p in parts):
        raise UsageError(f"--lr {shown}: an empty piece; expected e.g. '0.005:100, 0.001'")
    pieces: list[tuple[float, int | None]] = []
    previous = 0
    for i, part in enumerate(parts):
        rate_text, sep, step_text = part.partition(":")
        rate = _positive(rate_text.strip(), shown)
        if not sep:
            if i != len(parts) - 1:
                raise UsageError(
                    f"--lr {shown}: only the last rate may omit its step; expected "
                    "'rate:step, rate:step, ..., rate'"
                )
            pieces.append((rate, None))
            break
        step_text = step_text.strip()
        if not step_text.isdigit() or int(step_text) <= previous:
            raise UsageError(
                f"--lr {shown}: step {step_text!r} must be a whole number above the previous "
                f"step ({previous})"
            )
        previous = int(step_text)
        pieces.append((rate, previous))
    return tuple(pieces)


def build_schedule(
    lr: float | str, *, kind: str = "constant", warmup_steps: int = 0, steps: int = 1
) -> LRSchedule:
    """Check the learning-rate options together and build the :class:`LRSchedule`.

    Raises:
        UsageError: (exit 2) a bad ``--lr`` (:func:`parse_lr`), an unknown schedule, a
            warm-up that is negative, given to ``constant`` or not shorter than the run,
            A1111 steps with a schedule other than ``constant``, or A1111 steps ending
            before ``steps``.
    """
    pieces = parse_lr(lr)
    if kind not in LR_SCHEDULES:
        raise UsageError(f"--lr-schedule {kind!r}: expected one of {', '.join(LR_SCHEDULES)}")
    if warmup_steps < 0:
        raise UsageError(f"--lr-warmup-steps {warmup_steps}: expected 0 or more")
    if warmup_steps and kind == "constant":
        raise UsageError(
            f"--lr-warmup-steps {warmup_steps} needs a schedule with a warm-up",
            hint="add --lr-schedule constant_with_warmup (or cosine)",
        )
    if warmup_steps >= steps and warmup_steps:
        raise UsageError(f"--lr-warmup-steps {warmup_steps}: expected fewer than --steps ({steps})")
    if len(pieces) > 1 or pieces[0][1] is not None:
        if kind != "constant":
            raise UsageError(
                f"--lr with steps ({lr!r}) is a schedule of its own; it goes with "
                f"--lr-schedule constant, not {kind}"
            )
        last = pieces[-1][1]
        if last is not None and last < steps:
            raise UsageError(
                f"--lr {lr!r} ends at step {last} but --steps is {steps}",
                hint=f"end the schedule with a rate without a step, or pass --steps {last}",
            )
    return LRSchedule(pieces=pieces, kind=kind, warmup_steps=warmup_steps, steps=steps)


def halved(lr: float | str) -> str:
    """``lr`` with every rate halved, as ``--lr`` takes it (the hint after a NaN loss)."""
    pieces = parse_lr(lr)
    if len(pieces) == 1 and pieces[0][1] is None:
        return f"{pieces[0][0] / 2:g}"
    return ", ".join(f"{r / 2:g}:{s}" if s is not None else f"{r / 2:g}" for r, s in pieces)

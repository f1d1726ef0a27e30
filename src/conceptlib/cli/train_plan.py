"""``train-plan``: train the concepts of a plan file together and register each."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from conceptlib.cli.common import console, echo_err, json_option, open_library, print_json


@click.command("train-plan")
@click.argument("plan", metavar="PLAN.toml", type=click.Path(path_type=str))
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the whole plan (names, catalog, images, templates, tokenizers, checkpoint) "
    "and print what would train, without loading the base model.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the plan run's checkpoint; as for train --resume, only lr, precision, "
    "steps and device may change in the plan, each change recorded per concept.",
)
@click.option(
    "--device",
    help="Overrides the plan's device: cpu, cuda, cuda:N, mps or auto. Under torchrun a "
    "plain cuda becomes cuda:LOCAL_RANK. Example: --device cuda.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or log lines.")
@json_option
def train_plan_cmd(
    plan: str, dry_run: bool, resume: bool, device: str | None, quiet: bool, as_json: bool
) -> None:
    """Train every concept of PLAN.toml against one frozen base model and register each.

    The plan's top-level keys are shared settings (base, steps, batch per concept,
    resolution, seed, precision, lr...); each [[concept]] table is one concept (name,
    images, init or init_from, and optionally kind, vectors, tags, description, templates,
    lr, seed, batch, captions, validation_prompts, clip_model...). buckets, accumulate and
    cuda_graphs are refused: a step concatenates every concept's batch. Each step mixes a batch of every concept; each concept's vectors get only
    its own gradient, with its own optimizer state and random stream, so it ends as it
    would trained alone with the same seed. Each concept is registered with its own
    training run (the plan's SHA-256 and the co-trained names in its config). The whole
    plan is checked before the base model loads. Outputs go to RUNS/plan-NAME/CONCEPT/.
    See docs/training.md, "Many concepts in one run".

    Under torchrun each process trains its share of the plan (concepts in plan order,
    round-robin over the ranks) and all register into the one catalog; rank 0 prints
    the summary.

    \b
    Examples:
      conceptlib train-plan concepts.toml --dry-run
      conceptlib train-plan concepts.toml
      conceptlib train-plan concepts.toml --resume
      torchrun --nproc_per_node 2 -m conceptlib train-plan concepts.toml
    """
    from conceptlib.trainer.results import TrainingInterrupted

    rank = _rank()
    show = not (quiet or as_json) and rank == 0
    try:
        result = _run(plan, show=show, dry_run=dry_run, resume=resume, device=device)
    except TrainingInterrupted as exc:
        _interrupted(exc, plan)
    if rank != 0:
        return
    if as_json:
        print_json(result.to_dict())
    elif not quiet:
        _render(result)
    if result.failures:
        first = result.failures[0]
        for f in result.failures:
            echo_err(f"error (rank {f.get('rank')}): {f.get('message')}")
        click.get_current_context().exit(int(first.get("exit_code", 1)))


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _run(plan: str, *, show: bool, **options: Any) -> Any:
    from conceptlib.trainer.multi import train_plan

    with open_library() as lib, _Bars(enabled=show and sys.stderr.isatty()) as bars:
        return train_plan(
            plan, library=lib, progress=bars.update, log=echo_err if show else None, **options
        )


class _Bars:
    """One rich progress bar per concept on stderr (when it is a terminal)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled and os.environ.get("CI") != "true"
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _Bars:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            from conceptlib.cli.common import err_console

            self._progress = Progress(
                # concept names are the user's text: never markup
                TextColumn("{task.fields[name]}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}", style="dim", markup=False),
                console=err_console(),
                transient=True,
            )
            self._progress.__enter__()
        return self

    def update(self, name: str, p: Any) -> None:
        if self._progress is None:
            return
        from conceptlib.cli.render import safe_text

        if name not in self._tasks:
            self._tasks[name] = self._progress.add_task(
                "", total=p.total, name=safe_text(name)[:40], status=""
            )
        if p.phase == "samples":
            status = "sampling"
        elif p.loss is not None:
            status = f"loss {p.loss:.4f}" + (
                f"  {p.steps_per_s:.2f} steps/s" if p.steps_per_s else ""
            )
        else:
            status = p.phase
        self._progress.update(self._tasks[name], completed=p.step, total=p.total, status=status)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def _interrupted(exc: Any, plan: str) -> NoReturn:
    """Ctrl-C: what is kept and the command that continues (exit 130)."""
    import shlex

    echo_err(exc.summary())
    words = ["conceptlib", "train-plan", plan] + (["--resume"] if exc.checkpoint else [])
    line = " ".join(shlex.quote(w) for w in words)
    echo_err(f"to continue: {line}" if exc.checkpoint else f"to start over: {line}")
    click.get_current_context().exit(130)


def _render(result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(box=None, pad_edge=False)
    if result.dry_run:
        for col in ("concept", "rank", "images", "init", "kind", "vectors", "lr", "seed", "batch"):
            t.add_column(col)
        for c in result.concepts:
            t.add_row(*(escape(str(c.get(k))) for k in ("name", "rank", "training_image_count",
                      "init", "kind", "vectors", "lr", "seed", "batch")))  # fmt: skip
    else:
        for col in ("concept", "final loss", "steps", "wall time", "registered"):
            t.add_column(col)
        for c in result.concepts:
            info = c.get("info") or {}
            t.add_row(
                escape(str(c["name"])), f"{c['final_loss']:.5f}", str(c["steps"]),
                f"{c['wall_time_s']:.1f} s", escape(str(info.get("tensor_sha256", "")[:12]))
                if info else "no",
            )  # fmt: skip
    out = console()
    out.print(t)
    if result.dry_run:
        n = len(result.concepts)
        out.print(f"dry run: {n} concept(s) would train; nothing was loaded or written")
    else:
        out.print(f"run folder: {escape(str(result.run_dir))}")

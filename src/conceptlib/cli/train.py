"""``train``: learn a new concept from a few images and register it."""

from __future__ import annotations

from typing import Any, NoReturn

import click

from conceptlib.cli.common import console, echo_err, json_option, open_library, print_json, progress

# Keep in step with conceptlib.trainer.train (not imported here: it would slow --help).
_STEPS, _LR, _BATCH, _CKPT, _SAMPLE = 2000, 5e-3, 4, 250, 500


@click.command("train")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--name",
    required=True,
    help="Name (and trigger token) of the new concept. A word the base model's tokenizer "
    "already has (e.g. ukiyoe) is refused before training: it would change what that word "
    "means in every prompt. Example: --name ukiyoe-style.",
)
@click.option(
    "--init",
    "init",
    required=True,
    help="Initializer word(s) of the base model's vocabulary: where the vectors start. "
    "Example: --init toy.",
)
@click.option(
    "--vectors", type=click.IntRange(1, 75), default=1, show_default=True, help="Vectors per token."
)
@click.option("--kind", type=click.Choice(["object", "style"]), default="object", show_default=True)
@click.option(
    "--base",
    default="tiny-sd1",
    show_default=True,
    help="Base model: a diffusers folder, a .safetensors checkpoint, a repo id in the local "
    "Hugging Face cache, or the built-in tiny-sd1 / tiny-sdxl.",
)
@click.option(
    "--base-config",
    type=click.Path(file_okay=False, path_type=str),
    help="For a single-file --base: the diffusers folder (or a repo id in the local Hugging "
    "Face cache) of a model of the same architecture; its configs and tokenizers are used.",
)
@click.option("--steps", type=click.IntRange(min=1), default=_STEPS, show_default=True)
@click.option(
    "--lr",
    type=float,
    default=_LR,
    show_default=True,
    help="AdamW learning rate. May be lowered on --resume (after a NaN loss); the change is "
    "recorded in the run. Example: --resume --lr 0.0025.",
)
@click.option("--batch", type=click.IntRange(min=1), default=_BATCH, show_default=True)
@click.option(
    "--resolution", type=click.IntRange(min=16), help="Image side (default: the model's)."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--templates", help="object, style, or a text file of templates with '{}'.")
@click.option("--tag", "tags", multiple=True, help="Tag to store (repeatable).")
@click.option("--description", help="Description to store.")
@click.option(
    "--precision",
    type=click.Choice(["bf16", "fp16", "fp32"]),
    help="Frozen-model precision (default: bf16 on CUDA, fp32 on a CPU). May change on "
    "--resume (recorded in the run). Example: --resume --precision bf16.",
)
@click.option(
    "--device",
    help="cpu, cuda, cuda:N, mps or auto (default: CONCEPTLIB_DEVICE if set, else cuda when "
    "available); one this machine cannot use is refused at once with the available ones. "
    "Example: --device cuda:1.",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run's last checkpoint with the same settings; only --lr, --precision, "
    "--steps and --device may change, each change recorded in the run.",
)
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=_CKPT, show_default=True)
@click.option(
    "--sample-every",
    type=click.IntRange(min=0),
    default=_SAMPLE,
    show_default=True,
    help="Sample images every K steps (0: only at the end).",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the UNet (worth it on CUDA; on a CPU the first step compiles for a minute or more).",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
@json_option
def train_cmd(
    images: tuple[str, ...],
    name: str,
    init: str,
    vectors: int,
    kind: str,
    base: str,
    base_config: str | None,
    steps: int,
    lr: float,
    batch: int,
    resolution: int | None,
    seed: int,
    templates: str | None,
    tags: tuple[str, ...],
    description: str | None,
    precision: str | None,
    device: str | None,
    resume: bool,
    checkpoint_every: int,
    sample_every: int,
    compile_: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Train a textual-inversion embedding on IMAGES (files or folders) and register it.

    Only the new token's vectors learn; the base model stays frozen. The run writes
    a checkpoint every --checkpoint-every steps (resume with --resume), a loss curve
    and sample images (stored as the concept's previews), and records the config,
    the base-model fingerprint and the training-images hash. After a NaN loss the
    hint gives the --resume command with a lower --lr; Ctrl-C prints the command
    that continues the run (exit 130).

    \b
    Examples:
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15
      conceptlib train a.jpg b.jpg c.jpg --name my-style --init painting --kind style \\
          --base stabilityai/stable-diffusion-xl-base-1.0 --vectors 4
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15 --resume
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15 --resume --lr 0.0025
      conceptlib train photos/ --name cat-toy --init toy \\
          --base dreamshaper_8.safetensors --base-config ./sd15
    """
    from conceptlib.trainer.train import TrainingInterrupted

    show = not (quiet or as_json)
    try:
        result = _run(
            list(images), show=show, name=name, init=init, base=base, base_config=base_config,
            vectors=vectors, kind=kind, steps=steps, lr=lr, batch=batch, resolution=resolution,
            seed=seed, templates=templates, tags=tags, description=description,
            precision=precision, device=device, resume=resume,
            checkpoint_every=checkpoint_every, sample_every=sample_every, compile=compile_,
        )  # fmt: skip
    except TrainingInterrupted as exc:
        _interrupted(exc)
    if as_json:
        print_json(result.to_dict())
        return
    _render(result)


def _run(images: list[str], *, show: bool, **options: Any) -> Any:
    from conceptlib.trainer.train import train

    with open_library() as lib, progress("training", quiet=not show) as bar:

        def on_progress(p: Any) -> None:
            if p.phase == "samples":
                bar.update(p.step, p.total, "sampling")
            elif p.loss is not None:
                rate = f"  {p.steps_per_s:.2f} steps/s" if p.steps_per_s else ""
                bar.update(p.step, p.total, f"loss {p.loss:.4f}{rate}")
            else:
                bar.update(p.step, p.total, p.phase)

        return train(
            images, library=lib, progress=on_progress, log=echo_err if show else None, **options
        )


def _interrupted(exc: Any) -> NoReturn:
    """Ctrl-C: say what is kept and the exact command that continues (exit 130)."""
    echo_err(exc.summary())
    ctx = click.get_current_context()
    if exc.checkpoint is not None:
        echo_err(f"to continue: {_command_line(ctx, resume=True)}")
    elif exc.run_dir is not None:
        echo_err(f"to start over: {_command_line(ctx, resume=False)}")
    ctx.exit(130)


def _command_line(ctx: click.Context, *, resume: bool) -> str:
    """The command as the user typed it (options left at their defaults stay out), with
    ``--resume`` added or removed; every word quoted for a POSIX shell."""
    from click.core import ParameterSource

    words = ["conceptlib", "train"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name or "")
        if param.name == "resume" or ctx.get_parameter_source(param.name or "") in (
            ParameterSource.DEFAULT,
            None,
        ):
            continue
        if isinstance(param, click.Argument):
            words += [str(v) for v in value]
        elif getattr(param, "is_flag", False):
            if value:
                words.append(param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0])
        elif getattr(param, "multiple", False):
            for v in value:
                words += [param.opts[-1], str(v)]
        elif value is not None:
            words += [param.opts[-1], str(value)]
    if resume:
        words.append("--resume")
    return " ".join(_quote(w) for w in words)


def _quote(word: str) -> str:
    """``shlex.quote``, but control characters (from a file name, say) are written as
    ``$'\\xNN'`` escapes so the line is safe to print and still exact to paste."""
    import shlex

    if word.isprintable():
        return shlex.quote(word)
    out = []
    for ch in word:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
    return "$'" + "".join(out) + "'"


def _render(r: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    from conceptlib.cli.render import resume_changes_text

    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    rows = [
        ("name", r.name),
        ("family", r.family),
        ("base model", f"{r.base_model}  {r.base_model_fingerprint[:16]}"),
        (
            "initializer",
            f"{r.initializer} -> "
            + "; ".join(f"{k}: {' '.join(v)}" for k, v in r.init_tokens.items()),
        ),
        ("steps", f"{r.steps}" + (f" (resumed at {r.resumed_from})" if r.resumed_from else "")),
        ("changed on resume", resume_changes_text(r.config.get("resume_changes"))),
        ("final loss", f"{r.final_loss:.5f}"),
        ("wall time", f"{r.wall_time_s:.1f} s on {r.device}, {r.precision}"),
        ("images", f"{r.training_image_count}  sha256 {r.training_images_hash[:16]}"),
        ("embedding", str(r.embedding_path)),
        ("loss curve", str(r.loss_curve_path)),
        ("samples", str(r.grid_path)),
    ]
    for k, v in rows:
        if v:  # paths, the initializer and the name are the user's text: never markup
            t.add_row(k, escape(v))
    c = console()
    c.print(t)
    if r.info is not None:
        shown = escape(r.info.name)
        c.print(f"registered [bold]{shown}[/bold]; see: conceptlib show {shown}")

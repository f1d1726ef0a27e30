"""``train``: learn a new concept from a few images and register it."""

from __future__ import annotations

from typing import Any, NoReturn

import click

from conceptlib.cli.common import console, echo_err, json_option, open_library, print_json, progress
from conceptlib.cli.train_data import data_options
from conceptlib.cli.train_outputs import output_options, train_kwargs

# Keep in step with conceptlib.trainer.train (not imported here: it would slow --help).
_STEPS, _LR, _BATCH, _CKPT, _SAMPLE = 2000, 5e-3, 4, 250, 500


@click.command("train")
@click.argument("images", nargs=-1, metavar="IMAGES...", type=click.Path(path_type=str))
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
    help="Initializer word(s) of the base model's vocabulary: where the vectors start "
    "(required to train, unless --init-from gives a registered entry's). Example: --init toy.",
)
@click.option(
    "--vectors",
    type=click.IntRange(1, 75),
    show_default="1; with --init-from, the entry's",
    help="Vectors per token.",
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
    default=str(_LR),
    show_default=True,
    help="AdamW learning rate (not scaled by --batch), or A1111's steps 'rate:until_step, "
    "..., rate'. May be lowered on --resume (after a NaN loss); the change is recorded in "
    "the run. Examples: --lr 0.002; --lr '0.05:10, 0.02:20, 0.005'; --resume --lr 0.0025.",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(["constant", "constant_with_warmup", "cosine"]),
    default="constant",
    show_default=True,
    help="Learning-rate schedule over --steps (cosine decays towards 0). "
    "Example: --lr-schedule cosine --lr-warmup-steps 100.",
)
@click.option(
    "--lr-warmup-steps",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Steps of linear warm-up (constant_with_warmup, cosine). Example: --lr-warmup-steps 100.",
)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="AdamW weight decay on the trained vectors (pulls them towards 0). "
    "Example: --weight-decay 0.01.",
)
@click.option(
    "--no-flip",
    is_flag=True,
    help="Do not also train on mirrored images (use it for text, logos and anything "
    "asymmetric). Example: --no-flip.",
)
@click.option(
    "--prediction-type",
    type=click.Choice(["epsilon", "v_prediction"]),
    help="Force the UNet's training target (default: the scheduler config's). Needed for a "
    "single-file v-prediction model paired with an epsilon --base-config; a checkpoint's "
    "v_pred marker that disagrees gives a warning. Example: --prediction-type v_prediction.",
)
@click.option(
    "--zero-terminal-snr",
    is_flag=True,
    help="Rescale the noise schedule to zero terminal SNR (for models trained so, e.g. with "
    "the ztsnr marker). Example: --prediction-type v_prediction --zero-terminal-snr.",
)
@click.option(
    "--clip-skip",
    type=click.IntRange(1, 12),
    default=1,
    show_default=True,
    help="Text-encoder layer to condition on, A1111's convention: 1 = the last layer, 2 = the "
    "one before (SD 1.x models made for clip skip 2). For SDXL 1 is the penultimate layer "
    "stock SDXL uses, N goes N-1 further back. Recorded with the concept. Example: --clip-skip 2.",
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
    "--save-every",
    type=int,
    help="Keep a loadable copy of the vectors every N steps and at the last one, with its "
    "preview grid, in RUN/steps/NAME-STEP.safetensors and .png (1 to --steps; kept across "
    "--resume). Example: --steps 2000 --save-every 250.",
)
@click.option(
    "--register-step",
    type=int,
    help="Instead of training: register the step N that a finished run of --name kept "
    "with --save-every (no IMAGES, --init or --base needed). An entry already named so "
    "from that run is kept as NAME@vK and the step becomes version K+1. "
    "Example: conceptlib train --name cat-toy --register-step 750.",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the UNet (worth it on CUDA; on a CPU the first step compiles for a minute or more).",
)
@click.option(
    "--accumulate",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="Gradient accumulation: micro-batches of --batch per optimizer step (the update "
    "equals one batch of N x --batch; --steps counts optimizer steps). Example: --batch 2 "
    "--accumulate 4.",
)
@click.option(
    "--gradient-checkpointing/--no-gradient-checkpointing",
    "gradient_checkpointing",
    default=None,
    help="Recompute the UNet's activations in the backward instead of keeping them (less "
    "memory, about a third more compute). Default: on when the printed memory estimate "
    "says the run does not fit the GPU's free memory. Example: --gradient-checkpointing.",
)
@click.option(
    "--cuda-graphs",
    type=click.Choice(["auto", "on", "off"]),
    default="off",
    show_default=True,
    help="Run each step as one captured CUDA graph (auto: where possible, else the eager "
    "step with the reason in the log; on: refuse a run where it is not possible). "
    "Example: --cuda-graphs auto.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar or log lines.")
@output_options
@data_options
@json_option
def train_cmd(
    images: tuple[str, ...],
    name: str,
    init: str | None,
    vectors: int | None,
    kind: str,
    base: str,
    base_config: str | None,
    steps: int,
    lr: str,
    lr_schedule: str,
    lr_warmup_steps: int,
    weight_decay: float,
    no_flip: bool,
    prediction_type: str | None,
    zero_terminal_snr: bool,
    clip_skip: int,
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
    save_every: int | None,
    register_step: int | None,
    compile_: bool,
    accumulate: int,
    gradient_checkpointing: bool | None,
    cuda_graphs: str,
    quiet: bool,
    as_json: bool,
    **outputs: Any,
) -> None:
    """Train a textual-inversion embedding on IMAGES (files or folders) and register it.

    Only the new token's vectors learn; the base model stays frozen. The run writes
    a checkpoint every --checkpoint-every steps (resume with --resume), a loss curve
    and sample images (stored as the concept's previews), and records the config,
    the base-model fingerprint and the training-images hash. After a NaN loss the
    hint gives the --resume command with a lower --lr; Ctrl-C prints the command
    that continues the run (exit 130). With --save-every N the vectors are kept every
    N steps (with a preview grid) so the best step can be registered afterwards
    with --register-step.

    \b
    Examples:
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15
      conceptlib train a.jpg b.jpg c.jpg --name my-style --init painting --kind style \\
          --base stabilityai/stable-diffusion-xl-base-1.0 --vectors 4
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15 --resume
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15 --resume --lr 0.0025
      conceptlib train photos/ --name cat-toy --init toy \\
          --base dreamshaper_8.safetensors --base-config ./sd15
      conceptlib train logo/ --name acme-logo --init logo --base ./sd15 --no-flip \\
          --clip-skip 2 --lr-schedule cosine --lr-warmup-steps 100
      conceptlib train photos/ --name cat-toy --init toy --base v-model.safetensors \\
          --base-config ./sd21 --prediction-type v_prediction --zero-terminal-snr
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15 --save-every 250
      conceptlib train photos/ --name cat-toy --init toy --base ./sdxl --batch 1 \\
          --accumulate 4 --gradient-checkpointing
      conceptlib train --name cat-toy --register-step 750
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15 --captions txt --buckets
      conceptlib train beach/ --name cat-toy-beach --init-from cat-toy --base ./sd15
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15 \\
          --validation-prompt 'a photo of {} on a beach' --validation-negative blurry \\
          --clip-model openai/clip-vit-large-patch14
    """
    from conceptlib.trainer.train import TrainingInterrupted

    show = not (quiet or as_json)
    if register_step is not None:
        _register_step(name, register_step, as_json=as_json)
        return
    ctx = click.get_current_context()
    for param in ctx.command.params:
        if param.name in ("images", "init") and not ctx.params.get(param.name):
            if param.name == "init" and outputs.get("init_from"):
                continue  # the vectors start from the entry
            raise click.MissingParameter(ctx=ctx, param=param)
    try:
        result = _run(
            list(images), show=show, name=name, init=init, base=base, base_config=base_config,
            vectors=vectors, kind=kind, steps=steps, lr=_lr_value(lr), lr_schedule=lr_schedule,
            lr_warmup_steps=lr_warmup_steps, weight_decay=weight_decay, flip=not no_flip,
            prediction_type=prediction_type, zero_terminal_snr=zero_terminal_snr,
            clip_skip=clip_skip, batch=batch, resolution=resolution,
            seed=seed, templates=templates, tags=tags, description=description,
            precision=precision, device=device, resume=resume,
            checkpoint_every=checkpoint_every, sample_every=sample_every, compile=compile_,
            accumulate=accumulate, gradient_checkpointing=gradient_checkpointing,
            cuda_graphs=cuda_graphs,
            save_every=save_every, **train_kwargs(outputs),
        )  # fmt: skip
    except TrainingInterrupted as exc:
        _interrupted(exc)
    if as_json:
        print_json(result.to_dict())
        return
    _render(result)


def _register_step(name: str, step: int, *, as_json: bool) -> None:
    """``--register-step``: only --name (and --json / -q) go with it; register, render."""
    from click.core import ParameterSource
    from rich.markup import escape

    from conceptlib.errors import UsageError
    from conceptlib.trainer.steps import register_step

    ctx = click.get_current_context()
    allowed = {"name", "register_step", "quiet", "as_json"}
    extra = [
        p.opts[-1] if isinstance(p, click.Option) else p.human_readable_name
        for p in ctx.command.params
        if p.name not in allowed
        and ctx.get_parameter_source(p.name or "") not in (ParameterSource.DEFAULT, None)
    ]
    if extra:
        raise UsageError(
            f"--register-step registers a step a finished run kept; it takes no {', '.join(extra)}",
            hint=f"conceptlib train --name NAME --register-step {step}",
        )
    with open_library() as lib:
        info = register_step(name, step, library=lib)
    if as_json:
        print_json(info.to_dict())
        return
    shown = escape(info.name)
    console().print(
        f"registered step {step} as [bold]{shown}[/bold] (version {info.version}); "
        f"see: conceptlib show {shown}"
    )


def _lr_value(text: str) -> float | str:
    """``--lr`` as a number when it is one, else the A1111 step text (checked by train)."""
    try:
        return float(text)
    except ValueError:
        return text


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
            elif getattr(param, "secondary_opts", None):  # --no-gradient-checkpointing
                words.append(param.secondary_opts[0])
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
            + "; ".join(f"{k}: {' '.join(v)}" for k, v in r.init_tokens.items())
            if r.initializer
            else "",
        ),
        ("started from", ", ".join(f"{p['name']} ({p['tensor_sha256'][:12]})" for p in r.parents)),
        ("steps", f"{r.steps}" + (f" (resumed at {r.resumed_from})" if r.resumed_from else "")),
        ("changed on resume", resume_changes_text(r.config.get("resume_changes"))),
        ("final loss", f"{r.final_loss:.5f}"),
        ("wall time", f"{r.wall_time_s:.1f} s on {r.device}, {r.precision}"),
        ("images", f"{r.training_image_count}  sha256 {r.training_images_hash[:16]}"),
        ("embedding", str(r.embedding_path)),
        ("loss curve", str(r.loss_curve_path)),
        ("samples", str(r.grid_path)),
        ("kept steps", ", ".join(str(s) for s in r.kept_steps)),
        (
            "CLIP-I / CLIP-T",
            ", ".join(
                f"step {q['step']}: {q['clip_i']:.3f} / {q['clip_t']:.3f}" for q in r.quality
            ),
        ),
        ("tensorboard", f"tensorboard --logdir {r.tensorboard_dir}" if r.tensorboard_dir else ""),
    ]
    for k, v in rows:
        if v:  # paths, the initializer and the name are the user's text: never markup
            t.add_row(k, escape(v))
    c = console()
    c.print(t)
    if r.info is not None:
        shown = escape(r.info.name)
        c.print(f"registered [bold]{shown}[/bold]; see: conceptlib show {shown}")

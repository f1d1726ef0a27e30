"""``train``: learn a new concept from a few images and register it."""

from __future__ import annotations

from typing import Any

import click

from conceptlib.cli.common import console, echo_err, json_option, open_library, print_json, progress

# Keep in step with conceptlib.trainer.train (not imported here: it would slow --help).
_STEPS, _LR, _BATCH, _CKPT, _SAMPLE = 2000, 5e-3, 4, 250, 500


@click.command("train")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--name", required=True, help="Name (and trigger token) of the new concept.")
@click.option("--init", "init", required=True, help="Initializer word(s): where the vectors start.")
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
@click.option("--lr", type=float, default=_LR, show_default=True, help="AdamW learning rate.")
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
    help="Frozen-model precision (default: bf16 on CUDA, fp32 on a CPU).",
)
@click.option("--device", help="cuda, cpu, cuda:1... (default: cuda when available).")
@click.option("--resume", is_flag=True, help="Continue the run's last checkpoint.")
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
    the base-model fingerprint and the training-images hash.

    \b
    Examples:
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15
      conceptlib train a.jpg b.jpg c.jpg --name my-style --init painting --kind style \\
          --base stabilityai/stable-diffusion-xl-base-1.0 --vectors 4
      conceptlib train photos/ --name cat-toy --init toy --base ./sd15 --resume
      conceptlib train photos/ --name cat-toy --init toy \\
          --base dreamshaper_8.safetensors --base-config ./sd15
    """
    from conceptlib.trainer.train import train

    show = not (quiet or as_json)
    with open_library() as lib, progress("training", quiet=not show) as bar:

        def on_progress(p: Any) -> None:
            if p.phase == "samples":
                bar.update(p.step, p.total, "sampling")
            elif p.loss is not None:
                rate = f"  {p.steps_per_s:.2f} steps/s" if p.steps_per_s else ""
                bar.update(p.step, p.total, f"loss {p.loss:.4f}{rate}")
            else:
                bar.update(p.step, p.total, p.phase)

        result = train(
            list(images), name=name, init=init, base=base, base_config=base_config,
            vectors=vectors, kind=kind, steps=steps, lr=lr, batch=batch, resolution=resolution,
            seed=seed, templates=templates, tags=tags, description=description,
            precision=precision, device=device, resume=resume,
            checkpoint_every=checkpoint_every, sample_every=sample_every, compile=compile_,
            library=lib, progress=on_progress, log=echo_err if show else None,
        )  # fmt: skip
    if as_json:
        print_json(result.to_dict())
        return
    _render(result)


def _render(r: Any) -> None:
    from rich.table import Table

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
        ("final loss", f"{r.final_loss:.5f}"),
        ("wall time", f"{r.wall_time_s:.1f} s on {r.device}, {r.precision}"),
        ("images", f"{r.training_image_count}  sha256 {r.training_images_hash[:16]}"),
        ("embedding", str(r.embedding_path)),
        ("loss curve", str(r.loss_curve_path)),
        ("samples", str(r.grid_path)),
    ]
    for k, v in rows:
        t.add_row(k, v)
    c = console()
    c.print(t)
    if r.info is not None:
        c.print(f"registered [bold]{r.info.name}[/bold]; see: conceptlib show {r.info.name}")

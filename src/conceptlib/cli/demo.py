"""``demo``: the README's main job on the embedded defaults."""

from __future__ import annotations

from typing import Any

import click

from conceptlib.cli.common import console, echo_err, json_option, open_library, print_json, progress


@click.command("demo")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=str),
    default=None,
    help="Where to write the demo's files. Default: CONCEPTLIB_HOME/demo.",
)
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps.")
@click.option(
    "--no-train", is_flag=True, help="Only import the sample embeddings (seconds, no torch model)."
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@json_option
def demo_cmd(
    out: str | None, steps: int | None, no_train: bool, quiet: bool, as_json: bool
) -> None:
    """Run the built-in demo, on this machine's CPU, with nothing downloaded:

    \b
    1. write sample embeddings in several formats (A1111 .pt, emb_params,
       diffusers, SDXL) with Civitai sidecars, import them and search them;
    2. generate a few toy images, train a concept on them with the built-in
       tiny-sd1 model, register it, find it with search, and write its loss
       curve (loss.png) and sample grid (samples.png).

    \b
    Example:
      conceptlib demo
      conceptlib show demo-toy
    """
    from pathlib import Path

    from conceptlib.registry.samples import write_sample_folder

    show = not (quiet or as_json)
    result: dict[str, Any] = {}
    with open_library() as lib:
        folder = Path(out) if out else lib.settings.home / "demo"
        files = write_sample_folder(folder / "embeddings")
        with progress("importing samples", quiet=not show) as bar:
            report = lib.import_paths(
                [folder / "embeddings"], recursive=True, on_progress=bar.update
            )
        result["import"] = {
            "folder": str(folder / "embeddings"),
            "files": [str(f) for f in files],
            **{k: v for k, v in report.to_dict().items() if k != "files"},
            "search_watercolor": [e.name for e in lib.search("watercolor")],
            "tag_style": [e.name for e in lib.search(tags=["style"])],
        }
        if not no_train:
            from conceptlib.trainer.demo import DEMO_STEPS, run_demo

            with progress("training demo-toy on tiny-sd1", quiet=not show) as bar:

                def on_progress(p: Any) -> None:
                    label = f"loss {p.loss:.4f}" if p.loss is not None else p.phase
                    bar.update(p.step, p.total, label)

                result["train"] = run_demo(
                    lib,
                    folder / "training",
                    steps=steps or DEMO_STEPS,
                    progress=on_progress,
                    log=echo_err if show else None,
                )
    if as_json:
        print_json(result)
        return
    from conceptlib.cli.render import embeddings_table

    c = console()
    imp = result["import"]
    c.print(
        f"[bold]1.[/bold] wrote {len(imp['files'])} sample embeddings to {imp['folder']}; "
        f"imported {imp['imported']}, already present {imp['present']}, "
        f"rejected {imp['rejected']}"
    )
    with open_library() as lib:
        c.print(embeddings_table(lib.search(tags=["style"]), title="search --tag style"))
    if "train" in result:
        t = result["train"]
        c.print(
            f"[bold]2.[/bold] trained [bold]{t['name']}[/bold] on {len(t['images'])} images with "
            f"{t['base_model']}: {t['steps']} steps in {t['wall_time_s']:.1f} s on {t['device']}, "
            f"loss {t['first_loss']:.4f} -> {t['final_loss']:.4f}"
        )
        c.print(f"   search {t['search']['query']!r} finds: {', '.join(t['search']['found'])}")
        c.print(f"   loss curve: {t['loss_curve']}")
        c.print(f"   sample grid: {t['sample_grid']}")
        c.print(f"next: conceptlib show {t['name']}  |  conceptlib search --tag demo")

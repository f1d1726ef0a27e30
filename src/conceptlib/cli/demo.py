"""``demo``: the README's main job on the embedded defaults."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from conceptlib.cli.common import console, echo_err, json_option, open_library, print_json, progress

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo


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

    Every name it registers starts with demo- (no real concept is named like
    that). Run again, it adds nothing: the samples are already present and the
    trained demo-toy is reported, not trained again (`conceptlib rm demo-toy`
    first to train it anew).

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
        existing = None if no_train else _existing_demo(lib)
        if existing is not None:
            result["train"] = _reused(lib, existing)
        elif not no_train:
            from conceptlib.trainer.checkpoint import CHECKPOINT_NAME
            from conceptlib.trainer.demo import DEMO_STEPS, run_demo

            # An interrupted earlier demo leaves its checkpoint; the demo has no --resume
            # (train's hint would name it), so it starts over.
            stale = folder / "training" / "run" / CHECKPOINT_NAME
            if stale.is_file():
                stale.unlink()
                if show:
                    echo_err("note: an earlier demo was interrupted; training starts over")

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
    from rich.markup import escape

    from conceptlib.cli.render import embeddings_table

    c = console()
    imp = result["import"]
    c.print(
        f"[bold]1.[/bold] wrote {len(imp['files'])} sample embeddings to "
        f"{escape(imp['folder'])}; imported {imp['imported']}, already present "
        f"{imp['present']}, rejected {imp['rejected']}"
    )
    with open_library() as lib:
        c.print(embeddings_table(lib.search(tags=["style"]), title="search --tag style"))
    if "train" in result:
        t = result["train"]
        if t.get("reused"):
            loss = f", final loss {t['final_loss']:.4f}" if t["final_loss"] is not None else ""
            c.print(
                f"[bold]2.[/bold] [bold]{t['name']}[/bold] is already in the catalog (trained "
                f"{t['created_at'] or '?'}, {t['steps']} steps{loss}): not trained again; "
                f"`conceptlib rm {t['name']}` first to train it anew"
            )
        else:
            c.print(
                f"[bold]2.[/bold] trained [bold]{t['name']}[/bold] on {len(t['images'])} images "
                f"with {t['base_model']}: {t['steps']} steps in {t['wall_time_s']:.1f} s on "
                f"{t['device']}, loss {t['first_loss']:.4f} -> {t['final_loss']:.4f}"
            )
        c.print(f"   search {t['search']['query']!r} finds: {', '.join(t['search']['found'])}")
        c.print(f"   loss curve: {escape(str(t['loss_curve']))}")
        c.print(f"   sample grid: {escape(str(t['sample_grid']))}")
        c.print(f"next: conceptlib show {t['name']}  |  conceptlib search --tag demo")


def _existing_demo(lib: Library) -> EmbeddingInfo | None:
    """The concept an earlier demo trained (``demo-toy``, or ``demo-toy-N`` when the name
    was taken), found by its tag and source, with its training run."""
    import re

    from conceptlib.trainer.demo import DEMO_NAME

    for info in lib.search(tags=["demo"], source="trained"):
        if re.fullmatch(rf"{re.escape(DEMO_NAME)}(-\d+)?", info.name):
            return lib.get(info.name)
    return None


def _reused(lib: Library, info: EmbeddingInfo) -> dict[str, Any]:
    """What the demo reports for a concept it trained on an earlier run (JSON-safe)."""
    run = info.training_runs[-1] if info.training_runs else None
    paths = {p.role: str(lib.preview_path(info, p.filename)) for p in info.previews}
    return {
        "name": info.name,
        "reused": True,
        "created_at": info.created_at,
        "base_model": info.base_model,
        "steps": run.steps if run else None,
        "final_loss": run.final_loss if run else None,
        "search": {"query": info.name, "found": [e.name for e in lib.search(info.name)]},
        "loss_curve": paths.get("loss_curve"),
        "sample_grid": paths.get("grid"),
        "tensor_sha256": info.tensor_sha256,
    }

"""``import``: bring embedding files and whole UI folders into the catalog."""

from __future__ import annotations

import click

from conceptlib.cli.common import console, json_option, open_library, print_json, progress


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders.")
@click.option("--name", help="Name for the entry (one file only). Default: the file name.")
@click.option(
    "--kind",
    type=click.Choice(["object", "style", "negative", "other"]),
    help="Kind of every imported entry. Default: from sidecar metadata, else 'other'.",
)
@click.option("--tag", "tags", multiple=True, help="Tag every imported entry (repeatable).")
@click.option("--base-model", help="Declared base model, e.g. 'SD 1.5' or a checkpoint name.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "-v", "--verbose", is_flag=True, help="List every file, also when more than 50 were imported."
)
@json_option
def import_cmd(
    paths: tuple[str, ...],
    recursive: bool,
    name: str | None,
    kind: str | None,
    tags: tuple[str, ...],
    base_model: str | None,
    quiet: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """Import embedding files and A1111 / ComfyUI / InvokeAI embedding folders.

    Formats are detected by content: A1111 .pt, emb_params (.pt/.safetensors),
    diffusers learned_embeds.bin/.safetensors, SDXL {clip_l, clip_g}, the diffusers
    two-file SDXL pair and A1111 embeddings inside PNGs. Pickle files are checked
    opcode by opcode and never executed. Beside each file, <name>.preview.png,
    A1111 <name>.json and Civitai <name>.civitai.info are picked up.

    One bad file never stops the rest; the summary says what was imported, what was
    already present (and as which entry), and what was rejected and why. The exit
    status is 0 when nothing was rejected, 3 otherwise; a single file that is
    rejected exits with its own error's status (e.g. 4 for an unsafe pickle).

    \b
    Examples:
      conceptlib import ~/webui/embeddings --recursive
      conceptlib import EasyNegative.safetensors --kind negative --tag negative
      conceptlib import learned_embeds.bin --name cat-toy --base-model "SD 1.5"
    """
    lib = open_library()
    try:
        with progress("importing", quiet=quiet or as_json) as bar:
            report = lib.import_paths(
                paths,
                recursive=recursive,
                name=name,
                kind=kind,
                tags=tags,
                base_model=base_model,
                on_progress=bar.update,
            )
    finally:
        lib.close()
    if len(report.outcomes) == 1 and report.rejected and report.rejected[0].exception:
        # One file: its own error, one line and its class's exit status.
        raise report.rejected[0].exception
    if as_json:
        print_json(report.to_dict())
    else:
        _render(report, verbose)
    if report.rejected:
        raise SystemExit(3)


def _render(report, verbose: bool) -> None:  # noqa: ANN001
    from rich.table import Table

    out = console()
    # Many files: list only what needs attention (present, rejected) unless --verbose.
    shown = report.outcomes
    if len(shown) > 50 and not verbose:
        shown = [o for o in shown if o.status != "imported"]
    if shown:
        table = Table(header_style="bold")
        table.add_column("file", overflow="fold")
        table.add_column("result")
        table.add_column("entry / reason", overflow="fold")
        for o in shown:
            if o.status == "imported":
                table.add_row(o.path, "[green]imported[/green]", o.name or "")
            elif o.status == "present":
                table.add_row(
                    o.path, "[yellow]present[/yellow]", f"already in the catalog as {o.existing}"
                )
            else:
                table.add_row(o.path, "[red]rejected[/red]", o.reason or "")
        out.print(table)
    out.print(
        f"imported {len(report.imported)}, already present {len(report.present)}, "
        f"rejected {len(report.rejected)}"
    )

"""``import``: bring embedding files and whole UI folders into the catalog."""

from __future__ import annotations

import click

from conceptlib.cli.common import console, json_option, open_library, print_json, progress
from conceptlib.cli.render import printable
from conceptlib.schemas.records import ImportOutcome, ImportReport


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("-r", "--recursive", is_flag=True, help="Descend into sub-folders.")
@click.option("--name", help="Name for the entry (one file only). Default: the file name.")
@click.option(
    "--token",
    metavar="TOKEN",
    help="Trigger token for the entry (one file only), e.g. --token '<le-petit-prince>'. "
    "Default: the token inside the file, else the name; a file token that cannot be a "
    "trigger is replaced by the name, and the summary says so.",
)
@click.option(
    "--kind",
    type=click.Choice(["object", "style", "negative", "other"]),
    help="Kind of every imported entry, and of entries already present. Default: "
    "type_of_concept.txt or sidecar metadata, else 'other'.",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    help="Tag every imported entry, and entries already present (repeatable), e.g. --tag style.",
)
@click.option("--base-model", help="Declared base model, e.g. 'SD 1.5' or a checkpoint name.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="List every file, also when more than 50 were imported, and each file a folder "
    "walk skipped, with why.",
)
@json_option
def import_cmd(
    paths: tuple[str, ...],
    recursive: bool,
    name: str | None,
    token: str | None,
    kind: str | None,
    tags: tuple[str, ...],
    base_model: str | None,
    quiet: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """Import embedding files and A1111 / ComfyUI / InvokeAI embedding folders.

    Formats are detected by content: A1111 .pt (and the Textual Inversion paper's
    original .pt), emb_params (.pt/.safetensors), diffusers
    learned_embeds.bin/.safetensors, SDXL {clip_l, clip_g}, the diffusers two-file
    SDXL pair and A1111 embedding images (PNG or WebP, from the sd-ti-embedding text
    chunk or the strips in the pixels; named by the name inside them). In a folder,
    an image is imported only when it holds an embedding. Pickle files are checked
    opcode by opcode and never executed. Beside each file, <name>.preview.png,
    A1111 <name>.json and Civitai <name>.civitai.info are picked up.

    One bad file never stops the rest; the summary says what was imported (with
    every name or token that differs from the file's, and why: A1111 prompts name
    the new one), what was already present (and as which entry), what was rejected
    and why, and how many files a folder walk skipped (sidecars, previews, hidden
    files). An sd-concepts-library folder's token_identifier.txt and
    type_of_concept.txt give the token and kind. On a file already present, --kind,
    --tag, --base-model and --token are applied to the existing entry and the
    summary lists what changed. The exit status is 0 when nothing was rejected, 3
    otherwise; a single file that is rejected exits with its own error's status
    (e.g. 4 for an unsafe pickle).

    \b
    Examples:
      conceptlib import ~/webui/embeddings --recursive
      conceptlib import EasyNegative.safetensors --kind negative --tag negative
      conceptlib import learned_embeds.bin --name cat-toy --base-model "SD 1.5"
      conceptlib import prince.bin --token "<le-petit-prince>"
    """
    lib = open_library()
    try:
        with progress("importing", quiet=quiet or as_json) as bar:
            report = lib.import_paths(
                paths,
                recursive=recursive,
                name=name,
                token=token,
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


def _render(report: ImportReport, verbose: bool) -> None:
    from rich.table import Table

    out = console()
    # Many files: list only what needs attention unless --verbose (a derived name
    # needs attention: prompts must use it).
    shown = report.outcomes
    if len(shown) > 50 and not verbose:
        shown = [o for o in shown if o.status != "imported" or o.derived or o.flags]
    if shown:
        table = Table(header_style="bold")
        table.add_column("file", overflow="fold")
        table.add_column("result")
        table.add_column("entry / reason", overflow="fold")
        for o in shown:
            table.add_row(printable(o.path), _STATUS[o.status], _detail(o))
        out.print(table)
    if report.skipped and verbose:
        for s in report.skipped:
            out.print(f"[dim]skipped[/dim] {printable(s['path'])}: {printable(s['reason'])}")
    updated = f" ({len(report.updated)} updated)" if report.updated else ""
    out.print(
        f"imported {len(report.imported)}, already present {len(report.present)}{updated}, "
        f"rejected {len(report.rejected)}, skipped {len(report.skipped)}"
        + (" (sidecars, previews, hidden files...; -v lists them)" if report.skipped else "")
    )


_STATUS = {
    "imported": "[green]imported[/green]",
    "present": "[yellow]present[/yellow]",
    "rejected": "[red]rejected[/red]",
}


def _detail(o: ImportOutcome) -> str:
    """The entry / reason cell: the name, then every derived name or token and why,
    flags, and for a present file what its options changed."""
    if o.status == "rejected":
        return printable(o.reason or "")
    lines = []
    if o.status == "present":
        lines.append(f"already in the catalog as {printable(o.existing)}")
        for field, change in o.changes.items():
            if field == "tags":
                lines.append(f"  added tags: {printable(', '.join(change))}")
            else:
                old, new = change
                lines.append(f"  {field.replace('_', ' ')}: {printable(old)} -> {printable(new)}")
    else:
        lines.append(printable(o.name or ""))
        if o.token and o.token != o.name:
            lines.append(f"  token {printable(o.token)}")
        for d in o.derived:
            lines.append(
                f"  {printable(d['field'])} {printable(d['value'])}: {printable(d['why'])}"
            )
    if o.flags:
        lines.append(f"  [yellow]flags: {printable(', '.join(o.flags))}[/yellow]")
    lines += [f"  {printable(n)}" for n in o.notes]
    return "\n".join(lines)

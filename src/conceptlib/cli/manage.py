"""``tag``, ``rename``, ``rm``, ``export``, ``verify`` and ``gc``."""

from __future__ import annotations

import click

from conceptlib.cli.common import console, json_option, open_library, print_json, progress

EXPORT_FORMATS = ["a1111-pt", "safetensors", "diffusers", "sdxl"]


@click.command("tag")
@click.argument("name")
@click.option("--add", "add", multiple=True, help="Tag to add (repeatable).")
@click.option("--remove", "remove", multiple=True, help="Tag to remove (repeatable).")
@json_option
def tag_cmd(name: str, add: tuple[str, ...], remove: tuple[str, ...], as_json: bool) -> None:
    """Add or remove tags of one embedding.

    \b
    Examples:
      conceptlib tag cat-toy --add toy --add object
      conceptlib tag easynegative --remove sd15
    """
    from conceptlib.errors import UsageError

    if not add and not remove:
        raise UsageError("nothing to do: give --add TAG and/or --remove TAG")
    with open_library() as lib:
        info = lib.tag(name, add=add, remove=remove)
    if as_json:
        print_json(info.to_dict())
    else:
        click.echo(f"{info.name}: {', '.join(info.tags) or 'no tags'}")


@click.command("rename")
@click.argument("old")
@click.argument("new")
@json_option
def rename_cmd(old: str, new: str, as_json: bool) -> None:
    """Rename an embedding. A trigger token equal to the old name follows the rename.

    \b
    Example:
      conceptlib rename cat_toy cat-toy
    """
    with open_library() as lib:
        info = lib.rename(old, new)
    if as_json:
        print_json(info.to_dict())
    else:
        click.echo(f"renamed {old} -> {info.name} (token {info.token})")


@click.command("rm")
@click.argument("names", nargs=-1, required=True)
@json_option
def rm_cmd(names: tuple[str, ...], as_json: bool) -> None:
    """Remove embeddings from the catalog (and their blobs, when nothing else uses them).

    \b
    Example:
      conceptlib rm old-concept another-one
    """
    removed = []
    with open_library() as lib:
        infos = [lib.get(n) for n in names]  # all must exist before anything is removed
        for info in infos:
            lib.remove(info.name)
            removed.append(info.name)
    if as_json:
        print_json({"removed": removed})
    else:
        for n in removed:
            click.echo(f"removed {n}")


UI_LAYOUTS = ["a1111", "comfyui", "invokeai", "diffusers"]


@click.command("export")
@click.argument("name", required=False)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS + UI_LAYOUTS),
    default=None,
    help="For NAME: a1111-pt (A1111 .pt), safetensors (emb_params; SDXL as clip_l/clip_g, read "
    "by A1111, ComfyUI, InvokeAI), diffusers (learned_embeds.safetensors keyed by token) or sdxl "
    "({clip_l, clip_g}); default safetensors. With --for-prompt: the UI layout a1111, comfyui, "
    "invokeai or diffusers; default a1111.",
)
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(path_type=str),
    help="A folder (files named after the entry) or, for one-file formats, a file path.",
)
@click.option(
    "--for-prompt",
    "for_prompt",
    metavar="PROMPT",
    help="Write exactly the embeddings this prompt names (<name>, <name:0.8>), in a UI's layout.",
)
@click.option("--negative", metavar="PROMPT", help="With --for-prompt: the negative prompt too.")
@click.option("--pt", is_flag=True, help="With --for-prompt --format a1111: write .pt files.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@json_option
def export_cmd(
    name: str | None,
    fmt: str | None,
    out: str,
    for_prompt: str | None,
    negative: str | None,
    pt: bool,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Write an embedding in a format a UI or diffusers reads, or every embedding a prompt
    needs (--for-prompt).

    \b
    Examples:
      conceptlib export cat-toy --format a1111-pt -o ~/webui/embeddings
      conceptlib export cat-toy --format diffusers -o ./cat-toy
      conceptlib export my-xl-style --format sdxl -o style.safetensors
      conceptlib export --for-prompt "a <cat-toy> in <ukiyoe:0.8> style" --negative "<easyneg>" \\
          --format comfyui -o ~/ComfyUI/models/embeddings
    """
    from conceptlib.errors import UsageError

    if for_prompt is not None:
        if name:
            raise UsageError("give either NAME or --for-prompt, not both")
        fmt = fmt or "a1111"
        if fmt not in UI_LAYOUTS:
            raise UsageError(
                f"--for-prompt writes a UI layout: --format {' | '.join(UI_LAYOUTS)}, not {fmt!r}"
            )
        from conceptlib.cli.compose import run_export_for_prompt

        run_export_for_prompt(
            for_prompt, fmt, out, negative=negative, overwrite=overwrite, pt=pt, as_json=as_json
        )
        return
    if not name:
        raise UsageError("give the NAME of the embedding to export (or --for-prompt PROMPT)")
    if negative or pt:
        raise UsageError("--negative and --pt go with --for-prompt")
    fmt = fmt or "safetensors"
    if fmt not in EXPORT_FORMATS:
        raise UsageError(
            f"--format {fmt} is a UI layout for --for-prompt; for NAME use one of "
            f"{', '.join(EXPORT_FORMATS)}"
        )
    with open_library() as lib:
        paths = lib.export(name, fmt, out, overwrite=overwrite)
    if as_json:
        print_json({"name": name, "format": fmt, "files": [str(p) for p in paths]})
    else:
        for p in paths:
            click.echo(str(p))


@click.command("verify")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@json_option
def verify_cmd(quiet: bool, as_json: bool) -> None:
    """Check every blob against its hash and the database's integrity.

    Exits 0 when everything is intact, 7 when a problem was found. Orphan blobs
    (left by an interrupted import) are listed; `conceptlib gc` removes them.

    \b
    Example:
      conceptlib verify
    """
    with open_library() as lib, progress("verifying", quiet=quiet or as_json) as bar:
        report = lib.verify(on_progress=bar.update)
    if as_json:
        print_json(report.to_dict())
    else:
        out = console()
        for p in report.problems:
            out.print(f"[red]problem[/red] {p}")
        out.print(
            f"checked {report.checked_blobs} blobs; database {report.integrity}; "
            f"{len(report.problems)} problems; {len(report.orphan_blobs)} orphan blobs"
            + (" (run `conceptlib gc`)" if report.orphan_blobs else "")
        )
    if not report.ok:
        raise SystemExit(7)


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Spare files younger than this many seconds (an import running elsewhere writes "
    "its blobs just before committing their rows).",
)
@json_option
def gc_cmd(dry_run: bool, grace: float, as_json: bool) -> None:
    """Remove blobs that no catalog entry uses, and temp files of interrupted writes.

    \b
    Examples:
      conceptlib gc --dry-run
      conceptlib gc
      conceptlib gc --grace 0        # nothing else is running
    """
    with open_library() as lib:
        removed = lib.gc(dry_run=dry_run, grace_s=grace)
    if as_json:
        print_json({"dry_run": dry_run, "removed": removed})
    else:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {len(removed)} orphan files")

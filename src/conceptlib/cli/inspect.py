"""``which`` (alias ``inspect``): the embeddings an image was made with."""

from __future__ import annotations

import click

from conceptlib.cli.common import console, json_option, open_library, print_json


@click.command("which")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=str))
@json_option
def which_cmd(images: tuple[str, ...], as_json: bool) -> None:
    """List the embeddings IMAGES were made with, and which the catalog has.

    Reads A1111 infotext (TI hashes, Hashes, the prompt's bare names), ComfyUI's
    prompt/workflow graphs, InvokeAI's metadata and conceptlib's own record; resolves
    each embedding by hash (A1111's 12 hex, AutoV2, full SHA-256, tensor hash) or by
    name, and says where a missing one may come from (a Hub repo the catalog recorded).

    Example: conceptlib which out.png civitai-download.png --json
    """
    from conceptlib.cli.render import printable
    from conceptlib.compose.inspect import which

    with open_library() as library:
        reports = which(library, list(images))
    if as_json:  # print_json escapes control and bidi characters from the image
        print_json([r.to_dict() for r in reports])
        return
    out = console()
    for r in reports:
        out.print(
            f"[bold]{printable(r.path)}[/bold]  ({', '.join(r.generators)}; "
            f"{len(r.embeddings)} embedding(s), {len(r.missing)} missing)"
        )
        for e in r.embeddings:
            label = printable(e.name or e.hash or "?")
            if e.entry is not None:
                out.print(f"  ok       {label} -> {printable(e.entry)} (by {e.matched_by})")
                continue
            line = f"  missing  {label}"
            if e.hash:
                line += f" (hash {printable(e.hash[:16])})"
            if e.note:
                line += f": {printable(e.note)}"
            out.print(line)
            for repo in e.sources:
                out.print(f"           from: conceptlib pull {printable(repo)}")

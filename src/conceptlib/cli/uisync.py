"""``ui-sync``: keep a UI's embeddings folder in step with the catalog
(see :mod:`conceptlib.compose.uisync`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from conceptlib.cli.common import echo, json_option, open_library, print_json
from conceptlib.compose.uisync import MANIFEST_NAME, SYNC_UIS
from conceptlib.schemas.enums import Family

if TYPE_CHECKING:
    from conceptlib.compose.uisync import SyncReport

#: Exit status when a file was left alone as a conflict (the rest was synced).
CONFLICT_EXIT = 1
FAMILIES = tuple(f.value for f in Family)


@click.command("ui-sync")
@click.argument("folder", type=click.Path(path_type=str))
@click.option(
    "--for",
    "ui",
    type=click.Choice(SYNC_UIS),
    required=True,
    help="The UI whose embeddings folder FOLDER is, e.g. --for a1111 (its layout and sidecars).",
)
@click.option(
    "--tag",
    "tags",
    multiple=True,
    metavar="TAG",
    help="Only entries with this tag (repeatable: every tag must match), e.g. --tag style.",
)
@click.option(
    "--family",
    type=click.Choice(FAMILIES),
    default=None,
    help="Only entries of this family, e.g. --family sdxl.",
)
@click.option(
    "--name",
    "names",
    multiple=True,
    metavar="NAME",
    help="Only these entries (repeatable), e.g. --name cat-toy.",
)
@click.option("--dry-run", is_flag=True, help="List the plan; change nothing in FOLDER.")
@json_option
def ui_sync_cmd(
    folder: str,
    ui: str,
    tags: tuple[str, ...],
    family: str | None,
    names: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
) -> None:
    """Write the chosen entries into a UI's embeddings folder and keep it in sync.

    Each entry is written as the UI loads it (<name>.safetensors, with ModelSpec
    metadata in its header) with the sidecars the UI shows: A1111 <name>.json
    (description, activation text, sd version, negative flag), <name>.preview.png and
    <name>.civitai.info where Civitai data is known. Entries of a family the UI cannot
    load are skipped with the reason.

    A manifest in FOLDER (.conceptlib-sync.json) lists the files ui-sync wrote with
    their SHA-256. Running again writes only what changed (a second run writes nothing),
    removes the files of entries no longer selected, and never overwrites or removes a
    file it did not write or that was changed since: those are reported as conflicts
    (exit 1) and left alone. Each folder belongs to one UI; one catalog can feed many.

    \b
    Examples:
      conceptlib ui-sync ~/webui/embeddings --for a1111
      conceptlib ui-sync ~/ComfyUI/models/embeddings --for comfyui --family sdxl
      conceptlib ui-sync ~/SwarmUI/Models/Embeddings --for swarmui --tag style --dry-run
    """
    from conceptlib.compose.uisync import ui_sync

    lib = open_library()
    try:
        report = ui_sync(lib, folder, ui, tags=tags, family=family, names=names, dry_run=dry_run)
    finally:
        lib.close()
    _render(report, as_json)
    if report.conflicts:
        raise click.exceptions.Exit(CONFLICT_EXIT)


def _render(report: SyncReport, as_json: bool) -> None:
    if as_json:
        print_json(report.to_dict())
        return
    would = "would " if report.dry_run else ""
    for a in report.actions:
        if a.action == "unchanged":
            continue
        if a.action == "conflict":
            echo(f"conflict {a.path}: {a.reason}", err=True)
        else:
            echo(f"{would}{a.action} {a.path}")
    for s in report.skipped:
        echo(f"skipped {s.name} ({s.family}): {s.reason}", err=True)
    counts = ", ".join(
        f"{report.count(k)} {k}"
        for k in ("write", "update", "remove", "unchanged", "conflict")
        if report.count(k)
    )
    summary = (
        f"{report.folder}: {len(report.entries)} entries for {report.ui}; "
        f"{counts or 'nothing to do'}"
    )
    if report.dry_run:
        summary += " (dry run: nothing changed)"
    elif not report.changed and not report.conflicts:
        summary += f" (in sync; manifest {MANIFEST_NAME})"
    echo(summary, err=True)

"""``civitai info``: look entries up on Civitai by hash (see :mod:`conceptlib.registry.civitai`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from conceptlib.cli.common import echo, json_option, open_library, print_json, progress

if TYPE_CHECKING:
    from conceptlib.registry.civitai import CivitaiPullOutcome, InfoReport

#: Exit status when some lookups failed (the rest went on); unknown hashes are not failures.
PARTIAL_FAILURE_EXIT = 1


@click.group("civitai")
def civitai_group() -> None:
    """Civitai: look entries up by hash; pull with `conceptlib pull civitai:VERSION_ID`.

    The endpoint is CONCEPTLIB_CIVITAI_ENDPOINT (default https://civitai.com); a token
    in CIVITAI_API_TOKEN is sent to that endpoint only, and never printed.

    \b
    Examples:
      conceptlib civitai info easynegative
      conceptlib civitai info --all
      conceptlib pull civitai:9208
    """


@civitai_group.command("info")
@click.argument("names", nargs=-1, metavar="[NAME...]")
@click.option("--all", "all_entries", is_flag=True, help="Look up every entry in the catalog.")
@click.option(
    "--previews",
    type=click.IntRange(0, 8),
    default=2,
    show_default=True,
    help="Preview images to download per entry (each capped and checked), e.g. --previews 0.",
)
@json_option
def info_cmd(names: tuple[str, ...], all_entries: bool, previews: int, as_json: bool) -> None:
    """Fill in what the catalog lacks from Civitai, found by each file's SHA-256.

    Fills missing trained words, base model, tags and description (HTML stripped to
    text), keeps the model and version ids and names, the AIR URN and the license
    flags in the entry's extra data (shown by `show`), and downloads preview images.
    Hashes Civitai does not know are listed at the end; they are no error. 429 and
    5xx replies are retried with bounded backoff (CONCEPTLIB_CIVITAI_RETRIES).

    \b
    Examples:
      conceptlib civitai info easynegative
      conceptlib civitai info --all --previews 0
      conceptlib civitai info cat-toy --json
    """
    from conceptlib.registry.civitai import civitai_info

    lib = open_library()
    try:
        with progress("Civitai", quiet=as_json) as bar:
            report = civitai_info(
                lib, names, all_entries=all_entries, previews=previews, on_progress=bar.update
            )
    finally:
        lib.close()
    _render_info(report, as_json)
    if report.failed:
        raise click.exceptions.Exit(PARTIAL_FAILURE_EXIT)


def _render_info(report: InfoReport, as_json: bool) -> None:
    if as_json:
        print_json(report.to_dict())
        return
    for o in report.outcomes:
        if o.status == "updated":
            what = ", ".join(o.filled) or "Civitai record"
            echo(f"{o.name}: {o.air} (filled: {what})")
        elif o.status == "unchanged":
            echo(f"{o.name}: {o.air} (nothing new)")
        elif o.status == "failed":
            echo(f"{o.name}: failed: {o.error}", err=True)
        for note in o.notes:
            echo(f"  note: {note}", err=True)
    echo(
        f"{report.count('updated')} updated, {report.count('unchanged')} unchanged, "
        f"{len(report.unknown)} unknown to Civitai, {len(report.failed)} failed"
    )
    if report.unknown:
        echo("unknown to Civitai: " + ", ".join(report.unknown))


def pull_civitai_spec(
    spec: str,
    *,
    filename: str | None,
    name: str | None,
    trigger_token: str | None,
    as_json: bool,
) -> None:
    """``pull civitai:ID`` / ``pull urn:air:...``: called by ``pull`` in :mod:`conceptlib.cli.hub`."""
    from conceptlib.registry.civitai import pull_civitai

    lib = open_library()
    try:
        outcome = pull_civitai(lib, spec, filename=filename, name=name, token=trigger_token)
    finally:
        lib.close()
    _render_pull(outcome, as_json)


def _render_pull(o: CivitaiPullOutcome, as_json: bool) -> None:
    if as_json:
        print_json(o.to_dict())
        return
    if o.status == "present":
        echo(f"{o.name} is already in the catalog ({o.air}): no change")
    else:
        echo(f"pulled {o.name} from {o.air} ({o.file}, SHA-256 checked)")
    for note in o.notes:
        echo(f"  {note}")

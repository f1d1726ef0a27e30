"""``push`` and ``pull``: Hub sync commands over :mod:`conceptlib.registry.hub`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from conceptlib.cli.common import (
    console,
    echo,
    json_option,
    open_library,
    print_json,
    progress,
    short,
)
from conceptlib.cli.render import printable
from conceptlib.errors import UsageError

if TYPE_CHECKING:
    from conceptlib.registry.hub import PullOutcome, PullReport, PushResult

#: Exit status of a bulk or library pull where some repos failed (the rest went on).
PARTIAL_FAILURE_EXIT = 1


@click.command("push")
@click.argument("name", required=False)
@click.option("--repo", "repo_id", metavar="NS/NAME", help="Target repo (default: YOUR-USER/NAME).")
@click.option(
    "--library",
    "library_repo",
    metavar="NS/NAME",
    help="Push a selection of the catalog as one library repo (with --tag/--search/NAME).",
)
@click.option("--tag", "tags", multiple=True, help="With --library: concepts with this tag.")
@click.option("--search", help="With --library: concepts matching this text.")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--message", "-m", help="Commit message.")
@click.option("--force", is_flag=True, help="Overwrite a remote that moved since the last sync.")
@click.option(
    "--for",
    "for_ui",
    type=click.Choice(["invokeai"]),
    default=None,
    help="Also lay the repo out for a UI. invokeai adds learned_embeds.bin, the file InvokeAI "
    "installs a repo by (with --library: in every concept folder); a later push without "
    "it removes that file. E.g. push cat-toy --for invokeai.",
)
@json_option
def push_cmd(
    name: str | None,
    repo_id: str | None,
    library_repo: str | None,
    tags: tuple[str, ...],
    search: str | None,
    private: bool,
    message: str | None,
    force: bool,
    for_ui: str | None,
    as_json: bool,
) -> None:
    """Push a concept (or a library) to the Hugging Face Hub.

    The repo is created when missing and reads like an sd-concepts-library repo:
    learned_embeds.safetensors, token_identifier.txt, type_of_concept.txt, previews/,
    concept.json (everything the catalog knows) and a model card. Pushing an unchanged
    concept makes no commit; a repo that moved since the last sync is not overwritten
    (use --force). The token comes from HF_TOKEN or `hf auth login`.

    \b
    Examples:
      conceptlib push cat-toy
      conceptlib push cat-toy --repo my-org/cat-toy --private -m "first version"
      conceptlib push cat-toy --for invokeai
      conceptlib push --library my-org/styles --tag style
      conceptlib push --library my-org/everything
    """
    from conceptlib.registry import hub

    lib = open_library()
    try:
        if library_repo:
            if repo_id:
                raise UsageError("--repo and --library exclude each other")
            result = hub.push_library(
                lib,
                library_repo,
                tags=tags,
                search=search,
                names=[name] if name else (),
                private=private,
                message=message,
                force=force,
                for_ui=for_ui,
            )
        else:
            if not name:
                raise UsageError("push needs a NAME (or --library NS/NAME)")
            if tags or search:
                raise UsageError("--tag and --search select concepts for --library")
            result = hub.push(
                lib,
                name,
                repo_id=repo_id,
                private=private,
                message=message,
                force=force,
                for_ui=for_ui,
            )
    finally:
        lib.close()
    _render_push(result, as_json)


def _render_push(result: PushResult, as_json: bool) -> None:
    if as_json:
        print_json(result.to_dict())
        return
    what = ", ".join(result.names) if len(result.names) <= 3 else f"{len(result.names)} concepts"
    if result.status == "unchanged":
        echo(f"{result.repo_id} is up to date ({what}) at {short(result.commit)}: no commit")
    else:
        echo(
            f"pushed {what} to {result.repo_id} at {short(result.commit)} ({result.status}: "
            f"{len(result.changed)} files written, {len(result.deleted)} removed)"
        )
        echo(result.url)
    for note in result.notes:
        echo(f"note: {note}", err=True)


@click.command("pull")
@click.argument("repo", required=False, metavar="[REPO[@REVISION] | civitai:ID | AIR]")
@click.option("--file", "filename", help="The embedding file to take, when the repo has several.")
@click.option("--name", help="Register under this name (single repo).")
@click.option(
    "--token",
    "trigger_token",
    metavar="TOKEN",
    help="Register with this trigger token instead of the repo's (single repo), e.g. "
    "--token '<my-cat>'. The Hub access token comes from HF_TOKEN, never from here.",
)
@click.option("--author", help="Bulk: every repo of this user or org.")
@click.option("--search", help="Bulk: repos whose id contains this text.")
@click.option("--tag", "tags", multiple=True, help="Bulk: repos with this tag (repeatable).")
@click.option("--limit", type=click.IntRange(min=1), help="Bulk: at most N repos.")
@click.option(
    "--concurrency",
    type=click.IntRange(min=1, max=64),
    help="Bulk and library: downloads at a time (default 8).",
)
@click.option("--library", "library_repo", metavar="NS/NAME[@REV]", help="Pull a library repo.")
@json_option
def pull_cmd(
    repo: str | None,
    filename: str | None,
    name: str | None,
    trigger_token: str | None,
    author: str | None,
    search: str | None,
    tags: tuple[str, ...],
    limit: int | None,
    concurrency: int | None,
    library_repo: str | None,
    as_json: bool,
) -> None:
    """Pull embeddings from the Hugging Face Hub into the catalog.

    Recognizes sd-concepts-library repos (learned_embeds.bin + token_identifier.txt),
    single-file repos (EasyNegative style) and repos pushed by conceptlib. Only the
    needed files are downloaded, and their hashes are checked before anything is
    registered. Pulling the same revision again changes nothing; a new revision with
    different vectors becomes a new version (the older one stays as NAME@vN).
    With HF_HUB_OFFLINE=1 repos are read from the local cache.
    civitai:VERSION_ID or an AIR (urn:air:ECO:embedding:civitai:MODEL@VERSION) pulls from
    Civitai instead: the file's SHA-256 is checked against the API's before it is
    registered (source civitai, source_ref the AIR); see `conceptlib civitai --help`.

    \b
    Examples:
      conceptlib pull sd-concepts-library/cat-toy
      conceptlib pull sd-concepts-library/cat-toy@main --name my-cat
      conceptlib pull sd-concepts-library/cat-toy --name my-cat --token "<my-cat>"
      conceptlib pull some-user/negatives --file EasyNegative.safetensors
      conceptlib pull --author sd-concepts-library --search cat --limit 20
      conceptlib pull --library my-org/styles
      conceptlib pull civitai:9208
      conceptlib pull urn:air:sd1:embedding:civitai:7808@9208
    """
    from conceptlib.registry import hub
    from conceptlib.registry.civitai.api import is_civitai_spec

    bulk = bool(author or search or tags or limit)
    modes = sum(bool(x) for x in (repo, bulk, library_repo))
    if modes != 1:
        raise UsageError(
            "pull takes one of: REPO, --library NS/NAME, or --author/--search/--tag",
            hint="for example: conceptlib pull sd-concepts-library/cat-toy",
        )
    if (filename or name or trigger_token) and not repo:
        raise UsageError("--file, --name and --token apply to a single REPO")
    if repo and is_civitai_spec(repo):
        from conceptlib.cli.civitai import pull_civitai_spec

        pull_civitai_spec(
            repo, filename=filename, name=name, trigger_token=trigger_token, as_json=as_json
        )
        return
    lib = open_library()
    try:
        if repo:
            outcome = hub.pull(lib, repo, filename=filename, name=name, trigger_token=trigger_token)
            _render_outcome(outcome, as_json)
            return
        with progress("Pulling", quiet=as_json) as bar:
            if library_repo:
                report = hub.pull_library(
                    lib, library_repo, concurrency=concurrency, on_progress=bar.update
                )
            else:
                report = hub.pull_many(
                    lib,
                    author=author,
                    search=search,
                    tags=tags,
                    limit=limit,
                    concurrency=concurrency,
                    on_progress=bar.update,
                )
    finally:
        lib.close()
    _render_report(report, as_json)
    if report.failed:
        raise click.exceptions.Exit(PARTIAL_FAILURE_EXIT)


def _render_outcome(o: PullOutcome, as_json: bool) -> None:
    if as_json:
        print_json(o.to_dict())
        return
    if o.status == "present":
        echo(f"{o.name} is already in the catalog ({o.repo_id}@{short(o.commit)}): no change")
    elif o.status == "new-version":
        echo(
            f"pulled {o.name} v{o.version} from {o.source_ref}; the previous version is "
            f"kept as {o.previous}"
        )
    else:
        echo(f"pulled {o.name} from {o.source_ref} ({o.layout})")
    for note in o.notes:  # how the name or token differs from the repo's (untrusted parts repr'd)
        echo(f"  {note}")


_STYLE = {"pulled": "green", "new-version": "cyan", "present": "dim", "failed": "red"}


def _render_report(report: PullReport, as_json: bool) -> None:
    if as_json:
        print_json(report.to_dict())
        return
    from rich.table import Table

    table = Table(title=_summary(report), title_justify="left")
    table.add_column("repo")
    table.add_column("status")
    table.add_column("name")
    table.add_column("version", justify="right")
    table.add_column("detail", overflow="fold")
    for o in report.outcomes:
        detail: Any = o.error or (f"previous kept as {o.previous}" if o.previous else "")
        table.add_row(
            printable(o.repo_id),
            f"[{_STYLE.get(o.status, '')}]{o.status}[/]",
            printable(o.name or ""),
            str(o.version) if o.version else "",
            "\n".join(printable(t) for t in [detail, *o.notes] if t),
        )
    console().print(table)


def _summary(report: PullReport) -> str:
    total = len(report.outcomes)
    parts = [
        f"{report.count('pulled')} pulled",
        f"{report.count('new-version')} new versions",
        f"{report.count('present')} present",
        f"{report.count('failed')} failed",
    ]
    what = f"{report.repo_id}: {total} concepts" if report.repo_id else f"{total} repos"
    return f"{what} in {report.wall_s:.1f}s: " + ", ".join(parts)

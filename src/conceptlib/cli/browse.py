"""``list``, ``search`` and ``show``: read-only, fast, no heavy imports."""

from __future__ import annotations

import click

from conceptlib.cli.common import console, json_option, open_reader, print_json

FAMILIES = ["sd1", "sd2", "sdxl"]
KINDS = ["object", "style", "negative", "other"]
SOURCES = ["trained", "file", "hub", "civitai", "blend"]


def _render(infos, as_json: bool, title: str) -> None:  # noqa: ANN001
    if as_json:
        print_json([e.to_dict() for e in infos])
        return
    if not infos:
        click.echo("no embeddings match", err=True)
        return
    from conceptlib.cli.render import embeddings_table

    console().print(embeddings_table(infos, title=f"{title} ({len(infos)})"))


@click.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most N entries.")
@json_option
def list_cmd(limit: int | None, as_json: bool) -> None:
    """List every embedding in the catalog, by name.

    \b
    Examples:
      conceptlib list
      conceptlib list --json | jq '.[].name'
    """
    from conceptlib.catalog.query import SearchQuery

    with open_reader() as r:
        infos = r.search(SearchQuery(limit=limit))
    _render(infos, as_json, "embeddings")


@click.command("search")
@click.argument("query", nargs=-1)
@click.option("--tag", "tags", multiple=True, help="Require this tag (repeatable).")
@click.option("--family", type=click.Choice(FAMILIES), help="Only this base-model family.")
@click.option("--kind", type=click.Choice(KINDS), help="Only this kind.")
@click.option(
    "--compatible-with",
    type=click.Choice(FAMILIES),
    help="Usable with this model family (sd1 embeddings count for sdxl: first encoder only).",
)
@click.option("--source", type=click.Choice(SOURCES), help="Only from this source.")
@click.option(
    "--base", "base_model", help="Only trained on / declared for this base model or fingerprint."
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most N entries.")
@click.option(
    "--sort",
    type=click.Choice(["name", "newest", "oldest", "clip-i", "clip-t"]),
    default="name",
    show_default=True,
    help="Order: by name, newest or oldest first, or best CLIP-I / CLIP-T first (trained "
    "with --clip-model; entries without it last). Example: --sort clip-i.",
)
@json_option
def search_cmd(
    query: tuple[str, ...],
    tags: tuple[str, ...],
    family: str | None,
    kind: str | None,
    compatible_with: str | None,
    source: str | None,
    base_model: str | None,
    limit: int | None,
    sort: str,
    as_json: bool,
) -> None:
    """Find embeddings. QUERY matches name, token, description and tags (every word, as a
    prefix; quoting several words is optional); the options filter further and combine
    with AND.

    \b
    Examples:
      conceptlib search watercolor
      conceptlib search plush cat          # entries matching both words
      conceptlib search --tag style --family sdxl
      conceptlib search --kind negative --compatible-with sdxl --json
      conceptlib search --source trained --sort clip-i
    """
    from conceptlib.catalog.query import SearchQuery, normalize_tag

    q = SearchQuery(
        text=" ".join(query) or None,
        tags=[normalize_tag(t) for t in tags],
        family=family,
        kind=kind,
        compatible_with=compatible_with,
        source=source,
        base_model=base_model,
        limit=limit,
        order=sort,
    )
    with open_reader() as r:
        infos = r.search(q)
    _render(infos, as_json, "matches")


@click.command("show")
@click.argument("name")
@json_option
def show_cmd(name: str, as_json: bool) -> None:
    """Show everything known about one embedding: hashes, provenance, previews, training.

    NAME is the embedding's name or its trigger token, or a hash: its tensor SHA-256,
    its file SHA-256, or a prefix of either of at least 8 hex digits, such as the
    A1111 short hash (12 hex) or the Civitai AutoV2 (10 hex, either case). A prefix
    shared by several entries is refused with the list of them.

    \b
    Examples:
      conceptlib show cat-toy
      conceptlib show "<cat-toy>" --json
      conceptlib show 3fa9c1d2e4b5        # A1111 short hash, AutoV2 or any SHA-256 prefix
    """
    from conceptlib.catalog.query import is_hash_prefix
    from conceptlib.config import load_settings
    from conceptlib.errors import NotFound

    with open_reader() as r:
        info = r.resolve(name, hashes=True)
        if info is None:
            what = "named or hashed" if is_hash_prefix(name) else "named"
            raise NotFound(f"no embedding {what} {name!r}", suggestions=r.suggest(name))
    store = load_settings().store_dir
    if as_json:
        d = info.to_dict()
        for p in d["previews"]:
            p["path"] = str(store / p["sha256"][:2] / p["sha256"])
        print_json(d)
        return
    from conceptlib.cli.render import detail_panel

    console().print(detail_panel(info, lambda sha: store / sha[:2] / sha))

"""``demo``: the README's main job on the embedded defaults."""

from __future__ import annotations

import click

from conceptlib.cli.common import console, json_option, open_library, print_json, progress


@click.command("demo")
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=str),
    default=None,
    help="Where to write the demo's files. Default: CONCEPTLIB_HOME/demo.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@json_option
def demo_cmd(out: str | None, quiet: bool, as_json: bool) -> None:
    """Run the built-in demo: generate sample embeddings in several formats (with
    Civitai sidecars), import them into the catalog and search them.

    Everything is made by code on this machine: no download, no GPU.

    \b
    Example:
      conceptlib demo
      conceptlib search watercolor
    """
    from pathlib import Path

    from conceptlib.catalog.query import SearchQuery
    from conceptlib.registry.samples import write_sample_folder

    with open_library() as lib:
        folder = Path(out) if out else lib.settings.home / "demo"
        files = write_sample_folder(folder / "embeddings")
        with progress("importing samples", quiet=quiet or as_json) as bar:
            report = lib.import_paths(
                [folder / "embeddings"], recursive=True, on_progress=bar.update
            )
        found = lib.search("watercolor")
        styles = lib.search(tags=["style"])
        with lib.reader() as r:
            xl_ok = r.search(SearchQuery(compatible_with="sdxl"))
    result = {
        "folder": str(folder),
        "files": [str(f) for f in files],
        "import": report.to_dict(),
        "search_watercolor": [e.name for e in found],
        "tag_style": [e.name for e in styles],
        "compatible_with_sdxl": [e.name for e in xl_ok],
    }
    if as_json:
        print_json(result)
        return
    from conceptlib.cli.render import embeddings_table

    c = console()
    c.print(
        f"wrote {len(files)} sample files to {folder / 'embeddings'}; imported "
        f"{len(report.imported)}, already present {len(report.present)}, "
        f"rejected {len(report.rejected)}"
    )
    c.print(embeddings_table(found, title='search "watercolor"'))
    c.print(embeddings_table(styles, title="search --tag style"))
    c.print("next: conceptlib list | conceptlib show cat-toy | conceptlib search --kind negative")

"""``tag``, ``edit``, ``rename``, ``rm``, ``export``, ``verify`` and ``gc``."""

from __future__ import annotations

from typing import Any

import click

from conceptlib.cli.common import console, json_option, open_library, print_json, progress
from conceptlib.registry.upkeep import GC_GRACE_S

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


KINDS = ["object", "style", "negative", "other"]


@click.command("edit")
@click.argument("name")
@click.option("--kind", type=click.Choice(KINDS), help="New kind, e.g. --kind style.")
@click.option(
    "--description",
    metavar="TEXT",
    help='New description ("" clears it), e.g. --description "a small plush cat toy".',
)
@click.option(
    "--token",
    metavar="TOKEN",
    help="New trigger token (not an ordinary word, not used by another entry), "
    "e.g. --token '<my-cat>'.",
)
@click.option(
    "--trigger-words",
    metavar='"A, B"',
    help="Words typed with it in A1111 / Civitai prompts, comma-separated "
    '("" clears them), e.g. --trigger-words "plush cat, toy".',
)
@click.option(
    "--base-model",
    metavar="MODEL",
    help='Declared base model ("" clears it), e.g. --base-model "SD 1.5".',
)
@click.option(
    "--license",
    metavar="TEXT",
    help='License ("" clears it), e.g. --license creativeml-openrail-m.',
)
@json_option
def edit_cmd(
    name: str,
    kind: str | None,
    description: str | None,
    token: str | None,
    trigger_words: str | None,
    base_model: str | None,
    license: str | None,
    as_json: bool,
) -> None:
    """Change an embedding's kind, description, trigger token, trigger words, base model
    or license, all in one transaction: a refused value changes nothing. Search finds
    the new description at once.

    \b
    Examples:
      conceptlib edit cat-toy --kind object --description "a small plush cat toy"
      conceptlib edit cat-toy --token "<my-cat>" --trigger-words "plush cat, toy"
      conceptlib edit easyneg --kind negative --base-model "SD 1.5" --json
    """
    from conceptlib.errors import UsageError

    given = {
        "kind": kind,
        "description": description,
        "token": token,
        "trigger_words": trigger_words,
        "base_model": base_model,
        "license": license,
    }
    changed = [k for k, v in given.items() if v is not None]
    if not changed:
        raise UsageError(
            "nothing to change: give --kind, --description, --token, --trigger-words, "
            "--base-model or --license"
        )
    words = None if trigger_words is None else trigger_words.split(",")
    with open_library() as lib:
        info = lib.update(
            name,
            kind=kind,
            description=description,
            token=token,
            trigger_words=words,
            base_model=base_model,
            license=license,
        )
    if as_json:
        print_json(info.to_dict())
    else:
        fields = ", ".join(k.replace("_", " ") for k in changed)
        click.echo(f"{info.name}: changed {fields} (token {info.token}, kind {info.kind})")


@click.command("rename")
@click.argument("old")
@click.argument("new")
@click.option(
    "--token",
    metavar="TOKEN",
    help="Also set a new trigger token, e.g. --token '<my-cat>' "
    "(default: a token equal to the old name follows the rename; any other is kept).",
)
@json_option
def rename_cmd(old: str, new: str, token: str | None, as_json: bool) -> None:
    """Rename an embedding. A trigger token equal to the old name follows the rename;
    --token sets another one.

    \b
    Examples:
      conceptlib rename cat_toy cat-toy
      conceptlib rename cat-toy my-cat --token "<my-cat>"
    """
    with open_library() as lib:
        info = lib.rename(old, new, token=token)
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
    help="For NAME: a1111-pt (A1111 .pt; SD 1.x/2.x only), safetensors (emb_params; SDXL as "
    "clip_l/clip_g, read by A1111, ComfyUI, InvokeAI), diffusers (NAME.safetensors keyed by the "
    "token in lower case, as CLIP's tokenizer reads prompts; SDXL: NAME/learned_embeds*.safetensors) "
    "or sdxl ({clip_l, clip_g}); default safetensors. With --for-prompt: the UI layout a1111, "
    "comfyui, invokeai or diffusers; default a1111.",
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
@click.option(
    "--base",
    metavar="MODEL",
    default=None,
    help="With --for-prompt: the base model the UI will use, read for its family only (no "
    "weights loaded), to warn about embeddings that UI will not apply on it, e.g. "
    "--base ./sdxl-base.safetensors (an SD 1.x embedding on SDXL: A1111 and InvokeAI skip it).",
)
@click.option(
    "--pt",
    is_flag=True,
    help="With --for-prompt --format a1111: write .pt files (SD 1.x/2.x only: an SDXL "
    "embedding is refused, as with --format a1111-pt).",
)
@click.option(
    "--for",
    "for_ui",
    type=click.Choice(["invokeai"]),
    default=None,
    help="For NAME: the folder a UI installs instead of one file. invokeai writes "
    "OUT/NAME/learned_embeds.bin, which InvokeAI's model manager installs from its path, "
    "e.g. export cat-toy --for invokeai -o ~/invokeai-imports.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace existing files that differ (a file with the same bytes is left as it is; "
    "without --overwrite a different one stops the export, exit 5).",
)
@click.option(
    "--t5-key",
    "t5_key",
    type=click.Choice(["t5xxl", "t5"]),
    default="t5xxl",
    show_default=True,
    help="SD3/FLUX: the key of the T5-XXL vectors, t5xxl (ComfyUI) or t5 (OneTrainer), e.g. "
    "export flux-style --t5-key t5 -o flux-style.safetensors.",
)
@click.option(
    "--bundle-into",
    "bundle_into",
    metavar="LORA",
    type=click.Path(path_type=str),
    default=None,
    help="Write a copy of the LoRA .safetensors file LORA to -o OUT with NAME bundled in "
    "(bundle_emb.NAME.*, read by A1111 and OneTrainer); the LoRA's tensors and metadata are "
    "kept. The embedding's family must be the LoRA's, e.g. export cat-toy --bundle-into "
    "cat-lora.safetensors -o cat-lora-bundled.safetensors.",
)
@json_option
def export_cmd(
    name: str | None,
    fmt: str | None,
    out: str,
    for_prompt: str | None,
    negative: str | None,
    base: str | None,
    pt: bool,
    for_ui: str | None,
    overwrite: bool,
    t5_key: str,
    bundle_into: str | None,
    as_json: bool,
) -> None:
    """Write an embedding in a format a UI or diffusers reads, or every embedding a prompt
    needs (--for-prompt).

    Exporting again onto files that hold the same bytes is not an error; files with other
    contents are refused (exit 5, nothing written) unless --overwrite. The same vectors
    give the same bytes every time; an embedding imported from a file in the layout asked
    for gets that very file back (said on stderr), so its hashes (A1111, Civitai AutoV2)
    are the ones shown where it came from.

    \b
    Examples:
      conceptlib export cat-toy --format a1111-pt -o ~/webui/embeddings
      conceptlib export cat-toy --format diffusers -o ./cat-toy
      conceptlib export my-xl-style --format sdxl -o style.safetensors
      conceptlib export cat-toy --for invokeai -o ~/invokeai-imports
      conceptlib export flux-style --t5-key t5 -o flux-style.safetensors
      conceptlib export cat-toy --bundle-into cat-lora.safetensors -o cat-lora-ti.safetensors
      conceptlib export --for-prompt "a <cat-toy> in <ukiyoe:0.8> style" --negative "<easyneg>" \\
          --format comfyui -o ~/ComfyUI/models/embeddings
    """
    from conceptlib.errors import UsageError

    if for_ui and (for_prompt is not None or fmt):
        raise UsageError(
            f"--for {for_ui} is a layout of its own: it goes with NAME, without --format "
            "or --for-prompt"
        )
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
            for_prompt,
            fmt,
            out,
            negative=negative,
            overwrite=overwrite,
            pt=pt,
            as_json=as_json,
            base=base,
        )
        return
    if not name:
        raise UsageError("give the NAME of the embedding to export (or --for-prompt PROMPT)")
    if negative or pt or base:
        raise UsageError("--negative, --base and --pt go with --for-prompt")
    if bundle_into is not None:
        if fmt or for_ui:
            raise UsageError(
                "--bundle-into writes the LoRA's own layout: without --format or --for"
            )
        from conceptlib.registry.bundles import bundle_into as write_bundle

        with open_library() as lib:
            facts = write_bundle(lib, name, bundle_into, out, t5_key=t5_key, overwrite=overwrite)
        if as_json:
            print_json(facts)
            return
        from conceptlib.cli.common import err_console
        from conceptlib.cli.render import printable, safe_text

        click.echo(safe_text(facts["output"]))
        err_console().print(
            f"{printable(facts['name'])} bundled as {', '.join(map(printable, facts['keys']))} "
            f"into a copy of {printable(facts['lora'])} ({facts['family']})"
        )
        return
    fmt = for_ui or fmt or "safetensors"
    if fmt not in EXPORT_FORMATS and fmt != for_ui:
        raise UsageError(
            f"--format {fmt} is a UI layout for --for-prompt; for NAME use one of "
            f"{', '.join(EXPORT_FORMATS)}"
        )
    with open_library() as lib:
        paths = lib.export(name, fmt, out, overwrite=overwrite, t5_key=t5_key)
    render_exported(paths, {"name": name, "format": fmt}, as_json=as_json)


def render_exported(paths: Any, facts: dict[str, Any], *, as_json: bool) -> None:
    """Print what an export wrote: the paths on stdout (one a line, or ``--json`` with
    ``files`` and ``original``), and on stderr which ones are the original imported
    file's bytes (``paths.original``)."""
    original = [str(p) for p in getattr(paths, "original", [])]
    if as_json:
        print_json({**facts, "files": [str(p) for p in paths], "original": original})
        return
    for p in paths:
        click.echo(str(p))
    if original:
        from conceptlib.cli.common import err_console
        from conceptlib.cli.render import printable

        for p in original:
            err_console().print(
                f"{printable(p)}: the original file, byte for byte as it was imported"
            )


@click.command("verify")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@json_option
def verify_cmd(quiet: bool, as_json: bool) -> None:
    """Check every blob against its hash and the database's integrity.

    Exits 0 when everything is intact, 7 when a problem was found. Orphan blobs
    (left by an interrupted import) are listed; `conceptlib gc` removes them, except
    those younger than its grace period (60 s), which `conceptlib gc --grace 0`
    removes when nothing else is running.

    \b
    Example:
      conceptlib verify
    """
    from rich.markup import escape

    from conceptlib.registry.upkeep import young_files

    with open_library() as lib, progress("verifying", quiet=quiet or as_json) as bar:
        report = lib.verify(on_progress=bar.update)
        paths = {lib.store.path(s): s for s in report.orphan_blobs}
        young = [paths[p] for p in young_files(list(paths), GC_GRACE_S)]
    if as_json:
        print_json({**report.to_dict(), "orphan_blobs_in_grace": young})
    else:
        out = console()
        for p in report.problems:
            out.print(f"[red]problem[/red] {escape(p)}")
        out.print(
            f"checked {report.checked_blobs} blobs; database {report.integrity}; "
            f"{len(report.problems)} problems; {len(report.orphan_blobs)} orphan blobs"
            + (" (run `conceptlib gc`)" if report.orphan_blobs else ""),
            markup=False,
        )
        if young:
            click.echo(f"note: {_grace_note(len(young), GC_GRACE_S)}", err=True)
    if not report.ok:
        raise SystemExit(7)


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=GC_GRACE_S,
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
        print_json(
            {"dry_run": dry_run, "removed": removed, "spared": removed.spared, "grace_s": grace}
        )
    else:
        verb = "would remove" if dry_run else "removed"
        click.echo(f"{verb} {len(removed)} orphan files")
        if removed.spared:
            click.echo(f"note: {_grace_note(len(removed.spared), grace)}", err=True)


def _grace_note(n: int, grace: float) -> str:
    """Why ``gc`` keeps young orphans, and how to remove them anyway."""
    files = "file is" if n == 1 else "files are"
    return (
        f"{n} orphan {files} younger than the {grace:g} s grace period and kept (an import "
        "running elsewhere may still be writing them); `conceptlib gc --grace 0` removes "
        "them when nothing else is running"
    )

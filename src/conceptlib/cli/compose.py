"""``compose`` and ``blend``, plus the body of ``export --for-prompt``."""

from __future__ import annotations

from typing import Any

import click

from conceptlib.cli.common import console, echo, echo_err, json_option, open_library, print_json
from conceptlib.errors import UsageError

UI_FORMATS = ["a1111", "comfyui", "invokeai", "diffusers"]


@click.command("compose")
@click.argument("prompt", required=False)
@click.option(
    "--from",
    "from_image",
    default=None,
    metavar="IMAGE.png",
    help="Rerun an image's prompt, negative prompt, seed, steps and guidance (A1111, "
    "ComfyUI, InvokeAI or conceptlib metadata) with the local entries; options given "
    "override the image's. Example: --from found.png --base ./sd15.",
)
@click.option("--negative", "negative", default=None, help="Negative prompt (same syntax).")
@click.option(
    "--base",
    default=None,
    help="Base model: tiny-sd1, tiny-sdxl, a diffusers folder, a .safetensors checkpoint "
    "or a repo id in the Hugging Face cache. Needed unless --format is given; with --format "
    "it is read for its family only, to warn about embeddings that UI will not apply on it "
    "(e.g. --format a1111 --base ./sdxl).",
)
@click.option("--steps", default=20, show_default=True, type=int, help="Denoising steps.")
@click.option(
    "--guidance", default=7.5, show_default=True, type=float, help="Classifier-free guidance."
)
@click.option("--seed", default=None, type=int, help="Seed of the first image (then +1 each).")
@click.option("-n", "n", default=1, show_default=True, type=int, help="Number of images.")
@click.option(
    "-o",
    "--output",
    "out",
    default="compose.png",
    show_default=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="PNG to write; with -n N: NAME-1.png ... NAME-N.png.",
)
@click.option("--width", default=None, type=int, help="Image width (default: the model's).")
@click.option("--height", default=None, type=int, help="Image height (default: the model's).")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cpu, cuda, cuda:N, mps or auto (CONCEPTLIB_DEVICE if set, else cuda when "
    "available); one this machine cannot use is refused at once with the available ones. "
    "Example: --device cuda:1.",
)
@click.option("--strict", is_flag=True, help="Refuse SD 1.x embeddings on SDXL (else: warn).")
@click.option("--dry-run", is_flag=True, help="Check and show the expanded prompts; load no model.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(UI_FORMATS),
    default=None,
    help="Print the prompt in this UI's syntax, with the names that UI triggers, instead of "
    "generating (e.g. --format invokeai writes <cat-toy@v1> as <cat-toy-v1>, the name "
    "export --for-prompt gives its file).",
)
@click.option(
    "--syntax",
    type=click.Choice(["auto", "conceptlib", "a1111", "comfyui", "invokeai"]),
    default="auto",
    show_default=True,
    help="How the prompts are written: conceptlib (<name>, <name:0.8>), a1111 (bare names, "
    "(word:1.2), [word], BREAK), comfyui (embedding:name, (embedding:name:1.2)), invokeai "
    "(<name>, word++, (words)1.3); auto guesses each prompt's and --dry-run says which. "
    'Example: --syntax a1111 --negative "ng_deepnegative_v1_75t, EasyNegative".',
)
@click.option(
    "--clip-skip",
    type=click.IntRange(1, 12),
    default=None,
    help="Text-encoder layer to read, A1111's Clip skip (1: the model's default). Default: "
    "the CLIP skip the embeddings were trained at (train --clip-skip), else 1; written to "
    "the infotext. Example: --clip-skip 2.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@json_option
def compose_cmd(
    prompt: str | None,
    from_image: str | None,
    negative: str | None,
    base: str | None,
    steps: int,
    guidance: float,
    seed: int | None,
    n: int,
    out: str,
    width: int | None,
    height: int | None,
    device: str,
    strict: bool,
    dry_run: bool,
    fmt: str | None,
    syntax: str,
    clip_skip: int | None,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Generate images from a prompt that names embeddings as <name> or <name:weight>.

    Names resolve through the catalog (name, then trigger token). The weight scales
    the vectors. Write \\< for a literal '<'. Prompts copied from A1111, ComfyUI or
    InvokeAI are read in their own syntax (--syntax), where a weight is attention as
    in that UI. Prompts of any length are encoded in 75-position chunks as A1111 does
    (a break at a late comma; BREAK starts a chunk). Each PNG carries A1111 infotext that
    A1111 and Civitai read as meant: the prompts in A1111's syntax ((name:0.8), bare
    names), seed, Model hash (single-file checkpoints only: the file's SHA-256, hashed
    once and cached), TI hashes (the embeddings A1111 applies) and our fingerprint;
    the prompt in conceptlib's syntax is in the image's "conceptlib" chunk.

    \b
    Examples:
      conceptlib compose "a photo of <cat-toy> in <ukiyoe-print:0.8> style" \\
          --negative "<easynegative>" --base ./sd15 --seed 42 -o out.png
      conceptlib compose "a <cat-toy>" --base tiny-sd1 --steps 4 -n 2
      conceptlib compose "a <cat-toy>" --base ./sdxl --dry-run
      conceptlib compose "a <cat-toy:1.2>" --format comfyui
      conceptlib compose "(masterpiece:1.2), a cat-toy" --syntax a1111 --base tiny-sd1 \\
          --negative "ng_deepnegative_v1_75t, EasyNegative"
      conceptlib compose --from found.png --base ./sd15 -o again.png
    """
    with open_library() as lib:
        if from_image is not None:
            from conceptlib.compose.inspect import rerun_settings

            meta = rerun_settings(lib, from_image)
            ctx = click.get_current_context()

            def given(param: str) -> bool:
                return ctx.get_parameter_source(param) == click.core.ParameterSource.COMMANDLINE

            prompt = prompt if prompt is not None else meta.prompt
            negative = negative if given("negative") else meta.negative
            if not given("syntax") and meta.syntax:
                syntax = meta.syntax
            if not given("seed") and meta.seed is not None:
                seed = meta.seed
            if not given("steps") and meta.steps is not None:
                steps = meta.steps
            if not given("guidance") and meta.guidance is not None:
                guidance = meta.guidance
            if not given("clip_skip") and meta.clip_skip is not None:
                clip_skip = meta.clip_skip
        if prompt is None:
            raise UsageError("give a PROMPT, or --from IMAGE.png to rerun an image's")
        if fmt is not None:
            from conceptlib.compose.compose import format_prompts

            rendered = format_prompts(lib, prompt, negative, fmt, base=base, syntax=syntax)
            if as_json:
                print_json(rendered.to_dict())
                return
            echo(rendered.prompt)
            if rendered.negative is not None:
                echo(f"Negative prompt: {rendered.negative}")
            for w in rendered.warnings:
                echo_err(f"warning: {w}")
            for note in rendered.notes:
                echo_err(f"note: {note}")
            return

        from conceptlib.compose.compose import compose

        hashing = _LazyProgress("hashing the checkpoint (Model hash, once per file)")
        try:
            result = compose(
                prompt,
                negative,
                base=base,
                library=lib,
                steps=steps,
                guidance=guidance,
                seed=seed,
                n=n,
                out=out,
                strict=strict,
                dry_run=dry_run,
                width=width,
                height=height,
                device=device,
                overwrite=overwrite,
                hash_progress=hashing,
                syntax=syntax,
                clip_skip=clip_skip,
            )
        finally:
            hashing.close()
    if as_json:
        print_json(result.to_dict())
        return
    for w in result.warnings:
        echo_err(f"warning: {w}")
    _render_compose(result)


class _LazyProgress:
    """A progress bar on stderr that appears only when the first update comes (a
    checkpoint that is hashed, not found in the cache)."""

    def __init__(self, description: str) -> None:
        self.description = description
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            from conceptlib.cli.common import progress

            self._bar = progress(self.description).__enter__()
        self._bar.update(done, total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def _render_compose(result: Any) -> None:
    from rich.table import Table

    out = console()
    if result.dry_run:
        out.print("[bold]dry run[/bold]: no model loaded, nothing written")
    out.print(f"[bold]prompt[/bold]    {_esc(result.expanded_prompt)}", soft_wrap=True)
    if result.expanded_negative is not None:
        out.print(f"[bold]negative[/bold]  {_esc(result.expanded_negative)}", soft_wrap=True)
    if result.base:
        fam = result.base_family or "family unknown until loaded"
        out.print(f"[bold]base[/bold]      {_esc(result.base)} ({fam})", soft_wrap=True)
    for which, syntax in result.syntax.items():
        out.print(f"[bold]syntax[/bold]    {which}: {_esc(syntax)}", soft_wrap=True)
    for b in result.budgets:
        out.print(f"[bold]tokens[/bold]    {b.which}: {_esc(b.summary())}", soft_wrap=True)
    if result.embeddings:
        table = Table(box=None, pad_edge=False)
        table.add_column("name", overflow="fold")
        for col in ("weight", "vectors", "family", "fits"):
            table.add_column(col, no_wrap=True)
        table.add_column("hash", no_wrap=True, min_width=12)
        table.add_column("in", no_wrap=True)
        for e in result.embeddings:
            table.add_row(
                _esc(e.name),
                f"{e.weight:g}",
                str(e.num_vectors),
                e.family,
                e.compatibility,
                e.a1111_hash,
                "+".join("neg" if w.startswith("negative") else "pos" for w in e.used_in),
            )
        out.print(table)
    for path, seed in zip(result.images, result.seeds, strict=False):
        out.print(f"wrote {_esc(str(path))} (seed {seed})", soft_wrap=True)


def _esc(text: str) -> str:
    from rich.markup import escape

    return escape(text)


@click.command("blend")
@click.argument("new_name")
@click.argument("parents", nargs=-1, required=True)
@click.option(
    "--resample",
    type=click.Choice(["linear", "nearest", "none"]),
    default="linear",
    show_default=True,
    help="How parents with fewer vectors are stretched to the row count; none refuses.",
)
@click.option("--rows", type=int, default=None, help="Vectors of the result (default: the most).")
@click.option("--token", default=None, help="Trigger token of the result (default: its name).")
@click.option("--tag", "tags", multiple=True, help="Tag for the result (repeatable).")
@click.option("--description", default=None, help="Description of the result.")
@json_option
def blend_cmd(
    new_name: str,
    parents: tuple[str, ...],
    resample: str,
    rows: int | None,
    token: str | None,
    tags: tuple[str, ...],
    description: str | None,
    as_json: bool,
) -> None:
    """Blend embeddings of one family into a new one: NEW NAME:WEIGHT NAME:WEIGHT ...

    The result is sum(weight * vectors), registered with its parents recorded
    (hash, name, weight) so it can be traced and reproduced. Parents with
    different vector counts are resampled to the largest (said in the output).
    Without weights, parents get equal shares.

    \b
    Examples:
      conceptlib blend catdog cat-toy:0.5 dog-toy:0.5
      conceptlib blend soft-ink demo-watercolor:0.7 demo-woodblock:0.3 --resample nearest
      conceptlib blend mix a b c
    """
    from conceptlib.compose.blend import blend, parse_parents

    pairs = parse_parents(parents)
    with open_library() as lib:
        result = blend(
            lib,
            new_name,
            pairs,
            resample=resample,
            rows=rows,
            token=token,
            tags=tags,
            description=description,
        )
    if as_json:
        print_json(result.to_dict())
        return
    info = result.info
    click.echo(
        f"registered {info.name} ({info.family}, {info.num_vectors} vectors, "
        f"{info.tensor_sha256[:12]}) from "
        + ", ".join(f"{name} x{w:g}" for name, w in result.weights.items())
    )
    for note in result.notes:
        echo(f"  {note}")


def run_export_for_prompt(
    prompt: str,
    fmt: str,
    out: str,
    *,
    negative: str | None = None,
    overwrite: bool = False,
    pt: bool = False,
    as_json: bool = False,
    base: str | None = None,
) -> None:
    """The body of ``conceptlib export --for-prompt PROMPT --format UI -o DIR``.

    ``fmt`` is one of :data:`UI_FORMATS`; ``pt`` writes A1111 ``.pt`` files; ``base``
    is the model the UI will use (its family only), for the warnings about embeddings
    that UI will not apply on it (``warning:`` lines on stderr, or ``warnings`` in the
    JSON).
    """
    from conceptlib.cli.manage import render_exported
    from conceptlib.compose.export import export_for_prompt

    warnings: list[str] = []
    with open_library() as lib:
        paths = export_for_prompt(
            lib,
            prompt,
            fmt,
            out,
            negative=negative,
            overwrite=overwrite,
            pt=pt,
            base=base,
            warnings=warnings,
        )
    facts: dict[str, Any] = {"prompt": prompt, "format": fmt}
    if as_json:
        facts["warnings"] = warnings
    render_exported(paths, facts, as_json=as_json)
    if not as_json:
        for w in warnings:
            echo_err(f"warning: {w}")

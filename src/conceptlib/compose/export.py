"""Write exactly the embedding files a prompt needs, laid out for one UI.

=========  ================================================================
format     files written into ``out_dir``
=========  ================================================================
a1111      ``<name>.safetensors`` (``emb_params``; SDXL ``{clip_l, clip_g}``),
           or ``<name>.pt`` with ``pt=True`` (SD 1.x/2.x only; SDXL is refused); the file
           name is the word A1111 matches in the prompt
comfyui    ``<name>.safetensors`` (``models/embeddings``; prompt ``embedding:<name>``)
invokeai   ``<name>.safetensors``, one file per embedding
diffusers  ``<name>/learned_embeds.safetensors`` (+ ``_2`` for SDXL), keyed by the
           trigger token in its tokenizer form (lower case), one folder per embedding
=========  ================================================================

The prompt rendered for the same UI (:mod:`conceptlib.compose.formats`) names these
files, so ``export --for-prompt P --format F`` and ``compose P --format F`` agree.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from conceptlib.compose.formats import UI_FORMATS
from conceptlib.compose.prompt import parse_prompt
from conceptlib.compose.resolve import resolve_prompt
from conceptlib.errors import UsageError

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo


def needed_embeddings(
    library: Library, prompt: str, negative: str | None = None
) -> list[EmbeddingInfo]:
    """The distinct entries ``prompt`` (and ``negative``) name, in order of appearance."""
    out: dict[str, EmbeddingInfo] = {}
    for text, which in ((prompt, "prompt"), (negative, "negative prompt")):
        if text is None:
            continue
        resolved = resolve_prompt(library, parse_prompt(text, which=which))
        for r in resolved.refs:
            out.setdefault(r.info.tensor_sha256, r.info)
    return list(out.values())


def writer_format(ui: str, family: str, pt: bool = False, *, what: str = "this embedding") -> str:
    """The write format (:data:`~conceptlib.registry.formats.WRITE_FORMATS`) that UI
    ``ui``'s layout uses for an entry of ``family``.

    ``pt`` asks for A1111 ``.pt`` files: only with ``a1111``, and refused for SDXL by
    the one rule of :func:`~conceptlib.registry.formats.write.check_writable`, with
    the message ``export NAME --format a1111-pt`` gives too.

    Raises:
        UsageError: ``pt`` with another UI, or an SDXL entry as ``.pt``.
    """
    from conceptlib.registry.formats.write import check_writable

    if pt and ui != "a1111":
        raise UsageError(f"--pt writes A1111 .pt files: it goes with --format a1111, not {ui}")
    if ui == "diffusers":
        fmt = "diffusers"
    elif pt:
        fmt = "a1111-pt"
    else:
        fmt = "sdxl" if family == "sdxl" else "safetensors"
    check_writable(fmt, family, what=what)
    return fmt


def files_for(
    library: Library, info: EmbeddingInfo, fmt: str, *, pt: bool = False
) -> dict[str, bytes]:
    """The files (relative path -> bytes) one entry needs in UI ``fmt``'s layout.

    Raises:
        UsageError: ``pt`` for an SDXL entry or with a UI other than ``a1111``.
    """
    from conceptlib.registry.formats import write_embedding

    writer = writer_format(fmt, info.family, pt, what=repr(info.name))
    written = write_embedding(library.load(info), writer, name=info.name, token=info.token)
    if fmt == "diffusers":
        return {f"{info.name}/{Path(rel).name}": data for rel, data in written.items()}
    if len(written) != 1:
        raise UsageError(f"the {writer} writer produced {len(written)} files for {info.name}")
    rel, data = next(iter(written.items()))
    return {f"{info.name}{Path(rel).suffix or '.safetensors'}": data}


def export_for_prompt(
    library: Library,
    prompt: str,
    fmt: str,
    out_dir: str | os.PathLike[str],
    *,
    negative: str | None = None,
    overwrite: bool = False,
    pt: bool = False,
) -> list[Path]:
    """Write the files that ``prompt`` (and ``negative``) need, in UI ``fmt``'s layout.

    Args:
        library: the catalog the names resolve in.
        prompt: a prompt in conceptlib syntax (``<name>``, ``<name:0.8>``).
        fmt: ``a1111``, ``comfyui``, ``invokeai`` or ``diffusers``.
        out_dir: the UI's embeddings folder (created if missing).
        negative: the negative prompt, whose embeddings are written too.
        overwrite: replace files that exist (otherwise refuse before writing any).
        pt: for ``a1111``, write ``.pt`` files instead of ``.safetensors`` (SD 1.x/2.x
            only: an SDXL entry is refused, never silently written as ``.safetensors``).

    Returns:
        The paths written, one per file.

    Raises:
        UsageError: an unknown format; a prompt (and negative) naming no embedding;
            ``pt`` with another UI or for an SDXL entry (the rule and message of
            ``export NAME --format a1111-pt``).
        AlreadyExists: a file exists with other contents, without ``overwrite``
            (a file holding the same bytes is left as it is). Nothing is written.
        UnknownEmbedding, PromptSyntaxError, ConflictingWeights: from the prompt.
    """
    from conceptlib.registry.formats.write import place_files

    if fmt not in UI_FORMATS:
        raise UsageError(f"unknown format {fmt!r}; expected one of {', '.join(UI_FORMATS)}")
    if pt and fmt != "a1111":
        writer_format(fmt, "sd1", pt)  # refuses --pt with another UI, before any lookup
    infos = needed_embeddings(library, prompt, negative)
    if not infos:
        raise UsageError(
            "the prompt"
            + (" and the negative prompt name" if negative else " names")
            + " no embeddings, so there is nothing to export",
            hint='name catalog embeddings as <name> or <name:weight>, e.g. "a photo of <cat-toy>"',
        )
    out = Path(out_dir).expanduser()
    targets: dict[Path, bytes] = {}
    for info in infos:
        for rel, data in files_for(library, info, fmt, pt=pt).items():
            targets[out / rel] = data
    return place_files(targets, overwrite=overwrite)

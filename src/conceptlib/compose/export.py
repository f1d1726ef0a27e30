"""Write exactly the embedding files a prompt needs, laid out for one UI.

=========  ================================================================
format     files written into ``out_dir``
=========  ================================================================
a1111      ``<name>.safetensors`` (``emb_params``; SDXL ``{clip_l, clip_g}``),
           or ``<name>.pt`` with ``pt=True`` (SD 1.x/2.x only; SDXL is refused); the file
           name is the word A1111 matches in the prompt
comfyui    ``<name>.safetensors`` (``models/embeddings``; prompt ``embedding:<name>``)
invokeai   ``<name>.safetensors``, one file per embedding; ``<name>`` is the name
           InvokeAI's trigger pattern matches (``cat-toy@v1`` -> ``cat-toy-v1``)
diffusers  ``<name>/learned_embeds.safetensors`` (+ ``_2`` for SDXL), keyed by the
           trigger token in its tokenizer form (lower case), one folder per embedding
=========  ================================================================

The prompt rendered for the same UI (:mod:`conceptlib.compose.formats`) names these
files, so ``export --for-prompt P --format F`` and ``compose P --format F`` agree.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from conceptlib.compose.formats import UI_FORMATS, ui_file_stem
from conceptlib.compose.prompt import parse_prompt
from conceptlib.compose.resolve import resolve_prompt
from conceptlib.errors import UsageError
from conceptlib.registry.originals import EntryFiles, ExportedFiles

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


def files_for(library: Library, info: EmbeddingInfo, fmt: str, *, pt: bool = False) -> EntryFiles:
    """The files (relative path -> bytes) one entry needs in UI ``fmt``'s layout: the one
    place that says which bytes a UI gets for an entry (``export --for-prompt`` writes
    them, ``compose`` puts their hash in the infotext).

    The bytes are those of :func:`conceptlib.registry.originals.entry_files`: the file
    the entry was imported from when it has this layout (an ``emb_params``
    ``.safetensors`` from Civitai exported for A1111 is that very file, so A1111's hash
    of it is the one Civitai shows), else written fresh, deterministically.

    Returns:
        Relative path -> bytes (a dict), with ``.original``: the paths holding the
        original file's bytes.

    Raises:
        UsageError: ``pt`` for an SDXL entry or with a UI other than ``a1111``.
    """
    from conceptlib.registry.originals import entry_files

    writer = writer_format(fmt, info.family, pt, what=repr(info.name))
    # The name the UI triggers (compose/formats.py), so prompt and file name agree.
    stem = ui_file_stem(fmt, info, library)
    written = entry_files(library, info, writer)
    if fmt == "diffusers":
        renamed = {rel: f"{stem}/{Path(rel).name}" for rel in written}
    else:
        if len(written) != 1:
            raise UsageError(f"the {writer} writer produced {len(written)} files for {info.name}")
        rel = next(iter(written))
        renamed = {rel: f"{stem}{Path(rel).suffix or '.safetensors'}"}
    return EntryFiles(
        {renamed[rel]: data for rel, data in written.items()},
        [renamed[rel] for rel in written.original],
    )


def ui_file_sha256(library: Library, info: EmbeddingInfo, fmt: str = "a1111") -> str:
    """SHA-256 (64 hex) of the file UI ``fmt`` loads for ``info``: the one file
    :func:`files_for` gives for that UI (``a1111``, ``comfyui``, ``invokeai``; and
    ``diffusers`` for SD 1.x/2.x). A1111's ``TI hashes`` value is its first 12 hex
    characters (A1111 hashes the whole embedding file: ``modules/hashes.py``).

    Raises:
        UsageError: a layout of several files (diffusers' SDXL pair).
        BlobMissing, BlobCorrupt: the entry's vectors cannot be read.
    """
    files = files_for(library, info, fmt)
    if len(files) != 1:
        raise UsageError(f"{fmt} loads {len(files)} files for {info.name!r}, not one")
    return hashlib.sha256(next(iter(files.values()))).hexdigest()


def export_for_prompt(
    library: Library,
    prompt: str,
    fmt: str,
    out_dir: str | os.PathLike[str],
    *,
    negative: str | None = None,
    overwrite: bool = False,
    pt: bool = False,
    base: str | os.PathLike[str] | None = None,
    warnings: list[str] | None = None,
) -> ExportedFiles:
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
        base: the base model the UI will use (as for ``compose --base``), read only for
            its family (config files; nothing is loaded); without it the family is
            implied by the prompt's SDXL embeddings, if any.
        warnings: when given, a line is appended for each embedding the UI will not
            apply (fully) on that family (an SD 1.x embedding on SDXL: A1111 and
            InvokeAI skip it); the files are written all the same.

    Returns:
        The paths written, one per file (a list), with ``.original``: those holding an
        entry's original file (see :func:`files_for`). Files are named as the UI
        triggers the entry (:func:`conceptlib.compose.formats.ui_file_stem`: for
        InvokeAI, ``cat-toy@v1`` is written as ``cat-toy-v1.safetensors``).

    Raises:
        UsageError: an unknown format; a prompt (and negative) naming no embedding;
            ``pt`` with another UI or for an SDXL entry (the rule and message of
            ``export NAME --format a1111-pt``).
        AlreadyExists: a file exists with other contents, without ``overwrite``
            (a file holding the same bytes is left as it is). Nothing is written.
        UnknownEmbedding, PromptSyntaxError, ConflictingWeights: from the prompt.
        UntriggerableName: a name the UI cannot trigger even mapped, or two entries the
            UI would name alike (exit 2); nothing is written.
    """
    from conceptlib.compose.formats import family_warnings, infer_family, ui_triggers
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
    ui_triggers(fmt, infos, library)  # every name triggerable and distinct, before writing
    if warnings is not None:
        from conceptlib.compose.compose import peek_family

        family = peek_family(base) if base is not None else None
        target = family if family is not None else infer_family(infos)
        warnings.extend(family_warnings(fmt, infos, target, inferred=family is None))
    out = Path(out_dir).expanduser()
    targets: dict[Path, bytes] = {}
    kept: list[Path] = []
    for info in infos:
        files = files_for(library, info, fmt, pt=pt)
        for rel, data in files.items():
            targets[out / rel] = data
        kept += [out / rel for rel in files.original]
    return ExportedFiles(place_files(targets, overwrite=overwrite), kept)

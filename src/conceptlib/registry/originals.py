"""An entry's original file: kept when it is imported, written back when it is exported.

Other tools identify an embedding by the bytes of its file: A1111 writes the first 12
hex characters of the file's SHA-256 into an image's ``TI hashes``, Civitai shows
AutoV2 (its first 10, upper case). Freshly written bytes of the same vectors hash
differently, so the file a user imported is kept in the blob store (content-addressed:
its SHA-256 is the entry's ``file_sha256``) and an export in the layout that file
already has writes those bytes back: the hash Civitai shows for the download is the
hash of the exported file.

The rule for "the layout that file already has" lives here alone, for import
(:func:`keepable`: which files are worth keeping) and export (:func:`entry_files`):

==============  ==============  ==================  ====================================
write format    original read   container           and also
==============  ==============  ==================  ====================================
``a1111-pt``    ``a1111-pt``    torch (zip/legacy)  A1111's ``.pt`` check accepts it
                                                    (:func:`~.formats.write.a1111_refused_records`)
``safetensors`` ``emb_params``  safetensors         the same tensor names and shapes
``sdxl``        ``sdxl``        safetensors         ``clip_l`` / ``clip_g`` as named
``diffusers``   ``diffusers``   safetensors         the same key (the token in tokenizer form)
==============  ==============  ==================  ====================================

and in every case the original reads to the entry's vectors (``tensor_sha256``).
InvokeAI's ``learned_embeds.bin`` and diffusers' SDXL pair are always written fresh.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from conceptlib.errors import ConceptlibError

if TYPE_CHECKING:
    from conceptlib.registry.formats.read import ParsedFile
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

__all__ = [
    "MAX_ORIGINAL_BYTES",
    "EntryFiles",
    "ExportedFiles",
    "entry_files",
    "keepable",
    "kept_original",
    "original_bytes",
]

#: Originals larger than this are not kept (embedding files are kilobytes: 75 SDXL
#: vectors in float32 are 600 KiB); a LoRA bundle holding an embedding is not one.
MAX_ORIGINAL_BYTES = 4 * 1024 * 1024

#: (format read, container kind) -> the write format whose layout it is.
_LAYOUTS = {
    ("a1111-pt", "torch"): "a1111-pt",
    ("emb_params", "safetensors"): "safetensors",
    ("sdxl", "safetensors"): "sdxl",
    ("diffusers", "safetensors"): "diffusers",
}
#: Reader notes that mean the file's names are not the ones the writer uses.
_ODD = ("slot_names_swapped", "bare_tensor")


class EntryFiles(dict):
    """Relative path -> bytes of one entry's files, plus ``original``: the paths whose
    bytes are the original file's (the file the entry was imported from)."""

    def __init__(self, files: Mapping[str, bytes], original: Iterable[str] = ()) -> None:
        super().__init__(files)
        self.original = list(original)


class ExportedFiles(list):
    """The paths an export wrote (a list of :class:`~pathlib.Path`, as before), plus
    ``original``: those that hold the original file's bytes."""

    def __init__(self, paths: Iterable[Path], original: Iterable[Path] = ()) -> None:
        super().__init__(paths)
        self.original = list(original)


def _kind(container: str) -> str:
    return "torch" if container.startswith("torch") else container


def _layout(parsed: ParsedFile) -> str | None:
    """The write format whose layout ``parsed`` has, or None."""
    if any(parsed.metadata.get(k) for k in _ODD):
        return None
    return _LAYOUTS.get((parsed.format, _kind(parsed.container)))


def keepable(parsed: ParsedFile, size: int) -> bool:
    """Whether an imported file (``parsed``, ``size`` bytes) is kept as the entry's
    original: at most :data:`MAX_ORIGINAL_BYTES`, in a layout some export writes."""
    return size <= MAX_ORIGINAL_BYTES and _layout(parsed) is not None


def original_bytes(lib: Library, info: EmbeddingInfo) -> bytes | None:
    """The entry's original file as kept at import (verified against ``file_sha256``),
    or None: not kept (an older catalog, a trained or blended entry, a file in a layout
    no export writes), missing or damaged (``verify`` reports a damaged one)."""
    sha = info.file_sha256
    if not sha or sha == info.tensor_sha256:  # the canonical blob, not an outside file
        return None
    if not lib.shares_blobs and not lib.store.has(sha):
        return None
    try:
        return lib._blob(sha)
    except ConceptlibError:
        return None


def _shapes(data: bytes) -> dict[str, list[int]] | None:
    from conceptlib.registry.formats.safetensors_io import parse_header

    try:
        entries, _meta, _start = parse_header(data)
    except ConceptlibError:
        return None
    return {k: list(v["shape"]) for k, v in entries.items()}


def _stands_in(original: bytes, fresh: bytes, fmt: str, info: EmbeddingInfo) -> bool:
    """Whether ``original`` may be written instead of ``fresh`` (format ``fmt``)."""
    from conceptlib.registry.formats import read_embedding_bytes
    from conceptlib.registry.formats.write import a1111_refused_records

    try:
        orig = read_embedding_bytes(original)
        new = read_embedding_bytes(fresh)
    except ConceptlibError:
        return False
    if orig.embedding.tensor_sha256 != info.tensor_sha256 or _layout(orig) != fmt:
        return False
    if (orig.format, _kind(orig.container), orig.token) != (
        new.format,
        _kind(new.container),
        new.token,
    ):
        return False
    if fmt == "a1111-pt":
        return not a1111_refused_records(original)
    shapes = _shapes(original)
    return shapes is not None and shapes == _shapes(fresh)


def entry_files(
    lib: Library, info: EmbeddingInfo, fmt: str, *, t5_key: str = "t5xxl"
) -> EntryFiles:
    """The files of ``info`` in write format ``fmt`` (names as
    :func:`~conceptlib.registry.formats.write.write_embedding` gives them): the
    original file's bytes when it has that layout (see the module's table), else
    freshly written, deterministic bytes; a fresh ``.safetensors`` file carries
    ModelSpec metadata and our provenance (:mod:`~conceptlib.registry.modelspec`).

    Raises:
        UsageError: an unknown format, or one the entry's family cannot use.
        BlobMissing, BlobCorrupt: the entry's vectors cannot be read.
    """
    from conceptlib.registry.formats import write_embedding

    fresh = _with_modelspec(
        info,
        fmt,
        write_embedding(lib.load(info), fmt, name=info.name, token=info.token, t5_key=t5_key),
    )
    if len(fresh) != 1 or fmt not in _LAYOUTS.values():
        return EntryFiles(fresh)
    original = original_bytes(lib, info)
    rel, data = next(iter(fresh.items()))
    if original is None or (original != data and not _stands_in(original, data, fmt, info)):
        return EntryFiles(fresh)
    return EntryFiles({rel: original}, original=[rel])


def _with_modelspec(info: EmbeddingInfo, fmt: str, files: dict[str, bytes]) -> dict[str, bytes]:
    """``files`` with ModelSpec metadata and our provenance in each ``.safetensors``
    header (:mod:`~conceptlib.registry.modelspec`); other files as they are."""
    from conceptlib.registry.modelspec import export_metadata, with_metadata

    return {
        rel: with_metadata(data, export_metadata(info, fmt, data))
        if rel.endswith(".safetensors")
        else data
        for rel, data in files.items()
    }


def kept_original(data: bytes | None, sha: str, tensor_sha256: str) -> bytes:
    """``data`` (a file handed to ``Library.add_embedding``, e.g. by a Hub pull) when it
    is kept as the entry's original: its SHA-256 is the entry's ``file_sha256``
    (``sha``), it reads on its own to the entry's vectors (``tensor_sha256``; half of
    a diffusers SDXL pair does not) and :func:`keepable` says yes; else ``b""``."""
    from conceptlib.registry.formats import read_embedding_bytes, sha256_hex

    if not data or len(data) > MAX_ORIGINAL_BYTES or sha256_hex(data) != sha:
        return b""
    try:
        parsed = read_embedding_bytes(data)
    except ConceptlibError:
        return b""
    if parsed.embedding.tensor_sha256 != tensor_sha256:
        return b""
    return data if keepable(parsed, len(data)) else b""

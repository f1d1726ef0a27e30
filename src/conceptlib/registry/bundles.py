"""Embeddings bundled in LoRA files: importing each ``bundle_emb.<name>`` as an entry
of its own, and writing an entry into a LoRA file (``export NAME --bundle-into``).

The layouts and the reading of the file are :mod:`~conceptlib.registry.formats.bundle`'s;
this module turns what it read into pending entries (the same name rules as any
imported file: :func:`~conceptlib.schemas.names.derive_name`, the ordinary-word
rule) and never touches the catalog itself.

A bundled entry records:

* ``source`` ``bundle``, ``source_ref`` the LoRA file's path;
* ``extra["bundle"]``: ``lora_sha256`` (the parent file, by its SHA-256),
  ``lora_file`` (its file name), ``key`` (the name as written in the file, cut to 200
  characters), ``parts``, ``lora_family`` and ``lora_tensors``;
* ``file_sha256`` the canonical vectors' hash (the entry has no file of its own). The
  LoRA file itself is never stored: only the embedding's vectors are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.errors import ConceptlibError, UsageError
from conceptlib.registry.formats.bundle import (
    LoraFile,
    bundle_name,
    read_lora_bundles,
    write_bundled_lora,
)
from conceptlib.registry.formats.embedding import sha256_hex
from conceptlib.registry.pending import Derivation, PendingEntry, kept_text
from conceptlib.schemas.enums import Kind, Source
from conceptlib.schemas.names import derive_name, validate_name
from conceptlib.schemas.vocabulary import is_common_word

if TYPE_CHECKING:
    from conceptlib.registry.library import Library

__all__ = ["bundle_into", "prepare_bundles"]


def _name_of(raw: str, given: str | None) -> tuple[str, list[Derivation]]:
    """The entry name of bundle ``raw`` (``given`` when ``--name`` was passed)."""
    if given:
        return validate_name(given), []
    name = derive_name(raw)
    derived: list[Derivation] = []
    if name != raw:
        derived.append(
            Derivation(
                "name",
                name,
                kept_text(raw),
                "invalid-characters",
                f"the bundled name has characters a name cannot hold: write {name} in prompts",
            )
        )
    if is_common_word(name):
        old, name = name, f"{name}-ti"
        derived.append(
            Derivation(
                "name",
                name,
                old,
                "ordinary-word",
                f"{old!r} is an ordinary word: as a trigger it would change what it means in "
                f"every prompt; write {name} in prompts",
            )
        )
    return name, derived


def prepare_bundles(
    path: Path,
    name: str | None,
    kind: str | None,
    tags: list[str],
    base_model: str | None,
    *,
    token: str | None = None,
) -> tuple[LoraFile, list[PendingEntry | ConceptlibError]]:
    """Read the embeddings bundled in the LoRA file ``path`` into pending entries.

    Each bundle becomes one entry (or, when its vectors cannot be used, the error that
    says why: one bad bundle is that bundle's rejection). ``name`` and ``token`` apply
    only to a file that bundles exactly one embedding.

    Raises:
        UsageError: ``name`` or ``token`` with a file bundling several embeddings.
        NotFound, FileTooLarge, CorruptFile, UnsupportedContent: the file as a whole
            (:func:`~conceptlib.registry.formats.bundle.read_lora_bundles`).
    """
    from conceptlib.registry.fields import checked_token

    lora = read_lora_bundles(path)
    if (name or token) and len(lora.bundles) != 1:
        option = "--name" if name else "--token"
        raise UsageError(
            f"{option} applies to one embedding; {path} bundles {len(lora.bundles)}",
            path=str(path),
        )
    out: list[PendingEntry | ConceptlibError] = []
    for item in lora.bundles:
        if item.embedding is None:
            out.append(item.error or UsageError(f"bundle {item.name!r} cannot be read"))
            continue
        try:
            final_name, derived = _name_of(item.name, name)
        except ConceptlibError as exc:
            out.append(exc)
            continue
        emb = item.embedding
        canonical = emb.canonical_bytes()
        tensor_sha = sha256_hex(canonical)
        extra: dict[str, Any] = {
            "format": "pti",
            "container": "safetensors",
            "bundle": {
                "lora_sha256": lora.sha256,
                "lora_file": kept_text(path.name),
                "key": kept_text(item.name),
                "parts": [kept_text(p) for p in item.parts],
                "lora_family": lora.family.value if lora.family else None,
                "lora_tensors": lora.lora_tensors,
            },
        }
        if item.facts:
            extra["file_metadata"] = dict(item.facts)
        if item.name != final_name:
            extra["name_in_file"] = kept_text(item.name)
        notes = []
        if lora.family is not None and lora.family != emb.family:
            notes.append(f"bundled {emb.family.value} embedding in a {lora.family.value} LoRA file")
        out.append(
            PendingEntry(
                embedding=emb,
                name=final_name,
                token=checked_token(token) if token else final_name,
                kind=kind or Kind.OTHER.value,
                source=Source.BUNDLE.value,
                source_ref=str(path.resolve()),
                file_sha256=tensor_sha,
                tensor_sha256=tensor_sha,
                base_model=base_model,
                tags=sorted(set(tags)),
                extra=extra,
                path=str(path),
                canonical=canonical,
                derived=derived,
                notes=notes,
            )
        )
    return lora, out


def bundle_into(
    lib: Library,
    name: str,
    lora: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    t5_key: str = "t5xxl",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the LoRA file ``lora`` to ``out`` with the entry ``name`` bundled in
    (``bundle_emb.<name>.*`` in the LoRA family's layout); the LoRA's tensors and
    metadata are kept. A dot in the name becomes ``-`` (A1111 splits keys on dots).

    Returns:
        ``{"name", "bundle", "keys", "family", "lora", "lora_sha256", "output",
        "sha256", "size"}``.

    Raises:
        NotFound: no such entry or LoRA file.
        FamilyMismatch: the entry's family is not the LoRA's.
        AlreadyExists: ``out`` exists (without ``overwrite``) or the name is already
            bundled there.
        UsageError: the LoRA's family cannot be told, ``out`` is the LoRA itself, or an
            unknown ``t5_key``.
    """
    info = lib.get(name)
    emb = lib.load(info)
    bundled = bundle_name(info.name)
    facts = write_bundled_lora(lora, out, bundled, emb, t5_key=t5_key, overwrite=overwrite)
    return {
        "name": info.name,
        "bundle": bundled,
        "keys": facts["keys"],
        "family": info.family,
        "lora": str(lora),
        "lora_sha256": facts["lora_sha256"],
        "output": str(out),
        "sha256": facts["sha256"],
        "size": facts["size"],
    }

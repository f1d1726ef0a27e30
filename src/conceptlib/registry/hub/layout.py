"""Which files of a remote repo make up the concept: our layout, sd-concepts-library's,
or a single embedding file (:func:`detect_layout`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
from conceptlib.errors import AmbiguousEmbedding, HubNoEmbedding, HubNotFound
from conceptlib.registry.hub.repos import (
    CARD_FILENAME,
    EMBEDDING_FILENAME,
    TOKEN_FILENAME,
    TYPE_FILENAME,
)
from conceptlib.registry.hub.session import RemoteFile

EMBEDDING_SUFFIXES = (".safetensors", ".bin", ".pt")
#: Weights that sit in model repos but are never textual-inversion embeddings.
NOT_EMBEDDINGS = re.compile(
    r"^(pytorch_model|model|diffusion_pytorch_model|adapter_model|optimizer|scheduler|"
    r"training_args|rng_state|scaler|random_states_\d+|pytorch_lora_weights)"
    r"(\.[^/]*)?\.(bin|pt|safetensors)$",
    re.IGNORECASE,
)


@dataclass
class Layout:
    """Which files of a repo make up the concept."""

    kind: str  # "conceptlib" | "sd-concepts-library" | "single-file"
    embedding: str | None = None
    companion: str | None = None
    manifest: str | None = None
    token_file: str | None = None
    type_file: str | None = None
    card: str | None = None


def _dir_of(path: str) -> str:
    parent = str(PurePosixPath(path).parent)
    return "" if parent == "." else parent + "/"


def _is_candidate(path: str, rf: RemoteFile, files: dict[str, RemoteFile]) -> bool:
    low = path.lower()
    base = low.rsplit("/", 1)[-1]
    if not low.endswith(EMBEDDING_SUFFIXES) or NOT_EMBEDDINGS.match(base):
        return False
    if any(part.startswith(".") or part.startswith("checkpoint") for part in low.split("/")[:-1]):
        return False
    if rf.size > MAX_EMBEDDING_FILE_BYTES:
        return False
    folder = _dir_of(path)
    has_main = any(f"{folder}learned_embeds{s}" in files for s in EMBEDDING_SUFFIXES)
    # Not the SDXL companion, nor an intermediate checkpoint of the same training run.
    return not (has_main and base.startswith(("learned_embeds_2.", "learned_embeds-steps-")))


def _prefer(paths: list[str]) -> list[str]:
    """One file per (folder, stem): .safetensors over .bin over .pt."""
    rank = {".safetensors": 0, ".bin": 1, ".pt": 2}
    best: dict[str, str] = {}
    for p in paths:
        stem, ext = os.path.splitext(p)
        key = stem.lower()
        if key not in best or rank[ext.lower()] < rank[os.path.splitext(best[key])[1].lower()]:
            best[key] = p
    return sorted(best.values())


def detect_layout(
    repo_id: str, files: dict[str, RemoteFile], filename: str | None = None
) -> Layout:
    """Recognize our layout, sd-concepts-library's, or a single-file repo."""
    if filename is not None:
        if filename not in files:
            cands = _prefer([p for p, rf in files.items() if _is_candidate(p, rf, files)])
            raise HubNotFound(
                f"{repo_id} has no file {filename!r}"
                + (f"; embedding files: {', '.join(cands)}" if cands else ""),
                repo_id=repo_id,
            )
        chosen = [filename]
    else:
        if "concept.json" in files:
            return Layout("conceptlib", manifest="concept.json", card=_maybe(CARD_FILENAME, files))
        if "library.json" in files:
            raise HubNoEmbedding(
                f"{repo_id} is a conceptlib library, not a single concept",
                hint=f"pull it with: conceptlib pull --library {repo_id}",
                repo_id=repo_id,
            )
        chosen = _prefer([p for p, rf in files.items() if _is_candidate(p, rf, files)])
        if not chosen:
            listing = ", ".join(sorted(files)[:12]) or "no files"
            raise HubNoEmbedding(
                f"{repo_id} holds no recognizable embedding file ({listing}); expected "
                "learned_embeds.bin/.safetensors or one .pt/.safetensors embedding",
                repo_id=repo_id,
            )
        if len(chosen) > 1:
            raise AmbiguousEmbedding(
                f"{repo_id} holds {len(chosen)} embedding files: {', '.join(chosen[:10])}; "
                "pick one with --file",
                candidates=chosen,
                hint=f"for example: conceptlib pull {repo_id} --file {chosen[0]}",
                repo_id=repo_id,
            )
    path = chosen[0]
    folder = _dir_of(path)
    if f"{folder}concept.json" in files and path == f"{folder}{EMBEDDING_FILENAME}":
        return Layout(
            "conceptlib", manifest=f"{folder}concept.json", card=_maybe(CARD_FILENAME, files)
        )
    base = path.rsplit("/", 1)[-1].lower()
    companion = None
    if base.startswith("learned_embeds."):
        companion = _maybe(f"{folder}learned_embeds_2.safetensors", files)
    token_file = _maybe(f"{folder}{TOKEN_FILENAME}", files)
    kind = (
        "sd-concepts-library"
        if (token_file or base.startswith("learned_embeds"))
        else "single-file"
    )
    return Layout(
        kind,
        embedding=path,
        companion=companion,
        token_file=token_file,
        type_file=_maybe(f"{folder}{TYPE_FILENAME}", files),
        card=_maybe(CARD_FILENAME, files),
    )


def _maybe(path: str, files: dict[str, RemoteFile]) -> str | None:
    return path if path in files else None

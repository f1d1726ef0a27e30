"""The portable records a Hub repo carries: ``concept.json`` and a library's ``library.json``.

``concept.json`` (:class:`ConceptManifest`) holds everything the catalog knows about
one embedding, so that pulling it elsewhere loses nothing: name, trigger token,
kind, family, hashes, provenance, base model, training runs, previews, tags. It
never holds a timestamp that changes on every push, so pushing an unchanged
concept yields the same bytes (and no commit).

``library.json`` (:class:`LibraryIndex`) lists the concepts of a library repo and
the folder each lives in.

The published JSON Schema files (``concept.schema.json``, ``library-index.schema.json``
beside this module) are generated from these models::

    python -m conceptlib.schemas.manifest          # rewrite them
    python -m conceptlib.schemas.manifest --check  # exit 1 if they are stale
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from conceptlib.schemas.enums import Family, Kind, Source

MANIFEST_FILENAME = "concept.json"
LIBRARY_INDEX_FILENAME = "library.json"
CONCEPT_SCHEMA_FILENAME = "concept.schema.json"
LIBRARY_SCHEMA_FILENAME = "library-index.schema.json"
SCHEMA_BASE_URL = "https://conceptlib.dev/schemas"

_SHA256 = r"^[0-9a-f]{64}$"


def _check_repo_path(value: str) -> str:
    """A relative path inside a repo: no absolute or drive paths, no '..', no backslashes."""
    if (
        not value
        or value.startswith("/")
        or "\\" in value
        or any(p in ("", ".", "..") for p in value.split("/"))
        or re.match(r"^[A-Za-z]:", value)
        or any(ord(c) < 32 for c in value)
    ):
        raise ValueError(f"{value!r} is not a safe relative path inside a repo")
    return value


RepoPath = Annotated[str, AfterValidator(_check_repo_path)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", use_enum_values=True)


class EmbeddingFileEntry(_Model):
    """The embedding file of a concept repo (relative to the concept's folder)."""

    path: RepoPath = Field(description="File name, e.g. learned_embeds.safetensors.")
    format: Literal["diffusers", "sdxl"] = Field(
        description="diffusers: {token: [n,d]}; sdxl: {clip_l: [n,768], clip_g: [n,1280]}."
    )
    sha256: str = Field(pattern=_SHA256, description="SHA-256 of the file's bytes.")
    size: int = Field(ge=1)


class PreviewEntry(_Model):
    filename: str = Field(description="The preview's file name in the catalog.")
    role: str = Field(default="preview", description="preview, sample, loss_curve or grid.")
    path: RepoPath = Field(description="Path in the repo, relative to the concept's folder.")
    sha256: str = Field(pattern=_SHA256)
    size: int = Field(ge=0)


class TrainingRunEntry(_Model):
    config: dict[str, Any] = Field(default_factory=dict)
    steps: int = Field(ge=0)
    final_loss: float | None = None
    wall_time_s: float | None = None
    device: str | None = None
    base_model: str | None = None
    base_model_fingerprint: str | None = None
    training_images_hash: str | None = None
    training_image_count: int | None = None
    initializer: str | None = None
    status: str = "completed"
    created_at: str | None = None
    clip_i: float | None = None
    clip_t: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)


class ConceptManifest(_Model):
    """``concept.json``: one embedding as the catalog knows it."""

    model_config = ConfigDict(
        extra="forbid",
        use_enum_values=True,
        json_schema_extra={
            "$id": f"{SCHEMA_BASE_URL}/{CONCEPT_SCHEMA_FILENAME}",
            "title": "conceptlib concept manifest (concept.json)",
        },
    )

    schema_version: Literal[1] = 1
    name: str = Field(min_length=1, max_length=100, description="The handle users type.")
    token: str = Field(min_length=1, description="The trigger token, e.g. <cat-toy>.")
    kind: Kind
    family: Family
    num_vectors: int = Field(ge=1, le=75)
    dims: list[int] = Field(description="Width of each slot, sorted by slot name.")
    tensor_sha256: str = Field(
        pattern=_SHA256, description="SHA-256 of the canonical safetensors serialization."
    )
    file_sha256: str = Field(pattern=_SHA256, description="SHA-256 of the original file.")
    embedding: EmbeddingFileEntry
    source: Source
    source_ref: str | None = None
    base_model: str | None = None
    base_model_fingerprint: str | None = None
    initializer: str | None = None
    training_images_hash: str | None = None
    training_image_count: int | None = None
    description: str | None = None
    license: str | None = None
    tags: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    version: int = Field(default=1, ge=1)
    parents: list[dict[str, Any]] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)
    created_at: str | None = None
    previews: list[PreviewEntry] = Field(default_factory=list)
    training_runs: list[TrainingRunEntry] = Field(default_factory=list)

    def to_json_bytes(self) -> bytes:
        """Deterministic bytes (sorted keys, 2-space indent, trailing newline)."""
        return _dump(self)


class LibraryEntry(_Model):
    name: str = Field(min_length=1, max_length=100)
    path: RepoPath = Field(description="The concept's folder in the repo, e.g. concepts/cat-toy.")
    token: str
    kind: Kind
    family: Family
    tensor_sha256: str = Field(pattern=_SHA256)
    manifest_sha256: str = Field(pattern=_SHA256, description="SHA-256 of its concept.json.")
    tags: list[str] = Field(default_factory=list)


class LibraryIndex(_Model):
    """``library.json``: the concepts a library repo holds."""

    model_config = ConfigDict(
        extra="forbid",
        use_enum_values=True,
        json_schema_extra={
            "$id": f"{SCHEMA_BASE_URL}/{LIBRARY_SCHEMA_FILENAME}",
            "title": "conceptlib library index (library.json)",
        },
    )

    schema_version: Literal[1] = 1
    name: str = Field(description="The library's repo id when it was pushed.")
    selection: dict[str, Any] = Field(
        default_factory=dict, description="How the concepts were chosen (tags, search)."
    )
    concepts: list[LibraryEntry] = Field(default_factory=list)

    def to_json_bytes(self) -> bytes:
        return _dump(self)


def _dump(model: BaseModel) -> bytes:
    data = model.model_dump(mode="json")
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


# --------------------------------------------------------------------------- JSON Schema files


def schema_documents() -> dict[str, dict[str, Any]]:
    """The JSON Schema documents, keyed by file name."""
    out = {}
    for filename, model in (
        (CONCEPT_SCHEMA_FILENAME, ConceptManifest),
        (LIBRARY_SCHEMA_FILENAME, LibraryIndex),
    ):
        doc = model.model_json_schema(mode="validation")
        out[filename] = {"$schema": "https://json-schema.org/draft/2020-12/schema", **doc}
    return out


def schema_text(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_dir() -> Path:
    return Path(__file__).resolve().parent


def write_schema_files(directory: str | Path | None = None) -> list[Path]:
    """Write the JSON Schema files (default: beside this module); return their paths."""
    folder = Path(directory) if directory is not None else schema_dir()
    written = []
    for filename, doc in schema_documents().items():
        path = folder / filename
        path.write_text(schema_text(doc), encoding="utf-8")
        written.append(path)
    return written


def stale_schema_files(directory: str | Path | None = None) -> list[str]:
    """File names whose committed content differs from what the models generate."""
    folder = Path(directory) if directory is not None else schema_dir()
    stale = []
    for filename, doc in schema_documents().items():
        path = folder / filename
        if not path.is_file() or path.read_text(encoding="utf-8") != schema_text(doc):
            stale.append(filename)
    return stale


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        stale = stale_schema_files()
        for name in stale:
            sys.stderr.write(f"stale: {name} (run python -m conceptlib.schemas.manifest)\n")
        return 1 if stale else 0
    for path in write_schema_files():
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

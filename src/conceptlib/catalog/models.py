"""The catalog's tables, as sqlmodel models (used for writes).

The schema itself is created and changed only by :mod:`conceptlib.catalog.migrations`;
these models must match it (a test compares them). Times are ISO-8601 UTC strings
so that SQLite and PostgreSQL store and sort them alike.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Column, ForeignKey, Index, Integer
from sqlmodel import Field, SQLModel


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EmbeddingRow(SQLModel, table=True):
    __tablename__ = "embedding"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    name_key: str = Field(unique=True, index=True)
    token: str
    token_key: str = Field(unique=True, index=True)
    kind: str = Field(index=True)
    family: str = Field(index=True)
    num_vectors: int
    dims: str
    tensor_sha256: str = Field(unique=True, index=True)
    file_sha256: str = Field(index=True)
    source: str = Field(index=True)
    source_ref: str | None = None
    base_model: str | None = Field(default=None, index=True)
    base_model_fingerprint: str | None = Field(default=None, index=True)
    initializer: str | None = None
    training_images_hash: str | None = None
    training_image_count: int | None = None
    description: str | None = None
    license: str | None = None
    flags: str = "[]"
    extra: str = "{}"
    parents: str = "[]"
    version: int = 1
    created_at: str = Field(default_factory=utcnow)
    updated_at: str = Field(default_factory=utcnow)


class TagRow(SQLModel, table=True):
    __tablename__ = "tag"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)


class EmbeddingTagRow(SQLModel, table=True):
    __tablename__ = "embedding_tag"
    # Migration 6: the entries of one tag are one range of this index (covering).
    __table_args__ = (Index("ix_embedding_tag_tag_id_embedding_id", "tag_id", "embedding_id"),)

    embedding_id: int = Field(
        sa_column=Column(Integer, ForeignKey("embedding.id", ondelete="CASCADE"), primary_key=True)
    )
    tag_id: int = Field(
        sa_column=Column(Integer, ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True)
    )


class PreviewRow(SQLModel, table=True):
    __tablename__ = "preview"

    id: int | None = Field(default=None, primary_key=True)
    embedding_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("embedding.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    filename: str
    role: str = "preview"
    sha256: str = Field(index=True)
    size: int
    created_at: str = Field(default_factory=utcnow)


class SourceRow(SQLModel, table=True):
    """Every place an embedding came from (the first one is also on the embedding row)."""

    __tablename__ = "embedding_source"

    id: int | None = Field(default=None, primary_key=True)
    embedding_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("embedding.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    source: str
    ref: str | None = None
    file_sha256: str | None = None
    created_at: str = Field(default_factory=utcnow)


class TrainingRunRow(SQLModel, table=True):
    __tablename__ = "training_run"

    id: int | None = Field(default=None, primary_key=True)
    embedding_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("embedding.id", ondelete="SET NULL"), nullable=True, index=True
        ),
    )
    config: str = "{}"
    steps: int = 0
    final_loss: float | None = None
    wall_time_s: float | None = None
    device: str | None = None
    base_model: str | None = None
    base_model_fingerprint: str | None = None
    training_images_hash: str | None = None
    training_image_count: int | None = None
    initializer: str | None = None
    status: str = "completed"
    created_at: str = Field(default_factory=utcnow)
    clip_i: float | None = None
    clip_t: float | None = None
    metrics: str = "{}"


class BlobRow(SQLModel, table=True):
    """A blob kept in the database: used when the catalog is shared (PostgreSQL)."""

    __tablename__ = "blob"

    sha256: str = Field(primary_key=True)
    size: int
    data: bytes
    created_at: str = Field(default_factory=utcnow)


class HubSyncRow(SQLModel, table=True):
    __tablename__ = "hub_sync"

    id: int | None = Field(default=None, primary_key=True)
    embedding_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("embedding.id", ondelete="CASCADE"), nullable=True, index=True
        ),
    )
    repo_id: str = Field(index=True)
    revision: str = "main"
    commit_sha: str | None = None
    direction: str = "push"
    filename: str | None = None
    synced_at: str = Field(default_factory=utcnow)

"""Numbered schema migrations, recorded in the ``schema_migrations`` table.

Each migration is a function over a connection, run in its own transaction
together with its record. Table definitions are frozen here (SQLAlchemy Core),
never taken from the live models: a migration must do tomorrow exactly what it
did the day it was written. ``create_all`` is not used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Connection

from conceptlib.catalog import dialect


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[Connection], None]


def _m0001_core(conn: Connection) -> None:
    md = MetaData()
    Table(
        "embedding",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(200), nullable=False),
        Column("name_key", String(200), nullable=False),
        Column("token", String(200), nullable=False),
        Column("token_key", String(200), nullable=False),
        Column("kind", String(20), nullable=False),
        Column("family", String(10), nullable=False),
        Column("num_vectors", Integer, nullable=False),
        Column("dims", String(40), nullable=False),
        Column("tensor_sha256", String(64), nullable=False),
        Column("file_sha256", String(64), nullable=False),
        Column("source", String(20), nullable=False),
        Column("source_ref", Text),
        Column("base_model", Text),
        Column("initializer", Text),
        Column("training_images_hash", String(64)),
        Column("training_image_count", Integer),
        Column("description", Text),
        Column("license", String(200)),
        Column("flags", Text, nullable=False, server_default="[]"),
        Column("extra", Text, nullable=False, server_default="{}"),
        Column("created_at", String(40), nullable=False),
        Column("updated_at", String(40), nullable=False),
        UniqueConstraint("name_key", name="uq_embedding_name_key"),
        UniqueConstraint("token_key", name="uq_embedding_token_key"),
        UniqueConstraint("tensor_sha256", name="uq_embedding_tensor_sha256"),
        Index("ix_embedding_kind", "kind"),
        Index("ix_embedding_family", "family"),
        Index("ix_embedding_source", "source"),
        Index("ix_embedding_file_sha256", "file_sha256"),
        Index("ix_embedding_base_model", "base_model"),
    )
    Table(
        "tag",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(100), nullable=False),
        UniqueConstraint("name", name="uq_tag_name"),
    )
    Table(
        "embedding_tag",
        md,
        Column(
            "embedding_id",
            Integer,
            ForeignKey("embedding.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        Column("tag_id", Integer, ForeignKey("tag.id", ondelete="CASCADE"), primary_key=True),
        Index("ix_embedding_tag_tag_id", "tag_id"),
    )
    Table(
        "preview",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(
            "embedding_id",
            Integer,
            ForeignKey("embedding.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("filename", String(255), nullable=False),
        Column("role", String(20), nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("size", Integer, nullable=False),
        Column("created_at", String(40), nullable=False),
        Index("ix_preview_embedding_id", "embedding_id"),
        Index("ix_preview_sha256", "sha256"),
    )
    Table(
        "embedding_source",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(
            "embedding_id",
            Integer,
            ForeignKey("embedding.id", ondelete="CASCADE"),
            nullable=False,
        ),
        Column("source", String(20), nullable=False),
        Column("ref", Text),
        Column("file_sha256", String(64)),
        Column("created_at", String(40), nullable=False),
        Index("ix_embedding_source_embedding_id", "embedding_id"),
    )
    md.create_all(conn)


def _m0002_fulltext(conn: Connection) -> None:
    dialect.create_fts(conn, conn.dialect.name)


def _m0003_runs_sync_provenance(conn: Connection) -> None:
    # Training runs and Hub sync state get their own tables; embeddings gain the
    # base-model fingerprint, blend parents and a version number.
    conn.exec_driver_sql("ALTER TABLE embedding ADD COLUMN base_model_fingerprint VARCHAR(200)")
    conn.exec_driver_sql("ALTER TABLE embedding ADD COLUMN parents TEXT NOT NULL DEFAULT '[]'")
    conn.exec_driver_sql("ALTER TABLE embedding ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
    conn.exec_driver_sql(
        "CREATE INDEX ix_embedding_base_model_fingerprint ON embedding (base_model_fingerprint)"
    )
    md = MetaData()
    Table("embedding", md, Column("id", Integer, primary_key=True))
    Table(
        "training_run",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(
            "embedding_id",
            Integer,
            ForeignKey("embedding.id", ondelete="SET NULL"),
            nullable=True,
        ),
        Column("config", Text, nullable=False),
        Column("steps", Integer, nullable=False),
        Column("final_loss", Float),
        Column("wall_time_s", Float),
        Column("device", String(100)),
        Column("base_model", Text),
        Column("base_model_fingerprint", String(200)),
        Column("training_images_hash", String(64)),
        Column("training_image_count", Integer),
        Column("initializer", Text),
        Column("status", String(20), nullable=False),
        Column("created_at", String(40), nullable=False),
        Index("ix_training_run_embedding_id", "embedding_id"),
    )
    Table(
        "hub_sync",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(
            "embedding_id",
            Integer,
            ForeignKey("embedding.id", ondelete="CASCADE"),
            nullable=True,
        ),
        Column("repo_id", String(200), nullable=False),
        Column("revision", String(200), nullable=False),
        Column("commit_sha", String(64)),
        Column("direction", String(10), nullable=False),
        Column("filename", Text),
        Column("synced_at", String(40), nullable=False),
        Index("ix_hub_sync_embedding_id", "embedding_id"),
        Index("ix_hub_sync_repo_id", "repo_id"),
    )
    md.tables["training_run"].create(conn)
    md.tables["hub_sync"].create(conn)


def _m0004_shared_blobs(conn: Connection) -> None:
    # On a catalog shared by several machines (PostgreSQL), blobs live in the database
    # too, so every machine can read every embedding; the local store is a cache.
    md = MetaData()
    Table(
        "blob",
        md,
        Column("sha256", String(64), primary_key=True),
        Column("size", Integer, nullable=False),
        Column("data", LargeBinary, nullable=False),
        Column("created_at", String(40), nullable=False),
    )
    md.create_all(conn)


def _m0005_run_quality(conn: Connection) -> None:
    # CLIP-I / CLIP-T of a trained entry's run (``search --sort clip-i``) and the
    # run's measurements per step; the indexes make the sort an index lookup per entry.
    conn.exec_driver_sql("ALTER TABLE training_run ADD COLUMN clip_i FLOAT")
    conn.exec_driver_sql("ALTER TABLE training_run ADD COLUMN clip_t FLOAT")
    conn.exec_driver_sql("ALTER TABLE training_run ADD COLUMN metrics TEXT NOT NULL DEFAULT '{}'")
    conn.exec_driver_sql(
        "CREATE INDEX ix_training_run_embedding_clip_i ON training_run (embedding_id, clip_i)"
    )
    conn.exec_driver_sql(
        "CREATE INDEX ix_training_run_embedding_clip_t ON training_run (embedding_id, clip_t)"
    )


def _m0006_tag_covering_index(conn: Connection) -> None:
    # A tag filter reads the entries of one tag: with (tag_id, embedding_id) that is a
    # range of one index (covering), not an index lookup plus a table row per entry.
    # The old (tag_id) index is a prefix of the new one, so it goes.
    conn.exec_driver_sql("DROP INDEX ix_embedding_tag_tag_id")
    conn.exec_driver_sql(
        "CREATE INDEX ix_embedding_tag_tag_id_embedding_id ON embedding_tag (tag_id, embedding_id)"
    )


MIGRATIONS: list[Migration] = [
    Migration(1, "core tables: embeddings, tags, previews, sources", _m0001_core),
    Migration(2, "full-text search over name, token, description and tags", _m0002_fulltext),
    Migration(
        3,
        "training runs, hub sync state, fingerprints, parents, versions",
        _m0003_runs_sync_provenance,
    ),
    Migration(
        4, "blobs in the database for catalogs shared by several machines", _m0004_shared_blobs
    ),
    Migration(5, "CLIP-I / CLIP-T and per-step metrics of training runs", _m0005_run_quality),
    Migration(6, "covering index of embeddings by tag", _m0006_tag_covering_index),
]

LATEST = MIGRATIONS[-1].version

_RECORD_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name VARCHAR(200) NOT NULL,
    applied_at VARCHAR(40) NOT NULL
)
"""


def ensure_record_table(conn: Connection) -> None:
    conn.exec_driver_sql(_RECORD_TABLE)


def applied_versions(conn: Connection) -> list[int]:
    ensure_record_table(conn)
    return [r[0] for r in conn.exec_driver_sql("SELECT version FROM schema_migrations").fetchall()]

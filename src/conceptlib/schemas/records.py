"""Plain records returned by the library API (cheap to import: dataclasses, no pydantic).

``EmbeddingInfo.to_dict()`` is the object ``--json`` prints for one embedding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class PreviewInfo:
    filename: str
    role: str  # "preview", "sample", "loss_curve", "grid"
    sha256: str
    size: int
    path: str | None = None


@dataclass
class TrainingRunInfo:
    id: int | None
    config: dict[str, Any]
    steps: int
    final_loss: float | None
    wall_time_s: float | None
    device: str | None
    base_model: str | None
    base_model_fingerprint: str | None
    training_images_hash: str | None
    training_image_count: int | None
    initializer: str | None
    status: str = "completed"
    created_at: str | None = None
    #: CLIP-I / CLIP-T of the registered step (``--clip-model``; higher is better).
    clip_i: float | None = None
    clip_t: float | None = None
    #: Measured during the run: ``{"quality": [{"step", "clip_i", "clip_t"}, ...]}``.
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class SyncInfo:
    repo_id: str
    revision: str
    commit_sha: str | None
    direction: str  # "push" | "pull"
    filename: str | None = None
    synced_at: str | None = None


@dataclass
class EmbeddingInfo:
    """Everything the catalog knows about one embedding."""

    name: str
    token: str
    kind: str
    family: str
    num_vectors: int
    dims: list[int]
    tensor_sha256: str
    file_sha256: str
    source: str
    source_ref: str | None = None
    tags: list[str] = field(default_factory=list)
    base_model: str | None = None
    base_model_fingerprint: str | None = None
    initializer: str | None = None
    training_images_hash: str | None = None
    training_image_count: int | None = None
    description: str | None = None
    license: str | None = None
    flags: list[str] = field(default_factory=list)
    version: int = 1
    parents: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    updated_at: str | None = None
    id: int | None = None
    previews: list[PreviewInfo] = field(default_factory=list)
    training_runs: list[TrainingRunInfo] = field(default_factory=list)
    syncs: list[SyncInfo] = field(default_factory=list)

    @property
    def a1111_hash(self) -> str:
        """A1111's short hash: the first 12 hex characters of the file's SHA-256."""
        return self.file_sha256[:12]

    @property
    def autov2(self) -> str:
        """Civitai's AutoV2: the first 10 hex characters of the file's SHA-256, upper case."""
        return self.file_sha256[:10].upper()

    @property
    def compatibility(self) -> dict[str, str]:
        from conceptlib.schemas.enums import Family, compatibility

        return {f.value: compatibility(self.family, f) for f in Family}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["a1111_hash"] = self.a1111_hash
        out["autov2"] = self.autov2
        out["compatibility"] = self.compatibility
        return out


@dataclass
class Preview:
    """A preview to store with an embedding (input to ``Library.add_embedding``)."""

    filename: str
    data: bytes
    role: str = "preview"


@dataclass
class TrainingRunRecord:
    """A training run to record with an embedding (input to ``Library.add_embedding``)."""

    config: dict[str, Any]
    steps: int
    final_loss: float | None = None
    wall_time_s: float | None = None
    device: str | None = None
    base_model: str | None = None
    base_model_fingerprint: str | None = None
    training_images_hash: str | None = None
    training_image_count: int | None = None
    initializer: str | None = None
    status: str = "completed"
    clip_i: float | None = None
    clip_t: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class ImportOutcome:
    """One file's result in an import summary.

    Attributes:
        status: ``imported``, ``present`` (``existing`` names the entry) or ``rejected``
            (``reason`` and ``error``, the error's code, say why).
        token: the trigger token registered.
        derived: how the name or token was made when it is not simply the file's stem
            (or the token inside the file): ``{"field", "value", "source", "reason",
            "why"}``, ``reason`` one of ``invalid-characters``, ``token-in-file``,
            ``folder-name``, ``name-in-image``, ``ordinary-word``, ``name-taken``,
            ``invalid-token``, ``token-option``, ``token-identifier``.
        flags: warnings about the vectors (``all_zero``, ``norm_outlier``).
        changes: for a ``present`` file, what the options given (``--kind``, ``--tag``,
            ``--base-model``, ``--token``) changed on the existing entry:
            field -> ``[old, new]`` (``tags``: the tags added).
        notes: anything else worth saying (an option that was not applied).
    """

    path: str
    status: str  # "imported" | "present" | "rejected"
    name: str | None = None
    existing: str | None = None
    reason: str | None = None
    error: str | None = None
    tensor_sha256: str | None = None
    token: str | None = None
    derived: list[dict[str, str]] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    changes: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    exception: Exception | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "exception"}
        return d


@dataclass
class ImportReport:
    """Every file's outcome, plus the files a folder walk skipped (``skipped``:
    ``{"path", "reason"}``; sidecars, previews, hidden files, plain images)."""

    outcomes: list[ImportOutcome] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def imported(self) -> list[ImportOutcome]:
        return [o for o in self.outcomes if o.status == "imported"]

    @property
    def present(self) -> list[ImportOutcome]:
        return [o for o in self.outcomes if o.status == "present"]

    @property
    def rejected(self) -> list[ImportOutcome]:
        return [o for o in self.outcomes if o.status == "rejected"]

    @property
    def updated(self) -> list[ImportOutcome]:
        """Present files whose options changed the existing entry."""
        return [o for o in self.outcomes if o.status == "present" and o.changes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "imported": len(self.imported),
            "present": len(self.present),
            "updated": len(self.updated),
            "rejected": len(self.rejected),
            "skipped": len(self.skipped),
            "files": [o.to_dict() for o in self.outcomes],
            "skipped_files": list(self.skipped),
        }


@dataclass
class VerifyReport:
    checked_blobs: int = 0
    problems: list[str] = field(default_factory=list)
    orphan_blobs: list[str] = field(default_factory=list)
    integrity: str = "ok"

    @property
    def ok(self) -> bool:
        return not self.problems and self.integrity == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

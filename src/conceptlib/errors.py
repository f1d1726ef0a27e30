"""The one error hierarchy of conceptlib.

Every error a user can cause has its own class carrying the facts needed to act on
it. The CLI turns any :class:`ConceptlibError` into one line on stderr (plus an
optional hint) and the class's ``exit_code``; tracebacks only appear with ``--debug``.

Messages never contain secrets: tokens are redacted before they reach an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ConceptlibError(Exception):
    """Base class of every error conceptlib raises on purpose.

    Attributes:
        message: one line saying what was found and what was expected.
        hint: an optional second line saying what to do about it.
        exit_code: the CLI's exit status for this error.
    """

    exit_code: int = 1
    code: str = "error"

    def __init__(self, message: str, *, hint: str | None = None, **facts: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.facts = facts

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        for key, value in self.facts.items():
            if isinstance(value, (str, int, float, bool, type(None), list, tuple)):
                out[key] = list(value) if isinstance(value, tuple) else value
            else:
                out[key] = str(value)
        return out


# --------------------------------------------------------------------------- files


class EmbeddingFileError(ConceptlibError):
    """A file that is not a usable embedding. ``path`` names it when known."""

    exit_code = 3
    code = "bad_file"

    def __init__(self, message: str, *, path: str | None = None, **facts: Any) -> None:
        if path and path not in message:
            message = f"{path}: {message}"
        super().__init__(message, path=path, **facts)
        self.path = path


class EmptyFile(EmbeddingFileError):
    code = "empty_file"


class LfsPointerFile(EmbeddingFileError):
    code = "lfs_pointer"


class UnknownFormat(EmbeddingFileError):
    code = "unknown_format"


class CorruptFile(EmbeddingFileError):
    """A container whose structure is broken (truncated, bad header, bad offsets)."""

    code = "corrupt_file"


class FileTooLarge(EmbeddingFileError):
    code = "file_too_large"


class UnsafeFile(EmbeddingFileError):
    """A pickle that would import or call something outside the allow-list.

    It was never executed.
    """

    exit_code = 4
    code = "unsafe_file"


class UnsupportedContent(EmbeddingFileError):
    """A well-formed file that holds something other than an embedding."""

    code = "unsupported_content"


class BadTensor(EmbeddingFileError):
    """A tensor with a shape, dtype or values an embedding cannot have."""

    code = "bad_tensor"


class AmbiguousEmbedding(EmbeddingFileError):
    """A file (or repo) with several candidate embeddings; the user must pick one."""

    code = "ambiguous"

    def __init__(self, message: str, *, candidates: Sequence[str] = (), **facts: Any) -> None:
        super().__init__(message, candidates=list(candidates), **facts)
        self.candidates = list(candidates)


class FamilyMismatch(ConceptlibError):
    """Slots or widths that fit no base-model family, or the wrong one."""

    exit_code = 3
    code = "family_mismatch"


# --------------------------------------------------------------------------- names


class InvalidName(ConceptlibError):
    exit_code = 2
    code = "invalid_name"


class NameCollision(ConceptlibError):
    """The name (or the token it expands to) is taken by another entry."""

    exit_code = 5
    code = "name_collision"

    def __init__(self, message: str, *, existing: str | None = None, **facts: Any) -> None:
        super().__init__(message, existing=existing, **facts)
        self.existing = existing


class AlreadyExists(ConceptlibError):
    """The same tensors are already in the catalog."""

    exit_code = 5
    code = "already_exists"

    def __init__(
        self, message: str, *, existing: str, tensor_sha256: str | None = None, **facts: Any
    ) -> None:
        super().__init__(message, existing=existing, tensor_sha256=tensor_sha256, **facts)
        self.existing = existing
        self.tensor_sha256 = tensor_sha256


class NotFound(ConceptlibError):
    exit_code = 6
    code = "not_found"

    def __init__(self, message: str, *, suggestions: Sequence[str] = (), **facts: Any) -> None:
        hint = facts.pop("hint", None)
        if suggestions and hint is None:
            hint = "did you mean: " + ", ".join(suggestions) + "?"
        super().__init__(message, hint=hint, suggestions=list(suggestions), **facts)
        self.suggestions = list(suggestions)


# --------------------------------------------------------------------------- catalog / store


class CatalogError(ConceptlibError):
    exit_code = 7
    code = "catalog_error"


class CatalogLocked(CatalogError):
    code = "catalog_locked"


class CatalogCorrupt(CatalogError):
    code = "catalog_corrupt"


class CatalogTooNew(CatalogError):
    code = "catalog_too_new"


class CatalogConflict(CatalogError):
    """The database aborted a transaction as a conflict with a concurrent writer
    (PostgreSQL's deadlock_detected 40P01 or serialization_failure 40001). Nothing of
    it was applied; running it again is safe, and :meth:`Catalog.retrying` does."""

    code = "catalog_conflict"


class StoreError(ConceptlibError):
    """Writing or reading a blob failed (disk full, I/O error, altered blob)."""

    exit_code = 7
    code = "store_error"


class BlobCorrupt(StoreError):
    code = "blob_corrupt"


class DiskFull(StoreError):
    code = "disk_full"


# --------------------------------------------------------------------------- usage


class UsageError(ConceptlibError):
    exit_code = 2
    code = "usage"


class AmbiguousHandle(UsageError):
    """A hash prefix (``show 3fa9c1d2``) that starts the hashes of several entries."""

    code = "ambiguous_handle"

    def __init__(self, message: str, *, candidates: Sequence[str] = (), **facts: Any) -> None:
        super().__init__(message, candidates=list(candidates), **facts)
        self.candidates = list(candidates)


class ImageError(ConceptlibError):
    """A training or preview image that cannot be used."""

    exit_code = 3
    code = "bad_image"

    def __init__(self, message: str, *, path: str | None = None, **facts: Any) -> None:
        if path and path not in message:
            message = f"{path}: {message}"
        super().__init__(message, path=path, **facts)
        self.path = path


class ImageNotFound(NotFound, ImageError):
    """A training-image path (file or folder) that does not exist: exit 6, not found."""

    code = "image_not_found"


class DeviceUnavailable(UsageError):
    """A ``--device`` / ``device=`` this machine cannot use: a typo, CUDA on a CPU-only
    PyTorch, ``cuda:N`` past the device count, or ``mps`` without Apple silicon."""

    code = "device_unavailable"


# --------------------------------------------------------------------------- training


class TrainingError(ConceptlibError):
    exit_code = 8
    code = "training_error"


class NaNLoss(TrainingError):
    code = "nan_loss"


class BaseModelError(ConceptlibError):
    """A base model that cannot be found or loaded."""

    exit_code = 3
    code = "base_model"


class UnsupportedFamily(BaseModelError):
    """A base model of a family conceptlib has no pipeline for yet (SD3, FLUX): its
    embeddings can be imported, searched, exported and bundled, not composed or trained."""

    code = "unsupported_family"


# --------------------------------------------------------------------------- compose


class ComposeError(ConceptlibError):
    exit_code = 3
    code = "compose_error"


class PromptSyntaxError(ComposeError):
    exit_code = 2
    code = "prompt_syntax"


class TokenBudgetExceeded(ComposeError):
    code = "token_budget"


class InvalidWeight(PromptSyntaxError):
    """``<name:w>`` where ``w`` is not a finite number."""

    code = "invalid_weight"


class ConflictingWeights(ComposeError):
    """One prompt names the same embedding with two different weights."""

    exit_code = 2
    code = "conflicting_weights"


class UnknownEmbedding(NotFound):
    """A prompt names an embedding the catalog does not have (by name or token)."""

    code = "unknown_embedding"


class IncompatibleEmbedding(FamilyMismatch):
    """An embedding whose family cannot be used with the base model's text encoders."""

    code = "incompatible_embedding"


class PartialCompatibility(IncompatibleEmbedding):
    """An SD 1.x embedding on SDXL (first encoder only), refused under ``--strict``."""

    code = "partial_compatibility"


class LoaderError(ComposeError):
    """Embeddings that cannot be added to (or removed from) a pipeline's text encoders."""

    code = "loader_error"


class BlendError(ComposeError):
    """A blend whose parents cannot be combined (families, row counts, weights)."""

    exit_code = 2
    code = "blend_error"


class UntriggerableName(ComposeError):
    """A catalog name that one UI's prompt syntax cannot name, even mapped.

    Facts: ``name`` (the entry), ``ui``, ``mapped`` (the name it would be written as,
    or ``None``), ``existing`` (another entry already written under that name).
    """

    exit_code = 2
    code = "untriggerable_name"


# --------------------------------------------------------------------------- hub


class HubError(ConceptlibError):
    exit_code = 9
    code = "hub_error"


class HubAuthError(HubError):
    code = "hub_auth"


class HubConflict(HubError):
    """The remote branch moved since the last sync."""

    code = "hub_conflict"


class HubIntegrityError(HubError):
    """Downloaded bytes whose hash or size differ from what the server listed."""

    code = "hub_integrity"


class HubUnavailable(HubError):
    """Repeated 429/5xx or an offline cache miss."""

    code = "hub_unavailable"


class HubUnsafePath(HubError):
    code = "hub_unsafe_path"


class HubNotFound(HubError):
    """A repo, revision or file the Hub does not have (or hides: private without access)."""

    code = "hub_not_found"


class HubOffline(HubUnavailable):
    """``HF_HUB_OFFLINE=1`` and what is needed is not in the local cache."""

    code = "hub_offline"


class HubNoEmbedding(HubError):
    """A repo that holds no recognizable embedding file."""

    code = "hub_no_embedding"


# --------------------------------------------------------------------------- civitai


class CivitaiError(ConceptlibError):
    """Civitai's REST API (``conceptlib civitai info``, ``pull civitai:ID``): exit 9 like
    the Hub. The token (``CIVITAI_API_TOKEN``) is never in a message."""

    exit_code = 9
    code = "civitai_error"


class CivitaiAuthError(CivitaiError):
    """HTTP 401/403: a missing or refused ``CIVITAI_API_TOKEN``."""

    code = "civitai_auth"


class CivitaiUnavailable(CivitaiError):
    """Repeated 429/5xx, a reply cut short twice, or no connection."""

    code = "civitai_unavailable"


class CivitaiBadReply(CivitaiError):
    """A reply that is not the JSON object (or file) expected: not JSON, too large, a
    field of the wrong type."""

    code = "civitai_bad_reply"


class CivitaiNotFound(CivitaiError):
    """A model version id (or AIR) Civitai does not know (HTTP 404)."""

    code = "civitai_not_found"


class CivitaiIntegrityError(CivitaiError):
    """Downloaded bytes whose SHA-256 differs from the one the API lists (or none listed)."""

    code = "civitai_integrity"


class CivitaiNotEmbedding(CivitaiError):
    """A model version that is not a textual-inversion embedding (a LoRA, a checkpoint)."""

    code = "civitai_not_embedding"

"""Hub sync: push and pull concepts and whole libraries with the real ``huggingface_hub``.

Python API (the CLI in :mod:`conceptlib.cli.hub` is a thin layer over it)::

    from conceptlib.registry import hub
    hub.push(lib, "cat-toy", repo_id="me/cat-toy")             # -> PushResult
    hub.pull(lib, "sd-concepts-library/cat-toy")                # -> PullOutcome
    hub.pull_many(lib, author="sd-concepts-library", search="cat", limit=20)  # -> PullReport
    hub.push_library(lib, "team/styles", tags=["style"])        # -> PushResult
    hub.pull_library(lib, "team/styles")                        # -> PullReport

One module per concern; each imports only modules listed before it:

- :mod:`.settings`: :class:`HubSettings` from the environment, the token, redaction.
- :mod:`.repos`: repo ids, the file names of concept and library repos, safe names.
- :mod:`.session`: the retrying, error-translating session over the client, the
  remote listing (:class:`RemoteFile`, :class:`RemoteState`) and byte verification.
- :mod:`.layout`: which files of a remote repo make up the concept.
- :mod:`.card`: model cards (``README.md``) written and read.
- :mod:`.manifest`: ``concept.json`` and every file a push writes.
- :mod:`.push`: :func:`push`, :func:`push_library`.
- :mod:`.fetch`: download, verify and parse a remote concept (no catalog writes).
- :mod:`.pull`: :func:`register`, :func:`pull`, :func:`pull_many`, :func:`pull_library`.

Design notes:

- Every call gets ``endpoint=`` and ``token=`` explicitly, read from the environment at
  call time (``HF_ENDPOINT``, ``HF_TOKEN``, else the client's stored login), as are
  ``HF_HUB_OFFLINE`` and the cache folder (``HF_HUB_CACHE`` or ``HF_HOME/hub``): the
  client reads those once at import.
- The token never leaves this package in text: every client exception becomes a
  :class:`~conceptlib.errors.HubError` whose message was redacted, raised ``from None``;
  a logging filter redacts the client's log records too.
- Calls are retried on 408/429/5xx and transport errors with bounded exponential
  backoff (``CONCEPTLIB_HUB_RETRIES``, ``CONCEPTLIB_HUB_BACKOFF``,
  ``CONCEPTLIB_HUB_MAX_WAIT``), honouring ``Retry-After`` up to the cap.
- Remote file names are checked before anything is downloaded; downloaded bytes are
  checked against the listing's size and git blob id (or LFS SHA-256) before anything
  is registered; a bad cached copy is discarded.
- A push compares the files it would write with the remote listing and commits only
  when something differs, with ``parent_commit`` set, after checking that the branch is
  where the last sync left it.

Importing this package stays light: ``huggingface_hub``, pydantic and the format
readers are imported inside the functions that use them.
"""

from __future__ import annotations

from conceptlib.registry.hub.fetch import Fetched, fetch_concept
from conceptlib.registry.hub.layout import EMBEDDING_SUFFIXES, NOT_EMBEDDINGS, Layout, detect_layout
from conceptlib.registry.hub.manifest import build_manifest, concept_repo_files, library_repo_files
from conceptlib.registry.hub.pull import (
    ProgressCallback,
    PullOutcome,
    PullReport,
    pull,
    pull_library,
    pull_many,
    register,
)
from conceptlib.registry.hub.push import PushResult, push, push_library
from conceptlib.registry.hub.repos import (
    CARD_FILENAME,
    EMBEDDING_FILENAME,
    LIBRARY_CONCEPT_DIR,
    MAX_PREVIEW_FILE,
    MAX_SMALL_FILE,
    PREVIEW_DIR,
    TOKEN_FILENAME,
    TYPE_FILENAME,
    check_remote_paths,
    repo_name_for,
    unsafe_reason,
)
from conceptlib.registry.hub.session import (
    FILES_AT_A_TIME,
    MAX_LISTED_FILES,
    RETRY_STATUS,
    RemoteFile,
    RemoteState,
    git_blob_sha1,
)
from conceptlib.registry.hub.settings import (
    DEFAULT_ENDPOINT,
    HubSettings,
    hf_cache_dir,
    redact,
    resolve_token,
)

__all__ = [
    "CARD_FILENAME",
    "DEFAULT_ENDPOINT",
    "EMBEDDING_FILENAME",
    "EMBEDDING_SUFFIXES",
    "FILES_AT_A_TIME",
    "LIBRARY_CONCEPT_DIR",
    "MAX_LISTED_FILES",
    "MAX_PREVIEW_FILE",
    "MAX_SMALL_FILE",
    "NOT_EMBEDDINGS",
    "PREVIEW_DIR",
    "RETRY_STATUS",
    "TOKEN_FILENAME",
    "TYPE_FILENAME",
    "Fetched",
    "HubSettings",
    "Layout",
    "ProgressCallback",
    "PullOutcome",
    "PullReport",
    "PushResult",
    "RemoteFile",
    "RemoteState",
    "build_manifest",
    "check_remote_paths",
    "concept_repo_files",
    "detect_layout",
    "fetch_concept",
    "git_blob_sha1",
    "hf_cache_dir",
    "library_repo_files",
    "pull",
    "pull_library",
    "pull_many",
    "push",
    "push_library",
    "redact",
    "register",
    "repo_name_for",
    "resolve_token",
    "unsafe_reason",
]

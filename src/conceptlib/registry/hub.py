"""Hub sync: push and pull concepts and whole libraries with the real ``huggingface_hub``.

Python API (the CLI in :mod:`conceptlib.cli.hub` is a thin layer over it)::

    from conceptlib.registry import hub
    hub.push(lib, "cat-toy", repo_id="me/cat-toy")             # -> PushResult
    hub.pull(lib, "sd-concepts-library/cat-toy")                # -> PullOutcome
    hub.pull_many(lib, author="sd-concepts-library", search="cat", limit=20)  # -> PullReport
    hub.push_library(lib, "team/styles", tags=["style"])        # -> PushResult
    hub.pull_library(lib, "team/styles")                        # -> PullReport

Design notes:

- Every call gets ``endpoint=`` and ``token=`` explicitly, read from the environment at
  call time (``HF_ENDPOINT``, ``HF_TOKEN``, else the client's stored login), as are
  ``HF_HUB_OFFLINE`` and the cache folder (``HF_HUB_CACHE`` or ``HF_HOME/hub``): the
  client reads those once at import.
- The token never leaves this module in text: every client exception becomes a
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
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
from conceptlib.errors import (
    AmbiguousEmbedding,
    ConceptlibError,
    HubAuthError,
    HubConflict,
    HubError,
    HubIntegrityError,
    HubNoEmbedding,
    HubNotFound,
    HubOffline,
    HubUnavailable,
    HubUnsafePath,
    NameCollision,
    UsageError,
)
from conceptlib.schemas.names import derive_name, name_key, strip_brackets, validate_token

if TYPE_CHECKING:
    from conceptlib.registry.embedding import Embedding
    from conceptlib.registry.library import Library
    from conceptlib.schemas.manifest import ConceptManifest, LibraryIndex
    from conceptlib.schemas.records import EmbeddingInfo, SyncInfo

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
EMBEDDING_FILENAME = "learned_embeds.safetensors"
TOKEN_FILENAME = "token_identifier.txt"
TYPE_FILENAME = "type_of_concept.txt"
CARD_FILENAME = "README.md"
PREVIEW_DIR = "previews"
LIBRARY_CONCEPT_DIR = "concepts"
EMBEDDING_SUFFIXES = (".safetensors", ".bin", ".pt")
#: Weights that sit in model repos but are never textual-inversion embeddings.
NOT_EMBEDDINGS = re.compile(
    r"^(pytorch_model|model|diffusion_pytorch_model|adapter_model|optimizer|scheduler|"
    r"training_args|rng_state|scaler|random_states_\d+|pytorch_lora_weights)"
    r"(\.[^/]*)?\.(bin|pt|safetensors)$",
    re.IGNORECASE,
)
MAX_SMALL_FILE = 4 * 1024 * 1024  # concept.json, library.json, README.md, .txt files
MAX_PREVIEW_FILE = 32 * 1024 * 1024
MAX_LISTED_FILES = 20_000
#: Files of one concept downloaded at a time (as snapshot_download does within a repo).
FILES_AT_A_TIME = 4
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)

ProgressCallback = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- settings and token


@dataclass(frozen=True)
class HubSettings:
    """Where and how to talk to the Hub; read from the environment at call time."""

    endpoint: str
    token: str | None = field(repr=False)  # never in a repr, a log line or a traceback
    offline: bool = False
    cache_dir: str = ""
    retries: int = 4
    backoff_s: float = 1.0
    max_wait_s: float = 16.0
    concurrency: int = 8

    @classmethod
    def from_env(cls, *, token: str | None = None, endpoint: str | None = None) -> HubSettings:
        env = os.environ
        return cls(
            endpoint=(endpoint or env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            token=token or resolve_token(),
            offline=_truthy(env.get("HF_HUB_OFFLINE")),
            cache_dir=hf_cache_dir(),
            retries=max(0, min(int(_num(env.get("CONCEPTLIB_HUB_RETRIES"), 4)), 20)),
            backoff_s=max(0.0, _num(env.get("CONCEPTLIB_HUB_BACKOFF"), 1.0)),
            max_wait_s=max(0.0, _num(env.get("CONCEPTLIB_HUB_MAX_WAIT"), 16.0)),
            concurrency=max(1, min(int(_num(env.get("CONCEPTLIB_HUB_CONCURRENCY"), 8)), 64)),
        )


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _num(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default


def hf_cache_dir() -> str:
    """The client's cache folder, resolved now (``HF_HUB_CACHE`` or ``HF_HOME/hub``)."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return os.path.expanduser(env["HF_HUB_CACHE"])
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "hub")


def resolve_token() -> str | None:
    """``HF_TOKEN`` (or ``HUGGING_FACE_HUB_TOKEN``), else the client's stored login."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = (os.environ.get(var) or "").strip()
        if value:
            return value
    try:
        from huggingface_hub import get_token

        return get_token() or None
    except Exception:
        return None


# --------------------------------------------------------------------------- redaction

_SECRETS: set[str] = set()
_SECRETS_LOCK = threading.Lock()
_HF_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{16,}")


def redact(text: str, token: str | None = None) -> str:
    """``text`` with every known token (and anything shaped like one) replaced."""
    with _SECRETS_LOCK:
        secrets = set(_SECRETS)
    if token:
        secrets.add(token)
    for s in sorted(secrets, key=len, reverse=True):
        if s:
            text = text.replace(s, "***")
    return _HF_TOKEN_PATTERN.sub("hf_***", text)


class _RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = _RedactingFilter()


_LOGGER_PREFIXES = (
    "huggingface_hub",
    "conceptlib",
    "httpx",
    "httpx2",
    "httpcore",
    "httpcore2",
    "urllib3",
    "requests",
    "filelock",
)


def _remember_secret(token: str | None) -> None:
    """Redact ``token`` from now on, in messages and in the HTTP stack's log records.

    A filter on a logger sees only records created on that very logger, so it goes on
    every existing logger of the client's stack (they exist once the client is imported).
    """
    if not token:
        return
    with _SECRETS_LOCK:
        _SECRETS.add(token)
    names = [
        n
        for n, lg in list(logging.root.manager.loggerDict.items())
        if isinstance(lg, logging.Logger) and n.split(".")[0] in _LOGGER_PREFIXES
    ]
    for name in [*_LOGGER_PREFIXES, *names]:
        lg = logging.getLogger(name)
        if _FILTER not in lg.filters:
            lg.addFilter(_FILTER)


# --------------------------------------------------------------------------- hashing and paths


def git_blob_sha1(data: bytes) -> str:
    """The git blob id the Hub lists as a file's ``oid``/``blobId``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def unsafe_reason(path: str) -> str | None:
    """Why a remote file name cannot be used as a relative path, or None."""
    if not path:
        return "an empty name"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "control characters"
    if path.startswith(("/", "\\")):
        return "an absolute path"
    if "\\" in path:
        return "a backslash (Windows or UNC path)"
    if re.match(r"^[A-Za-z]:", path):
        return "a drive letter"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "'.', '..' or empty path parts"
    if any(_RESERVED.match(p) or p != p.rstrip(" .") for p in parts):
        return "a reserved device name or a trailing dot/space"
    return None


def check_remote_paths(repo: str, paths: Iterable[str]) -> None:
    bad = [(p, r) for p in paths if (r := unsafe_reason(p))]
    if bad:
        listing = ", ".join(f"{p!r} ({r})" for p, r in bad[:5])
        raise HubUnsafePath(
            f"{repo} lists unsafe file names: {listing}; refusing to download anything from it",
            hint="a repo with such names is broken or hostile; nothing was downloaded",
            repo_id=repo,
            paths=[p for p, _ in bad],
        )


def _parse_spec(spec: str) -> tuple[str, str]:
    """``ns/name[@revision]`` -> (repo_id, revision)."""
    spec = spec.strip()
    for prefix in ("https://huggingface.co/", "hf://", "hf.co/"):
        if spec.startswith(prefix):
            spec = spec[len(prefix) :]
    repo_id, _, revision = spec.partition("@")
    repo_id = repo_id.strip("/")
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UsageError(
            f"{spec!r} is not a Hub repo id; expected NAMESPACE/NAME[@REVISION]",
            hint="for example: conceptlib pull sd-concepts-library/cat-toy",
        )
    return repo_id, revision or "main"


def _check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UsageError(f"{repo_id!r} is not a Hub repo id; expected NAMESPACE/NAME")
    return repo_id


def repo_name_for(name: str) -> str:
    """A Hub repo name made from a concept name."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", strip_brackets(name)).strip("-.")
    slug = re.sub(r"-{2,}", "-", slug).replace("..", ".")
    return (slug or "concept")[:96]


# --------------------------------------------------------------------------- client session


@dataclass
class RemoteFile:
    path: str
    size: int
    oid: str | None  # git blob sha1 of the content (non-LFS), when known
    sha256: str | None = None  # LFS files: the content's SHA-256


@dataclass
class RemoteState:
    """A repo at one commit: what it holds, as the server listed it."""

    repo_id: str
    revision: str
    commit: str
    files: dict[str, RemoteFile]
    from_cache: bool = False

    def ref(self, path: str) -> str:
        return f"{self.repo_id}@{self.commit}/{path}"


class _Session:
    """One set of settings, one client, and the retry/translation wrapper."""

    def __init__(self, settings: HubSettings) -> None:
        from huggingface_hub import HfApi

        self.settings = settings
        self.token = settings.token
        _remember_secret(self.token)
        self.api = HfApi(endpoint=settings.endpoint, token=self.token or False)

    # ------------------------------------------------------------------ errors

    def _redact(self, text: str) -> str:
        return redact(text, self.token)

    def translate(self, exc: BaseException, what: str, *, repo_id: str | None = None) -> HubError:
        """A client exception as a typed, token-free :class:`HubError`."""
        from huggingface_hub import utils as hf_errors  # re-exported there since 0.2x

        status = _status_of(exc)
        server = getattr(exc, "server_message", None) or ""
        detail = self._redact(_first_line(server) or _first_line(str(exc)) or type(exc).__name__)
        where = repo_id or what
        facts: dict[str, Any] = {"repo_id": repo_id} if repo_id else {}
        if isinstance(exc, hf_errors.GatedRepoError):
            return HubAuthError(
                f"{where} is gated: accept its terms on the Hub, then use a token",
                hint="set HF_TOKEN to a token of an account with access",
                **facts,
            )
        if isinstance(exc, hf_errors.RepositoryNotFoundError):
            return HubNotFound(
                f"{where} was not found on {self.settings.endpoint} (or it is private and "
                "the token has no access)",
                hint=None if self.token else "for a private repo, set HF_TOKEN",
                **facts,
            )
        if isinstance(exc, hf_errors.RevisionNotFoundError):
            return HubNotFound(f"{what}: revision not found ({detail})", **facts)
        if isinstance(exc, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
            return HubOffline(
                f"{what}: not in the local cache and the Hub is not reachable "
                "(HF_HUB_OFFLINE=1 or no network)",
                hint="pull it once while online, or unset HF_HUB_OFFLINE",
                **facts,
            )
        if isinstance(exc, hf_errors.EntryNotFoundError):
            return HubNotFound(f"{what}: no such file in {where}", **facts)
        if status == 401:
            return HubAuthError(
                f"the Hub rejected the token for {what} (HTTP 401: {detail})"
                if self.token
                else f"{what} needs a Hub token (HTTP 401)",
                hint="set HF_TOKEN or log in with `hf auth login`",
                **facts,
            )
        if status == 403:
            return HubAuthError(
                f"the token may not do this: {what} (HTTP 403: {detail})",
                hint="use a token with write access to this namespace (read-only tokens can "
                "only pull)",
                **facts,
            )
        if status in (409, 412):
            return HubConflict(
                f"{where} changed while {what} was running (HTTP {status}: {detail})",
                hint="pull it, then push again (or push --force to overwrite)",
                **facts,
            )
        if status in RETRY_STATUS:
            return HubUnavailable(
                f"the Hub kept answering HTTP {status} to {what} ({detail})",
                hint="try again later; CONCEPTLIB_HUB_RETRIES sets how often to retry",
                **facts,
            )
        if status is not None:
            return HubError(f"{what} failed: HTTP {status}: {detail}", **facts)
        if "Consistency check failed" in str(exc):
            return HubIntegrityError(
                f"{what}: the download was cut short ({detail})",
                hint="run the command again",
                **facts,
            )
        if _is_transport_error(exc):
            return HubUnavailable(
                f"cannot reach {self.settings.endpoint} for {what} ({detail})",
                hint="check the network, or set HF_HUB_OFFLINE=1 to use the local cache",
                **facts,
            )
        if isinstance(exc, ValueError):
            return HubError(f"{what}: {detail}", **facts)
        return HubError(f"{what} failed: {type(exc).__name__}: {detail}", **facts)

    # ------------------------------------------------------------------ retries

    def call(
        self,
        what: str,
        fn: Callable[..., Any],
        *args: Any,
        for_repo: str | None = None,
        retries: int | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run a client call with bounded retries; raise a :class:`HubError` on failure.

        ``retries`` (default ``CONCEPTLIB_HUB_RETRIES``) caps the extra attempts.
        """
        s = self.settings
        retries = s.retries if retries is None else min(retries, s.retries)
        wait = s.backoff_s
        for attempt in range(retries + 1):
            try:
                return fn(*args, **kwargs)
            except ConceptlibError:
                raise
            except Exception as exc:  # client errors of every kind are translated below
                retryable = _retryable(exc)
                if not retryable or attempt >= retries:
                    err = self.translate(exc, what, repo_id=for_repo)
                    if retryable and attempt:
                        err.message += f" after {attempt + 1} attempts"
                        err.args = (err.message,)
                    raise err from None
                delay = min(max(wait, _retry_after(exc) or 0.0), s.max_wait_s)
                logger.debug("retrying %s in %.1fs (attempt %d)", what, delay, attempt + 1)
                time.sleep(delay)
                wait = min(wait * 2, s.max_wait_s)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------ reading

    def whoami(self) -> dict[str, Any]:
        if not self.token:
            raise HubAuthError(
                "no Hub token: pushing needs one", hint="set HF_TOKEN or run `hf auth login`"
            )
        return self.call("whoami", self.api.whoami)

    def state(self, repo_id: str, revision: str = "main") -> RemoteState:
        """List a repo at ``revision`` (one request), or read it from the cache offline."""
        if self.settings.offline:
            return self._cached_state(repo_id, revision)
        info = self.call(
            f"reading {repo_id}@{revision}",
            self.api.model_info,
            repo_id,
            revision=revision,
            files_metadata=True,
            for_repo=repo_id,
        )
        files: dict[str, RemoteFile] = {}
        for sib in (info.siblings or [])[:MAX_LISTED_FILES]:
            lfs = getattr(sib, "lfs", None)
            sha256 = None
            if lfs is not None:
                sha256 = (
                    lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
                )
            files[sib.rfilename] = RemoteFile(
                path=sib.rfilename,
                size=int(sib.size) if sib.size is not None else -1,
                oid=None if sha256 else sib.blob_id,
                sha256=sha256,
            )
        check_remote_paths(repo_id, files)
        if not info.sha or not _HEX40.match(info.sha):
            raise HubError(f"{repo_id}@{revision}: the server sent no commit id")
        return RemoteState(repo_id, revision, info.sha, files)

    def _storage(self, repo_id: str) -> Path:
        return Path(self.settings.cache_dir) / ("models--" + repo_id.replace("/", "--"))

    def _cached_state(self, repo_id: str, revision: str) -> RemoteState:
        storage = self._storage(repo_id)
        commit = None
        if _HEX40.match(revision) and (storage / "snapshots" / revision).is_dir():
            commit = revision
        else:
            ref = storage / "refs" / revision
            if ref.is_file() and unsafe_reason(revision) is None:
                commit = ref.read_text(encoding="utf-8").strip()
        snap = storage / "snapshots" / (commit or "")
        if not commit or not _HEX40.match(commit) or not snap.is_dir():
            raise HubOffline(
                f"HF_HUB_OFFLINE=1 and {repo_id}@{revision} is not in the local cache "
                f"({self.settings.cache_dir})",
                hint="pull it once while online, or unset HF_HUB_OFFLINE",
                repo_id=repo_id,
            )
        files: dict[str, RemoteFile] = {}
        root = os.path.realpath(self.settings.cache_dir)
        for i, p in enumerate(sorted(snap.rglob("*"))):
            if i >= MAX_LISTED_FILES:
                break
            if not p.is_file():
                continue
            rel = p.relative_to(snap).as_posix()
            target = os.path.realpath(p)
            if not target.startswith(root + os.sep):
                raise HubUnsafePath(
                    f"{repo_id}: cached file {rel!r} points outside the cache; refusing it",
                    repo_id=repo_id,
                )
            etag = (
                os.path.basename(target)
                if os.path.basename(os.path.dirname(target)) == "blobs"
                else ""
            )
            files[rel] = RemoteFile(
                path=rel,
                size=os.path.getsize(target),
                oid=etag if _HEX40.match(etag) else None,
                sha256=etag if _HEX64.match(etag) else None,
            )
        check_remote_paths(repo_id, files)
        return RemoteState(repo_id, revision, commit, files, from_cache=True)

    def fetch(self, state: RemoteState, path: str, *, max_size: int) -> bytes:
        """Download one listed file (or take it from the cache) and verify its bytes."""
        from huggingface_hub import hf_hub_download

        rf = state.files.get(path)
        if rf is None:
            if state.from_cache:
                raise HubOffline(
                    f"HF_HUB_OFFLINE=1 and {state.repo_id}@{state.commit[:12]}/{path} is not "
                    "in the local cache",
                    hint="pull it once while online, or unset HF_HUB_OFFLINE",
                    repo_id=state.repo_id,
                )
            raise HubNotFound(f"{state.repo_id}@{state.revision} has no file {path!r}")
        if rf.size > max_size:
            raise HubError(
                f"{state.ref(path)} is {rf.size} bytes; expected at most {max_size} for this "
                "kind of file",
                repo_id=state.repo_id,
            )
        what = f"downloading {state.repo_id}/{path}"
        for attempt in range(2):
            local = self.call(
                what,
                hf_hub_download,
                state.repo_id,
                path,
                revision=state.revision,
                endpoint=self.settings.endpoint,
                token=self.token or False,
                cache_dir=self.settings.cache_dir,
                local_files_only=state.from_cache,
                force_download=attempt > 0,
                for_repo=state.repo_id,
                # the client already retries downloads (1, 2, 4, 8, 8 s): one more round at most
                retries=1,
            )
            snapshot_commit = (
                Path(local).relative_to(self._storage(state.repo_id) / "snapshots").parts[0]
                if _is_under(local, self._storage(state.repo_id) / "snapshots")
                else None
            )
            if snapshot_commit is not None and snapshot_commit != state.commit:
                raise HubConflict(
                    f"{state.repo_id}@{state.revision} moved while pulling (listed "
                    f"{state.commit[:12]}, downloaded {snapshot_commit[:12]})",
                    hint="run the command again",
                    repo_id=state.repo_id,
                )
            with open(local, "rb") as f:
                data = f.read(max_size + 1)
            problem = _verify(data, rf)
            if problem is None:
                return data
            _discard_cached(local, self.settings.cache_dir)
            if state.from_cache:
                break
            logger.debug("%s: %s; downloading again", what, problem)
        raise HubIntegrityError(
            f"{state.ref(path)}: {problem}; the bad copy was discarded and nothing was registered",
            hint="run the command again; if it persists, the server is serving wrong bytes",
            repo_id=state.repo_id,
            path=path,
        )

    def fetch_many(self, state: RemoteState, wanted: dict[str, int]) -> dict[str, bytes]:
        """:meth:`fetch` several files (path -> size cap), a few at a time."""
        paths = list(wanted)
        if len(paths) <= 1:
            return {p: self.fetch(state, p, max_size=wanted[p]) for p in paths}
        with ThreadPoolExecutor(max_workers=min(FILES_AT_A_TIME, len(paths))) as pool:
            futures = {p: pool.submit(self.fetch, state, p, max_size=wanted[p]) for p in paths}
            return {p: f.result() for p, f in futures.items()}

    # ------------------------------------------------------------------ writing

    def create(self, repo_id: str, *, private: bool) -> RemoteState:
        """Create the repo (an existing one is fine) and return its state."""
        try:
            self.api.create_repo(repo_id, private=private, exist_ok=True)
        except Exception as exc:
            if _status_of(exc) != 409:  # 409: it exists (a race with another creator)
                raise self.translate(exc, f"creating {repo_id}", repo_id=repo_id) from None
        return self.state(repo_id, "main")

    def commit(
        self,
        repo_id: str,
        adds: dict[str, bytes],
        deletes: Sequence[str],
        *,
        message: str,
        parent: str,
    ) -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        ops: list[Any] = [CommitOperationAdd(p, data) for p, data in sorted(adds.items())]
        ops += [CommitOperationDelete(p) for p in sorted(deletes)]
        try:
            info = self.api.create_commit(
                repo_id, ops, commit_message=message, parent_commit=parent
            )
        except Exception as exc:
            # Never retried blindly: a commit that reached the server must not be repeated.
            err = self.translate(exc, f"committing to {repo_id}", repo_id=repo_id)
            if isinstance(err, HubConflict):
                err = HubConflict(
                    f"{repo_id} moved while pushing (its branch is no longer at "
                    f"{parent[:12]}); nothing was overwritten",
                    hint="pull it first, then push again (or push --force to overwrite)",
                    repo_id=repo_id,
                )
            raise err from None
        return info.oid

    def list_repo_ids(
        self, *, author: str | None, search: str | None, tags: Sequence[str], limit: int | None
    ) -> list[str]:
        if self.settings.offline:
            raise HubOffline(
                "HF_HUB_OFFLINE=1: listing repos needs the network",
                hint="pull single repos from the cache with `conceptlib pull NS/NAME`",
            )

        def run() -> list[str]:
            it = self.api.list_models(
                author=author or None,
                search=search or None,
                filter=list(tags) or None,
                limit=limit,
            )
            return [m.id for m in it]

        return self.call("listing repos", run)


def _first_line(text: str) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return line[:300]
    return ""


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return int(status) if isinstance(status, int) else None


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
    except Exception:
        return None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _is_transport_error(exc: BaseException) -> bool:
    module = type(exc).__module__.split(".")[0]
    if module in ("httpx", "httpx2", "httpcore", "requests", "urllib3"):
        return _status_of(exc) is None
    return isinstance(exc, (ConnectionError, TimeoutError))


def _retryable(exc: BaseException) -> bool:
    from huggingface_hub import utils as hf_errors

    if isinstance(exc, (hf_errors.OfflineModeIsEnabled, hf_errors.LocalEntryNotFoundError)):
        return False
    status = _status_of(exc)
    if status is not None:
        return status in RETRY_STATUS
    if "Consistency check failed" in str(exc):
        return True
    return _is_transport_error(exc)


def _verify(data: bytes, rf: RemoteFile) -> str | None:
    if rf.size >= 0 and len(data) != rf.size:
        return f"got {len(data)} bytes but the server listed {rf.size}"
    if rf.sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != rf.sha256:
            return f"SHA-256 {got[:12]} differs from the listed {rf.sha256[:12]}"
    elif rf.oid is not None:
        got = git_blob_sha1(data)
        if got != rf.oid:
            return f"blob id {got[:12]} differs from the listed {rf.oid[:12]}"
    return None


def _is_under(path: str | os.PathLike[str], folder: Path) -> bool:
    try:
        Path(path).relative_to(folder)
        return True
    except ValueError:
        return False


def _discard_cached(local: str, cache_dir: str) -> None:
    """Remove a bad cached file: the snapshot entry and the blob it points to."""
    root = os.path.realpath(cache_dir)
    target = os.path.realpath(local)
    for p in {local, target}:
        if os.path.realpath(os.path.dirname(p)).startswith(root):
            with contextlib.suppress(OSError):
                os.unlink(p)


# --------------------------------------------------------------------------- results


@dataclass
class PushResult:
    """The outcome of a push. ``status``: ``created``, ``updated`` or ``unchanged``."""

    repo_id: str
    status: str
    commit: str
    url: str
    names: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def committed(self) -> bool:
        return self.status != "unchanged"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PullOutcome:
    """One repo's (or library entry's) result.

    ``status``: ``pulled`` (new entry), ``new-version`` (the older one was kept as
    ``previous``), ``present`` (same revision or same vectors: nothing changed) or
    ``failed`` (``error``/``code`` say why).
    """

    repo_id: str
    status: str
    name: str | None = None
    version: int | None = None
    commit: str | None = None
    file: str | None = None
    source_ref: str | None = None
    previous: str | None = None
    layout: str | None = None
    error: str | None = None
    code: str | None = None
    hint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PullReport:
    outcomes: list[PullOutcome] = field(default_factory=list)
    repo_id: str | None = None
    commit: str | None = None
    wall_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def failed(self) -> list[PullOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "commit": self.commit,
            "pulled": self.count("pulled"),
            "new_versions": self.count("new-version"),
            "present": self.count("present"),
            "failed": self.count("failed"),
            "wall_s": round(self.wall_s, 3),
            "outcomes": [o.to_dict() for o in self.outcomes],
        }


# --------------------------------------------------------------------------- building repo files


def _encode_embedding(emb: Embedding, info: EmbeddingInfo) -> tuple[str, bytes]:
    """The pushed file: diffusers ``{token: [n,d]}`` for SD 1.x/2.x, ``{clip_l, clip_g}`` for SDXL."""
    from conceptlib.registry.formats import write_embedding

    fmt = "sdxl" if info.family == "sdxl" else "diffusers"
    files = write_embedding(emb, fmt, name=info.name, token=info.token)
    if len(files) != 1:  # pragma: no cover - both formats write one file
        raise HubError(f"format {fmt} wrote {len(files)} files; expected one")
    return fmt, next(iter(files.values()))


def _preview_paths(info: EmbeddingInfo) -> list[tuple[Any, str]]:
    used: set[str] = set()
    out = []
    for p in info.previews:
        fname = p.filename
        stem, dot, ext = fname.rpartition(".")
        n = 2
        while fname.casefold() in used:
            fname = f"{stem}-{n}.{ext}" if dot else f"{p.filename}-{n}"
            n += 1
        used.add(fname.casefold())
        out.append((p, f"{PREVIEW_DIR}/{fname}"))
    return out


def build_manifest(lib: Library, info: EmbeddingInfo) -> tuple[ConceptManifest, dict[str, bytes]]:
    """``concept.json`` for ``info`` plus the files it names (embedding, previews)."""
    from conceptlib.schemas.manifest import (
        ConceptManifest,
        EmbeddingFileEntry,
        PreviewEntry,
        TrainingRunEntry,
    )

    emb = lib.load(info)
    fmt, data = _encode_embedding(emb, info)
    files: dict[str, bytes] = {EMBEDDING_FILENAME: data}
    previews = []
    for p, path in _preview_paths(info):
        blob = lib.preview_path(info, p.filename).read_bytes()
        if hashlib.sha256(blob).hexdigest() != p.sha256:
            from conceptlib.errors import BlobCorrupt

            raise BlobCorrupt(f"{info.name}: preview {p.filename} does not match its hash")
        files[path] = blob
        previews.append(
            PreviewEntry(
                filename=p.filename, role=p.role, path=path, sha256=p.sha256, size=len(blob)
            )
        )
    runs = []
    for tr in info.training_runs:
        d = asdict(tr)
        d.pop("id", None)
        d.pop("created_at", None)
        runs.append(TrainingRunEntry(**d))
    manifest = ConceptManifest(
        name=info.name,
        token=info.token,
        kind=info.kind,
        family=info.family,
        num_vectors=info.num_vectors,
        dims=list(info.dims),
        tensor_sha256=info.tensor_sha256,
        file_sha256=info.file_sha256,
        embedding=EmbeddingFileEntry(
            path=EMBEDDING_FILENAME,
            format=fmt,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        ),
        source=info.source,
        source_ref=info.source_ref,
        base_model=info.base_model,
        base_model_fingerprint=info.base_model_fingerprint,
        initializer=info.initializer,
        training_images_hash=info.training_images_hash,
        training_image_count=info.training_image_count,
        description=info.description,
        license=info.license,
        tags=sorted(info.tags),
        flags=list(info.flags),
        version=info.version,
        parents=list(info.parents),
        extra=dict(info.extra),
        previews=previews,
        training_runs=runs,
    )
    return manifest, files


def concept_repo_files(lib: Library, info: EmbeddingInfo, *, repo_id: str) -> dict[str, bytes]:
    """Every file of a concept repo, by path."""
    from conceptlib.registry.modelcard import render_card

    manifest, files = build_manifest(lib, info)
    files[TOKEN_FILENAME] = info.token.encode("utf-8")
    files[TYPE_FILENAME] = info.kind.encode("utf-8")
    files["concept.json"] = manifest.to_json_bytes()
    files[CARD_FILENAME] = render_card(manifest, repo_id=repo_id).encode("utf-8")
    return files


def library_repo_files(
    lib: Library, infos: Sequence[EmbeddingInfo], *, repo_id: str, selection: dict[str, Any]
) -> tuple[LibraryIndex, dict[str, bytes]]:
    from conceptlib.registry.modelcard import render_library_card
    from conceptlib.schemas.manifest import LibraryEntry, LibraryIndex

    files: dict[str, bytes] = {}
    entries = []
    for info in sorted(infos, key=lambda i: name_key(i.name)):
        folder = f"{LIBRARY_CONCEPT_DIR}/{info.name}"
        if unsafe_reason(folder):
            raise HubError(f"{info.name!r} cannot be a folder name in a repo")
        manifest, cfiles = build_manifest(lib, info)
        mbytes = manifest.to_json_bytes()
        for rel, data in cfiles.items():
            files[f"{folder}/{rel}"] = data
        files[f"{folder}/concept.json"] = mbytes
        entries.append(
            LibraryEntry(
                name=info.name,
                path=folder,
                token=info.token,
                kind=info.kind,
                family=info.family,
                tensor_sha256=info.tensor_sha256,
                manifest_sha256=hashlib.sha256(mbytes).hexdigest(),
                tags=sorted(info.tags),
            )
        )
    index = LibraryIndex(name=repo_id, selection=selection, concepts=entries)
    files["library.json"] = index.to_json_bytes()
    families = sorted({e.family for e in entries})
    files[CARD_FILENAME] = render_library_card(index, repo_id=repo_id, families=families).encode()
    return index, files


# --------------------------------------------------------------------------- push


def _last_sync(infos: Iterable[EmbeddingInfo], repo_id: str) -> SyncInfo | None:
    """The most recent sync with ``repo_id`` among ``infos``."""
    best: SyncInfo | None = None
    for info in infos:
        for s in info.syncs:
            if (
                s.repo_id == repo_id
                and s.commit_sha
                and (best is None or (s.synced_at or "") >= (best.synced_at or ""))
            ):
                best = s
    return best


def _diff(
    local: dict[str, bytes], remote: dict[str, RemoteFile], managed: Callable[[str], bool]
) -> tuple[dict[str, bytes], list[str]]:
    """Files to upload (new or different) and remote files to delete (managed, not local)."""
    adds = {}
    for path, data in local.items():
        rf = remote.get(path)
        if rf is None or _verify(data, rf) is not None or (rf.oid is None and rf.sha256 is None):
            adds[path] = data
    deletes = [p for p in remote if p not in local and managed(p)]
    return adds, deletes


def _push_files(
    session: _Session,
    repo_id: str,
    files: dict[str, bytes],
    *,
    managed: Callable[[str], bool],
    last: SyncInfo | None,
    private: bool,
    message: str,
    force: bool,
) -> tuple[str, str, list[str], list[str], list[str]]:
    """Commit ``files`` if anything differs; returns (status, commit, changed, deleted, notes)."""
    notes: list[str] = []
    existed = True
    try:
        state = session.state(repo_id, "main")
    except HubNotFound:
        existed = False
        state = session.create(repo_id, private=private)
    if existed and private:
        notes.append(f"{repo_id} already exists; --private applies only when creating a repo")
    adds, deletes = _diff(files, state.files, managed)
    if not adds and not deletes:
        return "unchanged", state.commit, [], [], notes
    if existed and last is not None and last.commit_sha != state.commit and not force:
        raise HubConflict(
            f"{repo_id} moved since the last sync: it was at {last.commit_sha[:12]}, it is "
            f"now at {state.commit[:12]}; pushing would overwrite those changes",
            hint=f"pull it first (conceptlib pull {repo_id}), or push with --force",
            repo_id=repo_id,
            expected=last.commit_sha,
            found=state.commit,
        )
    commit = session.commit(repo_id, adds, deletes, message=message, parent=state.commit)
    return ("created" if not existed else "updated"), commit, sorted(adds), sorted(deletes), notes


def _record_sync(
    lib: Library, name: str, repo_id: str, revision: str, commit: str, direction: str, filename: str
) -> None:
    from conceptlib.schemas.records import SyncInfo

    info = lib.get(name)
    for s in info.syncs:
        if (s.repo_id, s.commit_sha, s.direction, s.filename) == (
            repo_id,
            commit,
            direction,
            filename,
        ):
            return
    lib.record_sync(name, SyncInfo(repo_id, revision, commit, direction, filename))


def push(
    lib: Library,
    name: str,
    *,
    repo_id: str | None = None,
    private: bool = False,
    message: str | None = None,
    force: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Push one concept to its own repo (created when missing).

    Pushing an unchanged concept makes no commit. A push refuses to overwrite a
    branch that moved since this concept's last sync with the repo, unless ``force``.

    Raises:
        NotFound: no concept named ``name``.
        HubAuthError: no token, a rejected token, or one without write access.
        HubConflict: the remote branch moved since the last sync (or during the push).
        HubUnavailable: the Hub kept failing after the bounded retries.
    """
    settings = HubSettings.from_env(token=token, endpoint=endpoint)
    if settings.offline:
        raise HubOffline("HF_HUB_OFFLINE=1: pushing needs the network")
    info = lib.get(name)
    session = _Session(settings)
    if not session.token:
        raise HubAuthError(
            "no Hub token: pushing needs one", hint="set HF_TOKEN or run `hf auth login`"
        )
    if repo_id is None:
        me = session.whoami()
        repo_id = f"{me.get('name')}/{repo_name_for(info.name)}"
        role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise HubAuthError(
                "the Hub token is read-only; pushing needs a token with write access",
                hint="create a write token on the Hub and set HF_TOKEN",
            )
    _check_repo_id(repo_id)
    files = concept_repo_files(lib, info, repo_id=repo_id)
    status, commit, changed, deleted, notes = _push_files(
        session,
        repo_id,
        files,
        managed=lambda p: p.startswith(f"{PREVIEW_DIR}/"),
        last=_last_sync([info], repo_id),
        private=private,
        message=message or f"Upload {info.name} (conceptlib)",
        force=force,
    )
    _record_sync(lib, info.name, repo_id, "main", commit, "push", EMBEDDING_FILENAME)
    return PushResult(
        repo_id=repo_id,
        status=status,
        commit=commit,
        url=f"{settings.endpoint}/{repo_id}",
        names=[info.name],
        changed=changed,
        deleted=deleted,
        notes=notes,
    )


def push_library(
    lib: Library,
    repo_id: str,
    *,
    tags: Sequence[str] = (),
    search: str | None = None,
    names: Sequence[str] = (),
    private: bool = False,
    message: str | None = None,
    force: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Push a chosen part of the catalog as one library repo with a ``library.json`` index.

    The selection is every concept matching ``search`` and all ``tags`` (plus any
    ``names``); with no selector at all, the whole catalog. Concepts that left the
    selection are deleted from the repo. Unchanged libraries make no commit.
    """
    _check_repo_id(repo_id)
    settings = HubSettings.from_env(token=token, endpoint=endpoint)
    if settings.offline:
        raise HubOffline("HF_HUB_OFFLINE=1: pushing needs the network")
    selected: dict[str, EmbeddingInfo] = {}
    if tags or search or not names:
        for e in lib.search(search or None, tags=tags):
            selected[name_key(e.name)] = e
    for n in names:
        e = lib.get(n)
        selected[name_key(e.name)] = e
    if not selected:
        raise UsageError(
            "no concepts match the selection"
            + (f" (tags: {', '.join(tags)})" if tags else "")
            + (f" (search: {search!r})" if search else ""),
            hint="check with `conceptlib search`",
        )
    infos = [lib.get(e.name) for e in selected.values()]  # with previews, runs and syncs
    session = _Session(settings)
    if not session.token:
        raise HubAuthError(
            "no Hub token: pushing needs one", hint="set HF_TOKEN or run `hf auth login`"
        )
    selection = {"tags": sorted(tags), "search": search, "names": sorted(names)}
    _, files = library_repo_files(lib, infos, repo_id=repo_id, selection=selection)
    status, commit, changed, deleted, notes = _push_files(
        session,
        repo_id,
        files,
        managed=lambda p: p.startswith(f"{LIBRARY_CONCEPT_DIR}/"),
        last=_last_sync(infos, repo_id),
        private=private,
        message=message or f"Update library: {len(infos)} concepts (conceptlib)",
        force=force,
    )
    for info in infos:
        _record_sync(
            lib,
            info.name,
            repo_id,
            "main",
            commit,
            "push",
            f"{LIBRARY_CONCEPT_DIR}/{info.name}/{EMBEDDING_FILENAME}",
        )
    return PushResult(
        repo_id=repo_id,
        status=status,
        commit=commit,
        url=f"{settings.endpoint}/{repo_id}",
        names=sorted(i.name for i in infos),
        changed=changed,
        deleted=deleted,
        notes=notes,
    )


# --------------------------------------------------------------------------- layouts


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


# --------------------------------------------------------------------------- pull


@dataclass
class Fetched:
    """A verified, parsed concept ready to register (no catalog writes yet)."""

    repo_id: str
    revision: str
    commit: str
    file: str
    layout: str
    embedding: Embedding
    name: str
    token: str
    kind: str
    file_bytes: bytes
    source: str
    source_ref: str | None
    file_sha256: str | None = None
    base_model: str | None = None
    base_model_fingerprint: str | None = None
    initializer: str | None = None
    training_images_hash: str | None = None
    training_image_count: int | None = None
    tags: list[str] = field(default_factory=list)
    description: str | None = None
    license: str | None = None
    previews: list[Any] = field(default_factory=list)
    training_runs: list[Any] = field(default_factory=list)
    parents: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    version: int | None = None

    @property
    def tensor_sha256(self) -> str:
        return self.embedding.tensor_sha256


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").strip()


def _kind_from(text: str | None) -> str | None:
    t = (text or "").strip().lower()
    return t if t in ("object", "style", "negative", "other") else None


def _clean_tags(tags: Iterable[str]) -> list[str]:
    from conceptlib.registry.library import validate_tag

    out = []
    for t in tags:
        try:
            out.append(validate_tag(str(t)))
        except ConceptlibError:
            continue
    return sorted(set(out))


def _read_manifest(data: bytes, where: str) -> ConceptManifest:
    from pydantic import ValidationError

    from conceptlib.schemas.manifest import ConceptManifest

    try:
        return ConceptManifest.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()))
        raise HubError(
            f"{where}: concept.json is not a valid conceptlib manifest ({loc}: "
            f"{first.get('msg', 'invalid')})",
        ) from None


def _fetch_manifest_concept(
    session: _Session, state: RemoteState, folder: str, manifest_bytes: bytes | None = None
) -> tuple[Any, Embedding, bytes, list[Any]]:
    """Read a conceptlib concept folder: manifest, embedding, previews, all verified."""
    from conceptlib.registry.formats import read_embedding_bytes
    from conceptlib.schemas.records import Preview

    mpath = f"{folder}concept.json"
    if manifest_bytes is None:
        manifest_bytes = session.fetch(state, mpath, max_size=MAX_SMALL_FILE)
    m = _read_manifest(manifest_bytes, state.ref(mpath))
    epath = folder + m.embedding.path
    wanted = {epath: MAX_EMBEDDING_FILE_BYTES}
    for p in m.previews:
        wanted[folder + p.path] = MAX_PREVIEW_FILE
    got = session.fetch_many(state, wanted)
    data = got[epath]
    if hashlib.sha256(data).hexdigest() != m.embedding.sha256:
        raise HubIntegrityError(
            f"{state.ref(epath)}: SHA-256 differs from the one in concept.json",
            repo_id=state.repo_id,
        )
    parsed = read_embedding_bytes(data, path=state.ref(epath))
    if parsed.embedding.tensor_sha256 != m.tensor_sha256:
        raise HubIntegrityError(
            f"{state.ref(epath)}: its vectors hash to {parsed.embedding.tensor_sha256[:12]}, "
            f"concept.json says {m.tensor_sha256[:12]}",
            repo_id=state.repo_id,
        )
    previews = []
    for p in m.previews:
        blob = got[folder + p.path]
        if hashlib.sha256(blob).hexdigest() != p.sha256:
            raise HubIntegrityError(
                f"{state.ref(folder + p.path)}: SHA-256 differs from the one in concept.json",
                repo_id=state.repo_id,
            )
        previews.append(Preview(filename=p.filename, data=blob, role=p.role))
    return m, parsed.embedding, data, previews


def _fetched_from_manifest(
    m: ConceptManifest,
    emb: Embedding,
    data: bytes,
    previews: list[Any],
    *,
    repo_id: str,
    revision: str,
    commit: str,
    file: str,
    layout: str,
    name: str,
    source: str,
    source_ref: str | None,
    extra: dict[str, Any],
) -> Fetched:
    """A fetched concept whose catalog fields come from its ``concept.json``."""
    return Fetched(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        file=file,
        layout=layout,
        embedding=emb,
        name=name,
        token=m.token,
        kind=m.kind,
        file_bytes=data,
        file_sha256=m.file_sha256,
        source=source,
        source_ref=source_ref,
        base_model=m.base_model,
        base_model_fingerprint=m.base_model_fingerprint,
        initializer=m.initializer,
        training_images_hash=m.training_images_hash,
        training_image_count=m.training_image_count,
        tags=list(m.tags),
        description=m.description,
        license=m.license,
        previews=previews,
        training_runs=_training_runs(m),
        parents=list(m.parents),
        extra=extra,
        version=m.version,
    )


def _training_runs(m: ConceptManifest) -> list[Any]:
    """Every training run in a manifest, oldest first."""
    from conceptlib.schemas.records import TrainingRunRecord

    runs = []
    for run in m.training_runs:
        tr = run.model_dump()
        tr.pop("created_at", None)
        runs.append(TrainingRunRecord(**tr))
    return runs


def fetch_concept(
    session: _Session,
    state: RemoteState,
    *,
    filename: str | None = None,
    name: str | None = None,
) -> Fetched:
    """Download, verify and parse the concept a repo holds. Touches no catalog."""
    from conceptlib.registry.formats import read_embedding_bytes
    from conceptlib.registry.modelcard import parse_card

    layout = detect_layout(state.repo_id, state.files, filename)
    repo_name = state.repo_id.split("/", 1)[1]
    if layout.kind == "conceptlib":
        folder = _dir_of(layout.manifest or "concept.json")
        m, emb, data, previews = _fetch_manifest_concept(session, state, folder)
        epath = folder + m.embedding.path
        extra = dict(m.extra)
        if m.source != "hub" or m.source_ref:
            extra["origin"] = {"source": m.source, "source_ref": m.source_ref}
        return _fetched_from_manifest(
            m,
            emb,
            data,
            previews,
            repo_id=state.repo_id,
            revision=state.revision,
            commit=state.commit,
            file=epath,
            layout=layout.kind,
            name=name or m.name,
            source="hub",
            source_ref=state.ref(epath),
            extra=extra,
        )
    assert layout.embedding is not None
    wanted = {layout.embedding: MAX_EMBEDDING_FILE_BYTES}
    if layout.companion:
        wanted[layout.companion] = MAX_EMBEDDING_FILE_BYTES
    for small in (layout.token_file, layout.type_file, layout.card):
        if small:
            wanted[small] = MAX_SMALL_FILE
    got = session.fetch_many(state, wanted)
    data = got[layout.embedding]
    companion = got.get(layout.companion) if layout.companion else None
    token_text = _text(got[layout.token_file]) if layout.token_file else None
    type_text = _text(got[layout.type_file]) if layout.type_file else None
    card = parse_card(got[layout.card]) if layout.card else None
    parsed = read_embedding_bytes(data, path=state.ref(layout.embedding), companion=companion)
    stem = os.path.splitext(layout.embedding.rsplit("/", 1)[-1])[0]
    generic = stem.lower().startswith("learned_embeds")
    if name:  # the user's choice: an ordinary word is refused when registering, not renamed
        final_name, renamed_from = name, None
    else:
        final_name, renamed_from = _distinct_name(derive_name(repo_name if generic else stem))
    token = token_text or (
        parsed.token if parsed.token and parsed.token not in ("emb_params", "*") else None
    )
    token = token or final_name
    try:
        token = validate_token(token.splitlines()[0].strip())
    except ConceptlibError:
        token = final_name
    if _common_word(token):
        token = final_name
    kind = _kind_from(type_text) or (card.kind if card else None)
    if kind is None and "negative" in f"{repo_name} {stem}".lower():
        kind = "negative"
    if kind is None:
        kind = "object" if layout.kind == "sd-concepts-library" else "other"
    extra: dict[str, Any] = {"hub_layout": layout.kind, "format": parsed.format}
    if getattr(parsed, "metadata", None):
        extra["file_metadata"] = {str(k): str(v) for k, v in dict(parsed.metadata).items()}
    if parsed.name_hint and parsed.name_hint != final_name:
        extra["name_in_file"] = parsed.name_hint
    if renamed_from:
        extra["renamed_from"] = renamed_from
        extra["rename_reason"] = "ordinary word: as a trigger it would change its meaning"
    return Fetched(
        repo_id=state.repo_id,
        revision=state.revision,
        commit=state.commit,
        file=layout.embedding,
        layout=layout.kind,
        embedding=parsed.embedding,
        name=final_name,
        token=token,
        kind=kind,
        file_bytes=data,
        source="hub",
        source_ref=state.ref(layout.embedding),
        base_model=card.base_model if card else None,
        tags=_clean_tags(card.tags) if card else [],
        license=card.license if card else None,
        extra=extra,
    )


def _common_word(handle: str) -> bool:
    from conceptlib.schemas.vocabulary import is_common_word

    return is_common_word(handle)


def _distinct_name(derived: str) -> tuple[str, str | None]:
    """A name made from a repo or file name that is an ordinary word gets ``-ti`` (as
    ``import`` does): as a trigger, "painting" would change what painting means."""
    if _common_word(derived):
        return f"{derived}-ti", derived
    return derived, None


def _same_origin(info: EmbeddingInfo, repo_id: str) -> bool:
    if info.source_ref and info.source_ref.startswith(f"{repo_id}@"):
        return True
    return any(s.repo_id == repo_id for s in info.syncs)


def _versioned_handles(info: EmbeddingInfo) -> tuple[str, str]:
    """The name and token an older version is kept under: ``cat-toy@v1``, ``<cat-toy@v1>``."""
    suffix = f"@v{info.version}"
    inner = strip_brackets(info.token)
    token = f"<{inner}{suffix}>" if inner != info.token else f"{inner}{suffix}"
    return f"{info.name}{suffix}", token


def _retire(lib: Library, info: EmbeddingInfo) -> EmbeddingInfo:
    """Keep an older version under ``name@vN`` (and token ``<token@vN>``)."""
    new_name, new_token = _versioned_handles(info)
    try:
        return lib.rename(info.name, new_name, token=new_token)
    except NameCollision as exc:
        raise NameCollision(
            f"cannot keep the older version of {info.name!r} as {new_name!r}: "
            f"{exc.existing!r} uses that handle",
            existing=exc.existing,
        ) from None


def _restore(lib: Library, retired: EmbeddingInfo, original: EmbeddingInfo) -> None:
    from conceptlib.catalog import dialect
    from conceptlib.catalog.models import EmbeddingRow

    with lib.catalog.write() as session:
        row = session.get(EmbeddingRow, retired.id)
        row.name, row.name_key = original.name, name_key(original.name)
        row.token, row.token_key = original.token, name_key(original.token)
        session.flush()
        dialect.refresh_fts(session.connection(), lib.catalog.dialect_name, retired.id)


def _add(lib: Library, f: Fetched, version: int) -> EmbeddingInfo:
    return lib.add_embedding(
        f.embedding,
        name=f.name,
        token=f.token,
        kind=f.kind,
        source=f.source,
        source_ref=f.source_ref,
        file_bytes=f.file_bytes,
        file_sha256=f.file_sha256,
        base_model=f.base_model,
        base_model_fingerprint=f.base_model_fingerprint,
        initializer=f.initializer,
        training_images_hash=f.training_images_hash,
        training_image_count=f.training_image_count,
        tags=f.tags,
        description=f.description,
        license=f.license,
        previews=f.previews,
        training_runs=f.training_runs,
        parents=f.parents,
        extra=f.extra,
        version=version,
    )


def register(lib: Library, f: Fetched, *, sync_file: str | None = None) -> PullOutcome:
    """Put a fetched concept in the catalog: new entry, new version, or nothing.

    Same vectors already present: nothing is added (the sync is recorded). A name held
    by an entry from the same repo: the old entry is kept as ``name@vN`` and the new one
    becomes ``name`` with version N+1. A name held by anything else: NameCollision.
    """
    sync_file = sync_file or f.file
    base = PullOutcome(
        repo_id=f.repo_id,
        status="present",
        commit=f.commit,
        file=f.file,
        layout=f.layout,
        source_ref=f.source_ref,
    )
    existing = lib.by_tensor_sha256(f.tensor_sha256)
    if existing is not None:
        _record_sync(lib, existing.name, f.repo_id, f.revision, f.commit, "pull", sync_file)
        base.name, base.version = existing.name, existing.version
        return base
    current = lib.find(f.name)
    if current is None:
        info = _add(lib, f, f.version or 1)
        _record_sync(lib, info.name, f.repo_id, f.revision, f.commit, "pull", sync_file)
        base.status, base.name, base.version = "pulled", info.name, info.version
        return base
    if not _same_origin(current, f.repo_id):
        raise NameCollision(
            f"the name {f.name!r} is taken by an entry from "
            f"{current.source_ref or current.source}; pulled vectors differ",
            hint="choose another name with --name",
            existing=current.name,
        )
    version = max(current.version + 1, f.version or 0)
    retired = _retire(lib, current)
    try:
        info = _add(lib, f, version)
    except BaseException:
        _restore(lib, retired, current)
        raise
    _record_sync(lib, info.name, f.repo_id, f.revision, f.commit, "pull", sync_file)
    base.status, base.name, base.version, base.previous = (
        "new-version",
        info.name,
        version,
        retired.name,
    )
    return base


def _hub_refs(lib: Library) -> list[tuple[str, EmbeddingInfo]]:
    """``(source_ref, entry)`` of every entry pulled from the Hub (one catalog query)."""
    return [(e.source_ref, e) for e in lib.search(source="hub") if e.source_ref]


def _already_pulled(
    refs: Sequence[tuple[str, EmbeddingInfo]], state: RemoteState, filename: str | None
) -> EmbeddingInfo | None:
    prefix = f"{state.repo_id}@{state.commit}/"
    for ref, e in refs:
        if ref.startswith(prefix) and (filename is None or ref == prefix + filename):
            return e
    return None


def _present(state: RemoteState, e: EmbeddingInfo) -> PullOutcome:
    return PullOutcome(
        repo_id=state.repo_id,
        status="present",
        name=e.name,
        version=e.version,
        commit=state.commit,
        file=(e.source_ref or "").split("/", 2)[-1] or None,
        source_ref=e.source_ref,
    )


def pull(
    lib: Library,
    spec: str,
    *,
    filename: str | None = None,
    name: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PullOutcome:
    """Pull one repo (``NS/NAME[@REVISION]``) into the catalog.

    Lists the repo once, downloads only the files the concept needs, verifies their
    size and hash, parses, and only then registers. The same revision again is a no-op.

    Raises:
        HubUnsafePath, HubIntegrityError, HubNoEmbedding, AmbiguousEmbedding,
        HubNotFound, HubAuthError, HubOffline, HubUnavailable, NameCollision,
        and the file errors of the format readers.
    """
    repo_id, revision = _parse_spec(spec)
    session = _Session(HubSettings.from_env(token=token, endpoint=endpoint))
    state = session.state(repo_id, revision)
    done = _already_pulled(_hub_refs(lib), state, filename)
    if done is not None:
        return _present(state, done)
    fetched = fetch_concept(session, state, filename=filename, name=name)
    return register(lib, fetched)


def pull_many(
    lib: Library,
    *,
    author: str | None = None,
    search: str | None = None,
    tags: Sequence[str] = (),
    limit: int | None = None,
    concurrency: int | None = None,
    on_progress: ProgressCallback | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PullReport:
    """Pull every repo matching ``author``/``search``/``tags`` (at most ``limit``).

    Downloads run ``concurrency`` at a time (default ``CONCEPTLIB_HUB_CONCURRENCY`` or 8);
    registration happens in this thread, one repo at a time. One failure never stops the
    rest: each repo ends ``pulled``, ``new-version``, ``present`` or ``failed``.
    """
    if not (author or search or tags):
        raise UsageError("bulk pull needs --author, --search or --tag")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1 (got {limit})")
    started = time.monotonic()
    settings = HubSettings.from_env(token=token, endpoint=endpoint)
    session = _Session(settings)
    repo_ids = session.list_repo_ids(author=author, search=search, tags=tags, limit=limit)
    report = PullReport()
    refs = _hub_refs(lib)  # read here: workers never touch the catalog

    def work(rid: str) -> Fetched | PullOutcome:
        state = session.state(rid, "main")
        done = _already_pulled(refs, state, None)
        return _present(state, done) if done is not None else fetch_concept(session, state)

    def registered(rid: str, result: Fetched | PullOutcome) -> PullOutcome:
        return result if isinstance(result, PullOutcome) else register(lib, result)

    report.outcomes = _run_bounded(
        repo_ids, work, registered, concurrency or settings.concurrency, on_progress, session
    )
    report.wall_s = time.monotonic() - started
    return report


def _failure(key: str, exc: BaseException, session: _Session) -> PullOutcome:
    if isinstance(exc, ConceptlibError):
        return PullOutcome(
            repo_id=key,
            status="failed",
            error=session._redact(exc.message),
            code=exc.code,
            hint=exc.hint,
        )
    return PullOutcome(
        repo_id=key,
        status="failed",
        error=session._redact(f"{type(exc).__name__}: {_first_line(str(exc))}"),
        code="internal",
    )


def _run_bounded(
    keys: Sequence[str],
    work: Callable[[str], Any],
    finish: Callable[[str, Any], PullOutcome],
    concurrency: int,
    on_progress: ProgressCallback | None,
    session: _Session,
) -> list[PullOutcome]:
    """Run ``work`` on a bounded pool; ``finish`` each result here, in completion order."""
    outcomes: dict[str, PullOutcome] = {}
    total = len(keys)
    if on_progress:
        on_progress(0, total, "")
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, total or 1))) as pool:
        futures = {pool.submit(work, k): k for k in keys}
        for done, fut in enumerate(as_completed(futures), start=1):
            key = futures[fut]
            try:
                outcomes[key] = finish(key, fut.result())
            except Exception as exc:  # one repo's failure never stops the others
                outcomes[key] = _failure(key, exc, session)
            if on_progress:
                on_progress(done, total, key)
    return [outcomes[k] for k in keys]


def pull_library(
    lib: Library,
    spec: str,
    *,
    concurrency: int | None = None,
    on_progress: ProgressCallback | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PullReport:
    """Pull a library repo (``library.json``) into the catalog with nothing lost.

    Each concept keeps its name, token, kind, tags, provenance (source and reference),
    base model, previews, training metadata, parents, extra metadata and version; the
    library repo and commit are recorded as sync state. Concepts whose vectors are
    already present are not downloaded at all.
    """
    from pydantic import ValidationError

    from conceptlib.schemas.manifest import LibraryIndex

    repo_id, revision = _parse_spec(spec)
    started = time.monotonic()
    settings = HubSettings.from_env(token=token, endpoint=endpoint)
    session = _Session(settings)
    state = session.state(repo_id, revision)
    if "library.json" not in state.files:
        hint = f"pull it with: conceptlib pull {repo_id}" if "concept.json" in state.files else None
        raise HubNoEmbedding(f"{repo_id} has no library.json: not a conceptlib library", hint=hint)
    raw = session.fetch(state, "library.json", max_size=MAX_SMALL_FILE)
    try:
        index = LibraryIndex.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.errors() else {}
        raise HubError(
            f"{state.ref('library.json')} is not a valid library index "
            f"({'.'.join(str(x) for x in first.get('loc', ()))}: {first.get('msg', 'invalid')})"
        ) from None
    by_path = {e.path: e for e in index.concepts}
    # Concepts whose vectors are already here need no download (looked up in this thread).
    present = {p: lib.by_tensor_sha256(e.tensor_sha256) for p, e in by_path.items()}

    def work(path: str) -> Fetched | PullOutcome:
        entry = by_path[path]
        if present[path] is not None:
            info = present[path]
            return PullOutcome(
                repo_id=repo_id,
                status="present",
                name=info.name,
                version=info.version,
                commit=state.commit,
                file=f"{path}/{EMBEDDING_FILENAME}",
            )
        folder = path.rstrip("/") + "/"
        m, emb, data, previews = _fetch_manifest_concept(session, state, folder)
        if m.tensor_sha256 != entry.tensor_sha256 or m.name != entry.name:
            raise HubIntegrityError(
                f"{state.ref(folder + 'concept.json')} does not match its library.json entry",
                repo_id=repo_id,
            )
        return _fetched_from_manifest(
            m,
            emb,
            data,
            previews,
            repo_id=repo_id,
            revision=revision,
            commit=state.commit,
            file=folder + m.embedding.path,
            layout="conceptlib-library",
            name=m.name,
            source=m.source,
            source_ref=m.source_ref,
            extra=dict(m.extra),
        )

    def registered(path: str, result: Fetched | PullOutcome) -> PullOutcome:
        if isinstance(result, PullOutcome):
            if result.name:
                _record_sync(
                    lib, result.name, repo_id, revision, state.commit, "pull", result.file or path
                )
            return result
        return register(lib, result)

    outcomes = _run_bounded(
        list(by_path), work, registered, concurrency or settings.concurrency, on_progress, session
    )
    for o, path in zip(outcomes, by_path, strict=True):
        o.repo_id = f"{repo_id}:{path}" if o.status == "failed" else o.repo_id
        if o.name is None and o.status == "failed":
            o.name = by_path[path].name
    return PullReport(
        outcomes=outcomes, repo_id=repo_id, commit=state.commit, wall_s=time.monotonic() - started
    )


__all__ = [
    "Fetched",
    "HubSettings",
    "Layout",
    "PullOutcome",
    "PullReport",
    "PushResult",
    "detect_layout",
    "git_blob_sha1",
    "pull",
    "pull_library",
    "pull_many",
    "push",
    "push_library",
    "redact",
    "resolve_token",
    "unsafe_reason",
]

"""The session over ``huggingface_hub``: one client, bounded retries, typed errors.

- :class:`RemoteFile`, :class:`RemoteState`: a repo's listing at one commit (from the
  server, or from the local cache when offline).
- ``_Session``: listing, verified downloads, repo creation, commits and repo search,
  with every client exception translated into a token-free
  :class:`~conceptlib.errors.HubError`.
- The status, ``Retry-After`` and transport-error helpers that decide what is retried,
  and :func:`git_blob_sha1` / ``_verify`` that check downloaded bytes against the
  listing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conceptlib.errors import (
    ConceptlibError,
    HubAuthError,
    HubConflict,
    HubError,
    HubIntegrityError,
    HubNotFound,
    HubOffline,
    HubUnavailable,
    HubUnsafePath,
)
from conceptlib.registry.hub.repos import check_remote_paths, unsafe_reason
from conceptlib.registry.hub.settings import HubSettings, _remember_secret, redact

#: The name the Hub sync logger had before the hub package was split (kept for users'
#: logging configuration).
logger = logging.getLogger("conceptlib.registry.hub")

MAX_LISTED_FILES = 20_000
#: Files of one concept downloaded at a time (as snapshot_download does within a repo).
FILES_AT_A_TIME = 4
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


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


def git_blob_sha1(data: bytes) -> str:
    """The git blob id the Hub lists as a file's ``oid``/``blobId``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


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

"""Pushing a concept to its own repo, or a selection of the catalog as a library repo.

A push compares the files it would write with the remote listing and commits only
when something differs, with ``parent_commit`` set, after checking that the branch is
where the last sync left it; the sync is recorded in the catalog.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from conceptlib.errors import HubAuthError, HubConflict, HubNotFound, HubOffline, UsageError
from conceptlib.registry.formats.write import INVOKEAI_FILENAME
from conceptlib.registry.hub.manifest import check_for_ui, concept_repo_files, library_repo_files
from conceptlib.registry.hub.repos import (
    EMBEDDING_FILENAME,
    LIBRARY_CONCEPT_DIR,
    PREVIEW_DIR,
    _check_repo_id,
    repo_name_for,
)
from conceptlib.registry.hub.session import RemoteFile, _Session, _verify
from conceptlib.registry.hub.settings import HubSettings
from conceptlib.schemas.names import name_key

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo, SyncInfo


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
    for_ui: str | None = None,
) -> PushResult:
    """Push one concept to its own repo (created when missing).

    Pushing an unchanged concept makes no commit. A push refuses to overwrite a
    branch that moved since this concept's last sync with the repo, unless ``force``.
    ``for_ui="invokeai"`` adds ``learned_embeds.bin``, the file InvokeAI installs a
    repo by; a push without it removes that file from the repo (it would hold stale
    vectors after a change).

    Raises:
        UsageError: ``for_ui`` other than ``"invokeai"``.
        NotFound: no concept named ``name``.
        HubAuthError: no token, a rejected token, or one without write access.
        HubConflict: the remote branch moved since the last sync (or during the push).
        HubUnavailable: the Hub kept failing after the bounded retries.
    """
    check_for_ui(for_ui)
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
    files = concept_repo_files(lib, info, repo_id=repo_id, for_ui=for_ui)
    status, commit, changed, deleted, notes = _push_files(
        session,
        repo_id,
        files,
        managed=lambda p: p.startswith(f"{PREVIEW_DIR}/") or p == INVOKEAI_FILENAME,
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
    for_ui: str | None = None,
) -> PushResult:
    """Push a chosen part of the catalog as one library repo with a ``library.json`` index.

    The selection is every concept matching ``search`` and all ``tags`` (plus any
    ``names``); with no selector at all, the whole catalog. Concepts that left the
    selection are deleted from the repo. Unchanged libraries make no commit.
    ``for_ui="invokeai"`` adds each concept folder's ``learned_embeds.bin`` (as
    :func:`push`).
    """
    _check_repo_id(repo_id)
    check_for_ui(for_ui)
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
    _, files = library_repo_files(lib, infos, repo_id=repo_id, selection=selection, for_ui=for_ui)
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

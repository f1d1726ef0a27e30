"""An in-memory Hugging Face Hub-compatible server for the tests.

It implements the HTTP surface that the real ``huggingface_hub`` client uses for
model repos (see ``reference/hub-protocol.md``): whoami, repo creation, repo info,
tree listing, model listing with ``Link`` pagination, commit history, preupload,
ndjson commits (files travel inline as base64, so no LFS or xet is ever needed),
README validation and ``resolve`` downloads with ``HEAD``/``GET``/``Range``.

Standard library only: a :class:`http.server.ThreadingHTTPServer` on ``127.0.0.1``
in a daemon thread. Repos live in memory with their full commit history.

Tests drive it through a small Python API:

- accounts: :meth:`HubServer.add_user` (tokens may be read-only);
- seeding: :meth:`HubServer.create_repo`, :meth:`HubServer.commit` (``raw=True``
  stores file names the real Hub would refuse, such as ``../x``);
- faults: :meth:`HubServer.inject` (a status such as 429 with ``Retry-After``, 503,
  a truncated body, altered bytes, a body shorter than announced, a server that
  ignores ``Range``), each for a bounded number of matching requests;
- a request log: :attr:`HubServer.requests`, :meth:`HubServer.count`.

It never sends ``X-Xet-Hash`` (that would switch the client to xet) and always
reads a request's body before answering, so keep-alive connections stay in sync.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode

GITATTRIBUTES = (
    b"*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.pt filter=lfs diff=lfs merge=lfs -text\n"
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
)


def git_blob_sha1(data: bytes) -> str:
    """The git blob id of ``data``: what the Hub reports as ``oid``/``blobId``/``ETag``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Account:
    name: str
    token: str
    can_write: bool = True
    orgs: tuple[str, ...] = ()


@dataclass
class Commit:
    id: str
    parent: str | None
    files: dict[str, bytes]
    title: str
    message: str
    date: str
    author: str


@dataclass
class Repo:
    id: str
    owner: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    @property
    def namespace(self) -> str:
        return self.id.split("/", 1)[0]


@dataclass
class Fault:
    """A misbehaviour applied to the next ``times`` requests that match.

    Attributes:
        kind: ``"status"`` (answer ``status``), ``"truncate"`` (announce the full
            length, send half, close), ``"short"`` (send half with an honest, smaller
            ``Content-Length``), ``"alter"`` (same length, different bytes),
            ``"ignore_range"`` (answer 200 with the whole body to a Range request).
            A ``"status"`` fault with ``echo_auth=True`` copies the request's
            ``authorization`` header into its error message, as a careless proxy might.
        method: ``"GET"``, ``"HEAD"``, ... or None for any.
        path: a regular expression searched in the decoded request path.
        times: how many matching requests it affects; None for every one.
    """

    kind: str
    path: str = ""
    method: str | None = None
    status: int = 503
    retry_after: float | None = None
    times: int | None = 1
    message: str = "injected fault"
    echo_auth: bool = False
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and self.method != method:
            return False
        return re.search(self.path, path) is not None


@dataclass
class LoggedRequest:
    method: str
    path: str
    query: str
    status: int
    user: str | None
    sent: int = 0  # body bytes sent back


class _HttpError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}


def _front_matter(readme: bytes) -> dict[str, Any]:
    text = readme.decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    parts = text.split("\n---", 1)
    if len(parts) != 2:
        return {}
    try:
        import yaml

        data = yaml.safe_load(parts[0][3:])
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def _repo_tags(files: dict[str, bytes]) -> list[str]:
    """Tags the Hub derives from a model card: ``tags`` plus library, license, base model."""
    meta = _front_matter(files.get("README.md", b""))
    tags: list[str] = []
    raw = meta.get("tags") or []
    if isinstance(raw, str):
        raw = [raw]
    tags.extend(str(t) for t in raw)
    if meta.get("library_name"):
        tags.append(str(meta["library_name"]))
    if meta.get("license"):
        tags.append(f"license:{meta['license']}")
    base = meta.get("base_model")
    for b in [base] if isinstance(base, str) else base or []:
        tags.append(f"base_model:{b}")
    return list(dict.fromkeys(tags))


class HubServer:
    """The server and its state. Use as a context manager or call start/stop."""

    def __init__(self, *, page_size: int = 50, latency_s: float = 0.0) -> None:
        self.page_size = page_size
        #: added before every answer, to stand for a network round trip (benchmarks)
        self.latency_s = latency_s
        self.accounts: dict[str, Account] = {}
        self.repos: dict[str, Repo] = {}
        self.faults: list[Fault] = []
        self.requests: list[LoggedRequest] = []
        self.unhandled: list[str] = []
        self._lock = threading.RLock()
        self._counter = itertools.count(1)
        self._httpd: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0) -> HubServer:
        handler = type("BoundHandler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        # Keep-alive connections outlive serve_forever(): close them, or a client's pooled
        # connection would go on talking to this stopped server.
        with self._lock:
            conns, self._connections = list(self._connections), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget repos, faults and the request log (accounts stay)."""
        with self._lock:
            self.repos.clear()
            self.faults.clear()
            self.requests.clear()
            self.unhandled.clear()

    # ------------------------------------------------------------------ accounts

    def add_user(
        self, name: str, token: str, *, can_write: bool = True, orgs: tuple[str, ...] = ()
    ) -> Account:
        acct = Account(name=name, token=token, can_write=can_write, orgs=tuple(orgs))
        with self._lock:
            self.accounts[token] = acct
        return acct

    # ------------------------------------------------------------------ repos (admin API)

    def _new_commit_id(self, repo_id: str, parent: str | None) -> str:
        n = next(self._counter)
        return hashlib.sha1(f"{repo_id}:{n}:{parent}".encode()).hexdigest()

    def create_repo(self, repo_id: str, *, private: bool = False, owner: str | None = None) -> Repo:
        """Create a repo with the initial commit the Hub makes (``.gitattributes``)."""
        with self._lock:
            if repo_id in self.repos:
                return self.repos[repo_id]
            repo = Repo(
                id=repo_id, owner=owner or repo_id.split("/")[0], private=private, created=_now()
            )
            cid = self._new_commit_id(repo_id, None)
            repo.commits[cid] = Commit(
                cid,
                None,
                {".gitattributes": GITATTRIBUTES},
                "initial commit",
                "",
                _now(),
                repo.owner,
            )
            repo.branches["main"] = cid
            self.repos[repo_id] = repo
            return repo

    def commit(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        deletions: tuple[str, ...] = (),
        message: str = "seed",
        branch: str = "main",
        author: str = "admin",
        replace: bool = False,
    ) -> str:
        """Commit directly, bypassing HTTP and path checks (so ``../x`` can be stored).

        Creates the repo when missing. ``replace=True`` drops every file not in ``files``.
        """
        with self._lock:
            repo = self.repos.get(repo_id) or self.create_repo(repo_id)
            head = repo.branches.get(branch)
            current = dict(repo.commits[head].files) if head else {}
            if replace:
                current = {k: v for k, v in current.items() if k == ".gitattributes"}
            for path in deletions:
                current.pop(path, None)
            current.update(files)
            cid = self._new_commit_id(repo_id, head)
            repo.commits[cid] = Commit(cid, head, current, message, "", _now(), author)
            repo.branches[branch] = cid
            return cid

    def head(self, repo_id: str, branch: str = "main") -> str:
        with self._lock:
            return self.repos[repo_id].branches[branch]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            repo = self.repos[repo_id]
            cid = repo.branches.get(revision, revision)
            return dict(repo.commits[cid].files)

    def commit_count(self, repo_id: str) -> int:
        with self._lock:
            return len(self.repos[repo_id].commits)

    def tags(self, repo_id: str) -> list[str]:
        return _repo_tags(self.files(repo_id))

    # ------------------------------------------------------------------ faults and log

    def inject(self, kind: str = "status", **kw: Any) -> Fault:
        """Add a :class:`Fault`; see its docstring for the kinds and fields."""
        fault = Fault(kind=kind, **kw)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def take_fault(self, method: str, path: str, kinds: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.kind in kinds and fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    def count(self, method: str | None = None, path: str = "") -> int:
        """How many logged requests match ``method`` and the regex ``path``."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (method is None or r.method == method) and re.search(path, r.path)
            )

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    # ------------------------------------------------------------------ helpers for the handler

    def account_for(self, auth: str | None) -> Account | None:
        """The account for an ``authorization`` header; raises 401 for unknown tokens."""
        if not auth:
            return None
        if not auth.lower().startswith("bearer "):
            raise _HttpError(401, "Invalid credentials in Authorization header")
        token = auth[7:].strip()
        with self._lock:
            acct = self.accounts.get(token)
        if acct is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return acct

    def can_read(self, repo: Repo, acct: Account | None) -> bool:
        if not repo.private:
            return True
        return acct is not None and (acct.name == repo.namespace or repo.namespace in acct.orgs)

    def get_repo(self, repo_id: str, acct: Account | None) -> Repo:
        with self._lock:
            repo = self.repos.get(repo_id)
        if repo is None or not self.can_read(repo, acct):
            status = 401 if (repo is not None and acct is None) else 404
            raise _HttpError(status, "Repository not found", "RepoNotFound")
        return repo

    def check_write(self, namespace: str, acct: Account | None) -> Account:
        if acct is None:
            raise _HttpError(401, "You must be authenticated to write to the Hub")
        if namespace != acct.name and namespace not in acct.orgs:
            raise _HttpError(
                403, f"You don't have the rights to write to the namespace {namespace}"
            )
        if not acct.can_write:
            raise _HttpError(
                403, "This token has read-only access; write access is required for this action"
            )
        return acct

    def resolve_rev(self, repo: Repo, rev: str) -> Commit:
        with self._lock:
            cid = repo.branches.get(rev)
            if cid is None and re.fullmatch(r"[0-9a-f]{40}", rev) and rev in repo.commits:
                cid = rev
            if cid is None:
                raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return repo.commits[cid]


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "conceptlib-test-hub/1.0"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and delayed ACKs add ~40 ms to every request on loopback.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._connections.add(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    # ------------------------------------------------------------------ plumbing

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            for _ in range(1_000_000):
                size_line = self.rfile.readline().strip()
                size = int(size_line.split(b";")[0] or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        send_body: bool = True,
        content_length: int | None = None,
    ) -> None:
        self._status = status
        if send_body:
            self._sent = len(body) if content_length is None else min(len(body), content_length)
        self._log()  # before answering: a client that got its answer finds it logged
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header(
            "Content-Length", str(len(body) if content_length is None else content_length)
        )
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode(), headers=headers)

    def _error(self, err: _HttpError, *, send_body: bool = True) -> None:
        headers = {"X-Error-Message": err.message, **err.headers}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(
            err.status,
            json.dumps({"error": err.message}).encode(),
            headers=headers,
            send_body=send_body,
        )

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        if self.hub.latency_s:
            time.sleep(self.hub.latency_s)
        raw_path, _, query = self.path.partition("?")
        parts = [unquote(p) for p in raw_path.split("/")[1:]]
        path = "/" + "/".join(parts)
        self._status = 0
        self._sent = 0
        self._logged = False
        self._method, self._path, self._user = method, path, None
        self._query = parse_qs(query, keep_blank_values=True)
        self._raw_query = query
        try:
            fault = self.hub.take_fault(method, path, ("status",))
            if fault is not None:
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(int(fault.retry_after))
                message = fault.message
                if fault.echo_auth:
                    message += f" (you sent: {self.headers.get('authorization')})"
                raise _HttpError(fault.status, message, headers=headers)
            acct = self.hub.account_for(self.headers.get("authorization"))
            self._user = acct.name if acct else None
            self._route(method, parts, body, acct)
        except _HttpError as err:
            self._error(err, send_body=method != "HEAD")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as exc:  # a bug in the server: report it as a 500
            self.hub.unhandled.append(f"{method} {path}: {exc!r}")
            self._error(_HttpError(500, f"test server error: {exc!r}"), send_body=method != "HEAD")
        finally:
            self._log()

    def _log(self) -> None:
        if self._logged:
            return
        self._logged = True
        entry = LoggedRequest(
            self._method, self._path, self._raw_query, self._status, self._user, self._sent
        )
        with self.hub._lock:
            self.hub.requests.append(entry)

    # ------------------------------------------------------------------ routing

    def _route(self, method: str, parts: list[str], body: bytes, acct: Account | None) -> None:
        hub = self.hub
        if parts[:1] == ["api"]:
            rest = parts[1:]
            if rest == ["whoami-v2"] and method == "GET":
                return self._whoami(acct)
            if rest == ["agent-harnesses"] and method == "GET":
                # the client's best-effort agent detection: an empty registry
                return self._json(200, {"standardEnvVars": [], "harnesses": {}})
            if rest == ["repos", "create"] and method == "POST":
                return self._create(body, acct)
            if rest == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(body)
            if rest == ["models"] and method == "GET":
                return self._list_models(acct)
            if len(rest) >= 3 and rest[0] == "models":
                repo_id = f"{rest[1]}/{rest[2]}"
                tail = rest[3:]
                if method == "GET" and not tail:
                    return self._model_info(hub.get_repo(repo_id, acct), "main")
                if method == "GET" and len(tail) == 2 and tail[0] == "revision":
                    return self._model_info(hub.get_repo(repo_id, acct), tail[1])
                if method == "GET" and len(tail) >= 2 and tail[0] == "tree":
                    return self._tree(hub.get_repo(repo_id, acct), tail[1], "/".join(tail[2:]))
                if method == "GET" and len(tail) == 2 and tail[0] == "commits":
                    return self._commits(hub.get_repo(repo_id, acct), tail[1])
                if method == "POST" and len(tail) == 2 and tail[0] == "preupload":
                    return self._preupload(repo_id, tail[1], body, acct)
                if method == "POST" and len(tail) == 2 and tail[0] == "commit":
                    return self._commit(repo_id, tail[1], body, acct)
                if method == "POST" and len(tail) == 2 and tail[0] == "paths-info":
                    return self._paths_info(hub.get_repo(repo_id, acct), tail[1], body)
        elif len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
            repo = hub.get_repo(f"{parts[0]}/{parts[1]}", acct)
            return self._resolve(method, repo, parts[3], "/".join(parts[4:]))
        hub.unhandled.append(f"{method} {self.path}")
        raise _HttpError(404, f"not handled by the test server: {method} {self.path}")

    # ------------------------------------------------------------------ endpoints

    def _whoami(self, acct: Account | None) -> None:
        if acct is None:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        role = "write" if acct.can_write else "read"
        self._json(
            200,
            {
                "type": "user",
                "id": hashlib.sha1(acct.name.encode()).hexdigest()[:24],
                "name": acct.name,
                "fullname": acct.name,
                "orgs": [{"type": "org", "name": o} for o in acct.orgs],
                "auth": {
                    "type": "access_token",
                    "accessToken": {"displayName": "test", "role": role},
                },
            },
        )

    def _create(self, body: bytes, acct: Account | None) -> None:
        payload = json.loads(body or b"{}")
        name = payload.get("name") or ""
        namespace = payload.get("organization") or (acct.name if acct else "")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name):
            raise _HttpError(400, f"Invalid repo name {name!r}")
        self.hub.check_write(namespace, acct)
        repo_id = f"{namespace}/{name}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = {"url": f"{self.hub.url}/{repo_id}", "name": repo_id}
        with self.hub._lock:
            if repo_id in self.hub.repos:
                return self._json(409, {**url, "error": "You already created this model repo"})
            self.hub.create_repo(repo_id, private=private, owner=namespace)
        self._json(200, url)

    def _validate_yaml(self, body: bytes) -> None:
        payload = json.loads(body or b"{}")
        content = payload.get("content", "")
        if content.startswith("---"):
            try:
                import yaml

                yaml.safe_load(content.split("\n---", 1)[0][3:])
            except Exception as exc:
                raise _HttpError(400, f"Invalid YAML in README.md: {exc}") from None
        self._json(200, {"errors": [], "warnings": []})

    def _info_dict(self, repo: Repo, commit: Commit, *, blobs: bool) -> dict[str, Any]:
        siblings = []
        for path in sorted(commit.files):
            data = commit.files[path]
            sib: dict[str, Any] = {"rfilename": path}
            if blobs:
                sib.update(size=len(data), blobId=git_blob_sha1(data))
            siblings.append(sib)
        tags = _repo_tags(commit.files)
        meta = _front_matter(commit.files.get("README.md", b""))
        return {
            "_id": hashlib.sha1(repo.id.encode()).hexdigest()[:24],
            "id": repo.id,
            "modelId": repo.id,
            "author": repo.namespace,
            "sha": commit.id,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "tags": tags,
            "library_name": meta.get("library_name"),
            "siblings": siblings,
        }

    def _model_info(self, repo: Repo, rev: str) -> None:
        commit = self.hub.resolve_rev(repo, rev)
        blobs = self._query.get("blobs", ["false"])[0].lower() == "true"
        self._json(200, self._info_dict(repo, commit, blobs=blobs))

    def _list_models(self, acct: Account | None) -> None:
        q = self._query
        author = (q.get("author") or [None])[0]
        search = ((q.get("search") or [""])[0]).lower()
        filters = q.get("filter") or []
        limit = int((q.get("limit") or ["0"])[0] or 0) or None
        cursor = int((q.get("cursor") or ["0"])[0] or 0)
        items = []
        with self.hub._lock:
            repos = sorted(self.hub.repos.values(), key=lambda r: r.id)
        for repo in repos:
            if not self.hub.can_read(repo, acct):
                continue
            if author and repo.namespace != author:
                continue
            if search and search not in repo.id.lower():
                continue
            commit = repo.commits[repo.branches["main"]]
            tags = _repo_tags(commit.files)
            if any(f not in tags for f in filters):
                continue
            info = self._info_dict(repo, commit, blobs=False)
            info.pop("siblings")
            items.append(info)
        if limit is not None:
            items = items[:limit]
        page = items[cursor : cursor + self.hub.page_size]
        headers = {}
        if cursor + self.hub.page_size < len(items):
            params = [(k, v) for k, vs in q.items() if k != "cursor" for v in vs]
            params.append(("cursor", str(cursor + self.hub.page_size)))
            headers["Link"] = f'<{self.hub.url}/api/models?{urlencode(params)}>; rel="next"'
        self._json(200, page, headers)

    def _tree(self, repo: Repo, rev: str, path: str) -> None:
        commit = self.hub.resolve_rev(repo, rev)
        recursive = self._query.get("recursive", ["false"])[0].lower() == "true"
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit.files):
            raise _HttpError(
                404,
                f"{path} does not exist on {rev}",
                "EntryNotFound",
                {"X-Repo-Commit": commit.id},
            )
        entries: dict[str, dict[str, Any]] = {}
        for fpath in sorted(commit.files):
            if not fpath.startswith(prefix):
                continue
            rel = fpath[len(prefix) :]
            pieces = rel.split("/")
            for i in range(1, len(pieces)):
                if not recursive and i > 1:
                    break
                d = prefix + "/".join(pieces[:i])
                entries.setdefault(
                    d, {"type": "directory", "path": d, "size": 0, "oid": git_blob_sha1(d.encode())}
                )
            if recursive or len(pieces) == 1:
                data = commit.files[fpath]
                entries[fpath] = {
                    "type": "file",
                    "path": fpath,
                    "size": len(data),
                    "oid": git_blob_sha1(data),
                }
        self._json(200, list(entries.values()))

    def _paths_info(self, repo: Repo, rev: str, body: bytes) -> None:
        commit = self.hub.resolve_rev(repo, rev)
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        out = []
        for p in paths:
            if p in commit.files:
                data = commit.files[p]
                out.append(
                    {"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)}
                )
        self._json(200, out)

    def _commits(self, repo: Repo, rev: str) -> None:
        commit: Commit | None = self.hub.resolve_rev(repo, rev)
        out = []
        for _ in range(100_000):
            if commit is None:
                break
            out.append(
                {
                    "id": commit.id,
                    "title": commit.title,
                    "message": commit.message,
                    "date": commit.date,
                    "authors": [{"user": commit.author}],
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(200, out)

    def _preupload(self, repo_id: str, rev: str, body: bytes, acct: Account | None) -> None:
        repo = self.hub.get_repo(repo_id, acct)
        self.hub.check_write(repo.namespace, acct)
        commit = self.hub.resolve_rev(repo, rev)
        payload = json.loads(body or b"{}")
        files = []
        for f in payload.get("files", []):
            current = commit.files.get(f["path"])
            files.append(
                {
                    "path": f["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_sha1(current) if current is not None else None,
                }
            )
        self._json(200, {"files": files, "commitOid": commit.id})

    def _commit(self, repo_id: str, rev: str, body: bytes, acct: Account | None) -> None:
        repo = self.hub.get_repo(repo_id, acct)
        author = self.hub.check_write(repo.namespace, acct)
        if "create_pr" in self._query:
            raise _HttpError(400, "pull requests are not supported by the test server")
        if rev not in repo.branches:
            raise _HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        header: dict[str, Any] = {}
        adds: dict[str, bytes] = {}
        deletes: list[str] = []
        folders: list[str] = []
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                path = value["path"]
                if path.startswith("/") or ".." in path.split("/") or "\\" in path:
                    raise _HttpError(400, f"Invalid path in commit: {path!r}")
                if value.get("encoding") != "base64":
                    raise _HttpError(400, "only base64 file content is supported")
                adds[path] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                deletes.append(value["path"])
            elif key == "deletedFolder":
                folders.append(value["path"].rstrip("/") + "/")
            elif key == "lfsFile":
                raise _HttpError(400, "LFS uploads are not supported by the test server")
            else:
                raise _HttpError(400, f"unknown commit operation {key!r}")
        with self.hub._lock:
            head = repo.branches[rev]
            parent = header.get("parentCommit")
            if parent and not head.startswith(parent):
                raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head].files)
            for path in deletes:
                if path not in files:
                    raise _HttpError(
                        404, f"A file with this name doesn't exist: {path}", "EntryNotFound"
                    )
                files.pop(path)
            for folder in folders:
                for path in [p for p in files if p.startswith(folder)]:
                    files.pop(path)
            files.update(adds)
            cid = self.hub._new_commit_id(repo.id, head)
            repo.commits[cid] = Commit(
                cid,
                head,
                files,
                header.get("summary") or "commit",
                header.get("description") or "",
                _now(),
                author.name,
            )
            repo.branches[rev] = cid
        self._json(
            200,
            {
                "success": True,
                "commitOid": cid,
                "commitUrl": f"{self.hub.url}/{repo.id}/commit/{cid}",
                "hookOutput": "",
            },
        )

    def _resolve(self, method: str, repo: Repo, rev: str, filename: str) -> None:
        commit = self.hub.resolve_rev(repo, rev)
        data = commit.files.get(filename)
        if data is None:
            raise _HttpError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.id})
        path = f"/{repo.id}/resolve/{rev}/{filename}"
        headers = {
            "X-Repo-Commit": commit.id,
            "ETag": f'"{git_blob_sha1(data)}"',
            "Accept-Ranges": "bytes",
            "Content-Disposition": f'inline; filename="{quote(filename.rsplit("/", 1)[-1])}"',
        }
        if method == "HEAD":
            return self._send(
                200, data, content_type="application/octet-stream", headers=headers, send_body=False
            )
        fault = self.hub.take_fault(method, path, ("truncate", "short", "alter", "ignore_range"))
        status = 200
        body = data
        rng = self.headers.get("Range")
        if rng and not (fault and fault.kind == "ignore_range"):
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if m:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else len(data) - 1
                end = min(end, len(data) - 1)
                body = data[start : end + 1]
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if fault is not None and fault.kind == "alter" and body:
            body = bytes(b ^ 0x5A for b in body[:16]) + body[16:]
        if fault is not None and fault.kind == "short":
            body = body[: max(len(body) // 2, 0)]
        if fault is not None and fault.kind == "truncate":
            self._send(
                status,
                body[: len(body) // 2],
                content_type="application/octet-stream",
                headers=headers,
                content_length=len(body),
            )
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(status, body, content_type="application/octet-stream", headers=headers)

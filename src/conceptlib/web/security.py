"""What keeps the page safe to leave running: the Host check, the session and its CSRF
token, and the security headers on every response.

* **Host check** (DNS rebinding): a page on another site whose name was re-pointed at
  127.0.0.1 reaches this server with its own name in ``Host``; any request whose
  ``Host`` is not the bound address (or ``localhost`` when bound to loopback), with
  the bound port, is refused with 400 before anything runs.
* **CSRF**: each browser gets a random session id in an ``HttpOnly``,
  ``SameSite=Strict`` cookie; every form carries an HMAC of it under a secret made at
  start-up, and every write is a POST that must carry it (and, when the browser sends
  one, an ``Origin`` of this server).
* **Headers**: a Content-Security-Policy that allows scripts, styles and images from
  this server only (no inline script, no ``eval``, no plugins, no framing), plus
  ``nosniff``, ``Referrer-Policy: same-origin`` (``no-referrer`` would make
  browsers send ``Origin: null`` with every form) and ``X-Frame-Options: DENY``.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "conceptlib_session"
#: ``secrets.token_urlsafe(32)``: 43 characters of the URL-safe alphabet.
_SESSION_RE = re.compile(r"[A-Za-z0-9_-]{43}")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would send "Origin: null" on POSTs
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and the loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.strip("[]").lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    """True for the "every interface" addresses (``0.0.0.0``, ``::``)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` header values a server bound to ``host``:``port`` answers
    (lower case): the address itself and, on loopback, ``localhost`` and
    ``127.0.0.1``; each with the port (a browser sends it for any port but 80)."""
    names = {host.lower()}
    if ":" in host and not host.startswith("["):
        names = {f"[{host.lower()}]"}
    if is_loopback(host):
        names |= {"localhost", "127.0.0.1"}
    out = {f"{n}:{port}" for n in names}
    if port == 80:
        out |= names
    return frozenset(out)


class Sessions:
    """Session ids and the CSRF token of each (an HMAC under a per-process secret)."""

    def __init__(self, secret: bytes | None = None) -> None:
        self.secret = secret or secrets.token_bytes(32)

    @staticmethod
    def new_id() -> str:
        return secrets.token_urlsafe(32)

    @staticmethod
    def valid_id(value: str | None) -> bool:
        return bool(value) and _SESSION_RE.fullmatch(value or "") is not None

    def token(self, session_id: str) -> str:
        return hmac.new(self.secret, session_id.encode(), hashlib.sha256).hexdigest()

    def check(self, session_id: str | None, token: str | None) -> bool:
        if not self.valid_id(session_id) or not isinstance(token, str):
            return False
        return hmac.compare_digest(self.token(session_id or ""), token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _session_from(scope: Scope) -> str | None:
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header is no session
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel is not None and Sessions.valid_id(morsel.value) else None


class Guard:
    """ASGI middleware: the Host check, the session cookie and the security headers.

    The session id is put in ``scope["state"]["session"]`` for the handlers, which
    check the CSRF token of every POST (:meth:`Sessions.check`).
    """

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str], sessions: Sessions) -> None:
        self.app = app
        self.hosts = hosts
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = (_header(scope, b"host") or "").strip().lower()
        if host not in self.hosts:
            await _plain(send, 400, "unknown Host header: this server answers its own address only")
            return
        session = _session_from(scope)
        fresh = session is None
        if fresh:
            session = Sessions.new_id()
        scope.setdefault("state", {})["session"] = session

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k not in _OURS
                ] + SECURITY_HEADERS
                if fresh:
                    cookie = f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict"
                    headers.append((b"set-cookie", cookie.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


_OURS = {k for k, _ in SECURITY_HEADERS}


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *SECURITY_HEADERS,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def same_origin(origin: str | None, hosts: frozenset[str]) -> bool:
    """True when a request's ``Origin`` (if the browser sent one) is this server."""
    if origin is None:
        return True
    m = re.fullmatch(r"https?://([^/]+)", origin.strip().lower())
    return m is not None and m.group(1) in hosts

"""The HTTP side of Civitai: settings, one retrying client, capped reads, typed errors.

- :class:`CivitaiSettings`: endpoint, token and retry limits from the environment
  (``CONCEPTLIB_CIVITAI_ENDPOINT``, ``CIVITAI_API_TOKEN``, ``CONCEPTLIB_CIVITAI_*``).
- :class:`CivitaiClient`: ``get_json`` (a JSON object from the REST API, ``None`` on
  404) and ``download`` (bytes with a size cap), over ``requests`` with urllib3's
  ``Retry``: 408/429/5xx and connection errors are retried with bounded exponential
  backoff, ``Retry-After`` honoured up to ``max_wait_s``; a reply cut short is read
  once more. Every failure is a :class:`~conceptlib.errors.CivitaiError` without the
  token in it.

The token goes only to the configured endpoint's ``/api/`` paths (same scheme, host
and port: the REST API and its download URLs), never to the image or file hosts a
reply names; ``requests`` also drops it on a redirect to
another host. ``~/.netrc`` is never read (``trust_env`` is off; proxies from the
environment still apply).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from conceptlib.errors import (
    CivitaiAuthError,
    CivitaiBadReply,
    CivitaiError,
    CivitaiUnavailable,
)

DEFAULT_ENDPOINT = "https://civitai.com"
#: Largest JSON reply read (a model's page with every version is well under 1 MiB).
MAX_JSON_BYTES = 4 * 1024 * 1024
#: JSON nested deeper than this is no Civitai reply.
MAX_JSON_DEPTH = 32
#: Longest URL taken from a reply.
MAX_URL = 2048
RETRY_STATUS = (408, 429, 500, 502, 503, 504)
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class CivitaiSettings:
    """Where and how to talk to Civitai; read from the environment at call time.

    Attributes:
        endpoint: base URL, ``CONCEPTLIB_CIVITAI_ENDPOINT`` (default https://civitai.com).
        token: ``CIVITAI_API_TOKEN`` (never in a repr, message or log line).
        retries: extra attempts per request, ``CONCEPTLIB_CIVITAI_RETRIES`` (0-10, default 4).
        backoff_s: first wait, doubled each retry, ``CONCEPTLIB_CIVITAI_BACKOFF`` (default 1 s).
        max_wait_s: cap on one wait, ``Retry-After`` included, ``CONCEPTLIB_CIVITAI_MAX_WAIT``
            (default 16 s).
        timeout_s: connect and read timeout of one request, ``CONCEPTLIB_CIVITAI_TIMEOUT``
            (default 30 s); one whole reply is also read within 4 times this.
    """

    endpoint: str
    token: str | None = field(default=None, repr=False)
    retries: int = 4
    backoff_s: float = 1.0
    max_wait_s: float = 16.0
    timeout_s: float = 30.0

    @classmethod
    def from_env(cls) -> CivitaiSettings:
        env = os.environ
        endpoint = (env.get("CONCEPTLIB_CIVITAI_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CivitaiError(
                f"CONCEPTLIB_CIVITAI_ENDPOINT is not an http(s) URL: {endpoint[:100]!r}",
                hint=f"unset it to use {DEFAULT_ENDPOINT}",
            )
        return cls(
            endpoint=endpoint,
            token=(env.get("CIVITAI_API_TOKEN") or "").strip() or None,
            retries=int(max(0, min(_num(env.get("CONCEPTLIB_CIVITAI_RETRIES"), 4), 10))),
            backoff_s=max(0.0, min(_num(env.get("CONCEPTLIB_CIVITAI_BACKOFF"), 1.0), 60.0)),
            max_wait_s=max(0.0, min(_num(env.get("CONCEPTLIB_CIVITAI_MAX_WAIT"), 16.0), 300.0)),
            timeout_s=max(0.1, min(_num(env.get("CONCEPTLIB_CIVITAI_TIMEOUT"), 30.0), 600.0)),
        )


def _num(value: str | None, default: float) -> float:
    try:
        return float(value) if value not in (None, "") else default
    except ValueError:
        return default


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    port = p.port or {"http": 80, "https": 443}.get(p.scheme)
    return p.scheme, (p.hostname or "").lower(), port


def checked_url(url: Any, what: str) -> str:
    """A URL from a reply: text, http(s), with a host, at most :data:`MAX_URL` long.

    Raises:
        CivitaiBadReply: anything else.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise CivitaiBadReply(f"the reply's {what} is not a usable URL")
    p = urlsplit(url)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise CivitaiBadReply(f"the reply's {what} is not an http(s) URL")
    return url


class CivitaiClient:
    """One ``requests`` session with bounded retries; see the module notes."""

    def __init__(self, settings: CivitaiSettings | None = None) -> None:
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        self.settings = s = settings or CivitaiSettings.from_env()
        cap = s.max_wait_s

        class _CappedRetry(Retry):
            # A server's Retry-After is honoured up to the cap, never longer.
            def get_retry_after(self, response: Any) -> float | None:
                value = super().get_retry_after(response)
                return None if value is None else min(value, cap)

        retry = _CappedRetry(
            total=s.retries,
            connect=s.retries,
            read=s.retries,
            status=s.retries,
            other=0,
            allowed_methods=frozenset({"GET"}),
            status_forcelist=RETRY_STATUS,
            backoff_factor=s.backoff_s / 2,  # urllib3 waits factor * 2**(n-1): 0, b, 2b...
            backoff_max=cap,
            respect_retry_after_header=True,
            raise_on_status=False,  # the last reply comes back and is translated below
            raise_on_redirect=False,
        )
        self.session = requests.Session()
        self.session.trust_env = False  # no ~/.netrc credentials sent anywhere
        self.session.max_redirects = 5
        adapter = HTTPAdapter(max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        #: Requests made, for the report (each URL once per attempt at this level).
        self.requests = 0

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> CivitaiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def redact(self, text: str) -> str:
        token = self.settings.token
        return text.replace(token, "***") if token else text

    def api_url(self, path: str) -> str:
        return self.settings.endpoint + path

    def _headers(self, url: str) -> dict[str, str]:
        headers = {"Accept": "application/json, */*", "User-Agent": "conceptlib"}
        if (
            self.settings.token
            and _origin(url) == _origin(self.settings.endpoint)
            and urlsplit(url).path.startswith(urlsplit(self.settings.endpoint).path + "/api/")
        ):
            headers["Authorization"] = f"Bearer {self.settings.token}"
        return headers

    def _fetch(self, url: str, cap: int, what: str) -> tuple[int, bytes, str]:
        """GET ``url`` (retried), read at most ``cap`` bytes: ``(status, body, type)``.

        A reply cut short is requested once more; the whole read of one reply is bounded
        by ``4 * timeout_s``.
        """
        import requests
        from requests.utils import get_environ_proxies

        s = self.settings
        last: Exception | None = None
        for _attempt in range(2):
            self.requests += 1
            try:
                with self.session.get(
                    url,
                    headers=self._headers(url),
                    timeout=(s.timeout_s, s.timeout_s),
                    stream=True,
                    proxies=get_environ_proxies(url),
                    allow_redirects=True,
                ) as r:
                    status = r.status_code
                    ctype = (r.headers.get("Content-Type") or "").split(";")[0].strip().lower()
                    declared = r.headers.get("Content-Length")
                    if status == 200 and declared and declared.isdigit() and int(declared) > cap:
                        raise CivitaiBadReply(
                            f"{what}: the reply is {int(declared)} bytes; expected at most {cap}"
                        )
                    body = bytearray()
                    deadline = time.monotonic() + 4 * s.timeout_s
                    for chunk in r.iter_content(_CHUNK):
                        body += chunk
                        if len(body) > cap:
                            raise CivitaiBadReply(
                                f"{what}: the reply is larger than {cap} bytes; not read further"
                            )
                        if time.monotonic() > deadline:
                            raise CivitaiUnavailable(
                                f"{what}: the reply took longer than {4 * s.timeout_s:.0f}s"
                            )
                    return status, bytes(body), ctype
            except CivitaiError:
                raise
            except (
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
            ) as exc:
                last = exc  # cut short: one more try
                continue
            except requests.exceptions.RequestException as exc:
                raise CivitaiUnavailable(
                    f"cannot reach {self._host(url)} for {what} "
                    f"({self.redact(type(exc).__name__)})",
                    hint="check the network; CONCEPTLIB_CIVITAI_RETRIES sets how often to retry",
                ) from None
        raise CivitaiUnavailable(
            f"{what}: the reply was cut short twice ({type(last).__name__})",
            hint="run the command again",
        )

    @staticmethod
    def _host(url: str) -> str:
        return urlsplit(url).netloc[:100]

    def _check_status(self, status: int, what: str, url: str) -> None:
        if status == 200:
            return
        if status in (401, 403):
            raise CivitaiAuthError(
                f"Civitai refused {what} (HTTP {status})",
                hint="set CIVITAI_API_TOKEN to a valid API key"
                if not self.settings.token
                else "check that CIVITAI_API_TOKEN is valid and may download this file",
            )
        if status in RETRY_STATUS:
            raise CivitaiUnavailable(
                f"{self._host(url)} kept answering HTTP {status} to {what} "
                f"after {self.settings.retries + 1} attempts",
                hint="try again later; CONCEPTLIB_CIVITAI_RETRIES sets how often to retry",
            )
        raise CivitaiError(f"{what} failed: HTTP {status}")

    # ------------------------------------------------------------------ API

    def get_json(self, path: str, what: str) -> dict[str, Any] | None:
        """The JSON object at ``endpoint + path``; ``None`` when the server says 404.

        Raises:
            CivitaiBadReply: not JSON, not an object, nested too deep or over
                :data:`MAX_JSON_BYTES`; CivitaiAuthError (401/403);
                CivitaiUnavailable (retries spent, unreachable); CivitaiError (other status).
        """
        from conceptlib.registry.folders import _nesting

        url = self.api_url(path)
        status, body, _ctype = self._fetch(url, MAX_JSON_BYTES, what)
        if status == 404:
            return None
        self._check_status(status, what, url)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise CivitaiBadReply(f"{what}: the reply is not UTF-8 JSON") from None
        if _nesting(text) > MAX_JSON_DEPTH:
            raise CivitaiBadReply(f"{what}: the reply is nested deeper than {MAX_JSON_DEPTH}")
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError):
            raise CivitaiBadReply(
                f"{what}: the reply is not JSON ({len(body)} bytes)",
                hint="check CONCEPTLIB_CIVITAI_ENDPOINT: it should be Civitai's site",
            ) from None
        if not isinstance(obj, dict):
            raise CivitaiBadReply(f"{what}: the reply is {type(obj).__name__}, expected an object")
        return obj

    def download(self, url: str, cap: int, what: str) -> bytes:
        """The bytes at ``url`` (an absolute http(s) URL from a reply), at most ``cap``.

        Raises:
            CivitaiBadReply (too large), CivitaiAuthError, CivitaiUnavailable,
            CivitaiError (404 and other statuses).
        """
        url = checked_url(url, what)
        status, body, _ctype = self._fetch(url, cap, what)
        if status == 404:
            raise CivitaiError(f"{what}: the server has no such file (HTTP 404)")
        self._check_status(status, what, url)
        return body

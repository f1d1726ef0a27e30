"""Where and how to talk to the Hub, read from the environment at call time, and the
token's redaction.

- :class:`HubSettings`: endpoint, token, offline mode, cache folder, retry and
  concurrency limits (``HF_*`` and ``CONCEPTLIB_HUB_*`` variables).
- :func:`hf_cache_dir`, :func:`resolve_token`: the client's cache folder and token.
- :func:`redact` and the logging filter that keep every known token out of messages
  and the HTTP stack's log records.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, field

DEFAULT_ENDPOINT = "https://huggingface.co"


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

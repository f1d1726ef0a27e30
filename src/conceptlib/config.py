"""Where conceptlib keeps its data, and the settings read from the environment.

``CONCEPTLIB_HOME`` (default: the platform's user data dir, e.g.
``~/.local/share/conceptlib``) holds ``catalog.db`` and the blob store ``store/``.
``CONCEPTLIB_DATABASE_URL`` switches the catalog to another database (PostgreSQL).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "CONCEPTLIB_HOME"
ENV_DATABASE_URL = "CONCEPTLIB_DATABASE_URL"
ENV_BUSY_TIMEOUT = "CONCEPTLIB_BUSY_TIMEOUT"
#: The device ``--device auto`` (the default) means: ``cpu``, ``cuda``, ``cuda:N``, ``mps``.
ENV_DEVICE = "CONCEPTLIB_DEVICE"

#: Largest embedding file accepted (embeddings are kilobytes; the biggest real ones
#: with 75 SDXL vectors are ~600 KB). Anything bigger is refused before parsing.
MAX_EMBEDDING_FILE_BYTES = 16 * 1024 * 1024
#: Most vectors one embedding may have: CLIP's window is 77 tokens with start/end.
MAX_VECTORS = 75
#: Largest absolute value kept: beyond it fp16 becomes Inf.
FP16_MAX = 65504.0


def default_home() -> Path:
    from platformdirs import user_data_dir

    return Path(user_data_dir("conceptlib", appauthor=False))


@dataclass(frozen=True)
class Settings:
    """Resolved paths and options. Build with :func:`load_settings`."""

    home: Path
    database_url: str | None
    busy_timeout_s: float = 30.0

    @property
    def catalog_path(self) -> Path:
        return self.home / "catalog.db"

    @property
    def store_dir(self) -> Path:
        return self.home / "store"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the catalog."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.catalog_path}"

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")


def load_settings(home: str | os.PathLike[str] | None = None) -> Settings:
    """Read settings from the environment; ``home`` overrides ``CONCEPTLIB_HOME``."""
    if home is None:
        env_home = os.environ.get(ENV_HOME)
        home_path = Path(env_home).expanduser() if env_home else default_home()
    else:
        home_path = Path(home).expanduser()
    timeout = float(os.environ.get(ENV_BUSY_TIMEOUT, "30") or 30)
    return Settings(
        home=home_path,
        database_url=os.environ.get(ENV_DATABASE_URL) or None,
        busy_timeout_s=timeout,
    )

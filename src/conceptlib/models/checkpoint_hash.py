"""The checkpoint hash A1111 and Civitai show as ``Model hash``, computed once per file.

AUTOMATIC1111's stable-diffusion-webui (v1.x, ``modules/sd_models.py``:
``CheckpointInfo.shorthash``) writes the first 10 hex characters of the SHA-256 of
the whole checkpoint file as ``Model hash`` in an image's infotext; Civitai's AutoV2
is the same 10 characters in upper case, and both look the checkpoint up by it.
Only a single-file checkpoint has such a hash: a diffusers folder or a tiny model has
no one file it could be the hash of, so :func:`checkpoint_file` is ``None`` for them
and the infotext leaves ``Model hash`` out (our own fingerprint,
:mod:`conceptlib.models.fingerprint`, is a different value and goes in its own field).

Hashing reads the whole file (7 GB for SDXL), streamed in 1 MiB chunks with an
optional progress callback, so the result is cached: a small JSON file in the
settings' cache dir (``<home>/cache/checkpoint-sha256.json``) maps each file's
resolved path to its size, modification time (ns) and SHA-256. A file whose size or
mtime changed is hashed again; a cache that cannot be read is ignored (and rewritten).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The cache file's name inside the cache dir.
CACHE_NAME = "checkpoint-sha256.json"
#: A cache file larger than this is not read (it is ours, but may be damaged).
MAX_CACHE_BYTES = 4 * 1024 * 1024
#: Entries kept (the most recently hashed).
MAX_CACHE_ENTRIES = 500
_CHUNK = 1024 * 1024

#: ``progress(done_bytes, total_bytes)``, called after every chunk while a file is hashed.
HashProgress = Callable[[int, int], None]


def checkpoint_file(ref: str | os.PathLike[str] | None, *, is_tiny: bool = False) -> Path | None:
    """The single checkpoint file behind base-model reference ``ref``, or ``None``.

    Only a ``.safetensors`` file is one (the single-file bases
    :func:`~conceptlib.models.base.load_base` accepts); tiny models, diffusers folders
    and cached repo ids (folders too) have none.
    """
    if ref is None or is_tiny:
        return None
    path = Path(str(ref)).expanduser()
    if path.suffix.lower() != ".safetensors" or not path.is_file():
        return None
    return path


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store_cache(path: Path, data: dict[str, Any]) -> None:
    """Write the cache atomically; a cache that cannot be written is not an error."""
    if len(data) > MAX_CACHE_ENTRIES:
        newest = sorted(data.items(), key=lambda kv: kv[1].get("hashed_at", 0), reverse=True)
        data = dict(newest[:MAX_CACHE_ENTRIES])
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint-sha256-", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass


def _cached(entry: Any, size: int, mtime_ns: int) -> str | None:
    if not isinstance(entry, dict):
        return None
    sha = entry.get("sha256")
    if entry.get("size") != size or entry.get("mtime_ns") != mtime_ns:
        return None
    if not isinstance(sha, str) or len(sha) != 64:
        return None
    try:
        int(sha, 16)
    except ValueError:
        return None
    return sha.lower()


def checkpoint_sha256(
    path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None,
    *,
    progress: HashProgress | None = None,
) -> str:
    """The SHA-256 (64 hex characters) of the whole file at ``path``, cached.

    Args:
        path: the checkpoint file.
        cache_dir: where the cache file lives (``Library.settings.cache_dir``);
            ``None`` hashes without caching.
        progress: called as ``progress(done_bytes, total_bytes)`` after every 1 MiB
            read, only when the file is actually hashed (not on a cache hit).

    Raises:
        OSError: the file cannot be read.
    """
    file = Path(path).expanduser().resolve()
    st = file.stat()
    key = str(file)
    cache_path = Path(cache_dir) / CACHE_NAME if cache_dir is not None else None
    cache = _load_cache(cache_path) if cache_path is not None else {}
    hit = _cached(cache.get(key), st.st_size, st.st_mtime_ns)
    if hit is not None:
        return hit
    digest = hashlib.sha256()
    done = 0
    with open(file, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, st.st_size)
    sha = digest.hexdigest()
    if cache_path is not None:
        import time

        cache = _load_cache(cache_path)  # another process may have added entries meanwhile
        cache[key] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "sha256": sha,
            "hashed_at": time.time(),
        }
        _store_cache(cache_path, cache)
    return sha


def a1111_model_hash(
    path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None,
    *,
    progress: HashProgress | None = None,
) -> str:
    """A1111's ``Model hash`` of checkpoint ``path``: the first 10 hex characters (lower
    case) of the file's SHA-256; see :func:`checkpoint_sha256` for the cache.

    Raises:
        OSError: the file cannot be read.
    """
    return checkpoint_sha256(path, cache_dir, progress=progress)[:10]

"""The base-model fingerprint, which tells checkpoints apart without reading gigabytes.

``"fp2:" + sha256`` of one line per weight file (``.safetensors``, ``.bin``,
``.ckpt``, ``.pt``, ``.pth``; the ``safety_checker``, ``feature_extractor`` and
``image_encoder`` folders are left out, as they do not shape a concept), sorted by
relative path. For a safetensors file::

    <relative path>\\t<size>\\t<sha256 of the header>\\t<sha256 of the tensor samples>

where the samples are the first and last 4 KiB of every tensor's data (the whole
tensor when it is at most 8 KiB), concatenated in file order. A fine-tune or a merge
changes the whole of every tensor it touches, so it is seen, for about 8 KiB read
per tensor (some 20 MB of a 7 GB SDXL file); only an edit confined to the middle of
a tensor larger than 8 KiB is not. For other formats (and safetensors files too
broken to walk)::

    <relative path>\\t<size>\\t<sha256 of the first 1 MiB>\\t<sha256 of the last 1 MiB>

A single-file checkpoint has the empty string as its path, so renaming the file
does not change it. The same files give the same fingerprint on every machine. The
tiny models have ``"fp2:" + sha256("conceptlib-tiny\\n<model id>\\nv<TINY_VERSION>")``.
``fp1:`` fingerprints (conceptlib 0.1.0) sampled only the first and last MiB of
each file; they never equal ``fp2:`` ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

from conceptlib.errors import BaseModelError
from conceptlib.models.tiny import TINY_MODELS, TINY_VERSION

FINGERPRINT_PREFIX = "fp2:"
_CHUNK = 1024 * 1024
_SAMPLE = 4096
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")
_SKIPPED_FOLDERS = {"safety_checker", "feature_extractor", "image_encoder"}
#: Largest safetensors header read (also by :mod:`conceptlib.models.single_file`).
_MAX_HEADER = 100 * 1024 * 1024


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safetensors_spans(header: Any, data_start: int, size: int) -> list[tuple[int, int]] | None:
    """The byte ranges of each tensor's data, in file order, or None if malformed."""
    if not isinstance(header, dict):
        return None
    spans = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            lo, hi = (int(x) for x in entry["data_offsets"])
        except (TypeError, KeyError, ValueError):
            return None
        if not 0 <= lo <= hi or data_start + hi > size:
            return None
        spans.append((data_start + lo, data_start + hi))
    return sorted(spans)


def _tensor_samples_sha(fh: Any, spans: list[tuple[int, int]]) -> str:
    """SHA-256 of the first and last ``_SAMPLE`` bytes of every tensor, in file order."""
    digest = hashlib.sha256()
    for lo, hi in spans:
        if hi - lo <= 2 * _SAMPLE:
            fh.seek(lo)
            digest.update(fh.read(hi - lo))
        else:
            fh.seek(lo)
            digest.update(fh.read(_SAMPLE))
            fh.seek(hi - _SAMPLE)
            digest.update(fh.read(_SAMPLE))
    return digest.hexdigest()


def _file_line(path: Path, rel: str) -> str:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if path.suffix == ".safetensors" and size >= 8:
            (n,) = struct.unpack("<Q", fh.read(8))
            if 0 < n <= min(_MAX_HEADER, size - 8):
                raw = fh.read(n)
                try:
                    spans = _safetensors_spans(json.loads(raw), 8 + n, size)
                except ValueError:
                    spans = None
                if spans is not None:
                    return f"{rel}\t{size}\t{_sha(raw)}\t{_tensor_samples_sha(fh, spans)}"
        # pickled weights, or a safetensors file too broken to walk: head and tail
        fh.seek(0)
        head = fh.read(_CHUNK)
        fh.seek(max(0, size - _CHUNK))
        tail = fh.read(_CHUNK)
    return f"{rel}\t{size}\t{_sha(head)}\t{_sha(tail)}"


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a diffusers folder that the fingerprint covers."""
    out = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if rel.parts and rel.parts[0] in _SKIPPED_FOLDERS:
            continue
        if path.suffix in _WEIGHT_SUFFIXES and path.is_file():
            out.append(path)
    return out


def fingerprint_path(path: str | os.PathLike[str]) -> str:
    """The base-model fingerprint of a diffusers folder or a single-file checkpoint."""
    p = Path(path)
    if p.is_file():
        lines = [_file_line(p, "")]
    else:
        files = sorted(weight_files(p), key=lambda f: f.relative_to(p).as_posix())
        if not files:
            raise BaseModelError(f"{p}: no weight files found", path=str(p))
        lines = [_file_line(f, f.relative_to(p).as_posix()) for f in files]
    return FINGERPRINT_PREFIX + _sha("\n".join(lines).encode())


def tiny_fingerprint(name: str) -> str:
    return FINGERPRINT_PREFIX + _sha(
        f"conceptlib-tiny\n{TINY_MODELS[name]}\nv{TINY_VERSION}".encode()
    )

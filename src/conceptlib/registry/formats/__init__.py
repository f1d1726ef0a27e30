"""Embedding files: detection, reading, writing and their safety.

One room for everything that turns bytes into the canonical :class:`Embedding` and
back:

- :mod:`.embedding`: the canonical value (slots, family, tensor hash, short hashes).
- :mod:`.read`: container and layout detection by content; every layout we read.
- :mod:`.write`: every layout we write.
- :mod:`.safe_pickle`: ``safe_torch_load``: every pickle walked, then
  ``torch.load(weights_only=True)``; :mod:`.pickle_walk` (the opcode allow-list
  walk), :mod:`.torch_containers` (torch zip and legacy stream) and
  :mod:`.literal_imports` (imports in bytes the walk could not read) behind it.
- :mod:`.sniff`: torch zip, pickle, 7z and tar recognised by their first bytes.
- :mod:`.safetensors_io`: a strict safetensors reader and writer.
- :mod:`.png_embed`: A1111's embedding images (PNG text chunk; PNG and WebP pixel
  strips).

The public names below are re-exported so ``conceptlib.registry.formats`` keeps
working as the single import for readers and writers.
"""

from __future__ import annotations

from conceptlib.registry.formats.embedding import Embedding, sha256_hex, short_hashes
from conceptlib.registry.formats.read import (
    CONTAINERS,
    LAYOUTS,
    READ_FORMATS,
    SDXL_COMPANION_NAMES,
    SDXL_MAIN_NAMES,
    ParsedFile,
    describe_bytes,
    is_sdxl_companion,
    read_embedding_bytes,
    read_embedding_file,
)
from conceptlib.registry.formats.write import A1111_TOKEN_ID, WRITE_FORMATS, write_embedding

__all__ = [
    "A1111_TOKEN_ID",
    "CONTAINERS",
    "LAYOUTS",
    "READ_FORMATS",
    "SDXL_COMPANION_NAMES",
    "SDXL_MAIN_NAMES",
    "WRITE_FORMATS",
    "Embedding",
    "ParsedFile",
    "describe_bytes",
    "is_sdxl_companion",
    "read_embedding_bytes",
    "read_embedding_file",
    "sha256_hex",
    "short_hashes",
    "write_embedding",
]

"""Civitai: look catalog entries up by hash and pull embeddings by version id or AIR.

Python API (the CLI in :mod:`conceptlib.cli.civitai` and ``pull`` are thin layers)::

    from conceptlib.registry import civitai
    civitai.civitai_info(lib, ["easynegative"])          # -> InfoReport
    civitai.civitai_info(lib, all_entries=True)           # every entry
    civitai.pull_civitai(lib, "civitai:9208")            # -> CivitaiPullOutcome
    civitai.pull_civitai(lib, "urn:air:sd1:embedding:civitai:7808@9208")

- :mod:`.client`: settings (``CONCEPTLIB_CIVITAI_ENDPOINT``, ``CIVITAI_API_TOKEN``,
  ``CONCEPTLIB_CIVITAI_RETRIES`` / ``_BACKOFF`` / ``_MAX_WAIT`` / ``_TIMEOUT``), the
  retrying client with capped reads, typed errors (:class:`~conceptlib.errors.CivitaiError`,
  exit 9).
- :mod:`.api`: reply shapes checked and cleaned (HTML stripped), the AIR URN.
- :mod:`.info`: ``civitai info``.
- :mod:`.pull`: ``pull civitai:...``.

Importing this package stays light: ``requests`` and Pillow are imported when used.
"""

from __future__ import annotations

from conceptlib.registry.civitai.api import CivitaiVersion, air_of, is_civitai_spec, parse_spec
from conceptlib.registry.civitai.client import CivitaiClient, CivitaiSettings
from conceptlib.registry.civitai.info import InfoOutcome, InfoReport, civitai_info
from conceptlib.registry.civitai.pull import CivitaiPullOutcome, pull_civitai

__all__ = [
    "CivitaiClient",
    "CivitaiPullOutcome",
    "CivitaiSettings",
    "CivitaiVersion",
    "InfoOutcome",
    "InfoReport",
    "air_of",
    "civitai_info",
    "is_civitai_spec",
    "parse_spec",
    "pull_civitai",
]

"""conceptlib: a registry and library manager for textual-inversion embeddings.

The Python API lives in :mod:`conceptlib.registry.library` (:class:`Library`);
importing this package is cheap (no torch, no diffusers).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "open_library"]


def open_library(home=None):  # noqa: ANN001, ANN201 - re-exported helper
    """Open (and create if needed) the library at ``home`` or ``CONCEPTLIB_HOME``.

    Example:
        >>> import conceptlib
        >>> lib = conceptlib.open_library()
        >>> [e.name for e in lib.search("watercolor")]
    """
    from conceptlib.registry.library import Library

    return Library.open(home)

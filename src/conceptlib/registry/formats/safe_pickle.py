"""Loading PyTorch pickle files without running anything they did not earn.

A ``.pt``/``.bin`` file is a pickle, and a pickle is a program: ``GLOBAL`` imports
any callable and ``REDUCE`` calls it. :func:`safe_torch_load` therefore never hands
bytes to :mod:`pickle` or :func:`torch.load` until a walk over *every* opcode of
*every* pickle in the container has passed, and then only with
``weights_only=True``. There is no fallback that loosens this.

The walk and its allow-list are in :mod:`.pickle_walk`, the zip and legacy
containers in :mod:`.torch_containers`; this module ties them together, loads, and
turns what torch returns into plain dicts, lists and tensors. Its names are
re-exported here, as they always were.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
from conceptlib.errors import CorruptFile, FileTooLarge, UnsupportedContent
from conceptlib.registry.formats.pickle_walk import (
    ALLOWED_GLOBALS,
    CALLABLES,
    CLASSES,
    FLOAT_STORAGE_TYPES,
    INT_STORAGE_TYPES,
    MAX_DECLARED_STORAGE_BYTES,
    MAX_PICKLE_BYTES,
    MAX_PICKLE_OPS,
    MAX_TENSOR_ELEMENTS,
    STORAGE_TYPES,
    Findings,
    literal_imports,
    scan_pickle,
    walk_pickles,
)
from conceptlib.registry.formats.sniff import is_7z, is_pickle, is_tar, is_zip
from conceptlib.registry.formats.torch_containers import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    scan_legacy,
    scan_zip,
)

__all__ = [
    "ALLOWED_GLOBALS",
    "CALLABLES",
    "CLASSES",
    "FLOAT_STORAGE_TYPES",
    "INT_STORAGE_TYPES",
    "LEGACY_MAGIC_NUMBER",
    "LEGACY_PROTOCOL_VERSION",
    "MAX_DECLARED_STORAGE_BYTES",
    "MAX_PICKLE_BYTES",
    "MAX_PICKLE_OPS",
    "MAX_TENSOR_ELEMENTS",
    "STORAGE_TYPES",
    "Findings",
    "ParameterDictContents",
    "is_7z",
    "is_pickle",
    "is_tar",
    "is_zip",
    "literal_imports",
    "safe_torch_load",
    "scan_pickle",
    "walk_pickles",
]


# --------------------------------------------------------------------------- loading


class _ParameterDictState:
    """Stands in for ``torch.nn.ParameterDict`` while loading: keeps the state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class ParameterDictContents(dict):
    """The parameters of a ``ParameterDict`` from an old A1111 file, as a plain dict."""


def safe_torch_load(data: bytes, *, path: str | None = None) -> Any:
    """Load a PyTorch ``.pt``/``.bin`` file after proving its pickle harmless.

    Accepts torch's zip format (``<root>/data.pkl`` plus ``<root>/data/N`` records)
    and the legacy pre-1.6 stream. Every opcode of every pickle is walked first (see
    the module docstring); only then is ``torch.load(..., weights_only=True,
    map_location="cpu")`` called. An old A1111 ``ParameterDict`` comes back as a
    :class:`ParameterDictContents` dict of its parameters.

    Args:
        data: the whole file.
        path: where it came from, for messages.

    Returns:
        The loaded object: dicts, lists, tuples, numbers, strings and CPU tensors.

    Raises:
        UnsafeFile: an import, opcode or persistent id outside the allow-list (names it).
        UnsupportedContent: 7z, tar-format ``.pt``, TorchScript, plain pickles, modules.
        CorruptFile: broken zip/CRC/pickle stream, inconsistent storages.
        FileTooLarge: the file, its members or its declared storages exceed the caps.
    """
    if len(data) > MAX_EMBEDDING_FILE_BYTES:
        raise FileTooLarge(
            f"file is {len(data)} bytes; expected at most {MAX_EMBEDDING_FILE_BYTES}", path=path
        )
    if is_7z(data):
        raise UnsupportedContent(
            "file is a 7z archive; expected a PyTorch file (a zip written by torch.save)", path=path
        )
    if is_tar(data):
        raise UnsupportedContent(
            "file is a tar archive (PyTorch's pre-0.4 tar format); expected a zip or legacy "
            "PyTorch file: re-save it with a current PyTorch",
            path=path,
        )
    if is_zip(data):
        findings = scan_zip(data, path)
    elif is_pickle(data):
        findings = scan_legacy(data, path)
    else:
        raise UnsupportedContent(
            f"file starts with {data[:8]!r}; expected a PyTorch zip (PK) or pickle stream",
            path=path,
        )
    return _torch_load_checked(data, findings, path)


def _torch_load_checked(data: bytes, findings: Findings, path: str | None) -> Any:
    import pickle

    import torch

    extra: list[Any] = []
    if findings.uses_parameter_dict:
        extra.append((_ParameterDictState, "torch.nn.modules.container.ParameterDict"))
    try:
        with torch.serialization.safe_globals(extra), warnings.catch_warnings():
            # torch warns about non-default pickle protocols; the library never prints
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        if findings.framed:
            raise UnsupportedContent(
                "file was saved with pickle protocol 4 or 5 (framed), which PyTorch's safe "
                "weights-only loader cannot read; expected torch.save's default protocol 2",
                path=path,
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnsupportedContent(
            f"PyTorch's weights-only loader refused the file ({first[:200]})", path=path
        ) from None
    except MemoryError:
        raise FileTooLarge("PyTorch ran out of memory reading the file", path=path) from None
    except Exception as exc:  # the walk proved the file harmless: any failure is damage
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFile(f"PyTorch could not read the file ({first[:200]})", path=path) from None
    return _plain(obj, path)


def _plain(obj: Any, path: str | None) -> Any:
    """The loaded tree as plain dicts, lists, tuples and tensors; ParameterDicts unwrapped.

    Each object is converted once (by identity), so a tree that shares one list a
    thousand times over (memo references cost a few bytes each in the pickle) stays a
    shared tree instead of being copied out to billions of nodes. Tensors come back
    through the unbound ``torch.Tensor.detach``, as plain tensors: attributes a
    parameter carried in its saved state (``{"detach": 5}``) can replace no method.
    Dicts are read with the unbound ``dict.items`` for the same reason.

    Raises:
        UnsupportedContent: nesting deeper than 32, or an object of another type.
    """
    import torch

    done: dict[int, Any] = {}
    alive: list[Any] = []  # keeps every converted object alive, so ids stay unique

    def convert(value: Any, depth: int) -> Any:
        if value is None or isinstance(value, (bool, int, float, str, bytes)):
            return value
        if id(value) in done:
            return done[id(value)]
        if depth > 32:
            raise UnsupportedContent("file nests containers more than 32 deep", path=path)
        alive.append(value)
        out: Any
        if isinstance(value, torch.Tensor):
            out = torch.Tensor.detach(value)
        elif isinstance(value, _ParameterDictState):
            state = vars(value).get("state")
            params = dict.get(state, "_parameters") if isinstance(state, dict) else None
            if not isinstance(params, dict):
                raise UnsupportedContent(
                    "ParameterDict without _parameters; expected tensors", path=path
                )
            out = done[id(value)] = ParameterDictContents()
            for key, item in dict.items(params):
                if item is not None:
                    out[key] = convert(item, depth + 1)
        elif isinstance(value, dict):
            out = done[id(value)] = {}
            for key, item in dict.items(value):
                out[key] = convert(item, depth + 1)
        elif isinstance(value, list):
            out = done[id(value)] = []
            out.extend(convert(item, depth + 1) for item in list.__iter__(value))
        elif isinstance(value, tuple):
            out = tuple(convert(item, depth + 1) for item in tuple.__iter__(value))
        elif isinstance(value, (set, frozenset)):
            out = value
        else:
            raise UnsupportedContent(
                f"file holds a {type(value).__module__}.{type(value).__qualname__}; expected "
                "tensors in dicts",
                path=path,
            )
        done[id(value)] = out
        return out

    return convert(obj, 0)

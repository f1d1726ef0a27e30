"""What a file's first bytes say it is, for the containers PyTorch files come in.

Detection by content, never by the file name: a torch zip, a legacy pickle
stream, and the archives (7z, tar) that are refused with a clear message.
:mod:`.safe_pickle` re-exports these names.
"""

from __future__ import annotations

import io
import pickletools
import re

__all__ = ["is_7z", "is_pickle", "is_tar", "is_zip"]

_IDENT_RE = re.compile(rb"^[A-Za-z_][A-Za-z0-9_.]{0,200}$")
#: A headerless stream with any other opener is a pickle only when all of it parses
#: as pickles ending in STOP; the parse is bounded like the walk that follows it.
MAX_SNIFF_BYTES = 4 * 1024 * 1024
MAX_SNIFF_OPS = 100_000
#: Bytes that may follow a protocol 0/1 ``MARK`` in a real pickle: a container
#: opcode (dict, list, tuple, empty ones), a string, a number, None or another MARK.
_AFTER_MARK = frozenset(b"dltVSIFN(}])X")


def is_zip(data: bytes) -> bool:
    """PyTorch's zip format (and any zip): a local file header first."""
    return data[:4] == b"PK\x03\x04"


def is_7z(data: bytes) -> bool:
    """A 7z archive signature."""
    return data[:6] == b"7z\xbc\xaf\x27\x1c"


def is_tar(data: bytes) -> bool:
    """A POSIX tar archive (PyTorch's pre-0.4 format)."""
    return len(data) >= 262 and data[257:262] == b"ustar"


def _text_global_ok(data: bytes, at: int) -> bool:
    """Whether a text GLOBAL/INST at ``at`` names a plausible ``module`` and ``name``."""
    lines = data[at + 1 : at + 512].split(b"\n", 2)
    return len(lines) == 3 and all(_IDENT_RE.match(part) for part in lines[:2])


def _all_pickles(data: bytes) -> bool:
    """Whether all of ``data`` parses as one or more pickles, the last ending at its end."""
    if len(data) > MAX_SNIFF_BYTES:
        return False
    stream = io.BytesIO(data)
    ops = 0
    try:
        while stream.tell() < len(data):
            for _op in pickletools.genops(stream):
                ops += 1
                if ops > MAX_SNIFF_OPS:
                    return False
    except Exception:  # genops: unknown opcode, truncation, no STOP
        return False
    return ops > 0


def is_pickle(data: bytes) -> bool:
    """Whether ``data`` is a pickle stream, by content.

    Protocol 2+ streams start with ``PROTO``. Protocol 0/1 have no header, so the
    openers real pickles use are accepted at once (a ``GLOBAL`` naming identifiers, a
    ``MARK`` before a container or global, an empty container); any other first byte
    (a string such as ``V``/``S``, a number, ``None``...) only when the *whole* file
    parses as pickles ending in ``STOP`` (:func:`pickletools.genops`, at most
    :data:`MAX_SNIFF_BYTES` and :data:`MAX_SNIFF_OPS`). Text files stay text: prose
    that happens to start with a letter that is an opcode does not parse to a ``STOP``
    at its very end.
    """
    if len(data) >= 2 and data[0] == 0x80 and data[1] <= 5:
        return True
    first = data[:1]
    if first == b"c":
        return _text_global_ok(data, 0) or _all_pickles(data)
    if first == b"(":
        second = data[1:2]
        if second in (b"c", b"i"):
            return _text_global_ok(data, 1) or _all_pickles(data)
        if len(second) != 1 or second[0] not in _AFTER_MARK:
            return _all_pickles(data)
    elif first not in (b"}", b"]", b")"):
        return _all_pickles(data)
    try:
        ops = pickletools.genops(io.BytesIO(data[:4096]))
        for _ in range(2):
            next(ops)
    except StopIteration:
        return True
    except Exception:
        return False
    return True

"""Imports written literally anywhere in a stretch of bytes, for what a walk could not read.

When the opcode walk (:mod:`.pickle_walk`) stops (a frame trick, a broken stream,
bytes after ``STOP`` that are no pickle, a zip member that cannot be unpacked), the
bytes it could not read might still hold a call that some reader would run: a
frame trick hides one from linear readers on purpose. :func:`literal_imports`
finds, at *any* offset (not only where a linear walk would put an opcode):

* a text ``GLOBAL``/``INST``: ``c`` or ``i``, then ``module\\n``, then ``name\\n``;
* a ``STACK_GLOBAL`` (0x93) after two strings holding dotted names, each string
  written with any of pickle's string opcodes (``SHORT_BINUNICODE``, ``BINUNICODE``,
  ``SHORT_BINSTRING``, ``BINSTRING``, ``UNICODE``, ``STRING``) and optionally
  followed by a memo opcode (``MEMOIZE``, ``BINPUT``, ``LONG_BINPUT``, ``PUT``), as
  protocol 4 writes ``os.system``: ``\\x8c\\x02os\\x94\\x8c\\x06system\\x94\\x93``.

Bytes found this way were not read as an unpickler reads them, so a pattern may be
a coincidence (``...OrderedDict\nq\n`` holds ``ict\nq\n``, an INST of ``ct.q``):
only imports of modules and callables that run code, read files or reach the network
(:func:`is_dangerous`: ``os``, ``subprocess``, ``builtins.eval``, ``pickle.loads``,
``torch.load``...) are threats; an allowed or unknown name found this way is not.

The search is linear in the bytes searched and bounded (:data:`MAX_HUNT_BYTES` per
stretch, :data:`MAX_HUNT_CANDIDATES` places that end like a ``STACK_GLOBAL``): it
names threats for the refusal; the refusal of the stretch itself never depends on it.
"""

from __future__ import annotations

import re

__all__ = [
    "DANGEROUS_CALLABLES",
    "DANGEROUS_MODULES",
    "MAX_HUNT_BYTES",
    "MAX_HUNT_CANDIDATES",
    "is_dangerous",
    "literal_imports",
]

#: Modules any callable of which runs code, starts processes, loads native code,
#: unpickles, touches files or the network (the payloads of public malicious-pickle
#: corpora: picklescan, modelscan, fickling).
DANGEROUS_MODULES = frozenset(
    {
        "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "importlib",
        "marshal", "runpy", "pickle", "_pickle", "cPickle", "dill", "shelve", "shutil",
        "socket", "ctypes", "pty", "webbrowser", "code", "codeop", "timeit", "pydoc",
        "functools", "operator", "types", "commands", "popen2", "multiprocessing", "asyncio",
        "signal", "tempfile", "pathlib", "io", "_io", "requests", "urllib", "http", "ftplib",
        "smtplib", "telnetlib", "aiohttp", "httpx", "bdb", "pdb", "trace", "profile",
        "cProfile", "venv", "ensurepip", "pip", "setuptools", "distutils", "zipimport",
        "copyreg", "_codecs", "inspect", "gc", "threading", "_thread", "selectors",
    }
)  # fmt: skip
#: Single callables of otherwise harmless modules that load pickles or run code.
DANGEROUS_CALLABLES = frozenset(
    {
        ("numpy", "load"), ("numpy.lib.npyio", "load"), ("numpy", "fromfile"),
        ("numpy.testing._private.utils", "runstring"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("torch", "load"),
        ("torch.serialization", "load"), ("torch.storage", "_load_from_bytes"),
        ("torch.hub", "load"), ("torch.hub", "load_state_dict_from_url"), ("torch.jit", "load"),
        ("torch._C", "_jit_load"), ("joblib", "load"), ("pandas", "read_pickle"),
    }
)  # fmt: skip


def is_dangerous(module: str, name: str) -> bool:
    """Whether importing ``module.name`` gives a pickle a way to run code or reach out."""
    return module.split(".")[0] in DANGEROUS_MODULES or (module, name) in DANGEROUS_CALLABLES


#: How much of each stretch is searched (payloads are a few hundred bytes).
MAX_HUNT_BYTES = 1024 * 1024
#: How many places that end like a STACK_GLOBAL are looked at, per stretch.
MAX_HUNT_CANDIDATES = 2_000
#: Longest module or name looked for.
MAX_NAME = 100

_NAME_RE = re.compile(rb"[A-Za-z_][\w.]{0,%d}" % (MAX_NAME - 1))
#: The second line of a text GLOBAL (found from its newline: no backtracking over runs).
_SECOND_LINE_RE = re.compile(rb"(?=\n([A-Za-z_][\w.]{0,%d})\n)" % (MAX_NAME - 1))
#: Where a STACK_GLOBAL may end: a name's last byte (or its closing newline or quote),
#: an optional memo opcode, then 0x93.
_STACK_END_RE = re.compile(rb"(?s)(?:[\w.]|[\w.]['\"]?\n)(?:\x94|q.|r.{4}|p[0-9]{1,9}\n)?\x93")
_SHORT = (0x8C, 0x55)  # SHORT_BINUNICODE, SHORT_BINSTRING: one length byte
_LONG = (0x58, 0x54)  # BINUNICODE, BINSTRING: four length bytes
_WORD = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


def _name(data: bytes, start: int, end: int) -> str | None:
    if 0 <= start < end and _NAME_RE.fullmatch(data, start, end):
        return data[start:end].decode("ascii")
    return None


def _run_start(data: bytes, end: int) -> int:
    """Start of the run of name bytes that ends at ``end`` (at most MAX_NAME + 1 long)."""
    start = end
    while start > 0 and end - start <= MAX_NAME and data[start - 1] in _WORD:
        start -= 1
    return start


def _memo_ends(data: bytes, at: int) -> list[int]:
    """Where the opcode before ``at`` may end: at ``at``, or before a memo opcode there."""
    ends = [at]
    if at >= 1 and data[at - 1] == 0x94:
        ends.append(at - 1)
    if at >= 2 and data[at - 2] == ord("q"):
        ends.append(at - 2)
    if at >= 5 and data[at - 5] == ord("r"):
        ends.append(at - 5)
    if at >= 3 and data[at - 1] == 0x0A:
        digits = at - 1
        while digits > 0 and at - 1 - digits < 10 and 0x30 <= data[digits - 1] <= 0x39:
            digits -= 1
        if digits < at - 1 and digits >= 1 and data[digits - 1] == ord("p"):
            ends.append(digits - 1)
    return ends


def _strings_ending_at(data: bytes, end: int) -> list[tuple[int, str]]:
    """``(start, text)`` of every string opcode holding a dotted name that ends at ``end``."""
    found: list[tuple[int, str]] = []
    for n in range(1, MAX_NAME + 1):
        start = end - n
        if start < 2:
            break
        if data[start - 1] == n and data[start - 2] in _SHORT:
            text = _name(data, start, end)
            if text is not None:
                found.append((start - 2, text))
        if (
            start >= 5
            and data[start - 5] in _LONG
            and data[start - 4 : start] == n.to_bytes(4, "little")
        ):
            text = _name(data, start, end)
            if text is not None:
                found.append((start - 5, text))
    if end >= 3 and data[end - 1] == 0x0A:
        close = end - 1
        if data[close - 1] in b"'\"":  # STRING: S'<name>'\n
            stop = close - 1
            first = _run_start(data, stop)
            if first >= 2 and data[first - 1] == data[stop] and data[first - 2] == ord("S"):
                text = _name(data, first, stop)
                if text is not None:
                    found.append((first - 2, text))
        else:  # UNICODE: V<name>\n ('V' is a name byte too: every V in the run may open it)
            for opener in range(_run_start(data, close), close):
                if data[opener] == ord("V"):
                    text = _name(data, opener + 1, close)
                    if text is not None:
                        found.append((opener, text))
    return found


def _text_imports(data: bytes) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for m in _SECOND_LINE_RE.finditer(data):
        first_nl = m.start()
        run = _run_start(data, first_nl)
        for at in range(run, first_nl):  # the leftmost c/i whose rest is a name
            if data[at] in b"ci":
                module = _name(data, at + 1, first_nl)
                if module is not None:
                    found.append((module, m.group(1).decode("ascii")))
                    break
    return found


def _stack_imports(data: bytes) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for count, m in enumerate(_STACK_END_RE.finditer(data)):
        if count >= MAX_HUNT_CANDIDATES:
            break
        op = m.end() - 1
        for end2 in _memo_ends(data, op):
            for start2, name in _strings_ending_at(data, end2):
                for end1 in _memo_ends(data, start2):
                    for _start1, module in _strings_ending_at(data, end1):
                        found.append((module, name))
    return found


def literal_imports(data: bytes, start: int = 0) -> list[tuple[str, str]]:
    """``(module, name)`` of every import written literally in ``data[start:]``.

    At most :data:`MAX_HUNT_BYTES` from ``start`` are searched; each pair is listed
    once, in the order found (text imports first).
    """
    region = data[start : start + MAX_HUNT_BYTES]
    out: list[tuple[str, str]] = []
    for pair in _text_imports(region) + _stack_imports(region):
        if pair not in out:
            out.append(pair)
    return out

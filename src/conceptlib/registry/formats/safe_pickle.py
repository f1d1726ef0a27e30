"""Loading PyTorch pickle files without running anything they did not earn.

A ``.pt``/``.bin`` file is a pickle, and a pickle is a program: ``GLOBAL`` imports
any callable and ``REDUCE`` calls it. :func:`safe_torch_load` therefore never hands
bytes to :mod:`pickle` or :func:`torch.load` until a walk over *every* opcode of
*every* pickle in the container has passed, and then only with
``weights_only=True``. There is no fallback that loosens this.

The walk is a small symbolic interpreter over :func:`pickletools.genops`: it keeps
the values that matter (strings, numbers, tuples, lists, dicts, imported names) on a
stack and checks that

* every import (``GLOBAL``/``STACK_GLOBAL``) is in :data:`ALLOWED_GLOBALS`, each in
  the role it has in files ``torch.save`` writes (a callable for ``REDUCE``, a
  storage type inside a persistent id, a class for ``NEWOBJ``/``BUILD``);
* only opcodes that plain containers, tensors and ``ParameterDict`` need appear (no
  ``INST``/``OBJ``/``EXT*``/``NEWOBJ_EX``/``PERSID``/out-of-band buffers);
* every persistent id is torch's storage tuple, naming a float storage (or int64,
  which the Textual Inversion paper's code uses for token ids: loaded as data, never
  as vectors), a record that exists and a declared size that fits an embedding (a
  claim of gigabytes is refused before anything is allocated);
* every tensor's offset, size and stride are counts that keep it inside its storage,
  and no tensor claims more elements than an embedding holds (a stride-0 view).

Everything found is collected before deciding, so a malicious ``REDUCE`` followed by
a deliberately broken stream is reported as unsafe, not as merely corrupt.
"""

from __future__ import annotations

import io
import pickletools
import re
import reprlib
import warnings
import zipfile
from dataclasses import dataclass, field
from typing import Any

from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
from conceptlib.errors import CorruptFile, FileTooLarge, UnsafeFile, UnsupportedContent
from conceptlib.registry.formats.sniff import is_7z, is_pickle, is_tar, is_zip

# --------------------------------------------------------------------------- limits

#: The largest real embedding (75 SDXL vectors, float64) declares 1.2 MB of storage.
MAX_DECLARED_STORAGE_BYTES = 4 * 1024 * 1024
#: torch.save writes a few hundred opcodes for an embedding; ParameterDict ~300.
MAX_PICKLE_OPS = 100_000
MAX_STACK_DEPTH = 10_000
MAX_PICKLE_BYTES = 4 * 1024 * 1024
MAX_FINDINGS_SHOWN = 5

#: torch's legacy (pre-1.6) format starts with these two pickled integers.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# --------------------------------------------------------------------------- allow-list

#: Storage types torch 1.x-2.x writes in persistent ids, with their element sizes.
#: Float types hold the vectors; int64 holds token ids: the Textual Inversion
#: authors' LDM code (rinongal/textual_inversion, ``EmbeddingManager.save``) keeps
#: ``string_to_token`` as ``{"*": tensor(token_id)}``, a 0-d view into the
#: tokenizer's ``[1, 77]`` int64 output. Other integer and bool storages appear in
#: no embedding file and stay refused (as unsupported content, not as a threat).
FLOAT_STORAGE_TYPES: dict[tuple[str, str], int] = {
    ("torch", "FloatStorage"): 4,
    ("torch", "HalfStorage"): 2,
    ("torch", "BFloat16Storage"): 2,
    ("torch", "DoubleStorage"): 8,
}
INT_STORAGE_TYPES: dict[tuple[str, str], int] = {("torch", "LongStorage"): 8}
STORAGE_TYPES: dict[tuple[str, str], int] = {**FLOAT_STORAGE_TYPES, **INT_STORAGE_TYPES}

#: Callables a pickle may ``REDUCE``: exactly what ``torch.save`` emits for tensors,
#: parameters and dicts (tests/test_safe_pickle.py checks the list against real files).
CALLABLES: dict[tuple[str, str], str] = {
    # every tensor: _rebuild_tensor_v2(storage, offset, size, stride, requires_grad,
    # backward_hooks) with an empty OrderedDict for the hooks
    ("torch._utils", "_rebuild_tensor_v2"): "tensor",
    ("collections", "OrderedDict"): "dict",
    # nn.Parameter (A1111 keeps its vector as one); *_with_state when the parameter
    # carries Python attributes
    ("torch._utils", "_rebuild_parameter"): "tensor",
    ("torch._utils", "_rebuild_parameter_with_state"): "tensor",
    # ParameterDict's state holds _non_persistent_buffers_set = set(); protocol 2
    # spells builtins "__builtin__"
    ("builtins", "set"): "set",
    ("__builtin__", "set"): "set",
}

#: Classes a pickle may instantiate with ``NEWOBJ`` and fill with ``BUILD``: only the
#: ParameterDict old A1111 files keep in ``string_to_param``. It is never rebuilt as a
#: real nn.Module: loading maps it to a plain state holder (see ``_ParameterDictState``).
CLASSES: dict[tuple[str, str], str] = {
    ("torch.nn.modules.container", "ParameterDict"): "ParameterDict",
}

#: Every import a file may contain, and why it is there.
ALLOWED_GLOBALS: dict[str, str] = {
    **{
        f"{m}.{n}": f"storage type in persistent ids ({size}-byte floats)"
        for (m, n), size in FLOAT_STORAGE_TYPES.items()
    },
    "torch.LongStorage": "storage type in persistent ids (int64 token ids, as data only)",
    **{f"{m}.{n}": f"called by REDUCE to rebuild a {role}" for (m, n), role in CALLABLES.items()},
    **{f"{m}.{n}": "old A1111 string_to_param container" for (m, n) in CLASSES},
}

#: Harmless torch data types that are simply not an embedding's float tensors: named
#: as unsupported content rather than as a threat (they are never loaded either way).
_KNOWN_TORCH_DATA: set[tuple[str, str]] = {
    *(
        ("torch", n)
        for n in (
            "device", "Size", "dtype", "layout", "strided", "sparse_coo", "float32", "float",
            "float16", "half", "bfloat16", "float64", "double", "int64", "long", "int32",
            "int", "int16", "short", "int8", "uint8", "bool", "complex64", "complex128",
        )
    ),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_sparse_tensor"),
    ("torch._utils", "_rebuild_qtensor"),
    ("torch._utils", "_rebuild_meta_tensor_no_storage"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.storage", "UntypedStorage"),
    ("torch.storage", "TypedStorage"),
}  # fmt: skip

_DOTTED_RE = re.compile(r"^[\w.]+$")
_KEY_RE = re.compile(r"^[0-9]{1,24}$")
_LOCATION_RE = re.compile(r"^[a-z_]{1,16}(:[0-9]{1,4})?$")
#: torch names the zip's folder after the file's stem (or "archive"): any one plain
#: path component, so names with spaces or non-ASCII letters are fine.
_ROOT_RE = re.compile(r"^[^\x00-\x1f\x7f/\\:*?\"<>|]{1,255}$")
_RECORD_RE = re.compile(
    r"^(data\.pkl|version|byteorder|\.format_version|\.storage_alignment|"
    r"\.data/version|\.data/serialization_id|data/[0-9]{1,24})$"
)

_FORBIDDEN_OPCODES = {
    "INST": "INST (instantiates a class by name)",
    "OBJ": "OBJ (instantiates a class)",
    "EXT1": "EXT1 (the copyreg extension registry)",
    "EXT2": "EXT2 (the copyreg extension registry)",
    "EXT4": "EXT4 (the copyreg extension registry)",
    "NEWOBJ_EX": "NEWOBJ_EX (instantiates a class with keyword arguments)",
    "PERSID": "PERSID (a text persistent id, which torch never writes)",
    "NEXT_BUFFER": "NEXT_BUFFER (an out-of-band buffer)",
    "READONLY_BUFFER": "READONLY_BUFFER (an out-of-band buffer)",
}

_UNSAFE_TAIL = "only tensor and container types are allowed; the file was not executed"


# --------------------------------------------------------------------------- symbolic values


@dataclass(eq=False)
class _Global:
    module: str
    name: str
    allowed: bool

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return self.dotted


@dataclass(eq=False, repr=False)
class _Opaque:
    """A value the walk does not need to look into (a rebuilt tensor, a forbidden call)."""

    kind: str

    def __repr__(self) -> str:
        return f"<{self.kind}>"


@dataclass(eq=False, repr=False)
class _Dict:
    items: list[tuple[Any, Any]] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"<dict of {len(self.items)}>"


@dataclass(eq=False, repr=False)
class _Set:
    def __repr__(self) -> str:
        return "<set>"


@dataclass(eq=False, repr=False)
class _Instance:
    cls: _Global
    built: bool = False

    def __repr__(self) -> str:
        return f"<{self.cls.dotted} object>"


@dataclass(eq=False, repr=False)
class _Storage:
    key: str
    itemsize: int
    numel: int

    def __repr__(self) -> str:
        return f"<storage {self.key}>"


class _Broken(Exception):
    """The stream cannot be walked any further (bad opcode, stack misuse, truncation)."""


@dataclass
class _Findings:
    """What the walk saw, decided only once the whole stream has been looked at."""

    unsafe: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    broken: str | None = None
    too_large: str | None = None
    storages: dict[str, _Storage] = field(default_factory=dict)
    uses_parameter_dict: bool = False
    framed: bool = False

    def add_unsafe(self, what: str) -> None:
        if what not in self.unsafe:
            self.unsafe.append(what)

    def add_unsupported(self, what: str) -> None:
        if what not in self.unsupported:
            self.unsupported.append(what)

    def raise_if_bad(self, path: str | None) -> None:
        if self.unsafe:
            shown = ", ".join(self.unsafe[:MAX_FINDINGS_SHOWN])
            more = len(self.unsafe) - MAX_FINDINGS_SHOWN
            if more > 0:
                shown += f" and {more} more"
            verb = "imports" if all(_DOTTED_RE.match(u) for u in self.unsafe) else "uses"
            raise UnsafeFile(f"pickle {verb} {shown}; {_UNSAFE_TAIL}", path=path, found=self.unsafe)
        if self.too_large:
            raise FileTooLarge(self.too_large, path=path)
        if self.unsupported:
            raise UnsupportedContent(
                f"pickle holds {', '.join(self.unsupported[:MAX_FINDINGS_SHOWN])}, not an "
                "embedding; expected float tensors in dicts (the file was not executed)",
                path=path,
            )
        if self.broken:
            raise CorruptFile(self.broken, path=path)


def _classify_global(module: str, name: str, findings: _Findings) -> _Global:
    key = (module, name)
    if key in STORAGE_TYPES or key in CALLABLES or key in CLASSES:
        if key in CLASSES:
            findings.uses_parameter_dict = True
        return _Global(module, name, True)
    dotted = f"{module}.{name}"
    if module.startswith("torch.nn.modules.") and name[:1].isupper() and name.isidentifier():
        findings.add_unsupported(f"an nn.Module ({dotted})")
    elif key in _KNOWN_TORCH_DATA or (module == "torch" and name.endswith("Storage")):
        findings.add_unsupported(
            f"a torch object other than float tensors and int64 token ids ({dotted})"
        )
    else:
        findings.add_unsafe(dotted)
    return _Global(module, name, False)


# --------------------------------------------------------------------------- the walk


def _read_global_arg(data: bytes, pos: int) -> tuple[str, str]:
    """Module and name of a text ``GLOBAL``/``INST`` at ``pos``, exactly as written."""
    end1 = data.index(b"\n", pos + 1)
    end2 = data.index(b"\n", end1 + 1)
    module = data[pos + 1 : end1].decode("utf-8", "replace")
    name = data[end1 + 1 : end2].decode("utf-8", "replace")
    return module, name


class _Walker:
    """Symbolic execution of one pickle, from ``start`` to its ``STOP``."""

    def __init__(self, data: bytes, findings: _Findings, *, legacy_pids: bool) -> None:
        self.data = data
        self.findings = findings
        self.legacy_pids = legacy_pids
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    # -- stack helpers
    def push(self, value: Any) -> None:
        if len(self.stack) >= MAX_STACK_DEPTH:
            raise _Broken(f"pickle stack grows beyond {MAX_STACK_DEPTH} entries")
        self.stack.append(value)

    def pop(self) -> Any:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) <= floor:
            raise _Broken("pickle pops from an empty stack")
        return self.stack.pop()

    def top(self) -> Any:
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) <= floor:
            raise _Broken("pickle reads an empty stack")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise _Broken("pickle closes a MARK it never opened")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    # -- the walk
    def run(self, start: int) -> tuple[Any, int]:
        stream = io.BytesIO(self.data)
        stream.seek(start)
        count = 0
        try:
            for op, arg, pos in pickletools.genops(stream):
                count += 1
                if count > MAX_PICKLE_OPS:
                    raise _Broken(f"pickle has more than {MAX_PICKLE_OPS} opcodes")
                if op.name == "STOP":
                    result = self.pop()
                    if self.stack or self.marks:
                        raise _Broken(f"pickle STOP at byte {pos} leaves values on the stack")
                    return result, stream.tell()
                self.step(op.name, arg, pos)
        except _Broken:
            raise
        except Exception as exc:  # genops: unknown opcode, truncation, bad text
            raise _Broken(f"pickle stream is broken: {exc}") from None
        raise _Broken("pickle stream ends before STOP")

    def step(self, name: str, arg: Any, pos: int) -> None:
        f = self.findings
        if name in _FORBIDDEN_OPCODES:
            if name == "INST":
                module, gname = _read_global_arg(self.data, pos)
                _classify_global(module, gname, f)
                f.add_unsafe(f"{module}.{gname} (via INST)")
            else:
                f.add_unsafe(f"opcode {_FORBIDDEN_OPCODES[name]}")
            raise _Broken(f"pickle uses the forbidden opcode {name}")
        if name == "PROTO":
            if not 0 <= arg <= 5:
                raise _Broken(f"pickle protocol {arg} is unknown")
        elif name == "FRAME":
            f.framed = True
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            self.push({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name in (
            "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT",
            "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
            "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
            "BYTEARRAY8",
        ):  # fmt: skip
            self.push(arg)
        elif name == "MARK":
            if len(self.marks) >= MAX_STACK_DEPTH:
                raise _Broken("pickle nests MARKs too deeply")
            self.marks.append(len(self.stack))
        elif name == "POP":
            if self.marks and len(self.stack) == self.marks[-1]:
                self.marks.pop()
            else:
                self.pop()
        elif name == "POP_MARK":
            self.pop_mark()
        elif name == "DUP":
            self.push(self.top())
        elif name == "EMPTY_TUPLE":
            self.push(())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = [self.pop() for _ in range(n)][::-1]
            self.push(tuple(items))
        elif name == "TUPLE":
            self.push(tuple(self.pop_mark()))
        elif name == "EMPTY_LIST":
            self.push([])
        elif name == "LIST":
            self.push(list(self.pop_mark()))
        elif name in ("APPEND", "APPENDS"):
            items = [self.pop()] if name == "APPEND" else self.pop_mark()
            target = self.top()
            if not isinstance(target, list):
                self._misuse(name, target)
            else:
                target.extend(items)
        elif name == "EMPTY_DICT":
            self.push(_Dict())
        elif name == "DICT":
            items = self.pop_mark()
            if len(items) % 2:
                raise _Broken("pickle DICT has an odd number of items")
            self.push(_Dict(list(zip(items[::2], items[1::2], strict=True))))
        elif name in ("SETITEM", "SETITEMS"):
            if name == "SETITEM":
                value = self.pop()
                items = [self.pop(), value]
            else:
                items = self.pop_mark()
            if len(items) % 2:
                raise _Broken("pickle SETITEMS has an odd number of items")
            target = self.top()
            if not isinstance(target, _Dict):
                self._misuse(name, target)
            else:
                target.items.extend(zip(items[::2], items[1::2], strict=True))
        elif name == "EMPTY_SET":
            self.push(_Set())
        elif name == "ADDITEMS":
            self.pop_mark()
            if not isinstance(self.top(), _Set):
                self._misuse(name, self.top())
        elif name == "FROZENSET":
            self.pop_mark()
            self.push(_Set())
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            self.memo[int(arg)] = self.top()
        elif name == "MEMOIZE":
            self.memo[len(self.memo)] = self.top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            key = int(arg)
            if key not in self.memo:
                raise _Broken(f"pickle reads memo slot {key} before writing it")
            self.push(self.memo[key])
        elif name == "GLOBAL":
            module, gname = _read_global_arg(self.data, pos)
            self.push(_classify_global(module, gname, f))
        elif name == "STACK_GLOBAL":
            gname, module = self.pop(), self.pop()
            if not isinstance(module, str) or not isinstance(gname, str):
                f.add_unsafe("a STACK_GLOBAL whose name is computed at load time")
                self.push(_Opaque("forbidden"))
            else:
                self.push(_classify_global(module, gname, f))
        elif name == "REDUCE":
            args = self.pop()
            func = self.pop()
            self.push(self._reduce(func, args))
        elif name == "NEWOBJ":
            args = self.pop()
            cls = self.pop()
            if isinstance(cls, _Global) and cls.allowed and (cls.module, cls.name) in CLASSES:
                if args != ():
                    f.add_unsafe(f"{cls.dotted} built with arguments")
                self.push(_Instance(cls))
            else:
                self._misuse(name, cls)
                self.push(_Opaque("forbidden"))
        elif name == "BUILD":
            state = self.pop()
            target = self.top()
            if isinstance(target, _Instance) and not target.built and isinstance(state, _Dict):
                target.built = True
            else:
                self._misuse(name, target)
        elif name == "BINPERSID":
            self.push(self._persistent_id(self.pop()))
        else:  # an opcode newer than this table
            f.add_unsafe(f"opcode {name}")
            raise _Broken(f"pickle uses the unexpected opcode {name}")

    def _misuse(self, op: str, target: Any) -> None:
        if isinstance(target, _Global) and not target.allowed:
            return  # already reported as a forbidden import
        if isinstance(target, _Opaque) and target.kind == "forbidden":
            return
        what = target.dotted if isinstance(target, _Global) else type(target).__name__.lstrip("_")
        self.findings.add_unsafe(f"opcode {op} applied to {what}")

    def _reduce(self, func: Any, args: Any) -> Any:
        f = self.findings
        if not isinstance(func, _Global):
            if not (isinstance(func, _Opaque) and func.kind == "forbidden"):
                f.add_unsafe("a call of a value computed at load time (a REDUCE gadget chain)")
            return _Opaque("forbidden")
        if not func.allowed:
            return _Opaque("forbidden")
        key = (func.module, func.name)
        role = CALLABLES.get(key)
        if role is None:
            f.add_unsafe(f"{func.dotted} called as a function")
            return _Opaque("forbidden")
        if not isinstance(args, tuple):
            f.add_unsafe(f"{func.dotted} called with non-tuple arguments")
            return _Opaque("forbidden")
        if role == "dict":
            return _Dict()
        if role == "set":
            return _Set()
        if args and isinstance(args[0], _Opaque) and args[0].kind == "forbidden":
            return _Opaque("forbidden")  # the storage or tensor was already reported
        if func.name == "_rebuild_tensor_v2":
            if not args or not isinstance(args[0], _Storage):
                f.add_unsafe(f"{func.dotted} called without a torch storage")
                return _Opaque("forbidden")
            too_large = _check_view(args[0], args[1:4])
            if too_large:
                f.too_large = too_large
        elif not args or not isinstance(args[0], _Opaque) or args[0].kind != "tensor":
            f.add_unsafe(f"{func.dotted} called on something other than a tensor")
            return _Opaque("forbidden")
        return _Opaque("tensor")

    def _persistent_id(self, pid: Any) -> Any:
        f = self.findings
        want = 6 if self.legacy_pids else 5
        if (
            self.legacy_pids
            and isinstance(pid, tuple)
            and len(pid) == 4
            and pid[0] == "module"
            and isinstance(pid[1], _Global)
        ):
            # torch's legacy format stores an nn.Module class with its source code;
            # the weights-only loader refuses such ids, so say what the file holds.
            if pid[1].allowed:
                f.add_unsupported(
                    f"a {pid[1].name} in PyTorch's legacy (pre-1.6) format, which the "
                    "weights-only loader cannot read"
                )
            return pid[1]
        if not isinstance(pid, tuple) or len(pid) != want or pid[0] != "storage":
            f.add_unsafe(f"a persistent id {_short(pid)} that is not a torch storage reference")
            return _Opaque("forbidden")
        stype, key, location, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(stype, _Global):
            f.add_unsafe(f"a persistent id with storage type {_short(stype)}")
            return _Opaque("forbidden")
        itemsize = STORAGE_TYPES.get((stype.module, stype.name))
        if itemsize is None:
            if stype.allowed:
                f.add_unsafe(f"{stype.dotted} used as a storage type")
            return _Opaque("forbidden")
        if not isinstance(key, str) or not _KEY_RE.match(key):
            raise _Broken(f"storage key {_short(key)} is not a record number")
        if not isinstance(location, str) or not _LOCATION_RE.match(location):
            raise _Broken(f"storage location {_short(location)} is not a device name")
        if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
            raise _Broken(f"storage size {_short(numel)} is not a count")
        if self.legacy_pids and pid[5] is not None:
            view = pid[5]
            if not (
                isinstance(view, tuple)
                and len(view) == 3
                and all(isinstance(v, (int, str)) for v in view)
            ):
                raise _Broken(f"storage view {_short(view)} is malformed")
        prior = f.storages.get(key)
        if prior is not None and (prior.itemsize, prior.numel) != (itemsize, numel):
            raise _Broken(f"storage {key} is declared twice with different sizes")
        f.storages[key] = _Storage(key, itemsize, numel)
        total = sum(s.numel * s.itemsize for s in f.storages.values())
        if total > MAX_DECLARED_STORAGE_BYTES:
            f.too_large = (
                f"pickle declares {total} bytes of tensor storage; expected at most "
                f"{MAX_DECLARED_STORAGE_BYTES} (an embedding needs kilobytes)"
            )
        return f.storages[key]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**48


def _check_view(storage: _Storage, view: tuple[Any, ...]) -> str | None:
    """Check a tensor's ``(offset, size, stride)`` against its storage, as torch rebuilds it.

    The same rules for every dtype: counts only, at most 8 dimensions, every element
    inside the storage, and no more elements than an embedding could hold (a stride-0
    view claiming billions of elements is refused before anything materialises it).

    Returns:
        A too-large message, or None. Raises ``_Broken`` on a malformed view.
    """
    offset, size, stride = (*view, None, None, None)[:3]
    for what, dims in (("size", size), ("stride", stride)):
        if not isinstance(dims, tuple) or len(dims) > 8 or not all(map(_is_count, dims)):
            raise _Broken(f"tensor {what} {_short(dims)} is not a tuple of at most 8 counts")
    if not _is_count(offset) or len(stride) != len(size):
        raise _Broken(
            f"tensor offset {_short(offset)} and stride {_short(stride)} do not fit its size "
            f"{_short(size)}"
        )
    numel = 1
    for n in size:
        numel *= n
    if numel == 0:
        return None
    last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
    if last >= storage.numel:
        raise _Broken(
            f"tensor {list(size)} at offset {offset} reaches element {last} of storage "
            f"{storage.key}, which holds {storage.numel}"
        )
    if numel * storage.itemsize > MAX_DECLARED_STORAGE_BYTES:
        return (
            f"tensor {list(size)} has {numel} elements; expected at most "
            f"{MAX_DECLARED_STORAGE_BYTES // storage.itemsize} (an embedding needs kilobytes)"
        )
    return None


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist = 3, 6, 4
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = 40


def _short(value: Any) -> str:
    """A bounded repr: hostile values may be deeply nested or huge."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _walk_one(
    data: bytes, start: int, findings: _Findings, *, legacy_pids: bool = False
) -> tuple[Any, int]:
    """Walk the pickle at ``start``; return its symbolic result and end offset.

    On a broken stream the break is recorded and ``(None, -1)`` returned: the caller
    decides (forbidden imports seen before the break still win).
    """
    try:
        return _Walker(data, findings, legacy_pids=legacy_pids).run(start)
    except _Broken as exc:
        findings.broken = str(exc)
        return None, -1


def scan_pickle(data: bytes, *, path: str | None = None) -> None:
    """Walk one raw pickle (no torch container) and raise if it is unsafe or broken.

    Raises:
        UnsafeFile: a forbidden import, opcode or gadget.
        UnsupportedContent: an import of a known but non-embedding torch type.
        CorruptFile: a broken stream with nothing forbidden before the break.
    """
    findings = _Findings()
    _, end = _walk_one(data, 0, findings)
    findings.raise_if_bad(path)
    if end != len(data):
        raise CorruptFile(f"pickle has {len(data) - end} unexpected bytes after STOP", path=path)


# --------------------------------------------------------------------------- containers


def _check_zip(data: bytes, path: str | None) -> tuple[str, dict[str, bytes]]:
    """Validate a torch zip's member names, sizes and CRCs; return ``(root, records)``."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise CorruptFile(
            f"zip container is broken ({exc}); expected a PyTorch zip file", path=path
        ) from None
    if not infos:
        raise UnsupportedContent(
            "zip archive is empty; expected a PyTorch file with data.pkl", path=path
        )
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if name in seen:
            raise UnsafeFile(
                f"zip has two members named {name!r}; expected unique torch records", path=path
            )
        seen.add(name)
        parts = name.rstrip("/").split("/")
        if (
            name.startswith(("/", "\\"))
            or "\\" in name
            or "\x00" in name
            or re.match(r"^[A-Za-z]:", name)
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise UnsafeFile(
                f"zip member {name!r} is a path outside the archive; expected <root>/data.pkl and "
                "<root>/data/N records",
                path=path,
            )
    if not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in seen):
        shown = ", ".join(repr(n) for n in sorted(seen)[:3])
        raise UnsupportedContent(
            f"zip archive ({shown}{', ...' if len(seen) > 3 else ''}) has no <folder>/data.pkl; "
            "expected a PyTorch file (torch.save)",
            path=path,
        )
    roots: set[str] = set()
    records: dict[str, zipfile.ZipInfo] = {}
    total = 0
    for info in infos:
        name = info.filename
        parts = name.rstrip("/").split("/")
        root = parts[0]
        if not _ROOT_RE.match(root):
            raise UnsafeFile(f"zip member {name!r} has an unexpected folder name", path=path)
        roots.add(root)
        if len(roots) > 1:
            raise UnsafeFile(
                f"zip members sit under several folders ({', '.join(sorted(roots))}); a PyTorch "
                "file has exactly one",
                path=path,
            )
        if info.is_dir():
            continue
        rest = "/".join(parts[1:])
        if not _RECORD_RE.match(rest):
            if rest == "constants.pkl" or rest.startswith(("code/", ".data/ts_code")):
                raise UnsupportedContent(
                    "zip is a TorchScript archive (torch.jit.save), not an embedding", path=path
                )
            raise UnsafeFile(
                f"zip member {name!r} is not a PyTorch record; expected data.pkl, data/N, "
                "version, byteorder (the file was not executed)",
                path=path,
            )
        if info.flag_bits & 0x1:
            raise UnsupportedContent(f"zip member {name!r} is encrypted", path=path)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsupportedContent(
                f"zip member {name!r} uses compression method {info.compress_type}; expected "
                "stored or deflated",
                path=path,
            )
        total += info.file_size
        if total > MAX_EMBEDDING_FILE_BYTES:
            raise FileTooLarge(
                f"zip members unpack to more than {MAX_EMBEDDING_FILE_BYTES} bytes; an "
                "embedding is kilobytes",
                path=path,
            )
        records[rest] = info
    contents: dict[str, bytes] = {}
    for rest, info in records.items():
        try:
            contents[rest] = zf.read(info)  # reading checks the CRC-32
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise CorruptFile(
                f"zip member {info.filename!r} is damaged ({exc})", path=path
            ) from None
        except Exception as exc:  # zlib.error and friends
            raise CorruptFile(
                f"zip member {info.filename!r} cannot be read ({exc})", path=path
            ) from None
    return next(iter(roots)), contents


def _scan_zip(data: bytes, path: str | None) -> _Findings:
    _root, records = _check_zip(data, path)
    pkl = records["data.pkl"]
    if len(pkl) > MAX_PICKLE_BYTES:
        raise FileTooLarge(
            f"data.pkl is {len(pkl)} bytes; expected at most {MAX_PICKLE_BYTES}", path=path
        )
    findings = _Findings()
    _, end = _walk_one(pkl, 0, findings)
    findings.raise_if_bad(path)
    if end != len(pkl):
        raise CorruptFile(f"data.pkl has {len(pkl) - end} unexpected bytes after STOP", path=path)
    for key, storage in findings.storages.items():
        record = records.get(f"data/{key}")
        if record is None:
            raise CorruptFile(
                f"tensor storage {key} has no data/{key} record in the zip", path=path
            )
        need = storage.numel * storage.itemsize
        if len(record) != need:
            raise CorruptFile(
                f"tensor storage {key} declares {need} bytes but its record holds {len(record)}",
                path=path,
            )
    return findings


def _scan_legacy(data: bytes, path: str | None) -> _Findings:
    """Walk torch's pre-1.6 format: five pickles, then raw storages."""
    findings = _Findings()
    magic, pos = _walk_one(data, 0, findings)
    if pos < 0 or magic != LEGACY_MAGIC_NUMBER:
        # A plain pickle (or a broken one): walk all of it so a payload is named.
        findings.raise_if_bad(path)
        raise UnsupportedContent(
            "file is a plain Python pickle, not a PyTorch file; expected torch.save output "
            "(the file was not executed)",
            path=path,
        )
    proto, pos = _walk_one(data, pos, findings)
    if pos >= 0 and proto != LEGACY_PROTOCOL_VERSION:
        findings.raise_if_bad(path)
        raise UnsupportedContent(
            f"legacy PyTorch file has protocol version {_short(proto)}; expected {LEGACY_PROTOCOL_VERSION}",
            path=path,
        )
    if pos >= 0:
        _, pos = _walk_one(data, pos, findings)  # sys_info
    if pos >= 0:
        _, pos = _walk_one(data, pos, findings, legacy_pids=True)
    keys: Any = None
    if pos >= 0:
        keys, pos = _walk_one(data, pos, findings)
    findings.raise_if_bad(path)
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise CorruptFile("legacy PyTorch file has no list of storage keys", path=path)
    if set(keys) != set(findings.storages):
        raise CorruptFile("legacy PyTorch file lists storages its pickle does not use", path=path)
    for key in keys:
        if pos + 8 > len(data):
            raise CorruptFile(f"legacy PyTorch file is truncated in storage {key}", path=path)
        numel = int.from_bytes(data[pos : pos + 8], "little")
        storage = findings.storages[key]
        if numel != storage.numel:
            raise CorruptFile(
                f"storage {key} declares {storage.numel} elements but its data says {numel}",
                path=path,
            )
        pos += 8 + numel * storage.itemsize
        if pos > len(data):
            raise CorruptFile(f"legacy PyTorch file is truncated in storage {key}", path=path)
    if pos != len(data):
        raise CorruptFile(
            f"legacy PyTorch file has {len(data) - pos} unexpected bytes at the end", path=path
        )
    return findings


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
        findings = _scan_zip(data, path)
    elif is_pickle(data):
        findings = _scan_legacy(data, path)
    else:
        raise UnsupportedContent(
            f"file starts with {data[:8]!r}; expected a PyTorch zip (PK) or pickle stream",
            path=path,
        )
    return _torch_load_checked(data, findings, path)


def _torch_load_checked(data: bytes, findings: _Findings, path: str | None) -> Any:
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
    except (
        RuntimeError,
        ValueError,
        EOFError,
        OSError,
        KeyError,
        TypeError,
        AttributeError,
    ) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptFile(f"PyTorch could not read the file ({first[:200]})", path=path) from None
    return _plain(obj, path, depth=0)


def _plain(obj: Any, path: str | None, depth: int) -> Any:
    """Check the loaded tree holds only plain data and tensors; unwrap ParameterDicts."""
    import torch

    if depth > 32:
        raise UnsupportedContent("file nests containers more than 32 deep", path=path)
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, _ParameterDictState):
        state = getattr(obj, "state", None)
        params = state.get("_parameters") if isinstance(state, dict) else None
        if not isinstance(params, dict):
            raise UnsupportedContent(
                "ParameterDict without _parameters; expected tensors", path=path
            )
        out = ParameterDictContents()
        for key, value in params.items():
            if value is not None:
                out[key] = _plain(value, path, depth + 1)
        return out
    if isinstance(obj, dict):
        return {k: _plain(v, path, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, path, depth + 1) for v in obj)
    if isinstance(obj, (set, frozenset)):
        return obj
    raise UnsupportedContent(
        f"file holds a {type(obj).__module__}.{type(obj).__qualname__}; expected tensors in dicts",
        path=path,
    )

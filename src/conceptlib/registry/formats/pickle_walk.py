"""The opcode walk every pickle passes before anything else reads it.

A pickle is a program: ``GLOBAL`` imports any callable and ``REDUCE`` calls it. The
walk is a small symbolic interpreter over :func:`pickletools.genops`: it keeps the
values that matter (strings, numbers, tuples, lists, dicts, imported names) on a
stack and checks that

* every import (``GLOBAL``/``STACK_GLOBAL``) is in :data:`ALLOWED_GLOBALS`, each in
  the role it has in files ``torch.save`` writes (a callable for ``REDUCE``, a
  storage type inside a persistent id, a class for ``NEWOBJ``/``BUILD``);
* only opcodes that plain containers, tensors, ``ParameterDict`` and
  ``Module.state_dict()`` need appear (no ``INST``/``OBJ``/``EXT*``/``NEWOBJ_EX``/
  ``PERSID``/out-of-band buffers); ``BUILD`` fills a ``ParameterDict``, or sets the
  ``_metadata`` of a state dict (an ``OrderedDict``) to a dict of dicts of plain
  values, which is what ``torch.nn.Module.state_dict`` attaches;
* every persistent id is torch's storage tuple, naming a float storage (or int64,
  which the Textual Inversion paper's code uses for token ids: loaded as data, never
  as vectors), a record that exists and a declared size that fits an embedding (a
  claim of gigabytes is refused before anything is allocated);
* every tensor's offset, size and stride are counts that keep it inside its storage;
  no tensor claims more elements than an embedding holds (:data:`MAX_TENSOR_ELEMENTS`,
  so a stride-0 view of a few bytes cannot expand to gigabytes), and all of a file's
  tensors together claim no more bytes than its storages may declare;
* frames (protocol 4+ ``FRAME``: an 8-byte length, then that many bytes) are read
  as CPython's ``_Unframer`` reads them: an opcode that runs past the end of its
  frame, a frame opened inside another, a frame longer than the data or one that
  continues past ``STOP`` is refused. Such a stream is read differently by different
  unpicklers (CPython's C unpickler reading a file takes a text line or a string
  from *after* the frame, skipping the frame's tail), so a call hidden there would
  be invisible to a linear walk: it is named :class:`~conceptlib.errors.UnsafeFile`.

A file may hold several pickles one after another (torch's legacy format writes
five; anything after a ``STOP`` may be another): :func:`walk_pickles` walks each in
turn. Everything found is collected before deciding, so a malicious ``REDUCE``
followed by a broken stream is reported as unsafe, not as merely corrupt; and
before any structural refusal (a broken stream, bytes after ``STOP``, a damaged
container) the bytes the walk could not read are searched for literal imports
(:func:`~.literal_imports.literal_imports`): a file that holds a forbidden import is
always refused as unsafe.
"""

from __future__ import annotations

import io
import pickletools
import re
import reprlib
from dataclasses import dataclass, field
from typing import Any

from conceptlib.config import MAX_VECTORS
from conceptlib.errors import (
    ConceptlibError,
    CorruptFile,
    FileTooLarge,
    UnsafeFile,
    UnsupportedContent,
)
from conceptlib.registry.formats.literal_imports import is_dangerous, literal_imports
from conceptlib.schemas.enums import SLOT_WIDTH

# --------------------------------------------------------------------------- limits

#: The largest real embedding (75 SDXL vectors, float64) declares 1.2 MB of storage.
MAX_DECLARED_STORAGE_BYTES = 4 * 1024 * 1024
#: Most elements one tensor may claim: 75 vectors (CLIP's window) x 4096 (the widest
#: text encoder, SD3/FLUX's T5-XXL) x 4 (every slot at once). Checked on the view
#: (offset, size, stride) before torch builds it.
MAX_TENSOR_ELEMENTS = MAX_VECTORS * max(SLOT_WIDTH.values()) * len(SLOT_WIDTH)
#: torch.save writes a few hundred opcodes for an embedding; ParameterDict ~300.
#: Counted over every pickle of a file together.
MAX_PICKLE_OPS = 100_000
MAX_STACK_DEPTH = 10_000
MAX_PICKLE_BYTES = 4 * 1024 * 1024
MAX_FINDINGS_SHOWN = 5

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
#: real nn.Module: loading maps it to a plain state holder.
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
_SCALAR_OPCODES = frozenset(
    {
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT",
        "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
        "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
        "BYTEARRAY8",
    }
)  # fmt: skip

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
    """A dict; ``ordered`` when made by ``OrderedDict()``, ``built`` once ``BUILD`` ran."""

    items: list[tuple[Any, Any]] = field(default_factory=list)
    ordered: bool = False
    built: bool = False

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


# --------------------------------------------------------------------------- findings


@dataclass
class Findings:
    """What the walk saw, decided only once every pickle has been looked at.

    Attributes:
        unsafe: forbidden imports, opcodes and gadgets (dotted names where known).
        unsupported: known torch types that are not an embedding's tensors.
        broken: why a stream could not be walked to its end (first break only).
        too_large: why declared sizes exceed the caps.
        storages: storage key -> declared storage (type size, element count).
        loose: ``(bytes, offset)`` regions the walk could not read as pickles; they
            are searched for literal imports before any structural refusal.
    """

    unsafe: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    broken: str | None = None
    too_large: str | None = None
    storages: dict[str, _Storage] = field(default_factory=dict)
    uses_parameter_dict: bool = False
    framed: bool = False
    ops: int = 0
    view_bytes: int = 0
    loose: list[tuple[bytes, int]] = field(default_factory=list)

    def add_unsafe(self, what: str) -> None:
        if what not in self.unsafe:
            self.unsafe.append(what)

    def add_unsupported(self, what: str) -> None:
        if what not in self.unsupported:
            self.unsupported.append(what)

    def hunt(self) -> None:
        """Name the dangerous imports written literally in the regions the walk could not read.

        Only :func:`~.literal_imports.is_dangerous` ones: in bytes not read as an
        unpickler reads them, an unknown name may be a coincidence of a damaged file.
        """
        for data, start in self.loose:
            for module, name in literal_imports(data, start):
                key = (module, name)
                allowed = key in STORAGE_TYPES or key in CALLABLES or key in CLASSES
                if is_dangerous(module, name) and not allowed:
                    self.add_unsafe(f"{module}.{name}")
        self.loose.clear()

    def unsafe_error(self, path: str | None) -> UnsafeFile:
        """The one-line refusal: imports by their dotted names first, then other tricks."""
        named = sorted(self.unsafe, key=lambda u: not _DOTTED_RE.match(u))
        shown = ", ".join(named[:MAX_FINDINGS_SHOWN])
        more = len(self.unsafe) - MAX_FINDINGS_SHOWN
        if more > 0:
            shown += f" and {more} more"
        verb = "imports" if all(_DOTTED_RE.match(u) for u in self.unsafe) else "uses"
        return UnsafeFile(f"pickle {verb} {shown}; {_UNSAFE_TAIL}", path=path, found=self.unsafe)

    def fail(self, error: ConceptlibError, path: str | None) -> ConceptlibError:
        """The error to raise for a structural refusal: unsafe when a threat was found."""
        self.hunt()
        return self.unsafe_error(path) if self.unsafe else error

    def raise_if_bad(self, path: str | None) -> None:
        """Raise, threats first: UnsafeFile, FileTooLarge, UnsupportedContent, CorruptFile."""
        self.hunt()
        if self.unsafe:
            raise self.unsafe_error(path)
        if self.too_large:
            raise self.fail(FileTooLarge(self.too_large, path=path), path)
        if self.unsupported:
            raise self.fail(
                UnsupportedContent(
                    f"pickle holds {', '.join(self.unsupported[:MAX_FINDINGS_SHOWN])}, not an "
                    "embedding; expected float tensors in dicts (the file was not executed)",
                    path=path,
                ),
                path,
            )
        if self.broken:
            raise self.fail(CorruptFile(self.broken, path=path), path)


def _classify_global(module: str, name: str, findings: Findings) -> _Global:
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


def _is_plain(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))


def _is_module_metadata(state: Any) -> bool:
    """``{"_metadata": {prefix: {key: plain value}}}``: what ``Module.state_dict`` attaches.

    ``torch.nn.Module.state_dict`` returns an ``OrderedDict`` carrying a ``_metadata``
    attribute (``{"": {"version": 1}, "layer.0": {...}}``), which pickles as a
    ``BUILD`` of that state onto the dict. Nothing else may be set on a dict.
    """
    if not isinstance(state, _Dict) or state.built or len(state.items) != 1:
        return False
    key, meta = state.items[0]
    if key != "_metadata" or not isinstance(meta, _Dict) or meta.built:
        return False
    for prefix, entry in meta.items:
        if not isinstance(prefix, str) or not isinstance(entry, _Dict) or entry.built:
            return False
        if not all(isinstance(k, str) and _is_plain(v) for k, v in entry.items):
            return False
    return True


class _Walker:
    """Symbolic execution of one pickle, from ``start`` to its ``STOP``."""

    def __init__(self, data: bytes, findings: Findings, *, legacy_pids: bool) -> None:
        self.data = data
        self.findings = findings
        self.legacy_pids = legacy_pids
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.at = 0  # where the opcode being read starts

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
        self.at = start
        frame_end: int | None = None
        try:
            for op, arg, pos in pickletools.genops(stream):
                self.at = pos
                end = stream.tell()
                self.findings.ops += 1
                if self.findings.ops > MAX_PICKLE_OPS:
                    raise _Broken(f"pickle has more than {MAX_PICKLE_OPS} opcodes")
                if frame_end is not None:
                    if pos >= frame_end:
                        frame_end = None  # the frame ended on an opcode boundary
                    elif end > frame_end:
                        self._frame_trick(f"{op.name} at byte {pos} runs past its frame's end")
                if op.name == "FRAME":
                    if frame_end is not None:
                        self._frame_trick(f"a FRAME at byte {pos} opens inside another frame")
                    if end + arg > len(self.data):
                        raise _Broken(
                            f"pickle FRAME at byte {pos} declares {arg} bytes but "
                            f"{len(self.data) - end} follow"
                        )
                    frame_end = end + arg
                    self.findings.framed = True
                    continue
                if op.name == "STOP":
                    if frame_end is not None and end != frame_end:
                        self._frame_trick(f"the frame around STOP at byte {pos} continues past it")
                    result = self.pop()
                    if self.stack or self.marks:
                        raise _Broken(f"pickle STOP at byte {pos} leaves values on the stack")
                    return result, end
                self.step(op.name, arg, pos)
        except _Broken:
            raise
        except Exception as exc:  # genops: unknown opcode, truncation, bad text
            raise _Broken(f"pickle stream is broken: {exc}") from None
        raise _Broken("pickle stream ends before STOP")

    def _frame_trick(self, what: str) -> None:
        """A frame read differently by different unpicklers: unsafe, and stop here."""
        self.findings.add_unsafe(f"a frame trick ({what})")
        raise _Broken(f"pickle frame is malformed: {what} (unpicklers disagree on such streams)")

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
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            self.push({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name in _SCALAR_OPCODES:
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
            elif (
                isinstance(target, _Dict)
                and target.ordered
                and not target.built
                and _is_module_metadata(state)
            ):
                target.built = True  # a state dict's _metadata
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
            return _Dict(ordered=True)
        if role == "set":
            return _Set()
        if args and isinstance(args[0], _Opaque) and args[0].kind == "forbidden":
            return _Opaque("forbidden")  # the storage or tensor was already reported
        if func.name == "_rebuild_tensor_v2":
            if not args or not isinstance(args[0], _Storage):
                f.add_unsafe(f"{func.dotted} called without a torch storage")
                return _Opaque("forbidden")
            _check_view(args[0], args[1:4], f)
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
        if not _is_count(numel):
            raise _Broken(f"storage size {_short(numel)} is not a count")
        view: _Storage | None = None
        if self.legacy_pids and pid[5] is not None:
            # (view key, offset, size) in elements: torch's legacy loader slices the
            # storage, so tensors on it must stay inside the slice.
            meta = pid[5]
            if not (
                isinstance(meta, tuple)
                and len(meta) == 3
                and isinstance(meta[0], str)
                and _is_count(meta[1])
                and _is_count(meta[2])
                and meta[1] + meta[2] <= numel
            ):
                raise _Broken(f"storage view {_short(meta)} is malformed")
            view = _Storage(f"{key} (view {_short(meta[0])})", itemsize, meta[2])
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
        return view or f.storages[key]


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**48


def _check_view(storage: _Storage, view: tuple[Any, ...], findings: Findings) -> None:
    """Check a tensor's ``(offset, size, stride)`` against its storage, as torch rebuilds it.

    The same rules for every dtype and every container (zip, legacy; a tensor later
    wrapped by ``_rebuild_parameter*`` was checked here when it was built): counts
    only, at most 8 dimensions, every element inside the storage, at most
    :data:`MAX_TENSOR_ELEMENTS` elements, and all the file's tensors together at most
    :data:`MAX_DECLARED_STORAGE_BYTES`. A stride-0 view claiming billions of elements
    over a few stored bytes is refused here, before anything materialises it.

    Raises ``_Broken`` on a malformed view; records sizes over the caps in
    ``findings.too_large``.
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
        return
    last = offset + sum((n - 1) * st for n, st in zip(size, stride, strict=True))
    if last >= storage.numel:
        raise _Broken(
            f"tensor {list(size)} at offset {offset} reaches element {last} of storage "
            f"{storage.key}, which holds {storage.numel}"
        )
    if numel > MAX_TENSOR_ELEMENTS:
        findings.too_large = (
            f"tensor {list(size)} has {numel} elements; expected at most {MAX_TENSOR_ELEMENTS} "
            f"({MAX_VECTORS} vectors x {max(SLOT_WIDTH.values())} wide x {len(SLOT_WIDTH)} "
            "text encoders)"
        )
        return
    findings.view_bytes += numel * storage.itemsize
    if findings.view_bytes > MAX_DECLARED_STORAGE_BYTES:
        findings.too_large = (
            f"the file's tensors claim {findings.view_bytes} bytes in all; expected at most "
            f"{MAX_DECLARED_STORAGE_BYTES} (an embedding needs kilobytes)"
        )


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxtuple, _REPR.maxlist = 3, 6, 4
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = 40


def _short(value: Any) -> str:
    """A bounded repr: hostile values may be deeply nested or huge."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def walk_pickles(
    data: bytes,
    findings: Findings,
    *,
    start: int = 0,
    limit: int | None = None,
    legacy_pids_at: int | None = None,
) -> list[tuple[Any, int, int]]:
    """Walk the pickles that follow one another from ``start``, each to its ``STOP``.

    Walks until the data ends, ``limit`` pickles were walked, or one breaks (the break
    is recorded in ``findings.broken``, and the bytes from the failing opcode on in
    ``findings.loose``). ``legacy_pids_at``: the index of the pickle whose persistent
    ids are torch's legacy 6-tuples.

    Returns:
        ``(symbolic value, start, end)`` of each pickle walked to its ``STOP``.
    """
    walked: list[tuple[Any, int, int]] = []
    pos = start
    while pos < len(data) and (limit is None or len(walked) < limit):
        walker = _Walker(data, findings, legacy_pids=len(walked) == legacy_pids_at)
        try:
            value, end = walker.run(pos)
        except _Broken as exc:
            if findings.broken is None:
                if walked:
                    findings.broken = (
                        f"pickle has {len(data) - pos} unexpected bytes after STOP "
                        f"(at byte {pos}: {exc})"
                    )
                else:
                    findings.broken = str(exc)
            findings.loose.append((data, walker.at))
            break
        walked.append((value, pos, end))
        pos = end
    return walked


def scan_pickle(data: bytes, *, path: str | None = None) -> None:
    """Walk one raw pickle (no torch container) and raise if it is unsafe or broken.

    Every pickle in ``data`` is walked (anything after the first ``STOP`` may be
    another one); bytes after the first ``STOP`` are an error once the threats are
    known.

    Raises:
        UnsafeFile: a forbidden import, opcode, gadget or frame trick, in any pickle.
        UnsupportedContent: an import of a known but non-embedding torch type.
        FileTooLarge: declared storages or tensor views over the caps.
        CorruptFile: a broken stream, or bytes after the first ``STOP``, with nothing
            forbidden anywhere.
    """
    findings = Findings()
    walked = walk_pickles(data, findings)
    findings.raise_if_bad(path)
    if len(walked) > 1:
        end = walked[0][2]
        raise CorruptFile(
            f"pickle has {len(data) - end} unexpected bytes after STOP (another pickle)",
            path=path,
        )

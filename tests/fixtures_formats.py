"""Embedding files of every layout, and hostile ones, generated in code for the tests.

Good files come from the real writers (``torch.save``, the ``safetensors`` package,
conceptlib's own safetensors writer); hostile pickles come from a tiny opcode
assembler so each one is exactly the attack it is named after. Every helper
returns bytes and is reusable from other test modules::

    from fixtures_formats import make_a1111_pt, rand_vectors
    data = make_a1111_pt(rand_vectors(2, 768), name="cat-toy")
"""

from __future__ import annotations

import base64
import io
import json
import marshal
import pickle
import shlex
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conceptlib.registry.formats.png_embed import TEXT_KEY, insert_chunks, plain_png, text_chunk
from conceptlib.registry.formats.png_embed import write_png_embedding as _write_png
from conceptlib.registry.formats.safetensors_io import write_safetensors

WIDTHS = {"clip_l": 768, "clip_h": 1024, "clip_g": 1280}

# --------------------------------------------------------------------------- vectors


def rand_vectors(n: int, width: int, seed: int = 0, scale: float = 0.4) -> np.ndarray:
    """``[n, width]`` float32 vectors with per-vector norms near ``scale``."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, width)) * (scale / np.sqrt(width))).astype(np.float32)


def _tensor(arr: Any, dtype: Any = None) -> Any:
    import torch

    t = arr if hasattr(arr, "detach") else torch.from_numpy(np.array(arr, dtype=np.float32))
    return t.to(dtype) if dtype is not None else t


def torch_bytes(obj: Any, *, legacy: bool = False, protocol: int = 2) -> bytes:
    """``torch.save(obj)`` into bytes (zip format, or the legacy stream)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=protocol, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


# --------------------------------------------------------------------------- good files


def make_a1111_pt(
    vectors: Any,
    *,
    name: str = "cat-toy",
    step: int | None = 500,
    sd_checkpoint: str | None = "a9263745",
    sd_checkpoint_name: str | None = "v1-5-pruned-emaonly",
    parameter: bool = True,
    parameter_dict: bool = False,
    legacy: bool = False,
    terms: Mapping[str, Any] | None = None,
    dtype: Any = None,
) -> bytes:
    """An A1111 training output: ``string_to_param {"*": T[n,d]}`` plus name/step/checkpoint.

    ``parameter`` stores an ``nn.Parameter`` as A1111 does; ``parameter_dict`` the
    ``ParameterDict`` of very old files; ``terms`` replaces ``{"*": vectors}``.
    """
    import torch

    def wrap(v: Any) -> Any:
        t = v if hasattr(v, "detach") else _tensor(v, dtype)
        return torch.nn.Parameter(t) if parameter or parameter_dict else t

    params = {k: wrap(v) for k, v in (terms or {"*": vectors}).items()}
    container: Any = torch.nn.ParameterDict(params) if parameter_dict else params
    data = {
        "string_to_token": {k: 265 for k in params},
        "string_to_param": container,
        "name": name,
        "step": step,
        "sd_checkpoint": sd_checkpoint,
        "sd_checkpoint_name": sd_checkpoint_name,
    }
    return torch_bytes(data, legacy=legacy)


def make_paper_pt(
    vectors: Any,
    *,
    legacy: bool = False,
    token: str = "view",
    parameter_dict: bool = False,
    token_dtype: Any = None,
) -> bytes:
    """The Textual Inversion authors' LDM layout (``EmbeddingManager.save``).

    ``{"string_to_token": {"*": id}, "string_to_param": {"*": T[n, d]}}`` and nothing
    else; the id is an integer tensor. ``token="view"`` saves it as that code does: a
    0-d element of the tokenizer's ``[1, 77]`` int64 output (so the whole 77-element
    storage is saved, read at offset 1); ``token="1d"`` as a ``[1]`` tensor.
    ``parameter_dict`` keeps the vectors in an ``nn.ParameterDict`` (the code's
    ``string_to_param_dict``); ``token_dtype`` casts the id (int32, uint8, bool...).
    """
    import torch

    if token == "view":
        ids = torch.full((1, 77), 49407, dtype=torch.int64)
        ids[0, 0], ids[0, 1] = 49406, 265
        tid = ids[0, 1]
    else:
        tid = torch.tensor([265], dtype=torch.int64)
    if token_dtype is not None:
        tid = tid.to(token_dtype)
    vec = _tensor(vectors)
    params: Any = (
        torch.nn.ParameterDict({"*": torch.nn.Parameter(vec)}) if parameter_dict else {"*": vec}
    )
    return torch_bytes({"string_to_token": {"*": tid}, "string_to_param": params}, legacy=legacy)


def make_emb_params_pt(vectors: Any, *, legacy: bool = False, dtype: Any = None) -> bytes:
    """kohya's ``{"emb_params": T[n,d]}`` as a ``.pt``."""
    return torch_bytes({"emb_params": _tensor(vectors, dtype)}, legacy=legacy)


def _st(tensors: Mapping[str, Any], writer: str, metadata: Mapping[str, str] | None) -> bytes:
    if writer == "conceptlib":
        return write_safetensors(
            {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}, metadata
        )
    if writer == "package":
        from safetensors.numpy import save

        return save(
            {k: np.ascontiguousarray(v) for k, v in tensors.items()},
            metadata=dict(metadata) if metadata else None,
        )
    if writer == "torch":
        from safetensors.torch import save

        return save(
            {k: v if hasattr(v, "detach") else _tensor(v) for k, v in tensors.items()},
            metadata=dict(metadata) if metadata else None,
        )
    raise ValueError(writer)


def make_emb_params_safetensors(
    vectors: Any, *, writer: str = "package", metadata: Mapping[str, str] | None = None
) -> bytes:
    """``{"emb_params": T}`` via the ``safetensors`` package (or ``writer="conceptlib"``)."""
    return _st({"emb_params": vectors}, writer, metadata)


def make_diffusers_bin(token: str, vectors: Any, *, legacy: bool = False) -> bytes:
    """diffusers / sd-concepts-library ``learned_embeds.bin``: ``{token: T}`` (1-D allowed)."""
    return torch_bytes({token: _tensor(vectors)}, legacy=legacy)


def make_diffusers_safetensors(token: str, vectors: Any, *, writer: str = "package") -> bytes:
    """``learned_embeds.safetensors`` as diffusers writes it (``{"format": "pt"}`` metadata)."""
    return _st({token: vectors}, writer, {"format": "pt"})


def make_sdxl(
    clip_l: Any,
    clip_g: Any,
    *,
    keys: tuple[str, str] = ("clip_l", "clip_g"),
    writer: str = "package",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """An SDXL ``{clip_l, clip_g}`` safetensors; ``writer="torch-pt"`` for a ``.pt``."""
    tensors = {keys[0]: clip_l, keys[1]: clip_g}
    if writer == "torch-pt":
        return torch_bytes({k: _tensor(v) for k, v in tensors.items()})
    return _st(tensors, writer, metadata)


def make_diffusers_sdxl_pair(token: str, clip_l: Any, clip_g: Any) -> tuple[bytes, bytes]:
    """diffusers' SDXL script output: (``learned_embeds``, ``learned_embeds_2``)."""
    return make_diffusers_safetensors(token, clip_l), make_diffusers_safetensors(token, clip_g)


def make_pti(te0: Any, te1: Any | None = None) -> bytes:
    """Pivotal tuning: ``text_encoders_0`` (and ``text_encoders_1`` for SDXL)."""
    tensors = {"text_encoders_0": te0}
    if te1 is not None:
        tensors["text_encoders_1"] = te1
    return _st(tensors, "package", None)


def make_lora_bundle(
    name: str, clip_l: Any, clip_g: Any | None = None, lora_tensors: int = 3
) -> bytes:
    """A LoRA file carrying ``bundle_emb.<name>.clip_l/.clip_g`` (OneTrainer-style)."""
    tensors: dict[str, Any] = {
        f"lora_unet_block_{i}.lora_down.weight": np.zeros((4, 8), np.float32)
        for i in range(lora_tensors)
    }
    tensors[f"bundle_emb.{name}.clip_l"] = clip_l
    if clip_g is not None:
        tensors[f"bundle_emb.{name}.clip_g"] = clip_g
    return _st(tensors, "package", {"ss_network_module": "networks.lora"})


def make_png_embedding(
    vectors: Any,
    *,
    name: str = "cat-toy",
    kind: str = "tEXt",
    image: bytes | None = None,
    step: int = 500,
) -> bytes:
    """An A1111 embedding image: a PNG with an ``sd-ti-embedding`` base64-JSON chunk."""
    return _write_png(np.asarray(vectors, np.float32), name=name, step=step, image=image, kind=kind)


def png_with_text(text: bytes, *, kind: str = "tEXt", key: str = TEXT_KEY) -> bytes:
    """A plain PNG with one text chunk holding ``text`` (for malformed-chunk tests)."""
    return insert_chunks(plain_png(8, 8), [text_chunk(key, text, kind=kind)])


def make_webp() -> bytes:
    """A minimal (lossless, 1x1) WebP container."""
    vp8l = b"\x2f\x00\x00\x00\x00\x07\x10\x11\x11\x88\x88\xfe\x07\x00"
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", len(body)) + body


# --------------------------------------------------------------------------- side strips
#
# Our own writer of A1111's pixel encoding (modules/textual_inversion/
# image_embedding.py, insert_image_data_embed), from its description: the JSON is
# zlib-compressed, split into low and high nibbles, laid out row by row as RGB
# pixels in a strip left (low) and right (high) of the picture, one black column
# between each strip and the picture, each strip's nibbles XOR-ed with the low nibble
# of an LCG key stream; the strips' high nibbles carry a decoration.


def lcg_reference(n: int) -> np.ndarray:
    """A1111's key stream by its definition, one step at a time: ``[n]`` uint8 low nibbles."""
    out = np.empty(n, dtype=np.uint8)
    state = 0
    for i in range(n):
        state = (1664525 * state + 1013904223) % 2**32
        out[i] = (state % 255) & 0x0F
    return out


def strip_payload(vectors: Any, *, name: str = "cat-toy", step: int = 500) -> dict[str, Any]:
    """The dict A1111 hides in the strips: its ``.pt`` contents, tensors as TORCHTENSOR lists."""
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": {"TORCHTENSOR": np.asarray(vectors, np.float32).tolist()}},
        "name": name,
        "step": step,
        "sd_checkpoint": "a9263745",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
    }


def encode_strips(
    raw: bytes, height: int, *, compress: bool = True, pad: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The low- and high-nibble strips ``[height, cols, 3]`` for ``raw`` (JSON bytes).

    ``compress=False`` takes ``raw`` as the zlib stream itself (for broken streams).
    The stream is padded by repeating it, as A1111 does, with at least one byte;
    ``pad=False`` adds no byte when the stream fills whole columns.
    """
    blob = np.frombuffer(zlib.compress(raw, 9) if compress else raw, dtype=np.uint8)
    per_col = height * 3
    cols = len(blob) // per_col + 1 if pad else -(-len(blob) // per_col)
    padded = np.resize(blob, cols * per_col)
    key = lcg_reference(padded.size)
    yy, xx = np.mgrid[0:height, 0:cols]
    dots = np.where((yy // 2 + xx // 2) % 2 == 0, 0xA0, 0x00).astype(np.uint8)[..., None]
    low = ((padded & 0x0F) ^ key).reshape(height, cols, 3) | dots
    high = ((padded >> 4) ^ key).reshape(height, cols, 3) | dots
    return low, high


def picture(height: int = 48, width: int = 40, seed: int = 0) -> np.ndarray:
    """A noisy RGB picture ``[height, width, 3]`` with no black pixels."""
    rng = np.random.default_rng(seed)
    return rng.integers(16, 256, size=(height, width, 3), dtype=np.uint8)


def save_image(
    rgb: np.ndarray, fmt: str = "PNG", *, text: Mapping[str, str] | None = None
) -> bytes:
    """``rgb`` as a PNG (with optional tEXt chunks) or a lossless WebP, through Pillow."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    if fmt == "PNG":
        info = PngInfo()
        for key, value in (text or {}).items():
            info.add_text(key, value)
        img.save(buf, format="PNG", pnginfo=info)
    else:
        img.save(buf, format="WEBP", lossless=True, quality=100)
    return buf.getvalue()


def make_strip_image(
    payload: Mapping[str, Any] | bytes,
    *,
    fmt: str = "PNG",
    pic: np.ndarray | None = None,
    border: int = 0,
    with_text: bool = False,
    compress: bool = True,
    pad: bool = True,
) -> bytes:
    """An A1111 embedding image whose side strips carry ``payload`` (a dict, or raw bytes).

    ``border`` adds black all round (which readers crop); ``with_text`` also writes
    the ``sd-ti-embedding`` text chunk, as A1111's training does.
    """
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    pic = picture() if pic is None else pic
    height = pic.shape[0]
    low, high = encode_strips(raw, height, compress=compress, pad=pad)
    black = np.zeros((height, 1, 3), dtype=np.uint8)
    rgb = np.concatenate([low, black, pic, black, high], axis=1)
    if border:
        rgb = np.pad(rgb, ((border, border), (border, border), (0, 0)))
    text = None
    if with_text:
        text = {TEXT_KEY: base64.b64encode(raw).decode()}
    return save_image(rgb, fmt, text=text)


def strip_png_text(data: bytes) -> bytes:
    """The same PNG without its text chunks (as an image host or editor strips them)."""
    out = bytearray(data[:8])
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        end = pos + 12 + length
        if data[pos + 4 : pos + 8] not in (b"tEXt", b"zTXt", b"iTXt"):
            out += data[pos:end]
        pos = end
    return bytes(out)


def lfs_pointer(size: int = 3_456) -> bytes:
    return (
        b"version https://git-lfs.github.com/spec/v1\n"
        b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
        + f"size {size}\n".encode()
    )


def raw_safetensors(
    header: Mapping[str, Any] | bytes, body: bytes = b"", *, header_len: int | None = None
) -> bytes:
    """A safetensors file from an explicit header (dict or raw bytes) and buffer."""
    head = header if isinstance(header, bytes) else __import__("json").dumps(header).encode()
    n = len(head) if header_len is None else header_len
    return struct.pack("<Q", n) + head + body


# --------------------------------------------------------------------------- hostile containers


def in_torch_zip(
    data_pkl: bytes,
    *,
    root: str = "archive",
    records: Mapping[str, bytes] | None = None,
    extra_names: Mapping[str, bytes] | None = None,
) -> bytes:
    """Wrap a pickle as ``<root>/data.pkl`` of a torch-style zip (plus records)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{root}/data.pkl", data_pkl)
        zf.writestr(f"{root}/byteorder", b"little")
        for key, blob in (records or {}).items():
            zf.writestr(f"{root}/data/{key}", blob)
        zf.writestr(f"{root}/version", b"3\n")
        for name, blob in (extra_names or {}).items():
            zf.writestr(zipfile.ZipInfo(name), blob)
    return buf.getvalue()


def in_legacy(main_pickle: bytes, keys: list[str] | None = None, raw: bytes = b"") -> bytes:
    """Wrap a pickle as the main pickle of torch's legacy (pre-1.6) stream."""
    sys_info = {
        "protocol_version": 1001,
        "little_endian": True,
        "type_sizes": {"short": 2, "int": 4, "long": 4},
    }
    return (
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
        + pickle.dumps(1001, protocol=2)
        + pickle.dumps(sys_info, protocol=2)
        + main_pickle
        + pickle.dumps(keys or [], protocol=2)
        + raw
    )


def with_broken_tail(payload: bytes) -> bytes:
    """The payload without its STOP, followed by bytes no pickle reader accepts."""
    assert payload.endswith(b".")
    return payload[:-1] + b"\xff\xfe\xfd this is not a pickle any more"


def zip_with_bad_crc(zip_bytes: bytes, needle: bytes) -> bytes:
    """Flip one byte inside a stored member (found by ``needle``) so its CRC fails."""
    at = zip_bytes.index(needle) + len(needle) // 2
    return zip_bytes[:at] + bytes([zip_bytes[at] ^ 0xFF]) + zip_bytes[at + 1 :]


def make_7z() -> bytes:
    """The start of a 7z archive (signature, version, start header)."""
    return b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(24) + b"\x00" * 32


def make_legacy_tar_pt() -> bytes:
    """PyTorch's pre-0.4 tar layout: ``storages``, ``tensors`` and ``pickle`` members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            blob = pickle.dumps({}, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


# --------------------------------------------------------------------------- pickle assembler


@dataclass(frozen=True)
class G:
    """A global ``module.name`` (GLOBAL, or STACK_GLOBAL from protocol 4)."""

    module: str
    name: str


@dataclass(frozen=True)
class Call:
    """``func(*args)`` via REDUCE."""

    func: Any
    args: tuple[Any, ...] = ()

    def __init__(self, func: Any, *args: Any) -> None:
        object.__setattr__(self, "func", func)
        object.__setattr__(self, "args", args)


@dataclass(frozen=True)
class PersId:
    """A persistent id (``BINPERSID``) whose tuple is ``value``."""

    value: tuple[Any, ...]


@dataclass(frozen=True)
class Raw:
    """Opcodes written verbatim."""

    data: bytes


class EmptyDict:
    pass


class _Asm:
    def __init__(self, protocol: int) -> None:
        self.p = protocol
        self.out = bytearray(b"\x80" + bytes([protocol]) if protocol >= 2 else b"")

    def emit(self, node: Any) -> None:
        out, p = self.out, self.p
        if isinstance(node, Raw):
            out += node.data
        elif isinstance(node, G):
            if p >= 4:
                self.emit(node.module)
                self.emit(node.name)
                out += b"\x93"
            else:
                out += b"c" + node.module.encode() + b"\n" + node.name.encode() + b"\n"
        elif isinstance(node, Call):
            self.emit(node.func)
            self.emit(tuple(node.args))
            out += b"R"
        elif isinstance(node, PersId):
            self.emit(node.value)
            out += b"Q"
        elif isinstance(node, bool):
            out += (b"\x88" if node else b"\x89") if p >= 2 else (b"I01\n" if node else b"I00\n")
        elif node is None:
            out += b"N"
        elif isinstance(node, int):
            if p >= 1 and -(2**31) <= node < 2**31:
                out += b"J" + struct.pack("<i", node)
            else:
                out += b"L" + str(node).encode() + b"L\n"
        elif isinstance(node, str):
            if p == 0:
                esc = (
                    node.replace("\\", "\\u005c").replace("\0", "\\u0000").replace("\n", "\\u000a")
                    .replace("\r", "\\u000d").replace("\x1a", "\\u001a")
                )  # fmt: skip
                out += b"V" + esc.encode("raw-unicode-escape") + b"\n"
            else:
                raw = node.encode("utf-8")
                out += b"X" + struct.pack("<I", len(raw)) + raw
        elif isinstance(node, bytes):
            if p >= 3:
                out += b"B" + struct.pack("<I", len(node)) + node
            else:  # what pickle itself does before protocol 3
                self.emit(Call(G("_codecs", "encode"), node.decode("latin-1"), "latin1"))
        elif isinstance(node, tuple):
            out += b"("
            for item in node:
                self.emit(item)
            out += b"t"
        elif isinstance(node, EmptyDict):
            out += b"(d" if p == 0 else b"}"
        else:
            raise TypeError(f"cannot assemble {node!r}")


def assemble(node: Any, protocol: int = 2) -> bytes:
    """Pickle bytes that evaluate ``node`` (see :class:`G`, :class:`Call`...)."""
    asm = _Asm(protocol)
    asm.emit(node)
    asm.out += b"."
    return bytes(asm.out)


# --------------------------------------------------------------------------- malicious pickles


def _py_create(path: str) -> str:
    return f"open({path!r}, 'w').close()"


def _getattr_chain(obj: Any, attr: str) -> Any:
    return Call(G("builtins", "getattr"), obj, attr)


#: Each kind and the dotted callable its refusal must name.
MALICIOUS_KINDS: dict[str, str] = {
    "os.system": "os.system",
    "posix.system": "posix.system",
    "subprocess.Popen": "subprocess.Popen",
    "subprocess.call": "subprocess.call",
    "subprocess.check_output": "subprocess.check_output",
    "builtins.eval": "builtins.eval",
    "builtins.exec": "builtins.exec",
    "builtins.compile": "builtins.compile",
    "builtins.open": "builtins.open",
    "builtins.getattr": "builtins.getattr",
    "builtins.__import__": "builtins.__import__",
    "importlib.import_module": "importlib.import_module",
    "marshal.loads": "marshal.loads",
    "runpy.run_path": "runpy.run_path",
    "pickle.loads": "pickle.loads",
    "_pickle.loads": "_pickle.loads",
    "numpy.runstring": "numpy.testing._private.utils.runstring",
    "numpy._reconstruct": "_reconstruct",
    "torch._load_from_bytes": "torch.storage._load_from_bytes",
}


class _Touch:
    """An object whose unpickling creates a file (used inside a numpy object array)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        import os

        return (os.system, (f"touch {shlex.quote(self.path)}",))


def malicious_pickle(kind: str, sentinel_path: str | Path, protocol: int = 2) -> bytes:
    """A pickle that creates ``sentinel_path`` if anything ever unpickles it.

    ``runpy.run_path`` needs a script: it is written next to the sentinel
    (``<sentinel>.py``) and only creates the sentinel when run.
    """
    path = str(sentinel_path)
    cmd = f"touch {shlex.quote(path)}"
    src = _py_create(path)
    os_system = _getattr_chain(Call(G("builtins", "__import__"), "os"), "system")
    node: Any
    if kind in ("os.system", "posix.system"):
        node = Call(G(kind.split(".")[0], "system"), cmd)
    elif kind.startswith("subprocess."):
        node = Call(G("subprocess", kind.split(".")[1]), ("touch", path))
    elif kind in ("builtins.eval", "builtins.exec"):
        node = Call(G("builtins", kind.split(".")[1]), src)
    elif kind == "builtins.compile":
        node = Call(G("builtins", "exec"), Call(G("builtins", "compile"), src, "<x>", "exec"))
    elif kind == "builtins.open":
        node = Call(G("builtins", "open"), path, "w")
    elif kind == "builtins.getattr":
        node = Call(os_system, cmd)
    elif kind == "builtins.__import__":
        node = Call(
            _getattr_chain(Call(G("builtins", "__import__"), "subprocess"), "call"), ("touch", path)
        )
    elif kind == "importlib.import_module":
        node = Call(_getattr_chain(Call(G("importlib", "import_module"), "os"), "system"), cmd)
    elif kind == "marshal.loads":
        code = compile(src, "<payload>", "exec")
        node = Call(
            Call(
                G("types", "FunctionType"),
                Call(G("marshal", "loads"), marshal.dumps(code)),
                EmptyDict(),
            )
        )
    elif kind == "runpy.run_path":
        script = Path(path + ".py")
        script.write_text(src + "\n", encoding="utf-8")
        node = Call(G("runpy", "run_path"), str(script))
    elif kind in ("pickle.loads", "_pickle.loads"):
        inner = assemble(Call(G("os", "system"), cmd), 2)
        node = Call(G(kind.split(".")[0], "loads"), inner)
    elif kind == "numpy.runstring":
        node = Call(G("numpy.testing._private.utils", "runstring"), src, EmptyDict())
    elif kind == "numpy._reconstruct":
        return pickle.dumps(np.array([_Touch(path)], dtype=object), protocol=protocol)
    elif kind == "torch._load_from_bytes":
        # torch.storage._load_from_bytes runs torch.load(weights_only=False) on its bytes
        node = Call(
            G("torch.storage", "_load_from_bytes"), assemble(Call(G("os", "system"), cmd), 2)
        )
    else:
        raise ValueError(f"unknown malicious kind {kind!r}")
    return assemble(node, protocol)


# --------------------------------------------------------------------------- tensor pickles by hand


def tensor_pickle(
    *,
    numel: int,
    shape: tuple[int, ...],
    key: str = "0",
    storage: str = "FloatStorage",
    top_key: str = "emb_params",
    protocol: int = 2,
    legacy: bool = False,
    offset: Any = 0,
    stride: Any = None,
) -> bytes:
    """``{top_key: tensor}`` as torch writes it, with a chosen *declared* storage size.

    ``legacy`` writes the pre-1.6 persistent id (with its trailing view slot);
    ``offset`` and ``stride`` (contiguous when None) are written as given.
    """
    if stride is None:
        stride = tuple(int(np.prod(shape[i + 1 :])) for i in range(len(shape)))
    pid_tuple: tuple[Any, ...] = ("storage", G("torch", storage), key, "cpu", numel)
    pid = PersId(pid_tuple + (None,) if legacy else pid_tuple)
    tensor = Call(
        G("torch._utils", "_rebuild_tensor_v2"),
        pid,
        offset,
        tuple(shape),
        stride,
        False,
        Call(G("collections", "OrderedDict")),
    )
    asm = _Asm(protocol)
    asm.out += b"}"
    asm.emit(top_key)
    asm.emit(tensor)
    asm.out += b"s."
    return bytes(asm.out)


def make_module_pt() -> bytes:
    """A ``.pt`` that holds an ``nn.Module`` (not an embedding)."""
    import torch

    return torch_bytes(torch.nn.Linear(4, 4))


class CustomThing:
    """A user class: pickled by reference to ``fixtures_formats.CustomThing``."""

    def __init__(self) -> None:
        self.value = 3


def make_custom_object_pt() -> bytes:
    return torch_bytes({"emb_params": _tensor(rand_vectors(1, 768)), "extra": CustomThing()})

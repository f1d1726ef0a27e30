"""A strict safetensors reader and a deterministic writer, on numpy.

The format: 8 bytes little-endian header length N, N bytes of UTF-8 JSON mapping
tensor names to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (plus an
optional ``__metadata__`` of strings), then the byte buffer. We parse it ourselves
rather than through the ``safetensors`` package so that every defect gets its own
message (truncated, trailing bytes, gaps, overlaps, duplicate keys, size
mismatches) and so the canonical serialization that defines an embedding's
identity never changes with a dependency's version.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

import numpy as np

from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
from conceptlib.errors import BadTensor, CorruptFile, FileTooLarge

#: Headers of real embedding files are a few hundred bytes.
MAX_HEADER_BYTES = 1 << 20
#: No dimension, and no product of the non-zero dimensions, may exceed the file cap:
#: a tensor cannot hold more elements than the file has bytes, and a zero-element
#: tensor with a dimension of 2**63 is a shape numpy cannot even represent.
MAX_ELEMENTS = MAX_EMBEDDING_FILE_BYTES

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    # BF16 has no numpy dtype: read as uint16 and widen by hand.
    "BF16": np.dtype("<u2"),
}
NON_FLOAT_DTYPES = {
    "I8",
    "I16",
    "I32",
    "I64",
    "U8",
    "U16",
    "U32",
    "U64",
    "BOOL",
    "F8_E4M3",
    "F8_E5M2",
}

MAGIC_MIN_HEADER = 2  # "{}"


def looks_like_safetensors(data: bytes) -> bool:
    """Cheap content check: a plausible header length followed by ``{``."""
    if len(data) < 10:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    if n < MAGIC_MIN_HEADER:
        return False
    return data[8:9] == b"{"


def _brief(value: object) -> str:
    """A bounded repr for messages: header values are untrusted and may be huge."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _shape_fits(shape: list[int]) -> bool:
    """Each dimension and the product of the non-zero ones at most :data:`MAX_ELEMENTS`."""
    product = 1
    for dim in shape:
        if dim > MAX_ELEMENTS:
            return False
        product *= max(dim, 1)
        if product > MAX_ELEMENTS:
            return False
    return True


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise CorruptFile(f"safetensors header has the tensor key {key!r} twice")
        out[key] = value
    return out


def parse_header(
    data: bytes, *, total_size: int | None = None, max_header_bytes: int = MAX_HEADER_BYTES
) -> tuple[dict[str, dict], dict[str, str], int]:
    """Validate the header; return ``(entries, metadata, data_start)``.

    ``data`` is the whole file, or (with ``total_size``, the file's size) only its
    first ``8 + N`` bytes: a LoRA file is validated from its header without being read
    whole (:mod:`.bundle`, with a larger ``max_header_bytes``).
    """
    if len(data) < 8:
        raise CorruptFile(f"safetensors file is {len(data)} bytes; expected at least 8")
    (n,) = struct.unpack("<Q", data[:8])
    if n > max_header_bytes:
        raise FileTooLarge(
            f"safetensors header claims {n} bytes; expected at most {max_header_bytes} "
            "(embedding headers are a few hundred bytes)"
        )
    if 8 + n > len(data):
        raise CorruptFile(
            f"safetensors header claims {n} bytes but the file has only {len(data) - 8} after "
            "the length field (truncated?)"
        )
    raw = data[8 : 8 + n]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptFile(f"safetensors header is not UTF-8 (byte {exc.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise CorruptFile(f"safetensors header is not JSON: {exc.msg} at {exc.pos}") from None
    except ValueError:  # an integer too long to parse (Python's int_max_str_digits)
        raise CorruptFile("safetensors header holds a number too long to parse") from None
    except RecursionError:
        raise CorruptFile("safetensors header is nested too deeply") from None
    if not isinstance(header, dict):
        raise CorruptFile("safetensors header is not a JSON object")
    metadata_raw = header.pop("__metadata__", None) or {}
    if not isinstance(metadata_raw, dict):
        raise CorruptFile("safetensors __metadata__ is not an object")
    metadata = {str(k): str(v) for k, v in metadata_raw.items()}
    entries: dict[str, dict] = {}
    for key, info in header.items():
        if not isinstance(info, dict):
            raise CorruptFile(f"safetensors entry {key!r} is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise CorruptFile(f"safetensors entry {key!r} has no dtype")
        if (
            not isinstance(shape, list)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
            or len(shape) > 8
        ):
            raise CorruptFile(f"safetensors entry {key!r} has an invalid shape {_brief(shape)}")
        if not _shape_fits(shape):
            raise CorruptFile(
                f"safetensors entry {key!r} has shape {_brief(shape)}; expected dimensions whose "
                f"non-zero product is at most {MAX_ELEMENTS} (the file size cap)"
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise CorruptFile(
                f"safetensors entry {key!r} has invalid data_offsets {_brief(offsets)}"
            )
        entries[key] = {"dtype": dtype, "shape": shape, "offsets": (offsets[0], offsets[1])}
    buffer_len = (len(data) if total_size is None else total_size) - 8 - n
    # The spans must tile the buffer exactly: no gaps, no overlaps, nothing after.
    pos = 0
    for key, info in sorted(entries.items(), key=lambda kv: kv[1]["offsets"]):
        begin, end = info["offsets"]
        if begin < pos:
            raise CorruptFile(f"safetensors tensor {key!r} overlaps the previous tensor")
        if begin > pos:
            raise CorruptFile(f"safetensors has a gap of {begin - pos} bytes before {key!r}")
        pos = end
    if pos > buffer_len:
        raise CorruptFile(
            f"safetensors data ends at byte {pos} but the buffer has {buffer_len} bytes (truncated)"
        )
    if pos < buffer_len:
        raise CorruptFile(
            f"safetensors has {buffer_len - pos} unexpected bytes after the last tensor"
        )
    return entries, metadata, 8 + n


def read_safetensors(
    data: bytes, *, path: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse ``data`` into float32 arrays and the header metadata.

    Raises:
        CorruptFile: any structural defect.
        BadTensor: integer/bool/unknown dtypes or size mismatches.
    """
    try:
        entries, metadata, start = parse_header(data)
    except (CorruptFile, FileTooLarge) as exc:
        if path:
            exc.path = path
            exc.message = f"{path}: {exc.message}"
            exc.args = (exc.message,)
        raise
    tensors: dict[str, np.ndarray] = {}
    for key, info in entries.items():
        begin, end = info["offsets"]
        tensors[key] = decode_tensor(key, info, data, start + begin, path=path)
    return tensors, metadata


def decode_tensor(
    key: str, info: Mapping[str, object], buffer: bytes, offset: int, *, path: str | None = None
) -> np.ndarray:
    """One header entry's tensor (``info`` from :func:`parse_header`) as float32, read
    from ``buffer`` at ``offset``.

    Raises:
        BadTensor: integer/bool/unknown dtypes or a size mismatch.
    """
    dtype = info["dtype"]
    if dtype in NON_FLOAT_DTYPES:
        raise BadTensor(
            f"tensor {key!r} has dtype {dtype}; expected a float type (F32, F16, BF16)",
            path=path,
        )
    if dtype not in DTYPES:
        raise BadTensor(f"tensor {key!r} has unknown dtype {dtype!r}", path=path)
    np_dtype = DTYPES[dtype]
    count = 1
    for s in info["shape"]:  # type: ignore[attr-defined]
        count *= s
    begin, end = info["offsets"]  # type: ignore[misc]
    if count * np_dtype.itemsize != end - begin:
        raise BadTensor(
            f"tensor {key!r}: shape {info['shape']} x {dtype} needs "
            f"{count * np_dtype.itemsize} bytes but spans {end - begin}",
            path=path,
        )
    raw = np.frombuffer(buffer, dtype=np_dtype, count=count, offset=offset)
    if dtype == "BF16":
        arr = (raw.astype(np.uint32) << 16).view(np.float32)
    else:
        arr = raw.astype(np.float32)
    return arr.reshape(info["shape"])


def write_safetensors(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialize float32 tensors deterministically: keys sorted, header padded to 8.

    With ``metadata=None`` this is the canonical serialization whose SHA-256 is an
    embedding's identity.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    chunks: list[bytes] = []
    offset = 0
    for key in sorted(tensors):
        arr = np.ascontiguousarray(np.asarray(tensors[key], dtype="<f4"))
        raw = arr.tobytes()
        header[key] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    head += b" " * ((8 - len(head) % 8) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)

"""Property-based fuzzing of the untrusted-file readers, from valid seeds.

Readers: the safetensors parser, the pickle walk (raw pickles, torch zip with a
mutated ``data.pkl`` re-zipped with good CRCs so the walk is reached, torch's legacy
stream), the PNG chunk reader (chunks re-sealed with good CRCs so the text decoder
is reached), and the whole ``read_embedding_bytes`` front door on all of them.

Each input must end in the reader's result or a :class:`ConceptlibError` (nothing
else may escape), within :data:`TIME_BOUND_S` seconds and :data:`MEMORY_BOUND`
bytes of traced peak allocation (``tracemalloc``; numpy buffers are traced too).

The default budget keeps CI fast and is deterministic (``derandomize``). A long,
random run: ``CONCEPTLIB_FUZZ_EXAMPLES=20000 pytest tests/test_reliability_fuzz.py``
(examples per test; the time limit scales with it).

Figures: ``CONCEPTLIB_RELIABILITY_REPORT=/path/figures.jsonl`` appends them there.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickletools
import struct
import time
import tracemalloc
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from fixtures_formats import (
    Call,
    G,
    in_legacy,
    in_torch_zip,
    make_a1111_pt,
    make_diffusers_safetensors,
    make_emb_params_pt,
    make_emb_params_safetensors,
    make_png_embedding,
    make_sdxl,
    rand_vectors,
    torch_bytes,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import report_figures

from conceptlib.errors import ConceptlibError
from conceptlib.registry.formats import read_embedding_bytes
from conceptlib.registry.formats.png_embed import PNG_SIGNATURE, read_png_embedding
from conceptlib.registry.formats.safe_pickle import safe_torch_load, scan_pickle
from conceptlib.registry.formats.safetensors_io import read_safetensors

torch = pytest.importorskip("torch")

# pickletools warns about bad escapes in mutated STRING opcodes (stdlib, not shown to users)
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid escape sequence:DeprecationWarning"),
    pytest.mark.timeout(60),  # each test; the fuzzers say how long they may take
]

_ENV = os.environ.get("CONCEPTLIB_FUZZ_EXAMPLES", "").strip()
LONG = bool(_ENV)
EXAMPLES = int(_ENV) if LONG else 300
#: Per-test limit: generous per example in the long run.
TIMEOUT_S = max(240, int(EXAMPLES * 0.25)) if LONG else 240
#: Every input is a few KB; nothing may take long or allocate much.
TIME_BOUND_S = 2.0
MEMORY_BOUND = 64 * 1024 * 1024

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG,
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
)


# --------------------------------------------------------------------------- the property


@dataclass
class Stats:
    inputs: int = 0
    max_seconds: float = 0.0
    max_peak: int = 0
    outcomes: Counter = field(default_factory=Counter)

    def figures(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "max_ms_per_input": round(self.max_seconds * 1000, 1),
            "max_peak_kib_per_input": self.max_peak // 1024,
            "outcomes": dict(self.outcomes.most_common()),
        }


def check_input(reader: Callable[[bytes], Any], data: bytes, stats: Stats) -> None:
    """Run ``reader`` on ``data``: only ConceptlibError escapes, in bounded time and memory."""
    tracemalloc.start()  # only around the reader: Hypothesis itself runs untraced
    started = time.perf_counter()
    try:
        reader(data)
        outcome = "accepted"
    except ConceptlibError as exc:
        outcome = type(exc).__name__
        if "\n" in exc.message:
            tracemalloc.stop()
            raise AssertionError(f"a message of several lines: {exc.message!r}") from exc
    except Exception as exc:  # the property: nothing else escapes
        tracemalloc.stop()
        raise AssertionError(
            f"{type(exc).__name__} escaped from {reader.__name__}: {exc!r:.300} "
            f"(input {len(data)} bytes starting {data[:48]!r})"
        ) from exc
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    stats.inputs += 1
    stats.max_seconds = max(stats.max_seconds, elapsed)
    stats.max_peak = max(stats.max_peak, peak)
    stats.outcomes[outcome] += 1
    assert elapsed < TIME_BOUND_S, f"{reader.__name__} took {elapsed:.2f}s on {len(data)} bytes"
    assert peak < MEMORY_BOUND, f"{reader.__name__} allocated {peak} bytes on {len(data)} bytes"


@pytest.fixture
def traced():
    """Nothing may leave tracemalloc running after a failure."""
    yield
    if tracemalloc.is_tracing():
        tracemalloc.stop()


# --------------------------------------------------------------------------- mutations

INTERESTING = [
    0,
    1,
    7,
    8,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFFFFFF,
    0xFFFFFFFF,
    2**63,
    2**64 - 1,
]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**20), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 2**20), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 2**20), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 2**20), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 2**20)),
    st.tuples(st.just("dup"), st.integers(0, 2**20), st.integers(1, 64), st.integers(0, 2**20)),
    st.tuples(
        st.just("int"),
        st.integers(0, 2**20),
        st.sampled_from([1, 2, 4, 8]),
        st.sampled_from(INTERESTING),
        st.sampled_from(["<", ">"]),
    ),
)
mutations = st.lists(mutation, min_size=1, max_size=6)


def mutate(data: bytes, ops: list[tuple[Any, ...]], anchors: list[int] | None = None) -> bytes:
    """Apply byte-level ``ops``; positions wrap around ``len(data)``, or pick an anchor."""
    buf = bytearray(data)
    for op in ops:
        n = len(buf)
        raw_pos = op[1]
        pos = (
            anchors[raw_pos % len(anchors)] + (raw_pos // len(anchors)) % 3 if anchors else raw_pos
        )
        pos = pos % (n + 1)
        kind = op[0]
        if kind == "flip" and pos < n:
            buf[pos] ^= 1 << op[2]
        elif kind == "set" and pos < n:
            buf[pos] = op[2]
        elif kind == "insert":
            buf[pos:pos] = op[2]
        elif kind == "delete":
            del buf[pos : pos + op[2]]
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "dup":
            chunk = buf[pos : pos + op[2]]
            at = op[3] % (len(buf) + 1)
            buf[at:at] = chunk
        elif kind == "int":
            size, value, order = op[2], op[3], op[4]
            raw = (value % (1 << (8 * size))).to_bytes(size, "little" if order == "<" else "big")
            buf[pos : pos + size] = raw
    return bytes(buf)


# --------------------------------------------------------------------------- seeds


def _st_seeds() -> list[bytes]:
    return [
        make_emb_params_safetensors(rand_vectors(1, 768, seed=1), writer="conceptlib"),
        make_emb_params_safetensors(rand_vectors(3, 1024, seed=2), writer="package"),
        make_diffusers_safetensors("<cat-toy>", rand_vectors(2, 768, seed=3)),
        make_sdxl(rand_vectors(2, 768, seed=4), rand_vectors(2, 1280, seed=5)),
        make_emb_params_safetensors(
            rand_vectors(2, 768, seed=6), writer="package", metadata={"modelspec.title": "x"}
        ),
    ]


def _torch_seeds() -> list[bytes]:
    return [
        make_a1111_pt(rand_vectors(2, 768, seed=7)),
        make_a1111_pt(rand_vectors(1, 768, seed=8), parameter_dict=True),
        make_emb_params_pt(rand_vectors(2, 1024, seed=9), dtype=torch.float16),
        torch_bytes(
            {
                "clip_l": torch.from_numpy(rand_vectors(1, 768, seed=10)),
                "clip_g": torch.from_numpy(rand_vectors(1, 1280, seed=11)),
            }
        ),
    ]


def _legacy_seeds() -> list[bytes]:
    return [
        make_a1111_pt(rand_vectors(2, 768, seed=12), legacy=True),
        make_emb_params_pt(rand_vectors(1, 768, seed=13), legacy=True),
    ]


def _png_seeds() -> list[bytes]:
    return [
        make_png_embedding(rand_vectors(1, 768, seed=14), kind="tEXt"),
        make_png_embedding(rand_vectors(2, 1024, seed=15), kind="zTXt"),
        make_png_embedding(rand_vectors(1, 768, seed=16), kind="iTXt"),
    ]


SEEDS: dict[str, list[bytes]] = {}


def seeds(kind: str) -> list[bytes]:
    if kind not in SEEDS:
        SEEDS[kind] = {
            "safetensors": _st_seeds,
            "torch": _torch_seeds,
            "legacy": _legacy_seeds,
            "png": _png_seeds,
        }[kind]()
    return SEEDS[kind]


def _zip_parts(data: bytes) -> tuple[str, dict[str, bytes]]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    names = zf.namelist()
    root = names[0].split("/")[0]
    return root, {n[len(root) + 1 :]: zf.read(n) for n in names}


def _rezip(root: str, members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for rest, blob in members.items():
            zf.writestr(f"{root}/{rest}", blob)
    return buf.getvalue()


def _opcode_offsets(pkl: bytes) -> list[int]:
    offsets = []
    try:
        for _op, _arg, pos in pickletools.genops(pkl):
            offsets.append(pos)
    except Exception:
        pass
    return offsets or [0]


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    pos, out = 8, []
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        out.append((ctype, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def _seal(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray(PNG_SIGNATURE)
    for ctype, body in chunks:
        out += struct.pack(">I", len(body)) + ctype + body
        out += struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
    return bytes(out)


def _text_payload(body: bytes, ctype: bytes) -> tuple[bytes, Callable[[bytes], bytes]]:
    """The embedding text of a text chunk and a function that puts new text back."""
    key, _, rest = body.partition(b"\x00")
    if ctype == b"tEXt":
        return rest, lambda t: key + b"\x00" + t
    if ctype == b"zTXt":
        return zlib.decompress(rest[1:]), lambda t: key + b"\x00\x00" + zlib.compress(t)
    head = rest[:2]
    lang, tkey, text = rest[2:].split(b"\x00", 2)
    return zlib.decompress(
        text
    ), lambda t: key + b"\x00" + head + lang + b"\x00" + tkey + b"\x00" + zlib.compress(t)


# --------------------------------------------------------------------------- safetensors

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
header_edit = st.one_of(
    st.tuples(
        st.just("dtype"),
        st.sampled_from(["F32", "F16", "BF16", "F64", "I32", "BOOL", "F8_E4M3", "Q7", ""]),
    ),
    st.tuples(st.just("shape"), st.lists(st.integers(-2, 2**40), max_size=9)),
    st.tuples(st.just("offsets"), st.lists(st.integers(-2, 2**40), max_size=3)),
    st.tuples(st.just("field"), st.sampled_from(["dtype", "shape", "data_offsets"]), json_values),
    st.tuples(st.just("entry"), st.text(max_size=10), json_values),
    st.tuples(st.just("metadata"), json_values),
)


def _edit_header(data: bytes, edits: list[tuple[Any, ...]], length_delta: int, pad: int) -> bytes:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    keys = [k for k in header if k != "__metadata__"]
    for i, edit in enumerate(edits):
        key = keys[i % len(keys)]
        entry = header.get(key)
        if not isinstance(entry, dict):
            entry = header[key] = {}
        if edit[0] == "dtype":
            entry["dtype"] = edit[1]
        elif edit[0] == "shape":
            entry["shape"] = edit[1]
        elif edit[0] == "offsets":
            entry["data_offsets"] = edit[1]
        elif edit[0] == "field":
            entry[edit[1]] = edit[2]
        elif edit[0] == "entry":
            header[edit[1]] = edit[2]
        elif edit[0] == "metadata":
            header["__metadata__"] = edit[1]
    raw = json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + body


@pytest.mark.timeout(TIMEOUT_S)
def test_fuzz_safetensors_reader(traced: None) -> None:
    stats = {"read_safetensors": Stats(), "read_embedding_bytes": Stats()}

    @FUZZ
    @given(
        seed=st.integers(0, 100),
        edits=st.lists(header_edit, max_size=4),
        length_delta=st.sampled_from([0, 0, 0, -1, 1, -8, 8, 2**20, 2**40]),
        pad=st.integers(0, 9),
        ops=st.lists(mutation, max_size=3),
    )
    def run(seed: int, edits: list, length_delta: int, pad: int, ops: list) -> None:
        base = seeds("safetensors")[seed % len(seeds("safetensors"))]
        data = _edit_header(base, edits, length_delta, pad)
        data = mutate(data, ops) if ops else data
        check_input(
            lambda d: read_safetensors(d, path="f.safetensors"), data, stats["read_safetensors"]
        )
        check_input(read_embedding_bytes, data, stats["read_embedding_bytes"])

    run()
    for name, s in stats.items():
        report_figures(f"fuzz-safetensors-{name}", **s.figures())
    assert stats["read_safetensors"].inputs >= min(EXAMPLES, 100)


# --------------------------------------------------------------------------- pickles

#: Opcode bytes, so a mutation can swap one opcode for another real one.
OPCODE_BYTES = sorted({op.code.encode("latin-1")[0] for op in pickletools.opcodes})


@pytest.mark.timeout(TIMEOUT_S)
def test_fuzz_pickle_walk_in_torch_zip(traced: None) -> None:
    """data.pkl mutated at opcode boundaries, re-zipped with good CRCs: the walk sees it."""
    stats = {"scan_pickle": Stats(), "safe_torch_load": Stats(), "read_embedding_bytes": Stats()}

    @FUZZ
    @given(
        seed=st.integers(0, 100),
        ops=mutations,
        opcode_swaps=st.lists(
            st.tuples(st.integers(0, 2**16), st.sampled_from(OPCODE_BYTES)), max_size=3
        ),
        record_ops=st.lists(mutation, max_size=2),
    )
    def run(seed: int, ops: list, opcode_swaps: list, record_ops: list) -> None:
        root, members = _zip_parts(seeds("torch")[seed % len(seeds("torch"))])
        pkl = members["data.pkl"]
        anchors = _opcode_offsets(pkl)
        buf = bytearray(mutate(pkl, ops, anchors))
        for where, code in opcode_swaps:
            at = anchors[where % len(anchors)]
            if at < len(buf):
                buf[at] = code
        members["data.pkl"] = bytes(buf)
        if record_ops:
            key = sorted(k for k in members if k.startswith("data/"))[0]
            members[key] = mutate(members[key], record_ops)
        check_input(scan_pickle, bytes(buf), stats["scan_pickle"])
        data = _rezip(root, members)
        check_input(safe_torch_load, data, stats["safe_torch_load"])
        check_input(read_embedding_bytes, data, stats["read_embedding_bytes"])

    run()
    for name, s in stats.items():
        report_figures(f"fuzz-pickle-zip-{name}", **s.figures())
    assert stats["safe_torch_load"].inputs >= min(EXAMPLES, 100)


@pytest.mark.timeout(TIMEOUT_S)
def test_fuzz_pickle_walk_in_legacy_streams(traced: None) -> None:
    stats = {"safe_torch_load": Stats(), "read_embedding_bytes": Stats()}

    @FUZZ
    @given(seed=st.integers(0, 100), ops=mutations, at_opcodes=st.booleans())
    def run(seed: int, ops: list, at_opcodes: bool) -> None:
        base = seeds("legacy")[seed % len(seeds("legacy"))]
        data = mutate(base, ops, _opcode_offsets(base) if at_opcodes else None)
        check_input(safe_torch_load, data, stats["safe_torch_load"])
        check_input(read_embedding_bytes, data, stats["read_embedding_bytes"])

    run()
    for name, s in stats.items():
        report_figures(f"fuzz-pickle-legacy-{name}", **s.figures())
    assert stats["safe_torch_load"].inputs >= min(EXAMPLES, 100)


# --------------------------------------------------------------------------- PNG

embedding_json_edit = st.one_of(
    st.tuples(st.just("param"), json_values),
    st.tuples(st.just("tensor"), json_values),
    st.tuples(st.just("rows"), st.lists(st.lists(st.floats(), max_size=4), max_size=4)),
    st.tuples(st.just("key"), st.text(max_size=8), json_values),
    st.tuples(st.just("replace"), json_values),
)


def _edit_embedding_json(text: bytes, edit: tuple[Any, ...]) -> bytes:
    obj = json.loads(base64.b64decode(text))
    if edit[0] == "param":
        obj["string_to_param"] = edit[1]
    elif edit[0] == "tensor":
        obj["string_to_param"]["*"] = edit[1]
    elif edit[0] == "rows":
        obj["string_to_param"]["*"] = {"TORCHTENSOR": edit[1]}
    elif edit[0] == "key":
        obj[edit[1]] = edit[2]
    else:
        obj = edit[1]
    return base64.b64encode(json.dumps(obj).encode())


@pytest.mark.timeout(TIMEOUT_S)
def test_fuzz_png_chunk_reader(traced: None) -> None:
    """Chunks re-sealed with good CRCs after the mutation, so the text decoder is reached."""
    stats = {"read_png_embedding": Stats(), "read_embedding_bytes": Stats()}

    @FUZZ
    @given(
        seed=st.integers(0, 100),
        json_edit=st.none() | embedding_json_edit,
        text_ops=st.lists(mutation, max_size=3),
        file_ops=st.lists(mutation, max_size=3),
        reseal=st.booleans(),
    )
    def run(seed: int, json_edit: Any, text_ops: list, file_ops: list, reseal: bool) -> None:
        base = seeds("png")[seed % len(seeds("png"))]
        chunks = _png_chunks(base)
        for i, (ctype, body) in enumerate(chunks):
            if ctype in (b"tEXt", b"zTXt", b"iTXt"):
                text, put = _text_payload(body, ctype)
                if json_edit is not None:
                    text = _edit_embedding_json(text, json_edit)
                if text_ops:
                    text = mutate(text, text_ops)
                chunks[i] = (ctype, put(text))
        data = _seal(chunks)
        if file_ops:
            data = mutate(data, file_ops)
            if reseal and data.startswith(PNG_SIGNATURE):
                data = _seal(_png_chunks(data))
        check_input(read_png_embedding, data, stats["read_png_embedding"])
        check_input(read_embedding_bytes, data, stats["read_embedding_bytes"])

    run()
    for name, s in stats.items():
        report_figures(f"fuzz-png-{name}", **s.figures())
    assert stats["read_png_embedding"].inputs >= min(EXAMPLES, 100)


# --------------------------------------------------------------------------- the front door


@pytest.mark.timeout(TIMEOUT_S)
def test_fuzz_any_seed_through_the_front_door(traced: None) -> None:
    """Plain byte mutations of every seed kind through ``read_embedding_bytes``."""
    stats = Stats()
    kinds = ["safetensors", "torch", "legacy", "png"]

    @FUZZ
    @given(kind=st.sampled_from(kinds), seed=st.integers(0, 100), ops=mutations)
    def run(kind: str, seed: int, ops: list) -> None:
        base = seeds(kind)[seed % len(seeds(kind))]
        check_input(read_embedding_bytes, mutate(base, ops), stats)

    run()
    report_figures("fuzz-front-door", **stats.figures())
    assert stats.inputs >= min(EXAMPLES, 100)


def test_seeds_are_valid() -> None:
    """The fuzzers start from files every reader accepts."""
    for kind in ("safetensors", "torch", "legacy", "png"):
        for data in seeds(kind):
            read_embedding_bytes(data)
    for data in seeds("safetensors"):
        read_safetensors(data)
    for data in seeds("png"):
        read_png_embedding(data)
    for data in seeds("torch"):
        _root, members = _zip_parts(data)
        scan_pickle(members["data.pkl"])
        assert _rezip(*_zip_parts(data))  # the re-zipper keeps a loadable file
        safe_torch_load(_rezip(*_zip_parts(data)))


# --------------------------------------------------------------------------- generated inputs

#: Generated (not mutated) inputs: fewer, each reaching deeper (a 2-core CI budget).
GENERATED = settings(FUZZ, max_examples=min(EXAMPLES, 150) if not LONG else EXAMPLES)

#: Counts and sizes a hostile header or pickle may claim: small, exact, and absurd.
claimed = st.one_of(
    st.integers(0, 2048),
    st.sampled_from(
        [0, 1, 2, 75, 76, 768, 1024, 1280, 2**21, 2**31, 2**32, 2**40, 2**48, 2**63 - 1, 2**63,
         2**64, 10**30, -1]
    ),
)  # fmt: skip
ST_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "BOOL": 1, "Q9": 1}
#: Shapes: any claimed counts, and often a zero among them (no bytes, any dimensions).
claimed_shapes = st.one_of(
    st.lists(claimed, max_size=4),
    st.tuples(st.lists(claimed, min_size=1, max_size=3), st.integers(0, 3)).map(
        lambda t: t[0][: t[1]] + [0] + t[0][t[1] :]
    ),
)


@pytest.mark.timeout(TIMEOUT_S)
def test_generated_safetensors_headers_raise_only_our_errors(traced: None) -> None:
    """Shapes, dtypes and offsets drawn from absurd values, offsets often made consistent,
    so the buffer reads (numpy) are reached: only ConceptlibError may escape."""
    stats = Stats()

    @GENERATED
    @given(
        entries=st.lists(
            st.tuples(
                st.sampled_from(["emb_params", "clip_l", "clip_g", "<tok>", "a" * 40]),
                st.sampled_from(["F32", "F16", "BF16", "F64", *sorted(ST_DTYPES)]),
                claimed_shapes,
                st.lists(claimed, min_size=2, max_size=2),
            ),
            min_size=1,
            max_size=3,
        ),
        tile=st.sampled_from([True, True, False]),
        extra=st.integers(0, 8),
    )
    def run(entries: list, tile: bool, extra: int) -> None:
        header: dict[str, Any] = {}
        pos = 0
        for key, dtype, shape, offsets in entries:
            if tile:  # offsets that tile the buffer: the reader gets past the layout checks
                count = int(np.prod([max(0, d) for d in shape], dtype=object)) if shape else 1
                size = count * ST_DTYPES[dtype]
                size = size if 0 <= size <= 4096 else offsets[1] % 4096
                offsets = [pos, pos + size]
                pos += size
            header[key] = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        body_len = pos if tile else max(0, min(8192, max(o for e in entries for o in e[3])))
        head = json.dumps(header).encode()
        data = struct.pack("<Q", len(head)) + head + bytes(body_len + (extra if not tile else 0))
        check_input(read_embedding_bytes, data, stats)

    run()
    report_figures("fuzz-generated-safetensors", **stats.figures())
    assert stats.inputs >= min(EXAMPLES, 100)


_STORAGES = ["FloatStorage", "HalfStorage", "DoubleStorage", "BFloat16Storage", "LongStorage"]
_ITEMSIZE = {"FloatStorage": 4, "HalfStorage": 2, "DoubleStorage": 8, "BFloat16Storage": 2,
             "LongStorage": 8}  # fmt: skip
#: Names a parameter's saved state may try to set (tensor methods and properties too).
_ATTRIBUTES = ["detach", "float", "numpy", "to", "shape", "dtype", "__class__", "keys", "x"]


@st.composite
def _tensors(draw: st.DrawFn, keys: list[tuple[str, int]], legacy: bool, sane: bool = False) -> Any:
    """A tensor, a parameter or a parameter with saved attributes; views sane or absurd."""
    from pickle_tricks import D, tensor

    storage = draw(st.sampled_from(_STORAGES))
    if sane or draw(st.booleans()):  # a view torch.save would write
        rows = draw(st.sampled_from([1, 2, 75, 76]))
        width = draw(st.sampled_from([768, 1024, 1280]))
        numel, shape, stride = rows * width, (rows, width), None
    else:
        numel = draw(claimed)
        shape = tuple(draw(st.lists(claimed, max_size=3)))
        stride = draw(st.none() | st.lists(claimed, min_size=len(shape), max_size=len(shape)))
    key = str(len(keys))
    keys.append((storage, numel))
    node = tensor(key, numel, shape, None if stride is None else tuple(stride),
                  storage=storage, legacy=legacy)  # fmt: skip
    wrap = draw(st.sampled_from(["parameter-with-state", "tensor", "parameter"]))
    hooks = Call(G("collections", "OrderedDict"))
    if wrap == "parameter":
        return Call(G("torch._utils", "_rebuild_parameter"), node, draw(st.booleans()), hooks)
    if wrap == "parameter-with-state":
        names = draw(st.lists(st.sampled_from(_ATTRIBUTES), min_size=1, max_size=3, unique=True))
        state = D(tuple((name, draw(_leaves)) for name in names))
        return Call(G("torch._utils", "_rebuild_parameter_with_state"), node, False, hooks, state)
    return node


_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=8),
)


@st.composite
def _trees(draw: st.DrawFn, keys: list[tuple[str, int]], legacy: bool, depth: int = 0) -> Any:
    from pickle_tricks import D, module_metadata

    kind = draw(st.sampled_from(["leaf", "tensor", "dict", "tuple"] if depth < 3 else ["leaf"]))
    if kind == "leaf":
        return draw(_leaves)
    if kind == "tensor":
        return draw(_tensors(keys, legacy))
    if kind == "tuple":
        return tuple(draw(st.lists(_trees(keys, legacy, depth + 1), max_size=3)))
    names = ["emb_params", "string_to_param", "*", "weight", "clip_l", "clip_g", "name", "step"]
    items = tuple(
        (draw(st.sampled_from(names)), draw(_trees(keys, legacy, depth + 1)))
        for _ in range(draw(st.integers(0, 3)))
    )
    state = draw(
        st.sampled_from(["none", "none", "metadata", "hostile"]) if depth == 0 else st.just("none")
    )
    built = {
        "none": None,
        "metadata": module_metadata("", "a"),
        "hostile": D((("_metadata", D((("", D((("v", draw(_leaves)),))),))), ("items", 1))),
    }[state]
    return D(items, ordered=draw(st.booleans()) or built is not None, state=built)


@pytest.mark.timeout(TIMEOUT_S)
def test_generated_pickles_raise_only_our_errors(traced: None) -> None:
    """Pickles built from the allowed constructs with absurd views, parameter states,
    state-dict BUILDs, frames and second pickles, in a torch zip or a legacy stream."""
    from pickle_tricks import D, benign_pickle
    from pickle_tricks import assemble as assemble_tree

    stats = Stats()

    @GENERATED
    @given(
        data=st.data(),
        protocol=st.sampled_from([2, 3, 4]),
        container=st.sampled_from(["zip", "legacy"]),
        exact_records=st.sampled_from([True, True, True, False]),
        frame=st.sampled_from([None, None, None, 0, -1, 1]),
        second=st.sampled_from([None, None, None, "benign", "junk"]),
    )
    def run(data: Any, protocol: int, container: str, exact_records: bool, frame: Any,
            second: Any) -> None:  # fmt: skip
        keys: list[tuple[str, int]] = []
        legacy = container == "legacy"
        top = data.draw(_trees(keys, legacy))
        # always one tensor where the layouts look for it, beside whatever was drawn
        main = ("emb_params", data.draw(_tensors(keys, legacy, sane=True)))
        if isinstance(top, D):
            top = D((main, *top.items), top.ordered, top.state)
        else:
            top = D((main, ("extra", top)))
        pkl = assemble_tree(top, protocol)
        if (
            frame is not None and protocol >= 4
        ):  # one frame round the body, its length off by `frame`
            body = pkl[2:]
            pkl = pkl[:2] + b"\x95" + struct.pack("<Q", max(0, len(body) + frame)) + body
        if second == "benign":
            pkl += benign_pickle()
        elif second == "junk":
            pkl += b"\xff junk"
        records = {}
        raw = b""
        for i, (storage, numel) in enumerate(keys):
            size = numel * _ITEMSIZE[storage] if 0 <= numel < 2**16 else 16
            size = size if exact_records else size // 2 + 1
            records[str(i)] = bytes(size)
            raw += struct.pack("<Q", max(0, min(numel, 2**63))) + bytes(size)
        if container == "zip":
            blob = in_torch_zip(pkl, records=records)
        else:
            blob = in_legacy(pkl, [str(i) for i in range(len(keys))], raw)
        check_input(read_embedding_bytes, blob, stats)

    run()
    report_figures("fuzz-generated-pickles", **stats.figures())
    assert stats.inputs >= min(EXAMPLES, 100)


_float_rows = st.lists(
    st.lists(st.one_of(st.floats(allow_nan=True), st.integers(-(2**70), 2**70), st.text(max_size=2)),
             max_size=4),
    max_size=3,
)  # fmt: skip


@pytest.mark.timeout(TIMEOUT_S)
def test_generated_pngs_raise_only_our_errors(traced: None) -> None:
    """A1111 text chunks generated whole: several chunks, each kind, any JSON inside."""
    from conceptlib.registry.formats import png_embed

    stats = Stats()

    @GENERATED
    @given(
        chunks=st.lists(
            st.tuples(
                st.sampled_from(["tEXt", "zTXt", "iTXt"]),
                st.one_of(
                    st.builds(
                        lambda rows, name: {
                            "string_to_param": {"*": {"TORCHTENSOR": rows}},
                            "name": name,
                        },
                        _float_rows,
                        json_values,
                    ),
                    json_values,
                ),
                st.booleans(),
            ),
            max_size=4,
        ),
        key=st.sampled_from([png_embed.TEXT_KEY, "parameters"]),
    )
    def run(chunks: list, key: str) -> None:
        made = []
        for kind, obj, as_base64 in chunks:
            text = json.dumps(obj).encode()
            made.append(png_embed.text_chunk(key, base64.b64encode(text) if as_base64 else text,
                                             kind=kind))  # fmt: skip
        data = png_embed.insert_chunks(png_embed.plain_png(8, 8), made)
        check_input(read_embedding_bytes, data, stats)

    run()
    report_figures("fuzz-generated-png", **stats.figures())
    assert stats.inputs >= min(EXAMPLES, 100)


# --------------------------------------------------------------------------- found by hand


def test_huge_integer_in_a_safetensors_header_is_a_corrupt_file() -> None:
    """Python refuses to parse integers over 4300 digits with a plain ValueError."""
    from conceptlib.errors import CorruptFile

    head = b'{"a":{"dtype":"F32","shape":[1' + b"0" * 5000 + b'],"data_offsets":[0,4]}}'
    data = struct.pack("<Q", len(head)) + head + bytes(4)
    with pytest.raises(CorruptFile):
        read_safetensors(data, path="x.safetensors")
    with pytest.raises(CorruptFile):
        read_embedding_bytes(data, path="x.safetensors")


def test_huge_integer_in_a_png_embedding_chunk_is_a_corrupt_file() -> None:
    from fixtures_formats import png_with_text

    from conceptlib.errors import CorruptFile

    text = base64.b64encode(b'{"string_to_param": {"*": 1' + b"0" * 5000 + b"}}")
    with pytest.raises(CorruptFile):
        read_png_embedding(png_with_text(text), path="x.png")


def test_fuzz_budget_is_bounded_by_default() -> None:
    if not LONG:
        assert EXAMPLES <= 300
    assert np.isfinite(TIME_BOUND_S) and MEMORY_BOUND <= 64 * 1024 * 1024

"""safe_torch_load: hostile pickles are refused before anything runs; real files load."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_support import import_is_refused
from fixtures_formats import (
    MALICIOUS_KINDS,
    Call,
    EmptyDict,
    G,
    PersId,
    Raw,
    assemble,
    in_legacy,
    in_torch_zip,
    make_7z,
    make_a1111_pt,
    make_custom_object_pt,
    make_emb_params_pt,
    make_legacy_tar_pt,
    make_module_pt,
    make_paper_pt,
    malicious_pickle,
    rand_vectors,
    tensor_pickle,
    torch_bytes,
    with_broken_tail,
    zip_with_bad_crc,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pickle_tricks import (
    D,
    benign_pickle,
    floats,
    frame_declaring,
    frame_trick,
    framed,
    module_metadata,
    state_dict_file,
    tensor,
)
from pickle_tricks import assemble as assemble_node

from conceptlib.errors import (
    AmbiguousEmbedding,
    BadTensor,
    CorruptFile,
    FileTooLarge,
    UnsafeFile,
    UnsupportedContent,
)
from conceptlib.registry.formats import read_embedding_bytes, read_embedding_file, safe_pickle
from conceptlib.registry.formats.safe_pickle import (
    ALLOWED_GLOBALS,
    MAX_DECLARED_STORAGE_BYTES,
    ParameterDictContents,
    safe_torch_load,
    scan_pickle,
)

torch = pytest.importorskip("torch")

CONTAINERS = ("raw", "torch-zip", "legacy", "broken-tail", "zip-broken-tail")


def _wrap(payload: bytes, container: str) -> bytes:
    if container == "raw":
        return payload
    if container == "torch-zip":
        return in_torch_zip(payload)
    if container == "legacy":
        return in_legacy(payload)
    if container == "broken-tail":
        return with_broken_tail(payload)
    if container == "zip-broken-tail":
        return in_torch_zip(with_broken_tail(payload))
    raise AssertionError(container)


@pytest.fixture
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Fail loudly if torch.load or pickle.loads is reached for a hostile file."""
    calls: list[bytes] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(b"called")
        raise AssertionError("torch.load reached with a hostile file")

    monkeypatch.setattr(torch, "load", refuse)
    return calls


# --------------------------------------------------------------------------- the payloads are real


def test_payloads_really_execute_when_unpickled(tmp_path: Path) -> None:
    """Control: each hostile pickle does create its sentinel under plain pickle.loads."""
    payload_dir = tmp_path / "payloads"
    payload_dir.mkdir()
    for kind in MALICIOUS_KINDS:
        for protocol in (0, 2, 4):
            data = malicious_pickle(kind, tmp_path / f"{kind}-{protocol}", protocol)
            (payload_dir / f"{kind}-{protocol}.pkl").write_bytes(data)
    script = textwrap.dedent(
        """
        import pickle, sys, pathlib, time
        sys.path.insert(0, sys.argv[2])
        for f in sorted(pathlib.Path(sys.argv[1]).glob("*.pkl")):
            try:
                pickle.loads(f.read_bytes())
            except Exception:
                pass
        time.sleep(0.3)
        """
    )
    subprocess.run(
        [sys.executable, "-c", script, str(payload_dir), str(Path(__file__).parent)],
        check=True,
        cwd=tmp_path,
        timeout=120,
        capture_output=True,
    )
    missing = [
        f"{k}-{p}"
        for k in MALICIOUS_KINDS
        for p in (0, 2, 4)
        if not (tmp_path / f"{k}-{p}").exists()
    ]
    assert missing == []


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("kind", sorted(MALICIOUS_KINDS))
def test_malicious_pickles_are_refused_unexecuted(
    kind: str, container: str, tmp_path: Path, no_torch_load: list[bytes]
) -> None:
    for protocol in range(6):
        sentinel = tmp_path / f"sentinel-{protocol}"
        data = _wrap(malicious_pickle(kind, sentinel, protocol), container)
        with pytest.raises(UnsafeFile) as info:
            safe_torch_load(data, path="evil.pt")
        message = str(info.value)
        assert MALICIOUS_KINDS[kind] in message
        assert "not executed" in message
        assert "evil.pt" in message
        assert "\n" not in message
        assert not sentinel.exists()
    assert no_torch_load == []


@pytest.mark.parametrize("kind", sorted(MALICIOUS_KINDS))
def test_pickle_named_safetensors_is_detected_by_content(
    kind: str, tmp_path: Path, no_torch_load: list[bytes]
) -> None:
    sentinel = tmp_path / "sentinel"
    target = tmp_path / "innocent.safetensors"
    target.write_bytes(in_torch_zip(malicious_pickle(kind, sentinel, 2)))
    with pytest.raises(UnsafeFile, match=MALICIOUS_KINDS[kind].replace(".", r"\.")):
        read_embedding_file(target)
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(malicious_pickle(kind, sentinel, 2))
    with pytest.raises(UnsafeFile):
        read_embedding_file(raw)
    assert not sentinel.exists()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(sorted(MALICIOUS_KINDS)),
    protocol=st.integers(0, 5),
    container=st.sampled_from(CONTAINERS),
    junk=st.binary(min_size=0, max_size=64),
)
def test_payload_followed_by_any_junk_is_unsafe(
    kind: str, protocol: int, container: str, junk: bytes, tmp_path: Path
) -> None:
    sentinel = tmp_path / f"s-{kind}-{protocol}"
    payload = malicious_pickle(kind, sentinel, protocol)
    data = _wrap(payload[:-1] + junk, container if container in ("raw", "torch-zip") else "raw")
    with pytest.raises(UnsafeFile):
        safe_torch_load(data)
    assert not sentinel.exists()


def test_real_torch_save_of_a_reducing_object_is_refused(tmp_path: Path) -> None:
    sentinel = tmp_path / "sentinel"

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (os.system, (f"touch {sentinel}",))

    for legacy in (False, True):
        data = torch_bytes({"emb_params": torch.zeros(1, 768), "x": Evil()}, legacy=legacy)
        with pytest.raises(UnsafeFile, match=r"posix\.system"):
            safe_torch_load(data)
    assert not sentinel.exists()


@pytest.mark.parametrize(
    ("node", "named"),
    [
        # a dotted name resolves through getattr at protocol 4: never by prefix
        (Call(G("collections", "OrderedDict.__class__")), "collections.OrderedDict.__class__"),
        (Call(G("torch", "_utils._rebuild_tensor_v2")), "torch._utils._rebuild_tensor_v2"),
        (Call(G("torch", "load"), b"x"), "torch.load"),
        (Call(G("torch.serialization", "load"), b"x"), "torch.serialization.load"),
        (Call(G("copyreg", "_reconstructor")), "copyreg._reconstructor"),
        (Call(G("numpy", "load"), "x.npy"), "numpy.load"),
        (Call(G("fixtures_formats", "CustomThing")), "fixtures_formats.CustomThing"),
        # an allowed storage type used as a function (allocates whatever it is told)
        (Call(G("torch", "FloatStorage"), 10**12), "torch.FloatStorage called as a function"),
        # a call of something computed at load time
        (Call(Call(G("collections", "OrderedDict"))), "REDUCE gadget chain"),
        # a persistent id that is not torch's storage tuple
        (PersId(("module", G("os", "system"), "x", "y")), "os.system"),
        (PersId(("evil", 1, 2, 3, 4)), "persistent id"),
    ],
)
def test_forbidden_constructs(node: object, named: str) -> None:
    for protocol in (2, 4):
        data = assemble(node, protocol)
        with pytest.raises(UnsafeFile) as info:
            scan_pickle(data)
        assert named in str(info.value)
        with pytest.raises(UnsafeFile):
            safe_torch_load(in_torch_zip(data))


@pytest.mark.parametrize(
    ("opcodes", "named"),
    [
        (b"\x80\x02\x82\x01.", "EXT1"),
        (b"\x80\x02\x83\x01\x00.", "EXT2"),
        (b"\x80\x02\x84\x01\x00\x00\x00.", "EXT4"),
        (b"(ios\nsystem\nX\x04\x00\x00\x00true.", "os.system (via INST)"),
        (b"\x80\x02(cos\nsystem\nX\x04\x00\x00\x00trueo.", "os.system"),
        (b"\x80\x02(cos\nsystem\nX\x04\x00\x00\x00trueo.", "OBJ"),
        (b"Pfoo\n.", "PERSID"),
        (b"\x80\x05\x97.", "NEXT_BUFFER"),
        # NEWOBJ of something other than ParameterDict
        (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "NEWOBJ"),
        # BUILD on an OrderedDict would set attributes
        (b"\x80\x02ccollections\nOrderedDict\n)R}b.", "BUILD"),
        # SETITEM on a non-dict calls its __setitem__
        (b"\x80\x02)X\x01\x00\x00\x00aK\x01s.", "SETITEM"),
        # STACK_GLOBAL on names computed by a call
        (b"\x80\x04ccollections\nOrderedDict\n)RX\x01\x00\x00\x00a\x93.", "STACK_GLOBAL"),
    ],
)
def test_forbidden_opcodes(opcodes: bytes, named: str) -> None:
    with pytest.raises(UnsafeFile) as info:
        scan_pickle(opcodes)
    assert named in str(info.value)


def test_unsafe_beats_broken_and_everything_is_listed() -> None:
    data = assemble(Call(G("os", "system"), "true"), 2)[:-1]
    data += assemble(Call(G("builtins", "eval"), "1"), 2)[2:-1] + b"\xff"
    with pytest.raises(UnsafeFile) as info:
        scan_pickle(data)
    assert "os.system" in str(info.value) and "builtins.eval" in str(info.value)


def test_broken_stream_without_payload_is_corrupt() -> None:
    good = torch_bytes({"emb_params": torch.zeros(1, 768)})
    pkl = zipfile.ZipFile(io.BytesIO(good)).read("archive/data.pkl")
    for cut in (3, len(pkl) // 2, len(pkl) - 1):
        with pytest.raises(CorruptFile):
            safe_torch_load(in_torch_zip(pkl[:cut], records={"0": bytes(768 * 4)}))
    with pytest.raises(CorruptFile, match="after STOP"):
        scan_pickle(pickle.dumps({"a": 1}, protocol=2) + b"junk")
    with pytest.raises(CorruptFile):
        scan_pickle(b"\x80\x02\xff")


def test_hostile_values_are_described_briefly() -> None:
    deep = b"\x80\x02" + b"(" * 5000 + b"K\x01" + b"t" * 5000 + b"Q."
    with pytest.raises(UnsafeFile, match="persistent id") as info:
        scan_pickle(deep)
    assert len(str(info.value)) < 300


def test_oversized_input_is_refused_before_parsing() -> None:
    with pytest.raises(FileTooLarge):
        safe_torch_load(b"PK\x03\x04" + bytes(16 * 1024 * 1024))


def test_walk_is_bounded() -> None:
    deep = b"\x80\x02" + b"(" * 20_000 + b"."
    with pytest.raises(CorruptFile, match="MARK"):
        scan_pickle(deep)
    many = b"\x80\x02" + b"N0" * 60_000 + b"N."
    with pytest.raises(CorruptFile, match="opcodes"):
        scan_pickle(many)


# --------------------------------------------------------------------------- containers


def test_7z_and_tar_are_refused() -> None:
    with pytest.raises(UnsupportedContent, match="7z"):
        safe_torch_load(make_7z(), path="x.pt")
    with pytest.raises(UnsupportedContent, match="tar"):
        safe_torch_load(make_legacy_tar_pt(), path="x.pt")
    with pytest.raises(UnsupportedContent, match="7z"):
        read_embedding_bytes(make_7z(), path="x.pt")


def test_bad_crc_is_corrupt() -> None:
    vectors = rand_vectors(2, 768, seed=3)
    good = make_emb_params_pt(vectors)
    bad = zip_with_bad_crc(good, vectors.tobytes()[:64])
    with pytest.raises(CorruptFile, match="data/0"):
        safe_torch_load(bad, path="x.pt")


@pytest.mark.parametrize(
    "name",
    [
        "../evil.pkl",
        "/abs/data.pkl",
        "C:\\evil\\data.pkl",
        "archive/../../x",
        "archive\\data.pkl",
        "archive/./version",
    ],
)
def test_path_like_member_names_are_unsafe(name: str) -> None:
    pkl = zipfile.ZipFile(io.BytesIO(make_emb_params_pt(rand_vectors(1, 768)))).read(
        "archive/data.pkl"
    )
    data = in_torch_zip(
        pkl, records={"0": rand_vectors(1, 768).tobytes()}, extra_names={name: b"x"}
    )
    with pytest.raises(UnsafeFile) as info:
        safe_torch_load(data)
    assert repr(name)[1:-1][:5] in str(info.value) or "path" in str(info.value)


@pytest.mark.parametrize(
    "name", ["archive/extra.py", "archive/data/../../x", "other/data.pkl", "archive/data.pkl2"]
)
def test_unexpected_member_names_are_unsafe(name: str) -> None:
    pkl = zipfile.ZipFile(io.BytesIO(make_emb_params_pt(rand_vectors(1, 768)))).read(
        "archive/data.pkl"
    )
    data = in_torch_zip(
        pkl, records={"0": rand_vectors(1, 768).tobytes()}, extra_names={name: b"x"}
    )
    with pytest.raises(UnsafeFile):
        safe_torch_load(data)


@pytest.mark.parametrize("root", ["archive", "my embedding", "猫-style", "a.b.c"])
def test_any_plain_folder_name_loads(root: str) -> None:
    pkl = tensor_pickle(numel=768, shape=(1, 768))
    obj = safe_torch_load(
        in_torch_zip(pkl, root=root, records={"0": rand_vectors(1, 768).tobytes()})
    )
    assert tuple(obj["emb_params"].shape) == (1, 768)


def test_zip_without_data_pkl_or_torchscript_is_unsupported() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(UnsupportedContent, match="data.pkl"):
        safe_torch_load(buf.getvalue())
    pkl = pickle.dumps({}, protocol=2)
    ts = in_torch_zip(
        pkl, extra_names={"archive/constants.pkl": pkl, "archive/code/__torch__/m.py": b""}
    )
    with pytest.raises(UnsupportedContent, match="TorchScript"):
        safe_torch_load(ts)


def test_declared_storage_far_larger_than_an_embedding() -> None:
    huge = MAX_DECLARED_STORAGE_BYTES // 4 + 1
    pkl = tensor_pickle(numel=huge, shape=(1, 768))
    with pytest.raises(FileTooLarge, match="storage"):
        safe_torch_load(in_torch_zip(pkl, records={"0": bytes(768 * 4)}), path="big.pt")
    with pytest.raises(FileTooLarge):
        safe_torch_load(in_legacy(tensor_pickle(numel=10**12, shape=(1, 768), legacy=True), ["0"]))


def test_storage_record_must_match_its_declaration() -> None:
    pkl = tensor_pickle(numel=768, shape=(1, 768))
    ok = safe_torch_load(in_torch_zip(pkl, records={"0": rand_vectors(1, 768).tobytes()}))
    assert tuple(ok["emb_params"].shape) == (1, 768)
    with pytest.raises(CorruptFile, match="declares"):
        safe_torch_load(in_torch_zip(pkl, records={"0": bytes(100)}))
    with pytest.raises(CorruptFile, match="no data/0"):
        safe_torch_load(in_torch_zip(pkl))


def test_plain_pickles_are_not_torch_files() -> None:
    with pytest.raises(UnsupportedContent, match="plain Python pickle"):
        safe_torch_load(pickle.dumps({"emb_params": [1.0, 2.0]}, protocol=2))


# --------------------------------------------------------------------------- what loads


def _globals_in(data: bytes) -> set[str]:
    import pickletools

    if data[:2] == b"PK":
        zf = zipfile.ZipFile(io.BytesIO(data))
        pkls = [zf.read(n) for n in zf.namelist() if n.endswith("data.pkl")]
    else:
        pkls = [data]
    found = set()
    for pkl in pkls:
        stream = io.BytesIO(pkl)
        while stream.tell() < len(pkl):
            try:
                for op, arg, _ in pickletools.genops(stream):
                    if op.name == "GLOBAL":
                        found.add(arg.replace(" ", "."))
            except ValueError:
                break
    return found


def test_allow_list_is_exactly_what_torch_writes_for_embeddings() -> None:
    """Every allowed global is emitted by torch.save for some embedding layout."""
    vec = rand_vectors(2, 768)
    seen: set[str] = set()
    samples = [
        make_a1111_pt(vec),
        make_a1111_pt(vec, parameter=False),
        make_a1111_pt(vec, parameter_dict=True),
        make_emb_params_pt(vec, dtype=torch.float16),
        make_emb_params_pt(vec, dtype=torch.bfloat16),
        make_emb_params_pt(vec, dtype=torch.float64),
        make_emb_params_pt(vec, legacy=True),
        make_paper_pt(vec),  # the Textual Inversion paper's int64 token ids
    ]
    param = torch.nn.Parameter(torch.zeros(1, 768))
    param.extra_attr = 1  # Parameter with Python state
    samples.append(torch_bytes({"emb_params": param}))
    for sample in samples:
        seen |= _globals_in(sample)
    seen = {g.replace("__builtin__.", "builtins.") for g in seen}
    allowed = {g.replace("__builtin__.", "builtins.") for g in ALLOWED_GLOBALS}
    assert seen == allowed


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_real_files_load(legacy: bool, dtype: str) -> None:
    vec = rand_vectors(3, 1024, seed=1)
    obj = safe_torch_load(make_emb_params_pt(vec, legacy=legacy, dtype=getattr(torch, dtype)))
    assert str(obj["emb_params"].dtype) == f"torch.{dtype}"
    np.testing.assert_allclose(obj["emb_params"].float().numpy(), vec, rtol=1e-2, atol=1e-3)


def test_old_a1111_parameter_dict_loads_without_nn_module() -> None:
    vec = rand_vectors(2, 768, seed=5)
    obj = safe_torch_load(make_a1111_pt(vec, parameter_dict=True))
    params = obj["string_to_param"]
    assert isinstance(params, ParameterDictContents)
    assert list(params) == ["*"]
    np.testing.assert_array_equal(params["*"].numpy(), vec)
    # the stand-in class never leaks into torch's global allow-list
    assert not any("ParameterDict" in str(g) for g in torch.serialization.get_safe_globals())


def test_legacy_parameter_dict_is_unsupported_with_a_reason() -> None:
    import torch.nn as nn

    data = torch_bytes(
        {"string_to_param": nn.ParameterDict({"*": nn.Parameter(torch.zeros(1, 768))})}, legacy=True
    )
    with pytest.raises(UnsupportedContent, match="legacy"):
        safe_torch_load(data)


def test_module_and_custom_objects() -> None:
    with pytest.raises(
        UnsupportedContent, match=r"nn\.Module \(torch\.nn\.modules\.linear\.Linear\)"
    ):
        safe_torch_load(make_module_pt(), path="m.pt")
    with pytest.raises(UnsafeFile, match=r"fixtures_formats\.CustomThing"):
        safe_torch_load(make_custom_object_pt(), path="c.pt")
    # int64 tensors load as data (token ids); other integer types are not embedding data
    with pytest.raises(UnsupportedContent, match="IntStorage"):
        safe_torch_load(torch_bytes({"ids": torch.arange(4, dtype=torch.int32)}))
    assert safe_torch_load(torch_bytes({"ids": torch.arange(4)}))["ids"].tolist() == [0, 1, 2, 3]
    with pytest.raises(BadTensor, match="dtype int64; expected a float tensor"):
        read_embedding_bytes(torch_bytes({"ids": torch.arange(4)}), path="ids.pt")
    with pytest.raises(UnsupportedContent, match="float32"):
        safe_torch_load(torch_bytes({"dtype": torch.float32}))


def test_framed_protocol_is_explained() -> None:
    data = torch_bytes({"emb_params": torch.zeros(1, 768)}, protocol=4)
    try:
        obj = safe_torch_load(data)
    except UnsupportedContent as exc:
        assert "protocol 4 or 5" in str(exc)
    else:  # a torch whose weights-only loader reads frames
        assert tuple(obj["emb_params"].shape) == (1, 768)


def test_no_fallback_loosens_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    real = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    safe_torch_load(make_a1111_pt(rand_vectors(1, 768)))
    with pytest.raises(UnsupportedContent):
        safe_torch_load(make_module_pt())
    assert seen == [True]


def test_emptydict_and_raw_helpers_assemble() -> None:
    # the assembler itself: a harmless OrderedDict() call round-trips through pickle
    data = assemble(Call(G("collections", "OrderedDict")), 2)
    assert pickle.loads(data) == {}
    assert pickle.loads(assemble(Raw(b"N"), 2)) is None
    assert isinstance(EmptyDict(), EmptyDict)
    assert safe_pickle.is_pickle(data)


# --------------------------------------------------------------------------- frames (issue 13)


def _framed_wraps(data: bytes) -> dict[str, bytes]:
    return {"raw": data, "torch-zip": in_torch_zip(data), "legacy": in_legacy(data)}


@pytest.mark.parametrize("protocol", [4, 5])
def test_the_frame_trick_is_unsafe_in_every_container(
    protocol: int, tmp_path: Path, no_torch_load: list[bytes]
) -> None:
    """A call hidden past a FRAME's end (C unpickler: opcodes; linear reader: bytes)."""
    sentinel = tmp_path / "sentinel"
    trick = frame_trick(f"touch {sentinel}", protocol)
    for container, data in _framed_wraps(trick).items():
        with pytest.raises(UnsafeFile) as info:
            safe_torch_load(data, path="f.pt")
        message = str(info.value)
        assert "os.system" in message and "frame trick" in message, container
        assert "not executed" in message and "\n" not in message
    assert no_torch_load == []
    assert not sentinel.exists()


def test_the_frame_trick_really_runs_under_the_c_unpickler(tmp_path: Path) -> None:
    """Control (in a child Python): pickle.load from a file runs it; pickletools sees bytes."""
    import pickletools

    sentinel = tmp_path / "ran"
    trick = frame_trick(f"touch {sentinel}")
    ops = [op.name for op, _arg, _pos in pickletools.genops(trick)]
    assert ops == ["PROTO", "FRAME", "SHORT_BINUNICODE", "SHORT_BINBYTES", "POP", "STOP"]
    (tmp_path / "trick.pkl").write_bytes(trick)
    script = "import io, pickle, sys; pickle.load(io.BytesIO(open(sys.argv[1], 'rb').read()))"
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "trick.pkl")], timeout=60, check=False
    )
    assert sentinel.exists()


@pytest.mark.parametrize(
    ("data", "what"),
    [
        # an opcode running past the frame's end (no payload: still not readable alike)
        (framed(b"\x8c\x04ab", tail=b"cd0N."), "runs past its frame's end"),
        # a FRAME opened before the previous one ended
        (framed(b"N\x95" + struct.pack("<Q", 2) + b"0N", tail=b"."), "opens inside another"),
        # the frame around STOP goes on past it (the C unpickler would eat the rest)
        (frame_declaring(4, b"N.N."), "continues past it"),
    ],
)
def test_malformed_frames_are_refused_before_torch(
    data: bytes, what: str, no_torch_load: list[bytes]
) -> None:
    for container, wrapped in _framed_wraps(data).items():
        with pytest.raises(UnsafeFile, match="frame trick") as info:
            safe_torch_load(wrapped, path="f.pt")
        assert what in str(info.value), container
    with pytest.raises(UnsafeFile, match=what):
        scan_pickle(data)
    assert no_torch_load == []


def test_a_frame_longer_than_the_file_is_corrupt() -> None:
    with pytest.raises(CorruptFile, match="declares 100 bytes but 2 follow"):
        scan_pickle(frame_declaring(100, b"N."))


def test_well_formed_frames_are_still_read() -> None:
    """What pickle writes at protocol 4/5 (frames ending on opcode boundaries) walks clean."""
    for protocol in (4, 5):
        scan_pickle(pickle.dumps({"a": [1, 2.5, "x" * 70_000], "b": None}, protocol=protocol))
    data = torch_bytes({"emb_params": torch.zeros(1, 768)}, protocol=4)
    try:  # torch's weights-only loader refuses frames: explained, not called unsafe
        safe_torch_load(data)
    except UnsupportedContent as exc:
        assert "protocol 4 or 5" in str(exc)


# --------------------------------------------------------------------------- every pickle


def _evil(tmp_path: Path, protocol: int = 2) -> bytes:
    return malicious_pickle("os.system", tmp_path / "sentinel", protocol)


def _a1111_parts() -> tuple[bytes, dict[str, bytes]]:
    zf = zipfile.ZipFile(io.BytesIO(make_emb_params_pt(rand_vectors(1, 768))))
    return zf.read("archive/data.pkl"), {"0": zf.read("archive/data/0")}


def test_a_second_pickle_after_stop_is_walked(tmp_path: Path, no_torch_load: list[bytes]) -> None:
    pkl, records = _a1111_parts()
    evil = _evil(tmp_path)
    legacy = make_emb_params_pt(rand_vectors(1, 768), legacy=True)
    cases = {
        "raw": benign_pickle() + evil,
        "raw, protocol 0 first": b"N." + evil,
        "zip, data.pkl": in_torch_zip(pkl + evil, records=records),
        "zip, constants.pkl": in_torch_zip(
            pkl, records=records, extra_names={"archive/constants.pkl": evil}
        ),
        "zip, another .pkl": in_torch_zip(
            pkl, records=records, extra_names={"archive/extra.pkl": evil}
        ),
        "zip, a second pickle in constants.pkl": in_torch_zip(
            pkl, records=records, extra_names={"archive/constants.pkl": benign_pickle() + evil}
        ),
        "legacy, after the storages": legacy + evil,
        "legacy, in sys_info": in_legacy(pkl, ["0"]).replace(
            pickle.dumps(
                {
                    "protocol_version": 1001,
                    "little_endian": True,
                    "type_sizes": {"short": 2, "int": 4, "long": 4},
                },
                protocol=2,
            ),
            evil,
        ),
    }
    for case, data in cases.items():
        with pytest.raises(UnsafeFile, match=r"os\.system") as info:
            safe_torch_load(data, path="two.pt")
        assert "not executed" in str(info.value), case
    with pytest.raises(UnsafeFile, match=r"os\.system"):
        scan_pickle(benign_pickle() + evil)
    assert no_torch_load == []


def test_harmless_bytes_after_stop_are_still_corrupt() -> None:
    pkl, records = _a1111_parts()
    for data in (
        in_torch_zip(pkl + benign_pickle(), records=records),
        in_torch_zip(pkl + b"junk", records=records),
    ):
        with pytest.raises(CorruptFile, match="after STOP"):
            safe_torch_load(data)
    with pytest.raises(CorruptFile, match="after STOP"):
        scan_pickle(benign_pickle() + benign_pickle())
    legacy = make_emb_params_pt(rand_vectors(1, 768), legacy=True)
    with pytest.raises(CorruptFile, match="unexpected bytes at the end"):
        safe_torch_load(legacy + benign_pickle())
    with pytest.raises(UnsupportedContent, match="TorchScript"):
        safe_torch_load(
            in_torch_zip(pkl, records=records, extra_names={"archive/constants.pkl": pkl})
        )


def test_a_threat_beats_every_structural_refusal(tmp_path: Path) -> None:
    """A damaged container that holds a forbidden import is unsafe, not merely corrupt."""
    pkl, records = _a1111_parts()
    evil = _evil(tmp_path)
    hidden = in_torch_zip(pkl, records=records, extra_names={"archive/evil.bin": b"x"})
    cases = {
        # a bad CRC on the member holding the payload (stored: visible in the raw bytes)
        "bad CRC": zip_with_bad_crc(in_torch_zip(evil, records=records), b"touch"),
        # payload, then a stream no reader can follow, then more junk
        "broken tail": in_torch_zip(with_broken_tail(evil), records=records),
        # a zip so broken it cannot be opened (no central directory), payload stored
        "no central directory": in_torch_zip(evil)[: in_torch_zip(evil).index(b"PK\x01\x02")],
        # torch's legacy magic, then a plain pickle with a call after a broken pickle
        "legacy, broken first": in_legacy(b"\x80\x02\xff" + evil),
        # storages that do not match (structural) with a payload in the keys pickle
        "legacy keys": in_legacy(pkl, ["0"])[: -len(pickle.dumps([], protocol=2))] + evil,
    }
    for case, data in cases.items():
        with pytest.raises(UnsafeFile, match=r"os\.system"):
            safe_torch_load(data, path=case)
    with pytest.raises(UnsafeFile, match="not a PyTorch record"):
        safe_torch_load(hidden)


def test_literal_imports_are_found_at_any_offset() -> None:
    hidden = b"\x00junk" + b"\x8c\x02os\x94\x8c\x06system\x94\x93" + b"more" + b"cposix\nsystem\n"
    found = safe_pickle.literal_imports(hidden)
    assert ("posix", "system") in found and ("os", "system") in found
    # names that only look like strings are confirmed by reading their opcodes
    assert safe_pickle.literal_imports(b"\x8c\x05os\x8c\x06system\x93") == []
    assert safe_pickle.literal_imports(b"plain text\nwith lines\n") == []


# --------------------------------------------------------------------------- state dicts


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_module_state_dicts_are_not_called_hostile(legacy: bool) -> None:
    """torch.save(nn.Embedding(n, 768).state_dict()): an OrderedDict with _metadata."""
    emb = torch.nn.Embedding(3, 768)
    torch.nn.init.normal_(emb.weight, std=0.02)
    data = torch_bytes(emb.state_dict(), legacy=legacy)
    parsed = read_embedding_bytes(data, path="state.pt")
    assert (parsed.format, parsed.token) == ("diffusers", None)
    np.testing.assert_array_equal(parsed.embedding.vectors["clip_l"], emb.weight.detach().numpy())
    # the same file, written by hand, with several modules' metadata
    assert read_embedding_bytes(state_dict_file(module_metadata("", "a", "a.b"), legacy=legacy))
    # other state dicts are what their tensors make them, never UnsafeFile
    with pytest.raises(AmbiguousEmbedding):
        read_embedding_bytes(torch_bytes(torch.nn.Linear(4, 768).state_dict(), legacy=legacy))


@pytest.mark.parametrize(
    "state",
    [
        D((("items", 5),)),  # would shadow a dict method
        D((("_metadata", G("os", "system")),)),
        D((("_metadata", D((("", Call(G("builtins", "eval"), "1")),))),)),
        D((("_metadata", D((("", D((("v", PersId(("evil",))),))),))),)),
        D((("_metadata", D()), ("extra", 1))),
        D((("_metadata", "not a dict"),)),
        D((("_metadata", D((("", D((("v", D((("deeper", 1),))),))),))),)),
    ],
    ids=["items", "global", "call", "persid", "extra-key", "str", "too-deep"],
)
def test_other_builds_on_a_dict_stay_unsafe(state: D, no_torch_load: list[bytes]) -> None:
    with pytest.raises(UnsafeFile, match="BUILD|os.system|builtins.eval|persistent id"):
        safe_torch_load(state_dict_file(state))
    assert no_torch_load == []


def test_build_only_on_an_ordered_dict_and_only_once() -> None:
    plain = D((("weight", tensor()),), False, module_metadata(""))
    with pytest.raises(UnsafeFile, match="BUILD"):
        safe_torch_load(in_torch_zip(assemble_node(plain), records={"0": floats(2 * 768)}))
    twice = assemble_node(D((("weight", tensor()),), True, module_metadata("")))[:-1]
    twice += assemble_node(module_metadata(""))[2:-1] + b"b."
    with pytest.raises(UnsafeFile, match="BUILD"):
        safe_torch_load(in_torch_zip(twice, records={"0": floats(2 * 768)}))


# --------------------------------------------------------------------------- what loading returns


@pytest.mark.parametrize("attribute", ["detach", "float", "numpy", "to", "__class__", "keys"])
def test_parameter_state_cannot_replace_tensor_methods(attribute: str) -> None:
    """_rebuild_parameter_with_state sets attributes; they never reach the readers."""
    state = D(((attribute, 5),))
    param = Call(
        G("torch._utils", "_rebuild_parameter_with_state"),
        tensor(numel=768, shape=(1, 768)),
        False,
        Call(G("collections", "OrderedDict")),
        state,
    )
    data = in_torch_zip(assemble_node(D((("emb_params", param),))), records={"0": floats(768)})
    try:
        obj = safe_torch_load(data, path="p.pt")
    except CorruptFile as exc:  # torch itself refuses some (__class__ = 5)
        assert "PyTorch could not read" in str(exc)
        return
    assert type(obj["emb_params"]) is torch.Tensor
    parsed = read_embedding_bytes(data, path="p.pt")
    assert parsed.embedding.vectors["clip_l"].shape == (1, 768)


def test_a_list_shared_a_million_times_stays_shared() -> None:
    """Memo references: 7 KB of pickle naming one list 10^6 times; loading copies none."""
    import time

    inner = list(range(1000))
    shared = [[inner] * 1000] * 1000
    data = torch_bytes({"emb_params": torch.zeros(1, 768) + 0.01, "x": shared})
    assert len(data) < 20_000
    started = time.perf_counter()
    obj = safe_torch_load(data)
    assert obj["x"][0] is obj["x"][1] and obj["x"][0][0] is obj["x"][999][999]
    parsed = read_embedding_bytes(data, path="shared.pt")
    assert "x" not in parsed.metadata  # too many values to keep as metadata
    assert time.perf_counter() - started < 10


# --------------------------------------------------------------------------- tensor views


def test_a_tensor_may_claim_no_more_elements_than_an_embedding_holds(
    no_torch_load: list[bytes],
) -> None:
    """75 vectors x 4096 (T5-XXL) x 4 slots per tensor; all views together within the
    storage cap."""
    cap = safe_pickle.MAX_TENSOR_ELEMENTS
    assert cap == 75 * 4096 * 4
    rows = cap // 768 + 1  # one row more than the cap, from a single stored row (stride 0)
    over = in_torch_zip(
        tensor_pickle(numel=768, shape=(rows, 768), stride=(0, 1)),
        records={"0": bytes(768 * 4)},
    )
    with pytest.raises(FileTooLarge, match=f"expected at most {cap}"):
        safe_torch_load(over, path="v.pt")
    items = tuple((f"t{i}", tensor(numel=768, shape=(75, 768), stride=(0, 1))) for i in range(100))
    many = in_torch_zip(assemble_node(D(items)), records={"0": bytes(768 * 4)})
    with pytest.raises(FileTooLarge, match="claim .* bytes in all"):
        safe_torch_load(many, path="v.pt")
    assert no_torch_load == []


def test_legacy_storage_views_are_checked() -> None:
    def legacy_view(view: object, shape: tuple[int, ...] = (1, 768)) -> bytes:
        pid = PersId(("storage", G("torch", "FloatStorage"), "0", "cpu", 1536, view))
        node = Call(
            G("torch._utils", "_rebuild_tensor_v2"),
            pid,
            0,
            shape,
            (768, 1)[-len(shape) :] if len(shape) == 2 else (1,),
            False,
            Call(G("collections", "OrderedDict")),
        )
        pkl = assemble_node(D((("emb_params", node),)))
        return in_legacy(pkl, ["0"], struct.pack("<Q", 1536) + floats(1536))

    with pytest.raises(CorruptFile, match="view"):
        safe_torch_load(legacy_view(("9", 1000, 768)))  # the slice passes the storage
    with pytest.raises(CorruptFile, match="reaches element"):
        safe_torch_load(legacy_view(("9", 0, 100)))  # the tensor passes the slice


# --------------------------------------------------------------------------- through the CLI

#: name -> (bytes from the sentinel path, exit code, fragment of the one error line)
PICKLE_REFUSALS = {
    "frame-trick-raw": (lambda s: frame_trick(f"touch {s}"), 4, "os.system"),
    "frame-trick-zip": (lambda s: in_torch_zip(frame_trick(f"touch {s}", 5)), 4, "frame trick"),
    "frame-trick-legacy": (lambda s: in_legacy(frame_trick(f"touch {s}")), 4, "os.system"),
    "second-pickle-raw": (
        lambda s: benign_pickle() + malicious_pickle("os.system", s, 2),
        4,
        "os.system",
    ),
    "second-pickle-zip-member": (
        lambda s: in_torch_zip(
            _a1111_parts()[0],
            records=_a1111_parts()[1],
            extra_names={"archive/constants.pkl": malicious_pickle("os.system", s, 4)},
        ),
        4,
        "os.system",
    ),
    "string-opener": (
        lambda s: b"V" + f"touch {s}".encode() + b"\np0\n0cos\nsystem\n(g0\ntR.",
        4,
        "os.system",
    ),
    "state-dict-hostile-build": (lambda s: state_dict_file(D((("items", 5),))), 4, "BUILD"),
    "frame-overrunning-file": (lambda s: in_torch_zip(frame_declaring(99, b"N.")), 3, "FRAME"),
}


@pytest.mark.parametrize("case", sorted(PICKLE_REFUSALS))
def test_refused_pickles_exit_with_one_line_and_change_nothing(
    case: str, tmp_path: Path, lib, catalog_snapshot
) -> None:

    from conceptlib.registry.samples import sample_embedding

    lib.add_embedding(sample_embedding("sd1", 1, 9), name="existing")
    home = lib.settings.home
    lib.close()
    build, code, fragment = PICKLE_REFUSALS[case]
    sentinel = tmp_path / "sentinel"
    path = tmp_path / "file.pt"
    path.write_bytes(build(sentinel))
    import_is_refused(path, home, code=code, fragment=fragment, snapshot=catalog_snapshot)
    assert not sentinel.exists()


def test_a_state_dict_imports_through_the_cli(tmp_path: Path, lib) -> None:
    import json

    from click.testing import CliRunner

    from conceptlib.cli.main import cli

    emb = torch.nn.Embedding(2, 768)
    torch.nn.init.normal_(emb.weight, std=0.02)
    path = tmp_path / "my-style.pt"
    path.write_bytes(torch_bytes(emb.state_dict()))
    lib.close()
    res = CliRunner().invoke(cli, ["import", str(path), "--json"])
    assert res.exit_code == 0, res.output
    (o,) = json.loads(res.output)["files"]
    assert (o["status"], o["name"], o["token"]) == ("imported", "my-style", "my-style")

"""safe_torch_load: hostile pickles are refused before anything runs; real files load."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
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

from conceptlib.errors import (
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

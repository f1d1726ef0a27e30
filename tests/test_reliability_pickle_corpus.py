"""A generated corpus of malicious pickles: every one is refused and none runs.

The corpus crosses dangerous callables (the bad-inputs list, items 7-9, plus gadget
chains and opcode tricks) with pickle protocols 0-5 and eight containers: a raw
pickle, a torch zip and torch's legacy stream (each as ``.pt``), a raw pickle and a
torch zip renamed ``.safetensors``, and the raw, zip and legacy forms with a
deliberately broken stream right after the payload.

Every payload creates its own sentinel file if anything ever unpickles it. A control
run in a separate Python proves that (plain ``pickle.loads`` or
``torch.load(weights_only=False)`` creates every sentinel), so "refused" means
"refused something that would have run". While conceptlib reads the corpus, a
Python audit hook (installed once per session, active only while armed) records
and blocks any process, exec, ``ctypes`` or unrestricted-unpickling event.

Figures: ``CONCEPTLIB_RELIABILITY_REPORT=/path/figures.jsonl`` appends them there.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    malicious_pickle,
    torch_bytes,
    with_broken_tail,
)
from pickle_tricks import benign_pickle, frame_trick, string_opener
from reliability_support import report_figures

from conceptlib.errors import UnsafeFile

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.timeout(60)  # each test; longer ones say so

PROTOCOLS = range(6)

# --------------------------------------------------------------------------- figures


# --------------------------------------------------------------------------- the audit hook

#: Audit events that mean "something ran": processes, exec of foreign code, native calls.
DANGEROUS_EVENTS = frozenset(
    {
        "os.system",
        "subprocess.Popen",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.startfile",
        "pty.spawn",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.call_function",
        "webbrowser.open",
        "shutil.copyfile",
        "shutil.copymode",
        "shutil.rmtree",
        "os.remove",
        "os.rename",
        "socket.connect",
        "code.__new__",
        "cpython.run_command",
        "cpython.run_file",
    }
)


@dataclass
class AuditState:
    """Shared by every import of this module: the hook cannot be removed, so it is armed."""

    armed: bool = False
    thread: int | None = None
    events: list[str] = field(default_factory=list)


def _audit_state() -> AuditState:
    state = getattr(sys, "_conceptlib_reliability_audit", None)
    if state is None:
        state = AuditState()
        sys._conceptlib_reliability_audit = state  # type: ignore[attr-defined]
        sys.addaudithook(_make_hook(state))
    return state


def _from_import_machinery() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if "importlib" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def _make_hook(state: AuditState):  # noqa: ANN202
    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not state.armed or threading.get_ident() != state.thread:
            return
        flagged = None
        if event in DANGEROUS_EVENTS:
            flagged = f"{event} {args!r:.120}"
        elif event in ("exec", "compile"):
            code = args[0] if args else None
            filename = getattr(code, "co_filename", None) or (args[1] if len(args) > 1 else "")
            from_file = isinstance(filename, str) and os.path.isfile(filename)
            if not from_file and not _from_import_machinery():
                flagged = f"{event} of code from {filename!r:.80}"
        elif event == "pickle.find_class":
            # conceptlib never gives hostile bytes to a real unpickler.
            flagged = f"pickle.find_class {args!r:.120}"
        elif event == "marshal.loads" and not _from_import_machinery():
            flagged = "marshal.loads outside the import machinery"
        if flagged is not None:
            state.events.append(flagged)
            raise RuntimeError(f"blocked by the reliability audit hook: {flagged}")

    return hook


@contextmanager
def armed_audit() -> Iterator[AuditState]:
    """Record (and block) dangerous audit events raised by this thread inside the block."""
    state = _audit_state()
    state.events.clear()
    state.thread = threading.get_ident()
    state.armed = True
    try:
        yield state
    finally:
        state.armed = False


# --------------------------------------------------------------------------- more payloads


def _getattr(obj: Any, attr: str) -> Any:
    return Call(G("builtins", "getattr"), obj, attr)


def _text(s: str) -> bytes:
    """``V`` (raw-unicode) string opcode: understood by every protocol."""
    return b"V" + s.encode("raw-unicode-escape") + b"\n"


def _touch_bin() -> str:
    return shutil.which("touch") or "/usr/bin/touch"


#: Payloads beyond the shared fixtures: other process launchers, gadget chains that
#: call a value computed at load time, opcode tricks, and payloads hidden inside
#: allowed constructs. Each maps to the name its refusal must mention.
EXTRA_KINDS: dict[str, str] = {
    "os.popen": "os.popen",
    "os.posix_spawn": "os.posix_spawn",
    "os.spawnlp": "os.spawnlp",
    "subprocess.run": "subprocess.run",
    "subprocess.getoutput": "subprocess.getoutput",
    "subprocess.check_call": "subprocess.check_call",
    "pydoc.pipepager": "pydoc.pipepager",
    "timeit.timeit": "timeit.timeit",
    "code.InteractiveInterpreter": "code.InteractiveInterpreter",
    "operator.methodcaller": "operator.methodcaller",
    "functools.partial": "functools.partial",
    "ctypes.CDLL": "ctypes.CDLL",
    "numpy.load-allow-pickle": "numpy.load",
    "__builtin__.eval": "__builtin__.eval",
    "shutil.copyfile": "shutil.copyfile",
    "memoized-stack-global": "os.system",
    "INST-opcode": "os.system",
    "OBJ-opcode": "os.system",
    "payload-in-persistent-id": "os.system",
    "payload-as-tensor-storage": "os.system",
    "payload-inside-OrderedDict": "builtins.eval",
    # a protocol 0/1 stream whose first opcode is a STRING (S): no header to sniff
    "string-opener": "os.system",
}


class _TouchOnLoad:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(self.path)}",))


def extra_pickle(kind: str, sentinel: Path, protocol: int) -> bytes:
    """A payload of :data:`EXTRA_KINDS` that creates ``sentinel`` when unpickled."""
    path = str(sentinel)
    cmd = f"touch {shlex.quote(path)}"
    src = f"open({path!r}, 'w').close()"
    os_system = G("os", "system")
    node: Any
    if kind == "os.popen":
        node = Call(G("os", "popen"), cmd)
    elif kind == "os.posix_spawn":
        node = Call(G("os", "posix_spawn"), _touch_bin(), ("touch", path), EmptyDict())
    elif kind == "os.spawnlp":
        node = Call(G("os", "spawnlp"), 0, "touch", "touch", path)  # 0 is os.P_WAIT
    elif kind == "subprocess.run":
        node = Call(G("subprocess", "run"), ("touch", path))
    elif kind == "subprocess.getoutput":
        node = Call(G("subprocess", "getoutput"), cmd)
    elif kind == "subprocess.check_call":
        node = Call(G("subprocess", "check_call"), ("touch", path))
    elif kind == "pydoc.pipepager":
        node = Call(G("pydoc", "pipepager"), "", cmd)
    elif kind == "timeit.timeit":
        node = Call(G("timeit", "timeit"), src, "pass", G("time", "perf_counter"), 1)
    elif kind == "code.InteractiveInterpreter":
        node = Call(_getattr(Call(G("code", "InteractiveInterpreter")), "runsource"), src)
    elif kind == "operator.methodcaller":
        node = Call(
            Call(G("operator", "methodcaller"), "system", cmd),
            Call(G("builtins", "__import__"), "os"),
        )
    elif kind == "functools.partial":
        node = Call(Call(G("functools", "partial"), os_system, cmd))
    elif kind == "ctypes.CDLL":
        node = Call(_getattr(Call(G("ctypes", "CDLL"), None), "system"), cmd.encode())
    elif kind == "numpy.load-allow-pickle":
        npy = sentinel.with_name(sentinel.name + ".npy")
        np.save(npy, np.array([_TouchOnLoad(path)], dtype=object), allow_pickle=True)
        node = Call(G("numpy", "load"), str(npy), None, True)
    elif kind == "__builtin__.eval":
        node = Call(G("__builtin__", "eval"), src)
    elif kind == "shutil.copyfile":
        node = Call(G("shutil", "copyfile"), str(Path(__file__).resolve()), path)
    elif kind == "memoized-stack-global":
        # names pushed, memoized, popped and fetched back before STACK_GLOBAL
        push = Raw(_text("os") + b"p0\n0" + _text("system") + b"p1\n0" + b"g0\ng1\n\x93")
        node = Call(push, cmd)
    elif kind == "INST-opcode":
        head = b"\x80" + bytes([protocol]) if protocol >= 2 else b""
        return head + b"(" + _text(cmd) + b"ios\nsystem\n."
    elif kind == "OBJ-opcode":
        head = b"\x80" + bytes([protocol]) if protocol >= 2 else b""
        return head + b"(cos\nsystem\n" + _text(cmd) + b"o."
    elif kind == "payload-in-persistent-id":
        node = PersId(("storage", Call(os_system, cmd), "0", "cpu", 1))
    elif kind == "payload-as-tensor-storage":
        node = Call(
            G("torch._utils", "_rebuild_tensor_v2"),
            Call(os_system, cmd),
            0,
            (1,),
            (1,),
            False,
            Call(G("collections", "OrderedDict")),
        )
    elif kind == "payload-inside-OrderedDict":
        node = Call(G("collections", "OrderedDict"), Call(G("builtins", "eval"), src))
    elif kind == "string-opener":
        return string_opener(cmd, protocol)
    else:
        raise ValueError(kind)
    return assemble(node, protocol)


ALL_KINDS: dict[str, str] = {**MALICIOUS_KINDS, **EXTRA_KINDS}

#: Containers: name -> (file suffix, wrap(payload)). "broken" ones cut the payload's
#: STOP and follow it with bytes no unpickler accepts (the code runs before the error).
CONTAINERS: dict[str, tuple[str, Any]] = {
    "raw": (".pt", lambda p: p),
    "torch-zip": (".pt", in_torch_zip),
    "legacy": (".pt", in_legacy),
    "raw-renamed": (".safetensors", lambda p: p),
    "zip-renamed": (".safetensors", in_torch_zip),
    "raw-broken": (".bin", with_broken_tail),
    "zip-broken": (".pt", lambda p: in_torch_zip(with_broken_tail(p))),
    "legacy-broken": (".pt", lambda p: in_legacy(with_broken_tail(p))),
}


def protocols_of(kind: str) -> range:
    """Python 3 maps ``__builtin__`` to ``builtins`` only for protocols 0-2."""
    return range(3) if kind.startswith("__builtin__") else PROTOCOLS


@dataclass(frozen=True)
class Payload:
    kind: str
    protocol: int
    container: str
    file: Path
    sentinel: Path
    #: how the control runs it: "stream" (pickle.load from a file, again until the end),
    #: "torch" (torch.load, weights_only=False), "members" (every .pkl of the zip as a
    #: stream) or "tail:N" (a stream from byte N)
    control: str = "auto"

    @property
    def named(self) -> str:
        return ALL_KINDS.get(self.kind) or TRICKS[self.kind]

    @property
    def how(self) -> str:
        if self.control != "auto":
            return self.control
        return "stream" if self.container.startswith("raw") else "torch"


#: Files that hide a call from a walk that reads less than every unpickler does, each
#: with the name its refusal must mention (issue 13: other projects' corpora).
TRICKS: dict[str, str] = {
    # fickling's frame-boundary case: the C unpickler reading a file takes a string
    # from after its FRAME, so the call is opcodes to it and bytes to a linear reader
    "frame-trick": "os.system",
    # picklescan's multi-pickle cases: a second pickle after the first STOP
    "second-pickle": "os.system",
}


def _legacy_sys_info(sys_info: bytes) -> bytes:
    """torch's legacy stream with ``sys_info`` as its third pickle (torch.load reads it)."""
    magic, version = 0x1950A86A20F9469CFC6C, 1001
    return b"".join(
        [
            pickle.dumps(magic, protocol=2),
            pickle.dumps(version, protocol=2),
            sys_info,
            pickle.dumps({}, protocol=2),
            pickle.dumps([], protocol=2),
        ]
    )


def _tricks(files: Path, sentinels: Path) -> list[Payload]:
    """The frame trick and the second pickle, in every container they can hide in."""
    from fixtures_formats import make_emb_params_pt, rand_vectors

    good = zipfile.ZipFile(io.BytesIO(make_emb_params_pt(rand_vectors(1, 768, seed=3))))
    pkl, records = good.read("archive/data.pkl"), {"0": good.read("archive/data/0")}
    legacy = make_emb_params_pt(rand_vectors(1, 768, seed=4), legacy=True)
    out: list[Payload] = []

    def add(kind: str, protocol: int, container: str, make: Any, how: str) -> None:
        stem = f"{kind}-p{protocol}-{container}"
        sentinel = sentinels / stem
        target = files / (stem + (".safetensors" if "renamed" in container else ".pt"))
        data = make(sentinel)
        if how == "tail":  # the control starts a stream where the second pickle starts
            how = f"tail:{len(legacy)}"
        target.write_bytes(data)
        out.append(Payload(kind, protocol, container, target, sentinel, how))

    for p in (4, 5):

        def trick(s: Path, p: int = p) -> bytes:
            return frame_trick(f"touch {shlex.quote(str(s))}", p)

        add("frame-trick", p, "raw", trick, "stream")
        add("frame-trick", p, "raw-renamed", trick, "stream")
        add("frame-trick", p, "torch-zip", lambda s, t=trick: in_torch_zip(t(s)), "torch")
        add("frame-trick", p, "zip-renamed", lambda s, t=trick: in_torch_zip(t(s)), "torch")
        add("frame-trick", p, "legacy", lambda s, t=trick: in_legacy(t(s)), "torch")
    for p in (2, 4):

        def evil(s: Path, p: int = p) -> bytes:
            return malicious_pickle("os.system", s, p)

        def member(name: str, e: Any = evil) -> Any:
            return lambda s: in_torch_zip(pkl, records=records, extra_names={name: e(s)})

        add("second-pickle", p, "raw", lambda s, e=evil: benign_pickle() + e(s), "stream")
        add(
            "second-pickle",
            p,
            "zip-data-pkl",
            lambda s, e=evil: in_torch_zip(pkl + e(s), records=records),
            "members",
        )
        add("second-pickle", p, "zip-constants-pkl", member("archive/constants.pkl"), "members")
        add("second-pickle", p, "zip-extra-pkl", member("archive/extra.pkl"), "members")
        add("second-pickle", p, "legacy-after-storages", lambda s, e=evil: legacy + e(s), "tail")
        add(
            "second-pickle", p, "legacy-sys-info", lambda s, e=evil: _legacy_sys_info(e(s)), "torch"
        )
    return out


def build_corpus(root: Path) -> list[Payload]:
    files, sentinels = root / "files", root / "sentinels"
    files.mkdir(parents=True)
    sentinels.mkdir()
    corpus: list[Payload] = []
    for kind in ALL_KINDS:
        for protocol in protocols_of(kind):
            for container, (suffix, wrap) in CONTAINERS.items():
                stem = f"{kind}-p{protocol}-{container}".replace(".", "_")
                sentinel = sentinels / stem
                if kind in MALICIOUS_KINDS:
                    payload = malicious_pickle(kind, sentinel, protocol)
                else:
                    payload = extra_pickle(kind, sentinel, protocol)
                target = files / f"{stem}{suffix}"
                target.write_bytes(wrap(payload))
                corpus.append(Payload(kind, protocol, container, target, sentinel))
    return corpus + _tricks(files, sentinels)


def fired(corpus: list[Payload]) -> list[Payload]:
    return [p for p in corpus if p.sentinel.exists()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Payload]:
    return build_corpus(tmp_path_factory.mktemp("pickle-corpus"))


# --------------------------------------------------------------------------- control

_CONTROL = textwrap.dedent(
    """
    import io, json, os, pickle, pickletools, sys, time, warnings, zipfile
    import torch
    warnings.simplefilter("ignore")
    sys.path.insert(0, sys.argv[2])
    mine = json.load(open(sys.argv[1]))[int(sys.argv[3]) :: 2]

    def stream(blob):
        # pickle.load from a file, as torch and most loaders read, at the start of every
        # pickle in the blob (one after another: where a linear read of each ends)
        starts, fh = [0], io.BytesIO(blob)
        while True:
            try:
                for _op in pickletools.genops(fh):
                    pass
            except Exception:
                break
            if fh.tell() >= len(blob):
                break
            starts.append(fh.tell())
        for start in starts:
            try:
                pickle.load(io.BytesIO(blob[start:]))
            except BaseException:
                pass

    for item in mine:
        data = open(item["file"], "rb").read()
        how = item["how"]
        try:
            if how == "stream":
                stream(data)
            elif how == "torch":
                torch.load(io.BytesIO(data), weights_only=False)
            elif how == "members":
                archive = zipfile.ZipFile(io.BytesIO(data))
                for name in archive.namelist():
                    if name.endswith(".pkl"):
                        stream(archive.read(name))
            elif how.startswith("tail:"):
                stream(data[int(how[5:]) :])
        except BaseException:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(os.path.exists(i["sentinel"]) for i in mine):
            break
        time.sleep(0.05)
    """
)


@pytest.mark.timeout(240)
def test_control_every_payload_runs_under_plain_unpickling(corpus: list[Payload]) -> None:
    """Control: outside conceptlib, every corpus file does execute its payload."""
    listing = corpus[0].file.parent.parent / "control.json"
    listing.write_text(
        json.dumps(
            [{"file": str(p.file), "sentinel": str(p.sentinel), "how": p.how} for p in corpus]
        )
    )
    started = time.monotonic()
    # two interpreters, one per core: each runs half of the corpus
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTROL, str(listing), str(Path(__file__).parent), str(i)],
            cwd=listing.parent,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    for proc in procs:
        try:
            proc.wait(timeout=200)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    ran = fired(corpus)
    missing = sorted(f"{p.kind} p{p.protocol} {p.container}" for p in set(corpus) - set(ran))
    for p in ran:
        p.sentinel.unlink()
    report_figures(
        "pickle-corpus-control",
        payloads=len(corpus),
        executed_by_plain_unpickling=len(ran),
        seconds=round(time.monotonic() - started, 1),
    )
    assert missing == []


# --------------------------------------------------------------------------- conceptlib refuses


@pytest.fixture
def torch_load_spy(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every call of torch.load: a hostile file must never reach it."""
    calls: list[Any] = []
    real = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_corpus_is_large_and_covers_the_issue() -> None:
    kinds = set(ALL_KINDS)
    for needed in (
        "os.system",
        "subprocess.Popen",
        "builtins.eval",
        "builtins.exec",
        "builtins.getattr",
        "builtins.__import__",
        "importlib.import_module",
        "marshal.loads",
        "runpy.run_path",
        "pickle.loads",
        "numpy.runstring",
        "numpy._reconstruct",
    ):
        assert needed in kinds
    assert sum(len(protocols_of(k)) for k in ALL_KINDS) * len(CONTAINERS) >= 150
    assert "string-opener" in kinds and set(TRICKS) == {"frame-trick", "second-pickle"}


def test_the_tricks_cover_every_container_they_hide_in(corpus: list[Payload]) -> None:
    where = {(p.kind, p.container) for p in corpus if p.kind in TRICKS}
    for container in ("raw", "raw-renamed", "torch-zip", "zip-renamed", "legacy"):
        assert ("frame-trick", container) in where
    for container in (
        "raw",
        "zip-data-pkl",
        "zip-constants-pkl",
        "zip-extra-pkl",
        "legacy-after-storages",
        "legacy-sys-info",
    ):
        assert ("second-pickle", container) in where


def _undetected_pickle(p: Payload) -> bool:
    """A headerless (protocol 0/1) stream that is no whole pickle (a payload cut short and
    followed by junk) and opens with a string: nothing tells it from text, so it is
    refused as an unknown format, unparsed (never executed either way)."""
    from conceptlib.registry.formats.safe_pickle import is_pickle, is_zip

    data = p.file.read_bytes()
    return not (is_zip(data) or is_pickle(data))


@pytest.mark.timeout(180)
def test_every_payload_is_refused_and_none_runs(
    corpus: list[Payload], torch_load_spy: list[Any]
) -> None:
    from conceptlib.errors import UnknownFormat
    from conceptlib.registry.formats import read_embedding_file

    read_embedding_file(_benign(corpus[0].file.parent.parent))  # warm lazy imports
    torch_load_spy.clear()
    wrong: list[str] = []
    unsafe = unknown = 0
    started = time.monotonic()
    with armed_audit() as audit:
        for p in corpus:
            try:
                read_embedding_file(p.file)
            except UnsafeFile as exc:
                unsafe += 1
                msg = exc.message
                if p.named not in msg or "not executed" not in msg or "\n" in msg:
                    wrong.append(f"{p.file.name}: message {msg!r}")
            except UnknownFormat as exc:
                unknown += 1
                if not _undetected_pickle(p):
                    wrong.append(f"{p.file.name}: UnknownFormat: {exc}")
            except Exception as exc:  # any other outcome is a miss
                wrong.append(f"{p.file.name}: {type(exc).__name__}: {exc}")
            else:
                wrong.append(f"{p.file.name}: accepted")
    ran = fired(corpus)
    report_figures(
        "pickle-corpus-refused",
        payloads=len(corpus),
        kinds=len(ALL_KINDS),
        protocols=len(PROTOCOLS),
        containers=len(CONTAINERS),
        tricks=sum(p.kind in TRICKS for p in corpus),
        refused=unsafe + unknown,
        refused_as_unsafe=unsafe,
        refused_as_unknown_format=unknown,
        executed=len(ran),
        audit_events=len(audit.events),
        torch_load_calls=len(torch_load_spy),
        seconds=round(time.monotonic() - started, 2),
    )
    assert audit.events == []
    assert ran == []
    assert torch_load_spy == []
    assert wrong == []
    assert unsafe + unknown == len(corpus) >= 150


def _benign(folder: Path) -> Path:
    from fixtures_formats import make_a1111_pt, rand_vectors

    path = folder / "benign-warm-up.pt"
    path.write_bytes(make_a1111_pt(rand_vectors(1, 768, seed=7)))
    return path


@pytest.mark.timeout(180)
def test_library_import_of_the_corpus_changes_nothing(
    corpus: list[Payload], lib: Any, catalog_snapshot: Any, torch_load_spy: list[Any]
) -> None:
    """The user's path: one import of the whole folder; every file rejected, nothing run."""
    home = lib.settings.home
    lib.close()
    before = catalog_snapshot(home)
    from conceptlib.registry.library import Library

    with armed_audit() as audit, Library.open(home) as library:
        report = library.import_paths([corpus[0].file.parent])
    by_path = {p.file.name: p for p in corpus}
    assert len(report.outcomes) == len(corpus)
    wrong = [
        f"{o.path}: {o.status} {o.error}"
        for o in report.outcomes
        if o.status != "rejected"
        or not (
            o.error == "unsafe_file"
            or (o.error == "unknown_format" and _undetected_pickle(by_path[Path(o.path).name]))
        )
    ]
    assert wrong == []
    assert audit.events == []
    assert fired(corpus) == []
    assert torch_load_spy == []
    assert catalog_snapshot(home) == before


@pytest.mark.parametrize("kind", ["memoized-stack-global", "string-opener"])
@pytest.mark.parametrize("protocol", [0, 1])
def test_headerless_pickle_opening_with_a_string_is_named_unsafe(
    kind: str, protocol: int, tmp_path: Path
) -> None:
    """Protocol 0/1 streams opening with V or S: read as pickles (whole-file parse)."""
    from conceptlib.registry.formats import read_embedding_bytes

    data = extra_pickle(kind, tmp_path / "s", protocol)
    assert data[:1] in (b"V", b"S")
    with pytest.raises(UnsafeFile, match=r"os\.system"):
        read_embedding_bytes(data, path="evil.pt")


def test_state_dict_files_are_not_called_hostile(tmp_path: Path) -> None:
    """Module.state_dict() carries _metadata set by BUILD: data, not a threat."""
    from conceptlib.errors import ConceptlibError
    from conceptlib.registry.formats import read_embedding_bytes

    emb = torch.nn.Embedding(2, 768)
    torch.nn.init.normal_(emb.weight, std=0.02)
    seq = torch.nn.Sequential(torch.nn.Embedding(2, 768))
    files = {
        "embedding.pt": torch_bytes(emb.state_dict()),
        "embedding-legacy.pt": torch_bytes(emb.state_dict(), legacy=True),
        "embedding-protocol-3.pt": torch_bytes(emb.state_dict(), protocol=3),
        "sequential.pt": torch_bytes(seq.state_dict()),
        "nested.pt": torch_bytes({"state_dict": emb.state_dict(), "step": 10}),
        "linear.pt": torch_bytes(torch.nn.Linear(768, 4).state_dict()),
        "layernorm.pt": torch_bytes(torch.nn.LayerNorm(768).state_dict(), legacy=True),
    }
    outcomes = {}
    for name, data in files.items():
        try:
            parsed = read_embedding_bytes(data, path=name)
            outcomes[name] = parsed.format
        except ConceptlibError as exc:
            outcomes[name] = type(exc).__name__
    report_figures(
        "pickle-corpus-state-dicts",
        files=len(files),
        outcomes=outcomes,
        called_unsafe=sum(v == "UnsafeFile" for v in outcomes.values()),
    )
    assert "UnsafeFile" not in outcomes.values()
    for name in ("embedding.pt", "embedding-legacy.pt", "embedding-protocol-3.pt"):
        assert outcomes[name] == "diffusers"
    assert outcomes["sequential.pt"] == "diffusers"


def test_the_audit_hook_catches_what_it_is_armed_for(tmp_path: Path) -> None:
    """The net itself: an armed hook records and blocks a real ``os.system``."""
    sentinel = tmp_path / "s"
    import pickle

    with armed_audit() as audit, pytest.raises(RuntimeError, match="blocked"):
        pickle.loads(malicious_pickle("os.system", sentinel, 2))
    assert not sentinel.exists()
    assert any(e.startswith("pickle.find_class") for e in audit.events)
    with armed_audit() as audit, pytest.raises(RuntimeError, match="blocked"):
        os.system(f"touch {shlex.quote(str(sentinel))}")
    assert audit.events and audit.events[0].startswith("os.system")
    assert not sentinel.exists()
    with armed_audit() as audit, pytest.raises(RuntimeError):
        eval("1 + 1")
    assert (
        audit.events and audit.events[0].startswith("compile") or audit.events[0].startswith("exec")
    )

"""A small file never costs much memory: every bomb is refused under a 1 GiB limit.

Each file below is a few bytes to 2 MB that would make a careless reader allocate
gigabytes: a stride-0 tensor view over a few stored floats, a pickle sharing one list
a million times, a zip member that inflates far past the size its header declares,
a PNG repeating a compressed text chunk, a PNG whose header claims 10^10 pixels, a
safetensors shape numpy cannot represent.

A helper process imports torch and conceptlib, reads one good file of each kind (so
every lazy import is done), then forks once per bomb; the child sets its address
space limit (``RLIMIT_AS``) to what it has mapped plus 1 GiB, reads the bomb with
``read_embedding_bytes`` and reports the outcome and how much its resident memory
grew (``ru_maxrss`` after, minus the resident size at the fork: Linux resets a
child's high-water mark to its size at the fork). A bomb must end in its typed
refusal (a ``MemoryError`` or any other exception is a failure) and grow the
process by at most :data:`GROWTH_BOUND`.

Figures: ``CONCEPTLIB_RELIABILITY_REPORT=/path/figures.jsonl`` appends them there.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import import_is_refused
from fixtures_formats import (
    Call,
    G,
    PersId,
    _Asm,
    in_legacy,
    in_torch_zip,
    make_a1111_pt,
    make_emb_params_safetensors,
    make_png_embedding,
    make_strip_image,
    rand_vectors,
    raw_safetensors,
    strip_payload,
    strip_png_text,
    tensor_pickle,
)
from reliability_support import report_figures

from conceptlib.registry.formats import png_embed
from conceptlib.registry.formats.pickle_walk import MAX_TENSOR_ELEMENTS

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS and fork: Linux only"),
]

GIB = 1024**3
#: Most a bomb may grow the reading process (resident memory), in MiB.
GROWTH_BOUND_MIB = 128


# --------------------------------------------------------------------------- the bombs


def _view(
    storage: str, numel: int, shape: tuple[int, ...], stride: tuple[int, ...], key: str = "0"
) -> Call:
    return Call(
        G("torch._utils", "_rebuild_tensor_v2"),
        PersId(("storage", G("torch", storage), key, "cpu", numel)),
        0,
        shape,
        stride,
        False,
        Call(G("collections", "OrderedDict")),
    )


def _dict_pickle(items: list[tuple[str, object]], protocol: int = 2) -> bytes:
    """``{key: node, ...}`` assembled opcode by opcode (``fixtures_formats`` nodes)."""
    asm = _Asm(protocol)
    asm.out += b"}("
    for key, node in items:
        asm.emit(key)
        asm.emit(node)
    asm.out += b"u."
    return bytes(asm.out)


def stride0_zip() -> bytes:
    """The issue's file: a [2^21, 768] stride-(0, 1) view of 768 floats (6 GB as float32)."""
    pkl = tensor_pickle(numel=768, shape=(2**21, 768), stride=(0, 1))
    return in_torch_zip(pkl, records={"0": bytes(768 * 4)})


def stride0_half() -> bytes:
    """fp16, 2730 x 768 from one row: under the old 4 MiB byte cap, over the element cap."""
    pkl = tensor_pickle(numel=768, shape=(2730, 768), stride=(0, 1), storage="HalfStorage")
    return in_torch_zip(pkl, records={"0": bytes(768 * 2)})


def stride0_parameter() -> bytes:
    """The view inside ``_rebuild_parameter``, in A1111's string_to_param layout."""
    param = Call(
        G("torch._utils", "_rebuild_parameter"),
        _view("FloatStorage", 768, (2**21, 768), (0, 1)),
        True,
        Call(G("collections", "OrderedDict")),
    )
    asm = _Asm(2)
    asm.out += b"}("
    asm.emit("string_to_param")
    asm.out += b"}"
    asm.emit("*")
    asm.emit(param)
    asm.out += b"s"
    asm.emit("name")
    asm.emit("bomb")
    asm.out += b"u."
    return in_torch_zip(bytes(asm.out), records={"0": bytes(768 * 4)})


def stride0_legacy() -> bytes:
    pkl = tensor_pickle(numel=768, shape=(2**21, 768), stride=(0, 1), legacy=True)
    return in_legacy(pkl, ["0"], struct.pack("<Q", 768) + bytes(768 * 4))


def many_views() -> bytes:
    """200 tensors, each a legal-sized stride-0 view [75, 768] of one stored row."""
    items = [(f"t{i}", _view("FloatStorage", 768, (75, 768), (0, 1))) for i in range(200)]
    return in_torch_zip(_dict_pickle(items), records={"0": bytes(768 * 4)})


def shared_lists() -> bytes:
    """A list shared 1000 x 1000 times (memo references): 10^9 entries written out."""
    inner = list(range(1000))
    middle = [inner] * 1000
    return in_torch_zip(pickle.dumps({"x": [middle] * 1000}, protocol=2))


def _zeros_deflate(total: int, *, zlib_header: bool) -> bytes:
    """A deflate stream of ``total`` zero bytes, made of one 16 MiB block repeated."""
    block = 16 * 1024 * 1024
    assert total % block == 0
    co = zlib.compressobj(9, zlib.DEFLATED, 15 if zlib_header else -15)
    first = co.compress(bytes(block)) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(bytes(block)) + co.flush(zlib.Z_FULL_FLUSH)
    tail = co.flush()
    if zlib_header:  # Adler-32 of n zero bytes: a stays 1, b counts n (mod 65521)
        tail = tail[:-4] + struct.pack(">I", (total % 65521) << 16 | 1)
    return first + again * (total // block - 1) + tail


def zip_member_inflates_past_its_size() -> bytes:
    """A 1.6 MB torch zip whose data.pkl header says 100 bytes; the stream inflates 1.5 GB."""
    raw = _zeros_deflate(1536 * 1024 * 1024, zlib_header=False)
    name = b"archive/data.pkl"
    claim, crc = 100, 0
    local = (
        struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(raw), claim, len(name), 0)
        + name
        + raw
    )
    fields = (0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(raw), claim, len(name), 0, 0, 0, 0, 0, 0)
    central = struct.pack("<IHHHHHHIIIHHHHHII", *fields) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local), 0)
    return local + central + end


def repeated_ztxt() -> bytes:
    """The issue's PNG: 100 zTXt sd-ti-embedding chunks, each inflating to ~16 MiB."""
    text = b"A" * (png_embed.MAX_TEXT_BYTES - 1024)
    body = png_embed.TEXT_KEY.encode() + b"\x00\x00" + zlib.compress(text, 9)
    chunk = png_embed._chunk(b"zTXt", body)
    return png_embed.insert_chunks(png_embed.plain_png(8, 8), [chunk] * 100)


def ztxt_bomb() -> bytes:
    """One zTXt chunk of 1.5 MB inflating to 1.5 GB."""
    stream = _zeros_deflate(1536 * 1024 * 1024, zlib_header=True)
    body = png_embed.TEXT_KEY.encode() + b"\x00\x00" + stream
    return png_embed.insert_chunks(png_embed.plain_png(8, 8), [png_embed._chunk(b"zTXt", body)])


def strip_bomb() -> bytes:
    """Side strips (no text chunk) whose zlib stream inflates to 256 MiB."""
    return make_strip_image(b" " * (256 * 1024 * 1024))


def png_claiming_pixels() -> bytes:
    """An 8 x 8 PNG whose IHDR says 100,000 x 100,000 (30 GB of RGB)."""
    head = png_embed.plain_png(4, 4)
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return head[:8] + png_embed._chunk(b"IHDR", ihdr) + head[33:]


def safetensors_shape(shape: list[int]) -> Callable[[], bytes]:
    def build() -> bytes:
        return raw_safetensors({"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})

    return build


def safetensors_header_claim() -> bytes:
    return struct.pack("<Q", 2**40) + b'{"a": 1}'


#: The message of a tensor view over the element cap.
CAPPED = f"expected at most {MAX_TENSOR_ELEMENTS}"
#: name -> (builder, the refusal it must end in, a fragment of its message)
BOMBS: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "pt-stride0-view": (stride0_zip, "FileTooLarge", CAPPED),
    "pt-stride0-fp16-view": (stride0_half, "FileTooLarge", CAPPED),
    "pt-stride0-parameter": (stride0_parameter, "FileTooLarge", CAPPED),
    "pt-stride0-legacy": (stride0_legacy, "FileTooLarge", CAPPED),
    "pt-200-views-of-one-row": (many_views, "FileTooLarge", "bytes in all"),
    "pt-list-shared-a-million-times": (shared_lists, "UnsupportedContent", "without tensors"),
    "pt-zip-member-inflating-past-its-size": (
        zip_member_inflates_past_its_size,
        "CorruptFile",
        "is damaged",
    ),
    "png-100-repeated-ztxt-chunks": (repeated_ztxt, "FileTooLarge", "bytes in all"),
    "png-ztxt-inflating-1.5-gb": (ztxt_bomb, "FileTooLarge", "decompresses to more than"),
    "png-strips-inflating-256-mib": (strip_bomb, "FileTooLarge", "decompresses to more than"),
    "png-claiming-10^10-pixels": (png_claiming_pixels, "FileTooLarge", "100000 x 100000"),
    "safetensors-shape-0-x-2^63": (
        safetensors_shape([0, 2**63 - 1]),
        "CorruptFile",
        "non-zero product",
    ),
    "safetensors-shape-0-x-2^64": (safetensors_shape([0, 2**64]), "CorruptFile", "non-zero"),
    "safetensors-shape-2^40-x-2^40-x-0": (
        safetensors_shape([2**40, 2**40, 0]),
        "CorruptFile",
        "non-zero product",
    ),
    "safetensors-header-claiming-1-tib": (
        safetensors_header_claim,
        "FileTooLarge",
        "claims 1099511627776 bytes",
    ),
}


def _warm_files() -> dict[str, bytes]:
    vec = rand_vectors(2, 768, seed=1)
    return {
        "warm.pt": make_a1111_pt(vec),
        "warm-legacy.pt": make_a1111_pt(vec, legacy=True),
        "warm.safetensors": make_emb_params_safetensors(vec),
        "warm.png": make_png_embedding(vec),
        "warm-strips.png": strip_png_text(make_strip_image(strip_payload(vec))),
    }


# --------------------------------------------------------------------------- the reader process

_READER = textwrap.dedent(
    """
    import json, os, resource, sys, time
    import torch
    torch.set_num_threads(1)
    from conceptlib.errors import ConceptlibError
    from conceptlib.registry.formats import read_embedding_bytes

    def status():
        out = {}
        with open("/proc/self/status") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmSize", "VmRSS"):
                    out[key] = int(value.split()[0]) * 1024
        return out

    listing = json.load(open(sys.argv[1]))
    for path in listing["warm"]:
        read_embedding_bytes(open(path, "rb").read(), path=path)
    # fork only a single-threaded process: a lock another thread held at the fork
    # would stay locked in the child forever
    results = {"baseline": status(), "threads": len(os.listdir("/proc/self/task"))}
    if results["threads"] != 1:
        json.dump(results, open(listing["out"], "w"))
        sys.exit(0)
    for name, path in listing["bombs"].items():
        out_path = path + ".json"
        pid = os.fork()
        if pid == 0:
            try:
                before = status()
                limit = before["VmSize"] + listing["limit"]
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
                data = open(path, "rb").read()
                started = time.perf_counter()
                try:
                    read_embedding_bytes(data, path=name)
                    outcome, code, message = "accepted", 0, ""
                except ConceptlibError as exc:
                    outcome = type(exc).__name__
                    code = getattr(exc, "exit_code", None)
                    message = exc.message
                except BaseException as exc:
                    outcome, code, message = "foreign:" + type(exc).__name__, None, str(exc)[:200]
                seconds = time.perf_counter() - started
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                record = {
                    "outcome": outcome, "exit_code": code, "message": message,
                    "file_bytes": len(data), "rss_before": before["VmRSS"],
                    "growth": peak - before["VmRSS"], "seconds": seconds,
                    "limit": limit,
                }
                with open(out_path, "w") as fh:
                    json.dump(record, fh)
            finally:
                os._exit(0)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done, _status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        try:
            results[name] = json.load(open(out_path))
        except (OSError, ValueError):
            results[name] = {"outcome": "no result (the child died or hung)"}
    json.dump(results, open(listing["out"], "w"))
    """
)


@pytest.fixture(scope="module")
def bomb_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("bombs")
    bombs = {}
    for name, (build, _expected, _fragment) in BOMBS.items():
        path = root / f"{name}.bin"
        path.write_bytes(build())
        bombs[name] = str(path)
    warm = []
    for name, data in _warm_files().items():
        (root / name).write_bytes(data)
        warm.append(str(root / name))
    listing = root / "listing.json"
    out = root / "results.json"
    listing.write_text(
        json.dumps({"bombs": bombs, "warm": warm, "limit": GIB, "out": str(out)}),
        encoding="utf-8",
    )
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _READER, str(listing)],
        capture_output=True,
        text=True,
        timeout=280,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **one_thread},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["threads"] == 1, "the reader process must be single-threaded to fork"
    return results


def test_bombs_are_small_files() -> None:
    """What makes them bombs: a few bytes to 2 MB each."""
    sizes = {name: len(build()) for name, (build, _e, _f) in BOMBS.items()}
    assert max(sizes.values()) < 2 * 1024 * 1024, sizes


def test_every_bomb_is_refused_under_a_1_gib_limit(bomb_results: dict[str, dict]) -> None:
    wrong = []
    rows = {}
    for name, (_build, expected, fragment) in BOMBS.items():
        got = bomb_results[name]
        growth_mib = got.get("growth", 0) / 2**20
        rows[name] = {
            "outcome": got["outcome"],
            "file_kib": round(got.get("file_bytes", 0) / 1024, 1),
            "growth_mib": round(growth_mib, 1),
            "ms": round(got.get("seconds", 0) * 1000, 1),
        }
        if got["outcome"] != expected:
            wrong.append(
                f"{name}: {got['outcome']} {got.get('message', '')!r}, expected {expected}"
            )
        elif growth_mib > GROWTH_BOUND_MIB:
            wrong.append(f"{name}: grew {growth_mib:.0f} MiB")
        elif "memory" in got["message"].lower():
            wrong.append(f"{name}: refused only because memory ran out: {got['message']!r}")
        elif fragment not in got["message"] or not got["message"].startswith(f"{name}: "):
            wrong.append(f"{name}: message {got['message']!r}")
        elif got["exit_code"] != 3 or "\n" in got["message"]:
            wrong.append(f"{name}: exit {got['exit_code']}, message {got['message']!r}")
    baseline = bomb_results["baseline"]
    report_figures(
        "memory-bombs",
        bombs=len(BOMBS),
        limit_gib=1,
        baseline_vm_mib=round(baseline["VmSize"] / 2**20),
        baseline_rss_mib=round(baseline["VmRSS"] / 2**20),
        per_file=rows,
    )
    assert wrong == []


def test_the_limit_bites(tmp_path: Path) -> None:
    """Control: under the same limit, allocating 1.5 GB in the child is a MemoryError."""
    script = textwrap.dedent(
        """
        import resource
        def vm():
            for line in open("/proc/self/status"):
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        limit = vm() + 2**30
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            bytearray(1536 * 2**20)
        except MemoryError:
            print("MemoryError")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.stdout.strip() == "MemoryError"


# --------------------------------------------------------------------------- through the CLI


def _suffix(name: str) -> str:
    return {"pt": ".pt", "png": ".png", "safetensors": ".safetensors"}[name.split("-")[0]]


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_each_bomb_is_one_error_line_and_changes_nothing(
    name: str, tmp_path: Path, lib, catalog_snapshot
) -> None:

    from conceptlib.registry.samples import sample_embedding

    lib.add_embedding(sample_embedding("sd1", 1, 9), name="existing")
    home = lib.settings.home
    lib.close()
    build, _expected, fragment = BOMBS[name]
    path = tmp_path / f"file{_suffix(name)}"
    path.write_bytes(build())
    output = import_is_refused(path, home, code=3, fragment=fragment, snapshot=catalog_snapshot)
    assert "memory" not in output.lower()


def test_a_folder_of_bombs_still_imports_its_good_file(tmp_path: Path, lib) -> None:
    """One bad file is that file's rejection: the folder import goes on."""
    from click.testing import CliRunner

    from conceptlib.cli.main import cli

    folder = tmp_path / "downloads"
    folder.mkdir()
    for i, (name, (build, _expected, _fragment)) in enumerate(sorted(BOMBS.items())):
        (folder / f"bomb-{i:02d}{_suffix(name)}").write_bytes(build())
    (folder / "good-style.pt").write_bytes(make_a1111_pt(rand_vectors(2, 768, seed=5)))
    lib.close()
    res = CliRunner().invoke(cli, ["import", str(folder), "--json"])
    report = json.loads(res.stdout)
    by = {Path(o["path"]).name: o for o in report["files"]}
    assert by["good-style.pt"]["status"] == "imported"
    bombs = [o for name, o in by.items() if name.startswith("bomb-")]
    assert len(bombs) >= len(BOMBS) - 1  # a PNG claiming 10^10 pixels is not even tried
    assert all(o["status"] == "rejected" for o in bombs), bombs
    assert res.exit_code == 3

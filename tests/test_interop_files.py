"""What the other tools read back (issue 12): A1111 accepts every ``.pt`` we write, the
hashes in our infotext are the hashes of the files users load, exports of an imported
file give that file back, and InvokeAI installs the folders and repos we write.

Each tool's acceptance rule is written here from its public source, as a rule (the
tool and version are named in each helper's docstring), and applied to our outputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickletools
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures_formats import make_a1111_pt, make_diffusers_safetensors, make_emb_params_safetensors
from hub_fixtures import hub_fixture, hub_server_fixture  # noqa: F401 - fixtures

from conceptlib.cli.main import cli
from conceptlib.registry.formats import WRITE_FORMATS, read_embedding_bytes, write_embedding
from conceptlib.registry.samples import sample_embedding

pytestmark = pytest.mark.timeout(120)

WIDTHS = {"sd1": 768, "sd2": 1024}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def a1111_short_hash(path: Path) -> str:
    """A1111's ``TI hashes`` value for an embedding file (stable-diffusion-webui 1.x,
    ``modules/hashes.py`` via ``textual_inversion.create_embedding_from_data``): the
    SHA-256 of the whole file's bytes, first 12 hex characters."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


# --------------------------------------------------------------------------- A1111's rule

#: Record names A1111 1.x lets through before unpickling a ``.pt`` (stable-diffusion-webui
#: ``modules/safe.py``, ``check_zip_filenames``): under one folder, only ``data.pkl``,
#: ``version`` and ``data/<digits>``.
A1111_RECORD = re.compile(r"^([^/]+)/(data\.pkl|version|data/[0-9]+)$")
#: The globals its ``RestrictedUnpickler`` resolves (same file, ``find_class``), as far
#: as a plain float tensor file needs them.
A1111_GLOBALS = {
    "collections OrderedDict",
    "torch._utils _rebuild_tensor_v2",
    "torch._utils _rebuild_parameter",
    "torch FloatStorage",
    "torch HalfStorage",
    "torch float32",
}


def a1111_refusal(data: bytes) -> str | None:
    """Why A1111 1.x would refuse this ``.pt`` (None: it loads it as an embedding).

    stable-diffusion-webui ``modules/safe.py`` (``check_pt``): a zip must hold only the
    records of :data:`A1111_RECORD` under one folder and exactly one ``data.pkl``, whose
    pickle may name only the globals of :data:`A1111_GLOBALS`; a non-zip file is a legacy
    torch stream. ``textual_inversion.create_embedding_from_data`` then needs
    ``string_to_param`` with one term.
    """
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
            bad = [n for n in names if not A1111_RECORD.match(n)]
            if bad:
                return f"bad file inside: {bad[0]}"
            pickles = [n for n in names if n.endswith("/data.pkl")]
            if len(pickles) != 1 or len({n.split("/")[0] for n in names}) != 1:
                return "not one folder with one data.pkl"
            stream = zf.read(pickles[0])
        for op, arg, _pos in pickletools.genops(stream):
            if op.name == "STACK_GLOBAL":
                return "a protocol-4 global this check does not follow"
            if op.name == "GLOBAL" and arg not in A1111_GLOBALS:
                return f"global {arg!r} is forbidden"
    import torch

    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    params = obj.get("string_to_param") if isinstance(obj, dict) else None
    if not isinstance(params, dict) or len(params) != 1:
        return "no string_to_param with one term"
    return None


def pt_vectors(data: bytes) -> np.ndarray:
    import torch

    obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return next(iter(obj["string_to_param"].values())).detach().numpy()


def old_torch_zip(data: bytes) -> bytes:
    """``data`` (a torch zip) with only the records torch 1.x wrote: how an A1111
    training output from those years looks."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if A1111_RECORD.match(info.filename):
                dst.writestr(info.filename, src.read(info))
    return out.getvalue()


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, *args):
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_every_pt_we_write_passes_a1111s_zip_check(runner, lib, tmp_path):
    for i, family in enumerate(("sd1", "sd2")):
        lib.add_embedding(sample_embedding(family, 3, i), name=f"style-{family}")
    lib.close()
    written: list[tuple[str, Path]] = []
    for family in WIDTHS:
        name = f"style-{family}"
        res = invoke(runner, "export", name, "--format", "a1111-pt", "-o", tmp_path / "one")
        assert res.exit_code == 0, res.output
        written.append((name, tmp_path / "one" / f"{name}.pt"))
        res = invoke(
            runner, "export", "--for-prompt", f"<{name}>", "--format", "a1111", "--pt",
            "-o", tmp_path / "prompt",
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        written.append((name, tmp_path / "prompt" / f"{name}.pt"))
    from conceptlib.registry.library import Library

    with Library.open() as again:
        for name, path in written:
            data = path.read_bytes()
            assert a1111_refusal(data) is None, (path, a1111_refusal(data))
            info = again.get(name)
            # the same vectors, bit for bit, through torch and through our own reader
            want = again.load(info).vectors["clip_l" if info.family == "sd1" else "clip_h"]
            assert pt_vectors(data).tobytes() == want.tobytes()
            assert read_embedding_bytes(data).embedding.tensor_sha256 == info.tensor_sha256


def test_the_a1111_rule_refuses_what_torch_2_writes_plainly():
    """The rule above bites: ``torch.save`` of the same payload is refused on a torch
    that adds ``.format_version`` / ``.storage_alignment`` (2.x), as A1111 refuses it."""
    vectors = sample_embedding("sd1", 2, 0).vectors["clip_l"]
    plain = make_a1111_pt(vectors, parameter=False)
    names = zipfile.ZipFile(io.BytesIO(plain)).namelist()
    if not any(n.endswith((".format_version", ".storage_alignment")) for n in names):
        pytest.skip("this torch writes only the records A1111 accepts")
    assert a1111_refusal(plain).startswith("bad file inside")
    assert a1111_refusal(old_torch_zip(plain)) is None
    ours = write_embedding(sample_embedding("sd1", 2, 0), "a1111-pt", name="x", token="x")
    assert a1111_refusal(ours["x.pt"]) is None


_WRITE_ALL = textwrap.dedent(
    """
    import hashlib, json
    from conceptlib.registry.formats import WRITE_FORMATS, write_embedding
    from conceptlib.registry.samples import sample_embedding
    from conceptlib.errors import UsageError
    out = {}
    for family in ("sd1", "sd2", "sdxl"):
        emb = sample_embedding(family, 3, 7)
        for fmt in WRITE_FORMATS:
            try:
                files = write_embedding(emb, fmt, name="Cat-Toy", token="<Cat-Toy>")
            except UsageError:
                continue
            for rel, data in files.items():
                out[f"{family}/{fmt}/{rel}"] = hashlib.sha256(data).hexdigest()
    print(json.dumps(out, sort_keys=True))
    """
)


def test_every_writer_gives_the_same_bytes_on_every_run():
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", _WRITE_ALL], capture_output=True, text=True, check=True,
                timeout=120,
            ).stdout
        )
        for _ in range(2)
    ]  # fmt: skip
    assert runs[0] == runs[1]
    assert {k.split("/")[1] for k in runs[0]} == set(WRITE_FORMATS)
    for family in ("sd1", "sdxl"):
        emb = sample_embedding(family, 3, 7)
        for fmt in ("a1111-pt", "invokeai"):
            if fmt == "a1111-pt" and family == "sdxl":
                continue
            files = write_embedding(emb, fmt, name="Cat-Toy", token="<Cat-Toy>")
            for rel, data in files.items():
                assert sha(data) == runs[0][f"{family}/{fmt}/{rel}"]
                with zipfile.ZipFile(io.BytesIO(data)) as zf:  # no clock inside
                    assert len({i.date_time for i in zf.infolist()}) == 1


# --------------------------------------------------------------------------- originals


def civitai_files(folder: Path) -> dict[str, bytes]:
    """Files as people download them: kohya ``emb_params`` in float16 with modelspec
    metadata, an A1111 ``.pt`` from torch 1.x days, one from torch 2.x (which A1111
    refuses), a diffusers ``{token: [n, d]}``."""
    v = sample_embedding("sd1", 4, 11).vectors["clip_l"]
    files = {
        "EasyNeg.safetensors": make_emb_params_safetensors(
            v.astype(np.float16),
            metadata={"modelspec.architecture": "stable-diffusion-v1/textual-inversion"},
        ),
        "oldpt.pt": old_torch_zip(make_a1111_pt(sample_embedding("sd1", 2, 12).vectors["clip_l"])),
        "newpt.pt": make_a1111_pt(sample_embedding("sd1", 2, 13).vectors["clip_l"]),
        "shiny.safetensors": make_diffusers_safetensors(
            "<shiny>", sample_embedding("sd2", 2, 14).vectors["clip_h"]
        ),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    return files


def test_export_in_the_imported_layout_writes_the_original_file(runner, lib, tmp_path):
    files = civitai_files(tmp_path / "downloads")
    report = lib.import_paths([tmp_path / "downloads"])
    assert {o.status for o in report.outcomes} == {"imported"}
    lib.close()
    out = tmp_path / "out"

    def export(*args):
        res = invoke(runner, "export", *args, "-o", out, "--json")
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout), res.stderr

    data, err = export("EasyNeg", "--format", "safetensors")
    assert (out / "EasyNeg.safetensors").read_bytes() == files["EasyNeg.safetensors"]
    assert data["original"] == [str(out / "EasyNeg.safetensors")]
    assert a1111_short_hash(out / "EasyNeg.safetensors") == sha(files["EasyNeg.safetensors"])[:12]
    # ... and as the word A1111 reads, for a prompt (the a1111 UI layout)
    data, _ = export("--for-prompt", "<EasyNeg>", "--format", "a1111")
    assert data["original"] == [str(out / "EasyNeg.safetensors")]
    # the .pt A1111 reads comes back as it was; the torch 2.x one is written fresh
    data, _ = export("oldpt", "--format", "a1111-pt")
    assert (out / "oldpt.pt").read_bytes() == files["oldpt.pt"] and data["original"]
    data, _ = export("newpt", "--format", "a1111-pt")
    assert data["original"] == [] and (out / "newpt.pt").read_bytes() != files["newpt.pt"]
    assert (
        a1111_refusal(files["newpt.pt"]) and a1111_refusal((out / "newpt.pt").read_bytes()) is None
    )
    # the diffusers file keyed by its token
    data, _ = export("shiny", "--format", "diffusers")
    assert (out / "shiny.safetensors").read_bytes() == files["shiny.safetensors"]
    # another layout is another file: written fresh
    data, _ = export("EasyNeg", "--format", "diffusers", "--overwrite")
    assert data["original"] == []
    # without --json the paths stay alone on stdout; stderr says which is the original
    res = invoke(runner, "export", "shiny", "--format", "diffusers", "-o", tmp_path / "plain")
    assert res.stdout.splitlines() == [str(tmp_path / "plain" / "shiny.safetensors")]
    assert "the original file" in res.stderr
    # once the token changes, the file's key no longer matches: fresh bytes, new key
    assert invoke(runner, "edit", "shiny", "--token", "<glossy>").exit_code == 0
    data, _ = export("shiny", "--format", "diffusers", "--overwrite")
    assert data["original"] == []
    parsed = read_embedding_bytes((out / "shiny.safetensors").read_bytes())
    assert parsed.token == "<glossy>"


def test_originals_are_kept_counted_by_gc_and_removed_with_their_entry(lib, tmp_path):
    files = civitai_files(tmp_path / "downloads")
    lib.import_paths([tmp_path / "downloads" / "EasyNeg.safetensors"])
    info = lib.get("EasyNeg")
    assert info.file_sha256 == sha(files["EasyNeg.safetensors"]) != info.tensor_sha256
    assert lib.store.path(info.file_sha256).read_bytes() == files["EasyNeg.safetensors"]
    assert lib.gc(grace_s=0) == []
    report = lib.verify()
    assert report.ok and report.orphan_blobs == [] and report.checked_blobs == 2
    if lib.shares_blobs:  # the shared catalog holds it too: a machine without it gets it
        lib.store.remove(info.file_sha256)
        paths = lib.export("EasyNeg", "safetensors", tmp_path / "shared")
        assert paths.original and paths[0].read_bytes() == files["EasyNeg.safetensors"]
    lib.remove("EasyNeg")
    assert not lib.store.has(info.file_sha256) and not lib.store.has(info.tensor_sha256)


def test_a_damaged_original_is_reported_and_never_exported(lib, tmp_path):
    if lib.shares_blobs:
        pytest.skip("the local store is a cache of the shared catalog there")
    civitai_files(tmp_path / "downloads")
    lib.import_paths([tmp_path / "downloads" / "EasyNeg.safetensors"])
    info = lib.get("EasyNeg")
    blob = lib.store.path(info.file_sha256)
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-4] + b"\0\0\0\0")
    report = lib.verify()
    assert not report.ok
    assert any("original file blob" in p and "EasyNeg" in p for p in report.problems)
    paths = lib.export("EasyNeg", "safetensors", tmp_path / "out")
    assert paths.original == []
    assert read_embedding_bytes(paths[0].read_bytes()).embedding.tensor_sha256 == info.tensor_sha256


def test_misused_layout_options_are_usage_errors_that_change_nothing(
    runner, lib, tmp_path, catalog_snapshot
):
    lib.add_embedding(sample_embedding("sd1", 2, 1), name="cat-toy", token="<cat-toy>")
    home = lib.settings.home
    lib.close()
    before = catalog_snapshot(home)
    out = tmp_path / "out"
    cases = [
        (["export", "cat-toy", "--for", "invokeai", "--format", "sdxl"], "--for invokeai"),
        (["export", "--for-prompt", "<cat-toy>", "--for", "invokeai"], "--for invokeai"),
        (["export", "cat-toy", "--for", "comfyui"], "'comfyui' is not 'invokeai'"),
        (["push", "cat-toy", "--for", "a1111"], "'a1111' is not 'invokeai'"),
    ]
    for args, message in cases:
        res = runner.invoke(cli, [*args, "-o", str(out)] if args[0] == "export" else args)
        assert res.exit_code == 2, (args, res.output)
        assert message in res.output, (args, res.output)
    assert not out.exists()
    assert catalog_snapshot(home) == before


# --------------------------------------------------------------------------- InvokeAI


def invokeai_install(folder: Path) -> tuple[str, dict[str, np.ndarray]]:
    """What InvokeAI makes of a folder: ``(base, vectors)``, or AssertionError.

    InvokeAI 4.x-6.x (``invokeai/backend/model_manager``): the folder probe opens
    ``learned_embeds.bin`` (``TextualInversionFolderProbe``; 6.x's folder config probes
    the weight files, the same file here); the state dict is a torch load; the token
    width is ``string_to_param``'s first tensor's ``shape[-1]``, else
    ``emb_params.shape[-1]``, else ``clip_g.shape[-1]``, else the first tensor's
    ``shape[0]`` (``_get_base_or_raise``); 768 is SD 1, 1024 SD 2, 1280 SDXL, anything
    else is refused. Its loader (``TextualInversionModelRaw.from_checkpoint``) takes
    ``emb_params`` or ``clip_g`` (+ ``clip_l`` as the second encoder's).
    """
    import torch

    path = folder / "learned_embeds.bin"
    assert path.is_file(), f"{folder} does not contain expected 'learned_embeds.bin' file"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    if "string_to_token" in state:
        width = next(iter(state["string_to_param"].values())).shape[-1]
    elif "emb_params" in state:
        width = state["emb_params"].shape[-1]
    elif "clip_g" in state:
        width = state["clip_g"].shape[-1]
    else:
        width = next(iter(state.values())).shape[0]
    base = {768: "sd1", 1024: "sd2", 1280: "sdxl"}.get(int(width))
    assert base is not None, f"unrecognized token dimension {width}"
    if "emb_params" in state:
        return base, {"embedding": state["emb_params"].numpy()}
    if "clip_g" in state and "clip_l" in state:
        return base, {"embedding": state["clip_g"].numpy(), "embedding_2": state["clip_l"].numpy()}
    return base, {"embedding": next(iter(state.values())).numpy()}


def invokeai_hf_selection(paths: list[str]) -> list[str]:
    """The files InvokeAI downloads from a Hub repo it installs by id (InvokeAI 4.x-6.x,
    ``model_manager/util/select_hf_files.py``, ``filter_files``, as far as an embedding
    repo goes): ``.json`` and ``.txt`` files, and names ending in ``learned_embeds.bin``;
    other ``.safetensors`` / ``.bin`` files only when named ``model*``."""
    keep = re.compile(r"(\.json|\.txt|learned_embeds\.bin|^model(\.[^.]+)?\.(safetensors|bin))$")
    return [p for p in paths if keep.search(p.rsplit("/", 1)[-1])]


def _expected(lib, name: str) -> dict[str, np.ndarray]:
    vec = lib.load(name).vectors
    if "clip_g" in vec:
        return {"embedding": vec["clip_g"], "embedding_2": vec["clip_l"]}
    return {"embedding": next(iter(vec.values()))}


def test_invokeai_installs_the_exported_folder(runner, lib, tmp_path):
    for i, family in enumerate(("sd1", "sd2", "sdxl")):
        lib.add_embedding(sample_embedding(family, 3, 20 + i), name=f"ti-{family}")
    lib.close()
    from conceptlib.registry.library import Library

    with Library.open() as again:
        for family in ("sd1", "sd2", "sdxl"):
            res = invoke(runner, "export", f"ti-{family}", "--for", "invokeai", "-o", tmp_path)
            assert res.exit_code == 0, res.output
            assert res.stdout.strip() == str(tmp_path / f"ti-{family}" / "learned_embeds.bin")
            base, got = invokeai_install(tmp_path / f"ti-{family}")
            assert base == family
            want = _expected(again, f"ti-{family}")
            assert {k: v.tobytes() for k, v in got.items()} == {
                k: v.tobytes() for k, v in want.items()
            }
        # why a layout of its own: the diffusers file of 3 vectors reads as width 3
        diffusers = tmp_path / "plain"
        diffusers.mkdir()
        (diffusers / "learned_embeds.bin").write_bytes(
            write_embedding(again.load("ti-sd1"), "invokeai", name="x", token="x")[
                "learned_embeds.bin"
            ]
        )
        assert invokeai_install(diffusers)[0] == "sd1"
        import torch

        torch.save(
            {"<ti-sd1>": torch.from_numpy(again.load("ti-sd1").vectors["clip_l"])},
            diffusers / "learned_embeds.bin",
        )
        with pytest.raises(AssertionError, match="unrecognized token dimension 3"):
            invokeai_install(diffusers)


def test_push_for_invokeai_makes_a_repo_invokeai_installs(hub, lib, tmp_path):
    from conceptlib.registry import hub as hubmod

    lib.add_embedding(sample_embedding("sdxl", 2, 30), name="neon-xl", token="<neon-xl>")
    lib.add_embedding(sample_embedding("sd1", 3, 31), name="cat-toy", token="<cat-toy>")
    lib.close()
    res = invoke(CliRunner(), "push", "cat-toy", "--repo", "alice/cat-toy", "--for", "invokeai")
    assert res.exit_code == 0, res.output
    files = hub.files("alice/cat-toy")
    picked = invokeai_hf_selection(sorted(files))
    assert "learned_embeds.bin" in picked and "learned_embeds.safetensors" not in picked
    folder = tmp_path / "invokeai-download"
    folder.mkdir()
    for rel in picked:
        (folder / rel).write_bytes(files[rel])
    from conceptlib.registry.library import Library

    with Library.open() as again:
        base, got = invokeai_install(folder)
        assert base == "sd1"
        assert got["embedding"].tobytes() == again.load("cat-toy").vectors["clip_l"].tobytes()
        assert "Install `alice/cat-toy` by its repo id" in files["README.md"].decode()
        # deterministic: pushing again makes no commit
        assert hubmod.push(again, "cat-toy", repo_id="alice/cat-toy", for_ui="invokeai").status == (
            "unchanged"
        )
        # a push without --for invokeai takes the file away again (it would go stale)
        result = hubmod.push(again, "cat-toy", repo_id="alice/cat-toy")
        assert result.deleted == ["learned_embeds.bin"]
        assert "learned_embeds.bin" not in hub.files("alice/cat-toy")
        # a library repo: every concept folder is installable (REPO:concepts/NAME)
        hubmod.push_library(again, "alice/lib", for_ui="invokeai")
        lib_files = hub.files("alice/lib")
        for name, family in (("cat-toy", "sd1"), ("neon-xl", "sdxl")):
            sub = tmp_path / "lib" / name
            sub.mkdir(parents=True)
            prefix = f"concepts/{name}/"
            for rel in invokeai_hf_selection([p for p in lib_files if p.startswith(prefix)]):
                (sub / rel[len(prefix) :]).write_bytes(lib_files[rel])
            assert invokeai_install(sub)[0] == family


# --------------------------------------------------------------------------- compose


def test_infotext_ti_hashes_are_the_hashes_of_the_files_a1111_loads(lib, tmp_path):
    """Recompute A1111's hash of each file ``export --for-prompt --format a1111`` writes,
    as A1111 does, and find it in the infotext: for an imported Civitai file (its own
    bytes, so also Civitai's hash) and for an entry that never had a file."""
    if lib.shares_blobs:
        pytest.skip("generation does not depend on the catalog backend, and is slow")
    from compose_support import fresh_base

    from conceptlib.compose.compose import compose, parse_infotext
    from conceptlib.compose.export import export_for_prompt

    files = civitai_files(tmp_path / "downloads")
    lib.import_paths([tmp_path / "downloads" / "EasyNeg.safetensors"])
    lib.add_embedding(sample_embedding("sd1", 2, 40), name="cat-toy", token="<cat-toy>")
    result = compose(
        "a photo of <cat-toy>", negative="<EasyNeg>", base=fresh_base("tiny-sd1"), library=lib,
        seed=3, out=tmp_path / "img.png", steps=1, guidance=5.0, width=32, height=32,
    )  # fmt: skip
    from PIL import Image

    params = parse_infotext(Image.open(result.images[0]).text["parameters"])["params"]
    shown = dict(x.split(": ") for x in params["TI hashes"].strip('"').split(", "))
    exported = export_for_prompt(
        lib, "<cat-toy>", "a1111", tmp_path / "webui", negative="<EasyNeg>"
    )
    loaded = {p.stem: a1111_short_hash(p) for p in exported}
    assert shown == loaded
    assert shown["EasyNeg"] == sha(files["EasyNeg.safetensors"])[:12]


def test_a_pulled_single_file_is_exported_as_the_file_on_the_hub(hub, lib, tmp_path):
    from conceptlib.registry import hub as hubmod

    data = make_emb_params_safetensors(
        sample_embedding("sd1", 3, 50).vectors["clip_l"].astype(np.float16),
        metadata={"modelspec.title": "EasyNegative"},
    )
    hub.commit("gsdf/EasyNegative", {"EasyNegative.safetensors": data}, replace=True)
    outcome = hubmod.pull(lib, "gsdf/EasyNegative")
    paths = lib.export(outcome.name, "safetensors", tmp_path)
    assert paths.original == paths and paths[0].read_bytes() == data
    # a conceptlib repo carries the pusher's file hash, not that file: written fresh
    hubmod.push(lib, outcome.name, repo_id="alice/easy")
    lib.remove(outcome.name)
    again = hubmod.pull(lib, "alice/easy")
    assert lib.get(again.name).file_sha256 == sha(data)
    assert lib.export(again.name, "safetensors", tmp_path / "fresh").original == []


def test_invokeai_export_folder_is_a_name_invokeai_can_trigger(lib, tmp_path):
    """InvokeAI names the model after its folder and finds triggers with
    ``<[a-zA-Z0-9., _-]+>`` (InvokeAI ``ti_utils.py``): a versioned handle made by
    ``pull`` (``cat-toy@v1``) exported as ``cat-toy@v1/`` could never be triggered; the
    folder takes the same mapped name ``compose --format invokeai`` prints."""
    import re

    from conceptlib.compose.compose import format_prompts
    from conceptlib.registry.samples import sample_embedding

    lib.add_embedding(sample_embedding("sd1", 2, 41), name="cat-toy@v1")
    written = lib.export("cat-toy@v1", "invokeai", tmp_path / "ui")
    (path,) = written
    assert path == tmp_path / "ui" / "cat-toy-v1" / "learned_embeds.bin"
    prompt = format_prompts(lib, "a <cat-toy@v1>", None, "invokeai").prompt
    (trigger,) = re.findall(r"<([a-zA-Z0-9., _-]+)>", prompt)
    assert trigger == path.parent.name


@pytest.mark.parametrize(
    "args",
    [
        ["export", "xl-one", "--format", "diffusers"],  # SDXL: a folder of two files
        ["export", "plain-one", "--for", "invokeai"],  # always a folder
        ["export", "--for-prompt", "a <plain-one>", "--format", "a1111"],
    ],
)
def test_export_onto_an_existing_file_where_a_folder_goes_is_a_usage_error(
    lib, tmp_path, args, _isolated_home, catalog_snapshot
):
    """``export -o EXISTING_FILE_WITHOUT_SUFFIX`` ended in a FileExistsError traceback."""
    from click.testing import CliRunner

    from conceptlib.cli.main import cli
    from conceptlib.registry.samples import sample_embedding

    lib.add_embedding(sample_embedding("sd1", 1, 51), name="plain-one")
    lib.add_embedding(sample_embedding("sdxl", 1, 52), name="xl-one")
    lib.close()
    target = tmp_path / "notes"
    target.write_text("mine")
    before = catalog_snapshot(_isolated_home)
    result = CliRunner().invoke(cli, [*args, "-o", str(target)])
    assert result.exit_code == 2, result.output
    assert f"error: {target} is a file, so" in result.output
    assert "Traceback" not in result.output
    assert target.read_text() == "mine"
    assert catalog_snapshot(_isolated_home) == before

"""`conceptlib ui-sync` (issue 17 item 4): a UI's embeddings folder written from the
catalog in that UI's layout with its sidecars, idempotent, removing only its own files,
never overwriting what it did not write, a dry run that changes nothing, one catalog
feeding several folders."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conceptlib.cli.main import cli
from conceptlib.compose.uisync import MANIFEST_NAME, ui_sync
from conceptlib.registry.formats.embedding import Embedding
from conceptlib.registry.formats.safetensors_io import parse_header, write_safetensors
from conceptlib.registry.library import Library
from conceptlib.schemas.records import Preview

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
CIVITAI = {
    "air": "urn:air:sd1:embedding:civitai:7808@9208",
    "model_id": 7808,
    "version_id": 9208,
    "model_name": "Cat Toy",
    "version_name": "v1",
    "model_type": "TextualInversion",
    "base_model": "SD 1.5",
    "trained_words": ["cat-toy"],
    "tags": ["toy"],
}


def _home() -> Path:
    return Path(os.environ["CONCEPTLIB_HOME"])


def _catalog(emb_factory) -> Library:
    lib = Library.open()
    lib.add_embedding(
        emb_factory("sd1", 2, 1),
        name="cat-toy",
        kind="object",
        source="file",
        tags=["toy"],
        description="a small cat toy",
        previews=[Preview("cat.png", PNG, role="preview")],
        extra={"civitai": CIVITAI},
    )
    lib.add_embedding(
        emb_factory("sdxl", 1, 2),
        name="neon-neg",
        kind="negative",
        source="trained",
        tags=["neg"],
    )
    return lib


def _folder_state(folder: Path) -> dict[str, tuple[bytes, int]]:
    if not folder.exists():
        return {}
    return {
        p.name: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.iterdir())
        if not p.is_symlink() and p.is_file()
    }


def _manifest(folder: Path) -> dict:
    return json.loads((folder / MANIFEST_NAME).read_text())


def test_a1111_folder_gets_files_and_sidecars(tmp_path, emb_factory):
    from conceptlib.compose.export import files_for

    lib = _catalog(emb_factory)
    folder = tmp_path / "webui" / "embeddings"
    report = ui_sync(lib, folder, "a1111")
    assert sorted(report.entries) == ["cat-toy", "neon-neg"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [
            MANIFEST_NAME,
            "cat-toy.safetensors",
            "cat-toy.json",
            "cat-toy.preview.png",
            "cat-toy.civitai.info",
            "neon-neg.safetensors",
            "neon-neg.json",
        ]
    )
    cat = lib.get("cat-toy")
    (data,) = files_for(lib, cat, "a1111").values()
    assert (folder / "cat-toy.safetensors").read_bytes() == data  # the export's very bytes
    assert (folder / "cat-toy.preview.png").read_bytes() == PNG
    card = json.loads((folder / "cat-toy.json").read_text())
    assert card == {
        "description": "a small cat toy",
        "activation text": "cat-toy",
        "sd version": "SD1",
        "is_negative_embedding": "false",
    }
    neg = json.loads((folder / "neon-neg.json").read_text())
    assert neg["sd version"] == "SDXL" and neg["is_negative_embedding"] == "true"
    civ = json.loads((folder / "cat-toy.civitai.info").read_text())
    assert (civ["id"], civ["modelId"], civ["baseModel"]) == (9208, 7808, "SD 1.5")
    assert civ["trainedWords"] == ["cat-toy"] and civ["model"]["tags"] == ["toy"]
    assert civ["files"][0]["hashes"]["SHA256"] == cat.file_sha256.upper()
    # The manifest lists each file with the SHA-256 written.
    files = _manifest(folder)["files"]
    assert set(files) == {p.name for p in folder.iterdir()} - {MANIFEST_NAME}
    for rel, rec in files.items():
        assert rec["sha256"] == hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        assert "pending" not in rec
    # ModelSpec in the header: what the UIs' metadata readers see.
    meta = parse_header((folder / "neon-neg.safetensors").read_bytes())[1]
    assert meta["modelspec.is_negative_embedding"] == "true"


def test_the_synced_folder_imports_back(tmp_path, monkeypatch, emb_factory):
    """What ui-sync writes is what an import of an A1111 folder reads."""
    lib = _catalog(emb_factory)
    folder = tmp_path / "emb"
    ui_sync(lib, folder, "a1111")
    monkeypatch.setenv("CONCEPTLIB_HOME", str(tmp_path / "second-home"))
    other = Library.open()
    report = other.import_paths([folder])
    assert sorted(o.status for o in report.outcomes) == ["imported", "imported"]
    cat = other.get("cat-toy")
    assert cat.description == "a small cat toy" and cat.source == "civitai"
    assert [p.role for p in cat.previews] == ["preview"]
    assert other.get("neon-neg").kind == "negative"


def test_second_run_writes_nothing(tmp_path, emb_factory):
    lib = _catalog(emb_factory)
    folder = tmp_path / "emb"
    first = ui_sync(lib, folder, "a1111")
    assert first.count("write") == 6 and first.changed
    before = _folder_state(folder)
    second = ui_sync(lib, folder, "a1111")
    assert not second.changed and second.count("unchanged") == 6 and not second.conflicts
    assert _folder_state(folder) == before  # bytes and modification times


def test_dry_run_changes_nothing(tmp_path, emb_factory):
    lib = _catalog(emb_factory)
    folder = tmp_path / "emb"
    plan = ui_sync(lib, folder, "comfyui", dry_run=True)
    assert not folder.exists()
    assert plan.count("write") == 4  # two files, a preview and a .civitai.info
    ui_sync(lib, folder, "comfyui")
    lib.update("cat-toy", description="changed")  # the header's description changes
    lib.remove("neon-neg")
    before = _folder_state(folder)
    plan = ui_sync(lib, folder, "comfyui", dry_run=True)
    assert {(a.action, a.path) for a in plan.actions if a.action != "unchanged"} == {
        ("update", "cat-toy.safetensors"),
        ("update", "cat-toy.civitai.info"),  # it holds the description too
        ("remove", "neon-neg.safetensors"),
    }
    assert _folder_state(folder) == before


def test_deselected_entries_are_removed_and_only_ours(tmp_path, emb_factory):
    lib = _catalog(emb_factory)
    folder = tmp_path / "emb"
    folder.mkdir()
    (folder / "mine.safetensors").write_bytes(b"the user's own file")
    ui_sync(lib, folder, "a1111")
    report = ui_sync(lib, folder, "a1111", tags=["toy"])
    assert sorted(a.path for a in report.actions if a.action == "remove") == [
        "neon-neg.json",
        "neon-neg.safetensors",
    ]
    assert not (folder / "neon-neg.safetensors").exists()
    assert (folder / "mine.safetensors").read_bytes() == b"the user's own file"
    assert set(_manifest(folder)["files"]) == {
        "cat-toy.safetensors",
        "cat-toy.json",
        "cat-toy.preview.png",
        "cat-toy.civitai.info",
    }


def test_a_file_changed_by_hand_is_left_alone(tmp_path, emb_factory):
    lib = _catalog(emb_factory)
    folder = tmp_path / "emb"
    ui_sync(lib, folder, "a1111")
    edited = b'{"description": "my own notes"}'
    (folder / "cat-toy.json").write_bytes(edited)  # A1111's metadata editor wrote it
    lib.update("cat-toy", description="a newer description")
    report = ui_sync(lib, folder, "a1111")
    (conflict,) = report.conflicts
    assert conflict.path == "cat-toy.json" and "changed since ui-sync wrote it" in conflict.reason
    assert (folder / "cat-toy.json").read_bytes() == edited
    assert ("update", "cat-toy.safetensors") in {(a.action, a.path) for a in report.actions}
    # Deselected, it is still not removed.
    report = ui_sync(lib, folder, "a1111", tags=["neg"])
    assert (folder / "cat-toy.json").read_bytes() == edited
    assert any(a.path == "cat-toy.json" and a.action == "conflict" for a in report.actions)
    assert not (folder / "cat-toy.safetensors").exists()


def test_a_file_it_did_not_write_is_never_overwritten(tmp_path, emb_factory):
    lib = _catalog(emb_factory)
    folder = tmp_path / "emb"
    folder.mkdir()
    theirs = write_safetensors({"emb_params": np.ones((1, 768), np.float32)})
    (folder / "cat-toy.safetensors").write_bytes(theirs)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"private")
    (folder / "neon-neg.safetensors").symlink_to(secret)
    report = ui_sync(lib, folder, "a1111")
    reasons = {a.path: a.reason for a in report.conflicts}
    assert reasons["cat-toy.safetensors"] == "a file ui-sync did not write; left alone"
    assert "never follows links" in reasons["neon-neg.safetensors"]
    assert (folder / "cat-toy.safetensors").read_bytes() == theirs
    assert secret.read_bytes() == b"private" and (folder / "neon-neg.safetensors").is_symlink()
    assert "cat-toy.safetensors" not in _manifest(folder)["files"]
    assert (folder / "cat-toy.json").exists()  # the rest was synced


def test_two_folders_from_one_catalog(tmp_path, emb_factory):
    lib = _catalog(emb_factory)
    a1111, comfy = tmp_path / "a1111", tmp_path / "comfy"
    ui_sync(lib, a1111, "a1111")
    before = _folder_state(a1111)
    ui_sync(lib, comfy, "comfyui", family="sdxl")
    assert _folder_state(a1111) == before
    assert _manifest(comfy)["ui"] == "comfyui" and _manifest(a1111)["ui"] == "a1111"
    assert sorted(p.name for p in comfy.iterdir()) == [MANIFEST_NAME, "neon-neg.safetensors"]
    # Removing from one folder leaves the other as it was.
    ui_sync(lib, comfy, "comfyui", family="sd1")
    assert sorted(p.name for p in comfy.iterdir()) == [
        MANIFEST_NAME,
        "cat-toy.civitai.info",
        "cat-toy.preview.png",
        "cat-toy.safetensors",
    ]
    assert _folder_state(a1111) == before


def _flux_embedding(seed: int) -> Embedding:
    rng = np.random.default_rng(seed)
    return Embedding.from_slots(
        {
            "clip_l": rng.standard_normal((1, 768)).astype(np.float32) * 0.01,
            "t5xxl": rng.standard_normal((1, 4096)).astype(np.float32) * 0.01,
        }
    )


def test_families_a_ui_cannot_load_are_skipped_with_the_reason(tmp_path, emb_factory):
    lib = _catalog(emb_factory)
    emb = _flux_embedding(3)
    if emb.family.value != "flux":  # pragma: no cover - the SD3/FLUX families landed
        pytest.skip("this checkout has no FLUX family")
    lib.add_embedding(emb, name="flux-style", kind="style", source="file")
    report = ui_sync(lib, tmp_path / "a1111", "a1111")
    (skip,) = report.skipped
    assert (skip.name, skip.family) == ("flux-style", "flux")
    assert "A1111 loads SD 1.x, SD 2.x and SDXL embeddings only" in skip.reason
    assert not (tmp_path / "a1111" / "flux-style.safetensors").exists()
    inv = ui_sync(lib, tmp_path / "invoke", "invokeai")
    assert [s.name for s in inv.skipped] == ["flux-style"]
    comfy = ui_sync(lib, tmp_path / "comfy", "comfyui")
    assert not comfy.skipped and (tmp_path / "comfy" / "flux-style.safetensors").exists()


def test_invokeai_names_and_untriggerable_entries(tmp_path, emb_factory):
    lib = Library.open()
    lib.add_embedding(emb_factory("sd1", 1, 4), name="café-neon", kind="style", source="file")
    lib.add_embedding(emb_factory("sd1", 1, 5), name="猫", kind="object", source="file")
    folder = tmp_path / "invoke"
    report = ui_sync(lib, folder, "invokeai")
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST_NAME, "cafe-neon.safetensors"]
    (skip,) = report.skipped
    assert skip.name == "猫" and "InvokeAI" in skip.reason


def test_swarmui_gets_modelspec_or_a_swarm_json(tmp_path, emb_factory):
    lib = _catalog(emb_factory)
    plain = tmp_path / "plain-neg.safetensors"  # an original without ModelSpec, kept
    plain.write_bytes(write_safetensors({"emb_params": emb_factory("sd1", 1, 6).vectors["clip_l"]}))
    lib.import_paths([plain], kind="negative")
    folder = tmp_path / "swarm"
    ui_sync(lib, folder, "swarmui")
    assert (folder / "plain-neg.safetensors").read_bytes() == plain.read_bytes()
    swarm = json.loads((folder / "plain-neg.swarm.json").read_text())
    assert swarm["modelspec.is_negative_embedding"] == "true"
    assert swarm["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert not (folder / "cat-toy.swarm.json").exists()  # its header says it all
    meta = parse_header((folder / "cat-toy.safetensors").read_bytes())[1]
    assert meta["modelspec.title"] == "cat-toy"
    assert (folder / "cat-toy.preview.png").exists()


def test_an_interrupted_run_is_finished_by_the_next(tmp_path, emb_factory, monkeypatch):
    import conceptlib.registry.store as store

    lib = _catalog(emb_factory)
    folder = tmp_path / "emb"
    real = store.atomic_write
    calls = []

    def failing(path, data, **kw):
        calls.append(path.name)
        if len(calls) == 3:  # the manifest, one file, then the disk fails
            raise store.StoreError(f"could not write {path}")
        real(path, data, **kw)

    monkeypatch.setattr(store, "atomic_write", failing)
    with pytest.raises(store.StoreError):
        ui_sync(lib, folder, "a1111")
    monkeypatch.setattr(store, "atomic_write", real)
    assert any("pending" in r for r in _manifest(folder)["files"].values())
    report = ui_sync(lib, folder, "a1111")
    assert not report.conflicts and report.count("unchanged") == 1 and report.count("write") == 5
    assert all("pending" not in r for r in _manifest(folder)["files"].values())


# --------------------------------------------------------------------------- CLI


def test_cli_json_and_exit_code_on_conflict(tmp_path, emb_factory):
    _catalog(emb_factory).close()
    folder = tmp_path / "emb"
    runner = CliRunner()
    r = runner.invoke(cli, ["ui-sync", str(folder), "--for", "a1111", "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["dry_run"] is True and plan["counts"]["write"] == 6 and not folder.exists()
    r = runner.invoke(cli, ["ui-sync", str(folder), "--for", "a1111", "--tag", "toy"])
    assert r.exit_code == 0 and "write cat-toy.safetensors" in r.stdout
    r = runner.invoke(cli, ["ui-sync", str(folder), "--for", "a1111", "--tag", "toy", "--json"])
    assert json.loads(r.stdout)["counts"] == {
        "write": 0,
        "update": 0,
        "remove": 0,
        "unchanged": 4,
        "conflict": 0,
    }
    (folder / "cat-toy.json").write_text("edited\x1b[2J")
    r = runner.invoke(cli, ["ui-sync", str(folder), "--for", "a1111", "--name", "neon-neg"])
    assert r.exit_code == 1
    assert "conflict cat-toy.json: changed since ui-sync wrote it" in r.stderr
    assert "\x1b" not in r.output


def test_cli_help_has_an_example():
    r = CliRunner().invoke(cli, ["ui-sync", "--help"])
    assert r.exit_code == 0 and "conceptlib ui-sync ~/webui/embeddings --for a1111" in r.output


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("file", ["--for", "a1111"], "is not a folder; expected the UI's embeddings folder"),
        ("bad-manifest", ["--for", "a1111"], "cannot be read as ui-sync's manifest"),
        ("other-ui", ["--for", "comfyui"], "is kept in sync for 'a1111', not comfyui"),
        ("none", ["--for", "a1111", "--name", "no-such"], "no embedding named 'no-such'"),
    ],
)
def test_cli_errors_change_nothing(tmp_path, emb_factory, catalog_snapshot, setup, args, message):
    lib = _catalog(emb_factory)
    folder = tmp_path / "emb"
    if setup == "file":
        folder.write_bytes(b"not a folder")
    elif setup == "bad-manifest":
        folder.mkdir()
        (folder / MANIFEST_NAME).write_text('{"tool": "conceptlib", "version": 1, "files": [')
    elif setup == "other-ui":
        ui_sync(lib, folder, "a1111")
    lib.close()
    before = catalog_snapshot(_home())
    state = _path_state(folder)
    exit_code = 6 if setup == "none" else 2
    r = CliRunner().invoke(cli, ["ui-sync", str(folder), *args])
    assert r.exit_code == exit_code, r.output
    assert message in r.stderr
    assert catalog_snapshot(_home()) == before
    assert _path_state(folder) == state


def _path_state(path: Path) -> object:
    if path.is_dir():
        return _folder_state(path)
    return path.read_bytes() if path.exists() else None

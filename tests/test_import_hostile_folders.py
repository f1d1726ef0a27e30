"""One bad file never stops a folder import (issue "Hostile inputs, second round").

Sidecars with fields of the wrong type or nested thousands deep, a file name so long
that its sidecar's name is too long for the file system, a sparse multi-GiB preview,
and links that lead out of the folder: the embedding beside them imports (a warning
names the sidecar), the rest of the folder goes on, nothing is echoed.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from conceptlib.cli.main import cli
from conceptlib.registry.formats.safetensors_io import write_safetensors
from conceptlib.registry.library import Library


def emb(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    return write_safetensors({"emb_params": rng.standard_normal((1, 768)).astype(np.float32)})


def import_json(folder, *extra):
    res = CliRunner().invoke(cli, ["import", str(folder), "--json", *extra])
    return res.exit_code, json.loads(res.output), res.output


BAD_SIDECARS = [
    ("civitai.info", {"tags": [1]}, "a tag is int"),
    ("civitai.info", {"tags": "negative"}, "'tags' is str"),
    ("civitai.info", {"model": "x"}, "'model' is str"),
    ("civitai.info", {"trainedWords": "a, b"}, "'trainedWords' is str"),
    ("civitai.info", {"baseModel": ["SD 1.5"]}, "'baseModel' is list"),
    ("civitai.info", {"description": {"html": 1}}, "'description' is dict"),
    ("civitai.info", [1, 2], "expected a JSON object"),
    ("json", {"description": 5}, "'description' is int"),
    ("json", {"activation text": ["a"]}, "'activation text' is list"),
    ("json", {"sd version": 1.5}, "'sd version' is float"),
]


@pytest.mark.parametrize(("suffix", "content", "why"), BAD_SIDECARS)
def test_a_sidecar_of_the_wrong_shape_is_ignored_with_a_warning(tmp_path, suffix, content, why):
    folder = tmp_path / "webui"
    folder.mkdir()
    (folder / "aaa-first.safetensors").write_bytes(emb(1))
    (folder / "bbb-odd.safetensors").write_bytes(emb(2))
    (folder / f"bbb-odd.{suffix}").write_text(json.dumps(content))
    (folder / "ccc-last.safetensors").write_bytes(emb(3))
    code, report, _ = import_json(folder)
    assert code == 0
    files = {o["path"].rsplit("/", 1)[-1]: o for o in report["files"]}
    assert [files[f]["status"] for f in sorted(files)] == ["imported"] * 3
    (note,) = files["bbb-odd.safetensors"]["notes"]
    assert note.startswith(f"bbb-odd.{suffix}: ") and why in note and "ignored" in note
    with Library.open() as lib:
        assert sorted(e.name for e in lib.list()) == ["aaa-first", "bbb-odd", "ccc-last"]


def test_a_deeply_nested_sidecar_does_not_reject_its_embedding(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    (folder / "deep-one.safetensors").write_bytes(emb(4))
    (folder / "deep-one.civitai.info").write_text("[" * 100_000 + "]" * 100_000)
    code, report, _ = import_json(folder)
    assert code == 0
    (o,) = report["files"]
    assert o["status"] == "imported"
    assert "nested deeper than 32 levels" in o["notes"][0]


def test_a_file_name_too_long_for_its_sidecars_is_imported(tmp_path):
    """243 + len(".safetensors") = 255, the longest name ext4 allows; its
    ``.civitai.info`` probe (256) fails with ENAMETOOLONG, which once aborted the run."""
    folder = tmp_path / "long"
    folder.mkdir()
    stem = "n" * 243
    try:
        (folder / f"{stem}.safetensors").write_bytes(emb(5))
    except OSError:
        pytest.skip("this file system does not allow 255-byte names")
    (folder / "zz-after.safetensors").write_bytes(emb(6))
    code, report, _ = import_json(folder)
    statuses = sorted(o["status"] for o in report["files"])
    assert code == 0 and statuses == ["imported", "imported"]


def test_a_sparse_huge_preview_is_skipped_without_reading_it(tmp_path):
    folder = tmp_path / "sparse"
    folder.mkdir()
    (folder / "big-prev.safetensors").write_bytes(emb(7))
    with (folder / "big-prev.preview.png").open("wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(6 * 1024**3)  # 6 GiB, sparse: nothing on disk
    code, report, _ = import_json(folder)
    (o,) = [f for f in report["files"] if f["path"].endswith(".safetensors")]
    assert code == 0 and o["status"] == "imported"
    assert o["notes"] == ["big-prev.preview.png: larger than 32 MiB; preview skipped"]
    with Library.open() as lib:
        assert lib.get("big-prev").previews == []


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_links_out_of_the_folder_are_not_followed_and_nothing_is_echoed(tmp_path):
    outside = tmp_path / "private"
    outside.mkdir()
    secret = outside / "id_key"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nsecret material\n")
    real = outside / "real.safetensors"
    real.write_bytes(emb(8))
    folder = tmp_path / "embeddings"
    folder.mkdir()
    (folder / "inside.safetensors").write_bytes(emb(9))
    (folder / "stolen.pt").symlink_to(secret)
    (folder / "elsewhere.safetensors").symlink_to(real)
    (folder / "inside.json").symlink_to(secret)  # a sidecar that leaves too
    (folder / "alias.safetensors").symlink_to(folder / "inside.safetensors")  # stays inside
    code, report, out = import_json(folder, "--verbose")
    assert "BEGIN" not in out and "secret material" not in out
    names = {o["path"].rsplit("/", 1)[-1]: o for o in report["files"]}
    assert set(names) == {"inside.safetensors", "alias.safetensors"}
    assert names["inside.safetensors"]["notes"] == [
        "inside.json: a link that leads out of its folder; sidecar ignored"
    ]
    skipped = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped_files"]}
    assert skipped["stolen.pt"] == "a link that leads out of the folder being imported"
    assert skipped["elsewhere.safetensors"] == skipped["stolen.pt"]
    # a file named explicitly is the user's choice: it is read (and refused by content)
    res = CliRunner().invoke(cli, ["import", str(folder / "stolen.pt")])
    assert res.exit_code == 3 and "BEGIN" not in res.output and "secret" not in res.output

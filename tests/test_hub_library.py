"""Library repos: a chosen part of the catalog as one repo, pulled elsewhere with nothing lost."""

from __future__ import annotations

import json

import pytest
from hub_fixtures import hub_fixture, hub_server_fixture, other_library_fixture  # noqa: F401

from conceptlib.errors import HubConflict, HubNoEmbedding, UsageError
from conceptlib.registry import hub as hubmod
from conceptlib.schemas.manifest import ConceptManifest, LibraryIndex
from conceptlib.schemas.records import Preview, TrainingRunRecord

pytestmark = pytest.mark.timeout(90)

REPO = "team/styles"
LOCAL_ONLY = {"id", "created_at", "updated_at", "syncs"}


def _fill(lib, emb_factory):
    lib.add_embedding(
        emb_factory("sd1", 2, 1),
        name="ink-wash",
        token="<ink-wash>",
        kind="style",
        source="trained",
        source_ref="runs/ink-wash-001",
        base_model="conceptlib/tiny-sd1",
        base_model_fingerprint="tiny:sd1:v1",
        initializer="ink",
        training_images_hash="a" * 64,
        training_image_count=5,
        tags=["style", "ink"],
        description="ink wash",
        license="cc-by-4.0",
        previews=[
            Preview("sample-0.png", b"\x89PNG ink sample", "sample"),
            Preview("loss.png", b"\x89PNG loss curve", "loss_curve"),
        ],
        training_run=TrainingRunRecord(
            config={"lr": 0.005, "steps": 100},
            steps=100,
            final_loss=0.12,
            device="cpu",
            base_model="conceptlib/tiny-sd1",
            training_image_count=5,
            initializer="ink",
        ),
        extra={"seed": 1},
    )
    lib.add_embedding(
        emb_factory("sdxl", 1, 2),
        name="neon-xl",
        token="<neon-xl>",
        kind="style",
        source="file",
        source_ref="/home/me/neon.safetensors",
        tags=["style", "neon"],
        file_bytes=b"original file bytes",
    )
    lib.add_embedding(
        emb_factory("sd1", 1, 3),
        name="blend-a",
        kind="style",
        source="blend",
        tags=["style"],
        parents=[{"name": "ink-wash", "tensor_sha256": "b" * 64, "weight": 0.5}],
    )
    lib.add_embedding(emb_factory("sd1", 1, 4), name="cat-toy", kind="object", tags=["toy"])


def _portable(info) -> dict:
    d = info.to_dict()
    for k in LOCAL_ONLY:
        d.pop(k, None)
    d["previews"] = [(p["filename"], p["role"], p["sha256"], p["size"]) for p in d["previews"]]
    for tr in d["training_runs"]:
        tr.pop("id", None)
        tr.pop("created_at", None)
    return d


def test_library_push_and_pull_lose_nothing(other_library, hub, lib, emb_factory, tmp_path):
    _fill(lib, emb_factory)
    result = hubmod.push_library(lib, REPO, tags=["style"])
    assert result.status == "created"
    assert result.names == ["blend-a", "ink-wash", "neon-xl"]
    files = hub.files(REPO)
    index = LibraryIndex.model_validate_json(files["library.json"])
    assert [c.path for c in index.concepts] == [
        "concepts/blend-a",
        "concepts/ink-wash",
        "concepts/neon-xl",
    ]
    assert index.selection["tags"] == ["style"]
    for c in index.concepts:
        ConceptManifest.model_validate_json(files[f"{c.path}/concept.json"])
    assert "concepts/ink-wash/previews/loss.png" in files
    assert "conceptlib pull --library team/styles" in files["README.md"].decode()
    commit = hub.head(REPO)
    assert {s.commit_sha for s in lib.syncs("ink-wash")} == {commit}

    other = other_library("machine-b")
    report = hubmod.pull_library(other, REPO)
    assert report.count("pulled") == 3 and not report.failed
    for name in ("ink-wash", "neon-xl", "blend-a"):
        assert _portable(other.get(name)) == _portable(lib.get(name)), name
        syncs = other.syncs(name)
        assert [(s.repo_id, s.commit_sha, s.direction) for s in syncs] == [(REPO, commit, "pull")]
    assert other.find("cat-toy") is None
    # pulling again changes nothing and downloads no concept files
    hub.reset_log()
    again = hubmod.pull_library(other, REPO)
    assert again.count("present") == 3
    assert hub.count("GET", r"/resolve/.*concepts/") == 0
    # machine B pushing the unchanged library makes no commit either
    hub.reset_log()
    back = hubmod.push_library(other, REPO, tags=["style"])
    assert back.status == "unchanged", back.changed
    assert hub.head(REPO) == commit and hub.count("POST") == 0


def test_unchanged_library_push_makes_zero_commits(hub, lib, emb_factory):
    _fill(lib, emb_factory)
    hubmod.push_library(lib, REPO, tags=["style"])
    n = hub.commit_count(REPO)
    for _ in range(2):
        assert hubmod.push_library(lib, REPO, tags=["style"]).status == "unchanged"
    assert hub.commit_count(REPO) == n
    assert len(lib.syncs("ink-wash")) == 1


def test_selection_changes_delete_what_left(hub, lib, emb_factory):
    _fill(lib, emb_factory)
    hubmod.push_library(lib, REPO, tags=["style"])
    lib.tag("blend-a", remove=["style"])
    result = hubmod.push_library(lib, REPO, tags=["style"])
    assert result.status == "updated"
    assert "concepts/blend-a/concept.json" in result.deleted
    assert not [p for p in hub.files(REPO) if p.startswith("concepts/blend-a/")]


def test_search_selection_and_whole_catalog(hub, lib, emb_factory):
    _fill(lib, emb_factory)
    assert hubmod.push_library(lib, "team/inks", search="ink").names == ["ink-wash"]
    assert len(hubmod.push_library(lib, "team/all").names) == 4
    with pytest.raises(UsageError, match="no concepts match"):
        hubmod.push_library(lib, "team/none", tags=["nothing-has-this"])


def test_library_conflict(hub, lib, emb_factory):
    _fill(lib, emb_factory)
    hubmod.push_library(lib, REPO, tags=["style"])
    hub.commit(REPO, {"NOTES.md": b"edited elsewhere"})
    lib.tag("ink-wash", add=["new"])
    with pytest.raises(HubConflict, match="moved since the last sync"):
        hubmod.push_library(lib, REPO, tags=["style"])


def test_library_pull_goes_on_past_one_bad_entry(other_library, hub, lib, emb_factory, tmp_path):
    _fill(lib, emb_factory)
    hubmod.push_library(lib, REPO, tags=["style"])
    other = other_library("machine-b")
    other.add_embedding(emb_factory("sd1", 1, 99), name="ink-wash", source="file")
    report = hubmod.pull_library(other, REPO)
    assert report.count("pulled") == 2 and report.count("failed") == 1
    (bad,) = report.failed
    assert bad.code == "name_collision" and bad.name == "ink-wash"


def test_new_library_revision_makes_new_versions(other_library, hub, lib, emb_factory, tmp_path):
    _fill(lib, emb_factory)
    hubmod.push_library(lib, REPO, tags=["style"])
    other = other_library("machine-b")
    hubmod.pull_library(other, REPO)
    # machine A retrains ink-wash: new vectors under the same name
    lib.remove("ink-wash")
    lib.add_embedding(
        emb_factory("sd1", 2, 50),
        name="ink-wash",
        token="<ink-wash>",
        kind="style",
        tags=["style"],
    )
    hubmod.push_library(lib, REPO, tags=["style"], force=True)
    report = hubmod.pull_library(other, REPO)
    (nv,) = [o for o in report.outcomes if o.status == "new-version"]
    assert nv.name == "ink-wash" and nv.previous == "ink-wash@v1" and nv.version == 2
    assert other.get("ink-wash@v1").training_runs  # the old one kept, with its history


def test_wrong_kind_of_repo(hub, lib, emb_factory):
    _fill(lib, emb_factory)
    hubmod.push_library(lib, REPO, tags=["style"])
    hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    with pytest.raises(HubNoEmbedding, match="library") as ei:
        hubmod.pull(lib, REPO)
    assert "--library" in ei.value.hint
    with pytest.raises(HubNoEmbedding, match="no library.json"):
        hubmod.pull_library(lib, "alice/cat-toy")


def test_index_file_is_deterministic(hub, lib, emb_factory):
    _fill(lib, emb_factory)
    infos = [lib.get(n) for n in ("neon-xl", "ink-wash")]
    _, a = hubmod.library_repo_files(lib, infos, repo_id=REPO, selection={})
    _, b = hubmod.library_repo_files(lib, infos[::-1], repo_id=REPO, selection={})
    assert a == b
    assert json.loads(a["library.json"])["schema_version"] == 1

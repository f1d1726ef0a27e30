"""Pull against the loopback Hub with the real client: layouts, versions, offline, bulk."""

from __future__ import annotations

import numpy as np
import pytest
from hub_fixtures import (  # noqa: F401 - fixtures
    hub_fixture,
    hub_server_fixture,
    other_library_fixture,
    safetensors_bytes,
    seed_sd_concepts,
    seed_single_file,
)

from conceptlib.errors import AmbiguousEmbedding, HubNoEmbedding, HubNotFound, HubOffline
from conceptlib.registry import hub as hubmod
from conceptlib.schemas.records import Preview, TrainingRunRecord

pytestmark = pytest.mark.timeout(60)


def _resolves(server) -> list[tuple[str, str]]:
    """(repo, file) of every download request (HEAD or GET)."""
    out = []
    for r in server.requests:
        if "/resolve/" in r.path:
            repo, rest = r.path.lstrip("/").split("/resolve/", 1)
            out.append((repo, rest.split("/", 1)[1]))
    return out


def test_sd_concepts_library_repo(hub, lib, emb_factory):
    emb = emb_factory("sd1", 1, 7)
    commit = seed_sd_concepts(hub, "sd-concepts-library/cat-toy", emb, kind="object")
    hub.commit("sd-concepts-library/cat-toy", {"concept_images/0.jpeg": b"\xff\xd8 jpeg" * 100})
    commit = hub.head("sd-concepts-library/cat-toy")
    hub.reset_log()
    out = hubmod.pull(lib, "sd-concepts-library/cat-toy")
    assert out.status == "pulled" and out.name == "cat-toy" and out.layout == "sd-concepts-library"
    info = lib.get("cat-toy")
    assert info.token == "<cat-toy>" and info.kind == "object" and info.family == "sd1"
    assert info.source == "hub"
    assert info.source_ref == f"sd-concepts-library/cat-toy@{commit}/learned_embeds.bin"
    assert info.tensor_sha256 == emb.tensor_sha256
    assert info.license == "mit"
    assert [(s.repo_id, s.commit_sha, s.direction) for s in info.syncs] == [
        ("sd-concepts-library/cat-toy", commit, "pull")
    ]
    # only what it needs: no images, no .gitattributes
    fetched = {f for _, f in _resolves(hub)}
    assert fetched == {
        "learned_embeds.bin",
        "token_identifier.txt",
        "type_of_concept.txt",
        "README.md",
    }


def test_same_revision_again_is_a_no_op(hub, lib, emb_factory, catalog_snapshot, _isolated_home):
    seed_sd_concepts(hub, "sd-concepts-library/cat-toy", emb_factory("sd1", 1, 7))
    hubmod.pull(lib, "sd-concepts-library/cat-toy")
    before = catalog_snapshot(_isolated_home)
    hub.reset_log()
    out = hubmod.pull(lib, "sd-concepts-library/cat-toy")
    assert out.status == "present" and out.name == "cat-toy"
    assert len(hub.requests) == 1  # the listing only, no download
    assert catalog_snapshot(_isolated_home) == before


def test_new_revision_becomes_a_new_version(hub, lib, emb_factory):
    repo = "sd-concepts-library/cat-toy"
    c1 = seed_sd_concepts(hub, repo, emb_factory("sd1", 1, 7))
    hubmod.pull(lib, repo)
    # a README-only change: same vectors, nothing new
    hub.commit(repo, {"README.md": b"---\nlicense: mit\n---\nbetter words\n"})
    assert hubmod.pull(lib, repo).status == "present"
    new = emb_factory("sd1", 1, 8)
    c3 = seed_sd_concepts(hub, repo, new)
    out = hubmod.pull(lib, repo)
    assert out.status == "new-version" and out.version == 2 and out.previous == "cat-toy@v1"
    current, old = lib.get("cat-toy"), lib.get("cat-toy@v1")
    assert current.tensor_sha256 == new.tensor_sha256 and current.version == 2
    assert current.token == "<cat-toy>" and old.token == "<cat-toy@v1>"
    assert old.version == 1 and old.source_ref.startswith(f"{repo}@{c1}/")
    assert current.source_ref.startswith(f"{repo}@{c3}/")
    assert {e.name for e in lib.list()} == {"cat-toy", "cat-toy@v1"}
    assert lib.resolve("<cat-toy>").name == "cat-toy"
    # pinning the old revision finds it already there
    assert hubmod.pull(lib, f"{repo}@{c1}").status == "present"


def test_name_taken_by_something_else(hub, lib, emb_factory):
    lib.add_embedding(emb_factory("sd1", 1, 1), name="cat-toy", source="file")
    seed_sd_concepts(hub, "sd-concepts-library/cat-toy", emb_factory("sd1", 1, 7))
    from conceptlib.errors import NameCollision

    with pytest.raises(NameCollision, match="--name|taken"):
        hubmod.pull(lib, "sd-concepts-library/cat-toy")
    out = hubmod.pull(lib, "sd-concepts-library/cat-toy", name="cat-toy-hub")
    assert out.name == "cat-toy-hub"


def test_single_file_repo_easynegative(hub, lib, emb_factory):
    seed_single_file(hub, "gsdf/EasyNegative", emb_factory("sd1", 8, 3))
    out = hubmod.pull(lib, "gsdf/EasyNegative")
    assert out.layout == "single-file"
    info = lib.get("EasyNegative")
    assert info.kind == "negative" and info.num_vectors == 8
    assert info.token == "EasyNegative"  # not the file's emb_params key
    assert info.base_model == "runwayml/stable-diffusion-v1-5"
    assert info.license == "creativeml-openrail-m"
    assert info.tags == ["anime"]


def test_sdxl_two_file_diffusers_layout(hub, lib, emb_factory):
    emb = emb_factory("sdxl", 2, 4)
    files = {
        "learned_embeds.safetensors": safetensors_bytes({"<neon>": emb.vectors["clip_l"]}),
        "learned_embeds_2.safetensors": safetensors_bytes({"<neon>": emb.vectors["clip_g"]}),
        "token_identifier.txt": b"<neon>",
        "type_of_concept.txt": b"style",
    }
    hub.commit("alice/neon-xl", files)
    out = hubmod.pull(lib, "alice/neon-xl")
    info = lib.get(out.name)
    assert info.family == "sdxl" and info.tensor_sha256 == emb.tensor_sha256
    assert info.kind == "style"


def test_several_embeddings_ask_which(hub, lib, emb_factory, catalog_snapshot, _isolated_home):
    hub.commit(
        "alice/pack",
        {
            "a.safetensors": safetensors_bytes(
                {"emb_params": emb_factory("sd1", 1, 1).vectors["clip_l"]}
            ),
            "b.pt": b"\x80\x02}q\x00.",
            "b.safetensors": safetensors_bytes(
                {"emb_params": emb_factory("sd1", 1, 2).vectors["clip_l"]}
            ),
            "model.safetensors": b"not an embedding",
        },
    )
    before = catalog_snapshot(_isolated_home)
    with pytest.raises(AmbiguousEmbedding) as ei:
        hubmod.pull(lib, "alice/pack")
    assert ei.value.candidates == ["a.safetensors", "b.safetensors"]
    assert "--file" in str(ei.value) and "--file a.safetensors" in ei.value.hint
    assert catalog_snapshot(_isolated_home) == before
    out = hubmod.pull(lib, "alice/pack", filename="b.safetensors")
    assert out.name == "b"
    with pytest.raises(HubNotFound, match="a.safetensors"):
        hubmod.pull(lib, "alice/pack", filename="c.safetensors")


def test_repo_without_embedding(hub, lib):
    hub.commit("alice/empty", {"README.md": b"# nothing\n", "notes.txt": b"hi"})
    with pytest.raises(HubNoEmbedding, match="no recognizable embedding"):
        hubmod.pull(lib, "alice/empty")
    with pytest.raises(HubNotFound):
        hubmod.pull(lib, "alice/does-not-exist")
    with pytest.raises(HubNotFound, match="revision"):
        hubmod.pull(lib, "alice/empty@nope")


def test_lfs_pointer_in_place_of_weights(hub, lib, catalog_snapshot, _isolated_home):
    from conceptlib.errors import EmbeddingFileError

    pointer = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"a" * 64 + b"\nsize 3\n"
    hub.commit("alice/pointer", {"learned_embeds.bin": pointer, "token_identifier.txt": b"<p>"})
    before = catalog_snapshot(_isolated_home)
    with pytest.raises(EmbeddingFileError) as ei:
        hubmod.pull(lib, "alice/pointer")
    assert "alice/pointer@" in str(ei.value)
    assert catalog_snapshot(_isolated_home) == before


def test_our_layout_round_trip(other_library, hub, lib, emb_factory, tmp_path):
    emb = emb_factory("sd1", 3, 11)
    lib.add_embedding(
        emb,
        name="ink-wash",
        token="<ink-wash>",
        kind="style",
        source="trained",
        base_model="conceptlib/tiny-sd1",
        initializer="ink",
        training_images_hash="d" * 64,
        training_image_count=6,
        tags=["style", "ink"],
        description="ink wash painting",
        license="cc-by-4.0",
        previews=[Preview("sample.png", b"\x89PNG sample", "sample")],
        training_run=TrainingRunRecord(config={"lr": 0.01}, steps=50, final_loss=0.3),
        extra={"note": "hello"},
    )
    hubmod.push(lib, "ink-wash", repo_id="alice/ink-wash")
    other = other_library("other-home")
    out = hubmod.pull(other, "alice/ink-wash")
    assert out.layout == "conceptlib"
    got = other.get("ink-wash")
    src = lib.get("ink-wash")
    for attr in (
        "token",
        "kind",
        "family",
        "num_vectors",
        "tensor_sha256",
        "file_sha256",
        "base_model",
        "initializer",
        "training_images_hash",
        "training_image_count",
        "tags",
        "description",
        "license",
    ):
        assert getattr(got, attr) == getattr(src, attr), attr
    assert got.source == "hub" and got.source_ref.endswith("/learned_embeds.safetensors")
    assert got.extra["origin"] == {"source": "trained", "source_ref": None}
    assert got.extra["note"] == "hello"
    assert [(p.filename, p.role, p.sha256) for p in got.previews] == [
        (p.filename, p.role, p.sha256) for p in src.previews
    ]
    assert got.training_runs[0].config == {"lr": 0.01}
    assert np.array_equal(other.load(got).vectors["clip_l"], emb.vectors["clip_l"])


def test_offline_uses_the_cache(other_library, hub, lib, emb_factory, monkeypatch, tmp_path):
    seed_sd_concepts(hub, "sd-concepts-library/cat-toy", emb_factory("sd1", 1, 7))
    hubmod.pull(lib, "sd-concepts-library/cat-toy")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.reset_log()
    other = other_library("offline-home")
    out = hubmod.pull(other, "sd-concepts-library/cat-toy")
    assert out.status == "pulled"
    assert other.get("cat-toy").tensor_sha256 == lib.get("cat-toy").tensor_sha256
    with pytest.raises(HubOffline, match="not in the local cache") as ei:
        hubmod.pull(other, "sd-concepts-library/never-pulled")
    assert "HF_HUB_OFFLINE" in (ei.value.hint or "")
    with pytest.raises(HubOffline):
        hubmod.pull_many(other, author="sd-concepts-library")
    assert hub.requests == []


def test_offline_cache_with_a_bad_blob_is_refused(
    other_library, hub, lib, emb_factory, monkeypatch, tmp_path
):
    import os

    from conceptlib.errors import HubIntegrityError

    seed_sd_concepts(hub, "sd-concepts-library/cat-toy", emb_factory("sd1", 1, 7))
    hubmod.pull(lib, "sd-concepts-library/cat-toy")
    cache = hubmod.hf_cache_dir()
    blobs = [os.path.join(d, f) for d, _, fs in os.walk(cache) for f in fs if os.sep + "blobs" in d]
    for b in blobs:
        if os.path.getsize(b) > 500:
            with open(b, "r+b") as f:
                f.seek(200)
                f.write(b"\x00\x01\x02\x03")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    other = other_library("offline-home")
    with pytest.raises(HubIntegrityError):
        hubmod.pull(other, "sd-concepts-library/cat-toy")


# --------------------------------------------------------------------------- bulk


def _seed_org(hub, emb_factory, n=10):
    for i in range(n):
        seed_sd_concepts(
            hub,
            f"sd-concepts-library/concept-{i:02d}",
            emb_factory("sd1", 1 + i % 3, 100 + i),
            token=f"<concept-{i:02d}>",
            kind="style" if i % 2 else "object",
            fmt="bin" if i % 2 else "safetensors",
            card="---\ntags:\n- textual-inversion\n- "
            + ("style" if i % 2 else "object")
            + "\n---\n",
        )


def test_bulk_pull_goes_on_past_failures(hub, lib, emb_factory):
    _seed_org(hub, emb_factory, 10)
    hub.commit("sd-concepts-library/broken", {"README.md": b"# no embedding\n"})
    hub.commit("sd-concepts-library/garbage", {"learned_embeds.bin": b"\x00" * 64})
    hub.commit("other-org/elsewhere", {"x.safetensors": b"x"})
    calls = []
    report = hubmod.pull_many(
        lib,
        author="sd-concepts-library",
        concurrency=4,
        on_progress=lambda d, t, c: calls.append((d, t)),
    )
    assert len(report.outcomes) == 12
    assert report.count("pulled") == 10 and report.count("failed") == 2
    failed = {o.repo_id: o for o in report.failed}
    assert failed["sd-concepts-library/broken"].code == "hub_no_embedding"
    assert failed["sd-concepts-library/garbage"].error
    assert calls[-1] == (12, 12)
    assert len(lib.list()) == 10
    # again: everything present, nothing downloaded
    hub.reset_log()
    again = hubmod.pull_many(lib, author="sd-concepts-library")
    assert again.count("present") == 10 and again.count("failed") == 2
    assert {repo for repo, _ in _resolves(hub)} == {"sd-concepts-library/garbage"}


def test_bulk_search_tag_and_limit(hub, lib, emb_factory):
    _seed_org(hub, emb_factory, 6)
    report = hubmod.pull_many(lib, author="sd-concepts-library", tags=["style"])
    assert {o.name for o in report.outcomes} == {"concept-01", "concept-03", "concept-05"}
    report = hubmod.pull_many(lib, search="concept-0", limit=2)
    assert len(report.outcomes) == 2
    from conceptlib.errors import UsageError

    with pytest.raises(UsageError):
        hubmod.pull_many(lib)


def test_an_ordinary_word_is_not_taken_as_a_name(hub, lib, emb_factory):
    from conceptlib.errors import InvalidName

    seed_single_file(hub, "someone/painting", emb_factory("sd1", 1, 5), filename="painting.pt")
    # a .pt named like the word, holding emb_params in safetensors bytes: detected by content
    out = hubmod.pull(lib, "someone/painting")
    info = lib.get(out.name)
    assert (info.name, info.token) == ("painting-ti", "painting-ti")
    assert info.extra["renamed_from"] == "painting"
    seed_single_file(hub, "someone/other", emb_factory("sd1", 1, 6), filename="x-y.safetensors")
    with pytest.raises(InvalidName, match="ordinary word"):
        hubmod.pull(lib, "someone/other", name="painting")


# --------------------------------------------------------------------------- tokens and names


def test_a_repo_token_that_cannot_be_a_trigger_is_kept_and_reported(hub, lib, emb_factory):
    """token_identifier.txt ``<Le Petit Prince-moon >``, or a learned_embeds key ``_*_``
    without one: the name becomes the token, the original is kept and the pull says so."""
    import json

    from click.testing import CliRunner

    from conceptlib.cli.main import cli

    seed_sd_concepts(
        hub,
        "sd-concepts-library/le-petit-prince",
        emb_factory("sd1", 2, 30),
        token="<Le Petit Prince-moon >",
    )
    out = hubmod.pull(lib, "sd-concepts-library/le-petit-prince")
    info = lib.get(out.name)
    assert (info.name, info.token) == ("le-petit-prince", "le-petit-prince")
    assert info.extra["token_in_file"] == "<Le Petit Prince-moon >"
    assert out.token == "le-petit-prince"
    assert len(out.notes) == 1 and "cannot be a trigger" in out.notes[0]
    # a trigger token chosen by the user: the repo's is still kept, and the pull says so
    seed_sd_concepts(
        hub, "sd-concepts-library/prince-2", emb_factory("sd1", 2, 34), token="<Le Petit>"
    )
    out = hubmod.pull(lib, "sd-concepts-library/prince-2", trigger_token="<prince-2>")
    assert lib.get(out.name).token == "<prince-2>"
    assert lib.get(out.name).extra["token_in_file"] == "<Le Petit>"
    assert out.notes == ["--token replaced the repo's token '<Le Petit>'"]
    hub.commit(
        "someone/stars",
        {
            "learned_embeds.safetensors": safetensors_bytes(
                {"_*_": emb_factory("sd1", 1, 31).vectors["clip_l"]}
            )
        },
    )
    lib.close()
    res = CliRunner().invoke(cli, ["pull", "someone/stars"])
    assert res.exit_code == 0, res.output
    assert "the token in the file cannot be a trigger (invalid token '_*_'" in res.output
    res = CliRunner().invoke(cli, ["show", "stars", "--json"])
    shown = json.loads(res.output)
    assert shown["token"] == "stars" and shown["extra"]["token_in_file"] == "_*_"


@pytest.mark.parametrize("multi_first", [True, False])
def test_bulk_pull_keeps_the_expansion_rule_in_either_order(hub, lib, emb_factory, multi_first):
    """``gs-999`` (3 vectors) and ``gs-999_2`` in one bulk pull: the second one registered
    is refused, as two separate pulls refuse it (diffusers expands gs-999 to gs-999_2)."""
    multi, single = ("a-org", "b-org") if multi_first else ("b-org", "a-org")
    seed_sd_concepts(hub, f"{multi}/gs-999", emb_factory("sd1", 3, 32), token="<gs-999>")
    seed_sd_concepts(hub, f"{single}/gs-999_2", emb_factory("sd1", 1, 33), token="<gs-999_2>")
    report = hubmod.pull_many(lib, search="gs-999", concurrency=1)
    by = {o.repo_id: o for o in report.outcomes}
    first, second = (f"{multi}/gs-999", f"{single}/gs-999_2")[:: 1 if multi_first else -1]
    assert by[first].status == "pulled"
    assert by[second].status == "failed" and by[second].code == "name_collision"
    assert "diffusers loads" in by[second].error
    assert [e.name for e in lib.list()] == [first.split("/")[1]]


@pytest.mark.parametrize("multi_first", [True, False])
def test_library_pull_keeps_the_expansion_rule_in_either_order(
    other_library, hub, lib, emb_factory, multi_first
):
    """A library repo holding ``gs-999`` (3 vectors) and ``gs-999_2`` (made by two
    machines): one pull registers the first in order and refuses the other."""
    from conceptlib.schemas.manifest import LibraryIndex

    multi = other_library("machine-multi")
    multi.add_embedding(emb_factory("sd1", 3, 60), name="gs-999")
    single = other_library("machine-single")
    single.add_embedding(emb_factory("sd1", 1, 61), name="gs-999_2")
    files: dict[str, bytes] = {}
    entries = []
    for source in (multi, single) if multi_first else (single, multi):
        index, part = hubmod.library_repo_files(
            source, source.list(), repo_id="team/mixed", selection={}
        )
        files.update({k: v for k, v in part.items() if k.startswith("concepts/")})
        entries += index.concepts
    index = LibraryIndex(name="team/mixed", selection={}, concepts=entries)
    files["library.json"] = index.to_json_bytes()
    hub.commit("team/mixed", files)
    target = other_library("machine-b")
    report = hubmod.pull_library(target, "team/mixed", concurrency=1)
    by = {o.name: o for o in report.outcomes}
    kept, refused = ("gs-999", "gs-999_2") if multi_first else ("gs-999_2", "gs-999")
    assert by[kept].status == "pulled"
    assert by[refused].status == "failed" and by[refused].code == "name_collision"
    assert [e.name for e in target.list()] == [kept]

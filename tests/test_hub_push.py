"""Push against the loopback Hub with the real client: layout, card, idempotency, conflicts."""

from __future__ import annotations

import json

import pytest
from hub_fixtures import READ_TOKEN, hub_fixture, hub_server_fixture  # noqa: F401 - fixtures

from conceptlib.errors import HubAuthError, HubConflict
from conceptlib.registry import hub as hubmod
from conceptlib.registry.hub import session as hub_session
from conceptlib.registry.hub import settings as hub_settings
from conceptlib.schemas.records import Preview, TrainingRunRecord

pytestmark = pytest.mark.timeout(60)


def _add(lib, emb_factory, name="cat-toy", family="sd1", n=2, seed=1, **kw):
    defaults = dict(
        token=f"<{name}>",
        kind="object",
        source="trained",
        base_model="conceptlib/tiny-sd1" if family != "sdxl" else "conceptlib/tiny-sdxl",
        tags=["toy", "plush"],
        description="a small plush cat toy",
        license="mit",
        previews=[Preview("sample-0.png", b"\x89PNG\r\n\x1a\n fake " + name.encode(), "preview")],
        training_run=TrainingRunRecord(config={"lr": 0.005, "steps": 10}, steps=10, final_loss=0.2),
    )
    defaults.update(kw)
    return lib.add_embedding(emb_factory(family, n, seed), name=name, **defaults)


def test_push_creates_repo_with_the_documented_layout(hub, lib, emb_factory):
    info = _add(lib, emb_factory)
    result = hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    assert result.status == "created" and result.committed
    files = hub.files("alice/cat-toy")
    assert {
        "learned_embeds.safetensors",
        "token_identifier.txt",
        "type_of_concept.txt",
        "concept.json",
        "README.md",
        "previews/sample-0.png",
    } <= set(files)
    assert files["token_identifier.txt"] == b"<cat-toy>"
    assert files["type_of_concept.txt"] == b"object"
    # diffusers' load_textual_inversion layout: {token: [n, d]}
    from conceptlib.registry.formats.safetensors_io import read_safetensors

    tensors, _ = read_safetensors(files["learned_embeds.safetensors"])
    assert list(tensors) == ["<cat-toy>"] and tensors["<cat-toy>"].shape == (2, 768)
    manifest = json.loads(files["concept.json"])
    assert manifest["tensor_sha256"] == info.tensor_sha256
    assert manifest["training_runs"][0]["config"] == {"lr": 0.005, "steps": 10}
    assert manifest["previews"][0]["path"] == "previews/sample-0.png"
    # commit id recorded as sync state
    syncs = lib.syncs("cat-toy")
    assert [(s.repo_id, s.commit_sha, s.direction) for s in syncs] == [
        ("alice/cat-toy", hub.head("alice/cat-toy"), "push")
    ]
    assert result.commit == hub.head("alice/cat-toy")


def test_card_metadata(hub, lib, emb_factory):
    _add(
        lib,
        emb_factory,
        name="neg-thing",
        kind="negative",
        tags=["anime"],
        license="CreativeML Open RAIL-M",
    )
    hubmod.push(lib, "neg-thing", repo_id="alice/neg-thing")
    from conceptlib.registry.hub.card import split_front_matter

    card = hub.files("alice/neg-thing")["README.md"].decode()
    meta, body = split_front_matter(card)
    assert meta["library_name"] == "diffusers"
    assert "base_model" not in meta  # the tiny test model is no Hub repo
    # user and sidecar text is Markdown-escaped in the card: check it as the Hub shows it
    from markdown_it import MarkdownIt

    assert "conceptlib/tiny-sd1" in MarkdownIt("commonmark").enable("table").render(body)
    assert meta["license"] == "other" and meta["license_name"] == "creativeml-open-rail-m"
    for tag in ("textual-inversion", "sd1", "negative", "negative-embedding", "anime"):
        assert tag in meta["tags"]
    assert "load_textual_inversion" in body and 'negative_prompt="<neg-thing>"' in body
    assert "stable-diffusion-webui/embeddings" in body and "embedding:neg-thing" in body
    assert "license:other" in hub.tags("alice/neg-thing")


def test_sdxl_push_writes_clip_l_and_clip_g(hub, lib, emb_factory):
    _add(lib, emb_factory, name="neon-xl", family="sdxl", n=2, seed=3)
    hubmod.push(lib, "neon-xl", repo_id="alice/neon-xl")
    from conceptlib.registry.formats.safetensors_io import read_safetensors

    files = hub.files("alice/neon-xl")
    tensors, _ = read_safetensors(files["learned_embeds.safetensors"])
    assert sorted(tensors) == ["clip_g", "clip_l"]
    assert tensors["clip_g"].shape == (2, 1280)
    assert 'state["clip_g"]' in files["README.md"].decode()


def test_unchanged_push_makes_no_commit(hub, lib, emb_factory):
    _add(lib, emb_factory)
    first = hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    commits = hub.commit_count("alice/cat-toy")
    hub.reset_log()
    again = hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    assert again.status == "unchanged" and not again.committed
    assert again.commit == first.commit
    assert hub.commit_count("alice/cat-toy") == commits
    assert hub.count("POST") == 0  # not even a preupload
    assert len(lib.syncs("cat-toy")) == 1  # no duplicate sync rows


def test_changed_concept_updates_and_removes_stale_previews(hub, lib, emb_factory):
    _add(lib, emb_factory)
    hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    lib.tag("cat-toy", add=["cute"])
    lib.add_previews("cat-toy", [Preview("grid.png", b"\x89PNG grid", "grid")])
    result = hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy", message="more tags")
    assert result.status == "updated"
    assert set(result.changed) >= {"concept.json", "README.md", "previews/grid.png"}
    assert "learned_embeds.safetensors" not in result.changed
    assert "cute" in json.loads(hub.files("alice/cat-toy")["concept.json"])["tags"]


def test_default_repo_is_under_the_token_owner(hub, lib, emb_factory):
    _add(lib, emb_factory, name="Cat Toy".replace(" ", "-"))
    result = hubmod.push(lib, "Cat-Toy")
    assert result.repo_id == "alice/Cat-Toy"


def test_private_push(hub, lib, emb_factory, monkeypatch):
    _add(lib, emb_factory)
    hubmod.push(lib, "cat-toy", repo_id="alice/secret", private=True)
    assert hub.repos["alice/secret"].private
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setattr(hub_settings, "resolve_token", lambda: None)
    from conceptlib.errors import HubNotFound

    with pytest.raises(HubNotFound, match="private"):
        hubmod.pull(lib, "alice/secret")


def test_moved_branch_fails_instead_of_overwriting(hub, lib, emb_factory):
    _add(lib, emb_factory)
    hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    # someone else commits to the repo
    hub.commit("alice/cat-toy", {"README.md": b"edited on the web\n"}, author="bob")
    moved = hub.head("alice/cat-toy")
    lib.tag("cat-toy", add=["changed"])
    with pytest.raises(HubConflict, match="moved since the last sync") as ei:
        hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    assert ei.value.hint and "--force" in ei.value.hint
    assert hub.head("alice/cat-toy") == moved
    assert hub.files("alice/cat-toy")["README.md"] == b"edited on the web\n"
    forced = hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy", force=True)
    assert forced.status == "updated"


def test_branch_moving_during_the_push_is_refused_by_parent_commit(
    hub, lib, emb_factory, monkeypatch
):
    _add(lib, emb_factory)
    hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    lib.tag("cat-toy", add=["changed"])
    real_state = hub_session._Session.state

    def state_then_race(self, repo_id, revision="main"):
        st = real_state(self, repo_id, revision)
        hub.commit(repo_id, {"other.txt": b"x"}, author="bob")  # lands after our read
        return st

    monkeypatch.setattr(hub_session._Session, "state", state_then_race)
    with pytest.raises(HubConflict, match="moved while pushing"):
        hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    assert "other.txt" in hub.files("alice/cat-toy")


def test_read_only_token_is_refused_clearly(hub, lib, emb_factory, monkeypatch):
    _add(lib, emb_factory)
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    with pytest.raises(HubAuthError, match="read-only"):
        hubmod.push(lib, "cat-toy")
    with pytest.raises(HubAuthError, match="403") as ei:
        hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    assert "write access" in (ei.value.hint or "")
    assert READ_TOKEN not in str(ei.value) + (ei.value.hint or "")


def test_bad_token_and_no_token(hub, lib, emb_factory, monkeypatch):
    _add(lib, emb_factory)
    monkeypatch.setenv("HF_TOKEN", "hf_notAValidTokenZZZZZZZZZZZZZZZZ")
    with pytest.raises(HubAuthError, match="401") as ei:
        hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    assert "hf_notAValidToken" not in str(ei.value)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(hub_settings, "resolve_token", lambda: None)
    with pytest.raises(HubAuthError, match="no Hub token"):
        hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")


def test_push_to_a_namespace_without_rights(hub, lib, emb_factory):
    _add(lib, emb_factory)
    with pytest.raises(HubAuthError, match="403"):
        hubmod.push(lib, "cat-toy", repo_id="bob/cat-toy")


def test_token_from_the_clients_stored_login(hub, lib, emb_factory, monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    _add(lib, emb_factory)
    stored = tmp_path / "token"
    stored.write_text("stored-login-token-123\n")
    hub.add_user("alice", "stored-login-token-123")
    monkeypatch.delenv("HF_TOKEN")
    # the client computes this path from HF_HOME once, at import
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(stored))
    assert hubmod.resolve_token() == "stored-login-token-123"
    assert hubmod.push(lib, "cat-toy").repo_id == "alice/cat-toy"


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny-models")


@pytest.mark.timeout(180)
def test_diffusers_load_textual_inversion_reads_a_pushed_repo(
    hub, lib, emb_factory, tiny_cache, tmp_path
):
    import numpy as np
    from huggingface_hub import snapshot_download

    from conceptlib.models.tiny import load_tiny

    emb = emb_factory("sd1", 2, 21)
    lib.add_embedding(emb, name="cat-toy", token="<cat-toy>", kind="object")
    hubmod.push(lib, "cat-toy", repo_id="alice/cat-toy")
    folder = snapshot_download("alice/cat-toy", endpoint=hub.url, cache_dir=str(tmp_path / "c"))
    pipe = load_tiny("tiny-sd1", cache_dir=tiny_cache)
    pipe.load_textual_inversion(folder)  # finds learned_embeds.safetensors, token from the key
    ids = pipe.tokenizer.convert_tokens_to_ids(["<cat-toy>", "<cat-toy>_1"])
    rows = pipe.text_encoder.get_input_embeddings().weight[ids].detach().numpy()
    assert np.allclose(rows, emb.vectors["clip_l"])


@pytest.mark.timeout(180)
def test_mixed_case_token_is_pushed_in_the_tokenizers_form(
    hub, lib, emb_factory, tiny_cache, tmp_path
):
    """learned_embeds key, token_identifier.txt and the card's snippet carry the token as
    CLIP's tokenizer sees the prompt; concept.json and the catalog keep it as typed; and
    diffusers' load_textual_inversion on the repo then uses all 3 vectors."""
    import numpy as np
    from huggingface_hub import snapshot_download

    from conceptlib.models.tiny import load_tiny
    from conceptlib.registry.formats.safetensors_io import read_safetensors

    emb = emb_factory("sd1", 3, 22)
    lib.add_embedding(emb, name="BadHandV4", token="BadHandV4", kind="negative")
    hubmod.push(lib, "BadHandV4", repo_id="alice/badhand")
    files = hub.files("alice/badhand")
    assert files["token_identifier.txt"] == b"badhandv4"
    tensors, _ = read_safetensors(files["learned_embeds.safetensors"])
    assert list(tensors) == ["badhandv4"]
    assert json.loads(files["concept.json"])["token"] == "BadHandV4"
    assert 'negative_prompt="badhandv4"' in files["README.md"].decode()
    folder = snapshot_download("alice/badhand", endpoint=hub.url, cache_dir=str(tmp_path / "c"))
    pipe = load_tiny("tiny-sd1", cache_dir=tiny_cache)
    pipe.load_textual_inversion(folder)
    text = pipe.maybe_convert_prompt("a hand, badhandv4", pipe.tokenizer)
    ids = pipe.tokenizer(text).input_ids
    added = pipe.tokenizer.convert_tokens_to_ids(["badhandv4", "badhandv4_1", "badhandv4_2"])
    assert [i for i in ids if i in added] == added
    rows = pipe.text_encoder.get_input_embeddings().weight[added].detach().numpy()
    assert np.allclose(rows, emb.vectors["clip_l"])
    # pulled back, the catalog has the token as typed
    lib.remove("BadHandV4")
    hubmod.pull(lib, "alice/badhand")
    assert lib.get("BadHandV4").token == "BadHandV4"

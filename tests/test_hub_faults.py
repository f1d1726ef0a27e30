"""bad-inputs.md 30-36 against the loopback Hub: every failure is typed, bounded, and leaves
the catalog and the store exactly as they were."""

from __future__ import annotations

import time

import pytest
from hub_fixtures import (  # noqa: F401 - fixtures
    hub_fixture,
    hub_server_fixture,
    other_library_fixture,
    safetensors_bytes,
    seed_sd_concepts,
)

from conceptlib.errors import (
    HubAuthError,
    HubIntegrityError,
    HubUnavailable,
    HubUnsafePath,
)
from conceptlib.registry import hub as hubmod
from conceptlib.registry.hub import session as hub_session

pytestmark = pytest.mark.timeout(60)

REPO = "sd-concepts-library/cat-toy"


@pytest.fixture
def seeded(hub, emb_factory):
    emb = emb_factory("sd1", 2, 7)
    seed_sd_concepts(hub, REPO, emb, fmt="safetensors")
    hub.reset_log()
    return emb


@pytest.fixture
def unchanged(lib, catalog_snapshot, _isolated_home):
    """Assert, after the test body, that the catalog and the store did not change."""
    before = catalog_snapshot(_isolated_home)
    yield
    assert catalog_snapshot(_isolated_home) == before


def _downloads(server) -> int:
    return server.count(None, "/resolve/")


@pytest.mark.parametrize(
    "bad",
    [
        "../x.safetensors",
        "/etc/x.safetensors",
        "C:\\evil.pt",
        "\\\\server\\share\\x.pt",
        "a/../../x.bin",
        "ok/./x.pt",
        "con.pt",
    ],
)
def test_unsafe_remote_names_are_refused_before_any_download(hub, lib, unchanged, bad, emb_factory):
    vec = emb_factory("sd1", 1, 1).vectors["clip_l"]
    hub.commit("evil/repo", {"good.safetensors": safetensors_bytes({"emb_params": vec}), bad: b"x"})
    hub.reset_log()
    with pytest.raises(HubUnsafePath) as ei:
        hubmod.pull(lib, "evil/repo")
    assert repr(bad) in str(ei.value) and "nothing was downloaded" in ei.value.hint
    assert _downloads(hub) == 0


def test_altered_bytes_are_caught_and_the_bad_copy_discarded(
    other_library, hub, lib, seeded, unchanged
):
    hub.inject("alter", method="GET", path=r"/resolve/.*learned_embeds", times=None)
    with pytest.raises(HubIntegrityError, match="blob id .* differs") as ei:
        hubmod.pull(lib, REPO)
    assert "nothing was registered" in str(ei.value)
    hub.clear_faults()
    # the cache kept nothing bad: a clean pull now works (checked in a fresh library)
    other = other_library("other")
    assert hubmod.pull(other, REPO).status == "pulled"


def test_altered_once_is_downloaded_again(hub, lib, seeded):
    hub.inject("alter", method="GET", path=r"/resolve/.*learned_embeds", times=1)
    out = hubmod.pull(lib, REPO)
    assert out.status == "pulled"
    assert lib.get("cat-toy").tensor_sha256 == seeded.tensor_sha256
    assert hub.count("GET", r"/resolve/.*learned_embeds") == 2


def test_truncated_body_is_resumed_and_verified(hub, lib, seeded):
    hub.inject("truncate", method="GET", path=r"/resolve/.*learned_embeds", times=1)
    out = hubmod.pull(lib, REPO)
    assert out.status == "pulled"
    assert lib.get("cat-toy").tensor_sha256 == seeded.tensor_sha256
    assert hub.count("GET", r"/resolve/.*learned_embeds") == 2  # cut, then resumed


def test_truncated_body_and_a_server_ignoring_range(hub, lib, seeded):
    hub.inject("truncate", method="GET", path=r"/resolve/.*learned_embeds", times=1)
    hub.inject("ignore_range", method="GET", path=r"/resolve/.*learned_embeds", times=None)
    assert hubmod.pull(lib, REPO).status == "pulled"
    assert lib.get("cat-toy").tensor_sha256 == seeded.tensor_sha256


def test_short_body_every_time_is_a_clear_error(hub, lib, seeded, unchanged):
    hub.inject("short", method="GET", path=r"/resolve/.*learned_embeds", times=None)
    with pytest.raises(HubIntegrityError, match="cut short|bytes"):
        hubmod.pull(lib, REPO)


def test_429_with_retry_after_is_retried(hub, lib, seeded):
    hub.inject("status", status=429, retry_after=0, method="GET", path=r"^/api/models/", times=2)
    assert hubmod.pull(lib, REPO).status == "pulled"
    assert hub.count("GET", r"^/api/models/") == 3


def test_429_on_a_download_is_retried(hub, lib, seeded):
    hub.inject(
        "status", status=429, retry_after=0, method="GET", path=r"/resolve/.*learned", times=1
    )
    assert hubmod.pull(lib, REPO).status == "pulled"


def test_repeated_5xx_gives_up_after_bounded_backoff(hub, lib, seeded, unchanged):
    hub.inject("status", status=503, method="GET", path=r"^/api/models/", times=None)
    started = time.monotonic()
    with pytest.raises(HubUnavailable, match="HTTP 503.*after 3 attempts") as ei:
        hubmod.pull(lib, REPO)
    assert time.monotonic() - started < 10
    assert hub.count("GET", r"^/api/models/") == 3
    assert "CONCEPTLIB_HUB_RETRIES" in ei.value.hint


def test_backoff_honours_retry_after_up_to_the_cap(hub, lib, seeded, monkeypatch):
    monkeypatch.setenv("CONCEPTLIB_HUB_MAX_WAIT", "0.3")
    monkeypatch.setenv("CONCEPTLIB_HUB_RETRIES", "1")
    hub.inject("status", status=429, retry_after=30, method="GET", path=r"^/api/models/", times=1)
    started = time.monotonic()
    assert hubmod.pull(lib, REPO).status == "pulled"
    assert 0.25 < time.monotonic() - started < 10


def test_unreachable_hub(hub, lib, unchanged, monkeypatch):
    from hub_fixtures import _free_port

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(HubUnavailable, match="cannot reach"):
        hubmod.pull(lib, REPO)


def test_bad_token_on_pull(hub, lib, seeded, unchanged, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_wrongTokenWWWWWWWWWWWWWWWWWW")
    with pytest.raises(HubAuthError, match="401") as ei:
        hubmod.pull(lib, REPO)
    assert "hf_wrong" not in str(ei.value)


def test_private_repo_of_someone_else(hub, lib, unchanged, emb_factory):
    seed_sd_concepts(hub, "bob/secret", emb_factory("sd1", 1, 1))
    hub.repos["bob/secret"].private = True
    from conceptlib.errors import HubNotFound

    with pytest.raises(HubNotFound, match="private"):
        hubmod.pull(lib, "bob/secret")


def test_listed_size_differs_from_bytes(hub, lib, seeded, unchanged, monkeypatch):
    # The listing says one size, HEAD/GET serve another: refused on the listing's word.
    real_state = hub_session._Session.state

    def lying_state(self, repo_id, revision="main"):
        st = real_state(self, repo_id, revision)
        st.files["learned_embeds.safetensors"].size += 4
        return st

    monkeypatch.setattr(hub_session._Session, "state", lying_state)
    with pytest.raises(HubIntegrityError, match="listed"):
        hubmod.pull(lib, REPO)

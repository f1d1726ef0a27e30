"""``conceptlib civitai info`` and ``pull civitai:`` / ``pull urn:air:`` against a loopback
Civitai-compatible server (tests/civitaiserver.py), with its faults."""

from __future__ import annotations

import io
import json
import time

import pytest
from civitaiserver import CivitaiServer
from click.testing import CliRunner
from conftest import make_embedding, snapshot

from conceptlib.cli import main as climain
from conceptlib.registry.civitai import air_of, civitai_info, parse_spec
from conceptlib.registry.formats.write import write_embedding
from conceptlib.registry.library import Library

pytestmark = pytest.mark.timeout(120)

TOKEN = "civitai-canary-Secret-9f2e"


def png(w: int = 8, h: int = 8, color: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (color, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


def emb_file(seed: int, name: str = "easynegative") -> bytes:
    ((_, data),) = write_embedding(
        make_embedding("sd1", 2, seed), "safetensors", name=name, token=name
    ).items()
    return data


@pytest.fixture
def server(monkeypatch):
    s = CivitaiServer().start()
    monkeypatch.setenv("CONCEPTLIB_CIVITAI_ENDPOINT", s.url)
    monkeypatch.setenv("CONCEPTLIB_CIVITAI_BACKOFF", "0.01")
    monkeypatch.setenv("CONCEPTLIB_CIVITAI_MAX_WAIT", "0.05")
    monkeypatch.setenv("CONCEPTLIB_CIVITAI_TIMEOUT", "5")
    monkeypatch.setenv("CIVITAI_API_TOKEN", TOKEN)
    yield s
    s.stop()


@pytest.fixture
def cli():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(climain.cli, list(args), catch_exceptions=True)

    return invoke


def imported(home, tmp_path, data: bytes, stem: str) -> str:
    f = tmp_path / f"{stem}.safetensors"
    f.write_bytes(data)
    with Library.open(home) as lib:
        report = lib.import_paths([f])
        return report.outcomes[0].name


def no_token_leak(server, result) -> None:
    assert TOKEN not in result.output
    for r in server.requests:
        if r.authorization:  # only the configured endpoint's API ever gets it
            assert r.authorization == f"Bearer {TOKEN}" and r.path.startswith("/api/")


# --------------------------------------------------------------------------- info


def test_info_fills_missing_fields_and_lists_unknown(server, cli, tmp_path, _isolated_home):
    data = emb_file(1)
    server.add_version(
        data, model_id=7808, version_id=9208, images={"a.png": png(), "b.png": png(color=30)}
    )
    name = imported(_isolated_home, tmp_path, data, "easynegative")
    other = imported(_isolated_home, tmp_path, emb_file(2, "mystery"), "mystery-thing")
    r = cli("civitai", "info", name, other)
    assert r.exit_code == 0, r.output
    assert "urn:air:sd1:embedding:civitai:7808@9208" in r.output
    assert "unknown to Civitai: mystery-thing" in r.output
    no_token_leak(server, r)
    with Library.open(_isolated_home) as lib:
        e = lib.get(name)
        assert e.base_model == "SD 1.5"
        assert e.description == "A negative embedding."  # HTML stripped, never kept
        assert e.extra["trained_words"] == ["easynegative"]
        assert {"negative", "embedding"} <= set(e.tags)
        c = e.extra["civitai"]
        assert (c["model_id"], c["version_id"], c["model_name"]) == (7808, 9208, "EasyNegative")
        assert c["air"] == "urn:air:sd1:embedding:civitai:7808@9208"
        assert c["license"]["allowCommercialUse"] == ["Image", "Rent"]
        assert c["license"]["allowDifferentLicense"] is False
        assert set(c["filled"]) >= {"description", "base_model", "trained_words", "tags"}
        assert len(e.previews) == 2
        assert lib.get(other).extra.get("civitai") is None
    # show displays the Civitai record
    r = cli("show", name)
    assert r.exit_code == 0 and "7808@9208" in r.output
    # a second run adds nothing (same previews, same fields)
    before = snapshot(_isolated_home)
    r = cli("civitai", "info", name, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["outcomes"][0]["status"] == "unchanged"
    assert snapshot(_isolated_home)[1] == before[1]


def test_info_keeps_what_the_catalog_has(server, tmp_path, _isolated_home):
    data = emb_file(3)
    server.add_version(data, model_id=1, version_id=2, images={})
    name = imported(_isolated_home, tmp_path, data, "my-neg")
    with Library.open(_isolated_home) as lib:
        lib.update(name, description="mine", base_model="my-base", trigger_words=["mine"])
        report = civitai_info(lib, [name], previews=0)
        e = lib.get(name)
    assert report.outcomes[0].status == "updated"
    assert (e.description, e.base_model, e.extra["trained_words"]) == ("mine", "my-base", ["mine"])
    assert e.extra["civitai"]["filled"] == ["tags"]


def test_info_retries_429_and_500_bounded(server, cli, tmp_path, _isolated_home):
    data = emb_file(4)
    server.add_version(data, model_id=5, version_id=6, images={})
    name = imported(_isolated_home, tmp_path, data, "retry-me")
    server.inject(
        "status",
        "/api/v1/model-versions/by-hash",
        status=429,
        times=2,
        headers={"Retry-After": "3600"},
    )  # capped by CONCEPTLIB_CIVITAI_MAX_WAIT
    server.inject("status", "/api/v1/models/", status=500, times=1)
    t0 = time.monotonic()
    r = cli("civitai", "info", name, "--previews", "0")
    assert r.exit_code == 0, r.output
    assert time.monotonic() - t0 < 20
    assert server.count("/api/v1/model-versions/by-hash") == 3


def test_info_gives_up_after_bounded_retries_and_changes_nothing(
    server, cli, tmp_path, _isolated_home, monkeypatch
):
    monkeypatch.setenv("CONCEPTLIB_CIVITAI_RETRIES", "2")
    data = emb_file(5)
    server.add_version(data, model_id=5, version_id=6, images={})
    name = imported(_isolated_home, tmp_path, data, "always-busy")
    server.inject("status", "/api/v1/model-versions/by-hash", status=503, times=100)
    before = snapshot(_isolated_home)
    r = cli("civitai", "info", name)
    assert r.exit_code == 9
    assert "kept answering HTTP 503" in r.output and "after 3 attempts" in r.output
    assert server.count("/api/v1/model-versions/by-hash") == 3
    assert snapshot(_isolated_home) == before
    no_token_leak(server, r)


@pytest.mark.parametrize(
    "kind, kw, code, message",
    [
        ("body", {"body": b"<html><body>Cloudflare</body></html>"}, 1, "not JSON"),
        # cut short twice: the service is failing, the whole command stops (exit 9)
        ("truncate", {"times": 5}, 9, "cut short"),
        ("huge", {"size": 6 * 1024 * 1024}, 1, "larger than"),
        ("body", {"body": b"[" * 5000}, 1, "nested deeper"),
        ("body", {"body": b'{"id": "x", "modelId": 3}'}, 1, "not a Civitai id"),
    ],
)
def test_info_bad_replies_change_nothing(
    server, cli, tmp_path, _isolated_home, kind, kw, code, message
):
    data = emb_file(6)
    server.add_version(data, model_id=5, version_id=6, images={"a.png": png()})
    name = imported(_isolated_home, tmp_path, data, "bad-reply")
    server.inject(kind, "/api/v1/model-versions/by-hash", **kw)
    before = snapshot(_isolated_home)
    r = cli("civitai", "info", name)
    assert r.exit_code == code, r.output  # 1: this entry failed, the command went on
    assert message in r.output
    assert ("bad-reply: failed:" in r.output) == (code == 1)
    assert snapshot(_isolated_home) == before


def test_info_skips_previews_that_are_not_images(server, tmp_path, _isolated_home):
    data = emb_file(7)
    server.add_version(
        data,
        model_id=5,
        version_id=6,
        images={"fake.png": b"<html>not an image</html>", "real.png": png()},
    )
    name = imported(_isolated_home, tmp_path, data, "pics")
    with Library.open(_isolated_home) as lib:
        report = civitai_info(lib, [name], previews=2)
        e = lib.get(name)
    assert [p.filename for p in e.previews] == ["civitai-6-2.png"]
    assert any("not a readable image" in n for n in report.outcomes[0].notes)


def test_info_html_description_is_text_and_escaped(server, cli, tmp_path, _isolated_home):
    data = emb_file(8)
    server.add_version(
        data,
        model_id=5,
        version_id=6,
        images={},
        description="<script>x</script><p>[bold red]Hi[/] &amp; \x1b[31mred</p>",
        trained_words=["\x1b]0;evil\x07word"],
    )
    name = imported(_isolated_home, tmp_path, data, "htmlish")
    r = cli("civitai", "info", name, "--previews", "0")
    assert r.exit_code == 0, r.output
    with Library.open(_isolated_home) as lib:
        e = lib.get(name)
    assert "<" not in e.description and "\x1b" not in e.description and "&amp;" not in e.description
    assert "\x1b" not in e.extra["trained_words"][0]
    r = cli("show", name)
    assert r.exit_code == 0 and "\x1b" not in r.output and "[bold red]Hi[/]" in r.output


def test_info_usage_errors(server, cli, _isolated_home):
    r = cli("civitai", "info")
    assert r.exit_code == 2 and "NAMEs or --all" in r.output
    r = cli("civitai", "info", "no-such-entry")
    assert r.exit_code == 6
    assert server.requests == []


def test_token_goes_to_the_endpoint_only(server, cli, tmp_path, _isolated_home):
    # images named on another origin (localhost instead of 127.0.0.1) get no token
    data = emb_file(9)
    v = server.add_version(data, model_id=5, version_id=6, images={"a.png": png()})
    v["images"][0]["url"] = v["images"][0]["url"].replace("127.0.0.1", "localhost")
    name = imported(_isolated_home, tmp_path, data, "tok")
    r = cli("--debug", "civitai", "info", name)
    assert r.exit_code == 0, r.output
    img = [x for x in server.requests if x.path.startswith("/images/")]
    assert img and all(x.authorization is None for x in img)
    api = [x for x in server.requests if x.path.startswith("/api/")]
    assert api and all(x.authorization == f"Bearer {TOKEN}" for x in api)
    no_token_leak(server, r)


# --------------------------------------------------------------------------- pull


def test_pull_by_version_id_and_air(server, cli, _isolated_home):
    data = emb_file(10)
    server.add_version(data, model_id=7808, version_id=9208, images={"a.png": png()})
    r = cli("pull", "civitai:9208")
    assert r.exit_code == 0, r.output
    assert "pulled easynegative from urn:air:sd1:embedding:civitai:7808@9208" in r.output
    with Library.open(_isolated_home) as lib:
        e = lib.get("easynegative")
        assert e.source == "civitai"
        assert e.source_ref == "urn:air:sd1:embedding:civitai:7808@9208"
        assert e.kind == "negative" and e.base_model == "SD 1.5"
        assert e.extra["civitai"]["version_id"] == 9208 and len(e.previews) == 1
        import hashlib

        assert e.file_sha256 == hashlib.sha256(data).hexdigest()
    r = cli("pull", "urn:air:sd1:embedding:civitai:7808@9208", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"] == "present"
    no_token_leak(server, r)


def test_pull_air_without_version_takes_the_newest(server, cli, _isolated_home):
    server.add_version(emb_file(11), model_id=42, version_id=43, images={})
    r = cli("pull", "urn:air:sd1:embedding:civitai:42", "--name", "answer-neg")
    assert r.exit_code == 0, r.output
    with Library.open(_isolated_home) as lib:
        assert lib.get("answer-neg").extra["civitai"]["version_id"] == 43


@pytest.mark.parametrize(
    "setup, spec, code, message",
    [
        ("alter", "civitai:9208", 9, "differs from the listed"),
        ("nohash", "civitai:9208", 9, "lists no SHA-256"),
        ("lora", "civitai:9208", 9, "not a textual-inversion embedding"),
        ("none", "civitai:1234", 9, "no model version 1234"),
        ("none", "urn:air:sd1:embedding:civitai:999@9208", 9, "belongs to model 7808"),
        ("none", "civitai:abc", 2, "not a Civitai reference"),
        ("notjson", "civitai:9208", 9, "not JSON"),
        ("truncfile", "civitai:9208", 9, "cut short"),
        ("garbage", "civitai:9208", 3, ""),
    ],
)
def test_pull_refusals_register_nothing(server, cli, _isolated_home, setup, spec, code, message):
    data = emb_file(12)
    if setup == "garbage":
        data = b"\x00" * 300  # the listed hash matches, but it is no embedding
    server.add_version(
        data,
        model_id=7808,
        version_id=9208,
        images={"a.png": png()},
        listed_sha256="" if setup == "nohash" else None,
        model_type="LORA" if setup == "lora" else "TextualInversion",
    )
    if setup == "alter":
        server.inject("alter", "/api/download/models/9208", times=3)
    if setup == "notjson":
        server.inject("body", "/api/v1/model-versions/9208", body=b"<html>oops</html>")
    if setup == "truncfile":
        server.inject("truncate", "/api/download/models/9208", times=3)
    before = snapshot(_isolated_home)
    r = cli("pull", spec)
    assert r.exit_code == code, r.output
    assert r.output.startswith("error:") and message in r.output
    assert snapshot(_isolated_home) == before
    no_token_leak(server, r)


def test_parse_spec_and_air():
    assert parse_spec("civitai:9208") == (None, 9208)
    assert parse_spec("urn:air:sdxl:embedding:civitai:1@2") == (1, 2)
    assert air_of("SDXL 1.0", "TextualInversion", 1, 2) == "urn:air:sdxl:embedding:civitai:1@2"
    assert air_of("SD 2.1", "TextualInversion", 1, 2) == "urn:air:sd2:embedding:civitai:1@2"

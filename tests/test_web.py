"""``conceptlib serve``'s web app over HTTP (Starlette's test client): the gallery and its
filters and pages, the concept page, edits (CSRF, refusals that change nothing),
the Host check, the security headers, hostile sidecar text, downloads and runs."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import zipfile
from html.parser import HTMLParser

import pytest
from web_support import XSS_DESCRIPTION, XSS_EVALUATED, XSS_PAYLOADS, build_catalog, png

BASE = "http://127.0.0.1:7861"


@pytest.fixture
def web(lib, tmp_path):
    """(client, library, names) over a small catalog; the app bound to 127.0.0.1:7861."""
    from starlette.testclient import TestClient

    from conceptlib.web.app import create_app

    names = build_catalog(lib, tmp_path / "files")
    with TestClient(create_app(lib), base_url=BASE) as client:
        yield client, lib, names


def sha_of(lib, name: str) -> str:  # noqa: ANN001
    return lib.get(name).tensor_sha256


def card_names(html: str) -> list[str]:
    return re.findall(r'<li class="card" data-name="([^"]*)"', html)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert m, "no CSRF token on the page"
    return m.group(1)


class _Live(HTMLParser):
    """Collects what would run or load in a browser: scripts, event handlers, URLs."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.handlers: list[tuple[str, str]] = []
        self.urls: list[str] = []
        self.tags: list[str] = []
        self._in_script = False
        self.script_text = ""

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self.tags.append(tag)
        d = dict(attrs)
        if tag == "script":
            self.scripts.append(d)
            self._in_script = True
        for k, v in attrs:
            if k.startswith("on"):
                self.handlers.append((tag, k))
            if k in ("href", "src", "action") and v:
                self.urls.append(v)

    def handle_endtag(self, tag):  # noqa: ANN001
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):  # noqa: ANN001
        if self._in_script:
            self.script_text += data


def assert_inert(html: str) -> None:
    """Nothing of the hostile payloads is live: our one script, no handlers, no
    ``javascript:`` URLs, no tags the payloads hold, no template evaluation."""
    p = _Live()
    p.feed(html)
    assert p.scripts == [{"src": "/static/app.js", "defer": None}]
    assert p.script_text == ""
    assert p.handlers == []
    assert not [u for u in p.urls if u.strip().lower().startswith("javascript:")]
    assert "svg" not in p.tags and "b" not in p.tags
    assert XSS_EVALUATED not in html
    for raw in ("<script>window", "<img src=x", "<svg onload", "<b>bold"):
        assert raw not in html


# --------------------------------------------------------------------------- gallery


def test_gallery_lists_every_entry_with_its_facts(web):
    client, lib, _ = web
    res = client.get("/")
    assert res.status_code == 200
    names = card_names(res.text)
    assert names == sorted(e.name for e in lib.list())
    assert len(names) == 9
    assert f'<span id="total">{len(names)}</span>' in res.text
    toy = lib.get("demo-toy")
    assert f'src="/thumb/{toy.tensor_sha256}"' in res.text
    assert '<code class="token">&lt;demo-plush-cat&gt;</code>' in res.text


def test_thumbnails_are_made_once_and_cached_placeholders_name_family_and_kind(web):
    client, lib, _ = web
    toy = lib.get("demo-toy")
    res = client.get(f"/thumb/{toy.tensor_sha256}")
    assert res.status_code == 200 and res.headers["content-type"] == "image/webp"
    cached = list((lib.settings.cache_dir / "thumbs").glob("*.webp"))
    assert len(cached) == 1 and cached[0].read_bytes() == res.content
    from PIL import Image

    with Image.open(io.BytesIO(res.content)) as im:  # the sample (96x96), not the loss curve
        assert im.size == (96, 96) and im.getpixel((10, 10))[:3] == pytest.approx(
            (240, 120, 40), abs=12
        )
    stamp = cached[0].stat().st_mtime_ns
    assert client.get(f"/thumb/{toy.tensor_sha256}").content == res.content
    assert cached[0].stat().st_mtime_ns == stamp  # served from the cache, not made again
    xl = lib.get("demo-neon-city-xl")
    res = client.get(f"/thumb/{xl.tensor_sha256}")
    assert res.headers["content-type"] == "image/svg+xml"
    assert ">SDXL</text>" in res.text and ">style</text>" in res.text


def test_a_preview_too_large_to_decode_gets_the_placeholder(web, emb_factory):
    from PIL import Image

    from conceptlib.schemas.records import Preview
    from conceptlib.web.thumbs import MAX_PIXELS, decode_capped

    client, lib, _ = web
    # A PNG header declaring 8,000 x 8,000 pixels (64 MP): refused before decoding.
    buf = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buf, "PNG")
    big = buf.getvalue()
    assert MAX_PIXELS < 8000 * 8000 and decode_capped(big) is None
    assert decode_capped(b"\x89PNG\r\n\x1a\n not really") is None
    lib.add_embedding(
        emb_factory("sd1", 1, 500), name="big-preview", previews=[Preview("p.png", big)]
    )
    res = client.get(f"/thumb/{sha_of(lib, 'big-preview')}")
    assert res.status_code == 200 and res.headers["content-type"] == "image/svg+xml"


FILTERS = (
    ("q=watercolor", ["demo-watercolor"]),
    ("tag=style", ["demo-hostile", "demo-neon-city-xl", "demo-watercolor", "demo-woodblock"]),
    ("tag=style,japanese", ["demo-woodblock"]),
    ("family=sdxl", ["demo-neon-city-xl"]),
    ("family=sd2", ["demo-stone-golem-sd2"]),
    ("kind=negative", ["demo-negative"]),
    ("source=trained", ["demo-toy"]),
    ("source=blend", ["demo-blend"]),
    ("q=orange&source=trained", ["demo-toy"]),
    ("kind=other&family=sd2", ["demo-stone-golem-sd2"]),
)


def test_filters_narrow_the_gallery(web):
    client, _, _ = web
    for query, expected in FILTERS:
        res = client.get(f"/?{query}")
        assert res.status_code == 200
        assert card_names(res.text) == expected, query


def test_compatible_with_counts_sd1_for_sdxl(web):
    client, lib, _ = web
    names = card_names(client.get("/?compat=sdxl").text)
    assert "demo-neon-city-xl" in names and "demo-watercolor" in names
    assert "demo-stone-golem-sd2" not in names
    assert names == [e.name for e in lib.search(compatible_with="sdxl")]


def test_sort_newest_first(web):
    client, lib, _ = web
    names = card_names(client.get("/?sort=newest").text)
    assert names[0] == "demo-hostile" and names[1] == "demo-blend" and names[2] == "demo-toy"
    assert sorted(names) == sorted(e.name for e in lib.list())
    assert card_names(client.get("/?sort=oldest").text) == names[::-1]


def test_sort_by_clip_scores_and_the_scores_on_the_concept_page(web, emb_factory):
    """Quality scores stored by the trainer (``--clip-model``) sort the gallery, best
    first and unscored last, and show on the concept page."""
    from conceptlib.schemas.records import TrainingRunRecord

    client, lib, _ = web
    for i, (clip_i, clip_t) in enumerate([(0.61, 0.20), (0.83, 0.18), (0.72, 0.31)]):
        run = TrainingRunRecord(config={}, steps=5, clip_i=clip_i, clip_t=clip_t)
        lib.add_embedding(emb_factory(seed=90 + i), name=f"scored-{i}", training_run=run)
    page = client.get("/?sort=clip-i").text
    assert '<option value="clip-i" selected>' in page
    assert card_names(page)[:3] == ["scored-1", "scored-2", "scored-0"]
    assert card_names(client.get("/?sort=clip-t").text)[:3] == ["scored-2", "scored-0", "scored-1"]
    concept = client.get(f"/c/{sha_of(lib, 'scored-1')}").text
    assert '<td class="quality">0.8300 / 0.1800</td>' in concept


def test_bad_filters_are_a_400_page(web):
    client, _, _ = web
    for query, fragment in (
        ("family=sd9", "unknown family &#39;sd9&#39;"),
        ("sort=random", "unknown sort"),
        ("page=0", "page must be a number from 1"),
        ("page=x", "page must be a number from 1"),
    ):
        res = client.get(f"/?{query}")
        assert res.status_code == 400
        assert fragment in res.text and 'id="error"' in res.text


def test_paging_walks_every_entry_once(web, emb_factory):
    from conceptlib.registry.gallery import search_page
    from conceptlib.web.app import PAGE_SIZE

    client, lib, _ = web
    for i in range(PAGE_SIZE + 3 - lib.count()):
        lib.add_embedding(emb_factory("sd1", 1, 5000 + i), name=f"bulk-{i:03d}", tags=("bulk",))
    total = lib.count()
    assert total == PAGE_SIZE + 3
    first = client.get("/")
    assert "page 1 of 2" in first.text and 'rel="next" href="/?page=2"' in first.text
    second = client.get("/?page=2")
    assert len(card_names(first.text)) == PAGE_SIZE and len(card_names(second.text)) == 3
    assert card_names(first.text) + card_names(second.text) == sorted(e.name for e in lib.list())
    assert card_names(client.get("/?page=9").text) == []  # past the end: empty, not an error
    # Filters survive paging.
    res = client.get("/?family=sd1&sort=newest&page=1")
    assert 'href="/?family=sd1&amp;sort=newest&amp;page=2"' in res.text
    # The library call behind it: order and offset.
    seen = []
    for n in range(1, 100):
        page = search_page(lib, order="newest", page=n, size=7)
        assert page.total == total
        if not page.items:
            break
        seen += [e.name for e in page.items]
    assert seen == [e.name for e in sorted(lib.list(), key=lambda e: e.id, reverse=True)]


def test_gallery_links_to_runs_in_progress(web):
    client, lib, _ = web
    assert "in progress" not in client.get("/").text
    _write_checkpoint(lib.settings.runs_dir / "cat-toy", step=30, steps=100)
    assert '<a href="/runs">1 training run in progress</a>' in client.get("/").text


# --------------------------------------------------------------------------- concept page


def test_concept_page_shows_previews_loss_curve_provenance_and_hashes(web):
    client, lib, _ = web
    toy = lib.get("demo-toy")
    res = client.get(f"/c/{toy.tensor_sha256}")
    assert res.status_code == 200
    html = res.text
    assert '<h1 id="name">demo-toy</h1>' in html
    m = re.search(r'<img src="(/c/[0-9a-f]{64}/preview/\d+)" alt="loss.png" id="loss-curve">', html)
    assert m
    curve = client.get(m.group(1))
    assert curve.headers["content-type"] == "image/png"
    assert curve.content == lib.preview_path(toy, "loss.png").read_bytes()
    assert "Sample grids" in html and "Samples" in html and "samples.png" in html
    for value in (
        toy.tensor_sha256,
        toy.file_sha256,
        toy.a1111_hash,
        toy.autov2,
        "tiny-sd1:abc123",
        "ab" * 32,
    ):
        assert value in html
    assert f'data-copy="{toy.a1111_hash}"' in html and f'data-copy="{toy.autov2}"' in html
    assert "training run #" in html and "final loss 0.04210" in html
    assert "<th>lr</th><td>0.005</td>" in html and "<th>batch</th><td>4</td>" in html
    assert "Never pushed or pulled" in html


def test_use_it_panel_has_each_uis_snippet_and_downloads(web):
    client, lib, _ = web
    cat = lib.get("demo-plush-cat")  # token <demo-plush-cat>
    html = client.get(f"/c/{cat.tensor_sha256}").text
    snippets = dict(re.findall(r'<tr id="use-(\w+)">.*?data-copy="([^"]*)"', html, re.S))
    assert snippets["a1111"] == "demo-plush-cat"
    assert snippets["comfyui"] == "embedding:demo-plush-cat"
    assert snippets["invokeai"] == "&lt;demo-plush-cat&gt;"
    assert "load_textual_inversion(&#34;demo-plush-cat.safetensors&#34;" in snippets["diffusers"]
    assert "token=&#34;&lt;demo-plush-cat&gt;&#34;" in snippets["diffusers"]
    formats = re.findall(r'href="/c/[0-9a-f]{64}/export/([\w-]+)" download', html)
    assert formats == ["a1111-pt", "safetensors", "diffusers", "invokeai"]
    xl = client.get(f"/c/{sha_of(lib, 'demo-neon-city-xl')}").text
    assert re.findall(r'/export/([\w-]+)" download', xl) == [
        "safetensors",
        "diffusers",
        "sdxl",
        "invokeai",
    ]
    assert "text_encoder=pipe.text_encoder_2" in xl


def test_negative_embedding_snippets_say_negative_prompt(web):
    client, lib, _ = web
    html = client.get(f"/c/{sha_of(lib, 'demo-negative')}").text
    assert "type it in the negative prompt" in html
    assert "negative_prompt=&#34;demo-negative&#34;" in html


def test_blend_page_links_its_parents_and_hub_sync_is_shown(web):
    from conceptlib.schemas.records import SyncInfo

    client, lib, _ = web
    lib.record_sync("demo-blend", SyncInfo("me/demo-blend", "main", "c0ffee" * 6, "push"))
    html = client.get(f"/c/{sha_of(lib, 'demo-blend')}").text
    for parent in ("demo-watercolor", "demo-woodblock"):
        assert f'<a href="/c/{sha_of(lib, parent)}">{parent}</a>' in html
    assert "weight 0.5" in html
    assert "me/demo-blend@main commit <code>c0ffeec0ffee</code>" in html


def test_unknown_entry_or_preview_is_a_404_page(web):
    client, lib, _ = web
    for url in ("/c/" + "0" * 64, "/c/not-a-hash", "/nowhere", "/thumb/" + "f" * 64):
        res = client.get(url)
        assert res.status_code == 404 and 'id="error"' in res.text, url
    res = client.get(f"/c/{sha_of(lib, 'demo-toy')}/preview/99")
    assert res.status_code == 404 and "has no preview number 99" in res.text


# --------------------------------------------------------------------------- downloads


def test_download_is_what_export_writes(web, tmp_path):
    client, lib, _ = web
    for fmt in ("a1111-pt", "safetensors", "diffusers"):
        res = client.get(f"/c/{sha_of(lib, 'demo-watercolor')}/export/{fmt}")
        assert res.status_code == 200
        (written,) = lib.export("demo-watercolor", fmt, tmp_path / fmt)
        assert res.content == written.read_bytes()
        disposition = res.headers["content-disposition"]
        assert disposition.startswith(f'attachment; filename="{written.name}"')


def test_download_of_a_folder_layout_is_a_zip(web, tmp_path):
    client, lib, _ = web
    res = client.get(f"/c/{sha_of(lib, 'demo-neon-city-xl')}/export/invokeai")
    assert res.status_code == 200 and res.headers["content-type"] == "application/zip"
    written = lib.export("demo-neon-city-xl", "invokeai", tmp_path / "out")
    with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
        got = {n: zf.read(n) for n in zf.namelist()}
    assert got == {p.relative_to(tmp_path / "out").as_posix(): p.read_bytes() for p in written}


def test_download_in_a_format_the_family_cannot_use_is_refused(web):
    client, lib, _ = web
    res = client.get(f"/c/{sha_of(lib, 'demo-neon-city-xl')}/export/a1111-pt")
    assert res.status_code == 400 and "holds one text encoder" in res.text
    res = client.get(f"/c/{sha_of(lib, 'demo-toy')}/export/zip-bomb")
    assert res.status_code == 400 and "unknown export format" in res.text


# --------------------------------------------------------------------------- edits


def post(client, url: str, data: dict, **headers):  # noqa: ANN001, ANN201
    return client.post(url, data=data, headers=headers, follow_redirects=False)


def test_tag_kind_description_and_rename_edits(web):
    client, lib, _ = web
    sha = sha_of(lib, "demo-toy")
    token = csrf_of(client.get(f"/c/{sha}").text)
    res = post(client, f"/c/{sha}/tags", {"csrf": token, "add": "plush, Orange Toy"})
    assert res.status_code == 303 and res.headers["location"] == f"/c/{sha}#tags"
    assert lib.get("demo-toy").tags == ["demo", "orange-toy", "plush"]
    res = post(client, f"/c/{sha}/tags", {"csrf": token, "remove": "demo"})
    assert res.status_code == 303 and lib.get("demo-toy").tags == ["orange-toy", "plush"]
    res = post(
        client, f"/c/{sha}/edit", {"csrf": token, "kind": "style", "description": "quokka\r\nb"}
    )
    assert res.status_code == 303
    info = lib.get("demo-toy")
    assert info.kind == "style" and info.description == "quokka\nb"
    assert card_names(client.get("/?q=concept").text) == []  # the old description is gone
    assert card_names(client.get("/?q=quokka&kind=style").text) == ["demo-toy"]
    res = post(client, f"/c/{sha}/rename", {"csrf": token, "name": "demo-toy-2"})
    assert res.status_code == 303 and res.headers["location"] == f"/c/{sha}"
    assert lib.find("demo-toy") is None and lib.get("demo-toy-2").tensor_sha256 == sha
    page = client.get(f"/c/{sha}").text
    assert '<h1 id="name">demo-toy-2</h1>' in page and "plush" in page


REFUSED_EDITS = (
    ("rename", {"name": "demo-watercolor"}, 409, "already"),
    ("rename", {"name": "bad name/slash"}, 400, "name"),
    ("rename", {"name": ""}, 400, "give the new name"),
    ("tags", {"add": "", "remove": ""}, 400, "nothing to do"),
    ("tags", {"add": "x" * 300}, 400, "tag"),
    ("edit", {"kind": "monster", "description": "demo concept: an orange toy"}, 400, "kind"),
    ("edit", {"kind": "object", "description": "bell \x07"}, 400, "control character"),
    ("edit", {"kind": "object", "description": "demo concept: an orange toy"}, 400, "nothing"),
)


def test_refused_edits_are_error_pages_and_change_nothing(web, catalog_snapshot):
    client, lib, _ = web
    sha = sha_of(lib, "demo-toy")
    token = csrf_of(client.get(f"/c/{sha}").text)
    before = catalog_snapshot(lib.settings.home)
    for path, data, status, fragment in REFUSED_EDITS:
        res = post(client, f"/c/{sha}/{path}", {"csrf": token, **data})
        assert res.status_code == status, (path, data, res.text)
        assert 'id="error"' in res.text and fragment in res.text.lower(), (path, data)
        assert "Nothing in the catalog was changed" in res.text
        assert catalog_snapshot(lib.settings.home) == before, (path, data)


def test_writes_need_the_sessions_csrf_token_a_post_and_this_origin(web, catalog_snapshot):
    client, lib, _ = web
    sha = sha_of(lib, "demo-toy")
    token = csrf_of(client.get(f"/c/{sha}").text)
    before = catalog_snapshot(lib.settings.home)
    url = f"/c/{sha}/tags"
    assert post(client, url, {"add": "x"}).status_code == 400
    assert post(client, url, {"add": "x", "csrf": "0" * 64}).status_code == 400
    res = post(client, url, {"add": "x", "csrf": token}, origin="http://evil.example")
    assert res.status_code == 400 and "another site" in res.text
    assert client.get(url + "?add=x&csrf=" + token).status_code == 405  # no GET writes
    # Another browser (no session cookie, or another one) cannot reuse the token.
    from starlette.testclient import TestClient

    other = TestClient(client.app, base_url=BASE)
    assert post(other, url, {"add": "x", "csrf": token}).status_code == 400
    assert catalog_snapshot(lib.settings.home) == before
    res = post(client, url, {"add": "x", "csrf": token}, origin=BASE)
    assert res.status_code == 303 and "x" in lib.get("demo-toy").tags


def test_session_cookie_is_httponly_and_samesite_strict(web):
    from starlette.testclient import TestClient

    client, _, _ = web
    fresh = TestClient(client.app, base_url=BASE)
    cookie = fresh.get("/").headers["set-cookie"]
    assert cookie.startswith("conceptlib_session=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "set-cookie" not in fresh.get("/").headers  # kept, not renewed


# --------------------------------------------------------------------------- guards


def test_requests_naming_another_host_are_refused(web):
    client, _, _ = web
    for host in (
        "evil.example",
        "evil.example:7861",
        "127.0.0.1:8000",
        "127.0.0.1",
        "",
        "[::1]:7861",
    ):
        res = client.get("/", headers={"host": host})
        assert res.status_code == 400 and "unknown Host header" in res.text, host
        assert "content-security-policy" in res.headers


def test_localhost_names_the_loopback_server_too(web):
    client, _, _ = web
    assert client.get("/", headers={"host": "localhost:7861"}).status_code == 200
    from conceptlib.web.security import allowed_hosts

    assert allowed_hosts("192.168.1.20", 7861) == {"192.168.1.20:7861"}
    assert allowed_hosts("::1", 80) == {"[::1]", "[::1]:80", "localhost", "localhost:80"} | {
        "127.0.0.1",
        "127.0.0.1:80",
    }


def test_every_response_carries_the_content_security_policy(web):
    client, lib, _ = web
    sha = sha_of(lib, "demo-toy")
    for url in ("/", f"/c/{sha}", f"/thumb/{sha}", "/static/app.js", "/runs", "/nowhere"):
        res = client.get(url)
        csp = res.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp, url
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert res.headers["x-content-type-options"] == "nosniff"
        # no-referrer would make browsers send "Origin: null" with forms (refused)
        assert res.headers["referrer-policy"] == "same-origin"


def test_hostile_sidecar_text_is_inert_on_every_page(web):
    client, lib, _ = web
    info = lib.get("demo-hostile")
    assert info.description == XSS_DESCRIPTION
    sha = info.tensor_sha256
    token = csrf_of(client.get(f"/c/{sha}").text)
    # Markup in a tag is refused by the tag rules or stored as text; either way inert.
    post(client, f"/c/{sha}/tags", {"csrf": token, "add": "<b>bold</b>"})
    pages = {
        "gallery": client.get("/"),
        "search": client.get("/", params={"q": XSS_PAYLOADS[0], "tag": XSS_PAYLOADS[1]}),
        "concept": client.get(f"/c/{sha}"),
        "error": client.get("/", params={"family": XSS_PAYLOADS[1]}),
        "bad rename": post(client, f"/c/{sha}/rename", {"csrf": token, "name": XSS_PAYLOADS[0]}),
        "runs": client.get("/runs"),
    }
    for what, res in pages.items():
        assert res.headers["content-type"].startswith("text/html"), what
        assert_inert(res.text)
    concept = pages["concept"].text
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in concept
    assert "{{ 7*191 }}" in concept and "{% raw %}" in concept
    assert "&lt;img src=x onerror=&#34;window.__xss = 4&#34;&gt;" in concept  # base model
    assert 'id="description">&lt;script&gt;' in concept


def test_runs_in_progress_show_step_loss_and_last_sample(web):
    client, lib, _ = web
    assert 'id="no-runs"' in client.get("/runs").text
    folder = lib.settings.runs_dir / "cat-toy"
    _write_checkpoint(folder, step=40, steps=200, losses=[0.5 - i * 0.01 for i in range(40)])
    (folder / "samples").mkdir()
    (folder / "samples" / "step-000020-0.png").write_bytes(png(colour=(1, 2, 3)))
    (folder / "samples" / "step-000040-0.png").write_bytes(png(colour=(4, 5, 6)))
    # A finished run (no checkpoint) and an unreadable checkpoint.
    (lib.settings.runs_dir / "done").mkdir()
    (lib.settings.runs_dir / "broken").mkdir()
    (lib.settings.runs_dir / "broken" / "checkpoint.safetensors").write_bytes(b"\xff" * 20)
    html = client.get("/runs").text
    listed = re.findall(r'<li class="run" data-name="([^"]*)"', html)
    assert sorted(listed) == ["broken", "cat-toy"]  # newest checkpoint first; "done" is not
    assert 'step <span class="step">40</span> of 200' in html
    mean = sum(0.5 - i * 0.01 for i in range(30, 40)) / 10
    assert f'loss <span class="loss">{mean:.5f}</span>' in html
    assert "<polyline points=" in html and "unreadable checkpoint" in html
    res = client.get("/runs/cat-toy/sample")
    assert res.headers["content-type"] == "image/png"
    assert res.content == (folder / "samples" / "step-000040-0.png").read_bytes()
    assert client.get("/runs/done/sample").status_code == 404
    assert client.get("/runs/..%2F..%2Fetc/sample").status_code == 404


def _write_checkpoint(folder, *, step: int, steps: int, losses=None) -> None:  # noqa: ANN001
    """A checkpoint as the trainer writes it (its own writer, torch tensors)."""
    import torch

    from conceptlib.trainer.checkpoint import save_checkpoint

    losses = losses if losses is not None else [0.3] * step
    state = {
        "step": step,
        "vectors": {"clip_l": torch.zeros(1, 768)},
        "losses": torch.tensor(losses, dtype=torch.float32),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "checkpoint.safetensors", state, {"steps": steps, "lr": 0.005})


# --------------------------------------------------------------------------- concurrency


def test_cli_imports_while_the_page_is_open_show_on_reload_and_verify_stays_clean(
    web, tmp_path, emb_factory
):
    from click.testing import CliRunner

    from conceptlib.cli.main import cli
    from conceptlib.registry.formats import write_embedding

    client, lib, _ = web
    before = card_names(client.get("/").text)
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(3):
        ((_, data),) = write_embedding(
            emb_factory("sd1", 1, 900 + i), "safetensors", name=f"late-{i}", token=f"late-{i}"
        ).items()
        (folder / f"late-{i}.safetensors").write_bytes(data)
    res = CliRunner().invoke(cli, ["import", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    after = card_names(client.get("/").text)
    assert sorted(set(after) - set(before)) == ["late-0", "late-1", "late-2"]
    assert card_names(client.get("/?q=late").text) == ["late-0", "late-1", "late-2"]
    res = CliRunner().invoke(cli, ["verify", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["ok"] is True
    assert client.get("/").status_code == 200


# --------------------------------------------------------------------------- the command


def test_serve_refuses_remote_and_wildcard_hosts_without_the_flag():
    from click.testing import CliRunner

    from conceptlib.cli.main import cli

    res = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert res.exit_code == 2
    assert res.stderr.splitlines()[0].startswith("error: --host 0.0.0.0 binds every interface")
    res = CliRunner().invoke(cli, ["serve", "--host", "192.168.1.20"])
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        "error: --host 192.168.1.20 is reachable from other machines, and the page has no login",
        "hint: add --allow-remote to serve it there anyway",
    ]


def test_serve_refuses_a_port_in_use():
    import socket

    from click.testing import CliRunner

    from conceptlib.cli.main import cli

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = CliRunner().invoke(cli, ["serve", "--port", str(port)])
    assert res.exit_code == 2
    lines = res.stderr.splitlines()
    assert lines[0].startswith(f"error: cannot listen on 127.0.0.1:{port}: ")
    assert lines[1] == "hint: choose another --port (or stop what is using it)"


def test_serve_help_and_the_web_app_import_no_torch():
    code = (
        "import sys\n"
        "from conceptlib.cli.main import cli\n"
        "try:\n    cli(['serve', '--help'])\nexcept SystemExit:\n    pass\n"
        "import conceptlib.web.app\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'huggingface_hub') "
        "if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "conceptlib serve --open" in out.stdout
    assert "HEAVY []" in out.stdout

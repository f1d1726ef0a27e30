"""Manifests, JSON Schema files, model cards, layout detection and redaction (no server)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conceptlib.registry.hub import RemoteFile, detect_layout, redact, unsafe_reason
from conceptlib.registry.hub import repos as hub_repos
from conceptlib.registry.hub import settings as hub_settings
from conceptlib.registry.hub.card import (
    parse_card,
    render_card,
    render_library_card,
    split_front_matter,
)
from conceptlib.schemas import manifest as mf

pytestmark = pytest.mark.timeout(60)


def _manifest(**kw) -> mf.ConceptManifest:
    base = dict(
        name="cat-toy",
        token="<cat-toy>",
        kind="object",
        family="sd1",
        num_vectors=2,
        dims=[768],
        tensor_sha256="a" * 64,
        file_sha256="b" * 64,
        embedding={
            "path": "learned_embeds.safetensors",
            "format": "diffusers",
            "sha256": "c" * 64,
            "size": 6200,
        },
        source="trained",
        base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
        license="mit",
        tags=["plush", "toy"],
    )
    base.update(kw)
    return mf.ConceptManifest.model_validate(base)


def test_committed_schema_files_are_current():
    assert mf.stale_schema_files() == []
    for name, doc in mf.schema_documents().items():
        on_disk = json.loads((mf.schema_dir() / name).read_text())
        assert on_disk == doc
        assert on_disk["$schema"].startswith("https://json-schema.org/")


def test_schema_script_check_mode():
    proc = subprocess.run(
        [sys.executable, "-m", "conceptlib.schemas.manifest", "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_manifest_rejects_bad_values():
    from pydantic import ValidationError

    for bad in (
        {"kind": "weird"},
        {"tensor_sha256": "xyz"},
        {"embedding": {"path": "../x", "format": "diffusers", "sha256": "c" * 64, "size": 1}},
        {"num_vectors": 0},
        {"unexpected": 1},
        {"schema_version": 2},
    ):
        with pytest.raises(ValidationError):
            _manifest(**bad)


def test_manifest_bytes_are_deterministic():
    a = _manifest(extra={"z": 1, "a": [1, 2]})
    b = mf.ConceptManifest.model_validate_json(a.to_json_bytes())
    assert a.to_json_bytes() == b.to_json_bytes()
    assert a.to_json_bytes().endswith(b"\n")


def test_card_round_trip_through_yaml():
    m = _manifest(kind="negative", tags=["anime", "hands"])
    card = render_card(m, repo_id="alice/cat-toy")
    meta, body = split_front_matter(card)
    assert meta["library_name"] == "diffusers"
    assert {"textual-inversion", "sd1", "negative", "negative-embedding"} <= set(meta["tags"])
    parsed = parse_card(card.encode())
    assert parsed.kind == "negative"
    assert parsed.tags == ["anime", "hands"]  # generated tags dropped again
    assert parsed.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert parsed.license == "mit"
    for word in ("diffusers", "AUTOMATIC1111", "ComfyUI", "conceptlib pull alice/cat-toy"):
        assert word in body
    assert render_card(m, repo_id="alice/cat-toy") == card


def _html(markdown: str) -> str:
    """The card as the Hub shows it: CommonMark with tables and raw HTML allowed
    (markdown-it-py, the parser rich uses)."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(markdown)


def test_base_model_that_is_not_a_repo_stays_out_of_the_yaml():
    card = render_card(_manifest(base_model="./my-local-sd15"), repo_id="a/b")
    meta, body = split_front_matter(card)
    assert "base_model" not in meta and "<td>./my-local-sd15</td>" in _html(body)


HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    "a | b | c",
    "# heading\n- list\n<iframe src=//x>",
    "&lt;b&gt; `code` *em*",
]


@pytest.mark.parametrize("text", HOSTILE)
def test_user_text_in_a_model_card_renders_as_text(text):
    """Sidecar descriptions, `sd version` and Civitai `baseModel` reach the card: no raw
    HTML, link, heading or table cell may come from them (issue "Hostile inputs")."""
    m = _manifest(description=text, base_model=text, license=text)
    html = _html(split_front_matter(render_card(m, repo_id="a/b"))[1])
    for tag in ("<script", "<img", "<iframe", '<a href="javascript', "<h1>heading", "<li>list"):
        assert tag not in html, tag
    rows = [r for r in html.split("<tr>")[1:] if "<td>" in r]
    assert all(r.count("<td>") == 2 for r in rows)  # a '|' never adds a cell
    assert "a | b | c" in html or "|" not in text  # shown as written


def test_library_card_escapes_names_and_tags():
    from conceptlib.schemas.manifest import LibraryIndex

    index = LibraryIndex.model_validate(
        {"name": "lib", "concepts": [{"name": "x", "token": "<x>", "kind": "object",
                                      "family": "sd1", "path": "concepts/x",
                                      "tags": ["<b>bold</b>"], "tensor_sha256": "a" * 64,
                                      "manifest_sha256": "b" * 64}]}
    )  # fmt: skip
    html = _html(split_front_matter(render_library_card(index, repo_id="a/b", families=["sd1"]))[1])
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html


def test_parse_card_tolerates_junk():
    assert parse_card(b"no yaml here").tags == []
    assert parse_card(b"---\n: : :\n---\nbody").tags == []
    assert parse_card(b"---\ntags: single\nbase_model: [a/b, c/d]\n---\n").base_model == "a/b"


@pytest.mark.parametrize(
    "path",
    [
        "../x",
        "/abs",
        "C:\\x",
        "c:/x",
        "\\\\srv\\share",
        "a//b",
        "a/./b",
        "a/../b",
        "nul",
        "x\x00y",
        "dir/trailing.",
        "",
    ],
)
def test_unsafe_names(path):
    assert unsafe_reason(path) is not None


@pytest.mark.parametrize("path", ["learned_embeds.bin", "a/b/c.safetensors", "previews/x y.png"])
def test_safe_names(path):
    assert unsafe_reason(path) is None


@given(st.text(max_size=40))
def test_a_safe_name_never_escapes(path):
    if unsafe_reason(path) is None:
        import posixpath

        norm = posixpath.normpath(path)
        assert not norm.startswith(("/", "..")) and "\\" not in path


def _files(*names, size=4000):
    return {n: RemoteFile(n, size, "0" * 40) for n in names}


def test_layout_detection():
    assert (
        detect_layout("r", _files("concept.json", "learned_embeds.safetensors")).kind
        == "conceptlib"
    )
    lay = detect_layout(
        "r", _files("learned_embeds.bin", "token_identifier.txt", "type_of_concept.txt")
    )
    assert (lay.kind, lay.embedding, lay.token_file) == (
        "sd-concepts-library",
        "learned_embeds.bin",
        "token_identifier.txt",
    )
    lay = detect_layout(
        "r",
        _files(
            "learned_embeds.safetensors",
            "learned_embeds_2.safetensors",
            "learned_embeds-steps-500.safetensors",
        ),
    )
    assert lay.companion == "learned_embeds_2.safetensors"
    lay = detect_layout("r", _files("EasyNegative.safetensors", "EasyNegative.pt", "README.md"))
    assert (lay.kind, lay.embedding) == ("single-file", "EasyNegative.safetensors")
    lay = detect_layout(
        "r",
        {
            **_files("bad_prompt.pt"),
            **_files(
                "unet/diffusion_pytorch_model.bin",
                "model.safetensors",
                "huge.safetensors",
                size=10**9,
            ),
        },
    )
    assert lay.embedding == "bad_prompt.pt"


def test_redaction():
    hub_settings._remember_secret("s3cret-value")
    assert redact("token s3cret-value and hf_abcdefghijklmnopqrstuv") == "token *** and hf_***"
    assert redact("other", token="other") == "***"


def test_spec_parsing():
    assert hub_repos._parse_spec("sd-concepts-library/cat-toy") == (
        "sd-concepts-library/cat-toy",
        "main",
    )
    assert hub_repos._parse_spec("https://huggingface.co/a/b@v1.0") == ("a/b", "v1.0")
    from conceptlib.errors import UsageError

    for bad in ("cat-toy", "a/b/c", "a--b/c", "../x"):
        with pytest.raises(UsageError):
            hub_repos._parse_spec(bad)


def test_importing_the_hub_modules_stays_light():
    code = (
        "import sys, conceptlib.registry.hub, conceptlib.cli.hub, conceptlib.registry.hub.card;"
        "heavy = [m for m in ('torch', 'huggingface_hub', 'diffusers', 'transformers') "
        "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

"""ModelSpec metadata in exported .safetensors files, and import reading it back (issue 17
item 5): keys as Stability AI's spec names them, str -> str headers the safetensors
package reads, a round trip through a fresh catalog, hostile metadata handled."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from conceptlib.registry.formats.safetensors_io import parse_header, write_safetensors
from conceptlib.registry.library import Library
from conceptlib.registry.modelspec import PROVENANCE_KEY, tensor_data_sha256


def _header(data: bytes) -> dict[str, str]:
    return parse_header(data)[1]


def _add(lib, emb, **kw):
    fields = {
        "name": "neon-style",
        "token": "<Neon-Style>",
        "kind": "negative",
        "source": "trained",
        "base_model": "conceptlib/tiny-sd1",
        "initializer": "neon",
        "training_images_hash": "c" * 64,
        "tags": ["style", "city"],
        "description": "neon city\nsecond line",
        "license": "cc-by-4.0",
    }
    fields.update(kw)
    return lib.add_embedding(emb, **fields)


def _fresh_library(tmp_path, monkeypatch, name="other-home") -> Library:
    monkeypatch.setenv("CONCEPTLIB_HOME", str(tmp_path / name))
    return Library.open()


def test_export_writes_modelspec_keys_and_provenance(tmp_path, emb_factory):
    lib = Library.open()
    info = _add(lib, emb_factory("sd1", 2, 3))
    (path,) = lib.export("neon-style", "safetensors", tmp_path / "out")
    data = path.read_bytes()
    meta = _header(data)
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/textual-inversion"
    assert meta["modelspec.title"] == "neon-style"
    assert meta["modelspec.trigger_phrase"] == "neon-style"  # A1111 triggers the file stem
    assert meta["modelspec.is_negative_embedding"] == "true"
    assert meta["modelspec.description"] == "neon city\nsecond line"
    assert meta["modelspec.tags"] == "city,style"
    assert meta["modelspec.license"] == "cc-by-4.0"
    assert meta["modelspec.date"] == info.created_at
    assert meta["modelspec.hash_sha256"] == "0x" + tensor_data_sha256(data)
    (n,) = struct.unpack("<Q", data[:8])
    assert tensor_data_sha256(data) == hashlib.sha256(data[8 + n :]).hexdigest()
    prov = json.loads(meta[PROVENANCE_KEY])
    assert prov == {
        "schema": 1,
        "name": "neon-style",
        "token": "<Neon-Style>",
        "kind": "negative",
        "family": "sd1",
        "version": 1,
        "tensor_sha256": info.tensor_sha256,
        "base_model": "conceptlib/tiny-sd1",
        "initializer": "neon",
        "training_images_hash": "c" * 64,
    }
    # The header stays small and every value a string: what A1111, ComfyUI and
    # diffusers read through the safetensors package.
    assert n < 2048
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == meta
        np.testing.assert_array_equal(f.get_tensor("emb_params"), lib.load(info).vectors["clip_l"])


@pytest.mark.parametrize(
    ("family", "fmt", "arch", "keys"),
    [
        ("sdxl", "sdxl", "stable-diffusion-xl-v1-base/textual-inversion", {"clip_g", "clip_l"}),
        ("sd2", "safetensors", "stable-diffusion-v2-768-v/textual-inversion", {"emb_params"}),
        ("sd1", "diffusers", "stable-diffusion-v1/textual-inversion", {"<neon-style>"}),
    ],
)
def test_every_safetensors_layout_carries_it(tmp_path, emb_factory, family, fmt, arch, keys):
    lib = Library.open()
    _add(lib, emb_factory(family, 1, 4))
    (path,) = lib.export("neon-style", fmt, tmp_path / "out")
    entries, meta, _ = parse_header(path.read_bytes())
    assert set(entries) == keys
    assert meta["modelspec.architecture"] == arch
    if fmt == "diffusers":
        assert meta["modelspec.implementation"] == "diffusers"
        assert meta["modelspec.trigger_phrase"] == "<neon-style>"  # the key diffusers matches
        assert meta["format"] == "pt"  # diffusers' own key is kept


def test_export_is_deterministic_and_compose_hash_agrees(tmp_path, emb_factory):
    from conceptlib.compose.export import ui_file_sha256

    lib = Library.open()
    info = _add(lib, emb_factory("sd1", 1, 5))
    (a,) = lib.export("neon-style", "safetensors", tmp_path / "a")
    (b,) = lib.export("neon-style", "safetensors", tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    assert ui_file_sha256(lib, info, "a1111") == hashlib.sha256(a.read_bytes()).hexdigest()


def test_an_original_file_is_written_back_untouched(tmp_path, emb_factory):
    src = tmp_path / "plain.safetensors"
    src.write_bytes(write_safetensors({"emb_params": emb_factory("sd1", 1, 6).vectors["clip_l"]}))
    lib = Library.open()
    lib.import_paths([src])
    (out,) = lib.export("plain", "safetensors", tmp_path / "out")
    assert out.read_bytes() == src.read_bytes()  # its hash is the one Civitai shows
    assert "modelspec.title" not in _header(out.read_bytes())


@pytest.mark.parametrize(
    ("family", "fmt"), [("sd1", "safetensors"), ("sdxl", "sdxl"), ("sd1", "diffusers")]
)
def test_round_trip_through_a_fresh_catalog(tmp_path, monkeypatch, emb_factory, family, fmt):
    lib = Library.open()
    info = _add(lib, emb_factory(family, 2, 7))
    (path,) = lib.export("neon-style", fmt, tmp_path / "out")
    other = _fresh_library(tmp_path, monkeypatch)
    report = other.import_paths([path])
    assert [o.status for o in report.outcomes] == ["imported"]
    back = other.get("neon-style")
    for field in ("name", "token", "kind", "family", "description", "license", "tags"):
        assert getattr(back, field) == getattr(info, field), field
    assert back.base_model == "conceptlib/tiny-sd1"
    assert back.initializer == "neon"
    assert back.training_images_hash == "c" * 64
    assert back.tensor_sha256 == info.tensor_sha256
    assert back.extra["provenance"]["name"] == "neon-style"
    assert back.extra["modelspec"]["architecture"].endswith("/textual-inversion")
    # Checked once, kept once: the raw header keys are not copied unchecked.
    raw = back.extra.get("file_metadata", {}).get("safetensors_metadata", {})
    assert not any(k.startswith("modelspec.") or k == PROVENANCE_KEY for k in raw)


def test_invokeai_mapped_file_name_gets_the_recorded_name(tmp_path, monkeypatch, emb_factory):
    lib = Library.open()
    _add(lib, emb_factory("sd1", 1, 8), name="café-neon", token="café-neon")
    from conceptlib.compose.export import export_for_prompt

    (path,) = export_for_prompt(lib, "a <café-neon>", "invokeai", tmp_path / "inv")
    assert path.name == "cafe-neon.safetensors"
    other = _fresh_library(tmp_path, monkeypatch)
    outcome = other.import_paths([path]).outcomes[0]
    assert outcome.name == "café-neon"
    assert [d["reason"] for d in outcome.derived] == ["name-in-metadata"]


def test_a_renamed_file_keeps_its_file_name(tmp_path, monkeypatch, emb_factory):
    lib = Library.open()
    _add(lib, emb_factory("sd1", 1, 9))
    (path,) = lib.export("neon-style", "safetensors", tmp_path / "out")
    renamed = path.with_name("my-neon.safetensors")
    path.rename(renamed)
    other = _fresh_library(tmp_path, monkeypatch)
    other.import_paths([renamed])
    back = other.get("my-neon")  # A1111 triggers it by this file name
    assert back.token == "my-neon"  # the recorded token belongs to the recorded name
    assert back.extra["name_in_metadata"] == "neon-style"
    assert back.kind == "negative" and back.description == "neon city\nsecond line"


def test_options_given_win_over_the_metadata(tmp_path, monkeypatch, emb_factory):
    lib = Library.open()
    _add(lib, emb_factory("sd1", 1, 10))
    (path,) = lib.export("neon-style", "safetensors", tmp_path / "out")
    other = _fresh_library(tmp_path, monkeypatch)
    other.import_paths(
        [path], name="chosen", token="<chosen-tok>", kind="style", base_model="my/base"
    )
    back = other.get("chosen")
    assert (back.token, back.kind, back.base_model) == ("<chosen-tok>", "style", "my/base")


def _file_with_metadata(tmp_path, emb, meta, name="hostile.safetensors"):
    path = tmp_path / name
    path.write_bytes(write_safetensors({"emb_params": emb.vectors["clip_l"]}, meta))
    return path


def _provenance(emb, **over):
    d = {"name": "from-meta", "token": "from-meta", "kind": "style", "family": "sd1"}
    d["tensor_sha256"] = emb.tensor_sha256
    d.update(over)
    return json.dumps(d)


@pytest.mark.parametrize(
    ("meta", "warning"),
    [
        ({"modelspec.description": "x" * 20_000}, "modelspec.description has 20000 characters"),
        ({"modelspec.title": "bad\x1b[31mtitle"}, "modelspec.title contains the control character"),
        ({"modelspec.title": "rtl\u202etitle"}, "control character U+202E"),
        ({PROVENANCE_KEY: "{not json"}, "is not valid JSON"),
        ({PROVENANCE_KEY: "[1, 2]"}, "is a JSON list"),
        ({PROVENANCE_KEY: "x" * 5000}, "at most 4096 are read"),
    ],
)
def test_hostile_metadata_values_are_ignored_with_a_note(tmp_path, emb_factory, meta, warning):
    emb = emb_factory("sd1", 1, 11)
    path = _file_with_metadata(tmp_path, emb, meta)
    lib = Library.open()
    outcome = lib.import_paths([path]).outcomes[0]
    assert outcome.status == "imported"
    assert any(warning in n for n in outcome.notes), outcome.notes
    info = lib.get("hostile")
    assert info.description is None and info.kind == "other"
    assert all("\x1b" not in n and "\u202e" not in n for n in outcome.notes)


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"name": 5}, "field 'name' cannot be used"),
        ({"name": "<script>alert(1)</script>"}, "field 'name' cannot be used"),
        ({"token": ["a", "b"]}, "field 'token' cannot be used"),
        ({"kind": "villain"}, "field 'kind' cannot be used"),
        ({"family": "sdxl"}, "names the family sdxl, the file is sd1"),
        ({"tensor_sha256": "0" * 64}, "describes other vectors"),
        ({"training_images_hash": "zz"}, "field 'training_images_hash' cannot be used"),
    ],
)
def test_provenance_of_the_wrong_shape_is_not_used(tmp_path, emb_factory, over, reason):
    emb = emb_factory("sd1", 1, 12)
    path = _file_with_metadata(tmp_path, emb, {PROVENANCE_KEY: _provenance(emb, **over)})
    lib = Library.open()
    outcome = lib.import_paths([path]).outcomes[0]
    assert outcome.name == "hostile" and outcome.status == "imported"
    assert any(reason in n for n in outcome.notes), outcome.notes
    assert lib.get("hostile").kind == "other"
    assert "provenance" not in lib.get("hostile").extra


def test_description_with_markup_is_kept_as_text(tmp_path, emb_factory):
    emb = emb_factory("sd1", 1, 13)
    text = "<script>alert(1)</script> [bold]x[/bold]"
    path = _file_with_metadata(tmp_path, emb, {"modelspec.description": text})
    lib = Library.open()
    lib.import_paths([path])
    assert lib.get("hostile").description == text  # data, escaped where it is rendered
    from click.testing import CliRunner

    from conceptlib.cli.main import cli

    shown = CliRunner().invoke(cli, ["show", "hostile"])
    assert shown.exit_code == 0 and "[bold]x[/bold]" in shown.output


def test_a_changed_file_does_not_pass_its_metadata(tmp_path, monkeypatch, emb_factory):
    """Vectors edited after export: the declared hash no longer matches, nothing is used."""
    lib = Library.open()
    _add(lib, emb_factory("sd1", 1, 14))
    (path,) = lib.export("neon-style", "safetensors", tmp_path / "out")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    other = _fresh_library(tmp_path, monkeypatch)
    outcome = other.import_paths([path]).outcomes[0]
    assert any("modelspec.hash_sha256 does not match" in n for n in outcome.notes)
    back = other.get("neon-style")  # the file's name: it was never renamed
    assert back.kind == "other" and back.description is None


def test_foreign_modelspec_fills_what_the_file_lacks(tmp_path, emb_factory):
    """A file from another tool with ModelSpec keys but no provenance of ours."""
    emb = emb_factory("sd1", 1, 15)
    path = _file_with_metadata(
        tmp_path,
        emb,
        {
            "modelspec.sai_model_spec": "1.0.0",
            "modelspec.architecture": "stable-diffusion-v1/textual-inversion",
            "modelspec.title": "Foreign",
            "modelspec.trigger_phrase": "frgn, foreign style",
            "modelspec.is_negative_embedding": "true",
            "modelspec.tags": "Style, Bad Tag!!, ok",
            "modelspec.description": "from another trainer",
        },
        name="foreign.safetensors",
    )
    lib = Library.open()
    lib.import_paths([path])
    info = lib.get("foreign")
    assert info.kind == "negative" and info.description == "from another trainer"
    assert info.extra["trained_words"] == ["frgn", "foreign style"]
    assert "style" in info.tags and "ok" in info.tags

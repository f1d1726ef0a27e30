"""Issue 15, item 7: ``conceptlib which IMAGE`` (alias ``inspect``): the embeddings an
image was made with, resolved to catalog entries by hash or name."""

from __future__ import annotations

import io
import json
import zlib

import pytest
from click.testing import CliRunner
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from conceptlib.cli.main import cli
from conceptlib.compose.export import ui_file_sha256
from conceptlib.compose.inspect import MAX_JSON_DEPTH, read_image, which
from conceptlib.errors import UnsupportedContent
from conceptlib.registry.samples import sample_embedding
from conceptlib.schemas.records import SyncInfo


def png(path, **chunks: str):
    meta = PngInfo()
    for key, value in chunks.items():
        meta.add_text(key, value)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG", pnginfo=meta)
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def three(lib):
    for seed, name in enumerate(("cat-toy", "ukiyoe", "easyneg")):
        lib.add_embedding(sample_embedding("sd1", 1, seed), name=name)
    # a local "old-style" whose file differs from the one the image used, pulled from a repo
    lib.add_embedding(sample_embedding("sd1", 1, 9), name="old-style")
    lib.record_sync("old-style", SyncInfo("someone/old-style", "main", None, "pull"))
    return lib


def by_name(report):
    return {e.name: e for e in report.embeddings}


def test_a1111_infotext_resolves_by_every_hash_and_by_bare_name(three, tmp_path):
    cat, uki, neg = three.get("cat-toy"), three.get("ukiyoe"), three.get("easyneg")
    exported = ui_file_sha256(three, uki, "a1111")  # what compose writes in TI hashes
    hashes = json.dumps({"embed:easyneg": neg.file_sha256[:10].upper(), "model": "abc"})
    text = (
        "a photo of cat-toy, (ukiyoe:0.8) style, old-style\n"
        "Negative prompt: easyneg, blurry\n"
        f'Steps: 12, Seed: 42, CFG scale: 6.5, TI hashes: "cat-toy: {cat.file_sha256[:12]}, '
        f'ukiyoe: {exported[:12]}, old-style: 0123456789ab, gone: fedcba987654", '
        f"Hashes: {json.dumps(hashes)}"
    )
    (r,) = which(three, [png(tmp_path / "a.png", parameters=text)])
    assert r.generators == ["a1111"] and (r.seed, r.steps, r.guidance) == (42, 12, 6.5)
    assert r.negative == "easyneg, blurry"
    got = by_name(r)
    assert (got["cat-toy"].entry, got["cat-toy"].matched_by) == ("cat-toy", "hash")
    assert (got["ukiyoe"].entry, got["ukiyoe"].matched_by) == ("ukiyoe", "hash")
    assert (got["easyneg"].entry, got["easyneg"].matched_by) == ("easyneg", "hash")
    assert got["old-style"].entry is None and "another hash" in got["old-style"].note
    assert got["old-style"].sources == ["someone/old-style"]
    assert got["gone"].entry is None and got["gone"].sources == []
    assert sorted(e.name for e in r.missing) == ["gone", "old-style"]


def test_comfyui_graph_and_invokeai_metadata(three, tmp_path):
    graph = {
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 7,
                "steps": 9,
                "cfg": 4.0,
                "positive": ["6", 0],
                "negative": ["7", 0],
            },
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a (embedding:cat-toy:1.2) x"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "embedding:missing-one.pt"}},
    }
    (r,) = which(three, [png(tmp_path / "c.png", prompt=json.dumps(graph))])
    assert r.generators == ["comfyui"]
    assert (r.prompt, r.negative) == ("a (embedding:cat-toy:1.2) x", "embedding:missing-one.pt")
    assert (r.seed, r.steps, r.guidance) == (7, 9, 4.0)
    assert by_name(r)["cat-toy"].entry == "cat-toy"
    assert [e.name for e in r.missing] == ["missing-one"]

    workflow = {"nodes": [{"type": "CLIPTextEncode", "widgets_values": ["embedding:ukiyoe"]}]}
    (w,) = which(three, [png(tmp_path / "w.png", workflow=json.dumps(workflow))])
    assert by_name(w)["ukiyoe"].entry == "ukiyoe"

    meta = {"positive_prompt": "a <cat-toy> (red)1.2", "negative_prompt": "<easyneg>", "seed": 3}
    (i,) = which(three, [png(tmp_path / "i.png", invokeai_metadata=json.dumps(meta))])
    assert i.generators == ["invokeai"] and i.seed == 3
    assert {e.name: e.entry for e in i.embeddings} == {"cat-toy": "cat-toy", "easyneg": "easyneg"}


def test_untrusted_metadata_is_capped_and_escaped(
    three, tmp_path, catalog_snapshot, _isolated_home
):
    deep = "[" * (MAX_JSON_DEPTH + 5) + "]" * (MAX_JSON_DEPTH + 5)
    with pytest.raises(UnsupportedContent):  # a graph nested too deep is not read
        read_image(png(tmp_path / "deep.png", prompt=deep))
    # a zTXt chunk that inflates past the cap
    bomb = tmp_path / "bomb.png"
    png(bomb)
    data = bomb.read_bytes()
    body = b"parameters\x00\x00" + zlib.compress(b"a" * (9 * 1024 * 1024))
    import struct

    chunk = struct.pack(">I", len(body)) + b"zTXt" + body
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + body) & 0xFFFFFFFF)
    bomb.write_bytes(data[:-12] + chunk + data[-12:])

    before = catalog_snapshot(_isolated_home)
    res = CliRunner().invoke(cli, ["which", str(bomb)])
    assert res.exit_code == 3 and "metadata is over" in res.output

    res = CliRunner().invoke(cli, ["inspect", str(tmp_path / "deep.png")])
    assert res.exit_code == 3 and "no generation metadata" in res.output

    (tmp_path / "not.png").write_bytes(b"GIF89a....")
    res = CliRunner().invoke(cli, ["which", str(tmp_path / "not.png")])
    assert res.exit_code == 3 and "not a PNG" in res.output

    res = CliRunner().invoke(cli, ["which", str(tmp_path / "nope.png")])
    assert res.exit_code == 6 and "no image file" in res.output

    evil = 'a \x1b[31m[bold]x\u202e\nSteps: 1, TI hashes: "ev\x1bil[red]: 0123456789ab"'
    res = CliRunner().invoke(cli, ["which", str(png(tmp_path / "evil.png", parameters=evil))])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.output and "\u202e" not in res.output
    assert "ev\\x1bil[red]" in res.output
    res = CliRunner().invoke(cli, ["which", "--json", str(tmp_path / "evil.png")])
    assert res.exit_code == 0 and "\x1b" not in res.output and "\u202e" not in res.output
    assert json.loads(res.output)[0]["missing"] == ["ev\x1bil[red]"]
    assert catalog_snapshot(_isolated_home) == before


def test_which_json_lists_entries_and_missing(three, tmp_path):
    cat = three.get("cat-toy")
    text = f'cat-toy\nSteps: 5, TI hashes: "cat-toy: {cat.file_sha256[:12]}"'
    res = CliRunner().invoke(
        cli, ["which", "--json", str(png(tmp_path / "j.png", parameters=text))]
    )
    assert res.exit_code == 0, res.output
    (out,) = json.loads(res.output)
    assert out["missing"] == [] and out["embeddings"][0]["entry"] == "cat-toy"
    assert out["embeddings"][0]["matched_by"] == "hash"

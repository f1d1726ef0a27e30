"""The CLI through click's CliRunner, and as a real subprocess for start-up and exit codes."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conceptlib.cli.main import COMMANDS, cli


@pytest.fixture
def runner():
    return CliRunner()


def run(runner, *args):
    return runner.invoke(cli, list(args), catch_exceptions=False)


def test_help_lists_every_command(runner):
    res = run(runner, "--help")
    assert res.exit_code == 0
    for name in COMMANDS:
        assert name in res.output


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help_with_an_example(runner, name):
    res = run(runner, name, "--help")
    assert res.exit_code == 0, res.output
    assert "Example" in res.output


def test_list_search_show_json(runner, lib, emb_factory):
    lib.add_embedding(
        emb_factory("sd1", 2, 1),
        name="wash",
        kind="style",
        tags=["style"],
        description="watercolor wash",
    )
    lib.add_embedding(emb_factory("sdxl", 1, 2), name="neon", kind="style")
    res = run(runner, "list", "--json")
    data = json.loads(res.output)
    assert [d["name"] for d in data] == ["neon", "wash"]
    required = {
        "name",
        "token",
        "kind",
        "family",
        "num_vectors",
        "tensor_sha256",
        "file_sha256",
        "tags",
        "source",
        "initializer",
        "training_images_hash",
    }
    assert required <= set(data[0])
    assert data[1]["initializer"] is None and data[1]["training_images_hash"] is None
    res = run(runner, "search", "watercolor", "--json")
    assert [d["name"] for d in json.loads(res.output)] == ["wash"]
    res = run(runner, "search", "--tag", "style", "--family", "sd1", "--json")
    assert [d["name"] for d in json.loads(res.output)] == ["wash"]
    res = run(runner, "search", "--compatible-with", "sdxl", "--kind", "style", "--json")
    assert [d["name"] for d in json.loads(res.output)] == ["neon", "wash"]
    res = run(runner, "show", "wash", "--json")
    d = json.loads(res.output)
    assert d["name"] == "wash" and d["num_vectors"] == 2 and d["compatibility"]["sdxl"] == "partial"
    res = run(runner, "show", "wash")
    assert "tensor sha256" in res.output and "A1111 hash" in res.output
    res = run(runner, "list")
    assert "wash" in res.output and "neon" in res.output


def test_show_unknown_suggests(runner, lib, emb_factory):
    lib.add_embedding(emb_factory(), name="aquarelle")
    res = runner.invoke(cli, ["show", "aquarele"])
    assert res.exit_code == 6
    assert "no embedding named 'aquarele'" in res.output
    assert "did you mean: aquarelle" in res.output


def test_tag_rename_rm(runner, lib, emb_factory, catalog_snapshot):
    lib.add_embedding(emb_factory(), name="ea")
    assert run(runner, "tag", "ea", "--add", "x", "--add", "y").exit_code == 0
    assert lib.get("ea").tags == ["x", "y"]
    assert run(runner, "tag", "ea", "--remove", "x").exit_code == 0
    before = catalog_snapshot(lib.settings.home)
    res = runner.invoke(cli, ["tag", "ea", "--remove", "nope"])
    assert res.exit_code == 6 and "has no tag 'nope'" in res.output
    res = runner.invoke(cli, ["tag", "ea"])
    assert res.exit_code == 2 and "nothing to do" in res.output
    res = runner.invoke(cli, ["rename", "ea", "bad/name"])
    assert res.exit_code == 2 and "'/'" in res.output
    assert catalog_snapshot(lib.settings.home) == before
    assert run(runner, "rename", "ea", "eb").exit_code == 0
    res = runner.invoke(cli, ["rm", "eb", "missing"])
    assert res.exit_code == 6
    assert catalog_snapshot(lib.settings.home)[0]["embedding"]  # nothing removed
    assert run(runner, "rm", "eb").exit_code == 0
    assert lib.count() == 0 and list(lib.store.iter_blobs()) == []


def test_verify_and_gc(runner, lib, emb_factory):
    info = lib.add_embedding(emb_factory(), name="ea")
    assert run(runner, "verify").exit_code == 0
    orphan = lib.store.put(b"orphan")
    res = run(runner, "verify", "--json")
    assert json.loads(res.output)["orphan_blobs"] == [orphan]
    res = run(runner, "gc", "--dry-run", "--json")
    assert json.loads(res.output)["removed"] == [] and lib.store.has(orphan)  # too young
    res = run(runner, "gc", "--dry-run", "--grace", "0", "--json")
    assert json.loads(res.output)["removed"] == [orphan] and lib.store.has(orphan)
    assert run(runner, "gc", "--grace", "0").exit_code == 0 and not lib.store.has(orphan)
    p = lib.store.path(info.tensor_sha256)
    p.write_bytes(p.read_bytes()[:-4] + b"\0\0\0\1")
    res = runner.invoke(cli, ["verify"])
    assert res.exit_code == 7 and "altered" in res.output


def test_debug_shows_traceback(runner, lib):
    res = runner.invoke(cli, ["--debug", "show", "nothing"])
    assert res.exit_code == 6 and "Traceback" in res.output
    res = runner.invoke(cli, ["show", "nothing"])
    assert "Traceback" not in res.output


HEAVY = ("torch", "diffusers", "transformers", "huggingface_hub")


def _modules_after(args, env):
    code = (
        "import sys, json\n"
        "from conceptlib.cli.main import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('MODULES=' + json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    line = [x for x in out.stdout.splitlines() if x.startswith("MODULES=")][-1]
    return json.loads(line[len("MODULES=") :])


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["list"],
        ["search", "water"],
        ["search", "--tag", "x", "--json"],
        ["show", "wash"],
    ],
)
def test_fast_commands_import_no_heavy_library(args, lib, emb_factory):
    lib.add_embedding(emb_factory(), name="wash", description="watercolor")
    lib.close()
    env = dict(os.environ)
    assert _modules_after(args, env) == []


def test_real_process_exit_codes(lib, emb_factory):
    lib.add_embedding(emb_factory(), name="wash")
    lib.close()
    env = dict(os.environ)
    ok = subprocess.run(
        [sys.executable, "-m", "conceptlib", "show", "wash", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0 and json.loads(ok.stdout)["name"] == "wash"
    bad = subprocess.run(
        [sys.executable, "-m", "conceptlib", "show", "nope"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 6
    assert bad.stderr.strip().splitlines()[0] == "error: no embedding named 'nope'"
    assert bad.stdout == ""
    usage = subprocess.run(
        [sys.executable, "-m", "conceptlib", "search", "--family", "sd9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert usage.returncode == 2


def test_export_for_prompt_through_the_export_command(runner, lib, emb_factory, tmp_path):
    lib.add_embedding(emb_factory("sd1", 2, 1), name="cat-toy", token="<cat-toy>")
    lib.add_embedding(emb_factory("sd1", 1, 2), name="ukiyoe-print")
    lib.add_embedding(emb_factory("sd1", 1, 3), name="unused-one")
    lib.close()
    out = tmp_path / "webui"
    res = run(
        runner,
        "export",
        "--for-prompt",
        "a <cat-toy> in <ukiyoe-print:0.8> style",
        "--format",
        "comfyui",
        "-o",
        str(out),
        "--json",
    )
    files = sorted(p.rsplit("/", 1)[-1] for p in json.loads(res.output)["files"])
    assert files == ["cat-toy.safetensors", "ukiyoe-print.safetensors"]
    res = runner.invoke(cli, ["export", "cat-toy", "--for-prompt", "<cat-toy>", "-o", str(out)])
    assert res.exit_code == 2 and "either NAME or --for-prompt" in res.output
    res = runner.invoke(
        cli, ["export", "--for-prompt", "<cat-toy>", "--format", "sdxl", "-o", str(out)]
    )
    assert res.exit_code == 2 and "UI layout" in res.output
    res = runner.invoke(cli, ["export", "cat-toy", "--format", "comfyui", "-o", str(out)])
    assert res.exit_code == 2 and "for NAME use one of" in res.output
    res = runner.invoke(cli, ["export", "--for-prompt", "<nope>", "-o", str(out / "x")])
    assert res.exit_code == 6 and not (out / "x").exists()

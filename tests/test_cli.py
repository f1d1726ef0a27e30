"""The CLI through click's CliRunner, and as a real subprocess for start-up and exit codes."""

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner
from hub_fixtures import hub_fixture, hub_server_fixture, seed_sd_concepts  # noqa: F401

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


# --------------------------------------------------------------------------- issue 11


def _options(command) -> set[str]:
    import click

    return {o for p in command.params if isinstance(p, click.Option) for o in p.opts}


def _command(name):
    import click

    return cli.get_command(click.Context(cli), name)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_debug_works_after_every_command(runner, name):
    res = run(runner, name, "--debug", "--help")
    assert res.exit_code == 0 and "--debug" in res.output


def test_debug_after_the_command_shows_the_traceback(runner, lib):
    res = runner.invoke(cli, ["show", "nothing", "--debug"])
    assert res.exit_code == 6 and "Traceback" in res.output
    assert res.stderr.splitlines()[-1] == "error: no embedding named 'nothing'"
    res = runner.invoke(cli, ["tag", "nothing", "--debug"])
    assert res.exit_code == 2 and "Traceback" in res.output and "UsageError" in res.output


def test_show_by_hash(runner, lib, emb_factory):
    lib.add_embedding(emb_factory("sd1", 1, 1), name="alpha", file_sha256="abcdef01" + "0" * 56)
    lib.add_embedding(emb_factory("sd1", 1, 2), name="beta", file_sha256="abcdef01" + "1" * 56)
    gamma = lib.add_embedding(emb_factory("sd1", 1, 3), name="gamma", file_bytes=b"gamma.pt")
    assert gamma.file_sha256 != gamma.tensor_sha256
    for handle in (
        gamma.tensor_sha256,
        gamma.tensor_sha256[:8],
        gamma.tensor_sha256[:20].upper(),
        gamma.file_sha256,
        gamma.a1111_hash,  # 12 hex
        gamma.autov2,  # 10 hex, upper case
        gamma.autov2.lower(),
    ):
        res = run(runner, "show", handle, "--json")
        assert json.loads(res.stdout)["name"] == "gamma", handle
    assert json.loads(run(runner, "show", "abcdef010", "--json").stdout)["name"] == "alpha"
    res = runner.invoke(cli, ["show", "abcdef01"])
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        "error: 'abcdef01' starts the hashes of 2 embeddings: alpha (file sha256 "
        "abcdef0100000000...), beta (file sha256 abcdef0111111111...)",
        "hint: give more hex digits, or the name",
    ]
    res = runner.invoke(cli, ["show", gamma.tensor_sha256[:7]])  # too short to be a hash
    assert res.exit_code == 6
    assert res.stderr.splitlines()[0] == f"error: no embedding named {gamma.tensor_sha256[:7]!r}"
    res = runner.invoke(cli, ["show", "0123456789"])
    assert res.exit_code == 6
    assert res.stderr.splitlines()[0] == "error: no embedding named or hashed '0123456789'"


def test_a_name_that_looks_like_a_hash_wins_over_hashes(runner, lib, emb_factory):
    other = lib.add_embedding(emb_factory("sd1", 1, 1), name="other")
    lib.add_embedding(emb_factory("sd1", 1, 2), name=other.tensor_sha256[:12])
    res = run(runner, "show", other.tensor_sha256[:12], "--json")
    assert json.loads(res.stdout)["name"] == other.tensor_sha256[:12]


def test_search_takes_several_unquoted_words(runner, lib, emb_factory):
    lib.add_embedding(emb_factory("sd1", 1, 1), name="plushie", description="a small plush cat")
    lib.add_embedding(emb_factory("sd1", 1, 2), name="doodle-cat", description="a cat drawing")
    res = run(runner, "search", "plush", "cat", "--json")
    assert [e["name"] for e in json.loads(res.stdout)] == ["plushie"]
    res = run(runner, "search", "plush cat", "--json")
    assert [e["name"] for e in json.loads(res.stdout)] == ["plushie"]
    res = run(runner, "search", "cat", "--json")
    assert [e["name"] for e in json.loads(res.stdout)] == ["doodle-cat", "plushie"]


def test_gc_and_verify_say_why_young_orphans_stay_and_how_to_remove_them(runner, lib):
    orphan = lib.store.put(b"orphan of an interrupted import")
    note = (
        "note: 1 orphan file is younger than the 60 s grace period and kept (an import "
        "running elsewhere may still be writing them); `conceptlib gc --grace 0` removes "
        "them when nothing else is running"
    )
    res = run(runner, "verify")
    assert "1 orphan blobs (run `conceptlib gc`)" in res.stdout
    assert res.stderr.strip() == note
    assert json.loads(run(runner, "verify", "--json").stdout)["orphan_blobs_in_grace"] == [orphan]
    res = run(runner, "gc")
    assert res.stdout.strip() == "removed 0 orphan files" and res.stderr.strip() == note
    data = json.loads(run(runner, "gc", "--json").stdout)
    assert data["removed"] == [] and data["spared"] == [orphan] and data["grace_s"] == 60
    assert lib.store.has(orphan)
    res = run(runner, "gc", "--grace", "0")
    assert res.stdout.strip() == "removed 1 orphan files" and res.stderr == ""
    assert not lib.store.has(orphan)
    res = run(runner, "verify")
    assert res.stderr == "" and "0 orphan blobs" in res.stdout


def test_rename_sets_the_token(runner, lib, emb_factory, catalog_snapshot):
    lib.add_embedding(emb_factory("sd1", 1, 1), name="ea")
    lib.add_embedding(emb_factory("sd1", 1, 2), name="eb", token="<eb-token>")
    res = run(runner, "rename", "ea", "ec", "--token", "<ec>")
    assert res.stdout.strip() == "renamed ea -> ec (token <ec>)"
    assert lib.get("ec").token == "<ec>" and lib.resolve("<ec>").name == "ec"
    before = catalog_snapshot(lib.settings.home)
    res = runner.invoke(cli, ["rename", "ec", "ed", "--token", "<eb-token>"])
    assert res.exit_code == 5
    assert res.stderr.splitlines() == [
        "error: the token '<eb-token>' is already used by 'eb'",
        "hint: choose another trigger token with --token",
    ]
    res = runner.invoke(cli, ["rename", "ec", "ed", "--token", "cat"])
    assert res.exit_code == 2 and "error: the token 'cat' is an ordinary word" in res.stderr
    assert catalog_snapshot(lib.settings.home) == before


def _write_file(path, emb, token):
    from conceptlib.registry.formats import write_embedding

    ((_, data),) = write_embedding(emb, "diffusers", name="x", token=token).items()
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    ("command", "hint"),
    [
        (["import", "{file}", "--name", "taken"], "choose another name with --name"),
        (["import", "{file}", "--name", "fresh"], "choose another trigger token with --token"),
        (["import", "{file}", "--name", "fresh", "--token", "taken"], "with --token"),
        (["blend", "taken", "pa", "pb"], "choose another name: give another NEW_NAME"),
        (["blend", "fresh", "pa", "pb", "--token", "<taken>"], "with --token"),
        (["rename", "pa", "taken"], "choose another name: give another NEW"),
        (
            ["rename", "pa", "fresh", "--token", "taken"],
            "choose another trigger token with --token",
        ),
        (["edit", "pa", "--token", "<taken>"], "choose another trigger token with --token"),
        (["train", "{dir}", "--name", "taken", "--init", "toy", "--base", "tiny-sd1"], "--name"),
    ],
)
def test_collision_hints_name_what_the_command_has(
    runner, lib, emb_factory, catalog_snapshot, tmp_path, command, hint
):
    """A taken name or token: the hint names the option (or argument) of THIS command
    that sets it, never one the command lacks (rename and blend have no --name)."""
    lib.add_embedding(emb_factory("sd1", 1, 1), name="taken", token="<taken>")
    lib.add_embedding(emb_factory("sd1", 1, 2), name="pa")
    lib.add_embedding(emb_factory("sd1", 1, 3), name="pb")
    (tmp_path / "imgs").mkdir()
    file = _write_file(tmp_path / "learned_embeds.safetensors", emb_factory("sd1", 1, 9), "<taken>")
    args = [a.format(file=file, dir=tmp_path / "imgs") for a in command]
    before = catalog_snapshot(lib.settings.home)
    res = runner.invoke(cli, args)
    assert res.exit_code == 5, res.output
    last = res.stderr.splitlines()[-1]
    assert last.startswith("hint: ") and hint in last
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", last))
    assert named <= _options(_command(command[0])), last
    assert catalog_snapshot(lib.settings.home) == before


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_completed_hints_name_only_options_of_their_command(name):
    """Every error that carries the option fixing it, completed for every command."""
    from conceptlib.cli.main import command_hint
    from conceptlib.errors import BaseModelError, NameCollision

    cmd = _command(name)
    errors = [
        NameCollision("x", existing="y", hint="choose another name", field="name"),
        NameCollision("x", existing="y", hint="choose another trigger token", field="token"),
        BaseModelError("x", hint="have its config in the cache", option="--base-config"),
    ]
    for err in errors:
        hint = command_hint(err, cmd)
        named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", hint))
        assert named <= _options(cmd), (name, hint)
    base = command_hint(errors[2], cmd)
    assert base.endswith("with --base-config") == ("--base-config" in _options(cmd))


def test_every_option_a_hint_names_exists():
    """Each ``--option`` named in a hint (or carried as an error's ``option``) in the
    source is an option of some command: a renamed or removed option cannot linger."""
    import ast
    from pathlib import Path

    every = set().union(*(_options(_command(n)) for n in COMMANDS))
    src = Path(__file__).resolve().parents[1] / "src" / "conceptlib"
    missing = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            keyword = isinstance(node, ast.keyword) and node.arg in ("hint", "option")
            assign = isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "hint" for t in node.targets
            )
            for value in [node.value] if keyword or assign else []:
                text = " ".join(
                    c.value
                    for c in ast.walk(value)
                    if isinstance(c, ast.Constant) and isinstance(c.value, str)
                )
                for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text):
                    if opt not in every:
                        missing.append(f"{path.relative_to(src)}:{node.lineno} {opt}")
    assert missing == []


def test_demo_names_are_synthetic_and_a_second_run_adds_nothing(runner, lib):
    from conceptlib.registry.samples import SAMPLES

    assert all(name.startswith("demo-") for name, *_ in SAMPLES)
    first = json.loads(run(runner, "demo", "--no-train", "--json").stdout)
    assert first["import"]["imported"] == len(SAMPLES)
    names = [e.name for e in lib.list()]
    assert names and all(n.startswith("demo-") for n in names)
    assert all(e.token.strip("<>").startswith("demo-") for e in lib.list())
    dump = lib.dump()
    again = json.loads(run(runner, "demo", "--no-train", "--json").stdout)
    assert again["import"]["imported"] == 0 and again["import"]["present"] == len(SAMPLES)
    assert lib.dump() == dump


def test_after_the_demo_the_readme_pull_works(runner, lib, emb_factory, hub):
    """The README's `conceptlib pull sd-concepts-library/cat-toy`, right after the demo."""
    run(runner, "demo", "--no-train", "--json")
    seed_sd_concepts(hub, "sd-concepts-library/cat-toy", emb_factory("sd1", 1, 7))
    res = runner.invoke(cli, ["pull", "sd-concepts-library/cat-toy", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["status"] == "pulled"
    assert lib.get("cat-toy").token == "<cat-toy>"


def test_pull_token_when_the_repo_token_is_taken(runner, lib, emb_factory, hub, catalog_snapshot):
    lib.add_embedding(emb_factory("sd1", 1, 1), name="my-cat", token="<cat-toy>")
    seed_sd_concepts(hub, "sd-concepts-library/cat-toy", emb_factory("sd1", 1, 7))
    before = catalog_snapshot(lib.settings.home)
    res = runner.invoke(cli, ["pull", "sd-concepts-library/cat-toy", "--name", "cat-toy-2"])
    assert res.exit_code == 5
    assert res.stderr.splitlines() == [
        "error: the token '<cat-toy>' is already used by 'my-cat'",
        "hint: choose another trigger token with --token",
    ]
    res = runner.invoke(cli, ["pull", "sd-concepts-library/cat-toy", "--token", "cat"])
    assert res.exit_code == 2 and "error: the token 'cat' is an ordinary word" in res.stderr
    res = runner.invoke(cli, ["pull", "--author", "sd-concepts-library", "--token", "<t>"])
    assert res.exit_code == 2 and "--token apply to a single REPO" in res.stderr
    assert catalog_snapshot(lib.settings.home) == before
    res = run(runner, "pull", "sd-concepts-library/cat-toy", "--token", "<cat-toy-2>", "--json")
    assert json.loads(res.stdout)["name"] == "cat-toy"
    assert lib.get("cat-toy").token == "<cat-toy-2>" and lib.get("my-cat").token == "<cat-toy>"


def test_demo_run_twice_trains_once(runner, lib, tmp_path):
    # An interrupted earlier demo left a checkpoint: the demo starts over (it has no
    # --resume, which train's "unfinished run" error would ask for).
    stale = lib.settings.home / "demo" / "training" / "run" / "checkpoint.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a checkpoint")
    first = json.loads(run(runner, "demo", "--steps", "2", "--json").stdout)
    assert first["train"]["name"] == "demo-toy" and "reused" not in first["train"]
    dump = lib.dump()
    res = run(runner, "demo", "--steps", "2")
    assert "demo-toy is already in the catalog" in res.stdout and "not trained again" in res.stdout
    again = json.loads(run(runner, "demo", "--steps", "2", "--json").stdout)["train"]
    assert again["reused"] and again["name"] == "demo-toy" and again["steps"] == 2
    assert again["search"]["found"] == ["demo-toy"]
    assert os.path.isfile(again["loss_curve"]) and os.path.isfile(again["sample_grid"])
    assert lib.dump() == dump  # no near-duplicate demo-toy-2, nothing else added

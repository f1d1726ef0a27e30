"""``conceptlib push`` / ``pull`` through click, and the token canary.

The canary test runs every sync command with a recognisable token and searches every
output for it: stdout, stderr (with --debug tracebacks), logs, the catalog database,
the blob store, the client's cache and every file of every commit on the server.
"""

from __future__ import annotations

import json
import logging
import os
import traceback

import pytest
from click.testing import CliRunner
from hub_fixtures import READ_TOKEN, hub_fixture, hub_server_fixture, seed_sd_concepts  # noqa: F401

from conceptlib.cli import main as climain
from conceptlib.schemas.records import Preview

pytestmark = pytest.mark.timeout(90)

CANARY = "canary-7f3a9c-SECRET-Token-Zz"  # not hf_-shaped: redaction must not rely on the shape


@pytest.fixture
def cli(monkeypatch):
    monkeypatch.setitem(climain.COMMANDS, "push", ("conceptlib.cli.hub:push_cmd", "Push."))
    monkeypatch.setitem(climain.COMMANDS, "pull", ("conceptlib.cli.hub:pull_cmd", "Pull."))
    runner = CliRunner()
    runs = []

    def invoke(*args):
        result = runner.invoke(climain.cli, list(args), catch_exceptions=True)
        runs.append(result)
        return result

    invoke.runs = runs
    return invoke


def _add(lib, emb_factory, name, seed, tags=("style",)):
    lib.add_embedding(
        emb_factory("sd1", 1, seed),
        name=name,
        kind="style",
        tags=list(tags),
        previews=[Preview("p.png", b"\x89PNG " + name.encode(), "preview")],
    )


def test_push_and_pull_commands(hub, lib, emb_factory, cli):
    _add(lib, emb_factory, "ink-wash", 1)
    r = cli("push", "ink-wash", "--repo", "alice/ink-wash")
    assert r.exit_code == 0, r.output
    assert "pushed ink-wash to alice/ink-wash" in r.stdout
    r = cli("push", "ink-wash", "--repo", "alice/ink-wash", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["status"] == "unchanged"
    seed_sd_concepts(hub, "sd-concepts-library/cat-toy", emb_factory("sd1", 1, 7))
    r = cli("pull", "sd-concepts-library/cat-toy", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"] == "pulled"
    r = cli("pull", "sd-concepts-library/cat-toy")
    assert r.exit_code == 0 and "already in the catalog" in r.stdout


def test_errors_are_one_line_with_exit_codes(hub, lib, emb_factory, cli):
    hub.commit("alice/empty", {"README.md": b"# nothing\n"})
    r = cli("pull", "alice/empty")
    assert r.exit_code == 9
    assert r.stderr.startswith("error: alice/empty holds no recognizable embedding")
    assert "Traceback" not in r.output
    r = cli("pull", "not a repo")
    assert r.exit_code == 2 and "NAMESPACE/NAME" in r.stderr
    r = cli("pull")
    assert r.exit_code == 2 and "pull takes one of" in r.stderr
    r = cli("push")
    assert r.exit_code == 2


def test_bulk_pull_prints_a_summary_table_and_fails_softly(hub, lib, emb_factory, cli):
    for i in range(3):
        seed_sd_concepts(hub, f"org/c{i}", emb_factory("sd1", 1, 10 + i), token=f"<c{i}>")
    hub.commit("org/broken", {"README.md": b"nothing\n"})
    r = cli("pull", "--author", "org")
    assert r.exit_code == 1
    assert "4 repos" in r.stdout and "3 pulled" in r.stdout and "1 failed" in r.stdout
    assert "org/broken" in r.stdout
    r = cli("pull", "--author", "org", "--json")
    data = json.loads(r.stdout)
    assert data["present"] == 3 and data["failed"] == 1


def test_library_commands(hub, lib, emb_factory, cli, tmp_path, monkeypatch, backend):
    if backend != "sqlite":
        pytest.skip("a second catalog needs its own database (SQLite homes)")
    _add(lib, emb_factory, "ink-wash", 1)
    _add(lib, emb_factory, "neon", 2)
    r = cli("push", "--library", "team/styles", "--tag", "style")
    assert r.exit_code == 0, r.output
    r = cli("push", "--library", "team/styles", "--tag", "style")
    assert "up to date" in r.stdout
    monkeypatch.setenv("CONCEPTLIB_HOME", str(tmp_path / "b"))
    r = cli("pull", "--library", "team/styles", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["pulled"] == 2


def test_help_has_examples(cli):
    for cmd in ("push", "pull"):
        r = cli(cmd, "--help")
        assert r.exit_code == 0 and "Examples:" in r.stdout


def _files_under(root) -> list[str]:
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            out.append(os.path.join(d, f))
    return out


def test_token_never_appears_anywhere(
    hub, lib, emb_factory, cli, monkeypatch, caplog, _isolated_home, tmp_path
):
    hub.add_user("alice", CANARY, orgs=("team",))
    monkeypatch.setenv("HF_TOKEN", CANARY)
    caplog.set_level(logging.DEBUG)
    _add(lib, emb_factory, "ink-wash", 1)
    _add(lib, emb_factory, "neon", 2)
    seed_sd_concepts(hub, "sd-concepts-library/cat-toy", emb_factory("sd1", 1, 7))

    ok = [
        ("push", "ink-wash"),
        ("push", "ink-wash", "--json"),
        ("push", "neon", "--repo", "team/neon", "--private"),
        ("pull", "sd-concepts-library/cat-toy"),
        ("pull", "alice/ink-wash", "--name", "ink-again", "--json"),
        ("pull", "--author", "sd-concepts-library", "--json"),
        ("push", "--library", "team/lib", "--tag", "style"),
        ("pull", "--library", "team/lib"),
    ]
    for args in ok:
        r = cli("--debug", *args)
        assert r.exit_code == 0, (args, r.output)
    # failures, with --debug tracebacks: a server echoing the header, a moved branch,
    # a rejected token, a read-only token
    hub.inject("status", status=500, echo_auth=True, path=r"^/api/models/alice/", times=None)
    assert cli("--debug", "pull", "alice/ink-wash@main").exit_code != 0
    hub.clear_faults()
    hub.commit("alice/ink-wash", {"x.txt": b"moved"})
    lib.tag("ink-wash", add=["changed"])
    assert cli("--debug", "push", "ink-wash").exit_code != 0
    hub.inject("status", status=429, retry_after=0, echo_auth=True, path="/resolve/", times=2)
    cli("--debug", "pull", "--author", "sd-concepts-library")
    hub.clear_faults()
    hub.accounts.pop(CANARY)
    assert cli("--debug", "push", "neon", "--repo", "team/neon").exit_code != 0
    assert cli("--debug", "pull", "--library", "team/lib").exit_code != 0
    hub.add_user("alice", CANARY, can_write=False)
    assert cli("--debug", "push", "ink-wash", "--repo", "alice/ink-wash2").exit_code != 0

    assert len(cli.runs) >= 14
    haystacks = {"logs": caplog.text}
    for i, r in enumerate(cli.runs):
        haystacks[f"run {i} output"] = r.output
        haystacks[f"run {i} stderr"] = r.stderr
        if r.exc_info:
            haystacks[f"run {i} exception"] = "".join(traceback.format_exception(*r.exc_info))
    for path in _files_under(_isolated_home) + _files_under(os.environ["HF_HOME"]):
        with open(path, "rb") as f:
            haystacks[path] = f.read().decode("latin-1")
    for repo in hub.repos.values():
        for commit in repo.commits.values():
            for fname, data in commit.files.items():
                haystacks[f"{repo.id}@{commit.id[:8]}/{fname}"] = data.decode("latin-1")
            haystacks[f"{repo.id}@{commit.id[:8]} message"] = commit.title + commit.message
    leaks = [where for where, text in haystacks.items() if CANARY in text]
    assert not leaks
    # the echoed header did reach the client: redaction, not luck, kept it out
    assert any("***" in text for text in haystacks.values())

"""``conceptlib edit`` and ``Library.update``: every field changes, a refused value
changes nothing (catalog and store), search follows the new description."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conceptlib.cli.main import cli
from conceptlib.errors import InvalidName, NameCollision, UsageError


@pytest.fixture
def runner():
    return CliRunner()


def edit(runner, *args):
    return runner.invoke(cli, ["edit", *args])


@pytest.fixture
def entry(lib, emb_factory):
    lib.add_embedding(
        emb_factory("sd1", 1, 1),
        name="plush-cat",
        token="<plush-cat>",
        kind="object",
        description="a small plush cat toy",
        license="mit",
        base_model="SD 1.5",
        extra={"trained_words": ["plush"], "kept": 1},
    )
    lib.add_embedding(emb_factory("sd1", 3, 2), name="ink-wash", kind="style")
    return lib


@pytest.mark.parametrize(
    ("args", "field", "expected"),
    [
        (["--kind", "style"], "kind", "style"),
        (["--description", "zebra stripes on velvet"], "description", "zebra stripes on velvet"),
        (["--description", ""], "description", None),
        (["--token", "<my-cat>"], "token", "<my-cat>"),
        (["--trigger-words", "plush cat, toy, , toy"], "trained_words", ["plush cat", "toy"]),
        (["--trigger-words", ""], "trained_words", None),
        (["--base-model", "SDXL 1.0"], "base_model", "SDXL 1.0"),
        (["--license", "creativeml-openrail-m"], "license", "creativeml-openrail-m"),
    ],
)
def test_each_field_changes(runner, entry, args, field, expected):
    before = entry.get("plush-cat")
    res = edit(runner, "plush-cat", *args, "--json")
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    after = entry.get("plush-cat")
    if field == "trained_words":
        assert after.extra.get("trained_words") == expected
        assert shown["extra"].get("trained_words") == expected
        assert after.extra["kept"] == 1  # the rest of extra is kept
    else:
        assert getattr(after, field) == expected == shown[field]
    # Nothing else moved.
    same = ("name", "kind", "description", "token", "base_model", "license", "tensor_sha256")
    for other in same:
        if other != field:
            assert getattr(after, other) == getattr(before, other), other


def test_several_fields_at_once_and_the_new_token_resolves(runner, entry):
    res = edit(
        runner, "plush-cat", "--kind", "style", "--token", "<my-cat>", "--description", "velvet"
    )
    assert res.exit_code == 0, res.output
    assert (
        res.stdout.strip()
        == "plush-cat: changed kind, description, token (token <my-cat>, kind style)"
    )
    show = runner.invoke(cli, ["show", "<my-cat>", "--json"])
    assert show.exit_code == 0 and json.loads(show.stdout)["name"] == "plush-cat"
    old = runner.invoke(cli, ["show", "<plush-cat>"])
    assert old.exit_code == 0  # still the entry's name, without brackets
    assert entry.resolve("<my-cat>").name == "plush-cat"


def test_search_finds_the_new_description_only(runner, entry):
    assert edit(runner, "plush-cat", "--description", "zebra stripes").exit_code == 0
    found = runner.invoke(cli, ["search", "zebra", "--json"])
    assert [e["name"] for e in json.loads(found.stdout)] == ["plush-cat"]
    gone = runner.invoke(cli, ["search", "small", "--json"])
    assert json.loads(gone.stdout) == []


GOOD = ["--description", "would be new", "--kind", "negative"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["plush-cat"], 2, "error: nothing to change: give --kind"),
        (["plush-cat", "--kind", "weird"], 2, "Invalid value for '--kind'"),
        (["plush-cat", *GOOD, "--token", "ink-wash"], 5, "error: the token 'ink-wash' is already"),
        (["plush-cat", *GOOD, "--token", "ink-wash_2"], 5, "error: 'ink-wash_2' collides with"),
        (["plush-cat", *GOOD, "--token", "cat"], 2, "error: the token 'cat' is an ordinary word"),
        (["plush-cat", *GOOD, "--token", "a/b"], 2, "'/'"),
        (["plush-cat", *GOOD, "--token", ""], 2, "error: invalid token: it is empty"),
        (["plush-cat", "--description", "red \x1b[31m"], 2, "control character U+001B"),
        (["plush-cat", *GOOD, "--base-model", "SD\n1.5"], 2, "error: the base model contains"),
        (["plush-cat", *GOOD, "--license", "x" * 201], 2, "error: the license has 201 characters"),
        (["plush-cat", *GOOD, "--trigger-words", "a\tb"], 2, "error: the trigger word contains"),
        (["plush-cat", "--trigger-words", ",".join(f"w{i}" for i in range(51))], 2, "51 trigger"),
        (["no-such", "--kind", "style"], 6, "error: no embedding named 'no-such'"),
    ],
)
def test_bad_values_change_nothing(runner, entry, catalog_snapshot, args, code, message):
    """A refused value, even next to good ones, leaves the catalog and store as they were."""
    before = catalog_snapshot(entry.settings.home)
    res = edit(runner, *args)
    assert res.exit_code == code, res.output
    assert message in res.stderr
    assert "Traceback" not in res.output
    assert catalog_snapshot(entry.settings.home) == before


def test_token_collision_hint_names_the_token_option(runner, entry):
    res = edit(runner, "plush-cat", "--token", "ink-wash")
    assert res.exit_code == 5
    assert res.stderr.splitlines()[-1] == "hint: choose another trigger token with --token"


def test_update_api_keeps_its_parameters_and_raises_conceptlib_errors(entry):
    info = entry.update("plush-cat", description="d", kind="negative", license="l", base_model="b")
    assert (info.description, info.kind, info.license, info.base_model) == (
        "d",
        "negative",
        "l",
        "b",
    )
    info = entry.update("plush-cat", trigger_words=["one", " two "], token="<p-cat>")
    assert info.extra["trained_words"] == ["one", "two"] and info.token == "<p-cat>"
    before = entry.dump()
    with pytest.raises(UsageError, match="unknown kind 'bogus'"):
        entry.update("plush-cat", kind="bogus", description="x")
    with pytest.raises(InvalidName):
        entry.update("plush-cat", token="cat", description="x")
    with pytest.raises(NameCollision) as exc:
        entry.update("plush-cat", token="ink-wash", description="x")
    assert exc.value.facts["field"] == "token" and exc.value.hint == "choose another trigger token"
    with pytest.raises(UsageError, match="comma"):
        entry.update("plush-cat", trigger_words=["a, b"])
    with pytest.raises(UsageError, match="characters; at most 10000"):
        entry.update("plush-cat", description="x" * 10_001)
    assert entry.dump() == before


def test_update_keeps_the_own_token_and_name(entry):
    """Setting the token an entry already has (or its own name) is no collision."""
    assert entry.update("plush-cat", token="<plush-cat>").token == "<plush-cat>"
    assert entry.update("plush-cat", token="plush-cat").token == "plush-cat"

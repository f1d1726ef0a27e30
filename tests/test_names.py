import pytest

from conceptlib.errors import InvalidName
from conceptlib.schemas.names import derive_name, name_key, split_expansion, validate_name


@pytest.mark.parametrize(
    "name", ["cat-toy", "EasyNegative", "ng_deepnegative_v1_75t", "x-2000", "Ünïcode", "a.b"]
)
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a\x00b", "control character"),
        ("zero\u200bwidth", "invisible or bidi"),
        ("bidi\u202eevil", "invisible or bidi"),
        ("a/b", "'/'"),
        ("a\\b", "'\\\\'"),
        ("a..b", "'..'"),
        ("CON", "reserved device"),
        ("nul.txt", "reserved device"),
        ("com1", "reserved device"),
        ("trailing.", "ends with a dot"),
        ("trailing ", "ends with a dot or a space"),
        ("two words", "whitespace"),
        ("<x:1>", "'<'"),
        ("x" * 101, "at most 100"),
    ],
)
def test_invalid_names(name, fragment):
    with pytest.raises(InvalidName) as exc:
        validate_name(name)
    assert fragment in str(exc.value)


def test_name_key_folds_case_and_nfkc():
    assert name_key("Cat-Toy") == name_key("cat-toy")
    assert name_key("ｃａｔ") == name_key("cat")  # full-width letters, NFKC
    assert name_key("  Straße ") == name_key("STRASSE")


def test_derive_name_from_file_stems():
    assert derive_name("bad prompt v2") == "bad-prompt-v2"
    assert derive_name("CON") == "embedding-CON"
    assert derive_name("...") == "embedding"
    validate_name(derive_name("we\u200bird/na:me "))


def test_split_expansion():
    assert split_expansion("foo_2") == ("foo", 2)
    assert split_expansion("foo_0") is None
    assert split_expansion("foo") is None


# ---------------------------------------------------------------- derived names (issue 13)


@pytest.mark.parametrize(
    ("stem", "derived"),
    [
        ("a...b", "a.b"),  # was "a..b": imported, then refused by every export
        ("a....b", "a.b"),
        ("CONIN$", "embedding-CONIN$"),
        ("conout$.pt", "embedding-conout$.pt"),
        ("COM\u00b9", "embedding-COM1"),
        ("...", "embedding"),
    ],
)
def test_derived_names_pass_the_same_validation_as_typed_ones(stem, derived):
    assert derive_name(stem) == derived
    assert validate_name(derive_name(stem)) == derived


@pytest.mark.parametrize("name", ["CONIN$", "conout$", "CONOUT$.txt", "lpt\u00b2", "Com\u00b3"])
def test_console_and_superscript_devices_are_reserved(name):
    with pytest.raises(InvalidName, match="reserved device name"):
        validate_name(name)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("concepts/x:stream.safetensors", "colon"),
        ("x.safetensors:Zone.Identifier", "colon"),
        ("previews/CONIN$.png", "reserved device"),
    ],
)
def test_hub_file_names_that_windows_cannot_hold_are_unsafe(path, why):
    from conceptlib.registry.hub.repos import unsafe_reason

    assert why in (unsafe_reason(path) or "")


def test_a_file_named_with_dots_imports_under_a_name_that_exports(tmp_path):
    import numpy as np
    from click.testing import CliRunner

    from conceptlib.cli.main import cli
    from conceptlib.registry.formats.safetensors_io import write_safetensors

    f = tmp_path / "a...b.safetensors"
    f.write_bytes(write_safetensors({"emb_params": np.ones((1, 768), np.float32)}))
    res = CliRunner().invoke(cli, ["import", str(f)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["export", "a.b", "--format", "safetensors", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "a.b.safetensors").is_file()

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

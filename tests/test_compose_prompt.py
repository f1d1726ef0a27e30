"""The prompt syntax: <name>, <name:w>, escapes, and errors with their column."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conceptlib.compose.prompt import (
    EmbeddingRef,
    escape_literal,
    format_weight,
    parse_number,
    parse_prompt,
)
from conceptlib.errors import InvalidWeight, PromptSyntaxError


def refs(text: str) -> list[tuple[str, float | None]]:
    return [(r.name, r.weight) for r in parse_prompt(text).refs]


def test_names_and_weights():
    p = parse_prompt("a photo of <cat-toy> in <ukiyoe:0.8> style")
    assert [type(x) for x in p.parts] == [str, EmbeddingRef, str, EmbeddingRef, str]
    cat, uki = p.refs
    assert (cat.name, cat.weight, cat.effective_weight) == ("cat-toy", None, 1.0)
    assert (uki.name, uki.weight) == ("ukiyoe", 0.8)
    assert p.source[cat.start : cat.end] == "<cat-toy>" == cat.raw
    assert cat.column == 12
    assert p.literal_text == "a photo of   in   style"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<a:1>", [("a", 1.0)]),
        ("<a:-0.5>", [("a", -0.5)]),
        ("<a:.5>", [("a", 0.5)]),
        ("<a:+2.>", [("a", 2.0)]),
        ("<a:1e-1>", [("a", 0.1)]),
        ("<a : 0.7 >", [("a", 0.7)]),
        ("< a>", []),
        ("<a><b>", [("a", None), ("b", None)]),
        ("x<a>y", [("a", None)]),
        ("<easynegative>, <bad_prompt_v2:1.2>", [("easynegative", None), ("bad_prompt_v2", 1.2)]),
    ],
)
def test_reference_forms(text, expected):
    assert refs(text) == expected


@pytest.mark.parametrize(
    "text, literal",
    [
        (r"a \<b\> c", "a <b> c"),
        ("a < b", "a < b"),
        ("ends with <", "ends with <"),
        ("x > y", "x > y"),
        (r"back\\slash", "back\\slash"),
        (r"a1111 \(escape\) kept", r"a1111 \(escape\) kept"),
        ("", ""),
    ],
)
def test_literal_text_and_escapes(text, literal):
    p = parse_prompt(text)
    assert p.refs == []
    assert "".join(p.parts) == literal


@pytest.mark.parametrize(
    "text, column, fragment",
    [
        ("a photo of <cat-toy", 12, "never closed"),
        ("a <b <c>", 3, "never closed"),
        ("a <>", 3, "names no embedding"),
        ("<:0.5>", 1, "names no embedding"),
        ("a <two words>", 3, "no spaces"),
        ("x <lora:foo:0.8>", 3, "2 colons"),
        ("<a\nb>", 1, "never closed"),
    ],
)
def test_syntax_errors_carry_the_column(text, column, fragment):
    with pytest.raises(PromptSyntaxError) as err:
        parse_prompt(text)
    e = err.value
    assert fragment in e.message
    assert e.facts["column"] == column and f"column {column}" in e.message
    assert e.facts["prompt"] == text
    assert e.hint


def test_lora_syntax_gets_a_specific_hint():
    with pytest.raises(PromptSyntaxError) as err:
        parse_prompt("<lora:detail:0.5>")
    assert "lora" in err.value.hint


@pytest.mark.parametrize("weight", ["abc", "", "1.2.3", "nan", "inf", "0x10", "1e999", "½"])
def test_weight_not_a_number(weight):
    text = f"a <cat:{weight}>"
    with pytest.raises(InvalidWeight) as err:
        parse_prompt(text, which="negative prompt")
    e = err.value
    assert isinstance(e, PromptSyntaxError)
    assert e.message.startswith("negative prompt, column 8")
    assert "not" in e.message and e.exit_code == 2


def test_render_rebuilds_the_prompt():
    p = parse_prompt("a <x:0.5> and <y>")
    assert p.render(lambda r: f"[{r.name}]") == "a [x] and [y]"
    assert p.render(lambda r: r.raw) == p.source


def test_format_and_parse_number():
    assert format_weight(1.0) == "1"
    assert format_weight(0.8) == "0.8"
    assert format_weight(-0.25) == "-0.25"
    assert parse_number(" 0.5 ") == 0.5
    assert parse_number("x") is None
    assert parse_number("1e400") is None


name_chars = st.characters(
    min_codepoint=33, max_codepoint=0x2FF, blacklist_characters='<>:\\/"|?*,()[]{}'
)


@given(
    st.lists(
        st.one_of(
            st.text(min_size=1, max_size=12).map(lambda t: ("text", t)),
            st.tuples(
                st.text(name_chars, min_size=1, max_size=10).filter(
                    lambda s: not any(c.isspace() for c in s)
                ),
                st.one_of(st.none(), st.floats(-5, 5, allow_nan=False).map(lambda f: round(f, 3))),
            ).map(lambda t: ("ref", t)),
        ),
        max_size=6,
    )
)
def test_roundtrip_of_escaped_text_and_references(pieces):
    source, want_text, want_refs = [], [], []
    for kind, value in pieces:
        if kind == "text":
            source.append(escape_literal(value))
            want_text.append(value)
        else:
            name, weight = value
            source.append(f"<{name}>" if weight is None else f"<{name}:{format_weight(weight)}>")
            want_refs.append((name, weight))
            want_text.append(" ")
    parsed = parse_prompt("".join(source))
    assert [(r.name, r.weight) for r in parsed.refs] == want_refs
    assert parsed.literal_text == "".join(want_text)

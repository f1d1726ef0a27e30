"""Names through the catalog, suggestions, conflicting weights, the token budget, UI formats."""

from __future__ import annotations

import pytest

from conceptlib.compose.budget import WINDOW, check_budget, count_budget, text_tokens
from conceptlib.compose.formats import render_prompts
from conceptlib.compose.prompt import parse_prompt
from conceptlib.compose.resolve import resolve_prompt, suggestions
from conceptlib.errors import ConflictingWeights, NotFound, TokenBudgetExceeded, UnknownEmbedding
from conceptlib.registry.samples import sample_embedding


@pytest.fixture
def catalog(lib):
    lib.add_embedding(sample_embedding("sd1", 2, 1), name="cat-toy", token="<cat-toy>")
    lib.add_embedding(sample_embedding("sd1", 3, 2), name="ukiyoe-print", token="ukiyoe")
    lib.add_embedding(sample_embedding("sd1", 8, 3), name="EasyNegative", kind="negative")
    lib.add_embedding(sample_embedding("sd1", 40, 4), name="huge-neg", token="<huge>")
    return lib


def resolve(lib, text, which="prompt"):
    return resolve_prompt(lib, parse_prompt(text, which=which))


def test_by_name_then_token_normalized(catalog):
    r = resolve(catalog, "<CAT-TOY> <ukiyoe> <easynegative> <\uff25asynegative>")
    assert [x.info.name for x in r.refs] == [
        "cat-toy",
        "ukiyoe-print",
        "EasyNegative",
        "EasyNegative",
    ]
    # the token, with or without brackets
    assert resolve(catalog, "<cat-toy>").refs[0].info.name == "cat-toy"
    assert resolve(catalog, "<ukiyoe-print>").refs[0].info.token == "ukiyoe"


def test_unknown_name_suggests_close_matches(catalog):
    with pytest.raises(UnknownEmbedding) as err:
        resolve(catalog, "a <cat-tpy> here", which="negative prompt")
    e = err.value
    assert isinstance(e, NotFound)
    assert "negative prompt, column 3" in e.message and "'cat-tpy'" in e.message
    assert e.suggestions[0] == "<cat-toy>"
    assert "did you mean: <cat-toy>" in e.hint
    assert e.facts["column"] == 3
    assert "ukiyoe" in suggestions(catalog, "ukiyo")


def test_unknown_name_with_nothing_close(catalog):
    with pytest.raises(UnknownEmbedding) as err:
        resolve(catalog, "<zzzzzzzz>")
    assert err.value.suggestions == []


def test_same_embedding_two_weights_is_an_error(catalog):
    with pytest.raises(ConflictingWeights) as err:
        resolve(catalog, "<cat-toy:0.8> and <CAT-TOY:0.5>")
    e = err.value
    assert "0.8" in e.message and "0.5" in e.message and "column 19" in e.message
    assert e.exit_code == 2
    # a name and its token are the same embedding
    with pytest.raises(ConflictingWeights):
        resolve(catalog, "<ukiyoe-print> <ukiyoe:0.5>")
    # <x> and <x:1> are the same weight
    assert len(resolve(catalog, "<cat-toy> <cat-toy:1.0>").refs) == 2


def test_budget_counts_vectors_per_use(catalog):
    r = resolve(catalog, "a photo of <cat-toy> and <cat-toy>, <ukiyoe:0.5>")
    report = count_budget(r)
    assert not report.exact  # no tokenizer: an estimate that never over-counts
    text = report.items[0]
    assert text.kind == "text" and text.count == 5  # a photo of and ,
    cat = report.items[1]
    assert (cat.label, cat.uses, cat.count) == ("<cat-toy>", 2, 4)
    assert report.items[2].label == "<ukiyoe-print:0.5>" and report.items[2].count == 3
    assert report.used == 12 and report.limit == WINDOW
    assert check_budget(report) is report


def test_budget_overflow_reports_what_used_it(catalog):
    r = resolve(catalog, "<huge> <huge> a photo", which="negative prompt")
    with pytest.raises(TokenBudgetExceeded) as err:
        check_budget(count_budget(r))
    e = err.value
    assert "negative prompt needs at least 82 tokens" in e.message
    assert "<huge-neg> 40x2" in e.message and "text 2" in e.message
    assert "<huge-neg>" in e.hint
    assert e.facts["used"] == 82 and e.facts["limit"] == 75
    assert [i["label"] for i in e.facts["items"]] == ["text", "<huge-neg>"]


def test_budget_with_a_real_tokenizer_is_exact(catalog):
    from compose_support import clip_text_host

    tok = clip_text_host().tokenizer
    n, exact = text_tokens("a photo of a cat", tok)
    assert exact and n == 5
    r = resolve(catalog, "a photo of <EasyNegative> " + "cat " * 67)
    report = count_budget(r, tok)
    assert report.exact and report.used == 3 + 8 + 67 and report.over
    with pytest.raises(TokenBudgetExceeded, match="needs 78 tokens"):
        check_budget(report)


@pytest.mark.parametrize(
    "fmt, prompt, negative",
    [
        ("a1111", "a cat-toy in (ukiyoe-print:0.8) style", "EasyNegative"),
        (
            "comfyui",
            "a embedding:cat-toy in (embedding:ukiyoe-print:0.8) style",
            "embedding:EasyNegative",
        ),
        ("invokeai", "a <cat-toy> in (<ukiyoe-print>)0.8 style", "<EasyNegative>"),
        # diffusers expands a multi-vector token by the prompt's text before its CLIP
        # tokenizer lower-cases it: the prompt names the token in the tokenizer's form
        ("diffusers", "a <cat-toy> in ukiyoe style", "easynegative"),
    ],
)
def test_prompt_formats(catalog, fmt, prompt, negative):
    out = render_prompts(
        resolve(catalog, "a <CAT-TOY> in <ukiyoe:0.8> style"),
        resolve(catalog, "<easynegative>", "negative prompt"),
        fmt,
    )
    assert (out.prompt, out.negative) == (prompt, negative)
    assert len(out.notes) == 1 and "ukiyoe-print" in out.notes[0]


def test_unknown_format(catalog):
    from conceptlib.errors import UsageError

    with pytest.raises(UsageError, match="a1111, comfyui"):
        render_prompts(resolve(catalog, "<cat-toy>"), None, "fooocus")

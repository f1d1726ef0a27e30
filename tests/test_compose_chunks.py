"""Issue 15: prompts of any length (75-position chunks) and each UI's prompt syntax."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from compose_support import fresh_base, link_tiny_into_home

from conceptlib.compose.chunks import plan_chunks
from conceptlib.compose.compose import compose
from conceptlib.compose.prompt import parse_prompt
from conceptlib.compose.ui import detect_syntax, read_prompt
from conceptlib.errors import PromptSyntaxError
from conceptlib.registry.samples import sample_embedding

NAMES = {"ng_deepnegative_v1_75t", "easynegative", "cat-toy"}


def is_name(word: str) -> bool:
    return word.lower() in NAMES


def vectors_of(n: dict[str, int]):
    return lambda ref: [f"<{ref.name.lower()}>_{i}" for i in range(n[ref.name.lower()])]


def refs_and_weights(parsed):
    """(name, weight) of each reference: its vector weight times its attention."""
    out = []
    for i, part in enumerate(parsed.parts):
        if not isinstance(part, str):
            w = (1.0 if part.weight is None else part.weight) * parsed.attention_of(i)
            out.append((part.name.lower(), round(w, 6)))
    return out


def text_weights(parsed):
    return [
        (p, round(parsed.attention_of(i), 6))
        for i, p in enumerate(parsed.parts)
        if isinstance(p, str) and p.strip()
    ]


# --------------------------------------------------------------------------- chunking


def test_long_text_is_cut_into_chunks_of_75():
    plan = plan_chunks(parse_prompt("a " * 150), vectors_of({}))
    assert plan.sizes == [75, 75] and plan.summary() == "2 chunks (75 + 75)"
    assert plan_chunks(parse_prompt(""), vectors_of({})).sizes == [0]


def test_chunk_breaks_at_a_late_comma_not_an_early_one():
    # a comma at position 60 (within the last 20 of 75): the words after it move on
    late = "a " * 60 + ", " + "b " * 20
    plan = plan_chunks(parse_prompt(late), vectors_of({}))
    assert plan.sizes == [61, 20]
    assert [p.token for p in plan.chunks[1]] == ["b"] * 20
    # a comma at position 30 (too far back): cut at 75
    early = "a " * 30 + ", " + "b " * 50
    assert plan_chunks(parse_prompt(early), vectors_of({})).sizes == [75, 6]


def test_an_embedding_is_never_split_unless_longer_than_a_chunk():
    parsed = read_prompt("x " * 70 + "EasyNegative", "a1111", names=is_name)
    plan = plan_chunks(parsed, vectors_of({"easynegative": 8}))
    assert plan.sizes == [70, 8]
    assert {p.ref for p in plan.chunks[1]} == {0}
    parsed = read_prompt("x cat-toy", "a1111", names=is_name)
    plan = plan_chunks(parsed, vectors_of({"cat-toy": 100}))
    assert plan.sizes == [75, 26]


def test_the_common_negative_needs_two_chunks():
    parsed = read_prompt("ng_deepnegative_v1_75t, EasyNegative", "a1111", names=is_name)
    plan = plan_chunks(parsed, vectors_of({"ng_deepnegative_v1_75t": 75, "easynegative": 8}))
    assert plan.sizes == [75, 9]
    assert plan.chunks[1][0].token == "," and plan.chunks[1][1].ref == 1


def test_break_starts_a_new_chunk_in_every_syntax():
    for text, syntax in (
        ("a b BREAK c", "a1111"),
        ("a <cat-toy> BREAK c", "conceptlib"),
        ("a embedding:cat-toy BREAK c", "comfyui"),
        ("a <cat-toy> BREAK c", "invokeai"),
    ):
        parsed = read_prompt(text, syntax, names=is_name)
        plan = plan_chunks(parsed, vectors_of({"cat-toy": 2}))
        assert len(plan.chunks) == 2 and [p.token for p in plan.chunks[1]] == ["c"], text
    # lower-case "break" is a word
    assert len(plan_chunks(parse_prompt("a break c"), vectors_of({})).chunks) == 1


# --------------------------------------------------------------------------- syntaxes


@pytest.mark.parametrize(
    "prompt, refs, texts",
    [
        ("a (red) cat", [], [("a ", 1), ("red", 1.1), (" cat", 1)]),
        ("((red))", [], [("red", 1.21)]),
        ("(red:1.3) cat", [], [("red", 1.3), (" cat", 1)]),
        ("[red] cat", [], [("red", 0.909091), (" cat", 1)]),
        ("\\(red\\) cat", [], [("(red) cat", 1)]),
        ("a cat-toy, EasyNegative.", [("cat-toy", 1), ("easynegative", 1)], [("a ", 1)]),
        ("(cat-toy:0.8)", [("cat-toy", 0.8)], []),
        ("[(EasyNegative:1.5)]", [("easynegative", 1.363636)], []),
        ("cat-toys", [], [("cat-toys", 1)]),
    ],
)
def test_a1111_rows(prompt, refs, texts):
    parsed = read_prompt(prompt, "a1111", names=is_name)
    assert refs_and_weights(parsed) == refs
    for text, w in texts:
        assert (text, w) in text_weights(parsed) or (text.strip(), w) in [
            (t.strip(), x) for t, x in text_weights(parsed)
        ], (text, text_weights(parsed))


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        ("a <lora:foo:0.8> cat", "extra network"),
        ("a [cat:dog:0.5]", "prompt editing"),
        ("a [cat|dog]", "alternation"),
        ("a cat AND a dog", "composable diffusion"),
    ],
)
def test_a1111_syntax_compose_does_not_do_is_refused(prompt, fragment):
    with pytest.raises(PromptSyntaxError) as err:
        read_prompt(prompt, "a1111", names=is_name)
    assert fragment in err.value.message and "column" in err.value.message


@pytest.mark.parametrize(
    "prompt, refs",
    [
        ("a embedding:cat-toy, b", [("cat-toy", 1)]),
        ("embedding:cat-toy.pt", [("cat-toy", 1)]),
        ("embedding:cat-toy.safetensors x", [("cat-toy", 1)]),
        ("(embedding:cat-toy:1.2)", [("cat-toy", 1.2)]),
        ("((embedding:easynegative))", [("easynegative", 1.21)]),
        ("xembedding:cat-toy", []),
    ],
)
def test_comfyui_rows(prompt, refs):
    assert refs_and_weights(read_prompt(prompt, "comfyui", names=is_name)) == refs


def test_comfyui_square_brackets_are_text():
    parsed = read_prompt("[red] (blue:0.5)", "comfyui")
    assert text_weights(parsed) == [("[red] ", 1.0), ("blue", 0.5)]


@pytest.mark.parametrize(
    "prompt, refs, texts",
    [
        ("a <cat-toy>", [("cat-toy", 1)], [("a ", 1)]),
        ("(<cat-toy>)1.3", [("cat-toy", 1.3)], []),
        ("(<cat-toy>)++", [("cat-toy", 1.21)], []),
        ("red++ cat", [], [("red", 1.21), (" cat", 1)]),
        ("red- cat", [], [("red", 0.9), (" cat", 1)]),
        ("(red cat)0.5", [], [("red cat", 0.5)]),
        ("(red cat)", [], [("red cat", 1)]),
    ],
)
def test_invokeai_rows(prompt, refs, texts):
    parsed = read_prompt(prompt, "invokeai")
    assert refs_and_weights(parsed) == refs
    assert text_weights(parsed) == texts


@pytest.mark.parametrize(
    "prompt, syntax",
    [
        ("a <cat-toy:0.8>", "conceptlib"),
        ("a \\<b", "conceptlib"),
        ("(masterpiece:1.2), cat-toy", "a1111"),
        ("a <lora:x:1>", "a1111"),
        ("a embedding:cat-toy", "comfyui"),
        ("(<cat-toy>)1.3", "invokeai"),
        ("red++ cat", "invokeai"),
    ],
)
def test_auto_detection(prompt, syntax):
    assert detect_syntax(prompt) == syntax


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def cli(monkeypatch):
    from conceptlib.cli import main

    monkeypatch.setitem(main.COMMANDS, "compose", ("conceptlib.cli.compose:compose_cmd", "x"))
    return main.cli


@pytest.fixture
def catalog(_isolated_home):
    from conceptlib.registry.library import Library

    with Library.open() as library:
        yield library


def _hand_built(specs, ids_per_chunk):
    """Each chunk encoded alone by every encoder, concatenated as the pipelines expect."""
    two = len(specs) > 1
    per_encoder, pooled = [], None
    for spec in specs:
        outs = []
        for k, ids in enumerate(ids_per_chunk(spec.tokenizer)):
            out = spec.encoder(torch.tensor([ids]), output_hidden_states=True)
            outs.append(out.hidden_states[-2] if two else out.last_hidden_state)
            if k == 0 and getattr(out, "text_embeds", None) is not None:
                pooled = out.text_embeds
        per_encoder.append(torch.cat(outs, dim=1))
    return torch.cat(per_encoder, dim=-1), pooled


@pytest.mark.parametrize("model, family", [("tiny-sd1", "sd1"), ("tiny-sdxl", "sdxl")])
def test_long_prompt_and_83_vector_negative_generate(catalog, tmp_path, monkeypatch, model, family):
    import conceptlib.compose.encode as encode

    catalog.add_embedding(sample_embedding(family, 75, 1), name="ng_deepnegative_v1_75t")
    catalog.add_embedding(sample_embedding(family, 8, 2), name="EasyNegative")
    captured = {}
    real = encode.pipeline_kwargs

    def spy(specs, plan, negative, **kw):
        out = real(specs, plan, negative, **kw)

        def pos_ids(tok):
            a = tok.convert_tokens_to_ids("a</w>")
            return [[tok.bos_token_id, *[a] * 75, tok.eos_token_id]] * 2

        def neg_ids(tok):
            added = tok.get_added_vocab()
            ng = [added["<ng_deepnegative_v1_75t>"]] + [
                added[f"<ng_deepnegative_v1_75t>_{i}"] for i in range(1, 75)
            ]
            easy = [added["<easynegative>"]] + [added[f"<easynegative>_{i}"] for i in range(1, 8)]
            comma = tok.convert_tokens_to_ids(",</w>")
            pad = tok.pad_token_id
            second = [tok.bos_token_id, comma, *easy, tok.eos_token_id] + [pad] * 66
            return [[tok.bos_token_id, *ng, tok.eos_token_id], second]

        with torch.inference_mode():
            captured["pos"] = _hand_built(specs, pos_ids)
            captured["neg"] = _hand_built(specs, neg_ids)
        captured["out"] = out
        return out

    monkeypatch.setattr(encode, "pipeline_kwargs", spy)
    bm = fresh_base(model)
    result = compose(
        "a " * 150,
        negative="ng_deepnegative_v1_75t, EasyNegative",
        base=bm,
        library=catalog,
        out=tmp_path / "long.png",
        steps=2,
        guidance=5.0,
        width=32,
        height=32,
        seed=1,
    )
    assert result.images == [tmp_path / "long.png"] and result.images[0].is_file()
    assert result.syntax == {"prompt": "a1111", "negative prompt": "a1111"}
    assert [b.chunks for b in result.budgets] == [[75, 75], [75, 9]]
    out = captured["out"]
    assert out["prompt_embeds"].shape[1] == out["negative_prompt_embeds"].shape[1] == 154
    torch.testing.assert_close(out["prompt_embeds"], captured["pos"][0])
    torch.testing.assert_close(out["negative_prompt_embeds"], captured["neg"][0])
    if family == "sdxl":
        torch.testing.assert_close(out["pooled_prompt_embeds"], captured["pos"][1])
        torch.testing.assert_close(out["negative_pooled_prompt_embeds"], captured["neg"][1])


def test_a1111_emphasis_restores_the_chunk_mean():
    from types import SimpleNamespace

    from compose_support import clip_text_host

    from conceptlib.compose.encode import encode_plan

    host = clip_text_host()
    spec = SimpleNamespace(tokenizer=host.tokenizer, encoder=host.text_encoder)
    plain = plan_chunks(parse_prompt("a red cat"), vectors_of({}), host.tokenizer)
    parsed = read_prompt("a (red:1.5) cat", "a1111")
    weighted = plan_chunks(parsed, vectors_of({}), host.tokenizer)
    with torch.inference_mode():
        z = encode_plan([spec], plain).embeds
        zw = encode_plan([spec], weighted).embeds
        ids = host.tokenizer("a red cat").input_ids
        red = 1 + host.tokenizer("a", add_special_tokens=False).input_ids.__len__()
    assert len(ids) < 77
    w = torch.ones(77)
    w[red] = 1.5
    expected = z * w.reshape(1, -1, 1)
    expected = expected * (z.mean() / expected.mean())
    torch.testing.assert_close(zw, expected)
    torch.testing.assert_close(zw.mean(), z.mean())


def test_cli_dry_run_shows_syntax_and_chunks(catalog, cli, _isolated_home):
    catalog.add_embedding(sample_embedding("sd1", 75, 1), name="ng_deepnegative_v1_75t")
    catalog.add_embedding(sample_embedding("sd1", 8, 2), name="EasyNegative")
    link_tiny_into_home(_isolated_home)
    before = catalog.dump()
    res = CliRunner().invoke(
        cli,
        [
            "compose",
            "a <easynegative>",
            "--negative",
            "ng_deepnegative_v1_75t, EasyNegative",
            "--base",
            "tiny-sd1",
            "--dry-run",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "prompt: conceptlib" in res.output and "negative prompt: a1111" in res.output
    assert "in 2 chunks of 75 (75 + 9)" in res.output
    assert catalog.dump() == before


def test_cli_refuses_a_lora_with_exit_2_and_changes_nothing(catalog, cli):
    catalog.add_embedding(sample_embedding("sd1", 2, 1), name="cat-toy")
    before = catalog.dump()
    store = sorted(p.name for p in catalog.settings.home.rglob("*") if p.is_file())
    res = CliRunner().invoke(cli, ["compose", "cat-toy <lora:x:0.8>", "--dry-run"])
    assert res.exit_code == 2, res.output
    assert "extra network" in res.output and "column 9" in res.output
    assert catalog.dump() == before
    assert sorted(p.name for p in catalog.settings.home.rglob("*") if p.is_file()) == store

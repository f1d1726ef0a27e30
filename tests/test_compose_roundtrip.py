"""Issue 15, item 6: ``--format`` writes a prompt each UI's reader reads back as meant,
and a prompt read in one UI's syntax keeps its attention when written in another's."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conceptlib.compose.compose import format_prompts, read_prompts
from conceptlib.compose.formats import render_prompts
from conceptlib.compose.prompt import EmbeddingRef, with_breaks
from conceptlib.compose.resolve import resolve_prompt
from conceptlib.registry.samples import sample_embedding

ENTRIES = ("cattoy", "ukiyo-e", "style_b")
WRITERS = ("a1111", "comfyui", "invokeai")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from conceptlib.registry.library import Library

    library = Library.open(tmp_path_factory.mktemp("roundtrip-home"))
    for seed, name in enumerate(ENTRIES):
        library.add_embedding(sample_embedding("sd1", 2, seed), name=name)
    yield library
    library.close()


# words hold no UI syntax that cannot be escaped (see each UI module's ``escape``)
_word = st.text(alphabet="abcdefgxyz0123456789()[]\\.,:", min_size=1, max_size=6).filter(
    lambda w: any(c.isalpha() for c in w) and w.strip(".,:") != ""
)
_weight = st.sampled_from([1.0, 1.0, 1.1, 1.21, 0.8, 1.5, 0.5, 2.0])
_segment = st.one_of(
    st.tuples(st.just("text"), st.lists(_word, min_size=1, max_size=3), _weight),
    st.tuples(st.just("ref"), st.sampled_from(ENTRIES), _weight),
    st.tuples(st.just("break"), st.none(), st.none()),
)


def _parsed(segments, syntax):
    pieces = []
    ref_weight: dict[str, float] = {}
    for kind, value, weight in segments:
        if kind == "text":
            pieces.append((" " + " ".join(value) + " ", weight))
        elif kind == "ref":
            w = ref_weight.setdefault(value, weight)  # one weight per entry and prompt
            ref = EmbeddingRef(name=value, weight=None, start=0, end=0, raw=value)
            pieces.append((ref, w))
        else:
            pieces.append((" BREAK ", 1.0))
    return with_breaks("", pieces, which="prompt", syntax=syntax)


def meaning(resolved, with_breaks_kept: bool = True):
    """What a UI applies: (entry, weight x attention) per reference, (word, attention)
    per word of text, and the chunk breaks (as positions among these items)."""
    parsed = resolved.parsed
    infos = resolved.by_ref()
    items: list[tuple] = []
    breaks: list[int] = []
    for i, part in enumerate(parsed.parts):
        breaks += [len(items)] * parsed.breaks.count(i)
        w = parsed.attention_of(i)
        if isinstance(part, EmbeddingRef):
            items.append(("ref", infos[part].info.name, round(part.effective_weight * w, 9)))
        else:
            items += [("word", word, round(w, 9)) for word in part.split()]
    breaks += [len(items)] * parsed.breaks.count(len(parsed.parts))
    return items, (breaks if with_breaks_kept else [])


@pytest.mark.parametrize("source", ["a1111", "comfyui", "invokeai"])
@settings(
    max_examples=60,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(segments=st.lists(_segment, min_size=1, max_size=8))
def test_each_writer_round_trips_through_its_reader(small, source, segments):
    """Written in each UI's syntax and read back by that UI's reader: the same entries
    with the same weights, the same words with the same attention, and (A1111, the
    one with BREAK) the same chunk breaks; what a UI cannot say is in the notes."""
    resolved = resolve_prompt(small, _parsed(segments, source))
    for fmt in WRITERS:
        out = render_prompts(resolved, None, fmt, library=small)
        back, _ = read_prompts(small, out.prompt, None, fmt)
        keeps_breaks = fmt == "a1111"
        assert meaning(resolve_prompt(small, back), keeps_breaks) == meaning(
            resolved, keeps_breaks
        ), (fmt, out.prompt)
        if resolved.parsed.breaks and not keeps_breaks:
            assert any("BREAK" in n for n in out.notes)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(
    refs=st.lists(st.tuples(st.sampled_from(ENTRIES), _weight), min_size=1, max_size=5),
    words=st.lists(st.sampled_from(["a", "red", "cat", "photo,"]), min_size=1, max_size=5),
)
def test_conceptlib_weights_become_each_uis_weights(small, refs, words):
    """A conceptlib prompt's ``<name:w>`` reads back from every UI as weight ``w``."""
    weights = dict(refs)
    prompt = " ".join(words + [f"<{n}:{w}>" for n, w in weights.items()] + words)
    for fmt in WRITERS:
        out = format_prompts(small, prompt, None, fmt, syntax="conceptlib")
        back, _ = read_prompts(small, out.prompt, None, fmt)
        got = {
            r.info.name: round(
                r.ref.effective_weight * back.attention_of(back.parts.index(r.ref)), 9
            )
            for r in resolve_prompt(small, back).refs
        }
        assert got == {n: round(w, 9) for n, w in weights.items()}, (fmt, out.prompt)


@pytest.mark.parametrize(
    "prompt, syntax, fmt, expected",
    [
        ("a (red:1.2) cattoy", "a1111", "invokeai", "a (red)1.2 <cattoy>"),
        ("a (red:1.2) cattoy", "a1111", "comfyui", "a (red:1.2) embedding:cattoy"),
        ("a (red)1.2 <cattoy>", "invokeai", "a1111", "a (red:1.2) cattoy"),
        ("a (red:1.5) (embedding:cattoy:0.8)", "comfyui", "a1111", "a (red:1.5) (cattoy:0.8)"),
        ("a \\(b\\) cattoy", "a1111", "comfyui", "a \\(b\\) embedding:cattoy"),
        ("a [x] cattoy", "comfyui", "a1111", "a \\[x\\] cattoy"),
        ("x BREAK cattoy", "a1111", "a1111", "x BREAK cattoy"),
    ],
)
def test_attention_is_written_in_the_target_syntax(small, prompt, syntax, fmt, expected):
    """Text attention read in one syntax used to be dropped on writing (only embedding
    weights were written back), and escapes were lost."""
    out = format_prompts(small, prompt, None, fmt, syntax=syntax)
    assert out.prompt == expected


def test_what_a_ui_cannot_say_is_noted(small):
    out = format_prompts(small, "a (red:1.2) cattoy BREAK b", None, "diffusers", syntax="a1111")
    assert out.prompt == "a red cattoy b"
    (note,) = [n for n in out.notes if "dropped" in n]
    assert "(red:1.2)" in note and "BREAK" in note
    out = format_prompts(small, "a (red:1.2) cattoy BREAK b", None, "comfyui", syntax="a1111")
    assert out.prompt == "a (red:1.2) embedding:cattoy b"
    assert any("no BREAK" in n for n in out.notes)
    out = format_prompts(small, "a (cattoy:1.2)", None, "invokeai", syntax="a1111")
    assert out.prompt == "a (<cattoy>)1.2"
    assert any("written for A1111" in n for n in out.notes)

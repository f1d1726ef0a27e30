"""Composing at the CLIP skip an embedding was trained at (issue 14, item 3): the value
recorded by ``train --clip-skip`` is the default, ``--clip-skip`` wins with a warning,
the infotext carries A1111's ``Clip skip`` and ``compose --from`` reads it back; the
trainer and compose read the same layer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from compose_support import fresh_base, link_tiny_into_home
from PIL import Image

from conceptlib.cli.main import cli
from conceptlib.compose.clip_skip import effective_clip_skip, recorded_clip_skip
from conceptlib.compose.compose import compose, parse_infotext
from conceptlib.errors import UsageError
from conceptlib.models.clip_skip import select_hidden
from conceptlib.registry.samples import sample_embedding

FAST = {"steps": 2, "guidance": 5.0, "width": 32, "height": 32, "seed": 3}


@pytest.fixture
def catalog(_isolated_home):
    from conceptlib.registry.library import Library

    with Library.open() as library:
        library.add_embedding(sample_embedding("sd1", 1, 1), name="skip-two",
                              extra={"clip_skip": 2})  # fmt: skip
        library.add_embedding(sample_embedding("sd1", 1, 2), name="skip-one",
                              extra={"clip_skip": 1})  # fmt: skip
        library.add_embedding(sample_embedding("sd1", 1, 3), name="plain")
        library.add_embedding(sample_embedding("sdxl", 1, 4), name="xl-two",
                              extra={"clip_skip": 2})  # fmt: skip
        yield library


class _Ref:
    def __init__(self, name, extra):  # noqa: ANN001
        self.info = type("Info", (), {"name": name, "extra": extra})()


class _Prompt:
    def __init__(self, *refs):  # noqa: ANN002
        self.refs = list(refs)


def test_the_recorded_value_is_the_default_and_an_option_wins_with_a_warning():
    two, one = _Ref("a", {"clip_skip": 2}), _Ref("b", {"clip_skip": 1})
    assert effective_clip_skip([_Prompt(two)], None) == (2, "a", [])
    assert effective_clip_skip([_Prompt(_Ref("c", {}))], None) == (1, None, [])
    value, source, notes = effective_clip_skip([_Prompt(two)], 1)
    assert (value, source) == (1, "option")
    assert notes == ["a was trained at CLIP skip 2; composing at 1 (--clip-skip)"]
    value, source, notes = effective_clip_skip([_Prompt(two, one)], None)
    assert (value, source) == (2, "a")
    assert "different CLIP skips: using 2, a's; b (1)" in notes[0]
    with pytest.raises(UsageError, match="--clip-skip 13: expected 1"):
        effective_clip_skip([_Prompt(two)], 13)


@pytest.mark.parametrize("bogus", [True, "2", 2.0, 0, 99, None, [2]])
def test_a_recorded_value_that_is_not_a_clip_skip_is_ignored(bogus):
    assert recorded_clip_skip(_Ref("x", {"clip_skip": bogus}).info) is None


def test_trainer_and_compose_read_the_same_layer():
    """SD 1.x at skip 2: the penultimate layer through the final layer norm (A1111)."""
    from conceptlib.compose.encode import _hidden
    from conceptlib.compose.loader import pipeline_encoders

    bm = fresh_base("tiny-sd1")
    (spec,) = pipeline_encoders(bm.pipeline)
    ids = spec.tokenizer("a photo", padding="max_length", max_length=77).input_ids
    with torch.no_grad():
        out = spec.encoder(torch.tensor([ids]), output_hidden_states=True)
        norm = getattr(spec.encoder, "text_model", spec.encoder).final_layer_norm
        expected = norm(out.hidden_states[-2])
        composed, _ = _hidden(spec, ids, False, 2)
        trained = select_hidden(spec.encoder, out, 2, sdxl=False)
        last, _ = _hidden(spec, ids, False, 1)
    torch.testing.assert_close(composed, expected)
    torch.testing.assert_close(trained, expected)
    assert not torch.allclose(last, expected)


def test_compose_uses_the_entrys_clip_skip_and_writes_it_to_the_infotext(catalog, tmp_path):
    dry = compose("<skip-two>", base=None, library=catalog, dry_run=True)
    assert dry.clip_skip == 2 and dry.to_dict()["clip_skip"] == 2
    bm = fresh_base("tiny-sd1")
    at_two = compose("a <skip-two>", base=bm, library=catalog, out=tmp_path / "two.png", **FAST)
    params = parse_infotext(at_two.infotexts[0])["params"]
    assert params["Clip skip"] == "2"
    forced = compose("a <skip-two>", base=bm, library=catalog, out=tmp_path / "one.png",
                     clip_skip=1, **FAST)  # fmt: skip
    assert "Clip skip" not in parse_infotext(forced.infotexts[0])["params"]
    assert any("trained at CLIP skip 2; composing at 1" in w for w in forced.warnings)
    a = np.asarray(Image.open(at_two.images[0]), dtype=np.int16)
    b = np.asarray(Image.open(forced.images[0]), dtype=np.int16)
    assert np.abs(a - b).max() > 0  # a different layer, a different image
    plain = compose("a <plain>", base=None, library=catalog, dry_run=True)
    assert plain.clip_skip == 1


def test_compose_from_an_image_keeps_its_clip_skip(catalog, tmp_path, _isolated_home):
    link_tiny_into_home(_isolated_home)
    catalog.close()
    runner = CliRunner()
    first = runner.invoke(cli, ["compose", "a <skip-two>", "--base", "tiny-sd1", "--steps", "2",
                                "--width", "32", "--height", "32", "--seed", "1",
                                "-o", str(tmp_path / "a.png"), "--json"])  # fmt: skip
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["clip_skip"] == 2
    again = runner.invoke(cli, ["compose", "--from", str(tmp_path / "a.png"), "--base",
                                "tiny-sd1", "--width", "32", "--height", "32",
                                "-o", str(tmp_path / "b.png"), "--json"])  # fmt: skip
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["clip_skip"] == 2


def test_a_clip_skip_the_model_has_no_layer_for_is_refused_and_writes_nothing(
    catalog, tmp_path, _isolated_home, catalog_snapshot
):
    """tiny-sdxl's encoders have 2 layers: SDXL already reads the penultimate, so 1 is
    the most; an entry trained at 2 (on a bigger model) is refused there, not clipped."""
    link_tiny_into_home(_isolated_home)
    catalog.close()
    before = catalog_snapshot(_isolated_home)
    res = CliRunner().invoke(cli, ["compose", "<xl-two>", "--base", "tiny-sdxl", "--steps", "2",
                                   "-o", str(tmp_path / "x.png")])  # fmt: skip
    assert res.exit_code == 2, res.output
    assert "CLIP skip 2:" in res.output and "allows 1 to 1" in res.output
    assert not (tmp_path / "x.png").exists()
    assert catalog_snapshot(_isolated_home) == before
    res = CliRunner().invoke(cli, ["compose", "<plain>", "--clip-skip", "13", "--dry-run"])
    assert res.exit_code == 2 and "--clip-skip" in res.output

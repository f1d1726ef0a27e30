"""Validation prompts: ``train --validation-prompt`` (with its negative prompt, seed,
guidance and steps) replaces the templates the run renders at each sample point and
kept step (tiny-sd1 on the CPU)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from compose_support import tiny_cache_dir
from PIL import Image

from conceptlib.cli.main import cli
from conceptlib.errors import UsageError
from conceptlib.registry.library import Library
from conceptlib.trainer.samples import write_sample_images
from conceptlib.trainer.steps import step_path
from conceptlib.trainer.train import train
from conceptlib.trainer.validation import Validation, check_validation, prompt_text


@pytest.fixture
def images(tmp_path):
    return write_sample_images(tmp_path / "imgs", 3, size=48)[0].parent


def test_validation_prompts_are_rendered_at_each_point_and_recorded(images, tmp_path):
    logs: list[str] = []
    prompts = ["a photo of val-toy on a beach", "a red {} at night", "a plain landscape"]
    with Library.open() as lib:
        result = train(
            [images], name="val-toy", init="toy", steps=4, batch=2, sample_every=2,
            sample_steps=1, checkpoint_every=0, save_every=4, cache_dir=tiny_cache_dir(),
            library=lib, log=logs.append, validation_prompts=prompts,
            validation_negative="blurry", validation_seed=7, validation_guidance=3.0,
            tensorboard=False,
        )  # fmt: skip
        info = lib.get("val-toy")
    cfg = result.config
    # The concept's name and {} are one placeholder; the run records what it rendered.
    assert cfg["validation_prompts"] == ["a photo of {} on a beach", "a red {} at night",
                                         "a plain landscape"]  # fmt: skip
    assert (cfg["validation_negative"], cfg["validation_seed"]) == ("blurry", 7)
    assert (cfg["validation_guidance"], cfg["sample_steps"]) == (3.0, 1)
    assert info.training_runs[0].config["validation_prompts"] == cfg["validation_prompts"]
    # A prompt without the concept is rendered, with a warning.
    assert any("--validation-prompt 3 'a plain landscape' does not use the concept" in line
               for line in logs)  # fmt: skip
    # Three images at step 2 and three at step 4 (not the two templates).
    names = sorted(p.name for p in result.sample_paths)
    assert names == [f"step-{s:06d}-{i}.png" for s in (2, 4) for i in range(3)]
    # The grid: one labelled row per sample point, one column per prompt with a header.
    grid = Image.open(result.grid_path)
    assert grid.size == (90 + 3 * 164, 34 + 2 * 164 + 4)
    kept = Image.open(step_path(result.run_dir, "val-toy", 4).with_suffix(".png"))
    assert kept.size == (90 + 3 * 164, 2 * 4 + 160)
    # --no-tensorboard (tensorboard=False): no event files.
    assert result.tensorboard_dir is None
    assert not (result.run_dir / "tensorboard").exists()
    run_json = json.loads((result.run_dir / "steps" / "run.json").read_text())
    assert run_json["config"]["validation_negative"] == "blurry"


def test_validation_prompt_checks():
    v, warnings = check_validation(["my-toy in the snow", "{} and MY-TOY"], name="my-toy")
    assert v.prompts == ("{} in the snow", "{} and {}") and warnings == []
    # A longer name holding the concept's is not the concept.
    v, warnings = check_validation(["my-toy-2 on a table"], name="my-toy")
    assert v.prompts == ("my-toy-2 on a table",) and len(warnings) == 1
    assert Validation().prompts_for(["a {}", "b {}", "c {}"]) == ["a {}", "b {}"]
    assert prompt_text("a photo of {} on a beach") == "a photo of on a beach"
    assert check_validation([], name="x-toy")[0].config() == {
        "validation_prompts": None, "validation_negative": "", "validation_seed": 1000,
        "validation_guidance": 7.5,
    }  # fmt: skip
    for kwargs, message in (
        (dict(prompts=["a {x} photo of {}"]), "braces other than {}"),
        (dict(prompts=["   "]), "is empty"),
        (dict(prompts=["a photo\nof {}"]), "control character '\\n'"),
        (dict(prompts=["{} " + "x" * 1000]), "expected at most 1000"),
        (dict(prompts=["{}"] * 17), "at most 16"),
        (dict(prompts=["{}"], guidance=float("nan")), "--validation-guidance nan"),
        (dict(prompts=["{}"], seed=-1), "--validation-seed -1"),
        (dict(prompts=["{}"], negative="bad\x1b[31m"), "control character '\\x1b'"),
    ):
        with pytest.raises(UsageError, match=None) as err:
            check_validation(name="my-toy", **kwargs)
        assert message in err.value.message, (kwargs, err.value.message)


def test_bad_validation_options_fail_before_loading_and_change_nothing(
    images, _isolated_home, catalog_snapshot
):
    before = catalog_snapshot(_isolated_home)
    runner = CliRunner()
    base = ["train", str(images), "--name", "val-toy", "--init", "toy", "--steps", "2"]
    long_prompt = "{} " + " ".join(["photo"] * 80)
    for args, message in (
        (["--validation-prompt", "a {} in a {style}"], "braces other than {}"),
        (["--validation-prompt", "a {}\r\nsecond line"], "control character"),
        (["--validation-prompt", long_prompt], "at most 75 fit"),
        (["--validation-prompt", "{}", "--validation-negative", " ".join(["x"] * 90)],
         "--validation-negative is"),
        (["--validation-steps", "0"], "Invalid value for '--sample-steps' / '--validation-steps'"),
        (["--validation-guidance", "80"], "Invalid value for '--validation-guidance'"),
    ):  # fmt: skip
        out = runner.invoke(cli, [*base, *args])
        assert out.exit_code == 2, (args, out.output)
        assert message in " ".join(out.output.split()), (args, out.output)
    assert catalog_snapshot(_isolated_home) == before
    assert not (_isolated_home / "runs").exists()
    # One option, two names: the existing --sample-steps is --validation-steps too.
    out = runner.invoke(cli, ["train", "--help"])
    assert "--sample-steps, --validation-steps" in out.output

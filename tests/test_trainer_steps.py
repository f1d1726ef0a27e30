"""Kept steps: ``train --save-every N`` keeps the vectors every N steps, and
``train --name X --register-step N`` registers one of them (tiny-sd1 on the CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from compose_support import tiny_cache_dir
from safetensors import safe_open

from conceptlib.cli.main import cli
from conceptlib.registry.formats.read import read_embedding_file
from conceptlib.registry.library import Library
from conceptlib.trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from conceptlib.trainer.samples import write_sample_images
from conceptlib.trainer.steps import kept_steps, register_step, step_path
from conceptlib.trainer.train import train


class Stop(Exception):
    pass


def _stop_at(step):
    def progress(p):
        if p.phase == "train" and p.step == step:
            raise Stop

    return progress


@pytest.fixture
def images(tmp_path):
    return write_sample_images(tmp_path / "imgs", 3, size=48)[0].parent


def _common(**over):
    common = dict(init="toy", vectors=2, steps=6, batch=2, sample_every=0, sample_steps=1,
                  checkpoint_every=2, cache_dir=tiny_cache_dir())  # fmt: skip
    common.update(over)
    return common


def test_kept_steps_hold_the_runs_vectors_at_each_step_across_a_resume(images, tmp_path):
    run_dir = tmp_path / "runs" / "kept-toy"
    with Library.open() as lib:
        # Stopped at step 5: the checkpoint holds step 4, the steps kept are 2 and 4.
        with pytest.raises(Stop):
            train([images], name="kept-toy", save_every=2, run_dir=run_dir, library=lib,
                  progress=_stop_at(5), **_common())  # fmt: skip
        assert kept_steps(run_dir, "kept-toy") == [2, 4]
        state, _ = load_checkpoint(run_dir / CHECKPOINT_NAME)
        at4 = read_embedding_file(step_path(run_dir, "kept-toy", 4))
        with safe_open(step_path(run_dir, "kept-toy", 4), "np") as fh:
            assert list(fh.keys()) == ["emb_params"]  # the layout A1111 and ComfyUI read
        np.testing.assert_array_equal(at4.embedding.vectors["clip_l"], state["vectors"]["clip_l"])
        # The resumed run keeps saving on the same steps and ends equal to a straight run.
        resumed = train([images], name="kept-toy", save_every=2, run_dir=run_dir, library=lib,
                        resume=True, **_common())  # fmt: skip
        straight = train([images], name="straight-toy", run_dir=tmp_path / "straight",
                         register=False, **_common())  # fmt: skip
    assert resumed.kept_steps == [2, 4, 6] and straight.kept_steps == []
    assert not (tmp_path / "straight" / "steps").exists()
    np.testing.assert_allclose(
        resumed.embedding.vectors["clip_l"], straight.embedding.vectors["clip_l"], atol=1e-6
    )
    at6 = read_embedding_file(step_path(run_dir, "kept-toy", 6)).embedding
    np.testing.assert_array_equal(at6.vectors["clip_l"], resumed.embedding.vectors["clip_l"])
    for step in (2, 4, 6):
        png = step_path(run_dir, "kept-toy", step).with_suffix(".png")
        assert png.read_bytes().startswith(b"\x89PNG")
    assert resumed.to_dict()["kept_steps"] == [2, 4, 6]


def test_register_step_makes_a_new_version_and_errors_change_nothing(
    images, _isolated_home, catalog_snapshot
):
    run_dir = _isolated_home / "runs" / "kept-toy"
    with Library.open() as lib:
        done = train([images], name="kept-toy", save_every=2, library=lib, **_common())
    assert done.run_dir == run_dir and done.kept_steps == [2, 4, 6]
    at4 = read_embedding_file(step_path(run_dir, "kept-toy", 4)).embedding
    runner = CliRunner()

    out = runner.invoke(cli, ["train", "--name", "kept-toy", "--register-step", "4", "--json"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown["name"] == "kept-toy" and shown["version"] == 2
    with Library.open() as lib:
        info = lib.get("kept-toy")
        old = lib.get("kept-toy@v1")
        stored = lib.load(info)
    np.testing.assert_array_equal(stored.vectors["clip_l"], at4.vectors["clip_l"])
    assert old.tensor_sha256 == done.embedding.tensor_sha256 and old.version == 1
    (record,) = info.training_runs
    assert record.steps == 4 and record.config["kept_step"] == 4
    assert info.source_ref == str(run_dir) and info.extra["kept_step"] == 4
    assert info.base_model == "conceptlib/tiny-sd1" and info.initializer == "toy"
    assert {p.role for p in info.previews} == {"grid"}

    before = catalog_snapshot(_isolated_home)
    bad = [
        (["--register-step", "3"], 2, "keeps steps 2, 4, 6"),
        (["--register-step", "0"], 2, "at least 1"),
        (["--register-step", "4"], 5, "registered already, as 'kept-toy'"),
        (["--register-step", "6"], 5, "registered already, as 'kept-toy@v1'"),
        (["--register-step", "2", "--steps", "3"], 2, "it takes no --steps"),
        (["--register-step", "2", str(images)], 2, "it takes no IMAGES"),
    ]
    for args, code, message in bad:
        out = runner.invoke(cli, ["train", "--name", "kept-toy", *args])
        assert out.exit_code == code, (args, out.output)
        assert message in " ".join(out.output.split()), (args, out.output)
    out = runner.invoke(cli, ["train", "--name", "other-toy", "--register-step", "2"])
    assert out.exit_code == 2 and "no kept steps of 'other-toy'" in out.output
    # A kept file changed after training is refused, not registered.
    path = step_path(run_dir, "kept-toy", 2)
    path.write_bytes(step_path(run_dir, "kept-toy", 6).read_bytes())
    out = runner.invoke(cli, ["train", "--name", "kept-toy", "--register-step", "2"])
    assert out.exit_code == 8 and "changed after training" in out.output, out.output
    with pytest.raises(Exception, match="changed after training"):
        register_step("kept-toy", 2)
    assert catalog_snapshot(_isolated_home) == before


def test_save_every_and_missing_inputs_are_refused_before_any_work(
    images, _isolated_home, catalog_snapshot
):
    before = catalog_snapshot(_isolated_home)
    runner = CliRunner()
    base = ["train", str(images), "--name", "kept-toy", "--init", "toy", "--steps", "6"]
    for every, message in (("7", "at most --steps 6"), ("0", "at least 1")):
        # --base names a folder that does not exist: the check comes before loading it.
        out = runner.invoke(cli, [*base, "--save-every", every, "--base", "./no-such-base"])
        assert out.exit_code == 2 and message in out.output, out.output
    out = runner.invoke(cli, ["train", "--name", "kept-toy", "--init", "toy"])
    assert out.exit_code == 2 and "Missing argument 'IMAGES...'" in out.output
    out = runner.invoke(cli, ["train", str(images), "--name", "kept-toy"])
    assert out.exit_code == 2 and "Missing option '--init'" in out.output
    assert catalog_snapshot(_isolated_home) == before
    assert not (_isolated_home / "runs").exists()

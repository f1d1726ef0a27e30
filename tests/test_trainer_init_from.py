"""``train --init-from NAME``: a run that starts from a registered entry's vectors
(tiny-sd1 on the CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from compose_support import link_tiny_into_home, tiny_cache_dir

from conceptlib.cli.main import cli
from conceptlib.errors import UsageError
from conceptlib.registry.library import Library
from conceptlib.registry.samples import sample_embedding
from conceptlib.trainer.checkpoint import CHECKPOINT_NAME
from conceptlib.trainer.samples import write_sample_images
from conceptlib.trainer.train import train


class Stop(Exception):
    pass


@pytest.fixture
def images(tmp_path):
    return write_sample_images(tmp_path / "imgs", 3, size=48)[0].parent


def _common(**over):
    common = dict(steps=2, batch=2, sample_every=0, sample_steps=1, checkpoint_every=0,
                  cache_dir=tiny_cache_dir(), tensorboard=False)  # fmt: skip
    common.update(over)
    return common


def test_init_from_continues_an_entry_and_records_it_as_parent(images, _isolated_home):
    with Library.open() as lib:
        first = train([images], name="cont-toy", init="toy", vectors=2, library=lib, **_common())
        # A learning rate of ~0 keeps the start: the rows are the entry's, not --init's.
        child = train([images], name="cont-toy-2", init_from="cont-toy", library=lib,
                      **_common(lr=1e-12))  # fmt: skip
        parent = lib.get("cont-toy")
        info = lib.get("cont-toy-2")
    start = first.embedding.vectors["clip_l"]
    assert child.embedding.vectors["clip_l"].shape == (2, start.shape[1])  # --vectors taken
    np.testing.assert_allclose(child.embedding.vectors["clip_l"], start, atol=1e-6)
    cfg = child.config
    assert (cfg["init"], cfg["vectors"], cfg["init_from"]) == (None, 2, "cont-toy")
    assert cfg["init_from_sha256"] == parent.tensor_sha256
    assert info.parents == [{"tensor_sha256": parent.tensor_sha256, "name": "cont-toy",
                             "weight": 1.0, "relation": "init-from"}]  # fmt: skip
    assert info.initializer is None and child.init_tokens == {}
    out = CliRunner().invoke(cli, ["show", "cont-toy-2"])
    assert out.exit_code == 0 and "cont-toy:1.0 (init-from)" in out.output, out.output


def test_init_from_under_the_same_name_makes_a_new_version(images, _isolated_home):
    with Library.open() as lib:
        first = train([images], name="ver-toy", init="toy", library=lib, save_every=2,
                      **_common())  # fmt: skip
        again = train([images], name="ver-toy", init_from="ver-toy", library=lib,
                      save_every=2, **_common())  # fmt: skip
        new, old = lib.get("ver-toy"), lib.get("ver-toy@v1")
    assert (old.version, new.version) == (1, 2)
    assert old.tensor_sha256 == first.embedding.tensor_sha256
    assert new.tensor_sha256 == again.embedding.tensor_sha256
    assert new.parents[0]["name"] == "ver-toy@v1" and again.parents == new.parents
    # Its own run folder: the first run's stays as it was.
    assert again.run_dir == _isolated_home / "runs" / "ver-toy@v2"
    assert first.run_dir == _isolated_home / "runs" / "ver-toy"
    assert (first.run_dir / "steps" / "ver-toy-2.json").is_file()
    # A kept step of the new run registers as version 3, still naming its parent.
    facts = json.loads((again.run_dir / "steps" / "run.json").read_text())
    assert facts["parents"] == [dict(new.parents[0], name="ver-toy")]


def test_init_from_is_resumed_only_from_the_same_entry(images, _isolated_home):
    def stop(p):
        if p.phase == "train" and p.step == 3:
            raise Stop

    with Library.open() as lib:
        lib.add_embedding(sample_embedding("sd1", 1, 1), name="res-a")
        with pytest.raises(Stop):
            train([images], name="res-child", init="toy", library=lib, progress=stop,
                  **_common(steps=4, checkpoint_every=2))  # fmt: skip
        with pytest.raises(Exception, match="init_from_sha256: checkpoint None"):
            train([images], name="res-child", init_from="res-a", library=lib, resume=True,
                  **_common(steps=4, checkpoint_every=2))  # fmt: skip
    assert (_isolated_home / "runs" / "res-child" / CHECKPOINT_NAME).is_file()


def test_init_from_errors_change_nothing(images, _isolated_home, catalog_snapshot):
    link_tiny_into_home(_isolated_home)
    with Library.open() as lib:
        lib.add_embedding(sample_embedding("sd1", 2, 3), name="real-sd1")
        lib.add_embedding(sample_embedding("sdxl", 1, 4), name="an-xl")
        lib.add_embedding(sample_embedding("sd2", 1, 5), name="an-sd2")
    before = catalog_snapshot(_isolated_home)
    runner = CliRunner()
    base = ["train", str(images), "--name", "err-toy", "--steps", "2", "--batch", "2"]
    for args, code, message in (
        (["--init", "toy", "--init-from", "real-sd1"], 2, "both give the starting vectors"),
        (["--init-from", "real-sd1", "--vectors", "3"], 2, "has 2 vectors per token"),
        (["--init-from", "real-sd"], 6, "no embedding named 'real-sd'"),
        # Before loading: the tiny-sd1 tokenizers say sd1 (an sdxl entry is refused).
        (["--init-from", "an-xl", "--base", "tiny-sd1"], 3, "is a sdxl embedding"),
        (["--init-from", "real-sd1", "--base", "tiny-sdxl"], 3, "is a sd1 embedding"),
        (["--init-from", "an-sd2"], 3, "is a sd2 embedding"),
        ([], 2, "Missing option '--init'"),
    ):
        out = runner.invoke(cli, [*base, *args])
        assert out.exit_code == code, (args, out.output)
        assert message in " ".join(out.output.split()), (args, out.output)
    with pytest.raises(UsageError, match="--init or --init-from is required"):
        train([images], name="err-toy", **_common())
    assert catalog_snapshot(_isolated_home) == before
    assert not (_isolated_home / "runs" / "err-toy" / "learned_embeds.safetensors").exists()

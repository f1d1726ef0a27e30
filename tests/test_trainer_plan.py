"""Plan files: several concepts trained together against one frozen base model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from compose_support import tiny_cache_dir, tiny_folder

from conceptlib.cli.main import cli
from conceptlib.errors import NaNLoss, TrainingError, UsageError
from conceptlib.registry.library import Library
from conceptlib.trainer import loop
from conceptlib.trainer.checkpoint import CHECKPOINT_NAME
from conceptlib.trainer.multi import train_plan
from conceptlib.trainer.plan import MAX_PLAN_BYTES, read_plan
from conceptlib.trainer.samples import write_sample_images
from conceptlib.trainer.train import train

SHARED = """
steps = {steps}
batch = 2
sample_every = 0
sample_steps = 1
checkpoint_every = {ckpt}
tensorboard = false
"""
ALPHA = """
[[concept]]
name = "alpha-thing"
images = "a"
init = "toy"
seed = 3
tags = ["toys"]
"""
BETA = """
[[concept]]
name = "beta-thing"
images = ["b"]
init = "box"
seed = 5
vectors = 2
lr = 0.01
description = "a box"
"""
SOLO = {"batch": 2, "sample_every": 0, "sample_steps": 1, "register": False, "tensorboard": False}


@pytest.fixture
def folder(tmp_path):
    write_sample_images(tmp_path / "a", 3, size=48, seed=0)
    write_sample_images(tmp_path / "b", 3, size=48, seed=7)
    return tmp_path


def link_sd1(home):
    """Make ``tiny-sd1`` in ``home`` the session's already built model."""
    import os

    from conceptlib.models.tiny import tiny_path

    dst = tiny_path("tiny-sd1", home / "cache")
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(tiny_folder("tiny-sd1"), dst, target_is_directory=True)


def write_plan(folder, text, name="plan.toml"):
    path = folder / name
    path.write_text(text)
    return path


def solo(folder, name, tmp_path, **options):
    spec = {"alpha-thing": dict(images="a", init="toy", seed=3),
            "beta-thing": dict(images="b", init="box", seed=5, vectors=2, lr=0.01)}[name]  # fmt: skip
    images = folder / spec.pop("images")
    return train([images], name=name, run_dir=tmp_path / f"solo-{name}",
                 cache_dir=tiny_cache_dir(), **{**SOLO, **spec, **options})  # fmt: skip


def assert_same_vectors(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for slot in a:
        np.testing.assert_allclose(a[slot], b[slot], rtol=0, atol=atol)


def test_cotrained_concepts_follow_their_solo_trajectories_and_register_apart(
    folder, tmp_path, _isolated_home
):
    """Two concepts in one batch: each ends where it ends trained alone (same seed), and
    each is registered with its own training run naming the plan and the other."""
    link_sd1(_isolated_home)
    plan = write_plan(folder, SHARED.format(steps=4, ckpt=2) + ALPHA + BETA)
    out = CliRunner().invoke(cli, ["train-plan", str(plan), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [c["name"] for c in data["concepts"]] == ["alpha-thing", "beta-thing"]
    assert data["world_size"] == 1 and data["failures"] == []
    plan_sha = data["plan_sha256"]
    with Library.open() as lib:
        infos = {n: lib.get(n) for n in ("alpha-thing", "beta-thing")}
        stored = {n: lib.load(i).vectors for n, i in infos.items()}
    for name, other in (("alpha-thing", "beta-thing"), ("beta-thing", "alpha-thing")):
        alone = solo(folder, name, tmp_path, steps=4)
        assert_same_vectors(stored[name], alone.embedding.vectors)
        row = next(c for c in data["concepts"] if c["name"] == name)
        assert row["registered"] and row["tensor_sha256"] == infos[name].tensor_sha256
        info = infos[name]
        (run,) = info.training_runs
        assert run.steps == 4 and run.final_loss == pytest.approx(alone.final_loss, abs=1e-6)
        assert run.config["plan"]["sha256"] == plan_sha
        assert run.config["plan"]["concepts"] == ["alpha-thing", "beta-thing"]
        assert run.config["co_trained"] == [other]
        assert run.config["seed"] == alone.config["seed"] and run.config["lr"] == alone.config["lr"]
        assert info.source == "trained" and info.source_ref.endswith(f"plan-plan/{name}")
        assert {p.role for p in info.previews} == {"loss_curve", "grid", "sample"}
    assert infos["alpha-thing"].tags == ["toys"] and infos["beta-thing"].num_vectors == 2
    assert infos["beta-thing"].description == "a box"
    assert not (_isolated_home / "runs" / "plan-plan" / CHECKPOINT_NAME).exists()


def test_cotrained_sdxl_concepts_follow_their_solo_trajectories(folder, tmp_path):
    """Also: kept steps (save_every) land in each concept's folder and change nothing."""
    from conceptlib.trainer.steps import register_step

    plan = write_plan(folder, 'base = "tiny-sdxl"\nsave_every = 2\n'
                      + SHARED.format(steps=2, ckpt=0) + ALPHA + BETA)  # fmt: skip
    result = train_plan(plan, register=False, cache_dir=tiny_cache_dir())
    for r in result.results:
        alone = solo(folder, r.name, tmp_path, steps=2, base="tiny-sdxl")
        assert set(r.embedding.vectors) == {"clip_l", "clip_g"}
        assert r.kept_steps == [2] and r.run_dir == result.run_dir / r.name
        with Library.open() as lib:
            kept = register_step(r.name, 2, library=lib, run_dir=r.run_dir)
            assert kept.tensor_sha256 == r.embedding.tensor_sha256
        assert_same_vectors(r.embedding.vectors, alone.embedding.vectors)
        np.testing.assert_allclose(r.losses, alone.losses, rtol=0, atol=1e-6)


def test_a_plan_run_resumes_exactly_and_refuses_other_settings(
    folder, tmp_path, monkeypatch, _isolated_home
):
    from conceptlib.trainer.multi import MultiConcept

    text = SHARED.format(steps=5, ckpt=2) + ALPHA + BETA
    common = {"register": False, "cache_dir": tiny_cache_dir()}
    straight = train_plan(write_plan(folder, f'run_dir = "{tmp_path / "a"}"\n' + text,
                                     "a.toml"), **common)  # fmt: skip
    plan_b = write_plan(folder, f'run_dir = "{tmp_path / "b"}"\n' + text, "b.toml")

    real_step = MultiConcept.step

    def ctrl_c_at_4(self):
        if self.step_count == 3:
            raise KeyboardInterrupt
        real_step(self)

    link_sd1(_isolated_home)
    with monkeypatch.context() as m:
        m.setattr(MultiConcept, "step", ctrl_c_at_4)
        out = CliRunner().invoke(cli, ["train-plan", str(plan_b)])
    assert out.exit_code == 130, out.output
    assert "interrupted at step 3 of 5; the checkpoint (step 2) is kept" in out.output
    assert f"to continue: conceptlib train-plan {plan_b} --resume" in out.output
    ckpt = tmp_path / "b" / CHECKPOINT_NAME
    assert ckpt.is_file()
    with pytest.raises(TrainingError, match="unfinished run of plan") as exc:
        train_plan(plan_b, **common)
    assert "--resume" in exc.value.hint
    # a setting that may not change, in one concept: named with the concept
    changed = write_plan(folder, f'run_dir = "{tmp_path / "b"}"\n' + text.replace(
        'seed = 5', 'seed = 6'), "b2.toml")  # fmt: skip
    with pytest.raises(TrainingError, match=r"beta-thing.*seed: checkpoint 5, now 6"):
        train_plan(changed, resume=True, **common)
    fewer = write_plan(folder, f'run_dir = "{tmp_path / "b"}"\n' + SHARED.format(
        steps=5, ckpt=2) + ALPHA, "b3.toml")  # fmt: skip
    with pytest.raises(TrainingError, match="holds the concepts alpha-thing, beta-thing"):
        train_plan(fewer, resume=True, **common)

    resumed = train_plan(plan_b, resume=True, **common)
    for a, b in zip(straight.results, resumed.results, strict=True):
        assert b.resumed_from == 2
        assert_same_vectors(a.embedding.vectors, b.embedding.vectors)
        np.testing.assert_allclose(a.losses, b.losses, rtol=0, atol=1e-6)
    assert not ckpt.exists()


def test_a_nan_loss_names_the_concept_and_keeps_the_checkpoint(
    folder, monkeypatch, _isolated_home, catalog_snapshot
):
    link_sd1(_isolated_home)
    plan = write_plan(folder, SHARED.format(steps=4, ckpt=2) + ALPHA + BETA)
    real = loop.compute_loss

    def nan_at_3(pred, target, *, step):
        loss = real(pred, target, step=step)
        return loss * float("nan") if step == 2 else loss

    monkeypatch.setattr(loop, "compute_loss", nan_at_3)
    with Library.open():
        pass
    before = catalog_snapshot(_isolated_home)
    with pytest.raises(NaNLoss) as exc:
        train_plan(plan)
    assert "[[concept]] 1 ('alpha-thing')" in exc.value.message
    assert "the loss became nan at step 3" in exc.value.message
    assert (_isolated_home / "runs" / "plan-plan" / CHECKPOINT_NAME).is_file()
    assert catalog_snapshot(_isolated_home) == before


def test_dry_run_checks_everything_and_loads_nothing(folder, monkeypatch, _isolated_home,
                                                     catalog_snapshot):  # fmt: skip
    import conceptlib.models.base as base_mod

    link_sd1(_isolated_home)
    plan = write_plan(folder, SHARED.format(steps=4, ckpt=2) + ALPHA + BETA)

    def no_loading(*args, **kwargs):
        raise AssertionError("a dry run loaded the base model")

    monkeypatch.setattr(base_mod, "load_base", no_loading)
    with Library.open():
        pass
    before = catalog_snapshot(_isolated_home)
    out = CliRunner().invoke(cli, ["train-plan", str(plan), "--dry-run", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["dry_run"] is True
    rows = {c["name"]: c for c in data["concepts"]}
    assert rows["alpha-thing"]["training_image_count"] == 3 and rows["beta-thing"]["vectors"] == 2
    assert rows["beta-thing"]["lr"] == 0.01 and rows["alpha-thing"]["lr"] == 5e-3
    assert {c["rank"] for c in data["concepts"]} == {0}
    out = CliRunner().invoke(cli, ["train-plan", str(plan), "--dry-run"])
    assert out.exit_code == 0 and "would train" in out.output and "alpha-thing" in out.output
    assert catalog_snapshot(_isolated_home) == before
    assert not (_isolated_home / "runs").exists()


def test_plan_share_is_round_robin_in_plan_order(folder):
    plan = read_plan(write_plan(folder, SHARED.format(steps=1, ckpt=0) + "".join(
        f'[[concept]]\nname = "thing-{i}"\nimages = "a"\ninit = "toy"\n' for i in range(5))))  # fmt: skip
    assert [c.name for c in plan.share(0, 2)] == ["thing-0", "thing-2", "thing-4"]
    assert [c.name for c in plan.share(1, 2)] == ["thing-1", "thing-3"]
    assert [c.name for c in plan.share(2, 3)] == ["thing-2"]


CONCEPT = '[[concept]]\nname = "alpha-thing"\nimages = "a"\ninit = "toy"\n'

# (plan text, exit code, what the message says)
BAD_PLANS = [
    ("stepz = 3\n" + CONCEPT, 2, "unknown key(s) 'stepz'; allowed: base, base_config"),
    ('[[concept]]\nname = "alpha-thing"\nimages = "a"\ninit = "toy"\nnmae = "x"\n', 2,
     "[[concept]] 1 ('alpha-thing'): unknown key(s) 'nmae'"),
    (CONCEPT + "steps = 3\n", 2, "(base, steps, resolution... are shared: set them at the top)"),
    ('steps = "ten"\n' + CONCEPT, 2, "steps is str; expected an integer"),
    ("steps = true\n" + CONCEPT, 2, "steps is bool; expected an integer"),
    ('[[concept]]\nname = "alpha-thing"\nimages = "a"\n', 2, "no init; a concept needs"),
    ("steps = 3\n", 2, "has no [[concept]] table"),
    ("steps = \n", 2, "is not valid TOML"),
    (CONCEPT + CONCEPT.replace("alpha-thing", "Alpha-Thing"), 2,
     "[[concept]] 1 and 2 are both named 'Alpha-Thing'"),
    (CONCEPT + CONCEPT.replace("alpha-thing", "alpha_thing"), 2,
     "would share the placeholder token '<alpha-thing_0>'"),
    (CONCEPT.replace("init = \"toy\"", "vectors = 0\ninit = \"toy\""), 2,
     "[[concept]] 1 ('alpha-thing'): --vectors 0: expected 1 to 75"),
    ("lr = '0.05:10, abc'\n" + CONCEPT, 2, "[[concept]] 1 ('alpha-thing'): --lr"),
    (CONCEPT.replace('"a"', '"missing"'), 6, "[[concept]] 1 ('alpha-thing'), images:"),
    (CONCEPT.replace("alpha-thing", "cat"), 2, "the name 'cat' is an ordinary word"),
    (CONCEPT + CONCEPT.replace("alpha-thing", "beta-thing").replace(
        '"toy"', '"a <alpha-thing_0>"'), 2, "holds '<alpha-thing_0>', the placeholder token"),
    ("save_every = 9\nsteps = 3\n" + CONCEPT, 2, "save_every"),
    ("resolution = 20\n" + CONCEPT, 2, "resolution = 20: expected a multiple of 8"),
    ('templates = "nope.txt"\n' + CONCEPT, 6, "[[concept]] 1 ('alpha-thing'), templates:"),
    ('device = "cdua"\n' + CONCEPT, 2, "device"),
    # train() options a mixed batch cannot take yet: refused by name, with the reason
    ("buckets = true\n" + CONCEPT, 2,
     "buckets is a train option a plan does not support yet: aspect-ratio buckets give"),
    (CONCEPT + "accumulate = 2\n", 2,
     "[[concept]] 1 ('alpha-thing'): accumulate is a train option a plan does not support"),
    ('cuda_graphs = "on"\n' + CONCEPT, 2,
     "cuda_graphs is a train option a plan does not support yet: a plan step runs eagerly"),
    # the newer per-concept options, checked as train() checks them
    (CONCEPT + 'captions = "nope"\n', 2, "('alpha-thing'), captions: --captions 'nope'"),
    (CONCEPT + "validation_guidance = -1\n", 2, "--validation-guidance -1"),
    (CONCEPT + 'init_from = "zzz-entry"\n', 2, "--init 'toy' and --init-from 'zzz-entry' both"),
    (CONCEPT.replace('init = "toy"', 'init_from = "zzz-entry"'), 6, "init_from"),
    ("gradient_checkpointing = 1\n" + CONCEPT, 2,
     "gradient_checkpointing is int; expected true or false"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "code", "message"), BAD_PLANS)
def test_bad_plans_are_refused_before_anything_loads(text, code, message, folder,
                                                     _isolated_home, catalog_snapshot):  # fmt: skip
    plan = write_plan(folder, text)
    with Library.open():
        pass
    before = catalog_snapshot(_isolated_home)
    out = CliRunner().invoke(cli, ["train-plan", str(plan)])
    assert out.exit_code == code, out.output
    assert message in out.output, out.output
    assert "plan.toml" in out.output
    assert catalog_snapshot(_isolated_home) == before
    assert not (_isolated_home / "runs").exists()


def test_a_name_taken_in_the_catalog_is_refused_naming_the_concept(
    folder, emb_factory, _isolated_home, catalog_snapshot
):
    with Library.open() as lib:
        lib.add_embedding(emb_factory(), name="beta-thing")
    plan = write_plan(folder, SHARED.format(steps=1, ckpt=0) + ALPHA + BETA)
    before = catalog_snapshot(_isolated_home)
    out = CliRunner().invoke(cli, ["train-plan", str(plan), "--json"])
    assert out.exit_code == 5, out.output
    assert "[[concept]] 2 ('beta-thing')" in out.output and "is taken" in out.output
    assert catalog_snapshot(_isolated_home) == before


def test_plan_files_are_read_with_a_size_cap(folder):
    path = write_plan(folder, "# " + "x" * MAX_PLAN_BYTES + "\n" + CONCEPT)
    with pytest.raises(UsageError, match="is over 1024 KiB"):
        read_plan(path)
    with pytest.raises(Exception, match="does not exist") as exc:
        read_plan(folder / "nope.toml")
    assert exc.value.exit_code == 6


def test_plan_paths_are_relative_to_the_plan_and_defaults_fill_in(folder):
    plan = read_plan(write_plan(folder, 'tags = ["shared"]\nlr = 0.02\n' + ALPHA + BETA))
    alpha, beta = plan.concepts
    assert alpha.images == [folder / "a"] and beta.images == [folder / "b"]
    assert alpha.tags == ["shared", "toys"] and beta.tags == ["shared"]
    assert alpha.lr == 0.02 and beta.lr == 0.01 and alpha.vectors == 1 and beta.vectors == 2
    assert plan.settings["steps"] == 2000 and plan.settings["base"] == "tiny-sd1"


def test_plan_throughput_benchmark_runs(tmp_path, _isolated_home):
    """bench/train_throughput.py --plan (tiny, on the CPU): a smoke test, not a timing."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    link_sd1(_isolated_home)
    out = tmp_path / "plan.json"
    cmd = [sys.executable, str(root / "bench" / "train_throughput.py"), "--model", "sd15",
           "--plan", "2", "--batch", "1", "--short", "1", "--long", "2", "--warmup", "1",
           "--rounds", "1", "--json", str(out), "--markdown", "--device", "cpu",
           "--size", "tiny"]  # fmt: skip
    env = dict(os.environ, CONCEPTLIB_HOME=str(_isolated_home))
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "| sd15 | tiny | 32 | plan | 2 x 1 |" in res.stdout
    (result,) = json.loads(out.read_text())["results"]
    assert result["concepts"] == 2 and result["single"]["batch"] == 2
    assert result["ratio"] == pytest.approx(
        result["plan"]["images_per_s"] / result["single"]["images_per_s"]
    )


def test_captions_and_validation_prompts_in_a_plan_match_solo_training(
    folder, tmp_path, _isolated_home
):
    """A concept with captions and a validation prompt trains in a plan as alone."""
    link_sd1(_isolated_home)
    extra = ('captions = "filename"\nvalidation_prompts = ["a photo of alpha-thing"]\n'
             "validation_seed = 7\n")  # fmt: skip
    plan = write_plan(folder, SHARED.format(steps=2, ckpt=0) + ALPHA + extra + BETA)
    out = CliRunner().invoke(cli, ["train-plan", str(plan), "--json"])
    assert out.exit_code == 0, out.output
    with Library.open() as lib:
        info = lib.get("alpha-thing")
        stored = lib.load(info).vectors
    alone = solo(folder, "alpha-thing", tmp_path, steps=2, captions="filename",
                 validation_prompts=["a photo of alpha-thing"], validation_seed=7)  # fmt: skip
    assert_same_vectors(stored, alone.embedding.vectors)
    (run,) = info.training_runs
    for key in ("captions", "validation_prompts", "validation_seed", "templates_sha256",
                "training_images_hash", "gradient_checkpointing"):  # fmt: skip
        assert run.config[key] == alone.config[key], key
    assert run.config["captions"] == "filename"


def test_init_from_in_a_plan_registers_the_parent(folder, _isolated_home):
    link_sd1(_isolated_home)
    with Library.open() as lib:
        train([folder / "a"], name="alpha-thing", init="toy", vectors=2, steps=1, library=lib,
              cache_dir=tiny_cache_dir(), **{**SOLO, "register": True})  # fmt: skip
        parent = lib.get("alpha-thing")
    text = '[[concept]]\nname = "gamma-thing"\nimages = "b"\ninit_from = "alpha-thing"\n'
    out = CliRunner().invoke(cli, ["train-plan", str(write_plan(folder, SHARED.format(
        steps=1, ckpt=0) + text)), "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    with Library.open() as lib:
        info = lib.get("gamma-thing")
    assert info.num_vectors == 2  # taken from the entry
    assert info.parents == [{"tensor_sha256": parent.tensor_sha256, "name": "alpha-thing",
                             "weight": 1.0, "relation": "init-from"}]  # fmt: skip
    cfg = info.training_runs[0].config
    assert (cfg["init"], cfg["init_from"], cfg["init_from_sha256"]) == (
        None, "alpha-thing", parent.tensor_sha256)  # fmt: skip

"""A plan run across two processes with torchrun (gloo on the CPU): each rank trains its
share, both register into one SQLite catalog, and each concept ends as trained alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_trainer_plan import ALPHA, BETA, SHARED, assert_same_vectors, link_sd1, solo, write_plan

from conceptlib.registry.library import Library
from conceptlib.trainer.distributed import dist_env
from conceptlib.trainer.samples import write_sample_images

ROOT = Path(__file__).resolve().parents[1]


def test_two_processes_split_the_plan_and_register_into_one_catalog(
    tmp_path, _isolated_home, backend
):
    """Both ranks register into one catalog: SQLite in the home, or (``backend``
    postgres) the shared PostgreSQL catalog named by CONCEPTLIB_DATABASE_URL, which the
    children inherit."""
    write_sample_images(tmp_path / "a", 3, size=48, seed=0)
    write_sample_images(tmp_path / "b", 3, size=48, seed=7)
    plan = write_plan(tmp_path, SHARED.format(steps=3, ckpt=0) + ALPHA + BETA)
    link_sd1(_isolated_home)
    with Library.open():  # the catalog exists before the two writers start
        pass
    # Forked children never touch CUDA: the device is pinned and each uses one thread.
    env = dict(os.environ, CONCEPTLIB_HOME=str(_isolated_home), CONCEPTLIB_DEVICE="cpu",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(ROOT / "src"))  # fmt: skip
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "conceptlib", "train-plan", str(plan), "--json"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(res.stdout)  # rank 0 alone prints, after gathering every rank's results
    assert data["world_size"] == 2 and data["failures"] == []
    rows = {c["name"]: c for c in data["concepts"]}
    assert rows["alpha-thing"]["rank"] == 0 and rows["beta-thing"]["rank"] == 1
    with Library.open() as lib:
        assert sorted(e.name for e in lib.list()) == ["alpha-thing", "beta-thing"]
        for name in ("alpha-thing", "beta-thing"):
            info = lib.get(name)
            (run,) = info.training_runs
            assert run.config["plan"]["world_size"] == 2
            assert run.config["plan"]["rank"] == rows[name]["rank"]
            assert info.tensor_sha256 == rows[name]["tensor_sha256"]
            alone = solo(tmp_path, name, tmp_path, steps=3)
            assert_same_vectors(lib.load(info).vectors, alone.embedding.vectors)
            np.testing.assert_allclose(run.final_loss, alone.final_loss, rtol=0, atol=1e-6)
    # each rank wrote its own checkpoint file name; a finished run leaves none
    assert not list((_isolated_home / "runs" / "plan-plan").glob("checkpoint*"))


@pytest.mark.parametrize(
    ("env", "expected"),
    [({}, None), ({"RANK": "1", "WORLD_SIZE": "2"}, (1, 2, 1)),
     ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, 1))],
)  # fmt: skip
def test_torchrun_environment_is_read(env, expected, monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert dist_env() == expected


def test_a_bad_torchrun_environment_is_refused(monkeypatch):
    from conceptlib.errors import UsageError

    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="expected 0 <= RANK < WORLD_SIZE"):
        dist_env()

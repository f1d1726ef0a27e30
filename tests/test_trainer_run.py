"""train() end to end on the tiny models: registration, resume, NaN, CLI, demo."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from compose_support import link_tiny_into_home, tiny_cache_dir, tiny_folder
from ldm_layout import save_single_file

from conceptlib.errors import NameCollision, NaNLoss, TrainingError
from conceptlib.registry.library import Library
from conceptlib.trainer import loop
from conceptlib.trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint
from conceptlib.trainer.images import load_training_images
from conceptlib.trainer.samples import write_sample_images
from conceptlib.trainer.train import train

FAST = {"batch": 2, "sample_every": 0, "sample_steps": 1, "cache_dir": None}


@pytest.fixture
def images(tmp_path):
    write_sample_images(tmp_path / "imgs", 3, size=48)
    return tmp_path / "imgs"


@pytest.fixture
def fast():
    return dict(FAST, cache_dir=tiny_cache_dir())


class Stop(Exception):
    pass


def test_train_registers_a_concept_with_its_training_run(images, fast, _isolated_home):
    lines: list[str] = []
    reports = []
    with Library.open() as lib:
        result = train([images], name="toy-thing", init="teddy bear", vectors=2, steps=4,
                       tags=("toys",), library=lib, log=lines.append,
                       progress=reports.append, **fast)  # fmt: skip
        info = lib.get("toy-thing")
        found = [e.name for e in lib.search("toy-thing")]
        by_base = [e.name for e in lib.search(base_model="conceptlib/tiny-sd1")]
        stored = lib.load(info)
    assert found == ["toy-thing"] and by_base == ["toy-thing"]
    assert info.source == "trained" and info.family == "sd1" and info.num_vectors == 2
    assert info.initializer == "teddy bear" and info.tags == ["toys"]
    assert info.base_model == "conceptlib/tiny-sd1"
    assert info.base_model_fingerprint == result.base_model_fingerprint
    assert info.base_model_fingerprint.startswith("fp2:")
    assert info.training_images_hash == load_training_images([images]).hash
    assert info.training_image_count == 3
    (run,) = info.training_runs
    assert run.steps == 4 and run.final_loss == pytest.approx(result.final_loss)
    assert run.device.startswith("cpu") and run.wall_time_s > 0
    assert run.config["lr"] == 5e-3 and run.config["vectors"] == 2
    assert run.config["base_model_fingerprint"] == info.base_model_fingerprint
    assert run.initializer == "teddy bear"
    assert {p.role for p in info.previews} == {"loss_curve", "grid", "sample"}
    np.testing.assert_array_equal(stored.vectors["clip_l"], result.embedding.vectors["clip_l"])
    assert any("cycle" in line for line in lines)
    assert [r.step for r in reports if r.phase == "train"][-1] == 4
    assert reports[-1].phase == "done"
    # the run folder: embedding, loss curve, sample grid; no checkpoint left behind
    assert result.loss_curve_path.read_bytes().startswith(b"\x89PNG")
    assert result.grid_path.read_bytes().startswith(b"\x89PNG")
    assert not (result.run_dir / CHECKPOINT_NAME).exists()
    assert len(result.losses) == 4 and all(np.isfinite(result.losses))

    # `show` displays the run
    from conceptlib.cli.main import cli

    out = CliRunner().invoke(cli, ["show", "toy-thing"])
    assert out.exit_code == 0, out.output
    assert "training run" in out.output and "teddy bear" in out.output
    # the name is checked before any work
    with Library.open() as lib, pytest.raises(NameCollision):
        train([images], name="toy-thing", init="toy", steps=1, library=lib, **fast)


def test_sdxl_trains_both_encoders_into_clip_l_and_clip_g(images, fast, tmp_path):
    result = train([images], name="xl-thing", init="toy", base="tiny-sdxl", vectors=2, steps=2,
                   register=False, run_dir=tmp_path / "run", **fast)  # fmt: skip
    emb = result.embedding
    assert emb.family.value == "sdxl"
    assert {k: v.shape for k, v in emb.vectors.items()} == {"clip_l": (2, 768), "clip_g": (2, 1280)}
    assert result.info is None and result.embedding_path.is_file()


def test_interrupted_and_resumed_equals_uninterrupted(images, fast, tmp_path):
    common = dict(name="resumed", init="toy", vectors=2, steps=6, checkpoint_every=2,
                  register=False, seed=11, **fast)  # fmt: skip
    straight = train([images], run_dir=tmp_path / "a", **common)

    def kill_at_5(p):
        if p.phase == "train" and p.step == 5:
            raise Stop

    run_b = tmp_path / "b"
    with pytest.raises(Stop):
        train([images], run_dir=run_b, progress=kill_at_5, **common)
    ckpt = run_b / CHECKPOINT_NAME
    state, config = load_checkpoint(ckpt)
    assert state["step"] == 4 and config["seed"] == 11
    assert ckpt.stat().st_size < 64 * 1024  # vectors, optimizer state, RNG: kilobytes
    assert [p.name for p in run_b.iterdir() if p.name.endswith(".tmp")] == []

    with pytest.raises(TrainingError, match="unfinished run") as exc:
        train([images], run_dir=run_b, **common)
    assert "--resume" in exc.value.hint
    # --lr and --precision may change on resume (tests/test_trainer_recovery.py); the rest may not
    with pytest.raises(TrainingError, match="batch: checkpoint 2, now 1"):
        train([images], run_dir=run_b, resume=True, **dict(common, batch=1))

    resumed = train([images], run_dir=run_b, resume=True, **common)
    assert resumed.resumed_from == 4
    for slot, vec in straight.embedding.vectors.items():
        np.testing.assert_allclose(resumed.embedding.vectors[slot], vec, rtol=0, atol=1e-6)
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=0, atol=1e-6)
    assert not ckpt.exists()
    with pytest.raises(TrainingError, match="no checkpoint"):
        train([images], run_dir=run_b, resume=True, **common)


# fp16 matrix products are slow on CPUs: the fp16 case uses the smaller model.
@pytest.mark.parametrize(("model", "precision"), [("tiny-sdxl", "bf16"), ("tiny-sd1", "fp16")])
def test_half_precision_path_runs_on_the_cpu(model, precision, images, fast, tmp_path, capfd):
    """The CUDA dtype path on a CPU: frozen models in bf16/fp16, fp32 vectors, and for
    fp16 the grad scaler, whose state a checkpoint keeps so a resumed run is exact."""
    from conceptlib.models.base import load_base

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    bm = load_base(model, dtype=dtype, cache_dir=fast["cache_dir"])
    frozen = {s.slot: s.encoder.get_input_embeddings().weight.detach().clone() for s in bm.slots}
    common = dict(name="half", init="toy", vectors=2, steps=4, checkpoint_every=2, seed=5,
                  register=False, base=bm, **dict(fast, cache_dir=None))  # fmt: skip
    capfd.readouterr()
    straight = train([images], run_dir=tmp_path / "a", **common)

    def kill_at_3(p):
        if p.phase == "train" and p.step == 3:
            raise Stop

    with pytest.raises(Stop):
        train([images], run_dir=tmp_path / "b", progress=kill_at_3, **common)
    state, _ = load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert ("scaler" in state) == (precision == "fp16")
    resumed = train([images], run_dir=tmp_path / "b", resume=True, **common)
    out = capfd.readouterr()
    assert (out.out, out.err) == ("", "")  # no library chatter (VAE upcast, fp16 sampling)

    assert straight.precision == precision and straight.config["precision"] == precision
    for slot, vec in straight.embedding.vectors.items():
        assert vec.dtype == np.float32 and np.isfinite(vec).all()
        np.testing.assert_allclose(resumed.embedding.vectors[slot], vec, rtol=0, atol=1e-6)
    assert all(np.isfinite(straight.losses))
    for s in bm.slots:
        table = s.encoder.get_input_embeddings().weight
        assert table.dtype == dtype and torch.equal(
            table[: frozen[s.slot].shape[0]], frozen[s.slot]
        )


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(images, fast, tmp_path, monkeypatch):
    real = loop.compute_loss

    def poisoned(pred, target, *, step):
        loss = real(pred, target, step=step)
        return loss * float("nan") if step >= 4 else loss  # the 5th step goes NaN

    monkeypatch.setattr(loop, "compute_loss", poisoned)
    run = tmp_path / "run"
    with pytest.raises(NaNLoss) as exc:
        train([images], name="nan", init="toy", steps=8, checkpoint_every=2, register=False,
              run_dir=run, **fast)  # fmt: skip
    assert "step 5" in exc.value.message and "step 4" in exc.value.message
    assert exc.value.exit_code != 0
    state, _ = load_checkpoint(run / CHECKPOINT_NAME)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["vectors"].values())


def test_cli_train_json_and_help(images, _isolated_home):
    from conceptlib.cli.main import cli

    link_tiny_into_home(_isolated_home)
    runner = CliRunner()
    help_text = runner.invoke(cli, ["train", "-h"]).output
    assert "Example" in help_text and "--resume" in help_text and "--base" in help_text
    args = [str(images), "--name", "cli-thing", "--init", "toy", "--steps", "2", "--batch", "1",
            "--sample-every", "0", "--json"]  # fmt: skip
    out = runner.invoke(cli, ["train", *args])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["registered"] and data["info"]["name"] == "cli-thing"
    assert data["steps"] == 2 and data["base_model"] == "conceptlib/tiny-sd1"
    assert os.path.isfile(data["loss_curve_path"])


def test_cli_trains_on_a_single_file_checkpoint(images, _isolated_home, tmp_path, catalog_snapshot):
    from conceptlib.cli.main import cli
    from conceptlib.models.base import load_base
    from conceptlib.models.fingerprint import fingerprint_path

    ckpt = tmp_path / "my-finetune.safetensors"
    save_single_file(load_base(tiny_folder("tiny-sd1")).pipeline, ckpt)
    runner = CliRunner()
    common = [str(images), "--name", "single-thing", "--init", "toy", "--steps", "2",
              "--batch", "1", "--sample-every", "0", "--base", str(ckpt)]  # fmt: skip
    before = catalog_snapshot(_isolated_home)
    # user errors first: no configs offline, configs of another family; nothing changes
    for extra, fragment in (
        ([], "offline"),
        (["--base-config", str(tiny_folder("tiny-sdxl"))], "is an sd1 checkpoint"),
    ):
        out = runner.invoke(cli, ["train", *common, *extra])
        assert out.exit_code == 3, out.output
        first = out.output.strip().splitlines()[0]
        assert first.startswith("error: ") and fragment in first, out.output
        assert catalog_snapshot(_isolated_home) == before
    out = runner.invoke(cli, ["train", *common, "--base-config", str(tiny_folder("tiny-sd1")),
                              "--json"])  # fmt: skip
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["base_model"] == "my-finetune.safetensors" and data["family"] == "sd1"
    assert data["base_model_fingerprint"] == fingerprint_path(ckpt)
    with Library.open() as lib:
        info = lib.get("single-thing")
        found = [e.name for e in lib.search(base_model="my-finetune.safetensors")]
    assert found == ["single-thing"]
    assert info.base_model_fingerprint == fingerprint_path(ckpt)
    (run,) = info.training_runs
    assert run.config["base"] == str(ckpt)
    assert run.config["base_config"] == str(tiny_folder("tiny-sd1"))

    # Another fine-tune under the same file name: same model id, another fingerprint;
    # `search --base FINGERPRINT` tells the two concepts apart.
    from safetensors.torch import load_file, save_file

    other = tmp_path / "elsewhere" / "my-finetune.safetensors"
    other.parent.mkdir()
    tensors = load_file(ckpt)
    key = "model.diffusion_model.out.2.bias"
    tensors[key] = tensors[key] + 0.01
    save_file(tensors, other)
    args = [str(images), "--name", "other-thing", "--init", "toy", "--steps", "1", "--batch",
            "1", "--sample-every", "0", "--base", str(other), "--base-config",
            str(tiny_folder("tiny-sd1")), "--json"]  # fmt: skip
    out = runner.invoke(cli, ["train", *args])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["base_model"] == "my-finetune.safetensors"

    def search(base):
        res = runner.invoke(cli, ["search", "--base", base, "--json"])
        assert res.exit_code == 0, res.output
        return sorted(e["name"] for e in json.loads(res.output))

    assert fingerprint_path(other) != fingerprint_path(ckpt)
    assert search("my-finetune.safetensors") == ["other-thing", "single-thing"]
    assert search(fingerprint_path(ckpt)) == ["single-thing"]
    assert search(fingerprint_path(other)) == ["other-thing"]


def test_cli_progress_bar_shows_loss_rate_and_eta_on_a_terminal(images, _isolated_home):
    """Run as a real process on a pseudo-terminal: the bar is drawn on stderr with the
    step count, the loss, steps/s and the time remaining."""
    import pty
    import subprocess
    import sys

    from tty_support import read_terminal

    link_tiny_into_home(_isolated_home)
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(TERM="xterm-256color", COLUMNS="160")
    cmd = [sys.executable, "-m", "conceptlib", "train", str(images), "--name", "bar-thing",
           "--init", "toy", "--steps", "12", "--batch", "1", "--sample-every", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=slave, env=env)  # fmt: skip
    os.close(slave)
    screen = read_terminal(master, proc, 240)
    assert proc.returncode == 0, screen[-2000:]
    assert "training" in screen and "/12" in screen
    assert "loss " in screen and "steps/s" in screen
    assert re.search(r"\d:\d\d:\d\d", screen)  # elapsed / remaining columns
    assert "registered" in proc.stdout.read().decode()


def test_cli_defaults_match_the_library():
    from conceptlib.cli import train as cli
    from conceptlib.trainer import train as lib

    assert (cli._STEPS, cli._LR, cli._BATCH, cli._CKPT, cli._SAMPLE) == (
        lib.DEFAULT_STEPS,
        lib.DEFAULT_LR,
        lib.DEFAULT_BATCH,
        lib.DEFAULT_CHECKPOINT_EVERY,
        lib.DEFAULT_SAMPLE_EVERY,
    )


def test_cli_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, conceptlib.cli.train; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_demo_trains_registers_finds_and_reports(tmp_path):
    from conceptlib.trainer.demo import run_demo

    with Library.open() as lib:
        out = run_demo(lib, tmp_path / "demo", steps=3, cache_dir=tiny_cache_dir())
        again = run_demo(lib, tmp_path / "demo2", steps=1, cache_dir=tiny_cache_dir())
    assert out["name"] == "demo-toy" and again["name"] == "demo-toy-2"
    assert out["search"]["found"] == ["demo-toy"]
    assert out["base_model"] == "conceptlib/tiny-sd1"
    for key in ("loss_curve", "sample_grid", "embedding"):
        assert os.path.isfile(out[key]), key
    assert len(out["images"]) == 6


def test_stale_checkpoint_temp_files_are_removed_on_the_next_save(tmp_path):
    """A write killed mid-way leaves `.checkpoint.safetensors.XXXX.tmp`; the next save
    removes it."""
    from conceptlib.trainer.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / CHECKPOINT_NAME
    stale = tmp_path / f".{CHECKPOINT_NAME}.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.pt.abc123.tmp"
    other.write_bytes(b"not ours")
    save_checkpoint(path, {"step": 3}, {"steps": 10})
    assert not stale.exists() and other.exists()
    state, config = load_checkpoint(path)
    assert state["step"] == 3 and config == {"steps": 10}


def test_checkpoint_is_safetensors_with_json_metadata_and_round_trips(tmp_path):
    """No pickle: tensors in a safetensors file, the rest as JSON in its metadata; the
    state comes back with its types (int keys, tuples, None, bools, uint8 RNG state)."""
    from safetensors import safe_open

    from conceptlib.trainer.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint

    g = torch.Generator().manual_seed(3)
    state = {
        "step": 7,
        "vectors": {"clip_l": torch.randn(2, 768, generator=g), "clip_g": torch.randn(2, 1280)},
        "optimizer": {
            "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.zeros(2, 768)}},
            "param_groups": [
                {
                    "lr": 5e-3,
                    "betas": (0.9, 0.999),
                    "foreach": None,
                    "fused": True,
                    "params": [0, 1],
                }
            ],  # fmt: skip
        },
        "generator": g.get_state(),
        "losses": torch.linspace(1.0, 0.5, 7),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 3},
        "wall_time_s": 1.5,
    }
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, state, {"lr": 5e-3, "steps": 10, "templates": None})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["format"] == CHECKPOINT_FORMAT
        # two vectors, the step counter, exp_avg, the generator state, the losses
        assert len(list(f.keys())) == 6
    loaded, config = load_checkpoint(path)
    assert config == {"lr": 5e-3, "steps": 10, "templates": None}
    assert (
        loaded["step"] == 7 and loaded["wall_time_s"] == 1.5 and loaded["scaler"] == state["scaler"]
    )
    group = loaded["optimizer"]["param_groups"][0]
    assert group["betas"] == (0.9, 0.999) and isinstance(group["betas"], tuple)
    assert group["foreach"] is None and group["fused"] is True and group["params"] == [0, 1]
    assert list(loaded["optimizer"]["state"]) == [0]  # an int key stays an int
    assert torch.equal(loaded["optimizer"]["state"][0]["step"], torch.tensor(7.0))
    assert loaded["generator"].dtype == torch.uint8
    assert torch.equal(loaded["generator"], state["generator"])
    for slot, vec in state["vectors"].items():
        assert torch.equal(loaded["vectors"][slot], vec)


def test_bad_checkpoints_are_refused_clearly_and_never_run(tmp_path):
    import pickle

    from safetensors.torch import save_file

    from conceptlib.trainer.checkpoint import load_checkpoint

    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(pickle.dumps({"step": Evil()}))
    with pytest.raises(TrainingError, match="unreadable checkpoint"):
        load_checkpoint(path)
    assert not sentinel.exists()
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "something else"})
    with pytest.raises(TrainingError, match="not a conceptlib training checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"\x05")
    with pytest.raises(TrainingError, match="unreadable checkpoint"):
        load_checkpoint(path)


def test_a_legacy_pickled_checkpoint_is_named_not_loaded(images, _isolated_home, catalog_snapshot):
    from conceptlib.cli.main import cli

    link_tiny_into_home(_isolated_home)
    run_dir = _isolated_home / "runs" / "old-run"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"\x80\x02}q\x00.")  # a 0.1.0 pickled checkpoint
    before = catalog_snapshot(_isolated_home)
    args = ["train", str(images), "--name", "old-run", "--init", "toy", "--steps", "2",
            "--sample-every", "0", "--resume"]  # fmt: skip
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 8, out.output
    first = out.output.strip().splitlines()[0]  # refused before loading the base model
    assert first.startswith("error: ") and "conceptlib 0.1.0" in first, out.output
    assert "without --resume" in out.output
    assert catalog_snapshot(_isolated_home) == before
    assert (run_dir / "checkpoint.pt").exists()

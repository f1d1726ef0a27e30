"""What real users bring to `train`: a vocabulary word as the name, an initializer that
is a placeholder, a NaN loss and its advertised recovery, a device the machine does not
have, Ctrl-C, and a missing images folder."""

from __future__ import annotations

import json
import re
import shlex

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from compose_support import fresh_base, link_tiny_into_home, tiny_cache_dir

from conceptlib.cli.main import cli
from conceptlib.config import FP16_MAX
from conceptlib.errors import DeviceUnavailable, InvalidName, LoaderError, UsageError
from conceptlib.registry.library import Library
from conceptlib.trainer import loop
from conceptlib.trainer.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from conceptlib.trainer.samples import write_sample_images
from conceptlib.trainer.train import TrainingInterrupted, train

#: Few steps, one image per step, no intermediate samples: seconds on two CPU cores.
FAST_CLI = ["--batch", "1", "--sample-every", "0", "--device", "cpu"]
#: A device that exists on no machine, with or without a GPU.
NO_SUCH_DEVICE = "cuda:999"


@pytest.fixture
def images(tmp_path):
    write_sample_images(tmp_path / "imgs", 3, size=48)
    return tmp_path / "imgs"


@pytest.fixture
def home(_isolated_home):
    link_tiny_into_home(_isolated_home)
    return _isolated_home


def _train_options() -> set[str]:
    from conceptlib.cli.train import train_cmd

    return {opt for p in train_cmd.params for opt in getattr(p, "opts", [])}


def _assert_options_exist(text: str) -> None:
    named = set(re.findall(r"--[a-z][a-z-]*", text))
    assert named, text
    assert named <= _train_options(), named - _train_options()


def _params(argv: list[str]) -> dict:
    """What `conceptlib train ARGV` would run with (option order does not matter)."""
    from conceptlib.cli.train import train_cmd

    return train_cmd.make_context("train", list(argv)).params


def _error(output: str) -> tuple[str, str]:
    """The one error line and its hint (log lines of the run may come before them)."""
    lines = output.strip().splitlines()
    assert "Traceback" not in output, output
    at = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert len(at) == 1 and at[0] == len(lines) - 2, output
    assert lines[-1].startswith("hint: "), output
    return lines[-2], lines[-1]


def _forbid(monkeypatch, module: str, attr: str) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"{attr} ran before the check")

    monkeypatch.setattr(f"{module}.{attr}", fail)


# --------------------------------------------------------------------------- trigger words


def test_a_vocabulary_word_as_name_is_refused_before_images_and_weights(
    images, home, catalog_snapshot, monkeypatch
):
    """`--name ukiyoe` on a model whose tokenizer has the word: refused at once (exit 2),
    naming the tokenizer and the option; no image or weight is read, nothing is written."""
    from conceptlib.schemas.vocabulary import is_tokenizer_word

    before = catalog_snapshot(home)
    runner = CliRunner()
    with monkeypatch.context() as m:
        _forbid(m, "conceptlib.trainer.images", "load_training_images")
        _forbid(m, "conceptlib.models.base", "load_base")
        for name in ("ukiyoe", "Ukiyoe"):  # the tokenizer lower-cases: so does the check
            out = runner.invoke(cli, ["train", str(images), "--name", name, "--init", "toy",
                                      *FAST_CLI])  # fmt: skip
            assert out.exit_code == 2, out.output
            first, hint = _error(out.output)
            assert f"the name {name!r} is already a word of tiny-sd1's clip_l tokenizer" in first
            assert hint.startswith("hint: choose a --name") and f"my-{name}" in hint
            _assert_options_exist(hint)
    assert catalog_snapshot(home) == before
    assert not (home / "runs" / "ukiyoe").exists()
    # a tiny model not built yet is not built for the check (its tokenizer is made in code)
    empty = home.parent / "empty-cache"
    with Library.open() as lib, pytest.raises(InvalidName, match="tiny-sdxl.s clip_l tokenizer"):
        train([images], name="ukiyoe", init="toy", base="tiny-sdxl", cache_dir=empty,
              library=lib)  # fmt: skip
    assert not empty.exists()
    assert catalog_snapshot(home) == before

    # the names the hint offers are not words of that tokenizer (the same rule)
    tok = fresh_base("tiny-sd1").slots[0].tokenizer
    assert is_tokenizer_word(tok, "ukiyoe") and is_tokenizer_word(tok, "Ukiyoe")
    assert not is_tokenizer_word(tok, "my-ukiyoe")
    assert not is_tokenizer_word(tok, "ukiyoe-style")


def test_every_trigger_token_in_every_tokenizer_is_checked_like_the_loader_does(images):
    """Multi-vector triggers add `name_1`...; SDXL has two tokenizers. The trainer and the
    prompt loader share one rule, so what the trainer accepts the loader can load."""
    from conceptlib.compose.loader import load_embeddings
    from conceptlib.registry.samples import sample_embedding

    sd1 = fresh_base("tiny-sd1")
    sd1.pipeline.tokenizer.add_tokens(["mything_1"])  # a word this tokenizer knows
    missing = images.parent / "not-there"
    with Library.open() as lib:
        with pytest.raises(InvalidName, match=r"--vectors 2.*'mything_1'.*clip_l") as exc:
            train([missing], name="mything", init="toy", vectors=2, base=sd1, library=lib)
        assert exc.value.exit_code == 2 and exc.value.facts["token"] == "mything_1"
        # one vector adds only `mything`: the check passes and the images are next
        with pytest.raises(Exception, match="no such file or folder"):
            train([missing], name="mything", init="toy", vectors=1, base=sd1, library=lib)

        xl = fresh_base("tiny-sdxl")
        xl.pipeline.tokenizer_2.add_tokens(["xlword"])  # only the second tokenizer has it
        with pytest.raises(InvalidName, match=r"'xlword'.*clip_g tokenizer"):
            train([missing], name="xlword", init="toy", base=xl, library=lib)
        assert lib.list() == []
    # the loader refuses exactly these tokens, with the same rule
    with (
        pytest.raises(LoaderError, match="mything_1"),
        load_embeddings(sd1.pipeline, [("mything", sample_embedding("sd1", 2, 0))]),
    ):
        pass
    with (
        pytest.raises(LoaderError, match="ukiyoe"),
        load_embeddings(sd1.pipeline, [("ukiyoe", sample_embedding("sd1", 1, 0))]),
    ):
        pass


def test_an_initializer_holding_a_placeholder_token_is_a_usage_error(
    images, home, catalog_snapshot, monkeypatch
):
    """`--init <name_0>` (the run's own placeholder) was an IndexError after minutes of
    loading; now a usage error before the base model loads. A token another run added to
    an already loaded model is refused too, after it loads (before any step)."""
    before = catalog_snapshot(home)
    with monkeypatch.context() as m:
        _forbid(m, "conceptlib.models.base", "load_base")
        _forbid(m, "conceptlib.trainer.images", "load_training_images")
        out = CliRunner().invoke(cli, ["train", str(images), "--name", "my-toy", "--init",
                                       "a <My-Toy_0>", *FAST_CLI])  # fmt: skip
        assert out.exit_code == 2, out.output
        first, hint = _error(out.output)
        assert "'<my-toy_0>', the placeholder token this run adds" in first
        _assert_options_exist(hint)
        with pytest.raises(UsageError, match="placeholder token"):
            train([images], name="my-toy", init="<my-toy_1>", vectors=2, register=False)
        with pytest.raises(UsageError, match="--init is empty"):
            train([images], name="my-toy", init="  ", register=False)
    assert catalog_snapshot(home) == before

    bm = fresh_base("tiny-sd1")
    bm.pipeline.tokenizer.add_tokens(["<other_0>"])  # left by an earlier run on this model
    with pytest.raises(UsageError, match="'<other_0>', added to the clip_l tokenizer"):
        train([images], name="my-toy", init="<other_0>", base=bm, steps=1, register=False,
              run_dir=home / "r")  # fmt: skip
    assert catalog_snapshot(home) == before


# --------------------------------------------------------------------------- NaN and resume


def test_nan_recovery_resumes_with_a_lower_lr_from_a_checkpoint_the_importer_accepts(
    images, home, catalog_snapshot, monkeypatch
):
    """Vectors that blow up to ~1e25 (finite, but past fp16) are not a good checkpoint:
    the run stops there, keeps the previous one, and the hint's own command (a lower
    --lr with --resume) continues from it; the change is recorded and shown."""
    real_step = loop.TextualInversion.step
    real_loss = loop.compute_loss

    def exploding_step(self):
        real_step(self)
        if self.step_count == 4:
            with torch.no_grad():
                for p in self.params.values():
                    p.mul_(1e25)

    def nan_from_step_5(pred, target, *, step):
        loss = real_loss(pred, target, step=step)
        return loss * float("nan") if step >= 4 else loss

    args = ["train", str(images), "--name", "wave-toy", "--init", "toy", "--steps", "6",
            "--checkpoint-every", "2", *FAST_CLI]  # fmt: skip
    before = catalog_snapshot(home)
    ckpt = home / "runs" / "wave-toy" / CHECKPOINT_NAME
    runner = CliRunner()
    with monkeypatch.context() as m:
        m.setattr(loop.TextualInversion, "step", exploding_step)
        m.setattr(loop, "compute_loss", nan_from_step_5)
        out = runner.invoke(cli, args)
    assert out.exit_code == 8, out.output
    first, hint = _error(out.output)
    assert "the vectors diverged by step 4" in first and "65504" in first
    assert f"the last good checkpoint (step 2) is kept at {ckpt}" in first
    assert hint == "hint: resume with a lower learning rate: --resume --lr 0.0025"
    _assert_options_exist(hint)
    assert catalog_snapshot(home) == before
    state, saved = load_checkpoint(ckpt)
    assert state["step"] == 2 and saved["lr"] == 0.005
    assert all(float(v.abs().max()) < FP16_MAX for v in state["vectors"].values())

    # exactly what the hint says
    out = runner.invoke(cli, [*args, "--resume", "--lr", "0.0025", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    change = {"step": 2, "setting": "lr", "old": 0.005, "new": 0.0025}
    assert data["resumed_from"] == 2 and data["config"]["resume_changes"] == [change]
    assert data["config"]["lr"] == 0.0025 and not ckpt.exists()
    with Library.open() as lib:
        (run,) = lib.get("wave-toy").training_runs
    assert run.config["resume_changes"] == [change]
    shown = runner.invoke(cli, ["show", "wave-toy"])
    assert shown.exit_code == 0, shown.output
    assert re.search(r"changed on resume\s+at step 2: lr 0.005 -> 0.0025", shown.output)


def test_lr_and_precision_may_change_on_resume_and_every_change_is_kept(images, tmp_path):
    """The new learning rate is the one used (the optimizer state would otherwise bring
    back the old one); changes over several resumes accumulate; other settings stay strict."""
    from conceptlib.errors import TrainingError

    common = dict(name="two-stops", init="toy", vectors=2, steps=6, checkpoint_every=2,
                  batch=1, sample_every=0, sample_steps=1, register=False, seed=3,
                  run_dir=tmp_path / "run", cache_dir=tiny_cache_dir(), device="cpu")  # fmt: skip
    ckpt = tmp_path / "run" / CHECKPOINT_NAME

    def stop_at(step):
        def progress(p):
            if p.phase == "train" and p.step == step:
                raise KeyboardInterrupt

        return progress

    with pytest.raises(TrainingInterrupted) as exc:
        train([images], progress=stop_at(3), **common)
    assert exc.value.checkpoint == ckpt and exc.value.checkpoint_step == 2
    assert isinstance(exc.value, KeyboardInterrupt)
    with pytest.raises(TrainingError, match="seed: checkpoint 3, now 4"):
        train([images], resume=True, **dict(common, seed=4))

    with pytest.raises(TrainingInterrupted):
        train([images], resume=True, progress=stop_at(5), **dict(common, lr=1e-9))
    at_4, saved = load_checkpoint(ckpt)
    assert at_4["step"] == 4 and saved["lr"] == 1e-9
    assert saved["resume_changes"] == [{"step": 2, "setting": "lr", "old": 0.005, "new": 1e-9}]

    done = train([images], resume=True, **dict(common, lr=1e-9, precision="bf16"))
    assert done.resumed_from == 4 and done.precision == "bf16"
    assert done.config["resume_changes"] == [
        {"step": 2, "setting": "lr", "old": 0.005, "new": 1e-9},
        {"step": 4, "setting": "precision", "old": "fp32", "new": "bf16"},
    ]
    assert any("with precision fp32 -> bf16" in line for line in done.log)
    for slot, vec in done.embedding.vectors.items():  # lr 1e-9: two steps barely move them
        np.testing.assert_allclose(vec, at_4["vectors"][slot].numpy(), rtol=0, atol=1e-6)


def test_a_checkpoint_with_vectors_the_importer_refuses_is_not_resumed(
    images, home, catalog_snapshot
):
    """A checkpoint holding ~1e25 (an older version kept such "good" checkpoints, or the
    file was edited) is refused with the reason; nothing trains, nothing is registered."""
    runner = CliRunner()
    args = ["train", str(images), "--name", "bad-ckpt", "--init", "toy", "--steps", "4",
            "--checkpoint-every", "2", *FAST_CLI]  # fmt: skip
    ckpt = home / "runs" / "bad-ckpt" / CHECKPOINT_NAME
    with pytest.MonkeyPatch.context() as m:
        real_step = loop.TextualInversion.step

        def interrupt_the_third_step(self):
            if self.step_count == 2:
                raise KeyboardInterrupt
            real_step(self)

        m.setattr(loop.TextualInversion, "step", interrupt_the_third_step)
        assert runner.invoke(cli, args).exit_code == 130
    state, config = load_checkpoint(ckpt)
    state["vectors"] = {k: v * 1e25 for k, v in state["vectors"].items()}
    save_checkpoint(ckpt, state, config)
    data = ckpt.read_bytes()
    before = catalog_snapshot(home)

    out = runner.invoke(cli, [*args, "--resume"])
    assert out.exit_code == 8, out.output
    first, hint = _error(out.output)
    assert f"cannot resume {ckpt}: its vectors at step 2 would not pass the import checks" in first
    _assert_options_exist(hint)
    assert catalog_snapshot(home) == before and ckpt.read_bytes() == data


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_names_the_checkpoint_and_the_exact_resume_command(
    images, home, catalog_snapshot, monkeypatch
):
    real_step = loop.TextualInversion.step
    stop = {"at": 3}

    def interruptible(self):
        if self.step_count == stop["at"]:
            raise KeyboardInterrupt  # what Ctrl-C raises in the middle of a step
        real_step(self)

    monkeypatch.setattr(loop.TextualInversion, "step", interruptible)
    runner = CliRunner()
    before = catalog_snapshot(home)
    args = [str(images), "--name", "ctrl-c", "--init", "teddy bear", "--steps", "6",
            "--checkpoint-every", "2", "--tag", "a tag", "--quiet", *FAST_CLI]  # fmt: skip
    out = runner.invoke(cli, ["train", *args])
    assert out.exit_code == 130, out.output
    ckpt = home / "runs" / "ctrl-c" / CHECKPOINT_NAME
    lines = out.output.strip().splitlines()
    assert lines[0] == f"interrupted at step 3 of 6; the checkpoint (step 2) is kept at {ckpt}"
    assert lines[1].startswith("to continue: ")
    command = shlex.split(lines[1].removeprefix("to continue: "))
    assert command[:2] == ["conceptlib", "train"]
    assert _params(command[2:]) == _params([*args, "--resume"])
    assert catalog_snapshot(home) == before

    stop["at"] = None  # the printed command continues the run
    out = runner.invoke(cli, [*command[1:], "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["resumed_from"] == 2 and data["registered"] and data["steps"] == 6
    assert data["info"]["tags"] == ["a-tag"]  # tags are normalized


def test_ctrl_c_before_the_first_checkpoint_says_nothing_can_be_resumed(
    images, home, catalog_snapshot, monkeypatch
):
    real_step = loop.TextualInversion.step

    def interruptible(self):
        if self.step_count == 1:
            raise KeyboardInterrupt
        real_step(self)

    monkeypatch.setattr(loop.TextualInversion, "step", interruptible)
    before = catalog_snapshot(home)
    args = [str(images), "--name", "early-stop", "--init", "toy", "--steps", "4", *FAST_CLI]
    out = CliRunner().invoke(cli, ["train", *args])
    assert out.exit_code == 130, out.output
    lines = out.output.strip().splitlines()[-2:]  # after the run's log lines
    assert lines[0] == (
        "interrupted at step 1 of 4, before any checkpoint (every 250 steps): nothing to resume"
    )
    assert lines[1].startswith("to start over: ")
    command = shlex.split(lines[1].removeprefix("to start over: "))
    assert command[:2] == ["conceptlib", "train"] and _params(command[2:]) == _params(args)
    assert catalog_snapshot(home) == before
    assert not (home / "runs" / "early-stop" / CHECKPOINT_NAME).exists()


# --------------------------------------------------------------------------- devices


def test_devices_this_machine_cannot_use_are_one_line_usage_errors(monkeypatch):
    from conceptlib.models.base import available_devices, load_base, resolve_device

    assert resolve_device("cpu") == "cpu" and resolve_device(" CPU ") == "cpu"
    assert resolve_device(None) in ("cpu", "cuda") and "cpu" in available_devices()
    cases = {
        NO_SUCH_DEVICE: "CUDA",
        "cdua": "not a device name",
        "xpu": "xpu devices are not supported",
        "": "not a device name",
    }
    if not torch.backends.mps.is_available():
        cases["mps"] = "no MPS"
    for device, why in cases.items():
        with pytest.raises(DeviceUnavailable) as exc:
            resolve_device(device)
        err = exc.value
        assert err.exit_code == 2 and isinstance(err, UsageError)
        assert err.message.startswith(f"device {device!r} cannot be used: ")
        assert why in err.message and err.message.endswith(
            "available: " + ", ".join(available_devices())
        )
        assert "\n" not in err.message
        _assert_options_exist(err.hint)
    # a CPU-only PyTorch, on any machine
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match="device 'cuda' cannot be used.*available: cpu"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
    monkeypatch.undo()
    with pytest.raises(DeviceUnavailable, match=NO_SUCH_DEVICE):
        load_base("tiny-sd1", device=NO_SUCH_DEVICE, cache_dir=tiny_cache_dir())


def test_train_and_compose_refuse_a_missing_device_before_any_work(
    images, home, catalog_snapshot, monkeypatch
):
    from conceptlib.compose.compose import compose

    before = catalog_snapshot(home)
    _forbid(monkeypatch, "conceptlib.trainer.images", "load_training_images")
    _forbid(monkeypatch, "conceptlib.models.tiny", "load_tiny")
    runner = CliRunner()
    for cmd in (
        ["train", str(images), "--name", "dev-thing", "--init", "toy", "--device", NO_SUCH_DEVICE],
        ["compose", "a photo of a toy", "--base", "tiny-sd1", "--device", NO_SUCH_DEVICE,
         "-o", str(home / "out.png")],
    ):  # fmt: skip
        out = runner.invoke(cli, cmd)
        assert out.exit_code == 2, out.output
        first, hint = _error(out.output)
        assert f"device {NO_SUCH_DEVICE!r} cannot be used" in first
        assert "base model" not in first  # the model is not to blame
        assert len(out.output.strip().splitlines()) == 2  # the error and its hint
        _assert_options_exist(hint)
    assert catalog_snapshot(home) == before and not (home / "out.png").exists()
    with Library.open() as lib:
        with pytest.raises(DeviceUnavailable):
            train([images], name="dev-thing", init="toy", device=NO_SUCH_DEVICE, library=lib)
        with pytest.raises(DeviceUnavailable):
            compose("a photo", base="tiny-sd1", library=lib, device=NO_SUCH_DEVICE,
                    out=home / "o.png")  # fmt: skip
    assert catalog_snapshot(home) == before


# --------------------------------------------------------------------------- images


def test_a_missing_images_folder_is_not_found(images, home, catalog_snapshot):
    from conceptlib.errors import ImageError, NotFound

    before = catalog_snapshot(home)
    missing = images.parent / "no-such-folder"
    out = CliRunner().invoke(cli, ["train", str(missing), "--name", "lost-toy", "--init", "toy",
                                   *FAST_CLI])  # fmt: skip
    assert out.exit_code == 6, out.output
    assert out.output.strip() == f"error: {missing}: no such file or folder"
    assert catalog_snapshot(home) == before
    with pytest.raises(NotFound) as exc:  # also an ImageError, as before
        train([images, missing], name="lost-toy", init="toy", register=False)
    assert isinstance(exc.value, ImageError) and exc.value.path == str(missing)


def test_every_option_the_trainer_names_is_an_option_of_train():
    """Messages and hints of the trainer and the base-model loader (all their string
    literals, read without importing them) name only options `train` has."""
    import ast
    from pathlib import Path

    import conceptlib

    src = Path(conceptlib.__file__).parent
    named: dict[str, str] = {}
    for path in [*sorted((src / "trainer").glob("*.py")), *sorted((src / "models").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for opt in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", node.value):
                    named.setdefault(opt, f"{path.name}:{node.lineno}")
    assert {"--lr", "--resume", "--precision", "--name", "--init", "--device"} <= set(named)
    unknown = {opt: where for opt, where in named.items() if opt not in _train_options()}
    assert unknown == {}

"""``CONCEPTLIB_DEVICE`` sets what ``--device auto`` (the default) means, and the suite
pins it to the CPU: on a machine with a CUDA GPU the trainer used to pick CUDA by
default, also inside forked children of the reliability tests, which then failed."""

from __future__ import annotations

import os

import pytest

from conceptlib.errors import DeviceUnavailable
from conceptlib.models.base import resolve_device


def test_the_environment_sets_what_auto_means(monkeypatch):
    monkeypatch.setenv("CONCEPTLIB_DEVICE", "cpu")
    assert resolve_device(None) == "cpu"
    assert resolve_device("auto") == "cpu"
    monkeypatch.setenv("CONCEPTLIB_DEVICE", "  CPU ")
    assert resolve_device(None) == "cpu"


def test_an_explicit_device_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("CONCEPTLIB_DEVICE", "cuda:999")
    assert resolve_device("cpu") == "cpu"


def test_an_unusable_device_in_the_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("CONCEPTLIB_DEVICE", "cuda:999")  # exists on no machine
    with pytest.raises(DeviceUnavailable) as err:
        resolve_device(None)
    assert err.value.message.startswith("CONCEPTLIB_DEVICE: device 'cuda:999' cannot be used")
    assert "CONCEPTLIB_DEVICE" in err.value.hint
    assert err.value.exit_code == 2


def test_the_cli_reports_a_bad_environment_device_in_one_line(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from conceptlib.cli.main import cli

    monkeypatch.setenv("CONCEPTLIB_DEVICE", "cdua")
    images = tmp_path / "imgs"
    images.mkdir()
    result = CliRunner().invoke(
        cli, ["train", str(images), "--name", "env-dev", "--init", "toy", "--base", "tiny-sd1"]
    )
    assert result.exit_code == 2, result.output
    assert "error: CONCEPTLIB_DEVICE: device 'cdua' cannot be used" in result.output
    assert "Traceback" not in result.output


def test_the_suite_pins_the_cpu_and_the_thread_count():
    import torch

    assert os.environ["CONCEPTLIB_DEVICE"] == "cpu"
    assert resolve_device(None) == "cpu"
    assert 1 <= torch.get_num_threads() <= max(1, os.cpu_count() or 1)
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"])

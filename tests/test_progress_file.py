"""The run folder's ``progress.json``: written by ``train`` and ``train-plan`` at their
progress reports, read by ``conceptlib serve``'s runs page (live step, loss, rate,
phase, last sample), and hostile progress files that the page refuses or shows inert."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from compose_support import tiny_cache_dir
from web_support import png

from conceptlib.errors import NaNLoss
from conceptlib.registry.library import Library
from conceptlib.trainer import loop, progress_file
from conceptlib.trainer.results import TrainingInterrupted
from conceptlib.trainer.samples import write_sample_images
from conceptlib.trainer.train import train
from conceptlib.web import runs as runs_mod

BASE = "http://127.0.0.1:7861"
TINY = {"batch": 1, "resolution": 32, "sample_steps": 1, "register": False, "tensorboard": False}


@pytest.fixture
def images(tmp_path):
    write_sample_images(tmp_path / "imgs", 3, size=32)
    return tmp_path / "imgs"


@pytest.fixture
def site(_isolated_home):
    """(client, runs dir): the web app over the test's home."""
    from starlette.testclient import TestClient

    from conceptlib.web.app import create_app

    with Library.open() as lib, TestClient(create_app(lib), base_url=BASE) as client:
        yield client, lib.settings.runs_dir


@pytest.fixture
def every_report(monkeypatch):
    """Every progress report written (the 1 s throttle off), so a test sees each step."""
    monkeypatch.setattr(progress_file, "MIN_INTERVAL_S", 0.0)


def listed(html: str, section: str) -> dict[str, str]:
    """``{run name: state}`` of the runs in the page's list ``section``."""
    m = re.search(rf'<ul class="runs" id="{section}">(.*?)</ul>', html, re.S)
    if m is None:
        return {}
    return dict(re.findall(r'<li class="run" data-name="([^"]*)" data-state="([^"]*)"', m[1]))


def read_progress(folder):  # noqa: ANN001, ANN201
    return json.loads((folder / "progress.json").read_text())


# --------------------------------------------------------------------------- the trainer


def test_runs_page_shows_the_live_step_not_only_the_checkpointed_one(images, site, every_report):
    client, runs_dir = site
    seen: dict[str, object] = {}

    def progress(p):  # noqa: ANN001
        if p.phase == "train" and p.step == 5 and "html" not in seen:
            seen["html"] = client.get("/runs").text
            seen["sample"] = client.get("/runs/live-thing/sample")

    train([images], name="live-thing", init="toy", steps=6, checkpoint_every=2, sample_every=2,
          progress=progress, cache_dir=tiny_cache_dir(), **TINY)  # fmt: skip
    html = seen["html"]
    assert listed(html, "runs") == {"live-thing": "running"}
    assert 'step <span class="step">5</span> of 6' in html  # the live step
    assert "last checkpoint at step 4" in html  # the checkpoint is behind it
    assert '<span class="phase">train</span>' in html
    assert re.search(r'<span class="loss">\d+\.\d{5}</span>', html)
    assert re.search(r'<span class="steps-per-s">[\d.]+</span> steps/s', html)
    assert '<img src="/runs/live-thing/sample"' in html
    folder = runs_dir / "live-thing"
    assert seen["sample"].status_code == 200
    assert seen["sample"].headers["content-type"] == "image/png"
    assert "content-security-policy" in seen["sample"].headers
    newest = sorted((folder / "samples").glob("step-000004-*.png"))[-1]
    assert seen["sample"].content == newest.read_bytes()

    # After the run: done, at the last step, its last sample named; no longer in progress.
    doc = read_progress(folder)
    assert doc["format"] == "conceptlib-progress/1" and doc["name"] == "live-thing"
    assert (doc["phase"], doc["step"], doc["total"]) == ("done", 6, 6)
    last = sorted((folder / "samples").glob("step-000006-*.png"))[-1]
    assert doc["last_sample"] == f"samples/{last.name}" and doc["pid"] == os.getpid()
    assert isinstance(doc["loss"], float) and doc["updated_at"].endswith("+00:00")
    after = client.get("/runs").text
    assert 'id="no-runs"' in after and listed(after, "ended-runs") == {"live-thing": "done"}
    assert "training run in progress" not in client.get("/").text  # nothing in progress


def test_writes_are_throttled_except_phase_changes(images, tmp_path, monkeypatch):
    writes: list[tuple[str, int]] = []
    real = progress_file.ProgressFile._write

    def spy(self, fields, now):  # noqa: ANN001
        writes.append((fields["phase"], fields["step"]))
        real(self, fields, now)

    monkeypatch.setattr(progress_file.ProgressFile, "_write", spy)
    monkeypatch.setattr(progress_file, "MIN_INTERVAL_S", 3600.0)
    train([images], name="slow-writer", init="toy", steps=4, sample_every=0, checkpoint_every=0,
          run_dir=tmp_path / "run", cache_dir=tiny_cache_dir(), **TINY)  # fmt: skip
    # setup, the first train report, the end's samples, done: no write per step.
    assert writes == [("setup", 0), ("train", 0), ("samples", 4), ("done", 4)]
    assert read_progress(tmp_path / "run")["phase"] == "done"


def test_an_interrupted_run_says_interrupted_and_is_not_in_progress(images, site, every_report):
    client, runs_dir = site

    def progress(p):  # noqa: ANN001
        if p.phase == "train" and p.step == 3:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train([images], name="stopped", init="toy", steps=8, checkpoint_every=2, sample_every=0,
              progress=progress, cache_dir=tiny_cache_dir(), **TINY)  # fmt: skip
    doc = read_progress(runs_dir / "stopped")
    assert (doc["phase"], doc["step"]) == ("interrupted", 3)
    html = client.get("/runs").text
    assert listed(html, "runs") == {} and listed(html, "ended-runs") == {"stopped": "interrupted"}
    assert 'step <span class="step">3</span> of 8' in html and "last checkpoint at step 2" in html


def test_a_nan_loss_says_failed(images, tmp_path, monkeypatch, every_report):
    real = loop.compute_loss

    def poisoned(pred, target, *, step):  # noqa: ANN001
        loss = real(pred, target, step=step)
        return loss * float("nan") if step >= 2 else loss

    monkeypatch.setattr(loop, "compute_loss", poisoned)
    with pytest.raises(NaNLoss):
        train([images], name="nan", init="toy", steps=6, checkpoint_every=2, sample_every=0,
              run_dir=tmp_path / "run", cache_dir=tiny_cache_dir(), **TINY)  # fmt: skip
    doc = read_progress(tmp_path / "run")
    assert (doc["phase"], doc["step"]) == ("failed", 3)
    assert isinstance(doc["loss"], float)  # the last finite report's (JSON has no NaN)


def test_any_error_after_set_up_says_failed_and_a_refused_run_writes_nothing(
    images, tmp_path, monkeypatch
):
    """An error other than a NaN (here the model fails to load, as an out-of-memory or a
    broken file would) marks the run failed, not left in "setup" forever; a run refused
    before its set-up leaves no progress file."""
    import conceptlib.models.base as base_mod
    from conceptlib.errors import BaseModelError, UsageError

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003
        raise BaseModelError("the base model could not be loaded (test)")

    monkeypatch.setattr(base_mod, "load_base", broken)
    with pytest.raises(BaseModelError):
        train([images], name="broken", init="toy", steps=2, run_dir=tmp_path / "run",
              cache_dir=tiny_cache_dir(), **TINY)  # fmt: skip
    assert read_progress(tmp_path / "run")["phase"] == "failed"
    with pytest.raises(UsageError):
        train([images], name="refused", init="toy", steps=0, run_dir=tmp_path / "none",
              cache_dir=tiny_cache_dir(), **TINY)  # fmt: skip
    assert not (tmp_path / "none" / "progress.json").exists()


def test_train_plan_writes_one_progress_file_per_concept(tmp_path, site):
    from conceptlib.trainer.multi import train_plan

    client, runs_dir = site
    for sub, seed in (("a", 0), ("b", 7)):
        write_sample_images(tmp_path / sub, 3, size=32, seed=seed)
    plan = tmp_path / "plan.toml"
    plan.write_text(
        "steps = 2\nbatch = 1\nresolution = 32\nsample_every = 0\nsample_steps = 1\n"
        "checkpoint_every = 0\ntensorboard = false\n"
        '[[concept]]\nname = "alpha-thing"\nimages = "a"\ninit = "toy"\n'
        '[[concept]]\nname = "beta-thing"\nimages = "b"\ninit = "box"\n'
    )
    reports: list[tuple[str, str]] = []
    result = train_plan(plan, register=False, cache_dir=tiny_cache_dir(),
                        progress=lambda n, p: reports.append((n, p.phase)))  # fmt: skip
    for r in result.results:
        doc = read_progress(r.run_dir)
        assert (doc["name"], doc["phase"], doc["step"], doc["total"]) == (r.name, "done", 2, 2)
    html = client.get("/runs").text
    plan_dir = result.run_dir.name
    assert listed(html, "ended-runs") == {
        f"{plan_dir}/alpha-thing": "done",
        f"{plan_dir}/beta-thing": "done",
    }


# --------------------------------------------------------------------------- hostile files


def good_doc(**change) -> dict:  # noqa: ANN003
    doc = {
        "format": "conceptlib-progress/1", "name": "x", "step": 7, "total": 10, "loss": 0.25,
        "steps_per_s": 2.0, "eta_s": 1.5, "phase": "train", "last_sample": None,
        "updated_at": "2030-01-01T00:00:00+00:00", "pid": os.getpid(),
    }  # fmt: skip
    doc.update(change)
    return doc


def put(runs_dir, name: str, doc=None, raw: bytes | None = None):  # noqa: ANN001, ANN201
    folder = runs_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    data = raw if raw is not None else json.dumps(doc).encode()
    (folder / "progress.json").write_bytes(data)
    return folder


def _reaped() -> int:
    """The id of a process that has exited (and been waited for)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])  # noqa: S603
    child.wait()
    return child.pid


def test_hostile_progress_files_are_refused_with_a_problem_and_never_served(site, tmp_path):
    from web_support import XSS_PAYLOADS

    client, runs_dir = site
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(colour=(9, 9, 9)))
    hostile = {
        "huge": (None, b'{"format": "conceptlib-progress/1", "pad": "' + b"x" * 70_000 + b'"}'),
        "nested": (None, b"[" * 30_000 + b"]" * 30_000),
        "not-json": (None, b"\xff\xfe<script>"),
        "nan-loss": (None, json.dumps(good_doc(loss=float("nan"))).encode()),
        "inf-rate": (None, json.dumps(good_doc(steps_per_s=float("inf"))).encode()),
        "string-step": (good_doc(step="7"), None),
        "bool-total": (good_doc(total=True), None),
        "step-past-total": (good_doc(step=11), None),
        "negative-eta": (good_doc(eta_s=-1), None),
        "script-phase": (good_doc(phase=XSS_PAYLOADS[0]), None),
        "script-time": (good_doc(updated_at="<script>window.__xss = 1</script>"), None),
        "escape-sample": (good_doc(last_sample="samples/../../secret.png"), None),
        "absolute-sample": (good_doc(last_sample=str(secret)), None),
        "list-sample": (good_doc(last_sample=["samples/a.png"]), None),
        "pid-zero": (good_doc(pid=0), None),
        "not-an-object": (None, b"[1, 2]"),
    }
    for name, (doc, raw) in hostile.items():
        put(runs_dir, name, doc, raw)
    # A sample named correctly but a symlink out of the runs folder.
    folder = put(runs_dir, "linked-sample", good_doc(last_sample="samples/step-000001-0.png"))
    (folder / "samples").mkdir()
    (folder / "samples" / "step-000001-0.png").symlink_to(secret)
    # The sample folder itself a symlink.
    folder = put(runs_dir, "linked-folder", good_doc(last_sample="samples/secret.png"))
    (folder / "samples").symlink_to(tmp_path)
    # A folder whose name is markup.
    put(runs_dir, "<script>window.__xss = 1<", good_doc(name=XSS_PAYLOADS[1]))

    res = client.get("/runs")
    assert res.status_code == 200
    html = res.text
    from test_web import assert_inert

    assert_inert(html)
    for name in hostile:
        m = re.search(rf'data-name="{name}"[^>]*>.*?<p class="problem">([^<]*)</p>', html, re.S)
        assert m and m[1].startswith("unreadable progress file"), name
    assert "larger than 64 KiB" in html and "nested too deeply" in html
    assert "&lt;script&gt;window.__xss = 1&lt;" in html  # the folder's name, as text
    assert runs_mod.find_run(runs_dir, "linked-sample").last_sample is None
    for name in ("escape-sample", "absolute-sample", "linked-sample", "linked-folder"):
        got = client.get(f"/runs/{name}/sample")
        assert got.status_code == 404 and got.content != secret.read_bytes(), name
    assert client.get("/runs/..%2F..%2Fsecret.png/sample").status_code == 404


def test_a_symlinked_progress_file_or_fifo_is_not_read(site, tmp_path):
    client, runs_dir = site
    outside = tmp_path / "elsewhere.json"
    outside.write_text(json.dumps(good_doc()))
    (runs_dir / "linked").mkdir(parents=True)
    (runs_dir / "linked" / "progress.json").symlink_to(outside)
    (runs_dir / "fifo").mkdir()
    os.mkfifo(runs_dir / "fifo" / "progress.json")
    html = client.get("/runs").text
    assert 'data-name="linked"' not in html and 'data-name="fifo"' not in html


def test_liveness_by_pid_or_by_age_when_the_pid_cannot_be_checked(site, monkeypatch):
    client, runs_dir = site
    now = time.time()

    def iso(t: float) -> str:
        import datetime as dt

        return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")

    put(runs_dir, "alive", good_doc(updated_at=iso(now)))
    put(runs_dir, "gone", good_doc(updated_at=iso(now), pid=_reaped()))
    put(runs_dir, "ended", good_doc(updated_at=iso(now), phase="failed"))
    html = client.get("/runs").text
    assert listed(html, "runs") == {"alive": "running"}
    assert listed(html, "ended-runs") == {"gone": "stale", "ended": "failed"}
    assert "stale: its process is gone" in html
    assert '<a href="/runs">1 training run in progress</a>' in client.get("/").text

    def unknown(pid, sig):  # noqa: ANN001
        raise OSError("cannot check")

    monkeypatch.setattr(runs_mod.os, "kill", unknown)
    put(runs_dir, "old", good_doc(updated_at=iso(now - runs_mod.STALE_AFTER_S - 60)))
    html = client.get("/runs").text
    assert listed(html, "runs") == {"alive": "running", "gone": "running"}  # recent: trusted
    assert listed(html, "ended-runs")["old"] == "stale"

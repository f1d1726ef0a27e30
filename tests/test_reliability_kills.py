"""Kill -9 at random points of import, tagging, removal and checkpoint writes.

A helper process (the "zygote", this file run as a script) imports conceptlib, torch
and the trainer once; each operation then runs in a child forked from it, which is
killed with SIGKILL after a random delay. Delays adapt to how long the children
take to start and to do one operation, so kills land before, inside and between
operations: while a blob is written, between the blob and its commit, inside the
commit, between a row's deletion and its blobs' removal, inside a checkpoint's
write, during training set-up, training steps and registration.

Every child writes an *intent* line to a journal before each operation and a *done*
line after it returns. After each kill, from a separate process:

* ``verify`` reports the database intact and every row's blob present and unaltered;
* every operation journaled as done is in the catalog (no committed row lost), and
  nothing else changed except, possibly, the one operation in flight;
* blobs without rows (orphans) and temp files are allowed, and ``gc`` removes them
  without touching a referenced blob;
* a checkpoint on disk always loads, and is never older than the last one written;
* a training run killed again and again resumes from its last checkpoint, and ends
  with exactly the vectors of an uninterrupted run.

``CONCEPTLIB_RELIABILITY_KILLS=N`` scales the catalog kills to about N in all.
Figures: ``CONCEPTLIB_RELIABILITY_REPORT=/path/figures.jsonl`` appends them there.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from reliability_support import report_figures

from conceptlib.trainer.checkpoint import CHECKPOINT_NAME

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="the kills fork from a helper process"),
    pytest.mark.timeout(60),  # each test; longer ones say so
]

#: Kills per operation (280 in all by default, plus the training run's).
_SCALE = int(os.environ.get("CONCEPTLIB_RELIABILITY_KILLS", "0") or 0)
BASE_KILLS = {"import": 100, "tag": 60, "remove": 60, "checkpoint": 60}
KILLS = {k: max(1, v * _SCALE // 280) for k, v in BASE_KILLS.items()} if _SCALE else BASE_KILLS
TRAIN_STEPS = 8
TRAIN_ATTEMPTS = 20
POOL = 240
PREVIEWS = 3


# =========================================================================== children
# These run in processes forked from the zygote: they never return to pytest.


class Journal:
    """Append-only lines; a write reaches the kernel at once, so a SIGKILL keeps it."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, **record: Any) -> None:
        record["t"] = time.monotonic()
        os.write(self.fd, (json.dumps(record) + "\n").encode())


def _preview(i: int) -> bytes:
    from conceptlib.registry.formats.png_embed import plain_png

    return plain_png(8, 8, (40 * i % 256, 90, 200))


def child_import(p: dict[str, Any], journal: Journal) -> None:
    from conceptlib.registry.formats import read_embedding_file
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import Preview

    rng = random.Random(p["seed"])
    items = list(p["items"])  # [name, sha, path], none of them in the catalog
    with Library.open(p["home"]) as lib:
        journal(ev="ready")
        while items:
            mode = rng.choice(["single", "single", "batch", "add"])
            take = rng.randint(2, 6) if mode == "batch" else 1
            chunk, items = items[:take], items[take:]
            journal(ev="intent", op="import", items=[[n, s] for n, s, _ in chunk])
            if mode == "add":
                ((name, sha, path),) = chunk
                parsed = read_embedding_file(path)
                info = lib.add_embedding(
                    parsed.embedding,
                    name=name,
                    previews=[Preview("p.png", _preview(rng.randrange(PREVIEWS)))],
                )
                done = [[info.name, info.tensor_sha256, "imported"]]
            else:
                report = lib.import_paths([path for _, _, path in chunk])
                done = [[o.name, o.tensor_sha256, o.status, o.reason] for o in report.outcomes]
            journal(ev="done", op="import", items=done)


def child_tag(p: dict[str, Any], journal: Journal) -> None:
    from conceptlib.registry.library import Library

    rng = random.Random(p["seed"])
    tags = {name: set(t) for name, t in p["entries"]}
    names = sorted(tags)
    with Library.open(p["home"]) as lib:
        journal(ev="ready")
        for _ in range(2000):
            name = rng.choice(names)
            free = [f"t{i}" for i in range(30) if f"t{i}" not in tags[name]]
            if tags[name] and (rng.random() < 0.4 or not free):
                t = rng.choice(sorted(tags[name]))
                journal(ev="intent", op="tag", name=name, remove=t)
                lib.tag(name, remove=[t])
                tags[name].discard(t)
                journal(ev="done", op="tag", name=name, remove=t)
            else:
                t = rng.choice(free)
                journal(ev="intent", op="tag", name=name, add=t)
                lib.tag(name, add=[t])
                tags[name].add(t)
                journal(ev="done", op="tag", name=name, add=t)


def child_remove(p: dict[str, Any], journal: Journal) -> None:
    from conceptlib.registry.library import Library

    with Library.open(p["home"]) as lib:
        journal(ev="ready")
        for name in p["names"]:
            journal(ev="intent", op="remove", name=name)
            lib.remove(name)
            journal(ev="done", op="remove", name=name)


def fake_training_state(step: int) -> dict[str, Any]:
    """A state shaped like ``TextualInversion.state_dict()`` for ``step``."""
    import torch

    g = torch.Generator().manual_seed(step)
    vec = torch.randn(2, 768, generator=g)
    return {
        "step": step,
        "vectors": {"clip_l": vec},
        "optimizer": {
            "state": {
                0: {
                    "step": torch.tensor(float(step)),
                    "exp_avg": vec * 0.1,
                    "exp_avg_sq": vec * vec,
                }
            },
            "param_groups": [
                {
                    "lr": 5e-3,
                    "betas": (0.9, 0.999),
                    "eps": 1e-8,
                    "weight_decay": 0.0,
                    "amsgrad": False,
                    "params": [0],
                }
            ],
        },
        "generator": g.get_state(),
        "losses": torch.linspace(1.0, 0.5, step),
    }


def child_checkpoint(p: dict[str, Any], journal: Journal) -> None:
    from conceptlib.trainer.checkpoint import load_checkpoint, save_checkpoint

    path = Path(p["path"])
    start = int(load_checkpoint(path)[0]["step"]) if path.exists() else 0
    journal(ev="ready", start=start)
    for step in range(start + 1, start + 5000):
        journal(ev="intent", op="checkpoint", step=step)
        save_checkpoint(path, fake_training_state(step), p["config"])
        journal(ev="done", op="checkpoint", step=step)


def child_warm_tiny(p: dict[str, Any], journal: Journal) -> None:
    """Build the tiny model into the cache and train one step: the modules this imports
    are sent back for the zygote to import, so training children start fast."""
    import tempfile

    before = set(sys.modules)
    from conceptlib.trainer.train import train

    with tempfile.TemporaryDirectory() as tmp:
        train(
            [p["images"]],
            name="warm-up",
            init="toy",
            steps=1,
            batch=1,
            sample_steps=1,
            register=False,
            run_dir=Path(tmp) / "run",
            cache_dir=p["cache"],
            device="cpu",
        )
    journal(ev="done", op="warm", modules=sorted(set(sys.modules) - before))


def child_train(p: dict[str, Any], journal: Journal) -> None:
    from conceptlib.registry.library import Library
    from conceptlib.trainer.train import train

    run_dir = Path(p["run_dir"])
    resume = (run_dir / CHECKPOINT_NAME).exists()
    journal(ev="ready", resume=resume)
    lib = Library.open(p["home"]) if p["register"] else None
    try:
        result = train(
            [p["images"]],
            name=p["name"],
            init="toy",
            steps=TRAIN_STEPS,
            batch=1,
            checkpoint_every=1,
            sample_every=0,
            sample_steps=1,
            seed=3,
            resume=resume,
            register=p["register"],
            library=lib,
            run_dir=run_dir,
            cache_dir=p["cache"],
            device="cpu",
            progress=lambda pr: journal(ev="progress", step=pr.step, phase=pr.phase),
            log=lambda line: journal(ev="log", line=line),
        )
        journal(
            ev="done", op="train", sha=result.embedding.tensor_sha256, resumed=result.resumed_from
        )
    finally:
        if lib is not None:
            lib.close()


CHILD_OPS = {
    "import": child_import,
    "tag": child_tag,
    "remove": child_remove,
    "checkpoint": child_checkpoint,
    "warm": child_warm_tiny,
    "train": child_train,
}


def _run_child(cmd: dict[str, Any]) -> int:
    from conceptlib.errors import ConceptlibError

    if "home" in cmd["params"]:
        os.environ["CONCEPTLIB_HOME"] = cmd["params"]["home"]
    import torch

    torch.set_num_threads(1)
    journal = Journal(cmd["journal"])
    try:
        CHILD_OPS[cmd["op"]](cmd["params"], journal)
        return 0
    except ConceptlibError as exc:
        journal(ev="error", kind=type(exc).__name__, message=exc.message)
        return 3
    except BaseException:
        journal(ev="error", kind="crash", message=traceback.format_exc())
        return 1


def _warm_up() -> None:
    """Run each operation once, so the children do not each pay for lazy imports.

    Every connection is closed again before the first fork.
    """
    import tempfile

    import numpy as np

    from conceptlib.registry.formats.safetensors_io import write_safetensors
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import Preview

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "warm-up.safetensors"
        f.write_bytes(write_safetensors({"emb_params": np.full((1, 768), 0.01, np.float32)}))
        with Library.open(Path(tmp) / "home") as lib:
            lib.import_paths([f])
            lib.tag("warm-up", add=["t"])
            lib.tag("warm-up", remove=["t"])
            lib.remove("warm-up")
            from conceptlib.registry.formats.embedding import Embedding

            lib.add_embedding(
                Embedding.from_slots({"clip_l": np.full((1, 768), 0.02, np.float32)}),
                name="warm-up-two",
                previews=[Preview("p.png", _preview(0))],
            )
            lib.list()
            lib.verify()


def zygote_main() -> None:
    """Import everything once, then fork one child per command and kill it on time."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 1)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import conceptlib.models.base  # noqa: F401
    import conceptlib.registry.formats  # noqa: F401
    import conceptlib.registry.library  # noqa: F401
    import conceptlib.trainer.checkpoint  # noqa: F401
    import conceptlib.trainer.loop  # noqa: F401
    import conceptlib.trainer.train  # noqa: F401

    _warm_up()
    protocol.write("ready\n")
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "preload":  # import modules in the zygote itself (no fork)
            failed = 0
            for name in cmd["modules"]:
                try:
                    importlib.import_module(name)
                except BaseException:
                    failed += 1
            protocol.write(json.dumps({"preloaded": len(cmd["modules"]), "failed": failed}) + "\n")
            continue
        forked = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never returns into this loop
            code = 1
            try:
                os.dup2(devnull, 0)
                code = _run_child(cmd)
            finally:
                os._exit(code)
        delay, limit = cmd.get("delay"), cmd.get("limit", 120.0)
        deadline = forked + (min(delay, limit) if delay is not None else limit)
        killed = False
        pidfd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                killed = True
                break
            if pidfd is not None:
                select.select([pidfd], [], [], remaining)  # wakes when the child exits
            else:
                time.sleep(min(remaining, 0.001))
        if pidfd is not None:
            os.close(pidfd)
        signalled = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        reply = {
            "forked": forked,
            "killed": killed and signalled,
            "exit": os.waitstatus_to_exitcode(status),
            "elapsed": time.monotonic() - forked,
        }
        protocol.write(json.dumps(reply) + "\n")


# =========================================================================== the parent side


class Zygote:
    def __init__(self, workdir: Path) -> None:
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = "1"
        env.pop("CONCEPTLIB_DATABASE_URL", None)
        self.log = open(workdir / "zygote.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=workdir,
            env=env,
        )
        self.workdir = workdir
        self.runs = 0
        assert self._readline(180) == "ready"

    def _readline(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the zygote did not answer in {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(
                f"the zygote died: {(self.workdir / 'zygote.log').read_text()[-2000:]}"
            )
        return line.strip()

    def run(
        self, op: str, params: dict[str, Any], delay: float | None, limit: float = 120.0
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Fork a child for ``op``, kill it after ``delay`` seconds; return reply and journal."""
        self.runs += 1
        journal = self.workdir / f"journal-{self.runs}.jsonl"
        cmd = {"op": op, "params": params, "delay": delay, "limit": limit, "journal": str(journal)}
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self._readline(limit + 60))
        lines = journal.read_text().splitlines() if journal.exists() else []
        records = []
        for raw in lines:
            with contextlib.suppress(ValueError):  # a line cut by the kill (os.write is whole)
                records.append(json.loads(raw))
        return reply, records

    def preload(self, modules: list[str]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"op": "preload", "modules": modules}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self._readline(180))

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def zygote(tmp_path_factory: pytest.TempPathFactory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


class Timing:
    """Running estimates of a child's start-up and of one operation, to aim the kills."""

    def __init__(self, ready: float = 0.03, op: float = 0.01) -> None:
        self.ready, self.op = ready, op

    def update(self, reply: dict[str, Any], records: list[dict[str, Any]]) -> None:
        ready = next((r["t"] for r in records if r["ev"] == "ready"), None)
        if ready is not None:
            self.ready = 0.7 * self.ready + 0.3 * (ready - reply["forked"])
        elif reply["killed"]:  # killed during start-up: aim later next time
            self.ready = min(5.0, max(self.ready, reply["elapsed"]) * 1.3)
        intents = {}
        spans = []
        for r in records:
            if r["ev"] == "intent":
                intents = r
            elif r["ev"] == "done" and intents:
                spans.append(r["t"] - intents["t"])
        if spans:
            self.op = 0.7 * self.op + 0.3 * (sum(spans) / len(spans))

    def delay(self, rng: random.Random, ops: float = 6) -> float:
        return rng.uniform(0.5 * self.ready, self.ready + ops * self.op)


def in_flight(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The operation that had started but not returned when the child died."""
    last = None
    for r in records:
        if r["ev"] == "intent":
            last = r
        elif r["ev"] == "done":
            last = None
    return last


def where(records: list[dict[str, Any]]) -> str:
    if not any(r["ev"] == "ready" for r in records):
        return "start-up"
    return "mid-operation" if in_flight(records) else "between operations"


# --------------------------------------------------------------------------- the catalog model


def actual_state(lib: Any) -> dict[str, tuple[str, frozenset[str]]]:
    return {e.name: (e.tensor_sha256, frozenset(e.tags)) for e in lib.list()}


def apply(
    model: dict[str, tuple[str, frozenset[str]]], r: dict[str, Any]
) -> dict[str, tuple[str, frozenset[str]]]:
    """The catalog after operation ``r`` (an intent or a done record)."""
    out = dict(model)
    if r["op"] == "import":
        for item in r["items"]:
            name, sha = item[0], item[1]
            status = item[2] if len(item) > 2 else "imported"
            if status == "imported":
                out[name] = (sha, frozenset())
    elif r["op"] == "tag":
        sha, tags = out[r["name"]]
        tags = tags | {r["add"]} if "add" in r else tags - {r["remove"]}
        out[r["name"]] = (sha, frozenset(tags))
    elif r["op"] == "remove":
        out.pop(r["name"], None)
    return out


def check_after_kill(
    lib: Any, model: dict, records: list[dict[str, Any]], stats: Counter, seen: dict[str, set]
) -> tuple[dict, list[str]]:
    """Compare the catalog with the journal; return the new model and any violations.

    ``seen`` keeps the orphan blobs and temp files already counted, so that each new
    one is attributed to the kill that left it.
    """
    problems: list[str] = []
    for r in records:
        if r["ev"] == "done" and r["op"] == "import":
            bad = [i for i in r["items"] if i[2] not in ("imported", "present")]
            problems += [f"import reported {i}" for i in bad]
        if r["ev"] == "error":
            problems.append(f"child failed: {r['kind']}: {r['message'][-500:]}")
        if r["ev"] == "done":
            model = apply(model, r)
    actual = actual_state(lib)
    pending = in_flight(records)
    committed = None
    if actual != model:
        if pending is not None and actual == apply(model, pending):
            committed = True
            stats["in-flight operation found committed"] += 1
        else:
            lost = sorted(set(model) - set(actual))
            extra = sorted(set(actual) - set(model))
            changed = sorted(k for k in set(model) & set(actual) if model[k] != actual[k])
            problems.append(
                f"catalog differs from the journal: lost {lost[:5]}, extra {extra[:5]}, "
                f"changed {changed[:5]}"
            )
    elif pending is not None:
        committed = False
        stats["in-flight operation found not committed"] += 1
    report = lib.verify()
    if not report.ok:
        problems.append(f"verify: integrity {report.integrity}, {report.problems[:3]}")
    new_orphans = set(report.orphan_blobs) - seen["orphans"]
    new_temps = {t.name for t in lib.store.iter_temp_files()} - seen["temps"]
    seen["orphans"] |= new_orphans
    seen["temps"] |= new_temps
    stats["orphan blobs left"] += len(new_orphans)
    stats["temp files left"] += len(new_temps)
    if pending is not None and new_orphans:
        if pending["op"] == "import" and committed is False:
            stats["killed between blob write and commit"] += 1
        elif pending["op"] == "remove" and committed:
            stats["killed between row delete and blob removal"] += 1
    if pending is not None and new_temps:
        stats["killed inside a blob write"] += 1
    return actual, problems


# --------------------------------------------------------------------------- the tests


def _make_pool(folder: Path) -> list[list[str]]:
    """Distinct sd1 embeddings: 2/3 safetensors, 1/3 A1111 .pt, some with a preview."""
    from fixtures_formats import make_a1111_pt, rand_vectors

    from conceptlib.registry.formats.embedding import Embedding
    from conceptlib.registry.formats.safetensors_io import write_safetensors

    folder.mkdir(parents=True, exist_ok=True)
    pool = []
    for i in range(POOL):
        name = f"k{i:04d}"
        vec = rand_vectors(1 + i % 3, 768, seed=50_000 + i)
        if i % 3 == 2:
            path = folder / f"{name}.pt"
            path.write_bytes(make_a1111_pt(vec, name=name))
        else:
            path = folder / f"{name}.safetensors"
            path.write_bytes(write_safetensors({"emb_params": vec}))
        if i % 4 == 0:
            (folder / f"{name}.preview.png").write_bytes(_preview(i % PREVIEWS))
        pool.append([name, Embedding.from_slots({"clip_l": vec}).tensor_sha256, str(path)])
    return pool


@pytest.mark.timeout(420)
def test_kills_during_import_tag_and_remove(zygote: Zygote, tmp_path: Path) -> None:
    from conceptlib.registry.library import Library

    home = tmp_path / "home"
    pool = _make_pool(tmp_path / "pool")
    rng = random.Random(1234)
    timing = {op: Timing() for op in ("import", "tag", "remove")}
    kills: Counter = Counter()
    landed: Counter = Counter()
    stats: Counter = Counter()
    problems: list[str] = []
    model: dict = {}
    seen: dict[str, set] = {"orphans": set(), "temps": set()}
    gcs = orphans_collected = 0
    started = time.monotonic()
    max_runs = 4 * sum(KILLS[op] for op in timing)
    runs = 0
    with Library.open(home) as lib:
        while any(kills[op] < KILLS[op] for op in timing):
            assert runs < max_runs, f"kills {dict(kills)} after {runs} children"
            runs += 1
            todo = [op for op in timing if kills[op] < KILLS[op]]
            op = rng.choice(todo)
            shas = {sha for sha, _ in model.values()}
            available = [item for item in pool if item[0] not in model and item[1] not in shas]
            if op != "import" and len(model) < 12:
                op = "import"
            if op == "import" and len(available) < 10:
                op = "remove"
            if op == "import":
                params = {"items": rng.sample(available, min(len(available), 30))}
            elif op == "tag":
                params = {"entries": [[n, sorted(t)] for n, (_, t) in model.items()]}
            else:
                names = sorted(model)
                rng.shuffle(names)
                params = {"names": names[: max(1, len(names) // 3)]}
            params.update(home=str(home), seed=rng.randrange(1 << 30))
            reply, records = zygote.run(op, params, timing[op].delay(rng))
            timing[op].update(reply, records)
            if reply["killed"]:
                kills[op] += 1
                landed[f"{op}: {where(records)}"] += 1
            model, found = check_after_kill(lib, model, records, stats, seen)
            problems += [f"{op} run {runs}: {p}" for p in found]
            if runs % 10 == 0:
                removed = lib.gc()
                seen = {"orphans": set(), "temps": set()}
                gcs += 1
                orphans_collected += len(removed)
                after = lib.verify()
                if not after.ok or after.orphan_blobs or list(lib.store.iter_temp_files()):
                    problems.append(
                        f"after gc: {after.problems[:3]}, orphans {after.orphan_blobs[:3]}"
                    )
                if actual_state(lib) != model:
                    problems.append("gc changed the catalog")
            assert len(problems) < 20, problems
        orphans_collected += len(lib.gc())
        final = lib.verify()
        assert final.ok and final.orphan_blobs == []
        assert list(lib.store.iter_temp_files()) == []
        entries = lib.count()
    report_figures(
        "kills-catalog",
        kills=dict(kills),
        kills_total=sum(kills.values()),
        where=dict(sorted(landed.items())),
        children=runs,
        **{k.replace(" ", "_"): v for k, v in stats.items()},
        gc_runs=gcs,
        orphans_and_temps_collected=orphans_collected,
        entries_at_end=entries,
        rows_lost=0 if not problems else None,
        violations=len(problems),
        seconds=round(time.monotonic() - started, 1),
    )
    assert problems == []
    assert sum(kills.values()) >= sum(KILLS[op] for op in ("import", "tag", "remove"))


@pytest.mark.timeout(240)
def test_kills_during_checkpoint_writes(zygote: Zygote, tmp_path: Path) -> None:
    from conceptlib.trainer.checkpoint import load_checkpoint

    path = tmp_path / "run" / CHECKPOINT_NAME
    config = {"seed": 1, "steps": 10_000, "name": "ckpt-kill"}
    rng = random.Random(99)
    timing = Timing(ready=0.05, op=0.01)
    kills = 0
    landed: Counter = Counter()
    problems: list[str] = []
    last_done = 0
    started = time.monotonic()
    while kills < KILLS["checkpoint"]:
        reply, records = zygote.run(
            "checkpoint", {"path": str(path), "config": config}, timing.delay(rng, ops=8)
        )
        timing.update(reply, records)
        if reply["killed"]:
            kills += 1
            landed[where(records)] += 1
        errors = [r for r in records if r["ev"] == "error"]
        if errors:
            problems.append(f"child failed: {errors[0]['message'][-300:]}")
        done = [r["step"] for r in records if r["ev"] == "done"]
        last_done = max([last_done, *done])
        pending = in_flight(records)
        if path.exists():
            try:
                state, saved = load_checkpoint(path)
            except Exception as exc:
                problems.append(f"torn checkpoint after a kill: {exc}")
                continue
            allowed = {last_done} | ({pending["step"]} if pending else set())
            if int(state["step"]) not in allowed or saved != config:
                problems.append(
                    f"checkpoint at step {state['step']}, journal says {sorted(allowed)}"
                )
            last_done = int(state["step"])
        elif last_done:
            problems.append(f"checkpoint of step {last_done} is gone")
    temps = [p.name for p in path.parent.iterdir() if p.name != path.name]
    report_figures(
        "kills-checkpoint-writes",
        kills=kills,
        where=dict(landed),
        checkpoints_written=last_done,
        torn_checkpoints=sum("torn" in p for p in problems),
        checkpoints_lost=sum("gone" in p or "journal says" in p for p in problems),
        temp_files_left=len(temps),
        seconds=round(time.monotonic() - started, 1),
    )
    assert problems == []


def _training_images(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(folder / f"{i}.png")
    return folder


@pytest.mark.timeout(420)
def test_killed_training_run_resumes_to_the_same_result(zygote: Zygote, tmp_path: Path) -> None:
    from conceptlib.registry.library import Library
    from conceptlib.trainer.checkpoint import load_checkpoint

    images = _training_images(tmp_path / "images")
    cache = tmp_path / "tiny-cache"
    reply, records = zygote.run(
        "warm", {"cache": str(cache), "images": str(images)}, None, limit=300
    )
    assert reply["exit"] == 0, records
    zygote.preload(next(r["modules"] for r in records if r["ev"] == "done"))

    # The uninterrupted reference run.
    base = {"images": str(images), "cache": str(cache), "register": False}
    ref_params = {
        **base,
        "home": str(tmp_path / "ref-home"),
        "name": "ref-run",
        "run_dir": str(tmp_path / "ref"),
    }
    reply, ref = zygote.run("train", ref_params, None, limit=300)
    assert reply["exit"] == 0, ref
    ref_sha = next(r["sha"] for r in ref if r["ev"] == "done")
    ready = next(r["t"] for r in ref if r["ev"] == "ready")
    steps = [r["t"] for r in ref if r["ev"] == "progress" and r["phase"] == "train"]
    setup = steps[0] - reply["forked"]
    per_step = (steps[-1] - steps[0]) / max(1, len(steps) - 1)
    assert ready

    home = tmp_path / "home"
    run_dir = tmp_path / "runs" / "kill-run"
    params = {
        **base,
        "home": str(home),
        "register": True,
        "name": "kill-run",
        "run_dir": str(run_dir),
    }
    rng = random.Random(7)
    kills = resumes = 0
    landed: Counter = Counter()
    problems: list[str] = []
    completed = False
    started = time.monotonic()
    with Library.open(home) as lib:
        for attempt in range(TRAIN_ATTEMPTS):
            last = attempt == TRAIN_ATTEMPTS - 1
            delay = None if last else rng.uniform(0.6 * setup, setup + 5 * per_step)
            reply, records = zygote.run("train", params, delay, limit=300)
            resumes += any(
                r["ev"] == "log" and r["line"].startswith("resumed from") for r in records
            )
            progress = [
                r["step"] for r in records if r["ev"] == "progress" and r["phase"] == "train"
            ]
            errors = [r for r in records if r["ev"] == "error"]
            registered = lib.find("kill-run") is not None
            if reply["killed"]:
                kills += 1
                if not progress:
                    phase = "set-up"
                elif progress[-1] >= TRAIN_STEPS:
                    phase = "registration"
                else:
                    phase = "training steps"
                landed[phase] += 1
            elif errors and not (registered and errors[0]["kind"] == "NameCollision"):
                problems.append(
                    f"attempt {attempt}: {errors[0]['kind']}: {errors[0]['message'][-400:]}"
                )
            ckpt = run_dir / CHECKPOINT_NAME
            if ckpt.exists():
                try:
                    state, _ = load_checkpoint(ckpt)
                except Exception as exc:
                    problems.append(f"attempt {attempt}: torn checkpoint: {exc}")
                else:
                    reached = max(progress, default=0)
                    if reached and not reached - 1 <= int(state["step"]) <= reached:
                        problems.append(
                            f"attempt {attempt}: checkpoint at {state['step']}, progress {reached}"
                        )
            report = lib.verify()
            if not report.ok:
                problems.append(f"attempt {attempt}: verify {report.problems[:3]}")
            if registered or reply["exit"] == 0:
                completed = True
                break
        assert completed, problems
        info = lib.get("kill-run")
        lib.gc()
        final = lib.verify()
        assert final.ok and final.orphan_blobs == []
    report_figures(
        "kills-training",
        kills=kills,
        where=dict(landed),
        resumes=resumes,
        steps=TRAIN_STEPS,
        same_vectors_as_uninterrupted=info.tensor_sha256 == ref_sha,
        seconds=round(time.monotonic() - started, 1),
    )
    assert problems == []
    assert kills >= 3 and resumes >= 1
    assert info.tensor_sha256 == ref_sha, (
        "the resumed run's vectors differ from an uninterrupted run's"
    )


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    zygote_main()

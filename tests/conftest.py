"""Shared fixtures. Tests never touch the real home or the network."""

from __future__ import annotations

import os

# Pin the device and the thread count before numpy or torch load, in this process and
# in every child it starts (the environment is inherited): tests run on the CPU even on
# a machine with a CUDA GPU (a test that wants the GPU passes its device explicitly),
# and torch's threads never outnumber the cores this worker may use (under
# `pytest -n N` or a loaded machine, threads fighting over the cores made a 7 s test
# take over 300 s).
os.environ.setdefault("CONCEPTLIB_DEVICE", "cpu")
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
_THREADS = str(max(1, min(4, (os.cpu_count() or 1) // max(1, _WORKERS))))
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)

# Before anything imports huggingface_hub: it reads HF_ENDPOINT once, at import, so
# point it at the loopback test server's port now (traffic never leaves 127.0.0.1).
import uuid  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hub_fixtures import configure_env  # noqa: E402

configure_env()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "conceptlib-home"
    monkeypatch.setenv("CONCEPTLIB_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("CONCEPTLIB_DATABASE_URL", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("CONCEPTLIB_BUSY_TIMEOUT", "10")
    yield home


PG_URL = os.environ.get("CONCEPTLIB_TEST_POSTGRES_URL")


def _pg_admin(sql: str) -> None:
    import psycopg

    url = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def pg_template():
    """A migrated database that each test's database is cloned from (fast set-up)."""
    if not PG_URL:
        pytest.skip("set CONCEPTLIB_TEST_POSTGRES_URL to run catalog tests on PostgreSQL")
    from conceptlib.catalog.db import Catalog

    name = f"conceptlib_tmpl_{uuid.uuid4().hex[:12]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    cat = Catalog(PG_URL.rsplit("/", 1)[0] + f"/{name}")
    cat.migrate()
    cat.dispose()
    yield name
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database(monkeypatch, request):
    """A fresh PostgreSQL database for one test, set as CONCEPTLIB_DATABASE_URL.

    Cloned from a migrated template; tests marked ``pg_empty`` get an empty one.
    """
    if not PG_URL:
        pytest.skip("set CONCEPTLIB_TEST_POSTGRES_URL to run catalog tests on PostgreSQL")
    name = f"conceptlib_test_{uuid.uuid4().hex[:12]}"
    if request.node.get_closest_marker("pg_empty"):
        _pg_admin(f'CREATE DATABASE "{name}"')
    else:
        template = request.getfixturevalue("pg_template")
        _pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    url = PG_URL.rsplit("/", 1)[0] + f"/{name}"
    monkeypatch.setenv("CONCEPTLIB_DATABASE_URL", url)
    yield url
    import gc

    gc.collect()  # drop pooled connections held by closed libraries
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request):
    """Catalog tests run on SQLite and, when CONCEPTLIB_TEST_POSTGRES_URL is set, PostgreSQL."""
    if request.param == "postgres":
        request.getfixturevalue("pg_database")
    return request.param


@pytest.fixture
def lib(_isolated_home, backend):
    from conceptlib.registry.library import Library

    library = Library.open()
    yield library
    library.close()


def make_embedding(family: str = "sd1", n: int = 1, seed: int = 0):
    from conceptlib.registry.samples import sample_embedding

    return sample_embedding(family, n, seed)


@pytest.fixture
def emb_factory():
    return make_embedding


def snapshot(home) -> tuple:
    """The catalog dump and the store listing, for before/after comparisons."""
    from conceptlib.registry.library import Library
    from conceptlib.registry.store import BlobStore

    with Library.open(home) as library:
        dump = library.dump()
    store = BlobStore(home / "store").listing()
    return dump, store


@pytest.fixture
def catalog_snapshot():
    return snapshot


def pytest_configure(config):
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    else:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    np.set_printoptions(precision=4)


@pytest.fixture
def read_back_guard(monkeypatch):
    """Every tensor -> host read-back (a sync on CUDA) and ``torch.cuda.synchronize``
    raise while ``armed["on"]``: a training step must never wait for the device."""
    import torch

    armed = {"on": False}
    names = ["item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"]
    for name in names:
        original = getattr(torch.Tensor, name)

        def guarded(self, *args, _name=name, _original=original, **kwargs):
            if armed["on"]:
                raise AssertionError(f"Tensor.{_name} called inside a training step")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, guarded)
    real_sync = torch.cuda.synchronize

    def no_sync(*a, **k):
        if armed["on"]:
            raise AssertionError("torch.cuda.synchronize inside a training step")
        return real_sync(*a, **k)

    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    return armed

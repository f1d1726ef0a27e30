"""Fixtures and helpers for the Hub tests: one loopback server per session.

``huggingface_hub`` reads ``HF_ENDPOINT`` (and a few other variables) once, at
import. :func:`configure_env` therefore picks the server's port and sets those
variables before anything imports the client; ``tests/conftest.py`` should call it
at its top. conceptlib itself passes ``endpoint=`` on every call, so the variables
only keep the client's own side requests on loopback.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import socket
from urllib.parse import urlparse

import pytest
from hubserver import HubServer

WRITE_TOKEN = "hf_writeTokenForAliceXXXXXXXXXXXX"
READ_TOKEN = "hf_readOnlyTokenForAliceXXXXXXXXX"
BOB_TOKEN = "hf_writeTokenForBobYYYYYYYYYYYYYYY"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def configure_env() -> str:
    """Point the client at a loopback port (chosen once) before it is imported."""
    url = os.environ.get("HF_ENDPOINT", "")
    host = urlparse(url).hostname if url else None
    if host != "127.0.0.1":
        url = f"http://127.0.0.1:{_free_port()}"
        os.environ["HF_ENDPOINT"] = url
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    os.environ["no_proxy"] = "127.0.0.1,localhost"
    os.environ.pop("HF_HUB_OFFLINE", None)
    return url


SESSION_URL = configure_env()


_SERVER: HubServer | None = None


def session_server() -> HubServer:
    """The one server of this test session (test modules that import the fixtures share it)."""
    global _SERVER
    if _SERVER is None:
        port = urlparse(SESSION_URL).port
        try:
            server = HubServer().start(port)
        except OSError:  # the port was taken meanwhile: any free one (we pass endpoint=)
            server = HubServer().start(0)
        server.add_user("alice", WRITE_TOKEN, orgs=("team",))
        server.add_user("alice", READ_TOKEN, can_write=False, orgs=("team",))
        server.add_user("bob", BOB_TOKEN)
        atexit.register(server.stop)
        _SERVER = server
    return _SERVER


@pytest.fixture(scope="session", name="hub_server")
def hub_server_fixture():
    return session_server()


@pytest.fixture(name="hub")
def hub_fixture(hub_server, _isolated_home, monkeypatch):
    """The server, emptied, with the environment pointing at it and fast bounded retries."""
    hub_server.reset()
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    monkeypatch.setenv("HF_TOKEN", WRITE_TOKEN)
    monkeypatch.setenv("CONCEPTLIB_HUB_RETRIES", "2")
    monkeypatch.setenv("CONCEPTLIB_HUB_BACKOFF", "0.01")
    monkeypatch.setenv("CONCEPTLIB_HUB_MAX_WAIT", "0.05")
    monkeypatch.setenv("CONCEPTLIB_HUB_CONCURRENCY", "4")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield hub_server
    hub_server.clear_faults()


@pytest.fixture(name="other_library")
def other_library_fixture(tmp_path, backend):
    """Open a second catalog ("another machine"); only on SQLite, where homes are separate."""
    if backend != "sqlite":
        pytest.skip("a second catalog needs its own database (SQLite homes)")
    from conceptlib.registry.library import Library

    opened = []

    def open_(name: str = "machine-b") -> Library:
        library = Library.open(tmp_path / name)
        opened.append(library)
        return library

    yield open_
    for library in opened:
        library.close()


# --------------------------------------------------------------------------- repo builders


def safetensors_bytes(tensors: dict, metadata: dict | None = None) -> bytes:
    from conceptlib.registry.formats.safetensors_io import write_safetensors

    return write_safetensors(tensors, metadata)


def pickle_bin(obj: dict) -> bytes:
    """A torch.save zip pickle, as the diffusers script writes ``learned_embeds.bin``."""
    import torch

    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(v.copy()) for k, v in obj.items()}, buf)
    return buf.getvalue()


def seed_sd_concepts(
    server: HubServer,
    repo_id: str,
    emb,
    *,
    token: str = "<cat-toy>",
    kind: str = "object",
    fmt: str = "bin",
    card: str | None = None,
) -> str:
    """An sd-concepts-library style repo: learned_embeds.bin + token + type files."""
    vec = next(iter(emb.vectors.values()))
    data = pickle_bin({token: vec}) if fmt == "bin" else safetensors_bytes({token: vec})
    files = {
        f"learned_embeds.{fmt}": data,
        "token_identifier.txt": token.encode(),
        "type_of_concept.txt": kind.encode(),
        "README.md": (card or "---\nlicense: mit\n---\n### cat toy\n").encode(),
    }
    return server.commit(repo_id, files, replace=True)


def seed_single_file(
    server: HubServer, repo_id: str, emb, *, filename: str = "EasyNegative.safetensors", card=None
) -> str:
    vec = next(iter(emb.vectors.values()))
    files = {
        filename: safetensors_bytes({"emb_params": vec}),
        "README.md": (
            card
            or "---\nlicense: creativeml-openrail-m\nbase_model: runwayml/stable-diffusion-v1-5\n"
            "tags:\n- textual-inversion\n- negative-embedding\n- anime\n---\n# EasyNegative\n"
        ).encode(),
    }
    return server.commit(repo_id, files, replace=True)


def read_json(data: bytes) -> dict:
    return json.loads(data.decode())

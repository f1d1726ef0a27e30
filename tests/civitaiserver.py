"""A Civitai-compatible REST server for the tests, on 127.0.0.1 in a daemon thread.

Shapes follow Civitai's public REST API docs (``/api/v1``): ``model-versions/by-hash/{hash}``
(SHA-256 or AutoV2, any case), ``model-versions/{id}``, ``models/{id}`` and the download
URL ``/api/download/models/{versionId}``; images are served from ``/images/{name}``.

Faults (:meth:`CivitaiServer.inject`, each for a bounded number of matching requests):
``status`` (e.g. 429 with ``Retry-After``, 500), ``truncate`` (a body shorter than its
``Content-Length``), ``body`` (any bytes instead of the reply: non-JSON, HTML),
``huge`` (``size`` bytes streamed), ``alter`` (the download's bytes changed).
:attr:`CivitaiServer.requests` logs every request with its ``Authorization`` header.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Fault:
    kind: str
    path: str
    times: int = 1
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    size: int = 0


@dataclass
class Logged:
    path: str
    authorization: str | None
    host: str


class CivitaiServer:
    def __init__(self) -> None:
        self.versions: dict[int, dict[str, Any]] = {}
        self.models: dict[int, dict[str, Any]] = {}
        self.files: dict[int, bytes] = {}
        self.images: dict[str, bytes] = {}
        self.faults: list[Fault] = []
        self.requests: list[Logged] = []
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ life

    def start(self) -> CivitaiServer:
        server = self

        class Handler(_Handler):
            owner = server

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    @property
    def url(self) -> str:
        assert self.httpd
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    # ------------------------------------------------------------------ seeding

    def add_version(
        self,
        data: bytes,
        *,
        model_id: int,
        version_id: int,
        file_name: str = "easynegative.safetensors",
        model_name: str = "EasyNegative",
        base_model: str = "SD 1.5",
        trained_words: list[str] | None = None,
        description: str | None = "<p>A <b>negative</b> embedding.</p>",
        tags: list[str] | None = None,
        model_type: str = "TextualInversion",
        images: dict[str, bytes] | None = None,
        listed_sha256: str | None = None,
    ) -> dict[str, Any]:
        sha = hashlib.sha256(data).hexdigest().upper()
        self.files[version_id] = data
        image_list = []
        for name, img in (images or {}).items():
            self.images[name] = img
            image_list.append({"url": f"{self.url}/images/{name}", "type": "image", "nsfwLevel": 1})
        version = {
            "id": version_id,
            "modelId": model_id,
            "name": "v1.0",
            "baseModel": base_model,
            "trainedWords": trained_words if trained_words is not None else ["easynegative"],
            "description": description,
            "model": {"name": model_name, "type": model_type, "nsfw": False, "poi": False},
            "files": [
                {
                    "id": version_id * 10,
                    "name": file_name,
                    "sizeKB": len(data) / 1024,
                    "type": "Model",
                    "primary": True,
                    "hashes": {
                        "AutoV2": sha[:10],
                        "SHA256": listed_sha256 if listed_sha256 is not None else sha,
                    },
                    "downloadUrl": f"{self.url}/api/download/models/{version_id}",
                }
            ],
            "images": image_list,
            "downloadUrl": f"{self.url}/api/download/models/{version_id}",
        }
        self.versions[version_id] = version
        self.models[model_id] = {
            "id": model_id,
            "name": model_name,
            "description": "<p>Model page <script>alert(1)</script>text</p>",
            "type": model_type,
            "nsfw": False,
            "tags": tags if tags is not None else ["negative", "embedding"],
            "allowNoCredit": True,
            "allowCommercialUse": ["Image", "Rent"],
            "allowDerivatives": True,
            "allowDifferentLicense": False,
            "creator": {"username": "gsdf"},
            "modelVersions": [version],
        }
        return version

    def inject(self, kind: str, path: str, **kw: Any) -> Fault:
        f = Fault(kind, path, **kw)
        with self.lock:
            self.faults.append(f)
        return f

    def take(self, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.times > 0 and path.startswith(f.path):
                    f.times -= 1
                    return f
        return None

    def count(self, prefix: str) -> int:
        return sum(1 for r in self.requests if r.path.startswith(prefix))


class _Handler(BaseHTTPRequestHandler):
    owner: CivitaiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json", headers=None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, obj: Any) -> None:
        self._send(200, json.dumps(obj).encode())

    def do_GET(self) -> None:  # noqa: N802
        s = self.owner
        path = self.path.split("?")[0]
        with s.lock:
            s.requests.append(
                Logged(path, self.headers.get("Authorization"), self.headers.get("Host", ""))
            )
        fault = s.take(path)
        if fault is not None:
            if fault.kind == "status":
                self._send(fault.status, b'{"error":"fault"}', headers=fault.headers)
                return
            if fault.kind == "body":
                self._send(200, fault.body, ctype="text/html")
                return
            if fault.kind == "truncate":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "100000")
                self.end_headers()
                self.wfile.write(b'{"id": 1, "modelId"')
                self.wfile.flush()
                self.close_connection = True
                return
            if fault.kind == "huge":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()  # no Content-Length: read until the connection closes
                self.close_connection = True
                chunk = b" " * 65536
                try:
                    self.wfile.write(b"[")
                    for _ in range(fault.size // len(chunk)):
                        self.wfile.write(chunk)
                except OSError:
                    pass
                return
        parts = path.strip("/").split("/")
        try:
            if (
                parts[:3] == ["api", "v1", "model-versions"]
                and len(parts) == 5
                and parts[3] == "by-hash"
            ):
                h = parts[4].upper()
                for v in s.versions.values():
                    for f in v["files"]:
                        hashes = f["hashes"]
                        real = hashlib.sha256(s.files[v["id"]]).hexdigest().upper()
                        if h in (real, hashes.get("AutoV2")):
                            return self._json(v)
                return self._send(404, b'{"error":"Model not found"}')
            if parts[:3] == ["api", "v1", "model-versions"] and len(parts) == 4:
                v = s.versions.get(int(parts[3]))
                return self._json(v) if v else self._send(404, b'{"error":"not found"}')
            if parts[:3] == ["api", "v1", "models"] and len(parts) == 4:
                m = s.models.get(int(parts[3]))
                return self._json(m) if m else self._send(404, b'{"error":"not found"}')
            if parts[:3] == ["api", "download", "models"] and len(parts) == 4:
                data = s.files.get(int(parts[3]))
                if data is None:
                    return self._send(404, b"")
                if fault is not None and fault.kind == "alter":
                    data = data[:-1] + bytes([data[-1] ^ 1])
                return self._send(200, data, ctype="application/octet-stream")
            if parts[0] == "images" and len(parts) == 2 and parts[1] in s.images:
                return self._send(200, s.images[parts[1]], ctype="image/png")
        except ValueError:
            pass
        self._send(404, b'{"error":"not found"}')

"""The web gallery (``conceptlib serve``) on a large catalog, and the README's pictures.

Benchmark (default): builds (or reuses) a catalog of N entries with the bulk path of
``bench/search_catalog.py``, then measures

- server time per request, in process (Starlette's test client, no network): the
  gallery's first page, a deep page, a tag + family filter, a text filter, a concept
  page and a placeholder thumbnail (median of repeated runs);
- first paint in headless Chromium against ``conceptlib serve`` in a child process
  (the Performance API's ``first-contentful-paint`` and ``domContentLoaded``), for
  the gallery and a filtered page.

Screenshots (``--screenshots docs``): runs ``conceptlib demo`` (the sample embeddings
and a trained ``demo-toy``) in a fresh home, serves it, and writes
``web-gallery.png`` and ``web-concept.png`` into the folder.

Usage:
    python bench/web_gallery.py --home /tmp/bench100k          # 100,000 entries
    python bench/web_gallery.py --n 20000 --runs 5
    python bench/web_gallery.py --screenshots docs
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def median_ms(fn, runs: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chrome():  # noqa: ANN201
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(driver), options=options)


class Served:
    """``conceptlib serve`` over ``home`` in a child process."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, CONCEPTLIB_HOME=str(home))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conceptlib", "serve", "--port", str(self.port)], env=env
        )
        import urllib.request

        for _ in range(600):
            try:
                with urllib.request.urlopen(self.base + "/", timeout=5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("conceptlib serve did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def server_times(home: Path, runs: int) -> None:
    from starlette.testclient import TestClient

    from conceptlib.registry.library import Library
    from conceptlib.web.app import create_app

    lib = Library.open(home)
    client = TestClient(create_app(lib), base_url="http://127.0.0.1:7861")
    n = lib.count()
    sha = lib.search("concept-004242")[0].tensor_sha256
    pages = {
        "gallery, first page (48 cards)": "/",
        "gallery, newest first": "/?sort=newest",
        f"gallery, page 1000 of {-(-n // 48)}": "/?page=1000",
        "filter: tag-17 + sdxl": "/?tag=tag-17&family=sdxl",
        "filter: text 'watercolor neon'": "/?q=watercolor+neon",
        "concept page": f"/c/{sha}",
        "thumbnail (placeholder SVG)": f"/thumb/{sha}",
    }
    print(f"catalog: {n} entries at {home}")
    for label, url in pages.items():
        res = client.get(url)
        assert res.status_code == 200, (url, res.status_code)
        ms = median_ms(lambda url=url: client.get(url), runs)
        print(f"server time, {label}: {ms:.1f} ms median")
    lib.close()


def first_paint(home: Path, runs: int) -> None:
    served = Served(home)
    driver = chrome()
    try:
        for label, url in (
            ("gallery", "/"),
            ("filtered (tag-17 + sdxl)", "/?tag=tag-17&family=sdxl"),
            ("filtered (text 'watercolor neon')", "/?q=watercolor+neon"),
        ):
            fcp, dcl = [], []
            for _ in range(runs):
                driver.get(served.base + url)
                t = driver.execute_script(
                    "const p = performance.getEntriesByType('paint')"
                    ".find(e => e.name === 'first-contentful-paint');"
                    "const n = performance.getEntriesByType('navigation')[0];"
                    "return [p ? p.startTime : null, n.domContentLoadedEventEnd];"
                )
                if t[0] is not None:
                    fcp.append(t[0])
                dcl.append(t[1])
            fcp_ms = f"{statistics.median(fcp):.0f} ms" if fcp else "n/a"
            print(
                f"Chromium {label}: first contentful paint {fcp_ms}, "
                f"DOMContentLoaded {statistics.median(dcl):.0f} ms (median of {runs})"
            )
    finally:
        driver.quit()
        served.close()


def screenshots(out: Path, steps: int) -> None:
    from selenium.webdriver.common.by import By

    home = Path(tempfile.mkdtemp(prefix="conceptlib-shots-"))
    env = dict(os.environ, CONCEPTLIB_HOME=str(home))
    subprocess.run(
        [sys.executable, "-m", "conceptlib", "demo", "--steps", str(steps), "-q", "--json"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    served = Served(home)
    driver = chrome()
    try:
        driver.set_window_size(1280, 820)
        driver.get(served.base + "/")
        time.sleep(1.0)
        out.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out / "web-gallery.png"))
        driver.find_element(By.CSS_SELECTOR, 'li.card[data-name="demo-toy"] a.name').click()
        driver.set_window_size(1280, 1600)
        time.sleep(1.0)
        driver.execute_script("document.getElementById('use').scrollIntoView()")
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(out / "web-concept.png"))
        print(f"wrote {out / 'web-gallery.png'} and {out / 'web-concept.png'}")
    finally:
        driver.quit()
        served.close()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=11)
    ap.add_argument("--home", type=Path, default=None)
    ap.add_argument("--screenshots", type=Path, default=None, help="write the README pictures")
    ap.add_argument("--steps", type=int, default=60, help="demo training steps (screenshots)")
    args = ap.parse_args()
    if args.screenshots:
        screenshots(args.screenshots, args.steps)
        return
    home = args.home or Path(tempfile.mkdtemp(prefix="conceptlib-bench-"))
    if not (home / "catalog.db").exists():
        from search_catalog import build

        secs = build(home, args.n)
        print(f"built {args.n} entries in {secs:.1f} s")
    server_times(home, args.runs)
    first_paint(home, max(3, args.runs // 2))


if __name__ == "__main__":
    main()

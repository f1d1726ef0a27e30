"""``conceptlib serve`` in a real browser: headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium with the system driver; nothing is downloaded)
opens the page the command serves on 127.0.0.1, as a person would: the gallery with
its thumbnails, a filter, a concept page with its loss curve, a copy button, a tag
edit that survives a reload, and hostile sidecar text that stays text.

Without a browser the test is skipped with the reason, except under CI (``CI=true``),
where ``.ci/run`` installs one and a missing browser is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from web_support import build_catalog

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)
#: Longest wait for one thing to appear (seconds); every wait is bounded.
WAIT_S = 15


def _need_browser() -> None:
    missing = [n for n, p in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not p]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install -e '.[dev]')")
    if missing:
        reason = f"no {', '.join(missing)}: apt-get install chromium chromium-driver"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser test, but there is {reason}")
        pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(tmp_path, _isolated_home):
    """``conceptlib serve`` over the test catalog, in a child process: (base URL, home)."""
    _need_browser()
    from conceptlib.registry.library import Library

    with Library.open() as lib:
        build_catalog(lib, tmp_path / "files")
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "conceptlib", "serve", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(base, proc, tmp_path / "serve.log")
        yield base, _isolated_home
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _wait_until_up(base: str, proc: subprocess.Popen, log: Path) -> None:
    import urllib.request

    for _ in range(300):  # 30 s at most
        if proc.poll() is not None:
            pytest.fail(f"conceptlib serve exited: {log.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(base + "/", timeout=2) as res:
                if res.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"conceptlib serve did not answer: {log.read_text(errors='replace')}")


@pytest.fixture
def browser(monkeypatch):
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager never downloads a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S * 2)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what: str):  # noqa: ANN001, ANN202
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        pytest.fail(f"timed out waiting for {what}")


def _cards(driver) -> list[str]:  # noqa: ANN001
    return [li.get_attribute("data-name") for li in driver.find_elements("css selector", "li.card")]


def _images_loaded(driver, selector: str) -> bool:  # noqa: ANN001
    return driver.execute_script(
        "const imgs = Array.from(document.querySelectorAll(arguments[0]));"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);",
        selector,
    )


def test_a_person_browses_filters_copies_and_tags(served, browser, tmp_path):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    base, home = served
    d = browser

    # The gallery: every entry, each with its thumbnail (a preview or the placeholder).
    d.get(base + "/")
    names = _cards(d)
    assert {"demo-watercolor", "demo-woodblock", "demo-plush-cat", "demo-toy"} <= set(names)
    assert len(names) == 9
    _wait(d, lambda drv: _images_loaded(drv, "li.card img"), "every thumbnail to load")
    kinds = d.execute_script(
        "return Array.from(document.querySelectorAll('li.card img'))"
        ".map(i => i.src.split('/').pop().length)"
    )
    assert set(kinds) == {64}  # /thumb/<tensor sha256>
    d.save_screenshot(str(tmp_path / "gallery.png"))
    assert (tmp_path / "gallery.png").stat().st_size > 10_000

    # A filter narrows it.
    box = d.find_element(By.NAME, "q")
    box.send_keys("watercolor")
    box.submit()
    _wait(d, lambda drv: _cards(drv) == ["demo-watercolor"], "the filtered gallery")
    assert "q=watercolor" in d.current_url

    # A concept page shows its loss curve.
    d.get(base + "/")
    d.find_element(By.CSS_SELECTOR, 'li.card[data-name="demo-toy"] a.name').click()
    _wait(d, lambda drv: drv.find_elements(By.ID, "loss-curve"), "the concept page")
    assert d.find_element(By.ID, "name").text == "demo-toy"
    _wait(d, lambda drv: _images_loaded(drv, "#loss-curve"), "the loss curve")
    width = d.execute_script("return document.getElementById('loss-curve').naturalWidth")
    assert width == 720  # the trainer's loss curve PNG

    # A copy button puts the A1111 snippet on the clipboard.
    origin = base
    d.execute_cdp_cmd(
        "Browser.grantPermissions",
        {"origin": origin, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
    )
    button = d.find_element(By.CSS_SELECTOR, "#use-a1111 button.copy")
    assert button.get_attribute("data-copy") == "demo-toy"
    button.click()
    _wait(d, lambda drv: button.text == "copied", "the copy button to confirm")
    pasted = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "navigator.clipboard.readText().then(done, e => done('ERROR ' + e));"
    )
    assert pasted == "demo-toy"
    d.save_screenshot(str(tmp_path / "concept.png"))
    assert (tmp_path / "concept.png").stat().st_size > 10_000

    # A tag edit survives a reload.
    field = d.find_element(By.CSS_SELECTOR, "#tag-form input[name=add]")
    field.send_keys("golden-hour")
    field.submit()
    _wait(d, lambda drv: "golden-hour" in drv.find_element(By.ID, "tags").text, "the new tag")
    d.refresh()
    tags = [a.text for a in d.find_elements(By.CSS_SELECTOR, "#tags li.tag a")]
    assert tags == ["demo", "golden-hour"]
    from conceptlib.registry.library import Library

    with Library.open(home) as lib:
        assert lib.get("demo-toy").tags == ["demo", "golden-hour"]

    # Hostile sidecar text stays text: nothing ran, and it reads as written.
    d.get(base + "/")
    d.find_element(By.CSS_SELECTOR, 'li.card[data-name="demo-hostile"] a.name').click()
    _wait(d, lambda drv: drv.find_elements(By.ID, "description"), "the hostile entry")
    assert d.execute_script("return window.__xss === undefined")
    with pytest.raises(NoAlertPresentException):
        d.switch_to.alert.text  # noqa: B018
    text = d.find_element(By.ID, "description").text
    assert "<script>window.__xss = 1</script>" in text and "{{ 7*191 }}" in text
    assert not d.find_elements(By.CSS_SELECTOR, "#description *")

"""Every row of the README's exit-code table, through the real CLI.

Each test runs one real invocation (``python -m conceptlib`` in a subprocess, or
click's CliRunner where a fault has to be injected) and checks the exit status, the
one ``error:`` line on stderr and, for errors, that the catalog and the store are as
they were. The README's table and the codes tested here must be the same set.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conceptlib.cli.main import cli

README = Path(__file__).resolve().parents[1] / "README.md"

#: The codes this file proves, each by the test named after it.
TESTED = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 130}


def readme_codes() -> dict[int, str]:
    """``code -> meaning`` from the README's exit-code table (``| `N` | meaning | ...``)."""
    rows = re.findall(r"^\| `(\d+)` \| ([^|]+) \|", README.read_text(encoding="utf-8"), re.M)
    return {int(code): meaning.strip() for code, meaning in rows}


def conceptlib(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "conceptlib", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=cwd,
        timeout=120,
    )


def error_line(stderr: str) -> str:
    """The one ``error:`` line (there must be exactly one, and no traceback)."""
    assert "Traceback" not in stderr
    lines = [x for x in stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def filled(lib, emb_factory, catalog_snapshot):
    """A catalog with two entries, closed; ``filled.before`` is its snapshot."""
    lib.add_embedding(emb_factory("sd1", 1, 1), name="cat-toy", token="<cat-toy>")
    lib.add_embedding(emb_factory("sd1", 2, 2), name="ukiyoe", kind="style")
    home = lib.settings.home
    lib.close()

    class Filled:
        before = catalog_snapshot(home)

        @staticmethod
        def unchanged() -> bool:
            return catalog_snapshot(home) == Filled.before

    return Filled


def test_the_readme_table_lists_exactly_the_tested_codes():
    codes = readme_codes()
    assert set(codes) == TESTED
    assert "training" in codes[8] and "Hub" in codes[9] and "interrupted" in codes[130]


def test_0_success(filled):
    res = conceptlib("show", "cat-toy", "--json")
    assert res.returncode == 0 and res.stderr == ""
    assert '"name": "cat-toy"' in res.stdout


def test_1_unexpected_error_is_one_line_and_debug_shows_the_traceback(filled, monkeypatch):
    from conceptlib.catalog.query import Reader

    def broken(self, q):
        raise RuntimeError("broken \x1b[31mred\nsecond line")

    monkeypatch.setattr(Reader, "search", broken)
    runner = CliRunner()
    res = runner.invoke(cli, ["list"])
    assert res.exit_code == 1
    assert error_line(res.stderr) == "error: unexpected RuntimeError: broken \\x1b[31mred"
    assert res.stderr.splitlines()[-1].startswith("hint: this is a bug in conceptlib; run")
    assert "second line" not in res.stderr and res.stdout == ""
    debug = runner.invoke(cli, ["list", "--debug"])
    assert debug.exit_code == 1 and isinstance(debug.exception, RuntimeError)
    assert filled.unchanged()


def test_2_usage(filled):
    res = conceptlib("tag", "cat-toy")
    assert res.returncode == 2
    assert error_line(res.stderr) == "error: nothing to do: give --add TAG and/or --remove TAG"
    res = conceptlib("search", "--family", "sd9")  # click's own usage errors: 2 as well
    assert res.returncode == 2 and "Invalid value for '--family'" in res.stderr
    assert filled.unchanged()


def test_3_bad_file(filled, tmp_path):
    (tmp_path / "notes.txt").write_text("these are my notes\n", encoding="utf-8")
    res = conceptlib("import", "notes.txt", cwd=tmp_path)
    assert res.returncode == 3
    assert error_line(res.stderr).startswith("error: notes.txt: unrecognized content")
    assert filled.unchanged()


class _Hostile:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def test_4_unsafe_file(filled, tmp_path):
    sentinel = tmp_path / "sentinel"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Hostile(sentinel), protocol=2))
    res = conceptlib("import", "evil.pt", cwd=tmp_path)
    assert res.returncode == 4
    line = error_line(res.stderr)
    assert line.startswith("error: evil.pt: pickle imports ") and "not executed" in line
    assert not sentinel.exists()
    assert filled.unchanged()


def test_5_name_taken(filled):
    res = conceptlib("rename", "cat-toy", "ukiyoe")
    assert res.returncode == 5
    assert error_line(res.stderr) == "error: the name 'ukiyoe' is already used by 'ukiyoe'"
    assert res.stderr.splitlines()[-1] == "hint: choose another name: give another NEW"
    assert filled.unchanged()


def test_5_export_onto_an_existing_file(filled, tmp_path):
    target = tmp_path / "cat-toy.safetensors"
    target.write_bytes(b"mine")
    res = CliRunner().invoke(cli, ["export", "cat-toy", "-o", str(target)])
    assert res.exit_code == 5, res.output
    assert error_line(res.stderr).startswith(f"error: {target} already exists")
    assert target.read_bytes() == b"mine"
    assert filled.unchanged()


def test_6_not_found(filled):
    res = conceptlib("show", "no-such-thing")
    assert res.returncode == 6
    assert error_line(res.stderr) == "error: no embedding named 'no-such-thing'"
    assert filled.unchanged()


def test_6_train_on_a_missing_images_folder(filled, tmp_path):
    res = CliRunner().invoke(
        cli,
        ["train", str(tmp_path / "nope"), "--name", "x-cat", "--init", "cat", "--base", "tiny-sd1"],
    )
    assert res.exit_code == 6, res.output
    assert error_line(res.stderr) == f"error: {tmp_path / 'nope'}: no such file or folder"
    assert filled.unchanged()


def test_7_catalog_problem(_isolated_home):
    _isolated_home.mkdir(parents=True)
    catalog = _isolated_home / "catalog.db"
    catalog.write_bytes(b"SQLite format 3\x00" + b"garbage" * 100)
    res = conceptlib("list")
    assert res.returncode == 7
    assert (
        error_line(res.stderr)
        == f"error: the catalog {catalog} is corrupt (file is not a database)"
    )
    assert catalog.read_bytes() == b"SQLite format 3\x00" + b"garbage" * 100


def test_8_training(filled, tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 64), "orange").save(tmp_path / "imgs" / "a.png")
    res = CliRunner().invoke(
        cli,
        [
            "train",
            str(tmp_path / "imgs"),
            "--name",
            "x-cat",
            "--init",
            "cat",
            "--base",
            "tiny-sd1",
            "--resume",
        ],
    )
    assert res.exit_code == 8, res.output
    assert error_line(res.stderr).startswith("error: no checkpoint to resume at ")
    assert res.stderr.splitlines()[-1] == "hint: start the run without --resume"
    assert filled.unchanged()


def test_9_hub(filled):
    res = conceptlib("pull", "someone/not-cached", HF_HUB_OFFLINE="1")
    assert res.returncode == 9
    line = error_line(res.stderr)
    assert line.startswith("error: HF_HUB_OFFLINE=1 and someone/not-cached@main is not in")
    assert filled.unchanged()


def test_130_interrupted(filled, monkeypatch):
    from conceptlib.catalog.query import Reader

    def interrupted(self, handle, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(Reader, "resolve", interrupted)
    res = CliRunner().invoke(cli, ["show", "cat-toy"])
    assert res.exit_code == 130
    assert res.stderr == "interrupted\n" and res.stdout == ""
    assert filled.unchanged()

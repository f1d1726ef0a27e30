"""Checking a refused import through the real CLI: one error line, the exit status,
and nothing changed in the catalog or the store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def store_files(home: Path) -> list[str]:
    """Every file of the blob store under ``home``, relative to it."""
    return sorted(str(p.relative_to(home)) for p in (home / "store").rglob("*") if p.is_file())


def import_is_refused(
    path: Path, home: Path, *, code: int, fragment: str, snapshot: Callable[[Path], tuple]
) -> str:
    """``conceptlib import PATH`` exits ``code`` with exactly one ``error:`` line, the
    first, holding ``fragment``; the catalog (``snapshot``) and the store are unchanged.
    Returns the output for further checks."""
    from click.testing import CliRunner

    from conceptlib.cli.main import cli

    before, files = snapshot(home), store_files(home)
    res = CliRunner().invoke(cli, ["import", str(path)])
    lines = res.output.strip().splitlines()
    assert res.exit_code == code, res.output
    assert lines[0].startswith("error: ") and fragment in lines[0], lines
    assert sum(line.startswith("error:") for line in lines) == 1
    assert snapshot(home) == before
    assert store_files(home) == files
    return res.output

"""Helpers shared by the CLI modules: options, output, progress, opening the library.

Data goes to stdout (tables for people, ``--json`` for scripts); messages, progress
bars and errors go to stderr. rich is imported only when something is rendered.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from rich.console import Console

    from conceptlib.catalog.query import Reader
    from conceptlib.registry.library import Library

F = TypeVar("F", bound=Callable[..., Any])


def json_option(f: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (for scripts) instead of a table."
    )(f)


#: Candidates for escaping in JSON output: anything but printable ASCII and the newline
#: of indentation; :func:`_json_escape` keeps the harmless ones (letters, marks, ...).
_UNSAFE_IN_JSON = re.compile(r"[^\x20-\x7e\n]")
#: Unicode categories a terminal may act on: controls, format (bidi, zero-width),
#: surrogates, private use, line/paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Zl", "Zp"})


def _json_escape(match: re.Match[str]) -> str:
    import unicodedata

    char = match.group()
    if unicodedata.category(char) not in _ESCAPED_CATEGORIES:
        return char
    code = ord(char)
    if code > 0xFFFF:  # JSON spells characters beyond the BMP as a surrogate pair
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON that is safe on a terminal.

    Non-ASCII letters stay readable (``ensure_ascii=False``), but every character a
    terminal could act on or that reorders the line (C0/C1 controls, DEL, Unicode
    format characters such as bidi overrides and zero-width marks, line and paragraph
    separators, lone surrogates) is written as a ``\\uXXXX`` escape: the parsed value
    is unchanged, the bytes on screen are inert.
    """
    text = json.dumps(obj, indent=2, ensure_ascii=False, default=str)
    click.echo(_UNSAFE_IN_JSON.sub(_json_escape, text))


def console() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def err_console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def open_library() -> Library:
    from conceptlib.registry.library import Library

    return Library.open()


@contextmanager
def open_reader() -> Iterator[Reader]:
    """A read-only view of the catalog that imports no SQLAlchemy on the common path.

    On SQLite with an up-to-date schema, a plain ``sqlite3`` read-only connection is
    used; otherwise (no catalog yet, an older schema, PostgreSQL) the library is
    opened, which creates or migrates the catalog.
    """
    from conceptlib.catalog.query import (
        SCHEMA_VERSION,
        Reader,
        open_sqlite_readonly,
        schema_version_sqlite,
    )
    from conceptlib.config import load_settings

    settings = load_settings()
    if settings.is_sqlite and settings.catalog_path.is_file():
        import sqlite3

        try:
            conn = open_sqlite_readonly(str(settings.catalog_path), settings.busy_timeout_s)
            try:
                if schema_version_sqlite(conn) == SCHEMA_VERSION:
                    yield Reader(conn, "sqlite")
                    return
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            from conceptlib.errors import CatalogCorrupt, CatalogLocked

            text = str(exc)
            if "locked" in text:
                raise CatalogLocked(
                    f"the catalog {settings.catalog_path} is locked past the busy timeout"
                ) from None
            raise CatalogCorrupt(
                f"the catalog {settings.catalog_path} cannot be read ({text})",
                hint="restore it from a backup, or move it aside and re-import",
            ) from None
    lib = open_library()
    try:
        with lib.reader() as r:
            yield r
    finally:
        lib.close()


class _Progress:
    """A rich progress bar on stderr, or nothing when stderr is not a terminal."""

    def __init__(self, description: str, enabled: bool) -> None:
        self.description = description
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                # the current file's name is untrusted: shown as text, never as markup
                TextColumn("{task.fields[current]}", style="dim", markup=False),
                console=err_console(),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=None, current="")
        return self

    def update(self, done: int, total: int, current: str = "") -> None:
        if self._progress is not None:
            from conceptlib.cli.render import safe_text

            current = safe_text(current)
            short = current if len(current) < 40 else "…" + current[-39:]
            self._progress.update(self._task, completed=done, total=total, current=short)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def progress(description: str, *, quiet: bool = False) -> _Progress:
    enabled = not quiet and sys.stderr.isatty() and os.environ.get("CI") != "true"
    return _Progress(description, enabled)


def short(sha: str | None, n: int = 12) -> str:
    return (sha or "")[:n]


def echo(message: str, *, err: bool = False) -> None:
    """``click.echo`` for text that holds untrusted parts (names, paths, server text):
    control characters are shown as escapes, never sent to the terminal."""
    from conceptlib.cli.render import safe_text

    click.echo(safe_text(message), err=err)


def echo_err(message: str) -> None:
    from conceptlib.cli.render import safe_text

    click.echo(safe_text(message), err=True)

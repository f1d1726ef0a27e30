"""What reaches a terminal: untrusted text (file and folder names, tensor names, remote
text) is shown with its control characters escaped and never read as rich markup,
in tables, error lines and the progress bar. Run on a real pseudo-terminal, where the
progress bar is on and an escape sequence would set the window title or clear the
screen (issue "Hostile inputs, second round", items 7-8)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from tty_support import read_terminal

from conceptlib.registry.formats.safetensors_io import write_safetensors

pty = pytest.importorskip("pty")

OSC_TITLE = "\x1b]0;pwned\x07"
CLEAR = "\x1b[2J"


def _run_on_a_terminal(args: list[str], env: dict[str, str], limit_s: float = 120) -> tuple:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "conceptlib", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    out = read_terminal(master, proc, limit_s)
    return proc.returncode, out


@pytest.fixture
def tty_env(_isolated_home):
    env = {k: v for k, v in os.environ.items() if k != "CI"}  # the progress bar is on
    env.update(CONCEPTLIB_HOME=str(_isolated_home), TERM="xterm-256color", COLUMNS="200")
    return env


def test_hostile_names_on_a_terminal_are_shown_not_obeyed(tmp_path, tty_env):
    folder = tmp_path / "evil["
    folder.mkdir()
    vec = np.ones((1, 768), np.float32)
    (folder / "]x[bold].safetensors").write_bytes(write_safetensors({"emb_params": vec}))
    (folder / f"t{OSC_TITLE}{CLEAR}.safetensors").write_bytes(
        write_safetensors({f"k{OSC_TITLE}": vec * 2})
    )
    (folder / f"junk{OSC_TITLE}.pt").write_bytes(b"not an embedding\n")
    code, out = _run_on_a_terminal(["import", str(folder)], tty_env)
    assert code == 3, out  # the junk file is rejected, the rest imported
    assert "Traceback" not in out and "MarkupError" not in out
    assert OSC_TITLE not in out and CLEAR not in out
    assert "\\x1b]0;pwned\\x07" in out  # shown as an escape
    assert "]x[bold]" in out.replace("\r\n", "")  # markup-like text printed as text
    # and every command that shows them again
    code, out = _run_on_a_terminal(["list"], tty_env)
    assert code == 0 and OSC_TITLE not in out and "Traceback" not in out
    code, out = _run_on_a_terminal(["show", "x-bold"], tty_env)
    assert code == 0, out
    assert OSC_TITLE not in out and "Traceback" not in out
    code, out = _run_on_a_terminal(["import", str(folder / f"junk{OSC_TITLE}.pt")], tty_env)
    assert code == 3 and OSC_TITLE not in out and "\\x1b]0;pwned" in out
    assert "not an embedding" not in out  # the file's text is never echoed


def test_error_lines_escape_control_characters(tmp_path):
    from click.testing import CliRunner

    from conceptlib.cli.main import cli

    bad = tmp_path / f"nope{OSC_TITLE}\nline2.pt"
    result = CliRunner().invoke(cli, ["import", str(bad)])
    assert result.exit_code != 0
    (line,) = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert "\\x1b]0;pwned\\x07\\nline2.pt" in line
    assert "\x1b" not in result.output and "\x07" not in result.output

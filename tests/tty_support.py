"""Reading what a child process writes to a pseudo-terminal, bounded in time."""

from __future__ import annotations

import os
import select
import subprocess
import time


def read_terminal(master: int, proc: subprocess.Popen, limit_s: float) -> str:
    """Everything written to the terminal ``master`` until ``proc`` ends (or ``limit_s``
    seconds pass: then the process is killed); closes ``master``."""
    chunks, deadline = [], time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")

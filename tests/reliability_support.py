"""What the reliability tests share."""

from __future__ import annotations

import json
import os
from typing import Any


def report_figures(name: str, **figures: Any) -> None:
    """Print the figures a test measured and append them to the report file, if asked
    (``CONCEPTLIB_RELIABILITY_REPORT``; RELIABILITY.md is written from it)."""
    line = json.dumps({"test": name, **figures}, sort_keys=True)
    print(line)
    target = os.environ.get("CONCEPTLIB_RELIABILITY_REPORT")
    if target:
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

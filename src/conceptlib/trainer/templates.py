"""Prompt templates for textual-inversion training.

Each template holds one ``{}`` where the placeholder token(s) go. ``object``
templates describe a thing ("a photo of a {}"), ``style`` templates a manner
("a painting in the style of {}"). A text file gives one template per line;
blank lines and lines starting with ``#`` are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from conceptlib.errors import UsageError

OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)

STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a close up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
    "an illustration in the style of {}",
)

BUILTIN: dict[str, tuple[str, ...]] = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


def load_templates(spec: str | os.PathLike[str] | None, *, kind: str = "object") -> list[str]:
    """Resolve ``spec`` into a list of templates.

    Args:
        spec: ``"object"``, ``"style"``, a path to a text file, or ``None`` for the
            built-in set matching ``kind`` (``style`` for style concepts, else ``object``).
        kind: the concept kind, used when ``spec`` is ``None``.

    Raises:
        UsageError: an unreadable file, an empty one, or a line without exactly one ``{}``.
    """
    if spec is None:
        spec = "style" if kind == "style" else "object"
    if isinstance(spec, str) and spec in BUILTIN:
        return list(BUILTIN[spec])
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"templates {str(spec)!r}: expected 'object', 'style' or a readable UTF-8 text file "
            f"({exc.__class__.__name__})",
            path=str(path),
        ) from exc
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.count("{}") != 1:
            raise UsageError(
                f"{path}:{number}: template {line!r} must contain exactly one '{{}}' where the "
                "concept goes",
                path=str(path),
            )
        out.append(line)
    if not out:
        raise UsageError(f"{path}: no templates (one per line, each with '{{}}')", path=str(path))
    return out

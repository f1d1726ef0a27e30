"""Prompt templates for textual-inversion training.

Each template holds one ``{}`` where the placeholder token(s) go. ``object``
templates describe a thing ("a photo of a {}"), ``style`` templates a manner
("a painting in the style of {}"). A text file gives one template per line;
blank lines and lines starting with ``#`` are skipped. A1111's template files write
the placeholder as ``[name]``: a line with one ``[name]`` and no braces reads it as
``{}``; ``[filewords]`` (the image's caption) needs ``--captions``
(:mod:`conceptlib.trainer.captions`).
"""

from __future__ import annotations

import os
from pathlib import Path

from conceptlib.errors import NotFound, UsageError

#: A templates file is a few hundred short lines; anything larger is not one.
MAX_TEMPLATES_BYTES = 1024 * 1024

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
        NotFound: ``spec`` names no file (exit 6).
        UsageError: an unreadable, oversized (over 1 MiB) or empty file, or a line that
            is not a ``str.format`` template with exactly one ``{}`` (a line such as
            ``a {} on a {table}`` would fail at the first step; it fails here, before the
            base model loads). Messages name the file and line, never the line's text.
    """
    if spec is None:
        spec = "style" if kind == "style" else "object"
    if isinstance(spec, str) and spec in BUILTIN:
        return list(BUILTIN[spec])
    path = Path(spec)
    if not path.exists():
        raise NotFound(
            f"templates file {str(spec)!r} does not exist; expected 'object', 'style' or a "
            "text file with one template per line",
            path=str(path),
        )
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_TEMPLATES_BYTES + 1)
        if len(data) > MAX_TEMPLATES_BYTES:
            raise UsageError(
                f"templates {str(spec)!r} is over {MAX_TEMPLATES_BYTES // 1024} KiB; expected "
                "a text file with one template per line",
                path=str(path),
            )
        text = data.decode("utf-8")
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
        if line.count("[name]") == 1 and "{" not in line and "}" not in line:
            line = line.replace("[name]", "{}")  # A1111's placeholder
        problem = _template_problem(line)
        if problem:
            raise UsageError(
                f"{path}:{number}: {problem}; expected exactly one '{{}}' where the concept goes "
                "(write other braces as '{{' and '}}')",
                path=str(path),
            )
        out.append(line)
    if not out:
        raise UsageError(f"{path}: no templates (one per line, each with '{{}}')", path=str(path))
    return out


def _template_problem(line: str) -> str | None:
    """Why ``line`` is not a template the loop can fill (``line.format(token)``), or None."""
    import string

    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(line) if f is not None]
    except ValueError:
        return "the line has an unmatched '{' or '}'"
    if fields.count("") != 1 or len(fields) != 1:
        named = [f for f in fields if f]
        if named:
            return f"the line has {len(named)} named field(s) besides '{{}}'"
        return f"the line has {fields.count('')} '{{}}' fields"
    if "{}" not in line:
        return "the concept's field is not written as a plain '{}'"
    try:
        line.format("x")
    except (IndexError, KeyError, ValueError):
        return "the line is not a valid format string"
    return None

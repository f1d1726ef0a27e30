"""Checking the fields a user may change on an existing entry (``edit``, ``rename``).

Every function returns the value to store or raises a :class:`ConceptlibError`
naming the field and what was expected; none of them touches the catalog, so a
refused value changes nothing.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from conceptlib.errors import InvalidName, UsageError
from conceptlib.schemas.enums import Kind
from conceptlib.schemas.names import validate_token
from conceptlib.schemas.vocabulary import is_common_word

#: Longest description kept (characters); model cards rarely pass a few hundred.
MAX_DESCRIPTION = 10_000
#: Longest one-line field (license, base model) and trigger word.
MAX_LINE = 200
#: Most trigger words kept for one entry.
MAX_TRIGGER_WORDS = 50


def checked_kind(kind: str) -> str:
    """``object``, ``style``, ``negative`` or ``other``; :class:`UsageError` otherwise."""
    try:
        return Kind(str(kind).strip().lower()).value
    except ValueError:
        raise UsageError(
            f"unknown kind {kind!r}: expected one of {', '.join(k.value for k in Kind)}"
        ) from None


def checked_text(value: str, what: str, *, multiline: bool = False) -> str | None:
    """A free-text field, trimmed; ``""`` clears it (``None``).

    Refused (:class:`UsageError`): control characters (newlines and tabs are allowed
    when ``multiline``), and more than :data:`MAX_DESCRIPTION` characters (multi-line)
    or :data:`MAX_LINE` (one line).
    """
    text = unicodedata.normalize("NFC", str(value)).strip()
    allowed = "\n\t" if multiline else ""
    for ch in text:
        if unicodedata.category(ch) == "Cc" and ch not in allowed:
            raise UsageError(f"the {what} contains the control character U+{ord(ch):04X}")
    limit = MAX_DESCRIPTION if multiline else MAX_LINE
    if len(text) > limit:
        raise UsageError(f"the {what} has {len(text)} characters; at most {limit} are kept")
    return text or None


def checked_fields(**values: str | None) -> dict[str, Any]:
    """``description`` (multi-line), ``license`` and ``base_model`` (one line each) as
    column values; fields given as ``None`` are left out (unchanged)."""
    return {
        key: checked_text(value, key.replace("_", " "), multiline=key == "description")
        for key, value in values.items()
        if value is not None
    }


def checked_token(token: str) -> str:
    """A trigger token under the catalog's rules (:func:`validate_token`: the name rules,
    optionally in ``<...>``), and not an ordinary word."""
    new_token = validate_token(token)
    if is_common_word(new_token):
        raise InvalidName(
            f"the token {new_token!r} is an ordinary word: as a trigger it would "
            f"silently change what {new_token!r} means in every prompt",
            hint=f"choose a distinctive token, e.g. <{new_token}>",
        )
    return new_token


def checked_trigger_words(words: Sequence[str]) -> list[str]:
    """Trigger words (Civitai's ``trainedWords``, A1111's ``activation text``): each
    trimmed, one line, at most :data:`MAX_LINE` characters, no commas (they separate
    them); empty ones dropped, duplicates kept once, at most :data:`MAX_TRIGGER_WORDS`."""
    if isinstance(words, str):
        words = [words]
    out: list[str] = []
    for w in words:
        text = checked_text(w, "trigger word")
        if text is None:
            continue
        if "," in text:
            raise UsageError(f"the trigger word {text!r} contains a comma, which separates them")
        if text not in out:
            out.append(text)
    if len(out) > MAX_TRIGGER_WORDS:
        raise UsageError(f"{len(out)} trigger words; at most {MAX_TRIGGER_WORDS} are kept")
    return out

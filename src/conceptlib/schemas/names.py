"""Name rules for the handles users type (``<cat-toy>``, ``easynegative``).

A name is stored as typed (after NFKC and trimming); uniqueness uses its *key*:
NFKC, case-folded, trimmed. CLIP lower-cases prompt text, so names differing only
by case would collide in every UI anyway.
"""

from __future__ import annotations

import re
import unicodedata

from conceptlib.errors import InvalidName, UntriggerableName

MAX_NAME_LENGTH = 100

#: Windows device names, with or without an extension (Microsoft's "Naming Files, Paths,
#: and Namespaces"): CON, PRN, AUX, NUL, COM0-9, LPT0-9 (also with superscript digits),
#: and the console streams CONIN$ and CONOUT$.
_RESERVED_DEVICE = re.compile(
    r"^(con|prn|aux|nul|conin\$|conout\$|com[0-9\u00b9\u00b2\u00b3]|lpt[0-9\u00b9\u00b2\u00b3])"
    r"(\..*)?$",
    re.IGNORECASE,
)
# Characters that have a meaning in prompt syntax or paths.
_FORBIDDEN_CHARS = set('/\\<>:"|?*,()[]{}')
_EXPANSION = re.compile(r"^(?P<base>.+)_(?P<index>[1-9][0-9]*)$")


def normalize_name(name: str) -> str:
    """NFKC-normalize and trim ``name`` (the stored, displayed form)."""
    return unicodedata.normalize("NFKC", name).strip()


def name_key(name: str) -> str:
    """The uniqueness key of ``name``: NFKC, trimmed, case-folded."""
    return normalize_name(name).casefold()


def _bad_char(ch: str) -> str | None:
    cat = unicodedata.category(ch)
    if cat == "Cc":
        return f"control character U+{ord(ch):04X}"
    if cat == "Cf":
        # zero-width spaces/joiners, bidi overrides and marks, BOM, soft hyphen
        return f"invisible or bidi character U+{ord(ch):04X} ({unicodedata.name(ch, 'unnamed')})"
    if cat in ("Zl", "Zp") or (cat == "Zs"):
        return "whitespace"
    if ch in _FORBIDDEN_CHARS:
        return f"the character {ch!r}"
    return None


def validate_name(name: str, *, what: str = "name") -> str:
    """Return the normalized ``name`` or raise :class:`InvalidName` saying why.

    Refused: empty or over 100 characters; control, zero-width and bidi
    characters; whitespace; path separators and ``..``; prompt syntax characters
    (``< > : , ( ) [ ] { }``); reserved device names (``CON``, ``NUL``, ``COM1``...);
    trailing dots.
    """
    raw = name
    # Trailing spaces and dots are checked on the raw text: Windows drops them.
    if raw != raw.rstrip(" .") and raw.strip():
        raise InvalidName(
            f"invalid {what} {raw!r}: ends with a dot or a space; expected a name "
            "ending in a letter, digit, '-' or '_'"
        )
    norm = normalize_name(raw)
    if not norm:
        raise InvalidName(f"invalid {what}: it is empty; expected 1-{MAX_NAME_LENGTH} characters")
    if len(norm) > MAX_NAME_LENGTH:
        raise InvalidName(
            f"invalid {what}: {len(norm)} characters; expected at most {MAX_NAME_LENGTH}"
        )
    for ch in norm:
        reason = _bad_char(ch)
        if reason:
            raise InvalidName(
                f"invalid {what} {norm!r}: contains {reason}; expected letters, digits, '-', "
                "'_' or '.'"
            )
    if ".." in norm:
        raise InvalidName(f"invalid {what} {norm!r}: contains '..'; expected no path parts")
    if norm.endswith("."):
        raise InvalidName(f"invalid {what} {norm!r}: ends with a dot")
    if _RESERVED_DEVICE.match(norm):
        raise InvalidName(
            f"invalid {what} {norm!r}: a reserved device name on Windows; choose another name"
        )
    return norm


def validate_token(token: str) -> str:
    """Validate a trigger token. Tokens may be wrapped in ``<...>`` (diffusers style)."""
    inner = (
        token[1:-1] if len(token) > 2 and token.startswith("<") and token.endswith(">") else token
    )
    validate_name(inner, what="token")
    return normalize_name(token)


def is_reserved_device(name: str) -> bool:
    """Whether ``name`` (a file or path part) is a Windows device name (see
    ``_RESERVED_DEVICE``), which no file of ours may be called."""
    return bool(_RESERVED_DEVICE.match(name))


def derive_name(stem: str) -> str:
    """Make a valid name from a file stem: whitespace and forbidden characters become '-'.

    The result always passes :func:`validate_name` (a derived name is checked like a
    typed one); what cannot be made valid becomes ``embedding``."""
    text = normalize_name(stem)
    out = []
    for ch in text:
        out.append("-" if _bad_char(ch) else ch)
    name = re.sub(r"-{2,}", "-", "".join(out)).strip("-. ")
    name = re.sub(r"\.{2,}", ".", name)  # "a...b" -> "a.b": no path parts
    if not name or _RESERVED_DEVICE.match(name):
        name = f"embedding-{name}" if name else "embedding"
    name = name[:MAX_NAME_LENGTH].rstrip(". ")
    try:
        return validate_name(name)
    except InvalidName:
        return "embedding"


def split_expansion(key: str) -> tuple[str, int] | None:
    """``"foo_2"`` -> ``("foo", 2)``: the diffusers expansion naming of a multi-vector token."""
    m = _EXPANSION.match(key)
    if not m:
        return None
    return m.group("base"), int(m.group("index"))


def expansion_tokens(token: str, n: int) -> list[str]:
    """The tokens a trigger of ``n`` vectors adds to a tokenizer: ``t, t_1, ... t_{n-1}``.

    diffusers' ``load_textual_inversion`` names the extra vectors of a multi-vector
    embedding this way; the prompt loader does the same, so the trainer checks exactly
    these tokens against the base model's tokenizers.
    """
    return [token] + [f"{token}_{i}" for i in range(1, n)]


def strip_brackets(token: str) -> str:
    if len(token) > 2 and token.startswith("<") and token.endswith(">"):
        return token[1:-1]
    return token


_WHITESPACE_RUN = re.compile(r"\s+")


def tokenizer_form(token: str) -> str:
    """``token`` as a CLIP tokenizer sees it: NFC, each whitespace run one space, lower case.

    transformers' ``CLIPTokenizer`` normalizes all text this way (its ``normalizer``:
    NFC, ``\\s+`` -> ``" "``, lowercase; OpenAI's CLIP: ``whitespace_clean(...).lower()``)
    before it matches the tokens ``load_textual_inversion`` added. A token written in
    mixed case (``BadHandV4``) is then never the one the prompt holds: diffusers'
    multi-vector expansion misses it and only one of its vectors is used. Every writer
    of a token meant for a tokenizer (diffusers files, ``token_identifier.txt``, prompts
    rendered for diffusers) writes this form; the catalog keeps the token as typed.

    Example: ``tokenizer_form("<BadHand-V4>") == "<badhand-v4>"``.
    """
    return _WHITESPACE_RUN.sub(" ", unicodedata.normalize("NFC", token)).lower()


#: What InvokeAI's trigger pattern accepts between ``<`` and ``>`` (InvokeAI
#: ``invokeai/app/util/ti_utils.py``, ``extract_ti_triggers_from_prompt``).
INVOKEAI_TRIGGER = re.compile(r"[a-zA-Z0-9., _-]+")
_OUTSIDE_INVOKEAI = re.compile(r"[^A-Za-z0-9._-]+")


def invokeai_name(name: str) -> str:
    """The model name InvokeAI can trigger for catalog name ``name`` (mapped if needed):
    InvokeAI names an embedding after its file or folder and finds triggers with
    :data:`INVOKEAI_TRIGGER`, so ``cat-toy@v1`` (made by ``pull``) becomes ``cat-toy-v1``
    and ``café`` becomes ``cafe``; used for the prompt and the exported folder alike.

    Raises:
        UntriggerableName: nothing usable is left after mapping (no ASCII letter or
            digit), or the mapped name is not a valid name.
    """
    if INVOKEAI_TRIGGER.fullmatch(name) and name.strip() == name and " " not in name:
        return name
    plain = "".join(c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    mapped = _OUTSIDE_INVOKEAI.sub("-", plain).strip("-.")
    mapped = re.sub(r"\.{2,}", ".", mapped)
    why = None
    if not re.search(r"[A-Za-z0-9]", mapped):
        why = "no ASCII letter or digit is left"
    else:
        try:
            validate_name(mapped)
        except InvalidName as exc:
            why = exc.message
    if why is not None:
        raise UntriggerableName(
            f"InvokeAI cannot trigger {name!r}: its trigger pattern <[a-zA-Z0-9., _-]+> "
            f"takes ASCII letters, digits, '.', ',', ' ', '_' and '-' only, and mapping the "
            f"name to those fails ({why})",
            hint=f"rename the entry to an ASCII name: conceptlib rename {name} NEW-NAME",
            name=name,
            ui="invokeai",
            mapped=None,
        )
    return mapped

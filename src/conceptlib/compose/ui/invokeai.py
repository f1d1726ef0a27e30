"""InvokeAI: prompts and triggers.

Rules read off its public source (``invokeai/app/util/ti_utils.py``:
``extract_ti_triggers_from_prompt`` and ``generate_ti_list``; the compel prompt syntax):

* **Trigger**: ``<NAME>``, where NAME is the model's name (an installed embedding
  file's stem). InvokeAI finds triggers with the pattern ``<[a-zA-Z0-9., _-]+>``: ASCII
  letters, digits, ``.``, ``,``, space, ``_`` and ``-`` only. A name with anything else
  (``cat-toy@v1`` from ``pull``, ``café``, ``a+b``) is silently not applied, so such a
  name is *mapped*: accents are dropped (``café`` -> ``cafe``) and every other run of
  characters outside the pattern becomes one ``-`` (``cat-toy@v1`` -> ``cat-toy-v1``).
  The file written for InvokeAI and the prompt both use the mapped name. A name with
  nothing left to map (``猫``) is refused: rename the entry.
* **Weights**: compel's ``(<NAME>)0.8``, applied as attention.
* **SD 1.x embedding on SDXL**: not loaded (the model's base must match the
  pipeline's); the trigger is left as text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conceptlib.compose.ui.syntax import Piece, plain_number

if TYPE_CHECKING:
    from conceptlib.compose.prompt import ParsedPrompt
from conceptlib.schemas.names import INVOKEAI_TRIGGER, invokeai_name

LABEL = "InvokeAI"
SD1_ON_SDXL = "skip"
SD1_ON_SDXL_HOW = (
    "InvokeAI does not load an embedding whose base is not the model's, and leaves its "
    "trigger as text"
)
WEIGHTS = "as attention on the token (compel (<name>)w)"

#: What InvokeAI's trigger pattern accepts between ``<`` and ``>``.
TRIGGER_PATTERN = INVOKEAI_TRIGGER


def trigger(name: str, token: str) -> str:
    """The model name InvokeAI can trigger for catalog name ``name`` (mapped if needed;
    the rule is :func:`conceptlib.schemas.names.invokeai_name`, which the registry's
    ``--for invokeai`` export uses for its folder too).

    Raises:
        UntriggerableName: nothing usable is left after mapping.
    """
    return invokeai_name(name)


def file_stem(name: str, token: str) -> str:
    """The embedding file's stem (InvokeAI names the model after it): the trigger."""
    return trigger(name, token)


def reference(trig: str, weight: float | None) -> str:
    """``<trig>``, or compel's ``(<trig>)0.8`` with a weight other than 1."""
    if weight is None or weight == 1.0:
        return f"<{trig}>"
    return f"(<{trig}>){plain_number(weight)}"


def needs_space(left: Piece, right: Piece) -> bool:
    """``<trig>`` is found anywhere; only a weighted ``(<trig>)0.8`` must not run into a
    digit, ``.``, ``+`` or ``-`` that would read as more of its weight."""
    return left.weighted and right.text[0] in "0123456789.+-"


#: compel (InvokeAI) has no ``BREAK``: a break cannot be written.
BREAK = False
_SYNTAX_CHARS = re.compile(r"[\\()]")


def escape(text: str) -> str:
    """Literal text in compel's syntax: ``\\``, ``(`` and ``)`` escaped with a
    backslash. compel has no escape for a ``+`` / ``-`` ending a word (read as a weight)
    or for ``<...>`` (read as a trigger)."""
    return _SYNTAX_CHARS.sub(lambda m: "\\" + m.group(0), text)


def attend(text: str, weight: float) -> str:
    """Escaped literal ``text`` with attention ``weight``: compel's ``(text)1.2``."""
    return f"({escape(text)}){plain_number(weight)}"


# --------------------------------------------------------------------------- reading

# compel's tokens as we read them: escapes, a <trigger>, "(", ")" with its weight
# (a number, +'s or -'s), words, spaces.
_COMPEL = re.compile(
    r"\\[()\\]|<[^<>\n]+>|\(|\)(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)|\++|-+)?|[^\\()<\s]+|\s+|[\\<]"
)
_SUFFIX = re.compile(r"(\++|-+)$")
_TRIGGER = re.compile(r"<([a-zA-Z0-9., _-]+)>")
_UNSUPPORTED = re.compile(r"\)\s*\.(and|blend)\s*\(|withLora\(|\.swap\(")


def _factor(suffix: str) -> float:
    if not suffix:
        return 1.0
    if set(suffix) == {"+"}:
        return 1.1 ** len(suffix)
    if set(suffix) == {"-"}:
        return 0.9 ** len(suffix)
    return float(suffix)


def read_prompt(
    prompt: str, *, which: str = "prompt", names: Callable[[str], bool] | None = None
) -> ParsedPrompt:
    """Read an InvokeAI prompt (compel syntax).

    ``word+`` x1.1 per ``+``, ``word-`` x0.9 per ``-``, ``(words)1.3`` x1.3,
    ``(words)++`` x1.21, ``(words)`` groups only (x1); nesting multiplies; ``\\(``
    ``\\)`` are literal. ``<NAME>`` (InvokeAI's trigger pattern, ``<[a-zA-Z0-9., _-]+>``)
    names an embedding. ``names`` is not needed (triggers are bracketed).

    Raises:
        PromptSyntaxError: compel's ``.and()``, ``.blend()``, ``.swap()`` and
            ``withLora()``, which compose does not do.
    """
    from conceptlib.compose.ui.reading import build, refuse

    m = _UNSUPPORTED.search(prompt)
    if m:
        raise refuse(
            prompt,
            m.start(),
            which,
            f"{m.group(0)!r} is compel's conjunction, blend, swap or LoRA syntax; compose "
            "encodes one prompt with embeddings only",
            "keep the words you want, weighted as (words)1.2",
        )
    runs: list[list[Any]] = []
    opens: list[int] = []
    for tok in _COMPEL.findall(prompt):
        if tok.startswith("\\") and len(tok) == 2:
            runs.append([tok[1], 1.0])
        elif tok == "(":
            opens.append(len(runs))
        elif tok.startswith(")") and opens:
            start = opens.pop()
            for run in runs[start:]:
                run[1] *= _factor(tok[1:])
        elif tok.strip("+-") == "" and len(tok) > 0 and runs and not runs[-1][0][-1:].isspace():
            runs[-1][1] *= _factor(tok)
        else:
            suffix = _SUFFIX.search(tok) if not tok.startswith("<") else None
            if suffix and suffix.start() > 0 and tok[suffix.start() - 1].isalnum():
                runs.append([tok[: suffix.start()], _factor(suffix.group(1))])
            else:
                runs.append([tok, 1.0])
    merged: list[tuple[str, float]] = []
    for text, w in runs:
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + text, w)
        else:
            merged.append((text, w))

    def finder(text: str) -> list[tuple[int, int, str]]:
        return [(t.start(), t.end(), t.group(1).strip()) for t in _TRIGGER.finditer(text)]

    return build(prompt, merged, finder, which=which, syntax="invokeai")

"""AUTOMATIC1111's stable-diffusion-webui (and Forge): prompts, triggers and infotext.

Rules read off its public source (v1.10: ``modules/textual_inversion/textual_inversion.py``,
``modules/prompt_parser.py``, ``modules/infotext_utils.py``):

* **Trigger**: an embedding file's stem (``cat-toy.safetensors`` -> ``cat-toy``). A1111
  tokenizes the stem with CLIP's tokenizer and looks for that run of token ids in the
  prompt's token ids, so the name is written bare, and it must not run into the text
  around it (``<a><b>`` must not become ``ab``: a space is put between them).
* ``<name:...>`` is an *extra network* (LoRA, hypernetwork), not an embedding: an
  embedding never appears in angle brackets. ``(text:1.3)`` sets attention;
  ``\\(`` escapes a parenthesis. The words ``AND`` (composable diffusion) and
  ``BREAK`` (a new 75-token chunk) are keywords when upper case and standing alone,
  also between hyphens, so a name holding one (``style-AND-x``) is written with that
  word in lower case: CLIP lower-cases the prompt, so it is still the same trigger.
* **SD 1.x embedding on SDXL**: skipped when the embeddings are loaded ("shape 768 !=
  expected 2048"); its name is then read as plain words.
* **Infotext** (the ``parameters`` text chunk of a PNG, read by PNG Info, "Send to
  txt2img", Civitai): see :func:`infotext` and :func:`parse_infotext`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from conceptlib.compose.ui.syntax import Piece, clip_runs_join, plain_number

if TYPE_CHECKING:
    from conceptlib.compose.prompt import ParsedPrompt

LABEL = "A1111"
#: What A1111 does with an SD 1.x embedding in a prompt for an SDXL model.
SD1_ON_SDXL = "skip"
SD1_ON_SDXL_HOW = (
    "A1111 skips it when it loads embeddings (shape 768 != expected 2048) and reads its "
    "name as plain words"
)
WEIGHTS = "as attention on the token (A1111 (name:w))"

_KEYWORD = re.compile(r"\b(?:AND|BREAK)\b")


def trigger(name: str, token: str) -> str:
    """The word A1111 matches for an entry: its name (the file stem), with a standalone
    ``AND`` / ``BREAK`` lower-cased. Never refuses: every valid catalog name can be
    written (names hold none of A1111's syntax characters)."""
    return _KEYWORD.sub(lambda m: m.group(0).lower(), name)


def file_stem(name: str, token: str) -> str:
    """The embedding file's stem: the trigger, as A1111 names embeddings by file stem."""
    return trigger(name, token)


def reference(trig: str, weight: float | None) -> str:
    """``trig`` bare, or ``(trig:0.8)`` with a weight other than 1."""
    if weight is None or weight == 1.0:
        return trig
    return f"({trig}:{plain_number(weight)})"


def needs_space(left: Piece, right: Piece) -> bool:
    """Whether a space must separate two pieces so that A1111 still finds the trigger.

    A bare name must not join the text next to it into one CLIP run. A weighted
    ``(name:w)`` is its own chunk, except that A1111 merges neighbouring chunks of
    equal weight, so ``)(`` gets a space too.
    """
    if left.text.endswith(")") and right.text.startswith("("):
        return left.weighted or right.weighted
    bare_left = left.ref and not left.weighted
    bare_right = right.ref and not right.weighted
    if not (bare_left or bare_right):
        return False
    # A1111's own syntax characters are not tokenized: "(", ")" and the rest never join.
    if left.text[-1] in "()[]" or right.text[0] in "()[]":
        return False
    if clip_runs_join(left.text, right.text):
        return True
    # Readers that find a bare name as a word (ours, PNG-info tools) need it to stand
    # apart; a space between CLIP runs that do not join changes no token.
    return not (left.text[-1] in _WORD_ENDS or right.text[0] in _WORD_ENDS)


#: Characters that end a word for the readers of bare names (see :func:`read_prompt`).
_WORD_ENDS = ",;|"


#: A1111 reads ``BREAK`` (upper case, standing alone) as the start of a new chunk.
BREAK = True
_SYNTAX_CHARS = re.compile(r"[\\()\[\]]")
_AND_WORD = re.compile(r"\bAND\b")


def escape(text: str) -> str:
    """Literal text in A1111's syntax: ``\\``, ``(``, ``)``, ``[``, ``]`` escaped with a
    backslash, and a standalone ``AND`` lower-cased (A1111 would read it as composable
    diffusion; CLIP lower-cases the prompt, so the tokens are the same). A ``<`` cannot
    be escaped in A1111 (``<x:y>`` is an extra network)."""
    return _AND_WORD.sub("and", _SYNTAX_CHARS.sub(lambda m: "\\" + m.group(0), text))


def attend(text: str, weight: float) -> str:
    """Escaped literal ``text`` with attention ``weight``: ``(text:1.2)``."""
    return f"({escape(text)}:{plain_number(weight)})"


# --------------------------------------------------------------------------- infotext


def quote(value: str) -> str:
    """An infotext value, JSON-quoted when it holds ``,``, ``:``, a newline or ``"``.

    A1111 quotes values holding ``,``, ``:`` or a newline and unquotes any value that
    starts and ends with ``"`` with ``json.loads``; a ``"`` is quoted too so that a
    value ending in one is never misread as quoted.
    """
    if not any(c in value for c in ',:\n"'):
        return value
    return json.dumps(value, ensure_ascii=False)


def infotext(prompt: str, negative: str | None, params: Sequence[tuple[str, Any]]) -> str:
    """A1111 ``parameters`` text: the prompt, ``Negative prompt: ...``, then ``Key: value, ...``.

    ``prompt`` and ``negative`` must already be in A1111's syntax (see
    :func:`conceptlib.compose.formats.render_prompts`); parameters whose value is
    ``None`` are left out. Keys are A1111's (``Steps``, ``Sampler``, ``CFG scale``,
    ``Seed``, ``Size``, ``Model hash``, ``Model``, ``TI hashes``, ``Version``) or our own
    (a letter, then letters, digits, spaces, ``-`` or ``/``: the key pattern A1111 reads;
    it keeps keys it does not know).
    """
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {quote(str(v))}" for k, v in params if v is not None))
    return "\n".join(lines)


_PARAM = re.compile(r'\s*([\w ()\-/.]+):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, Any]:
    """Read A1111 infotext back: ``{"prompt", "negative", "params": {key: value}}``.

    The last line holds the parameters when it has a ``Steps:`` field; lines before
    it are the prompt until one starting with ``Negative prompt:``. Quoted values are
    unquoted. The prompt is returned as written (A1111's syntax for what conceptlib
    writes; the ``conceptlib`` text chunk holds the prompt in conceptlib's syntax).
    """
    lines = text.split("\n")
    params_line = lines[-1] if len(lines) > 1 else ""
    if not _PARAM.match(params_line) or "Steps:" not in params_line:
        params_line = ""
        body = lines
    else:
        body = lines[:-1]
    prompt_lines: list[str] = []
    neg_lines: list[str] | None = None
    for line in body:
        if line.startswith("Negative prompt:"):
            neg_lines = [line[len("Negative prompt:") :].strip()]
        elif neg_lines is not None:
            neg_lines.append(line)
        else:
            prompt_lines.append(line)
    params: dict[str, str] = {}
    for m in _PARAM.finditer(params_line):
        key, value = m.group(1).strip(), m.group(2).strip()
        if value.startswith('"'):
            try:  # A1111 unquotes with json.loads; infotext from others may not be JSON
                value = json.loads(value, strict=False)
            except ValueError:
                value = value.strip('"')
            if not isinstance(value, str):
                value = str(value)
        if key:
            params[key] = value
    return {
        "prompt": "\n".join(prompt_lines),
        "negative": "\n".join(neg_lines) if neg_lines is not None else None,
        "params": params,
    }


# --------------------------------------------------------------------------- reading

# Syntaxes A1111 has that compose does not: extra networks, prompt editing and
# alternation, composable diffusion.
_EXTRA_NETWORK = re.compile(r"<\s*([A-Za-z_][\w-]*)\s*:[^<>]*>")
_SCHEDULE = re.compile(r"(?<!\\)\[(?:[^\[\]\\]|\\.)*?(?<!\\)([:|])(?:[^\[\]\\]|\\.)*?(?<!\\)\]")
_AND = re.compile(r"\bAND\b")
# A word that may be an embedding's name: A1111 matches an embedding's tokens anywhere
# in the prompt; we match whole words (names hold no spaces or commas).
_WORD = re.compile(r"[^\s,;|]+")
_TRAILING = ".!?:;'\""


def read_prompt(
    prompt: str, *, which: str = "prompt", names: Callable[[str], bool] | None = None
) -> ParsedPrompt:
    """Read an A1111 / Forge / SD.Next prompt (``modules/prompt_parser.py``).

    ``(x)`` weighs x1.1, ``((x))`` x1.21, ``(x:1.3)`` x1.3, ``[x]`` /1.1; ``\\(`` and
    ``\\)`` are literal; ``BREAK`` starts a new chunk. An embedding is named bare, by
    its file name: every word for which ``names(word)`` is true (a trailing ``.`` ``!``
    ``?`` ``:`` ``;`` or quote aside) becomes a reference, weighted by the attention
    around it. Attention is applied the A1111 way when encoding
    (:mod:`conceptlib.compose.encode`).

    Raises:
        PromptSyntaxError: ``<lora:...>`` and other extra networks, ``[a:b:0.5]``
            prompt editing, ``[a|b]`` alternation, ``AND``, or a weight that is not a
            number (``(x:1.2.3)``); the message gives the column.
    """
    from conceptlib.compose.ui.reading import build, refuse
    from conceptlib.compose.ui.syntax import attention_runs

    m = _EXTRA_NETWORK.search(prompt)
    if m:
        raise refuse(
            prompt,
            m.start(),
            which,
            f"{_short(m.group(0))} is an A1111 extra network ({m.group(1)}: a LoRA, "
            "LyCORIS or hypernetwork), not an embedding; compose applies embeddings only",
            "remove it from the prompt (apply the LoRA in A1111 itself)",
        )
    m = _SCHEDULE.search(_mask_groups(prompt))
    if m:
        kind = "prompt editing [from:to:when]" if m.group(1) == ":" else "alternation [a|b]"
        raise refuse(
            prompt,
            m.start(),
            which,
            f"{_short(m.group(0))} is A1111 {kind}, which changes the prompt during "
            "sampling; compose encodes one prompt for all steps",
            "keep the words you want; write \\[ for a literal '['",
        )
    m = _AND.search(prompt)
    if m:
        raise refuse(
            prompt,
            m.start(),
            which,
            "AND is A1111 composable diffusion (several prompts at once); compose "
            "encodes one prompt",
            "write 'and' in lower case for the word, or compose the prompts separately",
        )
    try:
        runs = attention_runs(prompt)
    except ValueError:
        bad = re.search(r":\s*[+-]?[.\d]+\s*\)", prompt)
        raise refuse(
            prompt,
            bad.start() if bad else 0,
            which,
            f"the weight in {_short(bad.group(0) if bad else prompt)} is not a number",
            "weights are decimal numbers such as 0.8 or 1.2: (word:1.2)",
        ) from None

    def finder(text: str) -> list[tuple[int, int, str]]:
        spans = []
        if names is None:
            return spans
        for w in _WORD.finditer(text):
            word = w.group(0)
            for cand in (word, word.rstrip(_TRAILING)):
                if cand and names(cand):
                    spans.append((w.start(), w.start() + len(cand), cand))
                    break
        return spans

    return build(prompt, runs, finder, which=which, syntax="a1111")


def _mask_groups(prompt: str) -> str:
    """``prompt`` with every ``(...)`` group blanked (same length), so that the colon of
    ``[(x:1.5)]`` is not read as prompt editing."""
    masked, prev = prompt, None
    while masked != prev:
        prev = masked
        masked = re.sub(
            r"(?<!\\)\((?:[^()]|\\[()])*(?<!\\)\)", lambda g: " " * len(g.group(0)), masked
        )
    return masked


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[: n - 3] + "...")

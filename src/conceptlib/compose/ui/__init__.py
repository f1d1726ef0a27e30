"""Each UI's prompt syntax, one module per UI: A1111 (:mod:`.a1111`, with its infotext),
ComfyUI (:mod:`.comfyui`), InvokeAI (:mod:`.invokeai`) and diffusers (:mod:`.diffusers`).

Every module has the same small surface, read off that UI's public source:

* ``LABEL``: the UI's name in messages;
* ``trigger(name, token) -> str``: what the UI matches for a catalog entry (mapped
  where the UI cannot match the name as it is; ``UntriggerableName`` where it cannot
  be mapped);
* ``file_stem(name, token) -> str``: the file (or folder) name written for the UI,
  which for the UIs that trigger by file name is the trigger itself;
* ``reference(trigger, weight) -> str``: one reference in the UI's syntax;
* ``needs_space(left, right) -> bool``: where a reference must be kept apart from
  the text next to it (see :mod:`.syntax`);
* ``SD1_ON_SDXL`` (``"skip"`` or ``"first encoder"``) and ``SD1_ON_SDXL_HOW``: what the
  UI does with an SD 1.x embedding in a prompt for an SDXL model;
* ``WEIGHTS``: how the UI applies a weight;
* ``escape(text)``, ``attend(text, weight)`` and ``BREAK``: literal text, text with
  attention (``None`` where the UI has none) and whether ``BREAK`` can be written, for
  a prompt read in a UI's syntax and written in another's;
* ``read_prompt(prompt, which=, names=)`` (not diffusers): the UI's prompt read into a
  :class:`~conceptlib.compose.prompt.ParsedPrompt` (:func:`read_prompt` here picks the
  reader, :func:`detect_syntax` guesses the syntax).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

from conceptlib.compose.ui import a1111, comfyui, diffusers, invokeai
from conceptlib.errors import UsageError

if TYPE_CHECKING:
    from conceptlib.compose.prompt import ParsedPrompt

UI_FORMATS = ("a1111", "comfyui", "invokeai", "diffusers")
_MODULES: dict[str, ModuleType] = {
    "a1111": a1111,
    "comfyui": comfyui,
    "invokeai": invokeai,
    "diffusers": diffusers,
}


def ui_module(fmt: str) -> ModuleType:
    """The module of UI ``fmt`` (one of :data:`UI_FORMATS`).

    Raises:
        UsageError: an unknown UI.
    """
    try:
        return _MODULES[fmt]
    except (KeyError, TypeError):
        raise UsageError(
            f"unknown prompt format {fmt!r}; expected one of {', '.join(UI_FORMATS)}"
        ) from None


# --------------------------------------------------------------------------- reading

#: The syntaxes compose reads (``auto`` picks one per prompt with :func:`detect_syntax`).
SYNTAXES = ("conceptlib", "a1111", "comfyui", "invokeai")

_COMFY_MARK = re.compile(r"(?:^|[\s(,])embedding:\S")
_COMPEL_MARK = re.compile(
    r"\)(?:[+-]?\d|\.\d|\++|-+)|\w\++(?=[\s,)]|$)|\w--+(?=[\s,)]|$)|\)\s*\.(?:and|blend)\("
)
_EXTRA_MARK = re.compile(r"<\s*(?:lora|lyco|hypernet)\s*:", re.IGNORECASE)
_OURS_MARK = re.compile(r"\\[<>]|<[^\s<>]")


def detect_syntax(prompt: str) -> str:
    """The syntax ``prompt`` is most likely written in, checked in this order:
    ``embedding:NAME`` -> ``comfyui``; compel weights (``)1.3``, ``)++``, ``word++``,
    ``word--``) -> ``invokeai``; ``<lora:...>`` -> ``a1111``; ``<name>``, ``<name:w>``
    (or any ``<`` before a non-space, so a broken reference is reported) or ``\\<`` ->
    ``conceptlib``; anything else -> ``a1111`` (bare names, ``(word:1.2)``:
    what Civitai pages and A1111 infotext hold)."""
    if _COMFY_MARK.search(prompt):
        return "comfyui"
    if _COMPEL_MARK.search(prompt):
        return "invokeai"
    if _EXTRA_MARK.search(prompt):
        return "a1111"
    if _OURS_MARK.search(prompt):
        return "conceptlib"
    return "a1111"


def read_prompt(
    prompt: str,
    syntax: str = "auto",
    *,
    which: str = "prompt",
    names: Callable[[str], bool] | None = None,
) -> ParsedPrompt:
    """``prompt`` read in ``syntax`` (one of :data:`SYNTAXES`, or ``auto``).

    ``names(word)`` says whether a bare word is an embedding's name (A1111 triggers
    embeddings by file name without brackets); without it no bare word is one.

    Raises:
        PromptSyntaxError, InvalidWeight: a prompt that syntax cannot read (with the column).
        UsageError: an unknown syntax.
    """
    from conceptlib.compose.prompt import parse_prompt

    if syntax == "auto":
        syntax = detect_syntax(prompt)
    if syntax == "conceptlib":
        return parse_prompt(prompt, which=which)
    if syntax not in SYNTAXES:
        raise UsageError(
            f"unknown prompt syntax {syntax!r}; expected auto or one of {', '.join(SYNTAXES)}"
        )
    return _MODULES[syntax].read_prompt(prompt, which=which, names=names)

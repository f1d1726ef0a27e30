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
* ``WEIGHTS``: how the UI applies a weight.
"""

from __future__ import annotations

from types import ModuleType

from conceptlib.compose.ui import a1111, comfyui, diffusers, invokeai
from conceptlib.errors import UsageError

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

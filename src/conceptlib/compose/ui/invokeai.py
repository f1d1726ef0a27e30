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

from conceptlib.compose.ui.syntax import Piece, plain_number
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

"""Validation prompts: what a run renders at each sample point and kept step.

By default a run renders its first two templates (seed 1000, guidance 7.5, no
negative prompt). ``--validation-prompt`` (repeatable) replaces them with the user's
own prompts, rendered with ``--validation-negative``, ``--validation-seed`` (image
*i* gets seed + *i*), ``--validation-guidance`` and ``--sample-steps`` (alias
``--validation-steps``).

The concept is written ``{}`` in a prompt, as in a templates file, or as its name
(the word ``compose`` and every UI use as its trigger): ``"a photo of cat-toy on a
beach"`` and ``"a photo of {} on a beach"`` are the same prompt. A prompt that holds
neither never shows the learned vectors: it is rendered with a warning. Prompts are
checked before anything loads: not empty, printable, at most
:data:`MAX_PROMPT_CHARS` characters, no braces other than ``{}``, and (once the base
model's tokenizers are known) at most 75 tokens with the placeholder expanded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conceptlib.errors import UsageError

#: Rendered when no ``--validation-prompt`` is given: this many templates.
DEFAULT_TEMPLATE_COUNT = 2
DEFAULT_SEED = 1000
DEFAULT_GUIDANCE = 7.5
MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 1000
#: Guidance scales accepted (0 turns guidance off in diffusers' pipelines).
MAX_GUIDANCE = 50.0


@dataclass(frozen=True)
class Validation:
    """What to render at each sample point (``prompts`` hold ``{}`` for the concept;
    ``None``: the run's first templates)."""

    prompts: tuple[str, ...] | None = None
    negative: str = ""
    seed: int = DEFAULT_SEED
    guidance: float = DEFAULT_GUIDANCE

    def prompts_for(self, templates: Sequence[str]) -> list[str]:
        return list(self.prompts) if self.prompts else list(templates[:DEFAULT_TEMPLATE_COUNT])

    def config(self) -> dict[str, Any]:
        """The run-config keys (``validation_prompts`` is ``None`` for the templates)."""
        return {
            "validation_prompts": list(self.prompts) if self.prompts else None,
            "validation_negative": self.negative,
            "validation_seed": self.seed,
            "validation_guidance": self.guidance,
        }


def _name_pattern(name: str) -> re.Pattern[str]:
    # The name as a whole word: not inside a longer name (cat-toy in cat-toy-2).
    return re.compile(r"(?<![\w\-@])" + re.escape(name) + r"(?![\w\-@])", re.IGNORECASE)


def _check_text(text: str, what: str) -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise UsageError(
            f"{what} is {len(text)} characters long; expected at most {MAX_PROMPT_CHARS}"
        )
    bad = next((c for c in text if not c.isprintable()), None)
    if bad is not None:
        raise UsageError(
            f"{what} holds the control character {ascii(bad)}; expected printable text",
            hint="write the prompt on one line",
        )


def check_validation(
    prompts: Sequence[str],
    *,
    name: str,
    negative: str | None = None,
    seed: int = DEFAULT_SEED,
    guidance: float = DEFAULT_GUIDANCE,
) -> tuple[Validation, list[str]]:
    """Check the validation options; return them and the warnings to log.

    Raises:
        UsageError: (exit 2) an empty or unprintable prompt, one over
            :data:`MAX_PROMPT_CHARS` characters or with braces other than ``{}``, more
            than :data:`MAX_PROMPTS` prompts, a negative prompt without prompts, a
            guidance scale outside 0 to :data:`MAX_GUIDANCE`, a seed below 0.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) > MAX_PROMPTS:
        raise UsageError(
            f"{len(prompts)} --validation-prompt given; expected at most {MAX_PROMPTS}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63 - MAX_PROMPTS:
        raise UsageError(f"--validation-seed {seed!r}: expected a whole number of at least 0")
    if not (isinstance(guidance, (int, float)) and math.isfinite(guidance)) or not (
        0 <= guidance <= MAX_GUIDANCE
    ):
        raise UsageError(f"--validation-guidance {guidance!r}: expected 0 to {MAX_GUIDANCE:g}")
    warnings: list[str] = []
    out = []
    pattern = _name_pattern(name)
    for i, prompt in enumerate(prompts, 1):
        what = f"--validation-prompt {i}"
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(
                f"{what} is empty", hint="e.g. --validation-prompt 'a photo of {} on a beach'"
            )
        _check_text(prompt, what)
        text = pattern.sub("{}", prompt.strip())
        if text.replace("{}", "").count("{") or text.replace("{}", "").count("}"):
            raise UsageError(
                f"{what} {prompt!r} holds braces other than {{}}; expected {{}} (or {name!r}) "
                "where the concept goes"
            )
        if "{}" not in text:
            warnings.append(
                f"warning: {what} {prompt!r} does not use the concept ({name!r} or {{}}): "
                "its images never show what the run learns"
            )
        out.append(text)
    negative = negative or ""
    if negative:
        _check_text(negative, "--validation-negative")
        if "{" in negative or "}" in negative:
            raise UsageError("--validation-negative holds braces; expected plain text")
    return (
        Validation(tuple(out) or None, negative, int(seed), float(guidance)),
        warnings,
    )


def check_token_counts(
    validation: Validation, tokenizers: Sequence[tuple[str, Any]], vectors: int
) -> None:
    """Refuse a validation prompt the text encoder would cut: at most
    ``model_max_length - 2`` tokens (75 for CLIP) with each ``{}`` expanded to
    ``vectors`` placeholder tokens.

    Raises:
        UsageError: (exit 2) naming the prompt, its token count and the limit.
    """
    texts = list(validation.prompts or ())
    if validation.negative:
        texts.append(validation.negative)
    for slot, tok in tokenizers:
        limit = min(int(getattr(tok, "model_max_length", 77) or 77), 77) - 2
        for i, text in enumerate(texts, 1):
            plain = " ".join(text.split("{}"))
            count = len(tok(plain, add_special_tokens=False).input_ids)
            count += vectors * text.count("{}")
            if count > limit:
                what = (
                    "--validation-negative"
                    if validation.negative and i == len(texts)
                    else f"--validation-prompt {i}"
                )
                raise UsageError(
                    f"{what} is {count} tokens long in the {slot} tokenizer (the concept "
                    f"counting {vectors}); at most {limit} fit, the rest would be cut",
                    hint="shorten the prompt",
                )


def prompt_text(prompt: str) -> str:
    """The prompt CLIP-T compares an image with: the prompt without the concept
    (``"a photo of {} on a beach"`` -> ``"a photo of on a beach"``), as in the
    textual-inversion paper (Gal et al. 2022, section 5)."""
    return " ".join(prompt.replace("{}", " ").split())


def column_labels(prompts: Sequence[str], name: str) -> list[str]:
    """Grid column headers: each prompt with the concept written as its name."""
    return [p.replace("{}", name) for p in prompts]

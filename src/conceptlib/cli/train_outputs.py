"""``train`` options for what a run starts from and what it renders and logs:
``--init-from``, the validation prompts, ``--clip-model``, ``--no-tensorboard``.

Kept out of :mod:`conceptlib.cli.train` (its options are many already); the
command takes these as ``**outputs`` and passes :func:`train_kwargs` to ``train()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

# Keep in step with conceptlib.trainer.validation (not imported here: it would slow --help).
_SEED, _GUIDANCE = 1000, 7.5

_OPTIONS = [
    click.option(
        "--init-from",
        metavar="NAME",
        help="Start from a registered entry's vectors instead of --init words: continue "
        "training that concept (its vector count is taken; its family must be the base "
        "model's). The new entry lists it among its parents; under the same --name it "
        "becomes the next version (the entry is kept as NAME@vN). "
        "Example: --init-from cat-toy --name cat-toy-beach.",
    ),
    click.option(
        "--validation-prompt",
        "validation_prompts",
        multiple=True,
        help="A prompt rendered at each sample point and kept step instead of the first two "
        "templates (repeatable, at most 16); write the concept as {} or as its --name. "
        "Example: --validation-prompt 'a photo of {} on a beach'.",
    ),
    click.option(
        "--validation-negative",
        help="Negative prompt of the validation images. Example: --validation-negative blurry.",
    ),
    click.option(
        "--validation-seed",
        type=click.IntRange(min=0),
        default=_SEED,
        show_default=True,
        help="Seed of the validation images (prompt i gets seed + i).",
    ),
    click.option(
        "--validation-guidance",
        type=click.FloatRange(0, 50),
        default=_GUIDANCE,
        show_default=True,
        help="Classifier-free guidance scale of the validation images.",
    ),
    click.option(
        "--sample-steps",
        "--validation-steps",
        "sample_steps",
        type=click.IntRange(min=1),
        help="Denoising steps of the validation images (default 30; 20 on a built-in "
        "tiny model). Example: --validation-steps 25.",
    ),
    click.option(
        "--clip-model",
        metavar="PATH_OR_REPO_ID",
        help="Score the validation images with this CLIP model (a local folder, or a repo "
        "id in the local Hugging Face cache; nothing is downloaded): CLIP-I (similarity to "
        "the training images) and CLIP-T (to the prompt without the concept), stored with "
        "the run. Example: --clip-model openai/clip-vit-large-patch14.",
    ),
    click.option(
        "--no-tensorboard",
        is_flag=True,
        help="Do not write TensorBoard event files (default: RUN/tensorboard/, open with "
        "tensorboard --logdir RUN/tensorboard).",
    ),
]


def output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options above to a command (they arrive in its ``**outputs``)."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def train_kwargs(outputs: dict[str, Any]) -> dict[str, Any]:
    """The ``train()`` arguments of the options above."""
    out = dict(outputs)
    out["tensorboard"] = not out.pop("no_tensorboard", False)
    out["validation_prompts"] = list(out.get("validation_prompts") or ())
    return out

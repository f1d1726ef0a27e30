"""``train`` options for what the images are: per-image captions and aspect-ratio
buckets (``--captions``, ``--caption-extension``, ``--buckets`` and its sizes).

Kept out of :mod:`conceptlib.cli.train` (its options are many already). Each option's
parameter has the name of its ``train()`` argument: the command receives them in its
``**outputs`` and passes them on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

_OPTIONS = [
    click.option(
        "--captions",
        type=click.Choice(["off", "txt", "filename", "auto"]),
        default="off",
        show_default=True,
        help="Per-image captions: txt = a caption file beside each image (photo.png -> "
        "photo.txt, as kohya and OneTrainer read them); filename = the words of the file "
        "name (A1111's [filewords]); auto = the file where there is one, else the name. "
        "A caption naming the concept (its --name or [name]) is its image's prompt; "
        "otherwise it fills [filewords] in the templates (default '{}, [filewords]'). "
        "Example: --captions txt.",
    ),
    click.option(
        "--caption-extension",
        default=".txt",
        show_default=True,
        help="Suffix of the caption files. Example: --caption-extension .caption.",
    ),
    click.option(
        "--buckets",
        is_flag=True,
        help="Aspect-ratio buckets (kohya's --enable_bucket): each image is resized to the "
        "bucket nearest its shape (area about --resolution squared) instead of a centre-"
        "cropped square; every batch comes from one bucket. Example: --buckets.",
    ),
    click.option(
        "--bucket-reso-steps",
        type=int,
        help="Bucket sides are multiples of this (default 64; 8 below 256 px). "
        "Example: --buckets --bucket-reso-steps 32.",
    ),
    click.option(
        "--min-bucket-reso",
        type=int,
        help="Shortest bucket side (default half the resolution). Example: --min-bucket-reso 256.",
    ),
    click.option(
        "--max-bucket-reso",
        type=int,
        help="Longest bucket side (default twice the resolution). Example: --max-bucket-reso 1024.",
    ),
    click.option(
        "--bucket-no-upscale",
        is_flag=True,
        help="Never enlarge an image: its bucket is its own size (shrunk to the area when "
        "larger) rounded down to the step. Example: --buckets --bucket-no-upscale.",
    ),
]


def data_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options above to a command (they arrive in its ``**outputs``)."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f

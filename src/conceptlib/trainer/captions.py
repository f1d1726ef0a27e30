"""Per-image captions: what each training image shows besides the concept.

A caption is read from a text file beside the image (``photo.png`` -> ``photo.txt``,
kohya sd-scripts' and OneTrainer's convention; ``--caption-extension`` picks another
suffix such as ``.caption``) or made from the image's file name (A1111's "filewords":
the stem with leading numbers and dashes removed, ``"01-a toy on a table.png"`` ->
``"a toy on a table"``). ``--captions`` chooses:

* ``off`` (default): no captions; the templates alone make the prompts;
* ``txt``: every image must have a caption file;
* ``filename``: captions from the file names;
* ``auto``: the caption file where there is one, else the file name.

How the placeholder enters the prompt: a caption that names the concept (its trigger
name, e.g. ``cat-toy``, or A1111's ``[name]``) is the whole prompt of its image, with
the trigger replaced by the placeholder token(s) (kohya's way: the caption says where
the concept is). Otherwise each template's ``[filewords]`` is replaced by the caption
(A1111's way); a captioned run without ``--templates`` uses :data:`CAPTIONED_TEMPLATE`,
``"{}, [filewords]"``. Templates may write the placeholder as ``{}`` or ``[name]``.

Caption files are untrusted text: read with a size cap (:data:`MAX_CAPTION_BYTES`),
UTF-8 (a byte-order mark is dropped; UTF-16 with its mark is decoded), refused when
binary (a NUL byte), not text, or holding control or bidirectional-override
characters; runs of whitespace, newlines included, become one space. Errors name the
file and never echo its content.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptlib.errors import ImageError, UsageError

CAPTION_MODES = ("off", "txt", "filename", "auto")
DEFAULT_CAPTION_EXTENSION = ".txt"
#: Largest caption file read: far more than the 77-token prompt window holds.
MAX_CAPTION_BYTES = 16 * 1024
#: The template of a captioned run without ``--templates``.
CAPTIONED_TEMPLATE = "{}, [filewords]"
FILEWORDS = "[filewords]"
NAME_FIELD = "[name]"
#: CLIP's prompt window, start and end tokens included.
PROMPT_TOKENS = 77
#: A1111's filename clean-up: numbers and dashes at the start of the stem.
_LEADING_NUMBERS = re.compile(r"^[-\d]+\s*")
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
_EXTENSION = re.compile(r"^\.[A-Za-z0-9_-]{1,16}$")


@dataclass
class Captions:
    """One caption per training image, in the images' order.

    Attributes:
        texts: the cleaned caption of each image ("" for an empty caption file).
        sources: where each came from: the caption file's path, or ``"filename"``.
        warnings: things worth telling the user (empty captions).
    """

    texts: list[str]
    sources: list[str]
    warnings: list[str] = field(default_factory=list)


def check_caption_options(mode: str, extension: str) -> None:
    """Refuse an unknown ``--captions`` mode or a malformed ``--caption-extension``.

    Raises:
        UsageError: (exit 2) before anything is read or loaded.
    """
    from conceptlib.trainer.images import IMAGE_SUFFIXES

    if mode not in CAPTION_MODES:
        raise UsageError(f"--captions {mode!r}: expected one of {', '.join(CAPTION_MODES)}")
    if not _EXTENSION.match(extension) or extension.lower() in IMAGE_SUFFIXES:
        raise UsageError(
            f"--caption-extension {extension!r}: expected a file suffix such as .txt or .caption "
            "(a dot, then up to 16 letters or digits; not an image suffix)"
        )


def caption_templates(templates: list[str], mode: str, *, given: bool) -> list[str]:
    """The templates a run with ``--captions mode`` uses.

    A captioned run without ``--templates`` (``given`` false) uses
    :data:`CAPTIONED_TEMPLATE`. A template holding ``[filewords]`` in a run without
    captions is refused (it would be trained as the literal text).

    Raises:
        UsageError: (exit 2) ``[filewords]`` with ``--captions off``.
    """
    if mode == "off":
        for number, line in enumerate(templates, 1):
            if FILEWORDS in line:
                raise UsageError(
                    f"template {number} uses [filewords] but --captions is off: there is no "
                    "caption to put there",
                    hint="pass --captions txt (caption files beside the images), filename or auto",
                )
        return templates
    return templates if given else [CAPTIONED_TEMPLATE]


def clean_caption(data: bytes, *, source: str) -> str:
    """The caption text of ``data`` (a caption file's bytes), cleaned.

    Raises:
        ImageError: (exit 3) binary data, not UTF-8 (or UTF-16 with a byte-order
            mark), or control / bidirectional-override characters; the message names
            ``source`` and the offending code point, never the text.
    """
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
        if b"\x00" in data:
            raise ImageError(f"{source}: a binary file; expected a UTF-8 text caption", path=source)
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise ImageError(f"{source}: not UTF-8 text; expected a text caption", path=source) from exc
    text = " ".join(text.lstrip("\ufeff").split())
    for ch in text:
        if ch in _BIDI or unicodedata.category(ch) == "Cc":
            raise ImageError(
                f"{source}: holds the control character U+{ord(ch):04X}; expected plain text",
                path=source,
            )
    return text


def read_caption_file(path: str | os.PathLike[str]) -> str:
    """Read and clean one caption file, at most :data:`MAX_CAPTION_BYTES`.

    Raises:
        ImageError: (exit 3) not a regular file, unreadable, too large, or not text.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: not a regular file; expected a text caption", path=str(p))
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_CAPTION_BYTES + 1)
    except OSError as exc:
        raise ImageError(f"{p}: cannot read the caption ({exc.strerror})", path=str(p)) from exc
    if len(data) > MAX_CAPTION_BYTES:
        raise ImageError(
            f"{p}: caption file is over {MAX_CAPTION_BYTES // 1024} KiB; expected a short text "
            f"(a prompt holds {PROMPT_TOKENS} tokens)",
            path=str(p),
        )
    return clean_caption(data, source=str(p))


def filename_words(path: str | os.PathLike[str]) -> str:
    """A1111's caption from a file name: the stem without leading numbers and dashes."""
    stem = Path(path).stem
    text = _LEADING_NUMBERS.sub("", stem)
    return clean_caption(text.encode("utf-8", "surrogateescape"), source=str(path))


def caption_path(image: Path, extension: str) -> Path:
    """``photo.png`` -> ``photo.txt`` (the caption file beside an image)."""
    return image.with_suffix(extension)


def load_captions(
    paths: Sequence[Path], mode: str, extension: str = DEFAULT_CAPTION_EXTENSION
) -> Captions | None:
    """The caption of every image under ``mode`` (``None`` for ``off``).

    Raises:
        ImageError: (exit 3) with ``txt``, images without a caption file (the first
            few are named); any caption file that :func:`read_caption_file` refuses.
    """
    if mode == "off":
        return None
    texts, sources = [], []
    missing = []
    for image in paths:
        side = caption_path(Path(image), extension)
        if mode in ("txt", "auto") and side.exists():
            texts.append(read_caption_file(side))
            sources.append(str(side))
        elif mode == "txt":
            missing.append(image)
        else:
            texts.append(filename_words(image))
            sources.append("filename")
    if missing:
        shown = ", ".join(str(caption_path(Path(m), extension)) for m in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ImageError(
            f"{len(missing)} of {len(paths)} images have no caption file ({shown}{more})",
            hint="write one beside each image, or pass --captions auto to caption the others "
            "from their file names",
            path=str(missing[0]),
        )
    notes = []
    empty = sum(1 for t in texts if not t)
    if empty:
        notes.append(
            f"{empty} image(s) have an empty caption; their prompts are the templates alone"
        )
    return Captions(texts=texts, sources=sources, warnings=notes)


def uncaptioned_note(
    paths: Sequence[Path], extension: str = DEFAULT_CAPTION_EXTENSION
) -> str | None:
    """A note when caption files sit beside the images of a run with ``--captions off``."""
    found = sum(1 for p in paths if caption_path(Path(p), extension).is_file())
    if not found:
        return None
    return (
        f"note: {found} of {len(paths)} images have a {extension} caption file beside them; "
        "they are not used unless you pass --captions txt (or auto)"
    )


def _trigger_pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(?<![\w-])(?:{re.escape(name)}|{re.escape(NAME_FIELD)})(?![\w-])", re.IGNORECASE
    )


def image_templates(templates: Sequence[str], captions: Captions, name: str) -> list[list[str]]:
    """Per image, one format string per template, each with one ``{}`` for the
    placeholder (braces of the caption doubled).

    A caption naming the concept (``name`` or ``[name]``, as a whole word) is its
    image's prompt for every template; otherwise ``[filewords]`` in each template is
    replaced by the caption (an empty caption leaves no dangling comma).

    Raises:
        ImageError: (exit 3) a caption naming the concept more than once.
        UsageError: (exit 2) captions that name no concept and templates without
            ``[filewords]``: the captions would be unused.
    """
    pattern = _trigger_pattern(name)
    out = []
    for text, source in zip(captions.texts, captions.sources, strict=True):
        escaped = text.replace("{", "{{").replace("}", "}}")
        hits = len(pattern.findall(escaped))
        if hits > 1:
            raise ImageError(
                f"the caption of {source} names the concept {hits} times; expected at most once",
                path=source,
            )
        if hits == 1:
            out.append([pattern.sub("{}", escaped)] * len(templates))
            continue
        if not all(FILEWORDS in t for t in templates):
            raise UsageError(
                f"the caption of {source} does not name the concept, and a template has no "
                "[filewords]: the caption would be unused",
                hint=f"put {name!r} (or [name]) in the captions, or use templates with "
                "[filewords], e.g. '{}, [filewords]'",
            )
        out.append([_fill(t, escaped) for t in templates])
    return out


def _fill(template: str, caption: str) -> str:
    filled = template.replace(FILEWORDS, caption)
    if caption:
        return filled
    # "{}, [filewords]" with nothing to put there: "{}", not "{}, "
    filled = re.sub(r"\s*,\s*(?:,\s*)+", ", ", filled)
    return re.sub(r"^[\s,]+|[\s,]+$", "", filled)


def check_prompt_lengths(
    per_image: Sequence[Sequence[str]],
    images: Sequence[str],
    tokenizers: Sequence[tuple[str, Any]],
    vectors: int,
) -> list[str]:
    """Check every captioned prompt against each tokenizer's window.

    Returns:
        A warning when some prompts are longer than the window (their end is cut, as
        A1111 and kohya do); none otherwise.

    Raises:
        UsageError: (exit 2) a prompt whose placeholder would fall outside the window,
            naming the image.
    """
    marker = "\x00"
    cut = 0
    for prompts, source in zip(per_image, images, strict=True):
        for fmt in dict.fromkeys(prompts):
            before, _, after = fmt.format(marker).partition(marker)
            for slot, tok in tokenizers:
                window = min(int(tok.model_max_length), PROMPT_TOKENS) - 2
                head = len(tok(before, add_special_tokens=False).input_ids)
                if head + vectors > window:
                    raise UsageError(
                        f"the prompt of {source} is too long for the {slot} tokenizer: the "
                        f"placeholder would start at token {head + 1} of {window}",
                        hint="shorten the caption, or put the concept earlier in the template",
                    )
                tail = len(tok(after, add_special_tokens=False).input_ids)
                if head + vectors + tail > window:
                    cut += 1
                    break
    if not cut:
        return []
    return [
        f"warning: {cut} captioned prompt(s) are longer than {PROMPT_TOKENS} tokens; their "
        "end is cut"
    ]


def prepare_captions(
    imgs: Any,
    mode: str,
    extension: str,
    templates: Sequence[str],
    *,
    name: str,
    vectors: int,
    tokenizers: Sequence[tuple[str, Any]] | None,
) -> tuple[list[list[str]] | None, list[str]]:
    """Read the captions of ``imgs`` (a :class:`~conceptlib.trainer.images.TrainingImages`,
    whose ``captions`` are set so that its hash counts them) and build the per-image
    templates; with ``tokenizers`` also check the prompts' length.

    Returns:
        The per-image templates (``None`` with ``--captions off``) and the lines to log.
    """
    caps = load_captions(imgs.paths, mode, extension)
    if caps is None:
        note = uncaptioned_note(imgs.paths, extension)
        return None, [note] if note else []
    imgs.captions = caps.texts
    notes = [f"warning: {w}" for w in caps.warnings]
    per_image = image_templates(templates, caps, name)
    if tokenizers:
        where = [str(p) for p in imgs.paths]
        notes += check_prompt_lengths(per_image, where, tokenizers, vectors)
    return per_image, notes

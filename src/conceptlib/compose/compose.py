"""Compose: generate images from a prompt that names catalog embeddings.

    >>> from conceptlib.compose.compose import compose
    >>> result = compose("a photo of <cat-toy> in <ukiyoe:0.8> style", negative="<easynegative>",
    ...                  base="./sd15", library=lib, seed=42, out="out.png")
    >>> result.images
    [PosixPath('out.png')]

The order of work is chosen so that every mistake the user can make is reported
before anything expensive happens: parse both prompts, resolve every name, check
every embedding's family against the base model's (read from its config files when
possible), estimate the token budget; only then load the model, count the budget
exactly with its tokenizer, load the embeddings (one resize per encoder, see
:mod:`conceptlib.compose.loader`), generate, and write PNGs whose ``parameters``
chunk is A1111-style infotext (and whose ``conceptlib`` chunk is the same as JSON).

Inside the pipeline each (embedding, weight) pair gets its own lower-case
placeholder token, ``<cat-toy>`` or ``<ukiyoe:0.8>`` (suffixed ``-2`` if that
string is taken), so typed names, trigger tokens and vocabulary words never clash.
"""

from __future__ import annotations

import json
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.compose.budget import BudgetReport, check_chunks, count_budget
from conceptlib.compose.loader import check_compatibility, partial_note
from conceptlib.compose.prompt import EmbeddingRef, ParsedPrompt, format_weight
from conceptlib.compose.resolve import ResolvedPrompt, resolve_prompt
from conceptlib.compose.ui.a1111 import infotext
from conceptlib.compose.ui.a1111 import parse_infotext as parse_infotext
from conceptlib.errors import BaseModelError, ConceptlibError, UnsupportedFamily, UsageError
from conceptlib.schemas.enums import FAMILY_SLOTS, SLOT_WIDTH, WIDTH_SLOT, Family
from conceptlib.schemas.names import name_key

if TYPE_CHECKING:
    from conceptlib.models.base import BaseModel
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

#: Images generated per pipeline call (each with its own seeded generator).
BATCH = 4

#: diffusers scheduler class -> the sampler name A1111 writes.
SAMPLER_NAMES = {
    "DDIMScheduler": "DDIM",
    "PNDMScheduler": "PLMS",
    "LMSDiscreteScheduler": "LMS",
    "EulerDiscreteScheduler": "Euler",
    "EulerAncestralDiscreteScheduler": "Euler a",
    "HeunDiscreteScheduler": "Heun",
    "DPMSolverMultistepScheduler": "DPM++ 2M",
    "DPMSolverSinglestepScheduler": "DPM++ SDE",
    "KDPM2DiscreteScheduler": "DPM2",
    "KDPM2AncestralDiscreteScheduler": "DPM2 a",
    "UniPCMultistepScheduler": "UniPC",
    "LCMScheduler": "LCM",
    "DEISMultistepScheduler": "DEIS",
}


@dataclass
class ComposeEmbedding:
    """One embedding a composition uses (once per distinct weight)."""

    name: str
    token: str
    placeholder: str
    expansion: list[str]
    weight: float
    family: str
    compatibility: str  # "full" | "partial" | "unknown" (no base family known)
    num_vectors: int
    tensor_sha256: str
    file_sha256: str
    used_in: list[str] = field(default_factory=list)
    #: SHA-256 of the file A1111 loads for this entry (:func:`~conceptlib.compose.export.
    #: ui_file_sha256`: the bytes ``export --for-prompt --format a1111`` writes).
    a1111_sha256: str = ""

    @property
    def a1111_hash(self) -> str:
        """A1111's ``TI hashes`` value: the first 12 hex of :attr:`a1111_sha256`."""
        return self.a1111_sha256[:12]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "token": self.token,
            "placeholder": self.placeholder,
            "expansion": self.expansion,
            "weight": self.weight,
            "family": self.family,
            "compatibility": self.compatibility,
            "num_vectors": self.num_vectors,
            "tensor_sha256": self.tensor_sha256,
            "file_sha256": self.file_sha256,
            "a1111_hash": self.a1111_hash,
            "used_in": self.used_in,
        }


@dataclass
class ComposeResult:
    """What :func:`compose` did (or, with ``dry_run``, would do).

    ``a1111_prompt`` / ``a1111_negative`` are the prompts in A1111's syntax, as the
    infotext holds them; ``model_hash`` is A1111's ``Model hash`` of a single-file base
    (the first 10 hex of the checkpoint file's SHA-256), ``None`` for other bases.
    """

    prompt: str
    negative: str | None
    expanded_prompt: str
    expanded_negative: str | None
    embeddings: list[ComposeEmbedding]
    budgets: list[BudgetReport]
    warnings: list[str]
    dry_run: bool
    base: str | None
    base_family: str | None
    base_model_id: str | None = None
    fingerprint: str | None = None
    steps: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    width: int | None = None
    height: int | None = None
    seeds: list[int] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    a1111_prompt: str | None = None
    a1111_negative: str | None = None
    model_hash: str | None = None
    #: The syntax each prompt was read in (``{"prompt": "a1111", ...}``).
    syntax: dict[str, str] = field(default_factory=dict)
    #: The text-encoder layer read (A1111's "Clip skip"; 1: the pipeline's default).
    clip_skip: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "syntax": self.syntax,
            "clip_skip": self.clip_skip,
            "prompt": self.prompt,
            "negative": self.negative,
            "a1111_prompt": self.a1111_prompt,
            "a1111_negative": self.a1111_negative,
            "expanded_prompt": self.expanded_prompt,
            "expanded_negative": self.expanded_negative,
            "embeddings": [e.to_dict() for e in self.embeddings],
            "budgets": [b.to_dict() for b in self.budgets],
            "warnings": self.warnings,
            "base": self.base,
            "base_family": self.base_family,
            "base_model_id": self.base_model_id,
            "fingerprint": self.fingerprint,
            "model_hash": self.model_hash,
            "steps": self.steps,
            "guidance": self.guidance,
            "sampler": self.sampler,
            "width": self.width,
            "height": self.height,
            "seeds": self.seeds,
            "images": [str(p) for p in self.images],
            "infotexts": self.infotexts,
        }


# --------------------------------------------------------------------------- base family


def peek_family(ref: str | os.PathLike[str] | BaseModel | None) -> Family | None:
    """The family of base model ``ref`` read from its config files, without loading it.

    Knows the tiny models, diffusers folders (``text_encoder*/config.json``),
    single-file ``.safetensors`` checkpoints (tensor names in the header) and repo
    ids in the local Hugging Face cache. ``None`` when it cannot tell.

    Raises:
        UnsupportedFamily: an SD3 or FLUX model (no pipeline for them yet).
    """
    if ref is None:
        return None
    fam = getattr(ref, "family", None)
    if fam is not None:
        return Family(fam)
    from conceptlib.models.tiny import TINY_MODELS

    text = str(ref)
    if text in TINY_MODELS:
        return Family.SDXL if text == "tiny-sdxl" else Family.SD1
    path = Path(text).expanduser()
    try:
        if path.is_dir():
            return _folder_family(lambda sub: path / sub)
        if path.is_file() and path.suffix.lower() == ".safetensors":
            from conceptlib.models.single_file import single_file_family

            return single_file_family(path)
    except UnsupportedFamily:
        raise
    except (ConceptlibError, OSError, ValueError):
        return None
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text):
        try:
            from huggingface_hub import try_to_load_from_cache

            def cached(sub: str) -> Path:
                hit = try_to_load_from_cache(text, f"{sub.rsplit('/', 1)[0]}/config.json")
                return (
                    Path(hit).parent.parent / sub if isinstance(hit, str) else Path("/nonexistent")
                )

            return _folder_family(cached)
        except UnsupportedFamily:
            raise
        except Exception:
            return None
    return None


def _folder_family(locate: Any) -> Family | None:
    from conceptlib.models.family import folder_unsupported_family, unsupported_family

    other = folder_unsupported_family(lambda rel: Path(locate(rel)))
    if other is not None:
        index = Path(locate("model_index.json"))
        raise unsupported_family(other, str(index.parent) if index.is_file() else "the base model")
    widths = []
    for sub in ("text_encoder", "text_encoder_2"):
        cfg = Path(locate(f"{sub}/config.json"))
        if cfg.is_file():
            widths.append(int(json.loads(cfg.read_text(encoding="utf-8"))["hidden_size"]))
    table = {(768,): Family.SD1, (1024,): Family.SD2, (768, 1280): Family.SDXL}
    return table.get(tuple(widths))


def family_widths(family: Family) -> list[int]:
    return [SLOT_WIDTH[s] for s in FAMILY_SLOTS[family]]


# --------------------------------------------------------------------------- placeholders


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", name.casefold()).strip("-")
    return s or "ti"


def assign_placeholders(
    pairs: Sequence[tuple[EmbeddingInfo, float]],
    *,
    literal_texts: Sequence[str] = (),
    is_taken: Callable[[str], bool] | None = None,
) -> dict[tuple[str, float], list[str]]:
    """(tensor_sha256, weight) -> the per-vector placeholder tokens for each pair.

    Placeholders are lower-case (CLIP lower-cases prompts), end in ``>`` so that none
    is a prefix of another, and avoid tokens for which ``is_taken`` is true (what a
    tokenizer already knows) and any string the literal text contains.
    """
    text = " ".join(literal_texts).lower()
    out: dict[tuple[str, float], list[str]] = {}
    used: set[str] = set()
    for info, weight in pairs:
        key = (info.tensor_sha256, weight)
        if key in out:
            continue
        stem = _slug(info.name) + ("" if weight == 1.0 else ":" + format_weight(weight))
        k = 1
        while True:
            base = f"<{stem}>" if k == 1 else f"<{stem}-{k}>"
            seq = [base] + [f"{base}_{i}" for i in range(1, info.num_vectors)]
            clash = any(t in used or (is_taken is not None and is_taken(t)) for t in seq)
            if not clash and base not in text:
                break
            k += 1
        used.update(seq)
        out[key] = seq
    return out


# --------------------------------------------------------------------------- infotext

# A1111's infotext, written and read, lives with A1111's other rules in
# conceptlib.compose.ui.a1111 (``infotext`` and ``parse_infotext`` are imported above).


# --------------------------------------------------------------------------- compose


def _output_paths(out: str | os.PathLike[str] | None, n: int) -> list[Path]:
    path = Path(out if out is not None else "compose.png").expanduser()
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png") if not path.suffix else path.with_suffix(".png")
    if n == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{i}{path.suffix}") for i in range(1, n + 1)]


def _validate_numbers(
    steps: int, guidance: float, n: int, width: int | None, height: int | None
) -> None:
    if steps < 1:
        raise UsageError(f"--steps is {steps}; expected at least 1")
    if n < 1:
        raise UsageError(f"-n is {n}; expected at least 1")
    if guidance < 0:
        raise UsageError(f"--guidance is {guidance}; expected 0 or more")
    for label, v in (("--width", width), ("--height", height)):
        if v is not None and (v < 8 or v % 8):
            raise UsageError(f"{label} is {v}; expected a multiple of 8")


def compose(
    prompt: str,
    negative: str | None = None,
    *,
    base: str | os.PathLike[str] | BaseModel | None,
    library: Library,
    steps: int = 20,
    guidance: float = 7.5,
    seed: int | None = None,
    n: int = 1,
    out: str | os.PathLike[str] | None = None,
    strict: bool = False,
    dry_run: bool = False,
    width: int | None = None,
    height: int | None = None,
    device: str | None = None,
    overwrite: bool = False,
    hash_progress: Callable[[int, int], None] | None = None,
    syntax: str = "auto",
    clip_skip: int | None = None,
) -> ComposeResult:
    """Generate ``n`` images of ``prompt`` with the embeddings it names.

    Each PNG's ``parameters`` chunk is A1111 infotext, written so that A1111 reads it
    as meant: the prompts in A1111's syntax (``(name:0.8)``, bare names; see
    :mod:`conceptlib.compose.ui.a1111`), ``Model hash`` only for a single-file base
    (A1111's hash of that file), ``TI hashes`` only for the embeddings A1111 would apply,
    and our fingerprint as ``Conceptlib base fingerprint``. The ``conceptlib`` chunk
    holds the prompts in conceptlib's syntax (JSON).

    Args:
        prompt: text with ``<name>`` / ``<name:0.8>`` references, or a prompt in
            A1111's, ComfyUI's or InvokeAI's syntax (see ``syntax``). Any length: a
            prompt over 75 positions is encoded in 75-position chunks
            (:mod:`conceptlib.compose.chunks`, :mod:`conceptlib.compose.encode`).
        negative: the negative prompt (read the same way).
        base: a base-model reference for :func:`conceptlib.models.base.load_base`
            (``tiny-sd1``, a diffusers folder, a ``.safetensors`` file, a cached repo id)
            or an already loaded ``BaseModel``. May be ``None`` only with ``dry_run``.
        library: the catalog the names resolve in.
        steps, guidance: denoising steps and classifier-free guidance scale.
        seed: the first image's seed (image ``i`` uses ``seed + i``); random if ``None``.
        n: number of images.
        out: the PNG path (``out-1.png``, ``out-2.png``... when ``n > 1``).
        strict: refuse SD 1.x embeddings on SDXL instead of warning.
        dry_run: stop after the checks; load no model and write nothing.
        width, height: image size (default: the model's native size).
        device: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``None``/``auto``; checked by
            :func:`~conceptlib.models.base.resolve_device` before the model loads
            (ignored with ``dry_run`` or an already loaded ``base``).
        overwrite: replace existing output files.
        hash_progress: ``(done_bytes, total_bytes)`` while a single-file base is hashed
            for ``Model hash`` (once per file: the hash is cached in the settings' cache
            dir, see :mod:`conceptlib.models.checkpoint_hash`).
        syntax: ``auto`` (each prompt's syntax guessed by
            :func:`conceptlib.compose.ui.detect_syntax`; ``result.syntax`` says which),
            ``conceptlib``, ``a1111``, ``comfyui`` or ``invokeai``.
        clip_skip: the text-encoder layer read, A1111's convention (1: the pipeline's
            default; :mod:`conceptlib.models.clip_skip`). ``None``: the CLIP skip the
            named embeddings were trained at (``extra["clip_skip"]``), else 1; written to
            the infotext as ``Clip skip`` when not 1 (:mod:`conceptlib.compose.clip_skip`).

    Raises:
        PromptSyntaxError, InvalidWeight: a malformed prompt (with its column).
        UnknownEmbedding: a name the catalog lacks (with close matches).
        ConflictingWeights: one prompt names an embedding with two weights.
        IncompatibleEmbedding, PartialCompatibility: families that do not fit.
        TokenBudgetExceeded: a prompt over ``MAX_CHUNKS`` chunks of 75 positions.
        DeviceUnavailable: a device this machine cannot use (a ``UsageError``, exit 2).
        BaseModelError: a base model that cannot be loaded.
        UsageError: bad numbers, a CLIP skip the model has no layer for, or output
            files that exist without ``overwrite``.
    """
    from conceptlib.compose.clip_skip import effective_clip_skip

    _validate_numbers(steps, guidance, n, width, height)
    parsed, parsed_neg = read_prompts(library, prompt, negative, syntax)
    resolved = resolve_prompt(library, parsed)
    resolved_neg = resolve_prompt(library, parsed_neg) if parsed_neg is not None else None
    prompts = [r for r in (resolved, resolved_neg) if r is not None]

    if base is None and not dry_run:
        raise UsageError("no base model given; pass --base (tiny-sd1, a diffusers folder, ...)")
    family = peek_family(base)
    warnings_out: list[str] = []
    levels = _check_families(prompts, family, strict, warnings_out)

    budgets = [check_chunks(count_budget(r)) for r in prompts]
    pairs = _pairs(prompts)
    literal = [p.parsed.literal_text for p in prompts]
    placeholders = assign_placeholders(pairs, literal_texts=literal)
    result = ComposeResult(
        prompt=prompt,
        negative=negative,
        expanded_prompt="",
        expanded_negative=None,
        embeddings=_embeddings(prompts, placeholders, levels, library),
        budgets=budgets,
        warnings=warnings_out,
        dry_run=dry_run,
        base=None if base is None else str(getattr(base, "ref", base)),
        base_family=family.value if family else None,
        steps=steps,
        guidance=guidance,
        syntax={p.which: p.parsed.syntax for p in prompts},
    )
    result.clip_skip, _source, skip_notes = effective_clip_skip(prompts, clip_skip)
    warnings_out.extend(skip_notes)
    _set_expanded(result, resolved, resolved_neg, placeholders)
    _set_a1111(result, resolved, resolved_neg)
    if dry_run:
        return result

    paths = _output_paths(out, n)
    if not overwrite:
        for p in paths:
            if p.exists():
                raise UsageError(f"{p} already exists", hint="pass --overwrite to replace it")

    bm = _load_base(base, device)
    result.base = bm.ref
    result.base_model_id = bm.model_id
    result.fingerprint = bm.fingerprint
    result.model_hash = _model_hash(bm, library, hash_progress)
    if family is None or Family(bm.family) != family:
        family = Family(bm.family)
        result.base_family = family.value
        warnings_out.clear()
        levels = _check_families(prompts, family, strict, warnings_out)
        for e in result.embeddings:
            e.compatibility = levels[e.tensor_sha256]
    return _generate(
        result,
        bm,
        library,
        resolved,
        resolved_neg,
        pairs,
        literal,
        seed=seed,
        n=n,
        paths=paths,
        width=width,
        height=height,
        strict=strict,
    )


def read_prompts(
    library: Library, prompt: str, negative: str | None, syntax: str = "auto"
) -> tuple[ParsedPrompt, ParsedPrompt | None]:
    """Read ``prompt`` and ``negative`` in ``syntax`` (``auto``: each guessed on its own,
    so a conceptlib prompt can go with an A1111 negative); bare words are embedding
    names when the catalog has an entry of that name (A1111's rule)."""
    from conceptlib.compose.ui import read_prompt

    keys: set[str] = set()
    for info in library.list():
        keys.add(name_key(info.name))

    def is_name(word: str) -> bool:
        try:
            return name_key(word) in keys
        except Exception:
            return False

    parsed = read_prompt(prompt, syntax, which="prompt", names=is_name)
    parsed_neg = (
        read_prompt(negative, syntax, which="negative prompt", names=is_name)
        if negative is not None
        else None
    )
    return parsed, parsed_neg


def _pairs(prompts: Sequence[ResolvedPrompt]) -> list[tuple[EmbeddingInfo, float]]:
    pairs: list[tuple[EmbeddingInfo, float]] = []
    for p in prompts:
        for info, weight in p.distinct():
            if not any(i.tensor_sha256 == info.tensor_sha256 and w == weight for i, w in pairs):
                pairs.append((info, weight))
    return pairs


def _check_families(
    prompts: Sequence[ResolvedPrompt], family: Family | None, strict: bool, notes: list[str]
) -> dict[str, str]:
    levels: dict[str, str] = {}
    for p in prompts:
        for r in p.refs:
            info = r.info
            if info.tensor_sha256 in levels:
                continue
            if family is None:
                levels[info.tensor_sha256] = "unknown"
                continue
            shapes = ", ".join(
                f"{WIDTH_SLOT.get(w, '?')} [{info.num_vectors}, {w}]"
                for w in sorted(info.dims, key=lambda w: WIDTH_SLOT.get(w, "?"))
            )
            level = check_compatibility(
                f"<{info.name}>", info.family, shapes, family, family_widths(family), strict=strict
            )
            levels[info.tensor_sha256] = level
            if level == "partial":
                notes.append(partial_note(f"<{info.name}>", info.family, family))
                notes.append(_ui_partial_note(info, family))
    return levels


def _ui_partial_note(info: EmbeddingInfo, family: Family) -> str:
    """What the UIs do with the partly fitting ``info`` (an SD 1.x embedding on SDXL)."""
    from conceptlib.compose.ui import UI_FORMATS, ui_module

    modules = [ui_module(f) for f in UI_FORMATS]
    skip = [m.LABEL for m in modules if m.SD1_ON_SDXL == "skip"]
    part = [m.LABEL for m in modules if m.SD1_ON_SDXL != "skip"]
    return (
        f"{' and '.join(skip)} will not apply <{info.name}> on an {family.value} model "
        f"(they skip {info.family} embeddings there), so the infotext's TI hashes leave it "
        f"out; {' and '.join(part)} apply it to the first text encoder only"
    )


def _set_a1111(
    result: ComposeResult, resolved: ResolvedPrompt, resolved_neg: ResolvedPrompt | None
) -> None:
    """The prompts in A1111's syntax, for the infotext (A1111 never refuses a name)."""
    from conceptlib.compose.formats import render

    result.a1111_prompt = render(resolved, "a1111")
    result.a1111_negative = render(resolved_neg, "a1111") if resolved_neg is not None else None


def _model_hash(
    bm: BaseModel, library: Library, progress: Callable[[int, int], None] | None
) -> str | None:
    """A1111's ``Model hash`` of a single-file base; ``None`` for other bases."""
    from conceptlib.models.checkpoint_hash import a1111_model_hash, checkpoint_file

    path = checkpoint_file(bm.ref, is_tiny=bool(getattr(bm, "is_tiny", False)))
    if path is None:
        return None
    try:
        return a1111_model_hash(path, library.settings.cache_dir, progress=progress)
    except OSError:
        return None


def _embeddings(
    prompts: Sequence[ResolvedPrompt],
    placeholders: dict[tuple[str, float], list[str]],
    levels: dict[str, str],
    library: Library,
) -> list[ComposeEmbedding]:
    from conceptlib.compose.export import ui_file_sha256

    out: dict[tuple[str, float], ComposeEmbedding] = {}
    for p in prompts:
        for r in p.refs:
            key = (r.info.tensor_sha256, r.weight)
            e = out.get(key)
            if e is None:
                seq = placeholders[key]
                e = out[key] = ComposeEmbedding(
                    name=r.info.name,
                    token=r.info.token,
                    placeholder=seq[0],
                    expansion=seq,
                    weight=r.weight,
                    family=r.info.family,
                    compatibility=levels.get(r.info.tensor_sha256, "unknown"),
                    num_vectors=r.info.num_vectors,
                    tensor_sha256=r.info.tensor_sha256,
                    file_sha256=r.info.file_sha256,
                    a1111_sha256=ui_file_sha256(library, r.info, "a1111"),
                )
            if p.which not in e.used_in:
                e.used_in.append(p.which)
    return list(out.values())


def _pipeline_text(
    resolved: ResolvedPrompt, placeholders: dict[tuple[str, float], list[str]], *, expand: bool
) -> str:
    infos = resolved.by_ref()

    def one(ref: EmbeddingRef) -> str:
        seq = placeholders[(infos[ref].info.tensor_sha256, ref.effective_weight)]
        return " ".join(seq) if expand else seq[0]

    return resolved.parsed.render(one)


def _set_expanded(
    result: ComposeResult,
    resolved: ResolvedPrompt,
    resolved_neg: ResolvedPrompt | None,
    placeholders: dict[tuple[str, float], list[str]],
) -> None:
    result.expanded_prompt = _pipeline_text(resolved, placeholders, expand=True)
    if resolved_neg is not None:
        result.expanded_negative = _pipeline_text(resolved_neg, placeholders, expand=True)


def _load_base(base: Any, device: str | None) -> BaseModel:
    if hasattr(base, "pipeline") and hasattr(base, "family"):
        return base
    from conceptlib.models.base import load_base

    try:
        return load_base(str(base), device=device)
    except ConceptlibError:
        raise
    except Exception as exc:
        raise BaseModelError(
            f"cannot load base model {str(base)!r} ({type(exc).__name__}: {exc})", ref=str(base)
        ) from exc


def _generate(
    result: ComposeResult,
    bm: BaseModel,
    library: Library,
    resolved: ResolvedPrompt,
    resolved_neg: ResolvedPrompt | None,
    pairs: list[tuple[EmbeddingInfo, float]],
    literal: list[str],
    *,
    seed: int | None,
    n: int,
    paths: list[Path],
    width: int | None,
    height: int | None,
    strict: bool,
) -> ComposeResult:
    import warnings

    import torch

    from conceptlib.compose.clip_skip import check_against_model
    from conceptlib.compose.loader import LoadItem, load_embeddings, pipeline_encoders

    pipe = bm.pipeline
    specs = pipeline_encoders(pipe)
    check_against_model(result.clip_skip, [s.encoder for s in specs], sdxl=len(specs) > 1,
                        model=bm.model_id)  # fmt: skip
    tokenizer = specs[0].tokenizer
    prompts = [r for r in (resolved, resolved_neg) if r is not None]
    result.budgets = [check_chunks(count_budget(r, tokenizer)) for r in prompts]

    vocabs = [spec.tokenizer.get_vocab() for spec in specs]

    def is_taken(token: str) -> bool:
        return any(
            token in vocab or len(spec.tokenizer.encode(token, add_special_tokens=False)) == 1
            for spec, vocab in zip(specs, vocabs, strict=True)
        )

    placeholders = assign_placeholders(pairs, literal_texts=literal, is_taken=is_taken)
    for e in result.embeddings:
        seq = placeholders[(e.tensor_sha256, e.weight)]
        e.placeholder, e.expansion = seq[0], seq
    _set_expanded(result, resolved, resolved_neg, placeholders)

    items = [
        LoadItem(
            token=placeholders[(info.tensor_sha256, weight)][0],
            embedding=library.load(info),
            weight=weight,
            name=f"<{info.name}>",
        )
        for info, weight in pairs
    ]
    first = int(seed) if seed is not None else secrets.randbelow(2**32)
    seeds = [(first + i) % 2**32 for i in range(n)]
    native = bm.native_resolution
    w, h = width or native, height or native
    result.seeds, result.width, result.height = seeds, w, h
    result.sampler = SAMPLER_NAMES.get(type(pipe.scheduler).__name__, type(pipe.scheduler).__name__)

    from conceptlib.models.libraries import quiet_libraries

    with quiet_libraries(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with load_embeddings(pipe, items, strict=strict) as loaded:
            conditioning = _conditioning(
                pipe, specs, loaded, resolved, resolved_neg, placeholders, result.clip_skip
            )
            images = []
            for start in range(0, n, BATCH):
                batch = seeds[start : start + BATCH]
                generators = [torch.Generator(device="cpu").manual_seed(s) for s in batch]
                with torch.inference_mode():
                    images += pipe(
                        **conditioning,
                        num_inference_steps=result.steps,
                        guidance_scale=result.guidance,
                        num_images_per_prompt=len(batch),
                        generator=generators,
                        width=w,
                        height=h,
                        output_type="pil",
                    ).images
    for note in loaded.warnings:
        if note not in result.warnings:
            result.warnings.append(note)

    for path, image, s in zip(paths, images, seeds, strict=True):
        info_text = _infotext_for(result, bm, s, image.size)
        _write_png(path, image, info_text, _json_record(result, bm, s, image.size))
        result.images.append(path)
        result.infotexts.append(info_text)
    return result


def _conditioning(
    pipe: Any,
    specs: Any,
    loaded: Any,
    resolved: ResolvedPrompt,
    resolved_neg: ResolvedPrompt | None,
    placeholders: dict[tuple[str, float], list[str]],
    clip_skip: int = 1,
) -> dict[str, Any]:
    """The pipeline's ``prompt_embeds`` (and negative, pooled): each prompt cut into
    chunks with the model's tokenizer and encoded chunk by chunk, at ``clip_skip``."""
    from conceptlib.compose.chunks import plan_chunks
    from conceptlib.compose.encode import WEIGHTING, pipeline_kwargs

    def plan(r: ResolvedPrompt) -> Any:
        infos = {id(x.ref): x.info for x in r.refs}

        def vectors(ref: EmbeddingRef) -> list[str]:
            key = (infos[id(ref)].tensor_sha256, ref.effective_weight)
            return loaded.tokens[placeholders[key][0]]

        return plan_chunks(r.parsed, vectors, specs[0].tokenizer)

    neg_plan = plan(resolved_neg) if resolved_neg is not None else None
    zero = bool(getattr(getattr(pipe, "config", None), "force_zeros_for_empty_prompt", False))
    return pipeline_kwargs(
        specs,
        plan(resolved),
        neg_plan,
        weighting=WEIGHTING[resolved.parsed.syntax],
        negative_weighting=WEIGHTING[resolved_neg.parsed.syntax] if resolved_neg else "a1111",
        zero_negative=zero and len(specs) > 1,
        clip_skip=clip_skip,
    )


#: Our fingerprint's field in the infotext (A1111 keeps fields it does not know).
FINGERPRINT_FIELD = "Conceptlib base fingerprint"


def _infotext_for(result: ComposeResult, bm: BaseModel, seed: int, size: tuple[int, int]) -> str:
    """The A1111 infotext of one image (see :func:`compose` for what goes where)."""
    from conceptlib.compose.ui import a1111

    # TI hashes: only what A1111 applies (it skips an SD 1.x embedding on SDXL), under
    # the name A1111 triggers.
    applied = [e for e in _unique_by_name(result.embeddings) if e.compatibility == "full"]
    ti = ", ".join(f"{a1111.trigger(e.name, e.token)}: {e.a1111_hash}" for e in applied)
    model = bm.model_id
    if result.model_hash is not None:
        model = Path(bm.ref).stem  # A1111's model name: the checkpoint file without extension
    params: list[tuple[str, Any]] = [
        ("Steps", result.steps),
        ("Sampler", result.sampler),
        ("CFG scale", format_weight(float(result.guidance or 0))),
        ("Seed", seed),
        ("Size", f"{size[0]}x{size[1]}"),
        ("Model hash", result.model_hash),
        ("Model", model),
        ("TI hashes", ti or None),
        ("Clip skip", result.clip_skip if result.clip_skip != 1 else None),
        (FINGERPRINT_FIELD, bm.fingerprint),
        ("Version", f"conceptlib {_version()}"),
    ]
    prompt = result.a1111_prompt if result.a1111_prompt is not None else result.prompt
    return infotext(prompt, result.a1111_negative, params)


def _unique_by_name(embs: Sequence[ComposeEmbedding]) -> list[ComposeEmbedding]:
    seen: dict[str, ComposeEmbedding] = {}
    for e in embs:
        seen.setdefault(e.name, e)
    return list(seen.values())


def _json_record(result: ComposeResult, bm: BaseModel, seed: int, size: tuple[int, int]) -> str:
    return json.dumps(
        {
            "prompt": result.prompt,
            "negative": result.negative,
            "expanded_prompt": result.expanded_prompt,
            "expanded_negative": result.expanded_negative,
            "seed": seed,
            "steps": result.steps,
            "guidance": result.guidance,
            "sampler": result.sampler,
            "size": list(size),
            "base": {
                "ref": bm.ref,
                "model_id": bm.model_id,
                "family": Family(bm.family).value,
                "fingerprint": bm.fingerprint,
                "model_hash": result.model_hash,
            },
            "embeddings": [
                {
                    "name": e.name,
                    "weight": e.weight,
                    "tensor_sha256": e.tensor_sha256,
                    "file_sha256": e.file_sha256,
                    "compatibility": e.compatibility,
                }
                for e in result.embeddings
            ],
            "version": _version(),
        },
        ensure_ascii=False,
    )


def _version() -> str:
    from conceptlib import __version__

    return __version__


def _write_png(path: Path, image: Any, parameters: str, record: str) -> None:
    import io

    from PIL.PngImagePlugin import PngInfo

    from conceptlib.registry.store import atomic_write

    meta = PngInfo()
    meta.add_text("parameters", parameters)
    meta.add_text("conceptlib", record)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=meta)
    atomic_write(path, buf.getvalue())


def format_prompts(
    library: Library,
    prompt: str,
    negative: str | None,
    fmt: str,
    *,
    base: str | os.PathLike[str] | None = None,
    syntax: str = "auto",
) -> Any:
    """``prompt`` (and ``negative``) in UI ``fmt``'s syntax, as a
    :class:`~conceptlib.compose.formats.RenderedPrompt`.

    ``base`` (read for its family only, from config files: nothing is loaded) says
    which model the UI will use, so that the warnings can name the embeddings that UI
    will not apply on it; without it the family is implied by the prompt's SDXL
    embeddings, if any.

    Raises:
        UntriggerableName: an entry the UI cannot name (even mapped), or two it would
            name alike.
        UnknownEmbedding, PromptSyntaxError, ConflictingWeights: from the prompts.
    """
    from conceptlib.compose.formats import render_prompts

    parsed, parsed_neg = read_prompts(library, prompt, negative, syntax)
    resolved = resolve_prompt(library, parsed)
    resolved_neg = resolve_prompt(library, parsed_neg) if parsed_neg is not None else None
    family = peek_family(base) if base is not None else None
    return render_prompts(resolved, resolved_neg, fmt, library=library, family=family)

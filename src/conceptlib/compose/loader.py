"""Add many embeddings to a diffusers pipeline at once, and take them out again exactly.

    >>> from conceptlib.compose.loader import load_embeddings
    >>> with load_embeddings(pipe, [("<cat-toy>", emb, 1.0), ("<ukiyoe>", emb2, 0.8)]) as loaded:
    ...     image = pipe("a <cat-toy> in <ukiyoe> style").images[0]
    >>> # here the tokenizers, the text encoders and their configs are as they were

How it works, per text encoder (``text_encoder`` and, for SDXL, ``text_encoder_2``):

* **Tokenizer.** ``tokenizers`` cannot remove an added token, so the pipeline's
  tokenizer gets a private copy of its Rust backend, the tokens are added to that
  copy in one call, and on exit the original backend object is put back: the
  vocabulary, ``len(tokenizer)`` and every encoding are those of before, by
  identity. (Python-backend tokenizers are restored from a deep copy of their
  state.)
* **Embedding matrix.** One new ``[V + k, d]`` matrix is built (a single copy of
  the old rows plus the ``k`` new ones), wrapped in a new ``nn.Embedding`` and set
  on the encoder; ``config.vocab_size`` follows. The original module and its weight
  tensor are never written to; on exit they are set back, so the matrix is
  bit-identical (``torch.equal``, and the very same tensor object).
* **Tokens.** A token ``t`` with ``n`` vectors becomes ``t, t_1, ..., t_{n-1}``, as
  diffusers names them, so diffusers pipelines expand ``t`` in a prompt by
  themselves (``maybe_convert_prompt``); :meth:`LoadedEmbeddings.expand` does it for
  anything else. Tokens are stored in the tokenizer's normalized form (CLIP
  lower-cases prompts).
* **Families.** Each embedding is checked against the pipeline's encoders before
  anything changes. An SD 1.x embedding on SDXL reaches only the first encoder: it
  is loaded there with a warning (refused with ``strict=True``), and the second
  encoder gets the same tokens with the *mean of its vocabulary rows* as their
  vectors (``partial_fill="mean"``; ``"zero"`` is the alternative). The tokens must
  exist in both tokenizers so that the prompt tokenizes to the same positions in
  both; the mean row is the most neutral in-distribution vector, where a zero
  vector has a norm no real token has.

Not handled: accelerate's sequential CPU offload hooks on the embedding module
(load before enabling offload), and models whose input embeddings are tied to an
output layer (CLIP text encoders have none).
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conceptlib.errors import IncompatibleEmbedding, LoaderError, PartialCompatibility
from conceptlib.schemas.enums import (
    FAMILY_SLOTS,
    WIDTH_SLOT,
    Family,
    compatibility,
    shared_slots,
)
from conceptlib.schemas.names import expansion_tokens
from conceptlib.schemas.vocabulary import is_tokenizer_word

if TYPE_CHECKING:
    from conceptlib.registry.formats.embedding import Embedding

#: (tokenizer attribute, text encoder attribute) pairs of diffusers pipelines.
ENCODER_ATTRS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
PARTIAL_FILLS = ("mean", "zero")


class PartialCompatibilityWarning(UserWarning):
    """An embedding loaded into only some of the pipeline's text encoders."""


@dataclass
class LoadItem:
    """One embedding to load: its token, vectors and weight (the vectors are scaled)."""

    token: str
    embedding: Embedding
    weight: float = 1.0
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.token


@dataclass
class EncoderSpec:
    """One tokenizer / text-encoder pair of a pipeline."""

    tokenizer_attr: str
    encoder_attr: str
    tokenizer: Any
    encoder: Any
    slot: str
    width: int


@dataclass
class LoadedEmbeddings:
    """What a :func:`load_embeddings` block added.

    Attributes:
        family: the pipeline's family, from its encoders' widths.
        tokens: each item's token -> the tokens its vectors were added as.
        token_ids: encoder attribute -> added token -> id.
        warnings: partial-compatibility notes (also emitted as Python warnings).
        partial: labels of embeddings loaded into only some encoders.
    """

    family: Family | None
    widths: list[int]
    tokens: dict[str, list[str]] = field(default_factory=dict)
    token_ids: dict[str, dict[str, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    _pattern: re.Pattern[str] | None = None
    _replacement: dict[str, str] = field(default_factory=dict)

    def expand(self, prompt: str) -> str:
        """Replace each loaded token by its per-vector tokens (``t`` -> ``t t_1 t_2``).

        Matching is case-insensitive, like CLIP; ``t_1`` written out is left alone.
        Diffusers pipelines do this themselves; use it for anything else.
        """
        if self._pattern is None:
            return prompt
        return self._pattern.sub(lambda m: self._replacement[m.group(0).lower()], prompt)

    def _build_pattern(self) -> None:
        for seq in self.tokens.values():
            self._replacement[seq[0].lower()] = " ".join(seq)
            for extra in seq[1:]:
                self._replacement[extra.lower()] = extra
        keys = sorted(self._replacement, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(k) for k in keys), re.IGNORECASE) if keys else None
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family.value if self.family else None,
            "widths": self.widths,
            "tokens": self.tokens,
            "warnings": self.warnings,
            "partial": self.partial,
        }


def pipeline_encoders(pipeline: Any) -> list[EncoderSpec]:
    """The tokenizer/text-encoder pairs of ``pipeline`` with their slot (from the width)."""
    specs = []
    for tok_attr, enc_attr in ENCODER_ATTRS:
        tok = getattr(pipeline, tok_attr, None)
        enc = getattr(pipeline, enc_attr, None)
        if tok is None and enc is None:
            continue
        if tok is None or enc is None:
            missing = tok_attr if tok is None else enc_attr
            raise LoaderError(
                f"the pipeline has {enc_attr if tok is None else tok_attr} but no {missing}"
            )
        width = int(enc.get_input_embeddings().weight.shape[1])
        slot = WIDTH_SLOT.get(width)
        if slot is None:
            raise LoaderError(
                f"{enc_attr} has token embeddings of width {width}; expected 768, 1024 or 1280"
            )
        specs.append(EncoderSpec(tok_attr, enc_attr, tok, enc, slot, width))
    if not specs:
        raise LoaderError("the pipeline has no tokenizer and text encoder to load embeddings into")
    return specs


def family_of_slots(slots: Sequence[str]) -> Family | None:
    for fam, fam_slots in FAMILY_SLOTS.items():
        if sorted(fam_slots) == sorted(slots):
            return fam
    return None


def pipeline_family(pipeline: Any) -> Family | None:
    """The family of ``pipeline`` from its text encoders' widths (``None`` if none fits)."""
    return family_of_slots([s.slot for s in pipeline_encoders(pipeline)])


def describe_shapes(emb: Embedding) -> str:
    return ", ".join(f"{s} {list(emb.vectors[s].shape)}" for s in emb.slots)


def check_compatibility(
    label: str,
    emb_family: Family | str,
    shapes: str,
    model_family: Family | None,
    widths: Sequence[int],
    *,
    strict: bool,
    model_slots: Sequence[str] = (),
    emb_slots: Sequence[str] = (),
) -> str:
    """``"full"`` or ``"partial"``; raises for ``"none"`` (and ``"partial"`` when strict)."""
    fam = Family(emb_family)
    if model_family is not None:
        level = compatibility(fam, model_family)
    else:
        level = "full" if set(model_slots) <= set(emb_slots) else "none"
    model_desc = f"{model_family.value} " if model_family else ""
    width_text = " + ".join(str(w) for w in widths)
    if level == "none":
        raise IncompatibleEmbedding(
            f"{label} is an {fam.value} embedding ({shapes}); the {model_desc}base model's "
            f"text encoders are {width_text} wide",
            hint="pick an embedding made for this base model's family",
            name=label,
            embedding_family=fam.value,
            model_family=model_family.value if model_family else None,
            shapes=shapes,
            model_widths=list(widths),
        )
    if level == "partial" and strict:
        raise PartialCompatibility(
            f"{label} is an {fam.value} embedding ({shapes}); on this {model_desc}base model "
            f"({width_text}) it reaches only {_reach(fam, model_family)}, which --strict refuses",
            hint="drop --strict to load it into the encoders it fits only",
            name=label,
            embedding_family=fam.value,
            model_family=model_family.value if model_family else None,
            shapes=shapes,
            model_widths=list(widths),
        )
    return level


def _reach(emb_family: Family, model_family: Family | None) -> str:
    """Which of the model's text encoders an embedding of ``emb_family`` reaches."""
    if model_family is None:
        return "some text encoders"
    slots = FAMILY_SLOTS[model_family]
    shared = shared_slots(emb_family, model_family)
    if shared == list(slots[:1]) and len(slots) > 1:
        return "the first text encoder"
    return f"the {' and '.join(shared)} text encoder" + ("s" if len(shared) > 1 else "")


def partial_note(label: str, emb_family: Family | str, model_family: Family | None) -> str:
    fam = Family(emb_family)
    model = model_family.value if model_family else "this"
    missing: list[str] = []
    if model_family is not None:
        shared = shared_slots(fam, model_family)
        missing = [s for s in FAMILY_SLOTS[model_family] if s not in shared]
    if missing == ["clip_g"] and model_family == Family.SDXL:
        left = " (the second gets neutral vectors)"
    elif missing:
        left = f" ({' and '.join(missing)} get neutral vectors)"
    else:
        left = " (its other vectors are left out)"
    return (
        f"{label} is an {fam.value} embedding: on the {model} model it reaches only "
        f"{_reach(fam, model_family)}{left}"
    )


def _normalize(tokenizer: Any, token: str) -> str:
    backend = getattr(tokenizer, "_tokenizer", None)
    normalizer = getattr(backend, "normalizer", None)
    if normalizer is not None:
        return normalizer.normalize_str(token)
    return token.lower() if getattr(tokenizer, "do_lower_case", False) else token


@contextmanager
def load_embeddings(
    pipeline: Any,
    items: Sequence[LoadItem | tuple[str, Embedding, float] | tuple[str, Embedding]],
    *,
    strict: bool = False,
    partial_fill: str = "mean",
) -> Iterator[LoadedEmbeddings]:
    """Load every embedding into ``pipeline`` for the ``with`` block, then restore it exactly.

    Args:
        pipeline: a ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline`` or any
            object with ``tokenizer``/``text_encoder`` (and ``tokenizer_2``/``text_encoder_2``).
        items: ``LoadItem`` or ``(token, Embedding[, weight])`` tuples.
        strict: refuse partially compatible embeddings (SD 1.x on SDXL).
        partial_fill: vectors for an encoder an embedding has no slot for:
            ``"mean"`` (of that encoder's vocabulary rows) or ``"zero"``.

    Yields:
        :class:`LoadedEmbeddings` with the tokens added and any warnings.

    Raises:
        IncompatibleEmbedding: an embedding of a family the encoders cannot take.
        PartialCompatibility: a partially compatible one under ``strict``.
        LoaderError: a token that is empty, has spaces, repeats, or is already in a
            tokenizer's vocabulary (adding it would change that word's meaning).
    """
    if partial_fill not in PARTIAL_FILLS:
        raise LoaderError(
            f"partial_fill {partial_fill!r}; expected one of {', '.join(PARTIAL_FILLS)}"
        )
    load_items = [_as_item(it) for it in items]
    specs = pipeline_encoders(pipeline)
    model_slots = [s.slot for s in specs]
    family = family_of_slots(model_slots)
    loaded = LoadedEmbeddings(family=family, widths=[s.width for s in specs])

    # 1. Check everything before touching the pipeline.
    notes: list[str] = []
    for it in load_items:
        emb = it.embedding
        level = check_compatibility(
            it.label,
            emb.family,
            describe_shapes(emb),
            family,
            loaded.widths,
            strict=strict,
            model_slots=model_slots,
            emb_slots=emb.slots,
        )
        if level == "partial":
            loaded.partial.append(it.label)
            notes.append(partial_note(it.label, emb.family, family))
    expansions = _plan_tokens(load_items, specs)
    for it in load_items:
        loaded.tokens[it.token] = expansions[it.token]
    loaded._build_pattern()
    if not load_items:
        yield loaded
        return

    # 2. Change the pipeline, one encoder at a time; undo all of it on the way out.
    undo: list[Any] = []
    try:
        for spec in specs:
            undo.append(_load_into(spec, load_items, expansions, partial_fill, loaded))
        for note in notes:
            loaded.warnings.append(note)
            warnings.warn(note, PartialCompatibilityWarning, stacklevel=3)
        yield loaded
    finally:
        for restore in reversed(undo):
            restore()


def _as_item(it: Any) -> LoadItem:
    if isinstance(it, LoadItem):
        return it
    if isinstance(it, tuple) and len(it) in (2, 3):
        weight = float(it[2]) if len(it) == 3 else 1.0
        return LoadItem(token=it[0], embedding=it[1], weight=weight)
    raise LoaderError(f"expected LoadItem or (token, Embedding, weight); got {type(it).__name__}")


def _plan_tokens(items: Sequence[LoadItem], specs: Sequence[EncoderSpec]) -> dict[str, list[str]]:
    """token -> normalized per-vector tokens; refuses clashes before anything is added."""
    plan: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    tok = specs[0].tokenizer
    vocabs = [s.tokenizer.get_vocab() for s in specs]
    for it in items:
        token = it.token
        if not token or any(c.isspace() for c in token):
            raise LoaderError(f"token {token!r} for {it.label} is empty or has spaces")
        norm = _normalize(tok, token)
        seq = expansion_tokens(norm, it.embedding.num_vectors)
        for t in seq:
            if t in owner:
                raise LoaderError(
                    f"token {t!r} of {it.label} is also a token of {owner[t]} "
                    "(multi-vector tokens t expand to t_1, t_2, ...)",
                    token=t,
                )
            for spec, vocab in zip(specs, vocabs, strict=True):
                if is_tokenizer_word(spec.tokenizer, t, vocab=vocab):
                    raise LoaderError(
                        f"token {t!r} of {it.label} is already in {spec.tokenizer_attr}'s "
                        "vocabulary; adding it would change what that word means",
                        hint="use a token that is not a word, such as <name>",
                        token=t,
                    )
            owner[t] = it.label
        plan[token] = seq
    return plan


def _load_into(
    spec: EncoderSpec,
    items: Sequence[LoadItem],
    expansions: dict[str, list[str]],
    partial_fill: str,
    loaded: LoadedEmbeddings,
) -> Any:
    """Add the tokens and rows to one encoder; return the function that undoes it."""
    import torch

    tokenizer, encoder = spec.tokenizer, spec.encoder
    restore_tokenizer = _private_tokenizer(tokenizer)
    try:
        all_tokens = [t for it in items for t in expansions[it.token]]
        added = tokenizer.add_tokens(all_tokens)
        ids = tokenizer.convert_tokens_to_ids(all_tokens)
        if added != len(all_tokens) or len(set(ids)) != len(ids):
            raise LoaderError(
                f"{spec.tokenizer_attr} added {added} of {len(all_tokens)} tokens; "
                "some were already known to it"
            )
        for t, i in zip(all_tokens, ids, strict=True):
            if tokenizer.encode(t, add_special_tokens=False) != [i]:
                raise LoaderError(
                    f"token {t!r} does not tokenize to itself in {spec.tokenizer_attr}",
                    token=t,
                )

        old_module = encoder.get_input_embeddings()
        old = old_module.weight
        rows, width = old.shape
        with torch.no_grad():
            fill_row = None
            vectors = []
            for it in items:
                v = it.embedding.vectors.get(spec.slot)
                if v is None:
                    if fill_row is None:
                        fill_row = (
                            old.float().mean(dim=0)
                            if partial_fill == "mean"
                            else torch.zeros(width, dtype=torch.float32, device=old.device)
                        )
                    vectors.append(fill_row.unsqueeze(0).expand(it.embedding.num_vectors, width))
                else:
                    t = torch.tensor(v, dtype=torch.float32, device=old.device) * float(it.weight)
                    vectors.append(t)
            new_rows = torch.cat(vectors).to(dtype=old.dtype, device=old.device)
            size = max(rows, max(ids) + 1)
            weight = old.new_empty((size, width))
            weight[:rows].copy_(old)
            if size > rows:
                weight[rows:].zero_()
            weight[torch.tensor(ids, device=old.device)] = new_rows
        new_module = torch.nn.Embedding(
            size,
            width,
            padding_idx=old_module.padding_idx,
            max_norm=old_module.max_norm,
            norm_type=old_module.norm_type,
            scale_grad_by_freq=old_module.scale_grad_by_freq,
            sparse=old_module.sparse,
            _weight=weight,
            _freeze=not old.requires_grad,
        )
        new_module.train(old_module.training)
        text_config = _text_config(encoder)
        old_vocab = getattr(text_config, "vocab_size", None)
        had_attr = "vocab_size" in vars(encoder)
        old_attr = vars(encoder).get("vocab_size")
        encoder.set_input_embeddings(new_module)
        if text_config is not None:
            text_config.vocab_size = size
        if had_attr:
            encoder.vocab_size = size
    except BaseException:
        restore_tokenizer()
        raise

    loaded.token_ids[spec.encoder_attr] = dict(zip(all_tokens, ids, strict=True))

    def restore() -> None:
        encoder.set_input_embeddings(old_module)
        if text_config is not None:
            text_config.vocab_size = old_vocab
        if had_attr:
            encoder.vocab_size = old_attr
        elif "vocab_size" in vars(encoder):  # set by a transformers resize inside the block
            del encoder.vocab_size
        restore_tokenizer()

    return restore


def _text_config(encoder: Any) -> Any:
    config = getattr(encoder, "config", None)
    if config is None:
        return None
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _private_tokenizer(tokenizer: Any) -> Any:
    """Give ``tokenizer`` a private copy of its state; return the function that restores it."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        from tokenizers import Tokenizer

        private = Tokenizer.from_str(backend.to_str())
        tokenizer._tokenizer = private
        # CLIPTokenizer wraps its backend's decode; wrap the private copy the same way.
        rewrap = getattr(tokenizer, "_wrap_decode_method_backend_tokenizer", None)
        if callable(rewrap) and "decode" in vars(backend):
            rewrap()

        def restore() -> None:
            tokenizer._tokenizer = backend

        return restore

    saved = copy.deepcopy(vars(tokenizer))

    def restore_python() -> None:
        state = vars(tokenizer)
        state.clear()
        state.update(saved)

    return restore_python

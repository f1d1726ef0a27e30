"""Plan files: several concepts trained together against one frozen base model.

A plan is a TOML file. Its top-level keys are the shared settings (the base model,
steps, resolution, precision... and defaults for the per-concept keys); each
``[[concept]]`` table is one concept::

    base = "./sd15"
    steps = 2000
    batch = 4            # images per concept per step
    seed = 0

    [[concept]]
    name = "cat-toy"
    images = ["photos/cat-toy"]   # relative to the plan file's folder
    init = "toy"

    [[concept]]
    name = "ink-style"
    images = "photos/ink"
    init = "painting"
    kind = "style"
    vectors = 4
    lr = 0.002

:func:`read_plan` reads and checks the file's structure (no torch, no images); the
checks that need the catalog, the images or the tokenizers run in
:func:`conceptlib.trainer.multi.train_plan`, still before the base model loads.
Every error names the plan file, the concept (its position and name) and the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conceptlib.errors import ConceptlibError, NotFound, UsageError

#: Largest plan file read (a plan is a few lines per concept).
MAX_PLAN_BYTES = 1024 * 1024
#: Most concepts in one plan.
MAX_PLAN_CONCEPTS = 256

#: Keys only the top level takes: one value for the whole run.
SHARED_KEYS = {
    "base": str,
    "base_config": str,
    "steps": int,
    "resolution": int,
    "precision": str,
    "device": str,
    "prediction_type": str,
    "zero_terminal_snr": bool,
    "clip_skip": int,
    "checkpoint_every": int,
    "sample_every": int,
    "sample_steps": int,
    "save_every": int,
    "compile": bool,
    "min_images": int,
    "run_dir": str,
    "tensorboard": bool,
    "gradient_checkpointing": bool,
}
#: Keys a concept may set; a top-level value is the default of every concept
#: (``tags`` at the top level are added to each concept's own).
CONCEPT_DEFAULT_KEYS = {
    "kind": str,
    "vectors": int,
    "lr": (float, str),
    "lr_schedule": str,
    "lr_warmup_steps": int,
    "seed": int,
    "batch": int,
    "weight_decay": float,
    "flip": bool,
    "templates": str,
    "tags": list,
    "captions": str,
    "caption_extension": str,
    "validation_prompts": list,
    "validation_negative": str,
    "validation_seed": int,
    "validation_guidance": float,
    "clip_model": str,
}
#: Keys only a ``[[concept]]`` table takes.
CONCEPT_ONLY_KEYS = {"name": str, "images": (str, list), "init": str, "description": str,
                     "init_from": str}  # fmt: skip
#: ``train()`` options a plan refuses (at the top or in a concept), and why.
UNSUPPORTED_KEYS = {
    **dict.fromkeys(
        ("buckets", "bucket_reso_steps", "min_bucket_reso", "max_bucket_reso",
         "bucket_no_upscale"),
        "aspect-ratio buckets give batches of different shapes, and a plan step "
        "concatenates every concept's batch into one",
    ),
    "accumulate": "a plan step draws one batch per concept; micro-batches are not "
    "supported in a plan yet (raise batch instead)",
    "cuda_graphs": "a plan step runs eagerly; the CUDA-graph step captures one concept's "
    "step, not several",
}  # fmt: skip

DEFAULTS: dict[str, Any] = {
    "base": "tiny-sd1",
    "base_config": None,
    "steps": 2000,
    "resolution": None,
    "precision": None,
    "device": None,
    "prediction_type": None,
    "zero_terminal_snr": False,
    "clip_skip": 1,
    "checkpoint_every": 250,
    "sample_every": 500,
    "sample_steps": None,
    "save_every": None,
    "compile": False,
    "min_images": None,
    "run_dir": None,
    "tensorboard": True,
    "gradient_checkpointing": None,
    "kind": "object",
    "vectors": 1,
    "lr": 5e-3,
    "lr_schedule": "constant",
    "lr_warmup_steps": 0,
    "seed": 0,
    "batch": 4,
    "weight_decay": 0.0,
    "flip": True,
    "templates": None,
    "tags": [],
    "captions": "off",
    "caption_extension": ".txt",
    "validation_prompts": [],
    "validation_negative": None,
    "validation_seed": 1000,
    "validation_guidance": 7.5,
    "clip_model": None,
}


@dataclass
class ConceptSpec:
    """One ``[[concept]]`` of a plan, with the top-level defaults filled in."""

    index: int  # 1-based position in the plan
    name: str
    images: list[Path]
    init: str | None  # None with init_from
    kind: str
    vectors: int
    lr: float | str
    lr_schedule: str
    lr_warmup_steps: int
    seed: int
    batch: int
    weight_decay: float
    flip: bool
    templates: str | None
    tags: list[str]
    description: str | None
    captions: str = "off"
    caption_extension: str = ".txt"
    validation_prompts: list[str] = field(default_factory=list)
    validation_negative: str | None = None
    validation_seed: int = 1000
    validation_guidance: float = 7.5
    clip_model: str | None = None
    init_from: str | None = None
    #: ``vectors`` set in the plan (with ``init_from``: else the entry's count)
    vectors_given: bool = True
    #: The checked output options (:func:`~conceptlib.trainer.outputs.check_outputs`),
    #: set by :func:`check_plan`.
    outputs: Any = None

    @property
    def label(self) -> str:
        return f"[[concept]] {self.index} ({self.name!r})"


@dataclass
class Plan:
    """A plan file, read and checked (:func:`read_plan`)."""

    path: Path
    sha256: str
    settings: dict[str, Any]
    concepts: list[ConceptSpec] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def share(self, rank: int, world_size: int) -> list[ConceptSpec]:
        """The concepts rank ``rank`` of ``world_size`` trains: round-robin in plan order."""
        return self.concepts[rank::world_size]


def _type_name(expected: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list of strings"}  # fmt: skip
    kinds = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(names[k] for k in kinds)


def _check_type(where: str, key: str, value: Any, expected: Any) -> Any:
    kinds = expected if isinstance(expected, tuple) else (expected,)
    ok = False
    for kind in kinds:
        if kind is bool:
            ok = ok or isinstance(value, bool)
        elif kind is int:
            ok = ok or (isinstance(value, int) and not isinstance(value, bool))
        elif kind is float:
            ok = ok or (isinstance(value, (int, float)) and not isinstance(value, bool))
        elif kind is list:
            ok = ok or (isinstance(value, list) and all(isinstance(v, str) for v in value))
        else:
            ok = ok or isinstance(value, kind)
    if not ok:
        raise UsageError(
            f"{where}: {key} is {type(value).__name__}; expected {_type_name(expected)}",
            plan_key=key,
        )
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _unsupported(where: str, keys: set[str]) -> None:
    for key in sorted(keys & set(UNSUPPORTED_KEYS)):
        raise UsageError(
            f"{where}: {key} is a train option a plan does not support yet: "
            f"{UNSUPPORTED_KEYS[key]}",
            hint=f"remove {key} from the plan, or train this concept alone with conceptlib train",
            plan_key=key,
        )


def _unknown(where: str, keys: set[str], allowed: set[str], note: str = "") -> None:
    unknown = sorted(keys - allowed)
    if unknown:
        shown = ", ".join(repr(k if len(k) <= 40 else k[:40] + "...") for k in unknown[:5])
        raise UsageError(
            f"{where}: unknown key(s) {shown}{note}; allowed: {', '.join(sorted(allowed))}",
            plan_key=unknown[0][:40],
        )


def read_plan(path: str | os.PathLike[str]) -> Plan:
    """Read the plan at ``path`` (at most :data:`MAX_PLAN_BYTES`) and check its structure.

    Relative image and template paths are taken from the plan file's folder. Values are
    checked for their type here; their ranges and names by :func:`check_concept`.

    Raises:
        NotFound: no such file (exit 6).
        UsageError: unreadable, too large, not TOML, unknown keys (the message lists the
            allowed ones), wrong types, no concepts, duplicate names (exit 2).
    """
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise NotFound(f"plan file {str(path)!r} does not exist", path=str(path))
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"plan {str(path)!r}: cannot read it ({exc.strerror})") from exc
    if len(data) > MAX_PLAN_BYTES:
        raise UsageError(
            f"plan {str(path)!r} is over {MAX_PLAN_BYTES // 1024} KiB; expected a TOML file "
            "of settings and [[concept]] tables"
        )
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UsageError(f"plan {str(path)!r} is not UTF-8 text") from exc
    except tomllib.TOMLDecodeError as exc:  # its message gives line and column, no content
        raise UsageError(f"plan {str(path)!r} is not valid TOML ({exc})") from exc
    where = f"plan {str(path)!r}"
    allowed = set(SHARED_KEYS) | set(CONCEPT_DEFAULT_KEYS) | {"concept"}
    _unsupported(where, set(doc))
    _unknown(where, set(doc), allowed)
    top: dict[str, Any] = {}
    for key, value in doc.items():
        if key != "concept":
            expected = SHARED_KEYS.get(key) or CONCEPT_DEFAULT_KEYS[key]
            top[key] = _check_type(where, key, value, expected)
    tables = doc.get("concept")
    if tables is None or tables == []:
        raise UsageError(
            f"{where} has no [[concept]] table; expected one per concept to train",
            hint="add [[concept]] tables with name, images and init",
        )
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise UsageError(f"{where}: concept must be [[concept]] tables", plan_key="concept")
    if len(tables) > MAX_PLAN_CONCEPTS:
        raise UsageError(f"{where} has {len(tables)} concepts; at most {MAX_PLAN_CONCEPTS}")
    folder = path.parent
    settings = {k: top.get(k, DEFAULTS[k]) for k in SHARED_KEYS}
    if settings["run_dir"] is not None:
        settings["run_dir"] = str(_relative(folder, settings["run_dir"]))
    if settings["base_config"] is not None and not Path(settings["base_config"]).is_absolute():
        local = _relative(folder, settings["base_config"])
        settings["base_config"] = str(local) if local.exists() else settings["base_config"]
    if settings["base"] and not Path(settings["base"]).is_absolute():
        local = _relative(folder, settings["base"])  # a folder or file next to the plan
        settings["base"] = str(local) if local.exists() else settings["base"]
    concepts = []
    for i, table in enumerate(tables, 1):
        label = f"{where}, [[concept]] {i}"
        if isinstance(table.get("name"), str):
            label += f" ({table['name']!r})"
        concept_keys = set(CONCEPT_DEFAULT_KEYS) | set(CONCEPT_ONLY_KEYS)
        _unsupported(label, set(table))
        _unknown(label, set(table), concept_keys,
                 note=" (base, steps, resolution... are shared: set them at the top)"
                 if set(table) & set(SHARED_KEYS) else "")  # fmt: skip
        values = {}
        for key, value in table.items():
            expected = CONCEPT_ONLY_KEYS.get(key) or CONCEPT_DEFAULT_KEYS[key]
            values[key] = _check_type(label, key, value, expected)
        for key in ("name", "images", "init"):
            if key not in values and not (key == "init" and "init_from" in values):
                raise UsageError(f"{label}: no {key}; a concept needs name, images and init "
                                 "(or init_from)", plan_key=key)  # fmt: skip
        images = values["images"]
        images = [images] if isinstance(images, str) else images
        if not images:
            raise UsageError(f"{label}: images is empty; expected files or folders",
                             plan_key="images")  # fmt: skip
        merged = {k: values.get(k, top.get(k, DEFAULTS[k])) for k in CONCEPT_DEFAULT_KEYS}
        merged["tags"] = list(dict.fromkeys([*top.get("tags", []), *values.get("tags", [])]))
        templates = merged["templates"]
        if templates is not None and templates not in ("object", "style"):
            merged["templates"] = str(_relative(folder, templates))
        clip = merged["clip_model"]
        if clip is not None and not Path(clip).is_absolute():  # a folder next to the plan
            local = _relative(folder, clip)
            merged["clip_model"] = str(local) if local.exists() else clip
        concepts.append(
            ConceptSpec(
                index=i,
                name=values["name"],
                init=values.get("init"),
                init_from=values.get("init_from"),
                images=[_relative(folder, p) for p in images],
                description=values.get("description"),
                vectors_given="vectors" in values or "vectors" in top,
                **merged,
            )  # fmt: skip
        )
    seen: dict[str, int] = {}
    for c in concepts:
        key = c.name.casefold()
        if key in seen:
            raise UsageError(
                f"{where}: [[concept]] {seen[key]} and {c.index} are both named {c.name!r}; "
                "each concept needs its own name",
                plan_key="name",
                concept=c.name,
            )
        seen[key] = c.index
    return Plan(path=path, sha256=hashlib.sha256(data).hexdigest(), settings=settings,
                concepts=concepts)  # fmt: skip


def _relative(folder: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else folder / p


@contextlib.contextmanager
def in_concept(plan: Plan, concept: ConceptSpec | None, key: str | None = None) -> Iterator[None]:
    """Errors raised inside name the plan file, the concept and the plan key."""
    try:
        yield
    except ConceptlibError as exc:
        where = f"plan {str(plan.path)!r}" + (f", {concept.label}" if concept else "")
        if key:
            where += f", {key}"
        if not exc.message.startswith(f"plan {str(plan.path)!r}"):
            exc.message = f"{where}: {exc.message}"
            exc.args = (exc.message,)
        if concept is not None:
            exc.facts.setdefault("concept", concept.name)
        if key:
            exc.facts.setdefault("plan_key", key)
        raise


def check_plan(plan: Plan) -> dict[str, Any]:
    """Check every value of ``plan`` the way ``train()`` checks its options (no files,
    models or catalog yet): names, initializers, numbers, learning-rate schedules,
    placeholder tokens that two concepts would share; captions, validation prompts,
    ``clip_model`` and ``init_from`` with ``train()``'s own checks.

    Returns:
        ``{name: LRSchedule}`` for the concepts, with their names normalised in place.
    """
    from conceptlib.trainer.captions import check_caption_options
    from conceptlib.trainer.init_from import check_start
    from conceptlib.trainer.loop import placeholder_tokens
    from conceptlib.trainer.outputs import check_outputs
    from conceptlib.trainer.steps import check_save_every
    from conceptlib.trainer.train import _check_options, _check_run_options

    s = plan.settings
    with in_concept(plan, None, "steps"):
        if s["steps"] < 1:
            raise UsageError(f"steps = {s['steps']}: expected at least 1")
    with in_concept(plan, None, "save_every"):
        check_save_every(s["save_every"], s["steps"])
    for key in ("checkpoint_every", "sample_every"):
        with in_concept(plan, None, key):
            if s[key] < 0:
                raise UsageError(f"{key} = {s[key]}: expected 0 (never) or more")
    for key in ("sample_steps", "min_images"):
        with in_concept(plan, None, key):
            if s[key] is not None and s[key] < 1:
                raise UsageError(f"{key} = {s[key]}: expected at least 1")
    with in_concept(plan, None, "resolution"):
        r = s["resolution"]
        if r is not None and (r % 8 or r < 16):
            raise UsageError(f"resolution = {r}: expected a multiple of 8, at least 16")
    schedules = {}
    owner: dict[str, str] = {}
    for c in plan.concepts:
        with in_concept(plan, c, "init"):
            check_start(c.init, c.init_from)
        with in_concept(plan, c):
            c.name = _check_options(c.name, c.init, c.vectors, s["steps"], c.lr, c.batch, c.kind)
            lr, schedule = _check_run_options(
                lr=c.lr, lr_schedule=c.lr_schedule, lr_warmup_steps=c.lr_warmup_steps,
                steps=s["steps"], prediction_type=s["prediction_type"],
                clip_skip=s["clip_skip"], weight_decay=c.weight_decay,
            )  # fmt: skip
            c.lr = lr
            schedules[c.name] = schedule
        with in_concept(plan, c, "captions"):
            check_caption_options(c.captions, c.caption_extension)
        with in_concept(plan, c):  # the message names the option (validation_*, clip_model)
            c.outputs = check_outputs(
                name=c.name, prompts=c.validation_prompts, negative=c.validation_negative,
                seed=c.validation_seed, guidance=c.validation_guidance,
                clip_model=c.clip_model, tensorboard=s["tensorboard"],
            )  # fmt: skip
        for token in placeholder_tokens(c.name, c.vectors):
            if token in owner:
                with in_concept(plan, c, "name"):
                    raise UsageError(
                        f"{c.name!r} and {owner[token]!r} would share the placeholder token "
                        f"{token!r} (names that differ only in punctuation or case)",
                        hint="give the concepts names that differ in letters or digits",
                    )
            owner[token] = c.name
    for c in plan.concepts:  # an initializer holding another concept's placeholder
        folded = (c.init or "").casefold()
        for token, other in owner.items():
            if other != c.name and token in folded:
                with in_concept(plan, c, "init"):
                    raise UsageError(
                        f"init {c.init!r} holds {token!r}, the placeholder token of "
                        f"{other!r}; expected existing word(s) to start the vectors from"
                    )
    return schedules

"""``--init-from NAME``: continue training a registered concept.

The entry's vectors become the run's starting rows (instead of ``--init`` words),
its vector count the run's, and its family must be the base model's. The run's
config records ``init_from`` (the entry's name) and ``init_from_sha256`` (its tensor
SHA-256; a resume must match it), and the new entry records the entry among its
``parents`` as a blend does (``{"tensor_sha256", "name", "weight": 1.0,
"relation": "init-from"}``), so ``show`` lists it.

Training under the entry's own name makes a new version, the rule
``--register-step`` and ``pull`` follow: the entry is kept as ``NAME@vN`` and the new
one is ``NAME`` with version N+1; its run folder defaults to ``runs/NAME@vN+1``, so
the earlier run's folder is left as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conceptlib.errors import FamilyMismatch, UsageError

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

#: The family of a base model by its tokenizers' embedding slots.
_SLOT_FAMILIES = {("clip_l",): "sd1", ("clip_h",): "sd2", ("clip_g", "clip_l"): "sdxl"}


@dataclass
class InitFrom:
    """The registered entry a run starts from."""

    info: EmbeddingInfo
    vectors: dict[str, Any]  # slot -> [n, d] float32 array
    #: The run trains under the entry's own name (a new version of it).
    same_name: bool = False

    def config(self) -> dict[str, Any]:
        return {"init_from": self.info.name, "init_from_sha256": self.info.tensor_sha256}

    def parent(self, name: str) -> dict[str, Any]:
        """The ``parents`` record of the new entry (``name``: the entry's name then)."""
        return {"tensor_sha256": self.info.tensor_sha256, "name": name, "weight": 1.0,
                "relation": "init-from"}  # fmt: skip


def load_init_from(
    library: Library, ref: str, *, init: str | None, vectors: int | None, name: str
) -> InitFrom:
    """Read the entry ``ref`` (name or trigger token) to start a run of ``name`` from.

    Raises:
        UsageError: (exit 2) ``init`` given too (one start only), or ``vectors`` that
            differs from the entry's vector count.
        NotFound: (exit 6) no such entry (with close names).
    """
    from conceptlib.schemas.names import name_key

    if init is not None and init.strip():
        raise UsageError(
            f"--init {init!r} and --init-from {ref!r} both give the starting vectors; pass one",
            hint=f"drop --init: the run starts from {ref!r}'s vectors",
        )
    info = library.resolve(ref)
    if vectors is not None and vectors != info.num_vectors:
        raise UsageError(
            f"--vectors {vectors}: --init-from {info.name!r} has {info.num_vectors} vectors "
            "per token, and the run continues those",
            hint="drop --vectors (it is taken from the entry)",
        )
    emb = library.load(info)
    vectors_ = {k: v.astype("float32") for k, v in emb.vectors.items()}
    return InitFrom(info, vectors_, same_name=name_key(name) == name_key(info.name))


def check_family(start: InitFrom, family: str, base: str) -> None:
    """Refuse an entry of another family than the base model's.

    Raises:
        FamilyMismatch: (exit 3) naming both families.
    """
    if start.info.family != family:
        raise FamilyMismatch(
            f"--init-from {start.info.name!r} is a {start.info.family} embedding; the base "
            f"model {base} is {family}: its vectors fit no text encoder of it",
            hint=f"train on a {start.info.family} base model, or start from --init words",
            families=sorted({start.info.family, family}),
        )


def family_of_slots(tokenizers: Sequence[tuple[str, Any]] | None) -> str | None:
    """The family of a base model from :func:`~conceptlib.models.base.base_tokenizers`'
    slots (``None`` when unknown before loading)."""
    if not tokenizers:
        return None
    return _SLOT_FAMILIES.get(tuple(sorted(slot for slot, _ in tokenizers)))


def check_start(init: str | None, init_from: str | None) -> None:
    """One of ``init`` (words) and ``init_from`` (an entry) gives the starting vectors.

    Raises:
        UsageError: (exit 2) neither (both is refused by :func:`load_init_from`).
    """
    if init is None and init_from is None:
        raise UsageError(
            "--init or --init-from is required: the words, or the registered entry, the "
            "vectors start from",
            hint="e.g. --init toy, or --init-from cat-toy to continue that concept",
        )
    if init_from is not None and not (isinstance(init_from, str) and init_from.strip()):
        raise UsageError("--init-from is empty; expected the name of a registered entry")


def init_config(start: InitFrom | None) -> dict[str, Any]:
    """The run-config keys of ``--init-from`` (``None`` values without it)."""
    return start.config() if start else {"init_from": None, "init_from_sha256": None}


def run_folder_name(name: str, start: InitFrom | None) -> str:
    """``name``, or ``name@vN+1`` for a new version of the entry ``start`` (its own
    run folder stays as it was)."""
    if start is not None and start.same_name:
        return f"{name}@v{start.info.version + 1}"
    return name


def check_loaded(start: InitFrom | None, bm: Any) -> None:
    """After the base model loads: its family and text-encoder widths fit the entry.

    Raises:
        FamilyMismatch: (exit 3) another family, or rows of another width (an entry
            trained on a built-in tiny model used on a real one of its family).
    """
    if start is None:
        return
    check_family(start, bm.family.value, bm.ref)
    for slot in bm.slots:
        rows = start.vectors.get(slot.slot)
        width = int(slot.encoder.get_input_embeddings().weight.shape[1])
        if rows is None or int(rows.shape[1]) != width:
            got = "none" if rows is None else f"{int(rows.shape[1])}-wide"
            raise FamilyMismatch(
                f"--init-from {start.info.name!r} has {got} {slot.slot} vectors; the base "
                f"model {bm.ref} takes {width}-wide ones",
                hint="train on the base model the entry was trained on, or start from --init",
                families=[start.info.family],
            )

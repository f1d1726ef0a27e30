"""Writing the layouts other tools load: A1111 ``.pt``/``.safetensors``, diffusers'
``learned_embeds.safetensors`` (and its SDXL companion), SDXL ``{clip_l, clip_g}``,
SD3/FLUX keyed by encoder (``clip_l``, ``clip_g``, and T5 as ``t5xxl`` or ``t5``),
InvokeAI's ``learned_embeds.bin`` folder; and placing written files on disk.

Layouts are those of ``reference/formats.md``; the A1111 ``.pt`` fields are the ones
A1111's ``EmbeddingDatabase`` writes and reads. Tokens written for a tokenizer (the
diffusers key) are in :func:`~conceptlib.schemas.names.tokenizer_form`.

Every writer is deterministic: the same vectors, format, name and token give the same
bytes on every run (safetensors headers with sorted keys and metadata; torch files as
a zip written here, with fixed timestamps and a fixed record order), so a file's
SHA-256 (A1111's ``TI hashes``, Civitai's AutoV2) can be computed before it is written.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from conceptlib.errors import AlreadyExists, UsageError
from conceptlib.registry.formats.embedding import Embedding
from conceptlib.registry.formats.safetensors_io import write_safetensors
from conceptlib.schemas.enums import Family
from conceptlib.schemas.names import invokeai_name, tokenizer_form, validate_name

__all__ = [
    "A1111_PT_RECORDS",
    "A1111_TOKEN_ID",
    "INVOKEAI_FILENAME",
    "T5_KEYS",
    "WRITE_FORMATS",
    "a1111_refused_records",
    "check_writable",
    "export_files",
    "export_layout",
    "place_files",
    "torch_zip",
    "write_embedding",
]

WRITE_FORMATS = ("a1111-pt", "safetensors", "diffusers", "sdxl", "invokeai")
#: The T5 slot's key in a written file: ``t5xxl`` (ComfyUI's name, the default) or
#: ``t5`` (OneTrainer's).
T5_KEYS = ("t5xxl", "t5")
#: Families whose files are keyed by text encoder; SD3 and FLUX go in ``safetensors`` only.
_ENCODER_KEYED = (Family.SDXL, Family.SD3, Family.FLUX)

#: The file InvokeAI's folder probe opens (``TextualInversionFolderProbe``) and the one
#: embedding file its Hub installer keeps from a repo (``select_hf_files.filter_files``).
INVOKEAI_FILENAME = "learned_embeds.bin"

#: The record names inside a torch zip that A1111's ``.pt`` safety check lets through
#: (stable-diffusion-webui ``modules/safe.py``, ``check_zip_filenames``, 1.x): under one
#: folder, ``data.pkl``, ``version`` and ``data/<digits>``. Some later versions also
#: allow ``byteorder`` and ``.data/serialization_id``; none allows the
#: ``.format_version`` and ``.storage_alignment`` records torch 2.x adds, so a plain
#: ``torch.save`` file is refused ("bad file inside ...").
A1111_PT_RECORDS = re.compile(r"^[^/]+/(data\.pkl|version|data/[0-9]+)$")

#: Records are aligned to this many bytes, as torch aligns them (for ``mmap=True`` loads).
_ZIP_ALIGN = 64
#: 1980-01-01 00:00 in MS-DOS date/time: the zip's one timestamp, for every record.
_DOS_DATE, _DOS_TIME = 0x21, 0

#: A1111 always keys its one term "*"; its token id is meaningless outside the
#: tokenizer it was trained with, so writers use the value A1111 itself writes.
A1111_TOKEN_ID = 265


def a1111_refused_records(data: bytes) -> list[str]:
    """The record names of the torch zip ``data`` that A1111's ``.pt`` check refuses.

    The rule is :data:`A1111_PT_RECORDS` (every record under one folder, exactly one
    ``data.pkl``). A legacy (non-zip) torch file has no records and passes.

    Returns:
        The refused names (empty: A1111 reads the file); ``["<not a zip>"]`` for bytes
        that start like a zip but cannot be opened as one.
    """
    import zipfile

    if data[:4] != b"PK\x03\x04":
        return []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return ["<not a zip>"]
    bad = [n for n in names if not A1111_PT_RECORDS.match(n)]
    folders = {n.split("/", 1)[0] for n in names}
    pickles = [n for n in names if n.endswith("/data.pkl")]
    if not bad and (len(folders) != 1 or len(pickles) != 1):
        bad = sorted(names)
    return bad


def _stored_zip(records: list[tuple[str, bytes]]) -> bytes:
    """A zip of ``records`` (name, bytes), stored uncompressed, in the given order, with
    one fixed timestamp, no attributes and every record's data aligned to
    :data:`_ZIP_ALIGN` bytes (padding in a local-header extra field with id ``FB``, as
    torch pads; the central directory has no extra fields)."""
    out = bytearray()
    central = bytearray()
    for name, data in records:
        raw = name.encode("ascii")
        crc = zlib.crc32(data) & 0xFFFFFFFF
        offset = len(out)
        pad = (-(offset + 30 + len(raw) + 4)) % _ZIP_ALIGN
        extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
        out += struct.pack(
            "<IHHHHHIIIHH",
            0x04034B50,  # local file header
            20,  # version needed to extract
            0,  # flags
            0,  # stored
            _DOS_TIME,
            _DOS_DATE,
            crc,
            len(data),
            len(data),
            len(raw),
            len(extra),
        )
        out += raw + extra + data
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII",
            0x02014B50,  # central directory header
            20,  # version made by (MS-DOS attributes: none set)
            20,
            0,
            0,
            _DOS_TIME,
            _DOS_DATE,
            crc,
            len(data),
            len(data),
            len(raw),
            0,  # extra
            0,  # comment
            0,  # disk
            0,  # internal attributes
            0,  # external attributes
            offset,
        )
        central += raw
    start = len(out)
    out += central
    out += struct.pack(
        "<IHHHHIIH", 0x06054B50, 0, 0, len(records), len(records), len(central), start, 0
    )
    return bytes(out)


def torch_zip(payload: Mapping[str, object]) -> bytes:
    """``payload`` (a dict of strings, numbers, None and CPU tensors) as a torch zip that
    ``torch.load(weights_only=True)`` reads and A1111's ``.pt`` check accepts.

    The pickle and tensor records are torch's own (``torch.save``); the zip around them
    is written here: folder ``archive``, records ``data.pkl``, ``data/<n>`` (in storage
    order) and ``version`` only (:data:`A1111_PT_RECORDS`: torch 2.x's
    ``.format_version``, ``.storage_alignment``, ``byteorder`` and
    ``.data/serialization_id`` are left out; without ``byteorder`` torch reads the
    data as little-endian, the order it was written in on every platform torch ships
    for), fixed timestamps, data aligned to 64 bytes. Deterministic: the same payload
    gives the same bytes.
    """
    import zipfile

    import torch

    buf = io.BytesIO()
    torch.save(dict(payload), buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        records = {info.filename.split("/", 1)[1]: zf.read(info) for info in zf.infolist()}
    storages = sorted(
        (k for k in records if k.startswith("data/") and k[5:].isdigit()), key=lambda k: int(k[5:])
    )
    ordered = [("archive/data.pkl", records["data.pkl"])]
    ordered += [(f"archive/{k}", records[k]) for k in storages]
    ordered.append(("archive/version", records.get("version", b"3\n")))
    return _stored_zip(ordered)


def _tensor(vectors: np.ndarray) -> object:
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(vectors, dtype="<f4")))


def _torch_save_a1111(vectors: np.ndarray, name: str) -> bytes:
    return torch_zip(
        {
            "string_to_token": {"*": A1111_TOKEN_ID},
            "string_to_param": {"*": _tensor(vectors)},
            "name": name,
            "step": 0,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
        }
    )


def _invokeai_bin(emb: Embedding) -> bytes:
    """InvokeAI's ``learned_embeds.bin``: a torch file InvokeAI's probe reads the right
    width from (``emb_params`` ``[n, d]``: ``shape[-1]``; SDXL ``clip_g`` ``[n, 1280]``
    plus ``clip_l``), where a diffusers ``{token: [n, d]}`` would be read as width ``n``."""
    vec = emb.vectors
    if emb.family == Family.SDXL:
        return torch_zip({"clip_g": _tensor(vec["clip_g"]), "clip_l": _tensor(vec["clip_l"])})
    return torch_zip({"emb_params": _tensor(next(iter(vec.values())))})


def check_writable(fmt: str, family: Family | str, *, what: str = "this embedding") -> None:
    """The one rule for which format an embedding of ``family`` can be written in.

    ``a1111-pt`` holds one text encoder's ``[n, d]`` (A1111's ``string_to_param``), so
    it cannot hold SDXL's two; ``sdxl`` (``{clip_l, clip_g}``) holds only SDXL.
    ``safetensors``, ``diffusers`` and ``invokeai`` take SD 1.x, SD 2.x and SDXL; SD3
    and FLUX (no UI loads their embeddings from another layout) take ``safetensors``
    only. ``export NAME --format a1111-pt`` and ``export --for-prompt ... --format a1111
    --pt`` both ask this.

    Raises:
        UsageError: an unknown format, or one the family cannot use (one message for
            every caller, naming ``what``).
    """
    if fmt not in WRITE_FORMATS:
        raise UsageError(
            f"unknown write format {fmt!r}; expected one of {', '.join(WRITE_FORMATS)}"
        )
    fam = Family(family)
    if fmt == "a1111-pt" and fam == Family.SDXL:
        raise UsageError(
            f"a1111-pt (.pt) holds one text encoder's vectors but {what} is SDXL "
            "(clip_l + clip_g); use the sdxl format: a .safetensors file, which A1111 reads",
            hint="export NAME --format sdxl, or export --for-prompt ... without --pt",
        )
    if fam in (Family.SD3, Family.FLUX) and fmt != "safetensors":
        raise UsageError(
            f"{what} is {fam.value}: its vectors are written keyed by text encoder "
            f"(clip_l, clip_g, t5xxl), which only the safetensors format holds, not {fmt}",
            hint="export NAME --format safetensors (add --t5-key t5 for OneTrainer)",
        )
    if fmt == "sdxl" and fam != Family.SDXL:
        raise UsageError(
            f"the sdxl format holds clip_l + clip_g but {what} is {fam.value}; use "
            "a1111-pt, safetensors or diffusers"
        )


def write_embedding(
    emb: Embedding, fmt: str, *, name: str, token: str, t5_key: str = "t5xxl"
) -> dict[str, bytes]:
    """Serialize ``emb`` in one of :data:`WRITE_FORMATS`.

    Args:
        emb: the embedding.
        fmt: ``a1111-pt`` (``{name}.pt``, SD 1.x/2.x), ``safetensors``
            (``{name}.safetensors``: ``emb_params``, or keyed by encoder for SDXL
            ``clip_l``/``clip_g``, SD3 ``clip_l``/``clip_g``/``t5xxl``, FLUX
            ``clip_l``/``t5xxl``; only the slots the embedding has),
            ``diffusers`` (``learned_embeds.safetensors`` ``{token: float32 [n, d]}``,
            plus ``learned_embeds_2.safetensors`` for SDXL, the layout of diffusers'
            training scripts), ``sdxl`` (SDXL only) or ``invokeai``
            (``learned_embeds.bin``: a torch file ``{emb_params: [n, d]}``, SDXL
            ``{clip_g, clip_l}``; see :func:`_invokeai_bin`). ``.pt`` and ``.bin`` files
            are :func:`torch_zip` files.
        name: the file stem and A1111 ``name`` field (validated as a name).
        token: the trigger token; the diffusers key is its
            :func:`~conceptlib.schemas.names.tokenizer_form` (``BadHand`` is written
            ``badhand``: CLIP's tokenizer lower-cases prompts before matching it).
        t5_key: the T5 slot's key, ``t5xxl`` (ComfyUI) or ``t5`` (OneTrainer).

    Returns:
        Relative file name -> bytes.

    Raises:
        UsageError: unknown format, empty token, or a format the family cannot use
            (:func:`check_writable`).
        InvalidName: a name that cannot be a file name.
    """
    if fmt not in WRITE_FORMATS:
        raise UsageError(
            f"unknown write format {fmt!r}; expected one of {', '.join(WRITE_FORMATS)}"
        )
    stem = validate_name(name)
    if t5_key not in T5_KEYS:
        raise UsageError(f"T5 key {t5_key!r}; expected one of {', '.join(T5_KEYS)}")
    if not token or not token.strip() or any(ord(c) < 32 for c in token):
        raise UsageError(
            f"token {token!r} is empty or has control characters; expected a trigger token"
        )
    family = emb.family
    check_writable(fmt, family, what=repr(stem))
    vec = emb.vectors
    if fmt == "a1111-pt":
        return {f"{stem}.pt": _torch_save_a1111(next(iter(vec.values())), stem)}
    if fmt == "invokeai":
        return {INVOKEAI_FILENAME: _invokeai_bin(emb)}
    if fmt == "safetensors":
        if family in _ENCODER_KEYED:
            tensors = {(t5_key if k == "t5xxl" else k): v for k, v in vec.items()}
        else:
            tensors = {"emb_params": next(iter(vec.values()))}
        return {f"{stem}.safetensors": write_safetensors(tensors)}
    if fmt == "diffusers":
        key = tokenizer_form(token)
        meta = {"format": "pt"}
        if family == Family.SDXL:
            return {
                "learned_embeds.safetensors": write_safetensors({key: vec["clip_l"]}, meta),
                "learned_embeds_2.safetensors": write_safetensors({key: vec["clip_g"]}, meta),
            }
        return {
            "learned_embeds.safetensors": write_safetensors({key: next(iter(vec.values()))}, meta)
        }
    # fmt == "sdxl"
    return {
        f"{stem}.safetensors": write_safetensors({"clip_l": vec["clip_l"], "clip_g": vec["clip_g"]})
    }


def export_files(emb: Embedding, fmt: str, *, name: str, token: str) -> dict[str, bytes]:
    """The files ``export NAME --format FMT`` writes into a folder, named after the entry.

    As :func:`write_embedding`, except ``diffusers``: one ``{name}.safetensors``
    (``{token: [n, d]}``; ``load_textual_inversion`` takes any file name), or for SDXL
    the pair in a folder of its own, ``{name}/learned_embeds.safetensors`` and
    ``{name}/learned_embeds_2.safetensors`` (the diffusers SDXL script's names, which
    importers pair up); and ``invokeai``: the folder InvokeAI installs,
    ``{name}/learned_embeds.bin``. Two entries exported into one folder never share a
    file.
    """
    return export_layout(write_embedding(emb, fmt, name=name, token=token), fmt, name=name)


def export_layout(files: Mapping[str, bytes], fmt: str, *, name: str) -> dict[str, bytes]:
    """:func:`write_embedding`'s ``files`` under the names :func:`export_files` gives them."""
    stem = validate_name(name)
    if fmt == "invokeai":  # InvokeAI names the model after the folder: one it can trigger
        return {f"{invokeai_name(stem)}/{rel}": data for rel, data in files.items()}
    if fmt == "diffusers" and len(files) > 1:
        return {f"{stem}/{rel}": data for rel, data in files.items()}
    if fmt == "diffusers":
        return {f"{stem}.safetensors": next(iter(files.values()))}
    return dict(files)


def place_files(targets: Mapping[Path, bytes], *, overwrite: bool = False) -> list[Path]:
    """Write ``targets`` (path -> bytes) atomically; check every path before writing any.

    A path that already holds exactly these bytes is left as it is (exporting twice is
    not an error). A path holding anything else is refused unless ``overwrite``. Only
    the existing file's size is read first, and its bytes only when the size matches.

    Returns:
        Every target path, in order (also those left as they were).

    Raises:
        AlreadyExists: (exit 5) a target exists with other contents, or is a folder;
            nothing was written.
        UsageError: (exit 2) an existing file stands where a target's folder would be
            (``export -o some-file`` for a layout that writes a folder); nothing was
            written.
        StoreError / DiskFull: writing failed (no partial file is left).
    """
    from conceptlib.registry.store import atomic_write

    pending: dict[Path, bytes] = {}
    for path, data in targets.items():
        blocker = _file_in_the_way(path)
        if blocker is not None:
            raise UsageError(
                f"{blocker} is a file, so {path} cannot be written under it; expected a "
                "folder there",
                hint="give -o a folder (or a new path), not an existing file",
                path=str(blocker),
            )
        if not os.path.lexists(path):
            pending[path] = data
            continue
        if _holds(path, data):
            continue
        if path.is_dir() or not overwrite:
            raise AlreadyExists(
                f"{path} already exists"
                + (" and is a folder" if path.is_dir() else " with other contents"),
                existing=str(path),
                hint=None if path.is_dir() else "pass --overwrite to replace it",
            )
        pending[path] = data
    for path, data in pending.items():
        atomic_write(path, data)
    return list(targets)


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (writing would
    end in ``FileExistsError``/``NotADirectoryError``), else None."""
    for parent in path.parents:
        if os.path.lexists(parent):
            return None if parent.is_dir() else parent
    return None


def _holds(path: Path, data: bytes) -> bool:
    """Whether the regular file at ``path`` holds exactly ``data``."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size != len(data):
            return False
        with path.open("rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False

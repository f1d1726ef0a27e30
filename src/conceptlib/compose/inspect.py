"""Which embeddings an image was made with: read a PNG's generation metadata and
resolve every embedding it names to catalog entries (``conceptlib which``, and
``compose --from``).

Metadata read (PNG text chunks: ``tEXt``, ``zTXt``, ``iTXt``):

* ``parameters``: A1111 / Forge infotext (:func:`conceptlib.compose.ui.a1111.parse_infotext`):
  the prompt, ``Negative prompt:``, ``Seed``, ``Steps``, ``CFG scale``, ``TI hashes``
  (``name: hash, ...``, the first 12 hex of the embedding file's SHA-256, A1111's
  ``modules/hashes.py``) and ``Hashes`` (a JSON object, Civitai's convention, with
  ``embed:NAME`` keys). Bare words of the prompt that are catalog names are embeddings
  too (A1111 triggers by file name).
* ``prompt`` (ComfyUI's API graph, ``{node id: {class_type, inputs}}``) and ``workflow``
  (its editor graph, ``{"nodes": [{type, widgets_values}]}``): the text of every
  ``CLIPTextEncode`` node and its ``embedding:NAME`` words; a sampler's ``positive`` /
  ``negative`` inputs say which text is which, its ``seed``, ``steps``, ``cfg`` the rest.
* ``invokeai_metadata`` (InvokeAI 3+): ``positive_prompt``, ``negative_prompt``,
  ``seed``, ``steps``, ``cfg_scale``; embeddings are ``<NAME>`` (compel).
* ``conceptlib``: our own record (JSON): the prompts in conceptlib's syntax and each
  embedding's ``tensor_sha256`` and ``file_sha256``.

A hash resolves against every entry's file SHA-256 (full, A1111's 12 hex, Civitai's
AutoV2: 10 hex in upper case), its tensor SHA-256 and the SHA-256 of the file
``export --format a1111`` writes (what ``compose`` puts in ``TI hashes``); a name with no
hash resolves by catalog name or trigger token. Missing embeddings list where they may
come from: the Hub repos recorded for an entry of that name (``hub_sync``,
``source_ref``).

The image is untrusted: it is read up to :data:`MAX_IMAGE_BYTES`, its text chunks up
to :data:`MAX_TEXT_BYTES` in all (compressed ones inflated with that cap), JSON nested
at most :data:`MAX_JSON_DEPTH` deep; callers escape every string before printing.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptlib.errors import CorruptFile, FileTooLarge, UnsupportedContent
from conceptlib.schemas.names import name_key

if TYPE_CHECKING:
    from conceptlib.registry.library import Library
    from conceptlib.schemas.records import EmbeddingInfo

#: The largest image file read.
MAX_IMAGE_BYTES = 256 * 1024 * 1024
#: The most metadata text read from one image (all chunks, after inflating).
MAX_TEXT_BYTES = 8 * 1024 * 1024
#: The deepest JSON nesting accepted in a metadata chunk.
MAX_JSON_DEPTH = 64
#: The text chunks read (others are skipped).
KEYS = ("parameters", "prompt", "workflow", "invokeai_metadata", "conceptlib")

_HEX = re.compile(r"[0-9a-fA-F]{10,64}")


@dataclass
class NamedEmbedding:
    """One embedding an image names.

    Attributes:
        name: the name as the image gives it (``None``: a hash only).
        hash: the hash as the image gives it (hex), if any.
        where: where it was found (``TI hashes``, ``Hashes``, ``prompt``,
            ``negative prompt``, ``comfyui``, ``invokeai``, ``conceptlib``).
        entry: the catalog entry it resolved to, or ``None`` (missing).
        matched_by: ``hash`` or ``name``.
        note: why it did not resolve (a different version of that name is local...).
        sources: Hub repos recorded in the catalog for that name, where it may come from.
    """

    name: str | None
    hash: str | None
    where: str
    entry: str | None = None
    matched_by: str | None = None
    note: str | None = None
    sources: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ImageMetadata:
    """What an image says about how it was made.

    Attributes:
        path: the image.
        generators: the metadata found (``a1111``, ``comfyui``, ``invokeai``, ``conceptlib``).
        prompt, negative: the prompts as written; ``syntax`` says in which syntax.
        seed, steps, guidance: the generation settings, where the image gives them.
        clip_skip: A1111's ``Clip skip`` (absent from the infotext when 1).
        embeddings: each embedding named, resolved or not.
    """

    path: str
    generators: list[str] = field(default_factory=list)
    prompt: str | None = None
    negative: str | None = None
    syntax: str = "auto"
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    clip_skip: int | None = None
    embeddings: list[NamedEmbedding] = field(default_factory=list)

    @property
    def missing(self) -> list[NamedEmbedding]:
        return [e for e in self.embeddings if e.entry is None]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "embeddings"}
        out["embeddings"] = [e.to_dict() for e in self.embeddings]
        out["missing"] = [e.name or e.hash for e in self.missing]
        return out


# --------------------------------------------------------------------------- reading


def read_text_chunks(data: bytes, *, path: str | None = None) -> dict[str, str]:
    """The text chunks of a PNG named in :data:`KEYS` (first of each), decoded.

    Raises:
        UnsupportedContent: not a PNG.
        CorruptFile: a malformed chunk.
        FileTooLarge: more than :data:`MAX_TEXT_BYTES` of text.
    """
    from conceptlib.registry.formats.png_embed import is_png, iter_png_chunks

    if not is_png(data):
        raise UnsupportedContent("not a PNG image; expected a .png with text chunks", path=path)
    out: dict[str, str] = {}
    budget = MAX_TEXT_BYTES
    for ctype, body in iter_png_chunks(data, path=path):
        if ctype not in (b"tEXt", b"zTXt", b"iTXt"):
            continue
        key_raw, sep, rest = body.partition(b"\x00")
        key = key_raw.decode("latin-1")
        if not sep or key not in KEYS or key in out:
            continue
        raw, encoding = _chunk_text(ctype, rest, budget, key, path)
        budget -= len(raw)
        if budget < 0:
            raise FileTooLarge(f"the image's metadata is over {MAX_TEXT_BYTES} bytes", path=path)
        out[key] = raw.decode(encoding, errors="replace")
    return out


def _chunk_text(
    ctype: bytes, rest: bytes, limit: int, key: str, path: str | None
) -> tuple[bytes, str]:
    if ctype == b"tEXt":
        return rest[: limit + 1], "latin-1"
    if ctype == b"zTXt":
        return _inflate(rest[1:], limit, key, path), "latin-1"
    if len(rest) < 2:
        raise CorruptFile(f"PNG iTXt chunk {key!r} is truncated", path=path)
    flag = rest[0]
    parts = rest[2:].split(b"\x00", 2)
    if len(parts) != 3:
        raise CorruptFile(f"PNG iTXt chunk {key!r} is malformed", path=path)
    text = _inflate(parts[2], limit, key, path) if flag else parts[2]
    return text, "utf-8"


def _inflate(blob: bytes, limit: int, key: str, path: str | None) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(blob, limit + 1)
    except zlib.error:
        raise CorruptFile(f"PNG text chunk {key!r} is not valid zlib data", path=path) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise FileTooLarge(f"the image's metadata is over {MAX_TEXT_BYTES} bytes", path=path)
    return out


def _json(text: str, what: str, path: str | None) -> Any:
    """``text`` as JSON, or ``None`` when it is not JSON or nests too deeply."""
    depth = cur = 0
    in_str = esc = False
    for ch in text:  # depth check before parsing (json.loads recurses)
        if in_str:
            esc = not esc and ch == "\\"
            if ch == '"' and not esc:
                in_str = False
            continue
        if ch == '"':
            in_str, esc = True, False
        elif ch in "[{":
            cur += 1
            depth = max(depth, cur)
            if depth > MAX_JSON_DEPTH:
                return None
        elif ch in "]}":
            cur -= 1
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _int(value: Any) -> int | None:
    try:
        v = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return v if 0 <= v < 2**64 else None


def _float(value: Any) -> float | None:
    try:
        v = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return v if v == v and abs(v) < 1e6 else None


def _a1111(meta: ImageMetadata, text: str) -> None:
    from conceptlib.compose.ui.a1111 import parse_infotext

    info = parse_infotext(text)
    meta.generators.append("a1111")
    meta.prompt, meta.negative, meta.syntax = info["prompt"], info["negative"], "a1111"
    params = info["params"]
    meta.seed, meta.steps = _int(params.get("Seed")), _int(params.get("Steps"))
    meta.guidance = _float(params.get("CFG scale"))
    meta.clip_skip = _int(params.get("Clip skip"))
    for item in str(params.get("TI hashes", "")).split(","):
        name, sep, value = item.rpartition(":")
        if sep and name.strip():
            meta.embeddings.append(NamedEmbedding(name.strip(), value.strip(), "TI hashes"))
    hashes = _json(str(params.get("Hashes", "")), "Hashes", None)
    if isinstance(hashes, dict):
        for key, value in hashes.items():
            if isinstance(key, str) and key.startswith("embed:") and isinstance(value, str):
                meta.embeddings.append(NamedEmbedding(key[6:].strip(), value.strip(), "Hashes"))


def _comfy_texts(graph: Any) -> tuple[list[str], str | None, str | None, dict[str, Any]]:
    """ComfyUI API graph: every CLIPTextEncode text, the positive and negative text, and
    the sampler's inputs."""
    texts: dict[str, str] = {}
    sampler: dict[str, Any] = {}
    for node_id, node in graph.items():
        if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
            continue
        kind = str(node.get("class_type", ""))
        inputs = node["inputs"]
        if kind.startswith("CLIPTextEncode"):
            for key in ("text", "text_g", "text_l"):
                if isinstance(inputs.get(key), str):
                    texts[str(node_id)] = inputs[key]
                    break
        elif "positive" in inputs and not sampler:
            sampler = inputs

    def linked(key: str) -> str | None:
        link = sampler.get(key)
        if isinstance(link, list) and link:
            return texts.get(str(link[0]))
        return None

    return list(texts.values()), linked("positive"), linked("negative"), sampler


def _comfyui(meta: ImageMetadata, chunks: dict[str, str], path: str | None) -> None:
    from conceptlib.compose.ui.comfyui import read_prompt

    texts: list[str] = []
    graph = _json(chunks.get("prompt", ""), "prompt", path)
    if isinstance(graph, dict):
        texts, pos, neg, sampler = _comfy_texts(graph)
        meta.prompt, meta.negative = pos, neg
        meta.seed = _int(sampler.get("seed", sampler.get("noise_seed")))
        meta.steps, meta.guidance = _int(sampler.get("steps")), _float(sampler.get("cfg"))
    workflow = _json(chunks.get("workflow", ""), "workflow", path)
    if not texts and isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
        for node in workflow["nodes"]:
            if isinstance(node, dict) and str(node.get("type", "")).startswith("CLIPTextEncode"):
                values = node.get("widgets_values")
                if isinstance(values, list) and values and isinstance(values[0], str):
                    texts.append(values[0])
    if not texts:
        return
    meta.generators.append("comfyui")
    meta.syntax = "comfyui"
    if meta.prompt is None and texts:
        meta.prompt = texts[0]
    seen: set[str] = set()
    for text in texts:
        try:
            parsed = read_prompt(text)
        except Exception:  # noqa: BLE001 - a prompt we cannot read names nothing we can use
            continue
        for ref in parsed.refs:
            if ref.name not in seen:
                seen.add(ref.name)
                meta.embeddings.append(NamedEmbedding(ref.name, None, "comfyui"))


def _invokeai(meta: ImageMetadata, text: str, path: str | None) -> None:
    from conceptlib.compose.ui.invokeai import read_prompt

    data = _json(text, "invokeai_metadata", path)
    if not isinstance(data, dict):
        return
    meta.generators.append("invokeai")
    pos, neg = data.get("positive_prompt"), data.get("negative_prompt")
    meta.prompt = pos if isinstance(pos, str) else None
    meta.negative = neg if isinstance(neg, str) else None
    meta.syntax = "invokeai"
    meta.seed, meta.steps = _int(data.get("seed")), _int(data.get("steps"))
    meta.guidance = _float(data.get("cfg_scale"))
    for which, text_ in (("prompt", meta.prompt), ("negative prompt", meta.negative)):
        if not text_:
            continue
        try:
            parsed = read_prompt(text_, which=which)
        except Exception:  # noqa: BLE001
            continue
        for ref in parsed.refs:
            meta.embeddings.append(NamedEmbedding(ref.name, None, "invokeai"))


def _conceptlib(meta: ImageMetadata, text: str, path: str | None) -> None:
    data = _json(text, "conceptlib", path)
    if not isinstance(data, dict):
        return
    meta.generators.append("conceptlib")
    pos, neg = data.get("prompt"), data.get("negative")
    if isinstance(pos, str):  # our own record wins: conceptlib's syntax, exact weights
        meta.prompt, meta.syntax = pos, "conceptlib"
        meta.negative = neg if isinstance(neg, str) else None
    meta.seed = _int(data.get("seed")) if data.get("seed") is not None else meta.seed
    meta.steps = _int(data.get("steps")) if data.get("steps") is not None else meta.steps
    if data.get("guidance") is not None:
        meta.guidance = _float(data.get("guidance"))
    embs = data.get("embeddings")
    if isinstance(embs, list):
        meta.embeddings = [e for e in meta.embeddings if e.where not in ("TI hashes", "Hashes")]
        for e in embs:
            if isinstance(e, dict) and isinstance(e.get("name"), str):
                sha = e.get("tensor_sha256")
                meta.embeddings.append(
                    NamedEmbedding(e["name"], sha if isinstance(sha, str) else None, "conceptlib")
                )


def read_image(path: str | os.PathLike[str]) -> ImageMetadata:
    """The generation metadata of the PNG at ``path`` (nothing resolved yet).

    Raises:
        ImageNotFound: no such file.
        FileTooLarge: a file over :data:`MAX_IMAGE_BYTES`, or too much metadata.
        UnsupportedContent: not a PNG, or a PNG with no generation metadata.
        CorruptFile: a malformed PNG.
    """
    from conceptlib.errors import ImageNotFound

    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = fh.read(MAX_IMAGE_BYTES + 1)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ImageNotFound(f"no image file {str(p)!r}", path=str(p)) from None
    if len(data) > MAX_IMAGE_BYTES:
        raise FileTooLarge(f"image is over {MAX_IMAGE_BYTES} bytes", path=str(p))
    chunks = read_text_chunks(data, path=str(p))
    meta = ImageMetadata(path=str(p))
    if "parameters" in chunks:
        _a1111(meta, chunks["parameters"])
    if "prompt" in chunks or "workflow" in chunks:
        _comfyui(meta, chunks, str(p))
    if "invokeai_metadata" in chunks:
        _invokeai(meta, chunks["invokeai_metadata"], str(p))
    if "conceptlib" in chunks:
        _conceptlib(meta, chunks["conceptlib"], str(p))
    if not meta.generators:
        raise UnsupportedContent(
            "the image holds no generation metadata (A1111 parameters, ComfyUI prompt or "
            "workflow, invokeai_metadata, conceptlib)",
            path=str(p),
        )
    return meta


# --------------------------------------------------------------------------- resolving


def _hash_index(infos: list[EmbeddingInfo]) -> dict[str, EmbeddingInfo]:
    index: dict[str, EmbeddingInfo] = {}
    for info in infos:
        for h in (info.file_sha256, info.file_sha256[:12], info.file_sha256[:10]):
            index.setdefault(h.lower(), info)
        index.setdefault(info.tensor_sha256.lower(), info)
    return index


def resolve_image(library: Library, meta: ImageMetadata) -> ImageMetadata:
    """Resolve every embedding ``meta`` names (in place; returned).

    Bare words of an A1111 prompt that are catalog names are added first. A hash
    resolves by hash only (a local entry of that name with another hash is a
    different version: missing, with a note); a name alone resolves by name or token.
    """
    from conceptlib.compose.export import ui_file_sha256
    from conceptlib.errors import ConceptlibError

    infos = library.list()
    index = _hash_index(infos)
    exported: dict[str, EmbeddingInfo] | None = None
    if meta.syntax == "a1111":
        named = {name_key(e.name) for e in meta.embeddings if e.name}
        keys = {name_key(i.name): i for i in infos}
        for which, text in (("prompt", meta.prompt), ("negative prompt", meta.negative)):
            for word in re.findall(r"[^\s,;|()\[\]:]+", text or ""):
                key = name_key(word.rstrip(".!?'\""))
                if key in keys and key not in named:
                    named.add(key)
                    meta.embeddings.append(NamedEmbedding(keys[key].name, None, which))
    for e in meta.embeddings:
        try:
            local = library.find(e.name) if e.name else None
        except ConceptlibError:  # a name no entry can have (from an untrusted image)
            local = None
        if e.hash:
            h = e.hash.strip().lower()
            info = index.get(h) if _HEX.fullmatch(h) else None
            if info is None and _HEX.fullmatch(h):
                if exported is None:
                    exported = {}
                    for i in infos:
                        try:
                            full = ui_file_sha256(library, i, "a1111")
                        except ConceptlibError:
                            continue
                        exported.setdefault(full, i)
                        exported.setdefault(full[:12], i)
                        exported.setdefault(full[:10], i)
                info = exported.get(h)
            if info is not None:
                e.entry, e.matched_by = info.name, "hash"
            elif local is not None:
                e.note = f"the local {local.name!r} has another hash (a different version)"
        elif e.name:
            try:
                e.entry, e.matched_by = library.resolve(e.name).name, "name"
            except ConceptlibError:  # not found, or a name no entry can have
                e.entry = None
        if e.entry is None and local is not None:
            e.sources = _sources(library, local)
    return meta


def _sources(library: Library, info: EmbeddingInfo) -> list[str]:
    out = [s.repo_id for s in library.syncs(info.name)]
    if info.source_ref and info.source == "hub" and info.source_ref not in out:
        out.append(info.source_ref)
    return list(dict.fromkeys(out))


def which(library: Library, paths: list[str | os.PathLike[str]]) -> list[ImageMetadata]:
    """Read and resolve each image (see the module docstring).

    Raises:
        ImageNotFound, FileTooLarge, UnsupportedContent, CorruptFile: as :func:`read_image`.
    """
    return [resolve_image(library, read_image(p)) for p in paths]


def rerun_settings(library: Library, path: str | os.PathLike[str]) -> ImageMetadata:
    """What ``compose --from IMAGE`` reruns: the image's prompt, negative prompt, syntax,
    seed, steps and guidance, with every embedding it names resolved to a local entry.

    Raises:
        (those of :func:`read_image`)
        UsageError: the image holds no prompt to rerun.
        UnknownEmbedding: an embedding the image names has no local entry, or its local
            entry answers to another name than the prompt uses (the prompt would then
            read that name as plain text, silently); the message lists them and where
            they could come from.
    """
    from conceptlib.errors import UnknownEmbedding, UsageError

    meta = resolve_image(library, read_image(path))
    if not meta.prompt:
        raise UsageError(
            f"{meta.path} holds generation metadata but no prompt to rerun",
            hint="give the prompt as the argument",
        )
    problems = []
    for e in meta.embeddings:
        label = e.name or (e.hash or "?")[:12]
        if e.entry is None:
            where = f" (it could come from {', '.join(e.sources)})" if e.sources else ""
            problems.append(f"{label!r} is not in the catalog{where}")
            continue
        if e.name is None:
            continue
        try:
            by_name = library.resolve(e.name).name
        except Exception:  # noqa: BLE001 - an untrusted name that is no handle
            by_name = None
        if by_name != e.entry:
            problems.append(f"{label!r} is the local entry {e.entry!r}, under another name")
    if problems:
        raise UnknownEmbedding(
            f"cannot rerun {meta.path}: " + "; ".join(problems),
            hint="pull or import what is missing (conceptlib which IMAGE lists it), or "
            "rename the local entry to the name the prompt uses",
        )
    return meta

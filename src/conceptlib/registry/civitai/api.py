"""Civitai's REST API replies, checked and turned into plain facts.

Shapes (Civitai's public REST API, ``/api/v1``):

- ``GET /api/v1/model-versions/by-hash/{hash}`` and ``GET /api/v1/model-versions/{id}``:
  one model version: ``id``, ``modelId``, ``name``, ``baseModel``, ``trainedWords``,
  ``description`` (HTML), ``model`` (``name``, ``type``, ``nsfw``), ``files[]``
  (``name``, ``sizeKB``, ``type``, ``primary``, ``hashes`` {``SHA256``, ``AutoV2``...},
  ``downloadUrl``) and ``images[]`` (``url``, ``type``, ``nsfwLevel``...).
- ``GET /api/v1/models/{id}``: the model: ``name``, ``description`` (HTML), ``type``,
  ``tags`` (text), ``allowNoCredit``, ``allowCommercialUse``, ``allowDerivatives``,
  ``allowDifferentLicense``, ``creator.username``.

The AIR (AI Resource Name, Civitai's resource URN) is
``urn:air:{ecosystem}:{type}:civitai:{modelId}@{versionId}``.

Every text taken from a reply is cut to a size, stripped of HTML and control
characters here: nothing later renders or trusts it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

from conceptlib.errors import CivitaiBadReply, UsageError

#: Longest one-line text kept from a reply (names, base model, tags, trained words).
MAX_LINE = 200
#: Longest description kept (characters, after HTML is stripped).
MAX_DESCRIPTION = 10_000
MAX_WORDS = 50
MAX_TAGS = 50
MAX_FILES = 100
MAX_IMAGES = 100
#: Largest id Civitai could hand out (ids are positive 53-bit-safe integers).
MAX_ID = 2**53

#: Civitai's model type of textual-inversion embeddings, and its AIR type.
EMBEDDING_TYPE = "TextualInversion"
_AIR_TYPES = {
    "textualinversion": "embedding",
    "lora": "lora",
    "locon": "lycoris",
    "checkpoint": "checkpoint",
    "hypernetwork": "hypernet",
    "vae": "vae",
    "controlnet": "controlnet",
}
_AIR = re.compile(
    r"^urn:air:(?P<eco>[a-z0-9_.-]{1,32}):(?P<type>[a-z0-9_.-]{1,32}):civitai:"
    r"(?P<model>\d{1,16})(?:@(?P<version>\d{1,16}))?$"
)
_VERSION_SPEC = re.compile(r"^civitai:(?P<version>\d{1,16})$")


def is_civitai_spec(spec: str) -> bool:
    """Whether ``pull`` should read ``spec`` as a Civitai reference (``civitai:`` or ``urn:air:``)."""
    low = spec.strip().lower()
    return low.startswith("civitai:") or low.startswith("urn:air:")


def parse_spec(spec: str) -> tuple[int | None, int | None]:
    """``civitai:VERSION_ID`` or ``urn:air:ECO:TYPE:civitai:MODEL[@VERSION]`` as
    ``(model_id, version_id)`` (one of them may be ``None``).

    Raises:
        UsageError: anything else (the spec is repeated with control characters escaped).
    """
    text = spec.strip()
    m = _VERSION_SPEC.match(text.lower())
    if m:
        return None, _checked_id(int(m["version"]), spec)
    m = _AIR.match(text.lower())
    if m:
        version = _checked_id(int(m["version"]), spec) if m["version"] else None
        return _checked_id(int(m["model"]), spec), version
    raise UsageError(
        f"not a Civitai reference: {spec[:120]!r}",
        hint="expected civitai:VERSION_ID or urn:air:sd1:embedding:civitai:MODEL@VERSION",
    )


def _checked_id(value: int, spec: str) -> int:
    if not 0 < value < MAX_ID:
        raise UsageError(f"not a Civitai id: {spec[:120]!r}")
    return value


def clean_text(value: Any, limit: int = MAX_LINE, *, multiline: bool = False) -> str | None:
    """Text from a reply made safe to keep: HTML tags removed (never rendered), entities
    decoded, control characters dropped, whitespace folded and cut to ``limit``."""
    import html

    from conceptlib.registry.folders import _strip_html

    if not isinstance(value, str) or not value.strip():
        return None
    text = value[: limit * 4]
    if multiline:
        text = re.sub(r"(?i)<\s*(br|/p|/li|/h[1-6])\s*/?>", "\n", text)
        text = "\n".join(_strip_html(line) for line in text.splitlines())
    else:
        text = _strip_html(text)
    text = html.unescape(text)
    keep = "\n" if multiline else ""
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf") or ch in keep)
    text = re.sub(r"\n{3,}", "\n\n", unicodedata.normalize("NFC", text)).strip()
    if not multiline:
        text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text or None


def _int(d: dict[str, Any], key: str, what: str, *, required: bool = True) -> int | None:
    value = d.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < MAX_ID:
        raise CivitaiBadReply(f"{what}: {key!r} is not a Civitai id")
    return value


def _list(d: dict[str, Any], key: str, what: str, cap: int) -> list[Any]:
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise CivitaiBadReply(f"{what}: {key!r} is {type(value).__name__}, expected a list")
    return value[:cap]


def _obj(d: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CivitaiBadReply(f"{what}: {key!r} is {type(value).__name__}, expected an object")
    return value


def ecosystem(base_model: str | None) -> str:
    """The AIR ecosystem of a Civitai ``baseModel`` (``SD 1.5`` -> ``sd1``, ``SDXL 1.0``
    -> ``sdxl``, ``Pony`` -> ``sdxl``); other names lower-cased without spaces."""
    b = (base_model or "").strip().lower()
    if b.startswith("sd 1"):
        return "sd1"
    if b.startswith("sd 2"):
        return "sd2"
    if b.startswith("sdxl") or b in ("pony", "illustrious", "noobai"):
        return "sdxl"
    if b.startswith("flux.1") or b.startswith("flux"):
        return "flux1"
    return re.sub(r"[^a-z0-9]+", "", b)[:32] or "unknown"


def air_of(base_model: str | None, model_type: str | None, model_id: int, version_id: int) -> str:
    """``urn:air:{ecosystem}:{type}:civitai:{modelId}@{versionId}``."""
    kind = _AIR_TYPES.get((model_type or "").strip().lower(), "embedding")
    return f"urn:air:{ecosystem(base_model)}:{kind}:civitai:{model_id}@{version_id}"


@dataclass
class CivitaiFile:
    """One file of a model version as the API lists it."""

    name: str
    sha256: str | None
    autov2: str | None
    size_kb: float | None
    type: str | None
    primary: bool
    download_url: str | None


@dataclass
class CivitaiVersion:
    """The facts of one model version (and, when read, its model), cleaned."""

    version_id: int
    model_id: int
    version_name: str | None = None
    model_name: str | None = None
    model_type: str | None = None
    base_model: str | None = None
    trained_words: list[str] = field(default_factory=list)
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    nsfw: bool | None = None
    creator: str | None = None
    license: dict[str, Any] = field(default_factory=dict)
    files: list[CivitaiFile] = field(default_factory=list)
    image_urls: list[str] = field(default_factory=list)

    @property
    def air(self) -> str:
        return air_of(self.base_model, self.model_type, self.model_id, self.version_id)

    @property
    def is_embedding(self) -> bool:
        return (self.model_type or EMBEDDING_TYPE).lower() == EMBEDDING_TYPE.lower()

    def record(self, endpoint: str, matched: str | None = None) -> dict[str, Any]:
        """What goes in the entry's ``extra["civitai"]`` (and ``--json``)."""
        out: dict[str, Any] = {
            "air": self.air,
            "model_id": self.model_id,
            "version_id": self.version_id,
            "model_name": self.model_name,
            "version_name": self.version_name,
            "model_type": self.model_type,
            "base_model": self.base_model,
            "trained_words": self.trained_words,
            "tags": self.tags,
            "nsfw": self.nsfw,
            "creator": self.creator,
            "license": self.license,
            "endpoint": endpoint,
        }
        if matched:
            out["matched_by"] = matched
        return {k: v for k, v in out.items() if v not in (None, [], {})}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["air"] = self.air
        return out


_LICENSE_KEYS = ("allowNoCredit", "allowCommercialUse", "allowDerivatives", "allowDifferentLicense")


def parse_version(d: dict[str, Any]) -> CivitaiVersion:
    """A model-version reply as :class:`CivitaiVersion`.

    Raises:
        CivitaiBadReply: no ids, or a field of the wrong type.
    """
    what = "the model-version reply"
    model = _obj(d, "model", what)
    v = CivitaiVersion(
        version_id=_int(d, "id", what) or 0,
        model_id=_int(d, "modelId", what) or 0,
        version_name=clean_text(d.get("name")),
        model_name=clean_text(model.get("name")),
        model_type=clean_text(model.get("type"), 40),
        base_model=clean_text(d.get("baseModel")),
        description=clean_text(d.get("description"), MAX_DESCRIPTION, multiline=True),
    )
    if isinstance(model.get("nsfw"), bool):
        v.nsfw = model["nsfw"]
    words = [clean_text(w) for w in _list(d, "trainedWords", what, MAX_WORDS)]
    v.trained_words = list(dict.fromkeys(w.replace(",", " ").strip() for w in words if w))
    for f in _list(d, "files", what, MAX_FILES):
        if not isinstance(f, dict):
            raise CivitaiBadReply(f"{what}: a file entry is {type(f).__name__}, expected an object")
        hashes = _obj(f, "hashes", what)
        sha = hashes.get("SHA256")
        sha = (
            sha.lower() if isinstance(sha, str) and re.fullmatch(r"[0-9a-fA-F]{64}", sha) else None
        )
        autov2 = hashes.get("AutoV2")
        size = f.get("sizeKB")
        url = f.get("downloadUrl")
        v.files.append(
            CivitaiFile(
                name=clean_text(f.get("name")) or "",
                sha256=sha,
                autov2=autov2.upper() if isinstance(autov2, str) and len(autov2) <= 16 else None,
                size_kb=float(size) if isinstance(size, (int, float)) and size >= 0 else None,
                type=clean_text(f.get("type"), 40),
                primary=f.get("primary") is True,
                download_url=url if isinstance(url, str) and len(url) <= 2048 else None,
            )
        )
    for img in _list(d, "images", what, MAX_IMAGES):
        if not isinstance(img, dict):
            continue
        if img.get("type") not in (None, "image"):
            continue  # videos are not previews
        url = img.get("url")
        if isinstance(url, str) and len(url) <= 2048:
            v.image_urls.append(url)
    return v


def apply_model(v: CivitaiVersion, d: dict[str, Any]) -> None:
    """Add what the model reply (``/api/v1/models/{id}``) says: tags, license flags,
    creator, and the model's description when the version has none."""
    what = "the model reply"
    tags = []
    for t in _list(d, "tags", what, MAX_TAGS):
        if isinstance(t, dict):
            t = t.get("name")
        t = clean_text(t, 64)
        if t:
            tags.append(t)
    v.tags = list(dict.fromkeys(tags))
    if not v.description:
        v.description = clean_text(d.get("description"), MAX_DESCRIPTION, multiline=True)
    if not v.model_name:
        v.model_name = clean_text(d.get("name"))
    if not v.model_type:
        v.model_type = clean_text(d.get("type"), 40)
    if isinstance(d.get("nsfw"), bool) and v.nsfw is None:
        v.nsfw = d["nsfw"]
    creator = _obj(d, "creator", what)
    v.creator = clean_text(creator.get("username"), 100)
    lic: dict[str, Any] = {}
    for key in _LICENSE_KEYS:
        value = d.get(key)
        if isinstance(value, bool):
            lic[key] = value
        elif isinstance(value, str):
            lic[key] = clean_text(value, 40)
        elif isinstance(value, list):
            lic[key] = [x for x in (clean_text(s, 40) for s in value[:10]) if x]
    v.license = lic

"""Model cards (``README.md``) for pushed concepts and libraries, and reading their YAML.

A pushed card carries the metadata the Hub indexes (``library_name: diffusers``,
``base_model``, ``license``, ``tags`` with ``textual-inversion``, the family, the
kind and ``negative-embedding`` for negatives) and usage for diffusers (a plain
``load_textual_inversion(repo)`` for SD 1.x/2.x; SDXL needs one call per text encoder,
which the card spells out), A1111, ComfyUI and InvokeAI. Rendering is deterministic: the same concept gives the same
bytes, so an unchanged push makes no commit.

YAML goes through PyYAML, a dependency of ``huggingface_hub`` (imported lazily).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from conceptlib.registry.formats.write import INVOKEAI_FILENAME
from conceptlib.registry.hub.repos import REPO_ID as _REPO_ID
from conceptlib.schemas.manifest import ConceptManifest, LibraryIndex
from conceptlib.schemas.names import tokenizer_form

#: Tags every pushed concept card carries; removed again when a card is read back.
BASE_TAGS = ("textual-inversion", "stable-diffusion", "conceptlib")
FAMILY_TAGS = {
    "sd1": ("sd1", "stable-diffusion-1"),
    "sd2": ("sd2", "stable-diffusion-2"),
    "sdxl": ("sdxl", "stable-diffusion-xl"),
}
NEGATIVE_TAG = "negative-embedding"
KIND_TAGS = ("object", "style", "negative", "other")
GENERATED_TAGS = frozenset(
    {*BASE_TAGS, *(t for ts in FAMILY_TAGS.values() for t in ts), NEGATIVE_TAG, *KIND_TAGS}
    | {"diffusers", "conceptlib-library", "embedding", "embeddings"}
)
#: conceptlib's built-in tiny models have repo-shaped ids but live in no Hub repo.
_NOT_ON_HUB = ("conceptlib/tiny-",)


def _hub_base_model(base: str | None) -> str | None:
    if base and _REPO_ID.match(base) and not base.startswith(_NOT_ON_HUB):
        return base
    return None


_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")
MAX_CARD_BYTES = 1 << 20


@dataclass
class CardMetadata:
    """What a card's YAML says about a concept."""

    tags: list[str] = field(default_factory=list)
    kind: str | None = None
    base_model: str | None = None
    license: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def _yaml_dump(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """Split a card into its YAML metadata (``{}`` when absent or invalid) and body."""
    text = text.lstrip("\ufeff")
    if not text.startswith("---"):
        return {}, text
    m = re.match(r"^---[ \t]*\r?\n(.*?)(?:\r?\n)?---[ \t]*(?:\r?\n|$)", text, re.DOTALL)
    if not m:
        return {}, text
    try:
        import yaml

        data = yaml.safe_load(m.group(1))
    except Exception:  # a card with broken YAML still has a body worth keeping
        return {}, text[m.end() :]
    return (data if isinstance(data, dict) else {}), text[m.end() :]


def parse_card(data: bytes) -> CardMetadata:
    """Read tags, kind, base model and license from a model card's YAML."""
    if len(data) > MAX_CARD_BYTES:
        return CardMetadata()
    meta, _ = split_front_matter(data.decode("utf-8", errors="replace"))
    raw_tags = meta.get("tags") or []
    if isinstance(raw_tags, str):
        raw_tags = [raw_tags]
    tags = [str(t).strip() for t in raw_tags if isinstance(t, (str, int)) and str(t).strip()]
    lowered = {t.lower() for t in tags}
    kind = None
    if NEGATIVE_TAG in lowered or "negative" in lowered or "negative-embeddings" in lowered:
        kind = "negative"
    elif "style" in lowered:
        kind = "style"
    elif "object" in lowered:
        kind = "object"
    base = meta.get("base_model")
    if isinstance(base, list):
        base = next((b for b in base if isinstance(b, str)), None)
    lic = meta.get("license")
    if lic == "other" and isinstance(meta.get("license_name"), str):
        lic = meta["license_name"]
    user_tags = [
        t for t in tags if t.lower() not in GENERATED_TAGS and ":" not in t and len(t) <= 64
    ]
    return CardMetadata(
        tags=user_tags,
        kind=kind,
        base_model=base if isinstance(base, str) and base else None,
        license=str(lic) if isinstance(lic, (str, int)) and lic else None,
        raw=meta,
    )


def card_tags(m: ConceptManifest) -> list[str]:
    tags = [BASE_TAGS[0], BASE_TAGS[1]]
    tags += list(FAMILY_TAGS.get(str(m.family), ()))
    tags.append(str(m.kind))
    if str(m.kind) == "negative":
        tags.append(NEGATIVE_TAG)
    tags += [t for t in m.tags if t not in tags]
    tags.append(BASE_TAGS[2])
    return list(dict.fromkeys(tags))


def _license_fields(lic: str | None) -> dict[str, str]:
    if not lic:
        return {}
    slug = lic.strip().lower()
    if _LICENSE_ID.match(slug):
        return {"license": slug}
    name = re.sub(r"[^a-z0-9.+-]+", "-", slug).strip("-") or "custom"
    return {"license": "other", "license_name": name}


def _metadata(m: ConceptManifest) -> dict[str, Any]:
    meta: dict[str, Any] = {"library_name": "diffusers"}
    if _hub_base_model(m.base_model):
        meta["base_model"] = m.base_model
    meta.update(_license_fields(m.license))
    meta["tags"] = card_tags(m)
    meta["inference"] = False
    return meta


#: ASCII punctuation CommonMark lets a backslash escape (spec 0.31, "Backslash escapes").
_MD_PUNCTUATION = re.compile(r"([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])")


def md_text(value: object) -> str:
    """Untrusted text (a description, a base model from a sidecar, a name) as Markdown
    that renders as exactly that text: every ASCII punctuation character is
    backslash-escaped (CommonMark: an escaped character is a literal, so ``\\<`` opens
    no HTML tag, ``\\&`` no entity, ``\\[`` no link, ``\\|`` no table cell), control
    characters are dropped, and line breaks become Markdown hard breaks."""
    lines = []
    for line in str(value).replace("\r\n", "\n").split("\n"):
        line = "".join(ch for ch in line if ch == "\t" or ord(ch) >= 32 and ord(ch) != 127)
        lines.append(_MD_PUNCTUATION.sub(r"\\\1", line))
    return "  \n".join(lines)


def md_cell(value: object) -> str:
    """:func:`md_text` for a table cell: one line."""
    return md_text(" ".join(str(value).split()))


def md_code(value: object) -> str:
    """``value`` as an inline code span (fenced with more backticks than it holds)."""
    text = " ".join(str(value).split())
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def render_card(m: ConceptManifest, *, repo_id: str, invokeai: bool = False) -> str:
    """The ``README.md`` of a concept repo; ``invokeai``: the repo also holds
    ``learned_embeds.bin`` (``push --for invokeai``), which InvokeAI installs."""
    fam = str(m.family)
    negative = str(m.kind) == "negative"
    fname = m.embedding.path
    lines = ["---", _yaml_dump(_metadata(m)).rstrip("\n"), "---", "", f"# {md_text(m.name)}", ""]
    if m.description:  # the user's text, shown as text: never HTML or Markdown of its own
        lines += [md_text(m.description.strip()), ""]
    kind_text = {"negative": "a negative embedding", "style": "a style", "object": "an object"}
    lines += [
        f"A textual-inversion embedding ({kind_text.get(str(m.kind), 'a concept')}) for "
        f"{_family_name(fam)}, shared with [conceptlib](https://github.com/conceptlib/conceptlib).",
        "",
        "| | |",
        "|---|---|",
        f"| trigger token | {md_code(m.token)} |",
        f"| kind | {m.kind} |",
        f"| family | {fam} ({', '.join(str(d) for d in m.dims)}) |",
        f"| vectors | {m.num_vectors} |",
        f"| base model | {md_cell(m.base_model) if m.base_model else 'not recorded'} |",
        f"| file | `{fname}` (SHA-256 `{m.embedding.sha256[:12]}`, AutoV2 "
        f"`{m.embedding.sha256[:10].upper()}`) |",
        f"| tensor hash | `{m.tensor_sha256[:16]}` |",
    ]
    if m.license:
        lines.append(f"| license | {md_cell(m.license)} |")
    if m.tags:
        lines.append(f"| tags | {md_cell(', '.join(m.tags))} |")
    lines += ["", "## Usage", "", "### diffusers", "", "```python"]
    pipe_cls = "StableDiffusionXLPipeline" if fam == "sdxl" else "StableDiffusionPipeline"
    tok = tokenizer_form(m.token)  # as the file is keyed: CLIP's tokenizer lower-cases prompts
    base = _hub_base_model(m.base_model) or _default_base(fam)
    lines += [
        "import torch",
        f"from diffusers import {pipe_cls}",
        "",
        f'pipe = {pipe_cls}.from_pretrained("{base}", torch_dtype=torch.float16).to("cuda")',
    ]
    if fam == "sdxl":
        lines += [
            "from huggingface_hub import hf_hub_download",
            "from safetensors.torch import load_file",
            "",
            f'state = load_file(hf_hub_download("{repo_id}", "{fname}"))',
            f'pipe.load_textual_inversion(state["clip_l"], token="{tok}",',
            "                            text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)",
            f'pipe.load_textual_inversion(state["clip_g"], token="{tok}",',
            "                            text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)",
        ]
    else:
        lines.append(f'pipe.load_textual_inversion("{repo_id}")')
    if negative:
        lines.append(f'image = pipe("a portrait photo", negative_prompt="{tok}").images[0]')
    else:
        lines.append(f'image = pipe("a photo of {tok}").images[0]')
    where = "negative prompt" if negative else "prompt"
    sdxl_note = (
        " The file holds `clip_l` and `clip_g`, the SDXL layout A1111 and ComfyUI read."
        if fam == "sdxl"
        else ""
    )
    lines += ["```", "", "### AUTOMATIC1111 / Forge", ""]
    lines += [
        f"Download `{fname}` into `stable-diffusion-webui/embeddings/` as `{m.name}.safetensors` "
        f"and write `{m.name}` in the {where}.{sdxl_note}",
        "",
        "### ComfyUI",
        "",
        f"Save `{fname}` as `ComfyUI/models/embeddings/{m.name}.safetensors` and write "
        f"`embedding:{m.name}` in the {where}.",
        "",
        "### InvokeAI",
        "",
    ]
    if invokeai:
        lines.append(
            f"Install `{repo_id}` by its repo id in the model manager (it takes "
            f"`{INVOKEAI_FILENAME}`) and write `<NAME>` in the {where}, NAME being the "
            "model's name there."
        )
    else:
        lines.append(
            f"This repo has no `{INVOKEAI_FILENAME}`, the file InvokeAI installs a repo by: "
            f"`conceptlib pull {repo_id}`, then `conceptlib export {m.name} --for invokeai "
            f"-o DIR` writes the folder `DIR/{m.name}` that InvokeAI installs."
        )
    lines += [
        "",
        "### conceptlib",
        "",
        "```bash",
        f"conceptlib pull {repo_id}",
        "```",
        "",
        "`concept.json` holds everything the catalog knows about this embedding "
        "(provenance, training run, previews).",
        "",
    ]
    if m.previews:
        lines += ["## Previews", ""]
        lines += [
            f"![{md_text(p.filename)}](<{p.path}>)" for p in m.previews if p.role == "preview"
        ]
        lines += [
            f"- [{md_text(p.filename)}](<{p.path}>) ({md_text(p.role)})"
            for p in m.previews
            if p.role != "preview"
        ]
        lines.append("")
    return "\n".join(lines)


def render_library_card(index: LibraryIndex, *, repo_id: str, families: list[str]) -> str:
    """The ``README.md`` of a library repo: a table of its concepts."""
    meta: dict[str, Any] = {
        "library_name": "diffusers",
        "tags": list(
            dict.fromkeys(
                ["textual-inversion", "stable-diffusion", "conceptlib", "conceptlib-library"]
                + [t for f in families for t in FAMILY_TAGS.get(f, ())]
            )
        ),
        "inference": False,
    }
    lines = ["---", _yaml_dump(meta).rstrip("\n"), "---", "", f"# {repo_id}", ""]
    lines += [
        f"A library of {len(index.concepts)} textual-inversion embeddings shared with conceptlib.",
        "",
        "```bash",
        f"conceptlib pull --library {repo_id}",
        "```",
        "",
        "| name | token | kind | family | tags |",
        "|---|---|---|---|---|",
    ]
    for c in index.concepts:
        lines.append(
            f"| [{md_cell(c.name)}](<{c.path}/concept.json>) | {md_code(c.token)} | "
            f"{md_cell(c.kind)} | {md_cell(c.family)} | {md_cell(', '.join(c.tags))} |"
        )
    lines.append("")
    return "\n".join(lines)


def _family_name(fam: str) -> str:
    return {"sd1": "Stable Diffusion 1.x", "sd2": "Stable Diffusion 2.x", "sdxl": "SDXL"}.get(
        fam, fam
    )


def _default_base(fam: str) -> str:
    return {
        "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "sd2": "stabilityai/stable-diffusion-2-1",
        "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
    }.get(fam, "stable-diffusion-v1-5/stable-diffusion-v1-5")

"""Hub repos as this package names them: the files of a concept or library repo,
size caps by kind of file, repo ids, and which remote file names are safe to use.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from conceptlib.errors import HubUnsafePath, UsageError
from conceptlib.schemas.names import is_reserved_device, strip_brackets

EMBEDDING_FILENAME = "learned_embeds.safetensors"
TOKEN_FILENAME = "token_identifier.txt"
TYPE_FILENAME = "type_of_concept.txt"
CARD_FILENAME = "README.md"
PREVIEW_DIR = "previews"
LIBRARY_CONCEPT_DIR = "concepts"
MAX_SMALL_FILE = 4 * 1024 * 1024  # concept.json, library.json, README.md, .txt files
MAX_PREVIEW_FILE = 32 * 1024 * 1024
#: A Hub repo id (``owner/name``); also what a model card may link as ``base_model``.
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")


def unsafe_reason(path: str) -> str | None:
    """Why a remote file name cannot be used as a relative path, or None."""
    if not path:
        return "an empty name"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "control characters"
    if path.startswith(("/", "\\")):
        return "an absolute path"
    if "\\" in path:
        return "a backslash (Windows or UNC path)"
    if re.match(r"^[A-Za-z]:", path):
        return "a drive letter"
    if ":" in path:
        return "a colon (an NTFS alternate data stream)"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "'.', '..' or empty path parts"
    if any(is_reserved_device(p) or p != p.rstrip(" .") for p in parts):
        return "a reserved device name or a trailing dot/space"
    return None


def check_remote_paths(repo: str, paths: Iterable[str]) -> None:
    bad = [(p, r) for p in paths if (r := unsafe_reason(p))]
    if bad:
        listing = ", ".join(f"{p!r} ({r})" for p, r in bad[:5])
        raise HubUnsafePath(
            f"{repo} lists unsafe file names: {listing}; refusing to download anything from it",
            hint="a repo with such names is broken or hostile; nothing was downloaded",
            repo_id=repo,
            paths=[p for p, _ in bad],
        )


def _parse_spec(spec: str) -> tuple[str, str]:
    """``ns/name[@revision]`` -> (repo_id, revision)."""
    spec = spec.strip()
    for prefix in ("https://huggingface.co/", "hf://", "hf.co/"):
        if spec.startswith(prefix):
            spec = spec[len(prefix) :]
    repo_id, _, revision = spec.partition("@")
    repo_id = repo_id.strip("/")
    if not REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UsageError(
            f"{spec!r} is not a Hub repo id; expected NAMESPACE/NAME[@REVISION]",
            hint="for example: conceptlib pull sd-concepts-library/cat-toy",
        )
    return repo_id, revision or "main"


def _check_repo_id(repo_id: str) -> str:
    if not REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise UsageError(f"{repo_id!r} is not a Hub repo id; expected NAMESPACE/NAME")
    return repo_id


def repo_name_for(name: str) -> str:
    """A Hub repo name made from a concept name."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", strip_brackets(name)).strip("-.")
    slug = re.sub(r"-{2,}", "-", slug).replace("..", ".")
    return (slug or "concept")[:96]

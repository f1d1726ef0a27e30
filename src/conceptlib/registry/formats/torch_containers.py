"""The two containers PyTorch files come in, checked before any pickle in them is read.

* The zip format (``torch.save`` since 1.6): ``<root>/data.pkl``, the tensors' raw
  bytes as ``<root>/data/N`` and a few small records (``version``, ``byteorder``).
  Member names, sizes and CRCs are checked; *every* ``.pkl`` member is walked (not
  only ``data.pkl``: a TorchScript ``constants.pkl`` or a stray ``extra.pkl`` may
  carry a payload), each to the end of its bytes, so a second pickle after the
  first ``STOP`` is walked too; then each declared storage must have a record of
  exactly its size.
* The legacy stream (before 1.6): five pickles in a row (magic number, protocol
  version, system info, the object, the storage keys), then each storage as an
  8-byte element count and its raw bytes. Each pickle is walked; a stream whose
  first pickle is not the magic number is a plain pickle, and all of its pickles
  are walked before it is refused. Bytes after the last storage are walked as
  pickles too.

Threats found anywhere win over structural refusals (see
:mod:`.pickle_walk`): a damaged container that holds a forbidden import is
:class:`~conceptlib.errors.UnsafeFile`.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import Any

from conceptlib.config import MAX_EMBEDDING_FILE_BYTES
from conceptlib.errors import (
    ConceptlibError,
    CorruptFile,
    FileTooLarge,
    UnsafeFile,
    UnsupportedContent,
)
from conceptlib.registry.formats.pickle_walk import (
    MAX_PICKLE_BYTES,
    Findings,
    _short,
    walk_pickles,
)

__all__ = ["LEGACY_MAGIC_NUMBER", "LEGACY_PROTOCOL_VERSION", "scan_legacy", "scan_zip"]

#: torch's legacy (pre-1.6) format starts with these two pickled integers.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

#: torch names the zip's folder after the file's stem (or "archive"): any one plain
#: path component, so names with spaces or non-ASCII letters are fine.
_ROOT_RE = re.compile(r"^[^\x00-\x1f\x7f/\\:*?\"<>|]{1,255}$")
_RECORD_RE = re.compile(
    r"^(data\.pkl|version|byteorder|\.format_version|\.storage_alignment|"
    r"\.data/version|\.data/serialization_id|data/[0-9]{1,24})$"
)


def _open_zip(data: bytes, path: str | None) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        return zf, zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        findings = Findings(loose=[(data, 0)])  # a stored pickle is visible in the raw bytes
        raise findings.fail(
            CorruptFile(f"zip container is broken ({exc}); expected a PyTorch zip file", path=path),
            path,
        ) from None


def _check_names(data: bytes, infos: list[zipfile.ZipInfo], path: str | None) -> None:
    """Refuse duplicate and path-like member names, and archives too large to unpack.

    Too large to unpack is decided without unpacking: the raw bytes are searched for
    imports instead (a stored member's pickle is visible in them).
    """
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        if name in seen:
            raise UnsafeFile(
                f"zip has two members named {name!r}; expected unique torch records", path=path
            )
        seen.add(name)
        parts = name.rstrip("/").split("/")
        if (
            name.startswith(("/", "\\"))
            or "\\" in name
            or "\x00" in name
            or re.match(r"^[A-Za-z]:", name)
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise UnsafeFile(
                f"zip member {name!r} is a path outside the archive; expected <root>/data.pkl and "
                "<root>/data/N records",
                path=path,
            )
        total += info.file_size
        if total > MAX_EMBEDDING_FILE_BYTES:
            raise Findings(loose=[(data, 0)]).fail(
                FileTooLarge(
                    f"zip members unpack to more than {MAX_EMBEDDING_FILE_BYTES} bytes; an "
                    "embedding is kilobytes",
                    path=path,
                ),
                path,
            )


def _read_members(
    zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], path: str | None
) -> tuple[dict[str, bytes], list[ConceptlibError]]:
    """Every member that can be read (CRC checked); the problems of the others, deferred.

    A member is inflated to at most its declared size, and the declared sizes of all
    members together are capped (:func:`_check_names`), so a small zip whose stream
    inflates far past what its header says costs no more than that.
    """
    contents: dict[str, bytes] = {}
    problems: list[ConceptlibError] = []
    for info in infos:
        if info.is_dir():
            continue
        if info.flag_bits & 0x1:
            problems.append(
                UnsupportedContent(f"zip member {info.filename!r} is encrypted", path=path)
            )
            continue
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            problems.append(
                UnsupportedContent(
                    f"zip member {info.filename!r} uses compression method "
                    f"{info.compress_type}; expected stored or deflated",
                    path=path,
                )
            )
            continue
        try:
            # At most the declared size (capped above) is ever inflated: zf.read(info)
            # would inflate a stream claiming 100 bytes to gigabytes in one call.
            with zf.open(info) as fh:
                blob = fh.read(info.file_size + 1)  # reaching the end checks the CRC-32
            if len(blob) != info.file_size:
                raise zipfile.BadZipFile(
                    f"it unpacks to {len(blob)} bytes, not the {info.file_size} its header says"
                )
            contents[info.filename] = blob
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            problems.append(
                CorruptFile(f"zip member {info.filename!r} is damaged ({exc})", path=path)
            )
        except Exception as exc:  # zlib.error and friends
            problems.append(
                CorruptFile(f"zip member {info.filename!r} cannot be read ({exc})", path=path)
            )
    return contents, problems


def scan_zip(data: bytes, path: str | None) -> Findings:
    """Check a torch zip and walk every pickle in it; return the ``data.pkl`` findings.

    Raises:
        UnsafeFile: a forbidden import in any ``.pkl`` member; path-like, duplicate or
            unexpected member names.
        UnsupportedContent: an empty archive, no ``<root>/data.pkl``, TorchScript,
            encryption, other compression methods, non-embedding torch types.
        CorruptFile: a broken zip, a bad CRC, a broken ``data.pkl``, bytes after its
            ``STOP``, storages without a record of their declared size.
        FileTooLarge: members, ``data.pkl`` or declared storages over the caps.
    """
    zf, infos = _open_zip(data, path)
    if not infos:
        raise UnsupportedContent(
            "zip archive is empty; expected a PyTorch file with data.pkl", path=path
        )
    _check_names(data, infos, path)
    contents, problems = _read_members(zf, infos, path)
    # Every pickle first: a threat anywhere decides before any structural refusal.
    findings = Findings()
    data_pkl: tuple[str, list[tuple[Any, int, int]]] | None = None
    for name, blob in contents.items():
        if not name.endswith(".pkl"):
            continue
        if len(blob) > MAX_PICKLE_BYTES:
            problems.append(
                FileTooLarge(
                    f"{name} is {len(blob)} bytes; expected at most {MAX_PICKLE_BYTES}", path=path
                )
            )
            findings.loose.append((blob, 0))
            continue
        if name.count("/") == 1 and name.endswith("/data.pkl") and data_pkl is None:
            data_pkl = (name, walk_pickles(blob, findings))
        else:
            other = Findings()
            walk_pickles(blob, other)
            other.hunt()
            for what in other.unsafe:
                findings.add_unsafe(what)

    findings.hunt()
    if findings.unsafe:
        raise findings.unsafe_error(path)
    names = {info.filename for info in infos}
    if not any(n.count("/") == 1 and n.endswith("/data.pkl") for n in names):
        shown = ", ".join(repr(n) for n in sorted(names)[:3])
        raise findings.fail(
            UnsupportedContent(
                f"zip archive ({shown}{', ...' if len(names) > 3 else ''}) has no "
                "<folder>/data.pkl; expected a PyTorch file (torch.save)",
                path=path,
            ),
            path,
        )
    roots: set[str] = set()
    records: dict[str, bytes] = {}
    for info in infos:
        parts = info.filename.rstrip("/").split("/")
        root = parts[0]
        if not _ROOT_RE.match(root):
            raise UnsafeFile(
                f"zip member {info.filename!r} has an unexpected folder name", path=path
            )
        roots.add(root)
        if len(roots) > 1:
            raise UnsafeFile(
                f"zip members sit under several folders ({', '.join(sorted(roots))}); a PyTorch "
                "file has exactly one",
                path=path,
            )
        if info.is_dir():
            continue
        rest = "/".join(parts[1:])
        if not _RECORD_RE.match(rest):
            if rest == "constants.pkl" or rest.startswith(("code/", ".data/ts_code")):
                raise findings.fail(
                    UnsupportedContent(
                        "zip is a TorchScript archive (torch.jit.save), not an embedding",
                        path=path,
                    ),
                    path,
                )
            raise UnsafeFile(
                f"zip member {info.filename!r} is not a PyTorch record; expected data.pkl, "
                "data/N, version, byteorder (the file was not executed)",
                path=path,
            )
        if info.filename in contents:
            records[rest] = contents[info.filename]
    if problems:  # an unreadable member's stored bytes are still searched for imports
        findings.loose.append((data, 0))
        raise findings.fail(problems[0], path)
    if data_pkl is None:  # unreachable: data.pkl exists, was read and walked
        raise CorruptFile("data.pkl could not be read", path=path)
    walked = data_pkl[1]
    findings.raise_if_bad(path)
    if len(walked) > 1:
        end = walked[0][2]
        raise CorruptFile(
            f"data.pkl has {len(records['data.pkl']) - end} unexpected bytes after STOP "
            "(another pickle)",
            path=path,
        )
    for key, storage in findings.storages.items():
        record = records.get(f"data/{key}")
        if record is None:
            raise CorruptFile(
                f"tensor storage {key} has no data/{key} record in the zip", path=path
            )
        need = storage.numel * storage.itemsize
        if len(record) != need:
            raise CorruptFile(
                f"tensor storage {key} declares {need} bytes but its record holds {len(record)}",
                path=path,
            )
    return findings


def scan_legacy(data: bytes, path: str | None) -> Findings:
    """Walk torch's pre-1.6 format: five pickles, then raw storages.

    Raises:
        UnsafeFile: a forbidden import in any pickle of the stream, or after it.
        UnsupportedContent: a plain pickle (no magic number), another protocol version.
        CorruptFile: broken pickles, storages that do not match the keys, truncation,
            bytes after the last storage.
        FileTooLarge: declared storages or tensor views over the caps.
    """
    findings = Findings()
    first = walk_pickles(data, findings, limit=1)
    if not first or first[0][0] != LEGACY_MAGIC_NUMBER:
        # A plain pickle (or a broken one): walk every pickle in it so a payload is named.
        if first:
            walk_pickles(data, findings, start=first[0][2])
        findings.raise_if_bad(path)
        raise UnsupportedContent(
            "file is a plain Python pickle, not a PyTorch file; expected torch.save output "
            "(the file was not executed)",
            path=path,
        )
    rest = walk_pickles(data, findings, start=first[0][2], limit=4, legacy_pids_at=2)
    walked = first + rest
    if len(walked) >= 2 and walked[1][0] != LEGACY_PROTOCOL_VERSION:
        if len(walked) == 5:
            walk_pickles(data, findings, start=walked[-1][2])  # anything after: named too
        findings.raise_if_bad(path)
        raise UnsupportedContent(
            f"legacy PyTorch file has protocol version {_short(walked[1][0])}; expected "
            f"{LEGACY_PROTOCOL_VERSION}",
            path=path,
        )
    findings.raise_if_bad(path)
    keys = walked[4][0] if len(walked) == 5 else None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise findings.fail(
            CorruptFile("legacy PyTorch file has no list of storage keys", path=path), path
        )
    if set(keys) != set(findings.storages):
        raise CorruptFile("legacy PyTorch file lists storages its pickle does not use", path=path)
    pos = walked[4][2]
    for key in keys:
        if pos + 8 > len(data):
            raise CorruptFile(f"legacy PyTorch file is truncated in storage {key}", path=path)
        numel = int.from_bytes(data[pos : pos + 8], "little")
        storage = findings.storages[key]
        if numel != storage.numel:
            raise CorruptFile(
                f"storage {key} declares {storage.numel} elements but its data says {numel}",
                path=path,
            )
        pos += 8 + numel * storage.itemsize
        if pos > len(data):
            raise CorruptFile(f"legacy PyTorch file is truncated in storage {key}", path=path)
    if pos != len(data):
        # another pickle after the storages is walked, so a payload there is named
        tail = Findings()
        walk_pickles(data, tail, start=pos)
        tail.hunt()
        if tail.unsafe:
            raise tail.unsafe_error(path)
        raise CorruptFile(
            f"legacy PyTorch file has {len(data) - pos} unexpected bytes at the end", path=path
        )
    return findings

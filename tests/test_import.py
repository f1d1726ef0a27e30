"""Importing files and folders, sidecars, and every bad file (bad-inputs 1-18) through the CLI.

Each refused file: its error class, a one-line message saying what was found, a
non-zero exit status, and the catalog plus the store exactly as before.
"""

import io
import json
import struct
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conceptlib.cli.main import cli
from conceptlib.registry.formats.safetensors_io import write_safetensors


def st_raw(header: dict, body: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + body


def emb_params(arr) -> bytes:
    return write_safetensors({"emb_params": np.asarray(arr, dtype=np.float32)})


def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def a1111(arr, name="x") -> bytes:
    t = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    return torch_bytes(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": t},
            "name": name,
            "step": 10,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
        }
    )


RNG = np.random.default_rng(0)
GOOD = RNG.standard_normal((2, 768)).astype(np.float32) * 0.02


def sentinel_pickle(sentinel) -> bytes:
    return b"cos\nsystem\n(S'touch " + str(sentinel).encode() + b"'\ntR."


def _zip_with(names_data: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in names_data.items():
            z.writestr(n, d)
    return buf.getvalue()


def bad_crc_zip() -> bytes:
    good = torch_bytes({"emb_params": torch.zeros(1, 768)})
    data = bytearray(good)
    # Flip a byte inside the stored tensor data: the member's CRC no longer matches.
    idx = data.find(b"data/0")
    data[idx + 200] ^= 0xFF
    return bytes(data)


class _Module(torch.nn.Module):
    pass


def cases(tmp):
    s = tmp / "sentinel"
    big_header = struct.pack("<Q", 1 << 40) + b"{}"
    return {
        # name: (bytes, expected error class, exit code, fragment of the message)
        "01-empty": (b"", "EmptyFile", 3, "0 bytes"),
        "02-lfs": (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 3\n",
            "LfsPointerFile",
            3,
            "LFS pointer",
        ),
        "03-truncated": (emb_params(GOOD)[:-10], "CorruptFile", 3, "truncated"),
        "03-appended": (emb_params(GOOD) + b"junk", "CorruptFile", 3, "after the last tensor"),
        "04-header-past-end": (struct.pack("<Q", 500) + b'{"a":1}', "CorruptFile", 3, "header"),
        "04-header-huge": (big_header, "FileTooLarge", 3, "header"),
        "05-not-utf8": (struct.pack("<Q", 4) + b"{\xff\xfe}", "CorruptFile", 3, "UTF-8"),
        "05-not-json": (struct.pack("<Q", 4) + b"{abc", "CorruptFile", 3, "JSON"),
        "05-duplicate-keys": (
            struct.pack("<Q", 2 * 62 + 3)
            + (
                b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}'
            ).ljust(2 * 62 + 3)
            + b"\0" * 8,
            "CorruptFile",
            3,
            "twice",
        ),
        "05-overlap": (
            st_raw(
                {
                    "a": {"dtype": "F32", "shape": [2, 768], "data_offsets": [0, 6144]},
                    "b": {"dtype": "F32", "shape": [1, 768], "data_offsets": [3072, 6144]},
                },
                b"\0" * 6144,
            ),
            "CorruptFile",
            3,
            "overlaps",
        ),
        "05-gap": (
            st_raw(
                {"a": {"dtype": "F32", "shape": [1, 768], "data_offsets": [8, 3080]}}, b"\0" * 3080
            ),
            "CorruptFile",
            3,
            "gap",
        ),
        "06-size-mismatch": (
            st_raw(
                {"a": {"dtype": "F32", "shape": [2, 768], "data_offsets": [0, 3072]}}, b"\0" * 3072
            ),
            "BadTensor",
            3,
            "needs 6144 bytes",
        ),
        "06-int-dtype": (
            st_raw(
                {"a": {"dtype": "I32", "shape": [1, 768], "data_offsets": [0, 3072]}}, b"\0" * 3072
            ),
            "BadTensor",
            3,
            "I32",
        ),
        "06-unknown-dtype": (
            st_raw(
                {"a": {"dtype": "Q7", "shape": [1, 768], "data_offsets": [0, 3072]}}, b"\0" * 3072
            ),
            "BadTensor",
            3,
            "Q7",
        ),
        "08-os-system": (sentinel_pickle(s), "UnsafeFile", 4, "os.system"),
        "08-in-torch-zip": (
            _zip_with({"archive/data.pkl": sentinel_pickle(s), "archive/version": b"3\n"}),
            "UnsafeFile",
            4,
            "system",
        ),
        "09-broken-after-payload": (
            sentinel_pickle(s)[:-1] + b"\xff\xff garbage",
            "UnsafeFile",
            4,
            "system",
        ),
        "10-7z": (b"7z\xbc\xaf\x27\x1c" + b"\0" * 64, None, 3, "7z"),
        "10-bad-crc-zip": (bad_crc_zip(), None, 3, ""),
        "10-zip-path-names": (
            _zip_with({"../../evil/data.pkl": b"x", "archive/version": b"3"}),
            "UnsafeFile",
            4,
            "",
        ),
        "12-module": (torch_bytes(_Module()), None, None, ""),
        "12-non-tensor": (torch_bytes({"emb_params": "not a tensor"}), None, 3, ""),
        "13-width-512": (emb_params(RNG.standard_normal((1, 512))), "FamilyMismatch", 3, "512"),
        "13-sdxl-missing-g": (write_safetensors({"clip_l": GOOD}), "FamilyMismatch", 3, "clip_g"),
        "13-sdxl-unequal": (
            write_safetensors(
                {"clip_l": GOOD, "clip_g": RNG.standard_normal((3, 1280)).astype(np.float32)}
            ),
            "FamilyMismatch",
            3,
            "unequal",
        ),
        "14-several-terms": (
            torch_bytes(
                {
                    "string_to_token": {"*": 1, "b": 2},
                    "string_to_param": {
                        "*": torch.zeros(1, 768) + 0.1,
                        "b": torch.zeros(1, 768) + 0.2,
                    },
                }
            ),
            "AmbiguousEmbedding",
            3,
            "",
        ),
        "14-unrelated-keys": (
            write_safetensors({"alpha": GOOD, "beta": GOOD * 2}),
            "AmbiguousEmbedding",
            3,
            "alpha",
        ),
        "15-zero-rows": (
            st_raw(
                {"emb_params": {"dtype": "F32", "shape": [0, 768], "data_offsets": [0, 0]}}, b""
            ),
            "BadTensor",
            3,
            "",
        ),
        "15-scalar": (
            st_raw(
                {"emb_params": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}}, b"\0" * 4
            ),
            "BadTensor",
            3,
            "",
        ),
        "15-3d": (
            write_safetensors({"emb_params": np.zeros((1, 2, 768), np.float32) + 0.1}),
            "BadTensor",
            3,
            "[1, 2, 768]",
        ),
        "16-nan": (
            emb_params(np.where(np.arange(768) == 5, np.nan, 0.1).reshape(1, 768)),
            "BadTensor",
            3,
            "NaN",
        ),
        "16-inf": (emb_params(np.full((1, 768), np.inf)), "BadTensor", 3, "NaN or Inf"),
        "16-beyond-fp16": (emb_params(np.full((1, 768), 70000.0)), "BadTensor", 3, "65504"),
        "18-too-many-vectors": (
            emb_params(RNG.standard_normal((76, 768)) * 0.02),
            "BadTensor",
            3,
            "76 vectors",
        ),
    }


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def case_names(tmp_path_factory):
    return sorted(cases(tmp_path_factory.mktemp("names")))


def test_every_bad_file_is_refused_and_changes_nothing(tmp_path, lib, runner, catalog_snapshot):
    lib.add_embedding(
        __import__("conceptlib.registry.samples", fromlist=["x"]).sample_embedding("sd1", 1, 9),
        name="existing",
    )
    home = lib.settings.home
    lib.close()
    folder = tmp_path / "bad"
    folder.mkdir()
    before = catalog_snapshot(home)
    failures = []
    for name, (data, _cls, code, fragment) in cases(tmp_path).items():
        path = folder / f"{name}.safetensors"
        path.write_bytes(data)
        res = runner.invoke(cli, ["import", str(path)])
        err = res.output.strip().splitlines()
        if res.exit_code == 0 or not err or not err[0].startswith("error: "):
            failures.append(f"{name}: exit {res.exit_code}, output {res.output!r}")
            continue
        if code is not None and res.exit_code != code:
            failures.append(f"{name}: exit {res.exit_code}, expected {code}: {err[0]}")
        if fragment and fragment.lower() not in err[0].lower():
            failures.append(f"{name}: message {err[0]!r} lacks {fragment!r}")
        if len([x for x in err if x.startswith("error:")]) != 1:
            failures.append(f"{name}: not one error line: {err}")
        if catalog_snapshot(home) != before:
            failures.append(f"{name}: catalog or store changed")
    assert not (tmp_path / "sentinel").exists(), "a malicious payload ran"
    assert failures == []


def test_error_classes_at_the_library_level(tmp_path, lib):
    from conceptlib import errors

    folder = tmp_path / "bad"
    folder.mkdir()
    wrong = []
    for name, (data, cls, _code, _frag) in cases(tmp_path).items():
        path = folder / f"{name}.bin"
        path.write_bytes(data)
        report = lib.import_paths([path])
        (o,) = report.outcomes
        if o.status != "rejected":
            wrong.append(f"{name}: {o.status}")
        elif cls is not None and not isinstance(o.exception, getattr(errors, cls)):
            wrong.append(f"{name}: {type(o.exception).__name__} ({o.reason}), expected {cls}")
    assert not (tmp_path / "sentinel").exists()
    assert wrong == []
    assert lib.count() == 0


def test_folder_with_mixed_files_goes_on_past_failures(tmp_path, lib, runner):
    folder = tmp_path / "embeddings"
    (folder / "sub").mkdir(parents=True)
    (folder / "good-one.safetensors").write_bytes(emb_params(GOOD))
    (folder / "same-as-good.pt").write_bytes(
        a1111(GOOD, name="other")
    )  # same vectors, other format
    (folder / "broken.safetensors").write_bytes(b"")
    (folder / "sub" / "deep.pt").write_bytes(a1111(GOOD * 3))
    (folder / "notes.txt").write_text("not an embedding")
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    lib.close()
    res = runner.invoke(cli, ["import", str(folder), "--json"])
    assert res.exit_code == 3
    data = json.loads(res.output)
    by = {o["path"].rsplit("/", 1)[-1]: o for o in data["files"]}
    assert set(by) == {"good-one.safetensors", "same-as-good.pt", "broken.safetensors"}
    assert by["good-one.safetensors"]["status"] == "imported"
    assert by["same-as-good.pt"]["status"] == "present"
    assert by["same-as-good.pt"]["existing"] == "good-one"
    assert by["broken.safetensors"]["status"] == "rejected"
    assert "0 bytes" in by["broken.safetensors"]["reason"]
    assert (data["imported"], data["present"], data["rejected"]) == (1, 1, 1)
    res = runner.invoke(cli, ["import", str(folder), "--recursive"])
    assert "imported 1, already present 2, rejected 1" in res.output.replace("\n", " ")
    res = runner.invoke(cli, ["import", str(folder / "good-one.safetensors"), "--json"])
    assert res.exit_code == 0
    (o,) = json.loads(res.output)["files"]
    assert o["status"] == "present" and o["existing"] == "good-one"


def test_sidecars_previews_and_civitai_info(tmp_path, lib):
    folder = tmp_path / "webui"
    folder.mkdir()
    (folder / "EasyNeg.safetensors").write_bytes(emb_params(GOOD * 2))
    png = b"\x89PNG\r\n\x1a\n" + b"preview-bytes"
    (folder / "EasyNeg.preview.png").write_bytes(png)
    (folder / "EasyNeg.civitai.info").write_text(
        json.dumps(
            {
                "baseModel": "SD 1.5",
                "trainedWords": ["easynegative"],
                "model": {
                    "name": "EasyNegative",
                    "type": "TextualInversion",
                    "tags": ["negative", "Anime"],
                },
                "description": "<p>Use in the <b>negative</b> prompt.</p>",
            }
        )
    )
    (folder / "styled.pt").write_bytes(a1111(GOOD * 3, name="styled-in-file"))
    (folder / "styled.json").write_text(
        json.dumps(
            {
                "description": "a painterly style",
                "activation text": "styled, painterly",
                "notes": "v2",
            }
        )
    )
    report = lib.import_paths([folder])
    assert len(report.imported) == 2
    neg = lib.get("EasyNeg")
    assert neg.kind == "negative" and neg.source == "civitai" and neg.base_model == "SD 1.5"
    assert neg.tags == ["anime", "negative"] and neg.description == "Use in the negative prompt."
    assert neg.extra["trained_words"] == ["easynegative"]
    assert neg.previews[0].filename == "EasyNeg.preview.png"
    assert lib.preview_path(neg, "EasyNeg.preview.png").read_bytes() == png
    styled = lib.get("styled")
    assert styled.description == "a painterly style" and styled.extra["notes"] == "v2"
    assert styled.extra["name_in_file"] == "styled-in-file" and styled.extra["format"] == "a1111-pt"
    assert styled.token == "styled"


def test_cli_options_name_kind_tag_base(tmp_path, lib, runner):
    f = tmp_path / "learned_embeds.bin"
    f.write_bytes(torch_bytes({"<cat-toy>": torch.as_tensor(GOOD[0])}))
    lib.close()
    res = runner.invoke(
        cli,
        ["import", str(f), "--kind", "object", "--tag", "Toy", "--base-model", "SD 1.5", "--json"],
    )
    assert res.exit_code == 0, res.output
    info = json.loads(CliRunner().invoke(cli, ["show", "cat-toy", "--json"]).output)
    assert info["token"] == "<cat-toy>" and info["kind"] == "object" and info["tags"] == ["toy"]
    assert info["base_model"] == "SD 1.5" and info["num_vectors"] == 1
    g = tmp_path / "two.safetensors"
    g.write_bytes(emb_params(GOOD * 5))
    res = runner.invoke(cli, ["import", str(g), str(f), "--name", "x"])
    assert res.exit_code == 2 and "--name applies to one file" in res.output


def test_quality_flags_are_kept(tmp_path, lib):
    (tmp_path / "zeros.safetensors").write_bytes(emb_params(np.zeros((1, 768))))
    (tmp_path / "huge.safetensors").write_bytes(emb_params(np.full((1, 768), 50.0)))
    lib.import_paths([tmp_path / "zeros.safetensors", tmp_path / "huge.safetensors"])
    assert lib.get("zeros").flags == ["all_zero"]
    assert lib.get("huge").flags == ["norm_outlier"]


def test_export_round_trips_in_every_format(tmp_path, lib, runner, emb_factory):
    from conceptlib.registry.formats import read_embedding_file

    sd1 = lib.add_embedding(emb_factory("sd1", 3, 1), name="one", token="<one>")
    xl = lib.add_embedding(emb_factory("sdxl", 2, 2), name="xl")
    lib.close()
    for name, fmt, target in [
        ("one", "a1111-pt", tmp_path / "a1111"),
        ("one", "safetensors", tmp_path / "st"),
        ("one", "diffusers", tmp_path / "diff"),
        ("xl", "sdxl", tmp_path / "xl.safetensors"),
        ("xl", "safetensors", tmp_path / "xl2"),
        ("xl", "diffusers", tmp_path / "xl-diff"),
    ]:
        res = runner.invoke(cli, ["export", name, "--format", fmt, "-o", str(target), "--json"])
        assert res.exit_code == 0, res.output
        files = json.loads(res.output)["files"]
        parsed = read_embedding_file(files[0])
        want = sd1 if name == "one" else xl
        assert parsed.embedding.tensor_sha256 == want.tensor_sha256, (name, fmt)
    res = runner.invoke(cli, ["export", "one", "--format", "sdxl", "-o", str(tmp_path / "no")])
    assert res.exit_code == 2 and "sdxl" in res.output.lower()
    # the same bytes again: not an error; other bytes there: refused, exit 5, untouched
    target = tmp_path / "st" / "one.safetensors"
    before = target.stat().st_mtime_ns
    res = runner.invoke(
        cli, ["export", "one", "--format", "safetensors", "-o", str(tmp_path / "st")]
    )
    assert res.exit_code == 0 and target.stat().st_mtime_ns == before
    target.write_bytes(b"something else")
    res = runner.invoke(
        cli, ["export", "one", "--format", "safetensors", "-o", str(tmp_path / "st")]
    )
    assert res.exit_code == 5 and "already exists with other contents" in res.output
    assert target.read_bytes() == b"something else"


def test_import_progress_callback_counts_every_file(tmp_path, lib):
    for i in range(5):
        (tmp_path / f"e{i}.safetensors").write_bytes(emb_params(GOOD + i))
    seen = []
    lib.import_paths([tmp_path], on_progress=lambda d, t, p: seen.append((d, t)))
    assert seen == [(i, 5) for i in range(1, 6)]

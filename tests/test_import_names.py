"""Names and tokens on the way in and out (issue 11, "what real users bring").

Every name or token conceptlib derives from outside data is shown with the reason,
the original is kept; the name rules hold inside one import or blend as across them;
re-importing applies the options given; exports write what tokenizers and UIs match.
Every refusal checks the message, the exit status and that catalog and store are
unchanged.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fixtures_formats import make_png_embedding

from conceptlib.cli.main import cli
from conceptlib.registry.formats.safetensors_io import read_safetensors, write_safetensors
from conceptlib.registry.samples import sample_embedding

RNG = np.random.default_rng(11)


def vecs(n: int, width: int = 768, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, width)) * 0.02).astype(np.float32)


def emb_params(arr: np.ndarray) -> bytes:
    return write_safetensors({"emb_params": arr})


def keyed(key: str, arr: np.ndarray) -> bytes:
    """A diffusers ``{token: [n, d]}`` file."""
    return write_safetensors({key: arr})


def torch_bin(obj: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(v) for k, v in obj.items()}, buf)
    return buf.getvalue()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env={"COLUMNS": "300"})  # tables on one line per row


def run_json(runner: CliRunner, *args: str) -> tuple[int, dict]:
    res = runner.invoke(cli, [*args, "--json"])
    return res.exit_code, (json.loads(res.output) if res.output.strip().startswith("{") else {})


def show(runner: CliRunner, name: str) -> dict:
    res = runner.invoke(cli, ["show", name, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def by_file(report: dict) -> dict[str, dict]:
    return {o["path"].replace("\\", "/").split("/", 1)[-1]: o for o in report["files"]}


def tail(path: str, n: int = 2) -> str:
    return "/".join(path.replace("\\", "/").split("/")[-n:])


# --------------------------------------------------------------------------- tokens in


def test_a_token_that_cannot_be_a_trigger_is_kept_and_reported(tmp_path, lib, runner):
    """diffusers keys ``<Le Petit Prince-moon >`` and ``_*_``, an SDXL pair keyed by an
    invalid token: each becomes the name as token, the original kept and shown."""
    prince = tmp_path / "in" / "prince"
    prince.mkdir(parents=True)
    (prince / "learned_embeds.bin").write_bytes(
        torch_bin({"<Le Petit Prince-moon >": vecs(2, seed=1)})
    )
    (tmp_path / "in" / "stars.safetensors").write_bytes(keyed("_*_", vecs(1, seed=2)))
    pair = tmp_path / "in" / "neon"
    pair.mkdir()
    (pair / "learned_embeds.safetensors").write_bytes(keyed("Neon City!", vecs(2, seed=3)))
    (pair / "learned_embeds_2.safetensors").write_bytes(keyed("Neon City!", vecs(2, 1280, seed=4)))
    lib.close()
    code, report = run_json(runner, "import", str(tmp_path / "in"), "--recursive")
    assert code == 0, report
    files = {tail(o["path"]): o for o in report["files"]}
    prince_o = files["prince/learned_embeds.bin"]
    assert (prince_o["name"], prince_o["token"]) == ("Le-Petit-Prince-moon",) * 2
    reasons = {(d["field"], d["reason"]): d for d in prince_o["derived"]}
    assert reasons[("name", "token-in-file")]["source"] == "Le Petit Prince-moon "
    assert reasons[("token", "invalid-token")]["source"] == "<Le Petit Prince-moon >"
    assert "ends with a dot or a space" in reasons[("token", "invalid-token")]["why"]
    stars = files["in/stars.safetensors"]
    assert (stars["name"], stars["token"]) == ("stars", "stars")
    assert [(d["field"], d["reason"], d["source"]) for d in stars["derived"]] == [
        ("token", "invalid-token", "_*_")
    ]
    neon = files["neon/learned_embeds.safetensors"]
    assert neon["token"] == neon["name"] == "Neon-City!"
    assert ("token", "invalid-token") in {(d["field"], d["reason"]) for d in neon["derived"]}
    # the original is kept in the record and shown by `show`
    assert show(runner, "Le-Petit-Prince-moon")["extra"]["token_in_file"] == (
        "<Le Petit Prince-moon >"
    )
    assert show(runner, "stars")["extra"]["token_in_file"] == "_*_"
    assert show(runner, "Neon-City!")["extra"]["token_in_file"] == "Neon City!"
    res = runner.invoke(cli, ["show", "stars"])
    assert "token in file" in res.output and "_*_" in res.output


def test_import_token_option_chooses_the_trigger(tmp_path, lib, runner, catalog_snapshot):
    f = tmp_path / "learned_embeds.bin"
    f.write_bytes(torch_bin({"<Le Petit Prince-moon >": vecs(2, seed=5)}))
    other = tmp_path / "other.safetensors"
    other.write_bytes(emb_params(vecs(1, seed=6)))
    home = lib.settings.home
    lib.close()
    before = catalog_snapshot(home)
    for args, code, fragment in [
        (["--token", "painting"], 2, "ordinary word"),
        (["--token", "<two words>"], 2, "whitespace"),
        (["--token", "a/b"], 2, "'/'"),
    ]:
        res = runner.invoke(cli, ["import", str(f), *args])
        assert res.exit_code == code and fragment in res.output, res.output
    res = runner.invoke(cli, ["import", str(f), str(other), "--token", "<prince>"])
    assert res.exit_code == 2 and "--token applies to one file; 2 files" in res.output
    assert catalog_snapshot(home) == before
    code, report = run_json(runner, "import", str(f), "--token", "<le-petit-prince>")
    assert code == 0
    (o,) = report["files"]
    assert o["token"] == "<le-petit-prince>"
    assert ("token", "token-option", "<Le Petit Prince-moon >") in {
        (d["field"], d["reason"], d["source"]) for d in o["derived"]
    }
    info = show(runner, o["name"])
    assert info["token"] == "<le-petit-prince>"
    assert info["extra"]["token_in_file"] == "<Le Petit Prince-moon >"


def test_a1111_image_embedding_is_named_by_the_name_inside(tmp_path, lib, runner):
    """A1111 triggers an image embedding by the ``name`` inside it, not the file name."""
    (tmp_path / "00042-1234.png").write_bytes(make_png_embedding(vecs(1, seed=7), name="Ink Wash"))
    lib.close()
    code, report = run_json(runner, "import", str(tmp_path / "00042-1234.png"))
    assert code == 0
    (o,) = report["files"]
    assert o["name"] == "Ink-Wash"
    (d,) = o["derived"]
    assert (d["reason"], d["source"]) == ("name-in-image", "Ink Wash")
    assert "characters a name cannot hold" in d["why"]


def test_sd_concepts_library_folder_reads_token_and_kind(tmp_path, lib, runner):
    folder = tmp_path / "cat-toy"
    folder.mkdir()
    (folder / "learned_embeds.bin").write_bytes(torch_bin({"<cat-toy>": vecs(1, seed=8)}))
    (folder / "token_identifier.txt").write_text("<my-cat>\n")
    (folder / "type_of_concept.txt").write_text("style\n")
    lib.close()
    code, report = run_json(runner, "import", str(folder))
    assert code == 0
    (o,) = report["files"]
    assert report["skipped"] == 2
    assert {s["path"].rsplit("/", 1)[-1] for s in report["skipped_files"]} == {
        "token_identifier.txt",
        "type_of_concept.txt",
    }
    info = show(runner, o["name"])
    assert (info["name"], info["token"], info["kind"]) == ("my-cat", "<my-cat>", "style")
    assert info["extra"]["token_in_file"] == "<cat-toy>"  # the file's own key, kept
    assert ("token", "token-identifier", "<cat-toy>") in {
        (d["field"], d["reason"], d["source"]) for d in o["derived"]
    }
    # --kind still wins over type_of_concept.txt
    (folder / "learned_embeds.bin").write_bytes(torch_bin({"<cat-toy>": vecs(1, seed=9)}))
    (folder / "token_identifier.txt").write_text("<other-cat>")
    code, report = run_json(runner, "import", str(folder), "--kind", "object")
    assert code == 0 and show(runner, "other-cat")["kind"] == "object"


# --------------------------------------------------------------------------- what the table says


def test_import_table_shows_every_derived_name_and_why(tmp_path, lib, runner):
    folder = tmp_path / "webui"
    folder.mkdir()
    (folder / "watercolor.safetensors").write_bytes(emb_params(vecs(1, seed=10)))
    (folder / "My Style.pt").write_bytes(emb_params(vecs(1, seed=11)))
    (folder / "plain-name.safetensors").write_bytes(emb_params(vecs(1, seed=12)))
    (folder / "zeros.safetensors").write_bytes(emb_params(np.zeros((1, 768), np.float32)))
    lib.close()
    res = runner.invoke(cli, ["import", str(folder)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "watercolor-ti" in text and "ordinary word" in text
    assert "write watercolor-ti in prompts" in text
    assert "My-Style" in text and "characters a name cannot hold were replaced" in text
    assert "flags: all_zero" in text
    code, report = run_json(runner, "import", str(folder))
    files = by_file(report)
    assert all(o["status"] == "present" for o in files.values())
    # the derived reasons, by code, in --json (a fresh catalog)
    fresh = {"CONCEPTLIB_HOME": str(tmp_path / "other-home"), "CONCEPTLIB_DATABASE_URL": None}
    res = CliRunner(env=fresh).invoke(cli, ["import", str(folder), "--json"])
    files = {o["path"].rsplit("/", 1)[-1]: o for o in json.loads(res.output)["files"]}
    assert [d["reason"] for d in files["watercolor.safetensors"]["derived"]] == ["ordinary-word"]
    assert [d["reason"] for d in files["My Style.pt"]["derived"]] == ["invalid-characters"]
    assert files["plain-name.safetensors"]["derived"] == []
    assert files["zeros.safetensors"]["flags"] == ["all_zero"]


def test_untrusted_text_is_escaped_in_the_table(tmp_path, lib, runner):
    f = tmp_path / "[red]x[-red].safetensors"
    f.write_bytes(keyed("<bad\x1b[31mtoken>", vecs(1, seed=13)))
    lib.close()
    res = runner.invoke(cli, ["import", str(f)])
    assert res.exit_code == 0, res.output
    assert "[red]x[-red].safetensors" in " ".join(res.output.split()).replace(" ", "")
    assert "\x1b" not in res.output
    res = runner.invoke(cli, ["show", "red-x-red"])
    assert "\x1b" not in res.output and "\\x1b" in res.output


def test_skipped_files_are_counted_and_listed(tmp_path, lib, runner):
    folder = tmp_path / "embeddings"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.safetensors").write_bytes(emb_params(vecs(1, seed=14)))
    (folder / "a.preview.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "a.json").write_text("{}")
    (folder / ".hidden.safetensors").write_bytes(emb_params(vecs(1, seed=15)))
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "sub" / "deep.safetensors").write_bytes(emb_params(vecs(1, seed=16)))
    lib.close()
    code, report = run_json(runner, "import", str(folder))
    assert code == 0 and report["imported"] == 1 and report["skipped"] == 5
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped_files"]}
    assert reasons == {
        ".hidden.safetensors": "hidden",
        "a.json": "a sidecar (metadata read with its embedding)",
        "a.preview.png": "a preview image (kept with its embedding)",
        "picture.png": "an image without an embedding",
        "sub": "a sub-folder (give --recursive to import it)",
    }
    res = runner.invoke(cli, ["import", str(folder)])
    assert "skipped 5" in res.output
    res = runner.invoke(cli, ["import", str(folder), "-v"])
    assert "picture.png: an image without an embedding" in " ".join(res.output.split())


# --------------------------------------------------------------------------- same stem, two families


@pytest.mark.parametrize("sd1_first", [True, False])
def test_same_stem_in_two_families_both_register(tmp_path, lib, runner, sd1_first):
    root = tmp_path / "embeddings"
    sd1_dir, xl_dir = ("a-sd15", "b-sdxl") if sd1_first else ("b-sd15", "a-sdxl")
    (root / sd1_dir).mkdir(parents=True)
    (root / xl_dir).mkdir()
    xl = sample_embedding("sdxl", 2, 17)
    (root / sd1_dir / "fancy-neg.pt").write_bytes(emb_params(vecs(2, seed=18)))
    (root / xl_dir / "fancy-neg.safetensors").write_bytes(write_safetensors(dict(xl.vectors)))
    lib.close()
    code, report = run_json(runner, "import", str(root), "--recursive")
    assert code == 0, report
    files = {tail(o["path"]): o for o in report["files"]}
    first, second = ("sd1", "sdxl") if sd1_first else ("sdxl", "sd1")
    renamed = files[
        f"{sd1_dir}/fancy-neg.pt" if not sd1_first else f"{xl_dir}/fancy-neg.safetensors"
    ]
    assert renamed["name"] == f"fancy-neg-{second}" and renamed["token"] == renamed["name"]
    (d,) = renamed["derived"]
    assert d["reason"] == "name-taken" and f"a {first} embedding" in d["why"]
    assert show(runner, "fancy-neg")["family"] == first
    info = show(runner, f"fancy-neg-{second}")
    assert info["family"] == second and info["extra"]["renamed_from"] == "fancy-neg"
    res = runner.invoke(cli, ["import", str(root), "--recursive"])
    assert "already present 2" in res.output


def test_same_stem_other_family_already_in_the_catalog(tmp_path, lib, runner):
    lib.add_embedding(sample_embedding("sd1", 1, 19), name="fancy-neg")
    xl = sample_embedding("sdxl", 1, 20)
    f = tmp_path / "fancy-neg.safetensors"
    f.write_bytes(write_safetensors(dict(xl.vectors)))
    lib.close()
    code, report = run_json(runner, "import", str(f))
    assert code == 0 and report["files"][0]["name"] == "fancy-neg-sdxl"


def test_same_stem_same_family_is_still_a_collision(tmp_path, lib, runner, catalog_snapshot):
    lib.add_embedding(sample_embedding("sd1", 1, 21), name="fancy-neg")
    home = lib.settings.home
    lib.close()
    f = tmp_path / "fancy-neg.pt"
    f.write_bytes(emb_params(vecs(1, seed=22)))
    before = catalog_snapshot(home)
    res = runner.invoke(cli, ["import", str(f)])
    assert res.exit_code == 5 and "already used by 'fancy-neg'" in res.output
    assert catalog_snapshot(home) == before


# --------------------------------------------------------------------------- foo and foo_N


@pytest.mark.parametrize("multi_first", [True, False])
def test_expansion_rule_inside_one_import_in_either_order(
    tmp_path, lib, runner, catalog_snapshot, multi_first
):
    """``gs-999`` (3 vectors) and ``gs-999_2`` in one folder: one is refused, as two
    separate imports refuse the second (diffusers expands gs-999 to gs-999 gs-999_1 gs-999_2)."""
    root = tmp_path / "in"
    multi_dir, single_dir = ("a", "b") if multi_first else ("b", "a")
    (root / multi_dir).mkdir(parents=True)
    (root / single_dir).mkdir()
    (root / multi_dir / "gs-999.pt").write_bytes(emb_params(vecs(3, seed=23)))
    (root / single_dir / "gs-999_2.pt").write_bytes(emb_params(vecs(1, seed=24)))
    home = lib.settings.home
    lib.close()
    res = runner.invoke(cli, ["import", str(root), "--recursive", "--json"])
    assert res.exit_code == 3, res.output
    files = {o["path"].rsplit("/", 1)[-1]: o for o in json.loads(res.output)["files"]}
    kept, refused = ("gs-999.pt", "gs-999_2.pt") if multi_first else ("gs-999_2.pt", "gs-999.pt")
    assert files[kept]["status"] == "imported"
    assert files[refused]["status"] == "rejected"
    assert files[refused]["error"] == "name_collision"
    assert "in this same import" in files[refused]["reason"]
    assert "diffusers loads" in files[refused]["reason"]
    entries = catalog_snapshot(home)[0]["embedding"]
    assert len(entries) == 1 and repr(kept.removesuffix(".pt")) in entries[0]
    # the same as two separate imports, folder "a" first
    separate = CliRunner(env={"CONCEPTLIB_HOME": str(tmp_path / "home-2")})
    assert separate.invoke(cli, ["import", str(root / "a")]).exit_code == 0
    res = separate.invoke(cli, ["import", str(root / "b")])
    assert res.exit_code == 5 and "diffusers loads" in res.output
    listed = json.loads(separate.invoke(cli, ["list", "--json"]).output)
    assert [e["name"] for e in listed] == [kept.removesuffix(".pt")]


# --------------------------------------------------------------------------- re-import


def test_reimport_applies_the_options_given(tmp_path, lib, runner, catalog_snapshot):
    f = tmp_path / "EasyNegative.safetensors"
    f.write_bytes(emb_params(vecs(8, seed=25)))
    lib.add_embedding(sample_embedding("sd1", 1, 26), name="taken", token="<taken>")
    lib.close()
    assert runner.invoke(cli, ["import", str(f)]).exit_code == 0
    assert show(runner, "EasyNegative")["kind"] == "other"
    res = runner.invoke(
        cli,
        ["import", str(f), "--kind", "negative", "--tag", "negative", "--base-model", "SD 1.5"],
    )
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "kind: other -> negative" in text and "added tags: negative" in text
    assert "(1 updated)" in text
    info = show(runner, "EasyNegative")
    assert (info["kind"], info["tags"], info["base_model"]) == ("negative", ["negative"], "SD 1.5")
    # the same options again: present, nothing to change
    code, report = run_json(runner, "import", str(f), "--kind", "negative", "--tag", "negative")
    assert code == 0 and report["files"][0]["changes"] == {} and report["updated"] == 0
    assert report["files"][0]["notes"] == ["--kind, --tag: already so, nothing changed"]
    # --token applies too; --name is not applied, and the summary says so
    code, report = run_json(runner, "import", str(f), "--token", "<easyneg>", "--name", "en")
    (o,) = report["files"]
    assert o["changes"] == {"token": ["EasyNegative", "<easyneg>"]} and o["token"] == "<easyneg>"
    assert "--name en was not applied" in o["notes"][0]
    assert show(runner, "EasyNegative")["token"] == "<easyneg>"
    # a refused option changes nothing: the token of another entry
    home = tmp_path / "conceptlib-home"
    before = catalog_snapshot(home)
    res = runner.invoke(cli, ["import", str(f), "--token", "<taken>", "--kind", "style"])
    assert res.exit_code == 5 and "already used by 'taken'" in res.output
    assert catalog_snapshot(home) == before


# --------------------------------------------------------------------------- exports


def test_pt_for_sdxl_is_refused_alike_by_both_exports(tmp_path, lib, runner, catalog_snapshot):
    lib.add_embedding(sample_embedding("sdxl", 2, 27), name="neon-xl")
    lib.add_embedding(sample_embedding("sd1", 1, 28), name="cat-toy")
    home = lib.settings.home
    lib.close()
    before = catalog_snapshot(home)
    a = runner.invoke(cli, ["export", "neon-xl", "--format", "a1111-pt", "-o", str(tmp_path / "a")])
    b = runner.invoke(
        cli,
        [
            "export",
            "--for-prompt",
            "<cat-toy> <neon-xl>",
            "--format",
            "a1111",
            "--pt",
            "-o",
            str(tmp_path / "b"),
        ],
    )
    assert a.exit_code == b.exit_code == 2
    assert a.output == b.output
    assert "'neon-xl' is SDXL" in a.output and "use the sdxl format" in a.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    c = runner.invoke(
        cli,
        [
            "export",
            "--for-prompt",
            "<cat-toy>",
            "--format",
            "comfyui",
            "--pt",
            "-o",
            str(tmp_path / "c"),
        ],
    )
    assert c.exit_code == 2 and "--pt writes A1111 .pt files" in c.output
    assert not (tmp_path / "c").exists()
    assert catalog_snapshot(home) == before


def test_two_diffusers_exports_into_one_folder(tmp_path, lib, runner):
    from conceptlib.registry.formats import read_embedding_file

    cat = lib.add_embedding(sample_embedding("sd1", 2, 29), name="cat-toy", token="<Cat-Toy>")
    dog = lib.add_embedding(sample_embedding("sd1", 1, 30), name="dog-toy")
    xl = lib.add_embedding(sample_embedding("sdxl", 1, 31), name="neon-xl", token="<Neon>")
    lib.close()
    out = tmp_path / "diffusers"
    for name in ("cat-toy", "dog-toy", "neon-xl"):
        res = runner.invoke(cli, ["export", name, "--format", "diffusers", "-o", str(out)])
        assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "cat-toy.safetensors",
        "dog-toy.safetensors",
        "neon-xl/learned_embeds.safetensors",
        "neon-xl/learned_embeds_2.safetensors",
    ]
    tensors, _ = read_safetensors((out / "cat-toy.safetensors").read_bytes())
    assert list(tensors) == ["<cat-toy>"]  # the tokenizer's form
    for f, want in [
        (out / "cat-toy.safetensors", cat),
        (out / "dog-toy.safetensors", dog),
        (out / "neon-xl" / "learned_embeds.safetensors", xl),
    ]:
        assert read_embedding_file(f).embedding.tensor_sha256 == want.tensor_sha256
    # the same export again is not an error; a different file there is (exit 5)
    res = runner.invoke(cli, ["export", "cat-toy", "--format", "diffusers", "-o", str(out)])
    assert res.exit_code == 0
    (out / "dog-toy.safetensors").write_bytes(b"not this")
    res = runner.invoke(
        cli, ["export", "--for-prompt", "<dog-toy>", "--format", "a1111", "-o", str(out)]
    )
    assert res.exit_code == 5 and "already exists with other contents" in res.output
    assert (out / "dog-toy.safetensors").read_bytes() == b"not this"


# --------------------------------------------------------------------------- one blend


def test_expansion_rule_inside_one_blend(lib, catalog_snapshot):
    from conceptlib.compose.blend import blend
    from conceptlib.errors import NameCollision

    lib.add_embedding(sample_embedding("sd1", 3, 32), name="base-a")
    lib.add_embedding(sample_embedding("sd1", 3, 33), name="base-b")
    home = lib.settings.home
    before = catalog_snapshot(home)
    for name, token, own in [("mix", "mix_1", "trigger token"), ("mix_2", "mix", "name")]:
        with pytest.raises(NameCollision) as exc:
            blend(lib, name, [("base-a", 0.5), ("base-b", 0.5)], token=token)
        assert "diffusers loads" in exc.value.message and f"its own {own}" in exc.value.message
        assert catalog_snapshot(home) == before
    # across two blends, the same rule
    blend(lib, "mix", [("base-a", 0.5), ("base-b", 0.5)])
    with pytest.raises(NameCollision, match="diffusers loads"):
        blend(lib, "mix_2", [("base-a", 0.3), ("base-b", 0.7)], rows=1)

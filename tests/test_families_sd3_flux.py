"""SD3 and FLUX embeddings (issue 17, item 7): families from the set of slots, the T5
key spellings in circulation (OneTrainer's ``t5``, ComfyUI's ``t5xxl``), compatibility
rows for every pair of families, export in both spellings, and ``compose`` refusing
these families with one clear message. Every file is built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_support import store_files
from click.testing import CliRunner
from fixtures_formats import make_diffusers_safetensors, rand_vectors

from conceptlib.cli.main import cli
from conceptlib.errors import AmbiguousEmbedding, FamilyMismatch, UnsupportedFamily
from conceptlib.registry.formats import read_embedding_bytes
from conceptlib.registry.formats.embedding import Embedding
from conceptlib.registry.formats.safetensors_io import read_safetensors, write_safetensors
from conceptlib.schemas.enums import (
    EMBEDDING_FAMILIES,
    Family,
    compatibility,
    compatible_families,
)


def flux(n: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    return {"clip_l": rand_vectors(n, 768, seed), "t5xxl": rand_vectors(n, 4096, seed + 1)}


def sd3(n: int = 2, seed: int = 10) -> dict[str, np.ndarray]:
    return {
        "clip_l": rand_vectors(n, 768, seed),
        "clip_g": rand_vectors(n, 1280, seed + 1),
        "t5xxl": rand_vectors(n, 4096, seed + 2),
    }


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


# --------------------------------------------------------------------------- families


@pytest.mark.parametrize(
    ("slots", "family"),
    [
        ({"clip_l"}, "sd1"),
        ({"clip_h"}, "sd2"),
        ({"clip_l", "clip_g"}, "sdxl"),
        ({"clip_l", "clip_g", "t5xxl"}, "sd3"),
        ({"clip_g", "t5xxl"}, "sd3"),
        ({"clip_l", "t5xxl"}, "flux"),
        ({"t5xxl"}, "flux"),
    ],
)
def test_the_family_comes_from_the_set_of_slots(slots: set[str], family: str) -> None:
    width = {"clip_l": 768, "clip_h": 1024, "clip_g": 1280, "t5xxl": 4096}
    emb = Embedding.from_slots({s: rand_vectors(2, width[s], i) for i, s in enumerate(slots)})
    assert emb.family.value == family
    assert EMBEDDING_FAMILIES[frozenset(slots)].value == family


def test_unequal_row_counts_and_odd_sets_are_refused() -> None:
    with pytest.raises(FamilyMismatch, match="FLUX embedding with unequal row counts"):
        Embedding.from_slots({"clip_l": rand_vectors(2, 768), "t5xxl": rand_vectors(3, 4096)})
    with pytest.raises(FamilyMismatch, match="fit no base-model family"):
        Embedding.from_slots({"clip_h": rand_vectors(1, 1024), "t5xxl": rand_vectors(1, 4096)})
    with pytest.raises(FamilyMismatch, match=r"width 4000 .* 4096 \(T5-XXL"):
        Embedding.from_single(rand_vectors(1, 4000))


def test_the_real_t5_layout_imports() -> None:
    """The FLUX textual-inversion script (diffusers' style) saves the T5 encoder's
    vectors as ``{token: [n, 4096]}`` with ``{"format": "pt"}``: refused before (width
    4096 was no family), read now as a T5-only FLUX embedding with its token."""
    t = rand_vectors(3, 4096, seed=7)
    parsed = read_embedding_bytes(make_diffusers_safetensors("<my-flux>", t, writer="package"))
    assert parsed.format == "diffusers" and parsed.token == "<my-flux>"
    assert parsed.embedding.family == Family.FLUX
    assert list(parsed.embedding.vectors) == ["t5xxl"]
    assert np.array_equal(parsed.embedding.vectors["t5xxl"], t)


def test_both_t5_spellings_are_one_embedding() -> None:
    v = flux()
    comfy = read_embedding_bytes(write_safetensors(v))
    onetrainer = read_embedding_bytes(write_safetensors({"clip_l": v["clip_l"], "t5": v["t5xxl"]}))
    assert comfy.format == onetrainer.format == "flux"
    assert comfy.embedding.tensor_sha256 == onetrainer.embedding.tensor_sha256
    assert (comfy.metadata["t5_key"], onetrainer.metadata["t5_key"]) == ("t5xxl", "t5")


def test_onetrainer_sd3_output_vectors_are_left_out_and_said() -> None:
    v = sd3()
    data = write_safetensors(
        {"clip_l": v["clip_l"], "clip_g": v["clip_g"], "t5": v["t5xxl"], "t5_out": v["t5xxl"][:1]}
    )
    parsed = read_embedding_bytes(data)
    assert parsed.format == "sd3" and parsed.embedding.family == Family.SD3
    assert sorted(parsed.embedding.vectors) == ["clip_g", "clip_l", "t5xxl"]
    assert parsed.metadata["output_vectors_left_out"] == ["t5_out"]


def test_a_file_with_both_t5_spellings_is_ambiguous() -> None:
    v = flux()
    with pytest.raises(AmbiguousEmbedding, match="both t5 .* and t5xxl"):
        read_embedding_bytes(write_safetensors({**v, "t5": v["t5xxl"]}))


# --------------------------------------------------------------------------- compatibility


def test_every_pair_of_families_has_a_row() -> None:
    rows = {(e.value, m.value): compatibility(e, m) for e in Family for m in Family}
    assert len(rows) == len(Family) ** 2
    assert set(rows.values()) == {"full", "partial", "none"}
    assert all(rows[(f.value, f.value)] == "full" for f in Family)
    # A FLUX file's clip_l part reaches SD 1.x's encoder: partial, never full.
    assert rows[("flux", "sd1")] == "partial"
    assert rows[("sd3", "flux")] == rows[("flux", "sd3")] == "partial"
    assert rows[("sd1", "sdxl")] == "partial"
    # Kept as they were: SDXL on SD 1.x is none (A1111, InvokeAI); SD 2.x shares nothing.
    assert rows[("sdxl", "sd1")] == "none"
    assert all(rows[("sd2", m.value)] == "none" for m in Family if m != Family.SD2)
    assert compatible_families("sd1") == [Family.SD1, Family.SD3, Family.FLUX]


def test_search_compatible_with_flux(lib) -> None:
    lib.add_embedding(Embedding.from_slots(flux()), name="flux-style")
    lib.add_embedding(Embedding.from_slots(sd3()), name="sd3-style")
    lib.add_embedding(Embedding.from_slots({"clip_h": rand_vectors(1, 1024)}), name="sd2-only")
    names = sorted(i.name for i in lib.search(compatible_with="flux"))
    assert names == ["flux-style", "sd3-style"]
    info = lib.get("flux-style")
    assert info.family == "flux" and info.dims == [768, 4096]
    assert info.compatibility["sd1"] == "partial" and info.compatibility["sd2"] == "none"


# --------------------------------------------------------------------------- CLI import / export


def test_import_and_export_in_both_spellings(tmp_path: Path, _isolated_home: Path) -> None:
    v = flux(3, seed=3)
    src = tmp_path / "flux-style.safetensors"
    src.write_bytes(write_safetensors({"clip_l": v["clip_l"], "t5": v["t5xxl"]}))
    res = run("import", str(src), "--json")
    assert res.exit_code == 0, res.output
    shown = json.loads(run("show", "flux-style", "--json").output)
    assert shown["family"] == "flux" and shown["dims"] == [768, 4096]

    out = tmp_path / "out"
    res = run("export", "flux-style", "-o", str(out / "a.safetensors"), "--json")
    assert res.exit_code == 0, res.output
    tensors, _meta = read_safetensors((out / "a.safetensors").read_bytes())
    assert sorted(tensors) == ["clip_l", "t5xxl"]
    res = run("export", "flux-style", "--t5-key", "t5", "-o", str(out / "b.safetensors"))
    assert res.exit_code == 0, res.output
    tensors, _meta = read_safetensors((out / "b.safetensors").read_bytes())
    assert sorted(tensors) == ["clip_l", "t5"]
    assert np.array_equal(tensors["t5"], v["t5xxl"])
    # Both read back as the entry itself.
    again = json.loads(run("import", str(out), "--json").output)
    assert {o["status"] for o in again["files"]} == {"present"}


@pytest.mark.parametrize("fmt", ["a1111-pt", "diffusers", "sdxl"])
def test_formats_that_cannot_hold_flux_are_refused(
    fmt: str, tmp_path: Path, lib, catalog_snapshot
) -> None:
    lib.add_embedding(Embedding.from_slots(flux()), name="flux-style")
    home = lib.settings.home
    lib.close()
    before = catalog_snapshot(home)
    out = tmp_path / "out"
    res = run("export", "flux-style", "--format", fmt, "-o", str(out))
    assert res.exit_code == 2, res.output
    assert "only the safetensors format holds" in res.output
    assert not out.exists()
    assert catalog_snapshot(home) == before


# --------------------------------------------------------------------------- compose


def _flux_folder(root: Path) -> Path:
    folder = root / "flux-dev"
    (folder / "text_encoder").mkdir(parents=True)
    (folder / "text_encoder_2").mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    (folder / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 768}))
    (folder / "text_encoder_2" / "config.json").write_text(
        json.dumps({"model_type": "t5", "d_model": 4096})
    )
    return folder


def _sd3_single_file(root: Path) -> Path:
    path = root / "sd3_medium.safetensors"
    path.write_bytes(
        write_safetensors(
            {"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": np.zeros((2, 2))}
        )
    )
    return path


@pytest.mark.parametrize("dry", [False, True])
@pytest.mark.parametrize(("make", "label"), [(_flux_folder, "FLUX"), (_sd3_single_file, "SD3")])
def test_compose_refuses_sd3_and_flux(
    make, label: str, dry: bool, tmp_path: Path, lib, catalog_snapshot
) -> None:
    lib.add_embedding(Embedding.from_slots(flux()), name="flux-style")
    home = lib.settings.home
    lib.close()
    base = make(tmp_path)
    before, files = catalog_snapshot(home), store_files(home)
    out = tmp_path / "img.png"
    args = ["compose", "a <flux-style> cat", "--base", str(base), "-o", str(out)]
    res = run(*args, *(["--dry-run"] if dry else []))
    assert res.exit_code == UnsupportedFamily.exit_code == 3, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1
    assert f"is a {label} model; conceptlib has no {label} pipeline yet" in lines[0]
    assert not out.exists()
    assert catalog_snapshot(home) == before and store_files(home) == files


def test_load_base_refuses_a_flux_folder(tmp_path: Path) -> None:
    from conceptlib.models import load_base

    with pytest.raises(UnsupportedFamily, match="FLUX model") as exc:
        load_base(str(_flux_folder(tmp_path)), device="cpu")
    assert exc.value.facts["family"] == "flux"


def test_a_flux_embedding_on_sd1_is_a_noted_partial(lib) -> None:
    from conceptlib.compose.loader import partial_note

    note = partial_note("<f>", "flux", Family.SD1)
    assert "reaches only the clip_l text encoder" in note
    assert "other vectors are left out" in note
    assert "the second gets neutral vectors" in partial_note("<s>", "sd1", Family.SDXL)

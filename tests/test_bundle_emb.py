"""Embeddings bundled in LoRA files (issue 17, item 6): ``import`` registers each
``bundle_emb.<name>.*`` as its own entry (source ``bundle``, the LoRA recorded by its
SHA-256, its weights not stored), and ``export NAME --bundle-into LORA -o OUT`` writes
one in. Every LoRA file is built here, with the key names of kohya / OneTrainer."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from cli_support import import_is_refused, store_files
from click.testing import CliRunner
from fixtures_formats import rand_vectors

from conceptlib.cli.main import cli
from conceptlib.registry.formats.bundle import (
    MAX_BUNDLES,
    has_bundles,
    lora_family,
    read_lora_bundles,
)
from conceptlib.registry.formats.embedding import Embedding
from conceptlib.registry.formats.safetensors_io import (
    read_safetensors,
    write_safetensors,
)

#: One kohya-named tensor per family (enough for lora_family to tell them apart).
LORA_KEYS = {
    "sd1": {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": (
            4,
            768,
        ),
    },
    "sdxl": {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 1280),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048),
    },
    "flux": {
        "lora_transformer_single_transformer_blocks_0_attn_to_q.lora_down.weight": (4, 3072),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 768),
    },
}


def lora_bytes(family: str, bundles: dict[str, np.ndarray], metadata=None) -> bytes:
    tensors = {
        k: np.full(shape, 0.01 * (i + 1), np.float32)
        for i, (k, shape) in enumerate(LORA_KEYS[family].items())
    }
    tensors.update(bundles)
    return write_safetensors(tensors, metadata or {"ss_network_module": "networks.lora"})


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def json_of(res) -> dict:
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


# --------------------------------------------------------------------------- import


def test_import_registers_each_bundle(tmp_path: Path, _isolated_home: Path) -> None:
    cat, neg = rand_vectors(2, 768, 1), rand_vectors(3, 768, 2)
    data = lora_bytes(
        "sd1",
        {
            "bundle_emb.cat-toy.string_to_param.*": cat,  # A1111's .pt layout
            "bundle_emb.bad-hands.emb_params": neg,  # kohya's
        },
    )
    path = tmp_path / "cat-lora.safetensors"
    path.write_bytes(data)
    assert has_bundles(path)
    report = json_of(run("import", str(path), "--json"))
    assert report["imported"] == 2
    by_name = {o["name"]: o for o in report["files"]}
    assert set(by_name) == {"cat-toy", "bad-hands"}
    shown = json_of(run("show", "cat-toy", "--json"))
    assert shown["source"] == "bundle" and shown["family"] == "sd1"
    lora_sha = hashlib.sha256(data).hexdigest()
    bundle = shown["extra"]["bundle"]
    assert bundle["lora_sha256"] == lora_sha
    assert bundle["lora_family"] == "sd1" and bundle["parts"] == ["string_to_param.*"]
    assert shown["tensor_sha256"] == Embedding.from_slots({"clip_l": cat}).tensor_sha256
    # The LoRA itself is not stored: only the two canonical blobs are.
    blobs = store_files(_isolated_home)
    assert len(blobs) == 2 and not any(lora_sha in b for b in blobs)
    # Importing the file again: both present.
    again = json_of(run("import", str(path), "--json"))
    assert {o["status"] for o in again["files"]} == {"present"}


def test_sdxl_and_flux_bundles(tmp_path: Path) -> None:
    cl, cg = rand_vectors(2, 768, 3), rand_vectors(2, 1280, 4)
    sdxl = tmp_path / "xl.safetensors"
    sdxl.write_bytes(
        lora_bytes("sdxl", {"bundle_emb.xl-style.clip_l": cl, "bundle_emb.xl-style.clip_g": cg})
    )
    fl, t5 = rand_vectors(1, 768, 5), rand_vectors(1, 4096, 6)
    flux = tmp_path / "flux.safetensors"
    flux.write_bytes(
        lora_bytes(
            "flux",
            {
                "bundle_emb.fluxy.clip_l": fl,
                "bundle_emb.fluxy.t5": t5,  # OneTrainer's spelling
                "bundle_emb.fluxy.t5_out": t5,  # its output vector: left out
            },
        )
    )
    report = json_of(run("import", str(sdxl), str(flux), "--json"))
    assert report["imported"] == 2
    assert json_of(run("show", "xl-style", "--json"))["family"] == "sdxl"
    fluxy = json_of(run("show", "fluxy", "--json"))
    assert fluxy["family"] == "flux" and fluxy["dims"] == [768, 4096]
    assert fluxy["extra"]["file_metadata"]["output_vectors_left_out"] == ["t5_out"]
    assert fluxy["extra"]["bundle"]["lora_family"] == "flux"


def test_a_lora_without_bundles_is_refused_as_before(
    tmp_path: Path, _isolated_home: Path, catalog_snapshot
) -> None:
    tensors = {f"lora_unet_{i}.lora_down.weight": np.zeros((4, 4), np.float32) for i in range(20)}
    path = tmp_path / "plain-lora.safetensors"
    path.write_bytes(write_safetensors(tensors))
    assert not has_bundles(path)
    import_is_refused(
        path, _isolated_home, code=3, fragment="named like a LoRA", snapshot=catalog_snapshot
    )


def test_hostile_bundles(tmp_path: Path) -> None:
    odd = {
        "bundle_emb.../../etc/passwd.clip_l": rand_vectors(1, 768, 1),  # path parts
        "bundle_emb.evil\x1b[31m\u202e.emb_params": rand_vectors(1, 768, 2),  # control chars
        "bundle_emb.wide.clip_l": rand_vectors(1, 999, 3),  # no family
        "bundle_emb." + "x" * 5000 + ".emb_params": rand_vectors(1, 768, 4),  # a long name
        "bundle_emb.painting.emb_params": rand_vectors(1, 768, 5),  # an ordinary word
    }
    path = tmp_path / "odd.safetensors"
    path.write_bytes(lora_bytes("sd1", odd))
    res = run("import", str(path), "--json")
    assert res.exit_code == 3  # one bundle rejected: the import says so
    report = json.loads(res.output)
    statuses = sorted(o["status"] for o in report["files"])
    assert statuses == ["imported"] * 4 + ["rejected"]
    rejected = next(o for o in report["files"] if o["status"] == "rejected")
    assert "bundled embedding 'wide'" in rejected["reason"] and "width 999" in rejected["reason"]
    names = sorted(o["name"] for o in report["files"] if o["name"])
    assert "painting-ti" in names
    for name in names:
        assert "/" not in name and "\x1b" not in name and len(name) <= 128
    listing = run("list")
    assert "\x1b" not in listing.output and "\u202e" not in listing.output


def test_too_many_bundles_refuse_the_file(
    tmp_path: Path, _isolated_home: Path, catalog_snapshot
) -> None:
    many = {f"bundle_emb.b{i}.emb_params": rand_vectors(1, 768, i) for i in range(MAX_BUNDLES + 1)}
    path = tmp_path / "many.safetensors"
    path.write_bytes(lora_bytes("sd1", many))
    import_is_refused(
        path,
        _isolated_home,
        code=3,
        fragment=f"expected at most {MAX_BUNDLES}",
        snapshot=catalog_snapshot,
    )


def test_a_huge_declared_bundle_is_refused_from_the_header(
    tmp_path: Path, _isolated_home: Path, catalog_snapshot
) -> None:
    """A bundled tensor claiming 2**40 elements: refused before anything is allocated."""
    header = {
        "bundle_emb.big.emb_params": {
            "dtype": "F32",
            "shape": [1 << 20, 1 << 20],
            "data_offsets": [0, 8],
        }
    }
    raw = json.dumps(header).encode()
    path = tmp_path / "big.safetensors"
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * 8)
    import_is_refused(path, _isolated_home, code=3, fragment="shape", snapshot=catalog_snapshot)


def test_lora_family_from_names_and_metadata() -> None:
    def entries(family: str) -> dict:
        return {k: {"shape": list(s)} for k, s in LORA_KEYS[family].items()}

    assert lora_family(entries("sd1")) == "sd1"
    assert lora_family(entries("sdxl")) == "sdxl"
    assert lora_family(entries("flux")) == "flux"
    sd2 = {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": {
            "shape": [4, 1024]
        }
    }
    assert lora_family(sd2) == "sd2"
    assert lora_family({"lora_unet_joint_blocks_0_x.lora_down.weight": {"shape": [4, 4]}}) == "sd3"
    assert lora_family({}, {"modelspec.architecture": "stable-diffusion-xl-v1-base/lora"}) == "sdxl"
    assert lora_family({}, {"ss_base_model_version": "sd_v1"}) == "sd1"
    assert lora_family({"something.weight": {"shape": [1]}}) is None


# --------------------------------------------------------------------------- export --bundle-into


def test_bundle_into_round_trip(tmp_path: Path, lib) -> None:
    vec = rand_vectors(2, 768, 11)
    lib.add_embedding(Embedding.from_slots({"clip_l": vec}), name="cat-toy.v2", kind="style")
    lib.close()
    src = tmp_path / "lora.safetensors"
    src.write_bytes(lora_bytes("sd1", {}, {"ss_network_module": "networks.lora", "ss_tag": "x"}))
    out = tmp_path / "out" / "lora-ti.safetensors"
    facts = json_of(
        run("export", "cat-toy.v2", "--bundle-into", str(src), "-o", str(out), "--json")
    )
    assert facts["bundle"] == "cat-toy-v2"  # A1111 splits keys on dots
    assert facts["keys"] == ["bundle_emb.cat-toy-v2.string_to_param.*"]
    assert facts["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    # The LoRA's tensors (values) and metadata are kept.
    before, meta_before = read_safetensors(src.read_bytes())
    after, meta_after = read_safetensors(out.read_bytes())
    assert meta_after == meta_before
    for key, value in before.items():
        assert np.array_equal(after[key], value)
    # A1111's grouping: the name is the first part after bundle_emb.
    bundled = [k.split(".")[1] for k in after if k.startswith("bundle_emb.")]
    assert bundled == ["cat-toy-v2"]
    # Importing the bundled LoRA gives back the very same vectors: "present".
    report = json_of(run("import", str(out), "--json"))
    assert [o["status"] for o in report["files"]] == ["present"]
    assert report["files"][0]["existing"] == "cat-toy.v2"
    # The safetensors package reads what we wrote.
    from safetensors.numpy import load_file

    assert np.array_equal(load_file(str(out))["bundle_emb.cat-toy-v2.string_to_param.*"], vec)


@pytest.mark.parametrize("t5_key", ["t5xxl", "t5"])
def test_bundle_into_flux_and_sdxl(tmp_path: Path, lib, t5_key: str) -> None:
    fl = {"clip_l": rand_vectors(1, 768, 21), "t5xxl": rand_vectors(1, 4096, 22)}
    xl = {"clip_l": rand_vectors(1, 768, 23), "clip_g": rand_vectors(1, 1280, 24)}
    lib.add_embedding(Embedding.from_slots(fl), name="fluxy")
    lib.add_embedding(Embedding.from_slots(xl), name="xl-style")
    lib.close()
    flux_lora, xl_lora = tmp_path / "f.safetensors", tmp_path / "x.safetensors"
    flux_lora.write_bytes(lora_bytes("flux", {}))
    xl_lora.write_bytes(lora_bytes("sdxl", {}))
    f_out, x_out = tmp_path / "f2.safetensors", tmp_path / "x2.safetensors"
    facts = json_of(
        run(
            "export",
            "fluxy",
            "--bundle-into",
            str(flux_lora),
            "--t5-key",
            t5_key,
            "-o",
            str(f_out),
            "--json",
        )
    )
    assert facts["keys"] == ["bundle_emb.fluxy.clip_l", f"bundle_emb.fluxy.{t5_key}"]
    facts = json_of(
        run("export", "xl-style", "--bundle-into", str(xl_lora), "-o", str(x_out), "--json")
    )
    assert facts["keys"] == ["bundle_emb.xl-style.clip_l", "bundle_emb.xl-style.clip_g"]
    for path, name in ((f_out, "fluxy"), (x_out, "xl-style")):
        lora = read_lora_bundles(path)
        (item,) = lora.bundles
        want = Embedding.from_slots(fl if name == "fluxy" else xl)
        assert item.name == name and item.embedding.tensor_sha256 == want.tensor_sha256


def _refused(
    args: list[str], code: int, fragment: str, home: Path, snapshot, *untouched: Path
) -> None:
    sums = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in untouched if p.exists()}
    before, files = snapshot(home), store_files(home)
    res = run(*args)
    assert res.exit_code == code, res.output
    lines = [x for x in res.output.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1 and fragment in lines[0], res.output
    assert snapshot(home) == before and store_files(home) == files
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sums} == sums


def test_bundle_into_refusals(tmp_path: Path, lib, catalog_snapshot) -> None:
    lib.add_embedding(Embedding.from_slots({"clip_l": rand_vectors(1, 768, 31)}), name="cat-toy")
    lib.add_embedding(
        Embedding.from_slots(
            {"clip_l": rand_vectors(1, 768, 32), "clip_g": rand_vectors(1, 1280, 33)}
        ),
        name="xl-style",
    )
    home = lib.settings.home
    lib.close()
    src = tmp_path / "lora.safetensors"
    src.write_bytes(lora_bytes("sd1", {"bundle_emb.cat-toy.emb_params": rand_vectors(1, 768, 34)}))
    taken = tmp_path / "exists.safetensors"
    taken.write_bytes(b"something else")
    new = tmp_path / "new.safetensors"
    unknown = tmp_path / "unknown.safetensors"
    unknown.write_bytes(write_safetensors({"weights.0": np.zeros((2, 2), np.float32)}))
    not_st = tmp_path / "notes.safetensors"
    not_st.write_bytes(b"hello, not a LoRA")
    snap = catalog_snapshot
    base = ["export"]
    _refused(
        [*base, "xl-style", "--bundle-into", str(src), "-o", str(new)],
        3,
        "the embedding is sdxl but",
        home,
        snap,
        src,
    )
    _refused(
        [*base, "cat-toy", "--bundle-into", str(src), "-o", str(new)],
        5,
        "already bundles an embedding named 'cat-toy'",
        home,
        snap,
        src,
    )
    _refused(
        [*base, "xl-style", "--bundle-into", str(src), "-o", str(taken)],
        5,
        "already exists",
        home,
        snap,
        src,
        taken,
    )
    _refused(
        [*base, "cat-toy", "--bundle-into", str(unknown), "-o", str(new)],
        2,
        "cannot tell which base model",
        home,
        snap,
        unknown,
    )
    _refused(
        [*base, "cat-toy", "--bundle-into", str(not_st), "-o", str(new)],
        3,
        "is not a safetensors file",
        home,
        snap,
        not_st,
    )
    _refused(
        [*base, "cat-toy", "--bundle-into", str(tmp_path / "nope.safetensors"), "-o", str(new)],
        6,
        "no such file",
        home,
        snap,
    )
    _refused(
        [*base, "cat-toy", "--bundle-into", str(src), "--format", "sdxl", "-o", str(new)],
        2,
        "without --format",
        home,
        snap,
        src,
    )
    _refused(
        [*base, "no-such", "--bundle-into", str(src), "-o", str(new)], 6, "no-such", home, snap
    )
    assert not new.exists()
    assert not list(tmp_path.glob(".tmp-*"))

"""Base models: local folders, the Hugging Face cache, single files, fingerprints."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time

import pytest
from compose_support import tiny_folder
from ldm_layout import save_single_file

from conceptlib.errors import BaseModelError, FamilyMismatch
from conceptlib.schemas.enums import Family
from conceptlib.trainer.base import (
    family_from_widths,
    fingerprint_path,
    load_base,
    single_file_family,
)


def _safetensors(path, keys, *, pad_to: int = 0):
    header = {
        k: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
        for i, k in enumerate(keys)
    }
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * len(keys)))
        if pad_to:
            fh.truncate(pad_to)  # sparse: a "big" file that costs nothing to make


def test_fingerprint_is_the_documented_cheap_recipe(tmp_path):
    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "safety_checker").mkdir()
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    _safetensors(weights, ["a", "b"])
    (folder / "safety_checker" / "model.safetensors").write_bytes(b"ignored")
    (folder / "unet" / "config.json").write_text("{}")  # not a weight file
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])

    def sha(b):
        return hashlib.sha256(b).hexdigest()

    line = "\t".join(
        [
            "unet/diffusion_pytorch_model.safetensors",
            str(len(data)),
            sha(data),
            sha(data),
            sha(data[8 : 8 + n]),
        ]
    )
    assert fingerprint_path(folder) == "fp1:" + sha(line.encode())

    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(folder, copy)
    assert fingerprint_path(copy) == fingerprint_path(folder)  # the same files anywhere
    with open(copy / "unet" / "diffusion_pytorch_model.safetensors", "ab") as fh:
        fh.write(b"\0")
    assert fingerprint_path(copy) != fingerprint_path(folder)


def test_fingerprint_reads_only_the_ends_of_big_files(tmp_path):
    big = tmp_path / "big.safetensors"
    _safetensors(big, ["w"], pad_to=3 * 1024**3)
    start = time.perf_counter()
    first = fingerprint_path(big)
    assert time.perf_counter() - start < 2.0
    with open(big, "r+b") as fh:  # a change in the middle is not seen (by design: cheap)
        fh.seek(1024**3)
        fh.write(b"x")
    assert fingerprint_path(big) == first
    with open(big, "r+b") as fh:  # a change in the last MiB is
        fh.seek(3 * 1024**3 - 10)
        fh.write(b"x")
    changed = fingerprint_path(big)
    assert changed != first
    renamed = big.rename(tmp_path / "renamed.safetensors")
    assert fingerprint_path(renamed) == changed  # a single file's name is not part of it


def test_local_diffusers_folder(tmp_path):
    src = tiny_folder("tiny-sd1")
    folder = tmp_path / "my-sd"
    shutil.copytree(src, folder)
    bm = load_base(folder)
    assert bm.family == Family.SD1 and not bm.is_tiny
    assert bm.model_id == "my-sd" and bm.fingerprint == fingerprint_path(src)
    assert bm.native_resolution == 32


def test_repo_id_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--tiny-xl"
    shutil.copytree(tiny_folder("tiny-sdxl"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    bm = load_base("someone/tiny-xl")
    assert bm.family == Family.SDXL and bm.model_id == "someone/tiny-xl"
    assert bm.fingerprint == fingerprint_path(repo / "snapshots" / commit)
    start = time.perf_counter()
    with pytest.raises(BaseModelError, match="Hugging Face cache") as exc:
        load_base("someone/not-downloaded")
    assert "huggingface-cli download" in exc.value.hint
    assert time.perf_counter() - start < 10


def test_single_file_checkpoints_are_offline_only(tmp_path):
    sd1 = tmp_path / "model.safetensors"
    _safetensors(sd1, ["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
                       "model.diffusion_model.input_blocks.0.0.weight"])  # fmt: skip
    assert single_file_family(sd1) == Family.SD1
    xl = tmp_path / "xl.safetensors"
    _safetensors(xl, ["conditioner.embedders.1.model.ln_final.weight"])
    assert single_file_family(xl) == Family.SDXL
    start = time.perf_counter()
    with pytest.raises(BaseModelError, match="offline") as exc:
        load_base(sd1)  # its configs are neither given nor cached: a clear error, no network
    assert time.perf_counter() - start < 30
    assert "config" in exc.value.hint
    other = tmp_path / "lora.safetensors"
    _safetensors(other, ["lora_unet_down.weight"])
    with pytest.raises(BaseModelError, match="text encoder"):
        load_base(other)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("name", ["tiny-sd1", "tiny-sdxl"])
def test_single_file_checkpoint_loads_offline_with_a_local_config(name, tmp_path, no_network):
    import torch

    folder = tiny_folder(name)
    reference = load_base(folder)
    path = tmp_path / "my-finetune.safetensors"
    save_single_file(reference.pipeline, path)  # original (LDM) key layout, one file
    assert single_file_family(path) == reference.family
    bm = load_base(path, config=folder)
    assert bm.family == reference.family and not bm.is_tiny
    assert bm.model_id == "my-finetune.safetensors"
    assert bm.fingerprint == fingerprint_path(path) != reference.fingerprint
    assert bm.native_resolution == reference.native_resolution
    components = ["unet", "vae", "text_encoder"] + (
        ["text_encoder_2"] if name == "tiny-sdxl" else []
    )
    for component in components:
        want = getattr(reference.pipeline, component).state_dict()
        got = getattr(bm.pipeline, component).state_dict()
        assert sorted(got) == sorted(want), component
        assert all(torch.equal(got[k], want[k]) for k in want), component
    assert [s.slot for s in bm.slots] == [s.slot for s in reference.slots]
    for mine, theirs in zip(bm.slots, reference.slots, strict=True):
        assert mine.tokenizer.get_vocab() == theirs.tokenizer.get_vocab()


def test_single_file_config_must_be_a_diffusers_folder_of_the_same_family(tmp_path, no_network):
    sd1_file = tmp_path / "sd1.safetensors"
    save_single_file(load_base(tiny_folder("tiny-sd1")).pipeline, sd1_file)
    with pytest.raises(
        BaseModelError, match="is an sd1 checkpoint but base config .* is an sdxl model"
    ):
        load_base(sd1_file, config=tiny_folder("tiny-sdxl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="not a diffusers folder"):
        load_base(sd1_file, config=tmp_path / "empty")
    with pytest.raises(BaseModelError, match="not found"):
        load_base(sd1_file, config=str(tmp_path / "missing"))
    with pytest.raises(BaseModelError, match="Hugging Face cache"):
        load_base(sd1_file, config="someone/not-downloaded")


def test_family_comes_from_the_text_encoder_widths():
    assert family_from_widths([768]) == Family.SD1
    assert family_from_widths([1024]) == Family.SD2
    assert family_from_widths([768, 1280]) == Family.SDXL
    with pytest.raises(FamilyMismatch, match="1280"):
        family_from_widths([1280])  # an SDXL refiner: no embedding family fits

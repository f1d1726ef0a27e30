"""Base models: local folders, the Hugging Face cache, single files, fingerprints."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time

import numpy as np
import pytest
from compose_support import tiny_folder
from ldm_layout import save_single_file

from conceptlib.errors import BaseModelError, FamilyMismatch
from conceptlib.models.base import load_base
from conceptlib.models.family import family_from_widths
from conceptlib.models.fingerprint import fingerprint_path
from conceptlib.models.single_file import single_file_family
from conceptlib.schemas.enums import Family


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


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _expected_line(rel: str, data: bytes) -> str:
    """The documented fp2 line of a safetensors file, computed independently."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    samples = b""
    for lo, hi in sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__"):
        tensor = data[8 + n + lo : 8 + n + hi]
        samples += tensor if len(tensor) <= 8192 else tensor[:4096] + tensor[-4096:]
    return "\t".join([rel, str(len(data)), _sha(data[8 : 8 + n]), _sha(samples)])


def test_fingerprint_is_the_documented_cheap_recipe(tmp_path):
    from safetensors.numpy import save_file

    folder = tmp_path / "model"
    (folder / "unet").mkdir(parents=True)
    (folder / "text_encoder").mkdir()
    (folder / "safety_checker").mkdir()
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    rng = np.random.default_rng(0)
    tensors = {"small": rng.standard_normal(3, dtype=np.float32),
               "big": rng.standard_normal((50, 100), dtype=np.float32)}  # fmt: skip
    save_file(tensors, str(weights), metadata={"format": "pt"})
    pickled = folder / "text_encoder" / "pytorch_model.bin"
    pickled.write_bytes(bytes(range(256)) * 9000)  # 2.2 MiB: head and tail differ
    (folder / "safety_checker" / "model.safetensors").write_bytes(b"ignored")
    (folder / "unet" / "config.json").write_text("{}")  # not a weight file
    raw = pickled.read_bytes()
    lines = [
        "\t".join(["text_encoder/pytorch_model.bin", str(len(raw)),
                   _sha(raw[: 1024**2]), _sha(raw[-(1024**2) :])]),
        _expected_line("unet/diffusion_pytorch_model.safetensors", weights.read_bytes()),
    ]  # fmt: skip
    assert fingerprint_path(folder) == "fp2:" + _sha("\n".join(lines).encode())
    assert fingerprint_path(weights) == "fp2:" + _sha(
        _expected_line("", weights.read_bytes()).encode()
    )

    copy = tmp_path / "elsewhere" / "model"
    shutil.copytree(folder, copy)
    assert fingerprint_path(copy) == fingerprint_path(folder)  # the same files anywhere
    with open(copy / "unet" / "diffusion_pytorch_model.safetensors", "ab") as fh:
        fh.write(b"\0")
    assert fingerprint_path(copy) != fingerprint_path(folder)


def test_fingerprint_sees_every_tensor_but_reads_little(tmp_path, monkeypatch):
    """A 3 GiB file of 300 tensors (sparse: costs nothing to make). Changing any one
    tensor changes the fingerprint; about 8 KiB per tensor are read, not gigabytes."""
    from conceptlib.models import fingerprint as fingerprint_mod

    count, each = 300, 10 * 1024**2
    header = {f"t{i:03d}": {"dtype": "U8", "shape": [each], "data_offsets": [i * each, (i + 1) * each]}
              for i in range(count)}  # fmt: skip
    raw = json.dumps(header).encode()
    big = tmp_path / "big.safetensors"
    with open(big, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        fh.truncate(8 + len(raw) + count * each)
    data_start = 8 + len(raw)

    read = {"bytes": 0}
    real_open = open

    class Counting:
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            out = self.fh.read(n)
            read["bytes"] += len(out)
            return out

        def seek(self, *a):
            return self.fh.seek(*a)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(fingerprint_mod, "open", lambda *a, **k: Counting(real_open(*a, **k)),
                        raising=False)  # fmt: skip
    first = fingerprint_path(big)
    assert read["bytes"] <= 8 + len(raw) + count * 8192  # 2.4 MiB of a 3 GiB file
    monkeypatch.undo()

    def poke(offset):
        with open(big, "r+b") as fh:
            fh.seek(offset)
            old = fh.read(1)
            fh.seek(offset)
            fh.write(b"x")
        changed = fingerprint_path(big)
        with open(big, "r+b") as fh:
            fh.seek(offset)
            fh.write(old)
        return changed

    for i in (0, 137, count - 1):  # the start and the end of any tensor are seen
        assert poke(data_start + i * each) != first
        assert poke(data_start + (i + 1) * each - 1) != first
    assert poke(data_start + 5 * each + each // 2) == first  # mid-tensor only: by design
    assert fingerprint_path(big) == first
    renamed = big.rename(tmp_path / "renamed.safetensors")
    assert fingerprint_path(renamed) == first  # a single file's name is not part of it


def test_fingerprint_tells_a_one_tensor_merge_apart(tmp_path):
    """Two single-file checkpoints that differ in one UNet tensor in the middle of the
    file (a merged LoRA, say) get different fingerprints."""
    from safetensors.torch import load_file, save_file

    ckpt = tmp_path / "a.safetensors"
    save_single_file(load_base(tiny_folder("tiny-sd1")).pipeline, ckpt)
    tensors = load_file(ckpt)
    key = "model.diffusion_model.middle_block.1.proj_in.weight"
    tensors[key] = tensors[key] + 1e-3
    other = tmp_path / "b.safetensors"
    save_file(tensors, other)
    assert other.stat().st_size == ckpt.stat().st_size
    assert fingerprint_path(other) != fingerprint_path(ckpt)


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
    # The download command is the CLI the installed huggingface_hub ships (`hf`).
    from importlib.metadata import distribution

    scripts = {e.name for e in distribution("huggingface_hub").entry_points}
    tool = exc.value.hint.split("(", 1)[1].split()[0]
    assert tool in scripts and "download someone/not-downloaded" in exc.value.hint
    assert tool == "hf" or "hf" not in scripts
    assert time.perf_counter() - start < 10


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails (and fails the test, even if the
    library that tried swallowed the error)."""
    import socket

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError(f"network access attempted in a test: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield
    assert attempts == []


def test_single_file_checkpoints_are_offline_only(tmp_path, no_network):
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

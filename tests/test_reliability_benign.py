"""The other side of the allow-list: real files in every supported layout all load.

More than 50 files, each made here by the real writers (``torch.save`` in the zip
and the legacy format, pickle protocols 2 and 3; the ``safetensors`` package's numpy
and torch front ends; conceptlib's own writer; A1111 PNGs), covering every layout
``formats.READ_FORMATS`` names, SD 1.x, SD 2.x and SDXL widths, 1 to 75 vectors and
four float dtypes. Every one is imported (none rejected), its vectors come back as
written, ``torch.load`` only ever runs with ``weights_only=True``, and the same
vectors in another layout are recognised as already present.

Figures: ``CONCEPTLIB_RELIABILITY_REPORT=/path/figures.jsonl`` appends them there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures_formats import (
    make_a1111_pt,
    make_diffusers_bin,
    make_diffusers_safetensors,
    make_diffusers_sdxl_pair,
    make_emb_params_pt,
    make_emb_params_safetensors,
    make_lora_bundle,
    make_png_embedding,
    make_pti,
    make_sdxl,
    rand_vectors,
    torch_bytes,
)
from reliability_support import report_figures

from conceptlib.registry.formats import READ_FORMATS, read_embedding_file

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.timeout(60)  # each test; longer ones say so

WIDTH = {"sd1": 768, "sd2": 1024}


@dataclass
class Benign:
    """One file (or a diffusers SDXL pair) and the slots it must read back as."""

    rel: str
    format: str
    container: str
    slots: dict[str, np.ndarray]
    write: Callable[[Path], None]
    dtype: str = "float32"


def _rounded(vectors: np.ndarray, dtype: str) -> np.ndarray:
    """What the vectors become once stored in ``dtype`` and widened back to float32."""
    return torch.from_numpy(vectors).to(getattr(torch, dtype)).float().numpy()


def _bytes_writer(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def build_benign() -> list[Benign]:
    """The benign set: distinct vectors per file (seeded by its index)."""
    from safetensors.torch import save as save_torch_safetensors

    files: list[Benign] = []
    seed = iter(range(10_000, 20_000))

    def vec(n: int, width: int) -> np.ndarray:
        return rand_vectors(n, width, seed=next(seed))

    def add(
        rel: str,
        fmt: str,
        container: str,
        slots: dict[str, np.ndarray],
        data: bytes,
        dtype: str = "float32",
    ) -> None:
        files.append(Benign(rel, fmt, container, slots, _bytes_writer(data), dtype))

    # A1111 .pt: Parameter or plain tensor, zip or legacy, protocol 2 or 3, four dtypes.
    for family in ("sd1", "sd2"):
        slot = "clip_l" if family == "sd1" else "clip_h"
        for n in (1, 4, 75):
            for legacy in (False, True):
                for parameter in (True, False):
                    v = vec(n, WIDTH[family])
                    name = f"a1111-{family}-{n}-{'legacy' if legacy else 'zip'}-{parameter}"
                    data = make_a1111_pt(v, name=name, legacy=legacy, parameter=parameter)
                    add(
                        f"{name}.pt",
                        "a1111-pt",
                        "torch-legacy" if legacy else "torch-zip",
                        {slot: v},
                        data,
                    )
        for dtype in ("float16", "bfloat16", "float64"):
            v = vec(2, WIDTH[family])
            data = make_a1111_pt(v, name=f"a1111-{family}-{dtype}", dtype=getattr(torch, dtype))
            add(
                f"a1111-{family}-{dtype}.pt",
                "a1111-pt",
                "torch-zip",
                {slot: _rounded(v, dtype)},
                data,
                dtype,
            )
        v = vec(3, WIDTH[family])
        add(
            f"a1111-{family}-paramdict.pt",
            "a1111-pt",
            "torch-zip",
            {slot: v},
            make_a1111_pt(v, parameter_dict=True),
        )
        v = vec(2, WIDTH[family])
        payload = {"string_to_param": {"*": torch.from_numpy(v)}, "name": "p3"}
        add(
            f"a1111-{family}-protocol3.pt",
            "a1111-pt",
            "torch-zip",
            {slot: v},
            torch_bytes(payload, protocol=3),
        )

        # kohya emb_params: .pt (zip, legacy) and .safetensors (three writers).
        for legacy in (False, True):
            v = vec(5, WIDTH[family])
            add(
                f"embp-{family}-{legacy}.pt",
                "emb_params",
                "torch-legacy" if legacy else "torch-zip",
                {slot: v},
                make_emb_params_pt(v, legacy=legacy),
            )
        for writer in ("package", "torch", "conceptlib"):
            v = vec(8, WIDTH[family])
            add(
                f"embp-{family}-{writer}.safetensors",
                "emb_params",
                "safetensors",
                {slot: v},
                make_emb_params_safetensors(v, writer=writer, metadata={"writer": writer}),
            )
        for dtype in ("float16", "bfloat16"):
            v = vec(3, WIDTH[family])
            data = save_torch_safetensors(
                {"emb_params": torch.from_numpy(v).to(getattr(torch, dtype))}
            )
            add(
                f"embp-{family}-{dtype}.safetensors",
                "emb_params",
                "safetensors",
                {slot: _rounded(v, dtype)},
                data,
                dtype,
            )

        # diffusers / sd-concepts-library: {token: [n, d]} or [d], .bin and .safetensors.
        for i, (legacy, one_d) in enumerate(((False, False), (True, False), (False, True))):
            v = vec(1 if one_d else 2, WIDTH[family])
            token = f"<bin-{family}-{i}>"
            add(
                f"bin-{family}-{i}/learned_embeds.bin",
                "diffusers",
                "torch-legacy" if legacy else "torch-zip",
                {slot: v},
                make_diffusers_bin(token, v[0] if one_d else v, legacy=legacy),
            )
        for writer in ("package", "torch"):
            v = vec(4, WIDTH[family])
            add(
                f"st-{family}-{writer}/learned_embeds.safetensors",
                "diffusers",
                "safetensors",
                {slot: v},
                make_diffusers_safetensors(f"<st-{family}-{writer}>", v, writer=writer),
            )

        # A1111 embedding images: tEXt, zTXt, iTXt.
        for kind in ("tEXt", "zTXt", "iTXt"):
            v = vec(2, WIDTH[family])
            add(
                f"png-{family}-{kind}.png",
                "a1111-png",
                "png",
                {slot: v},
                make_png_embedding(v, name=f"png-{family}-{kind}", kind=kind),
            )

        # pivotal tuning, one encoder
        v = vec(2, WIDTH[family])
        add(f"pti-{family}.safetensors", "pti", "safetensors", {slot: v}, make_pti(v))
        v = vec(3, WIDTH[family])
        add(
            f"bundle-{family}.safetensors",
            "pti",
            "safetensors",
            {slot: v},
            make_lora_bundle(f"bundle-{family}", v),
        )

    # SDXL: {clip_l, clip_g} by three writers, as .pt, with alternative key names,
    # pivotal tuning's text_encoders_0/1, a LoRA bundle and diffusers' two-file output.
    for n in (1, 2, 75):
        for writer in ("package", "torch", "conceptlib"):
            cl, cg = vec(n, 768), vec(n, 1280)
            add(
                f"sdxl-{n}-{writer}.safetensors",
                "sdxl",
                "safetensors",
                {"clip_l": cl, "clip_g": cg},
                make_sdxl(cl, cg, writer=writer),
            )
    for legacy in (False, True):
        cl, cg = vec(2, 768), vec(2, 1280)
        data = torch_bytes(
            {"clip_l": torch.from_numpy(cl), "clip_g": torch.from_numpy(cg)}, legacy=legacy
        )
        add(
            f"sdxl-pt-{legacy}.pt",
            "sdxl",
            "torch-legacy" if legacy else "torch-zip",
            {"clip_l": cl, "clip_g": cg},
            data,
        )
    for keys in (("embedding", "embedding_2"), ("clip_g", "clip_l")):
        cl, cg = vec(2, 768), vec(2, 1280)
        # with swapped names ("clip_g" on the 768-wide half), slots come from widths
        add(
            f"sdxl-keys-{keys[0]}.safetensors",
            "sdxl",
            "safetensors",
            {"clip_l": cl, "clip_g": cg},
            make_sdxl(cl, cg, keys=keys),
        )
    cl, cg = vec(2, 768), vec(2, 1280)
    add(
        "pti-sdxl.safetensors", "pti", "safetensors", {"clip_l": cl, "clip_g": cg}, make_pti(cl, cg)
    )
    cl, cg = vec(2, 768), vec(2, 1280)
    add(
        "bundle-sdxl.safetensors",
        "pti",
        "safetensors",
        {"clip_l": cl, "clip_g": cg},
        make_lora_bundle("bundle-sdxl", cl, cg),
    )
    # SD3 and FLUX, keyed by encoder in both T5 spellings (ComfyUI's t5xxl, OneTrainer's
    # t5, with its output vectors, which are left out); a T5-only diffusers file.
    for t5 in ("t5xxl", "t5"):
        cl, cg, t = vec(2, 768), vec(2, 1280), vec(2, 4096)
        sd3 = {"clip_l": cl, "clip_g": cg, t5: t}
        if t5 == "t5":
            sd3["t5_out"] = vec(1, 4096)
        data = save_torch_safetensors({k: torch.from_numpy(v) for k, v in sd3.items()})
        add(
            f"sd3-{t5}.safetensors",
            "sd3",
            "safetensors",
            {"clip_l": cl, "clip_g": cg, "t5xxl": t},
            data,
        )
        cl, t = vec(3, 768), vec(3, 4096)
        data = save_torch_safetensors({"clip_l": torch.from_numpy(cl), t5: torch.from_numpy(t)})
        add(f"flux-{t5}.safetensors", "flux", "safetensors", {"clip_l": cl, "t5xxl": t}, data)
    t = vec(2, 4096)
    add(
        "t5-only/learned_embeds.safetensors",
        "diffusers",
        "safetensors",
        {"t5xxl": t},
        make_diffusers_safetensors("<t5-only>", t, writer="package"),
    )
    for i, suffix in enumerate((".safetensors", ".bin")):
        cl, cg = vec(2, 768), vec(2, 1280)
        token = f"<pair-{i}>"
        if suffix == ".safetensors":
            main, companion = make_diffusers_sdxl_pair(token, cl, cg)
        else:
            main = make_diffusers_bin(token, cl)
            companion = make_diffusers_bin(token, cg)

        def write_pair(
            path: Path, main: bytes = main, companion: bytes = companion, suffix: str = suffix
        ) -> None:
            path.write_bytes(main)
            (path.parent / f"learned_embeds_2{suffix}").write_bytes(companion)

        container = "safetensors" if suffix == ".safetensors" else "torch-zip"
        files.append(
            Benign(
                f"pair-{i}/learned_embeds{suffix}",
                "diffusers-sdxl-pair",
                container,
                {"clip_l": cl, "clip_g": cg},
                write_pair,
            )
        )
    return files


@pytest.fixture(scope="module")
def benign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Benign]]:
    root = tmp_path_factory.mktemp("benign")
    files = build_benign()
    for b in files:
        path = root / b.rel
        path.parent.mkdir(parents=True, exist_ok=True)
        b.write(path)
    return root, files


@pytest.fixture
def weights_only_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    real = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    return calls


def test_the_benign_set_covers_every_layout(benign: tuple[Path, list[Benign]]) -> None:
    _root, files = benign
    assert len(files) >= 50
    assert {b.format for b in files} == set(READ_FORMATS)
    assert {b.container for b in files} == {"safetensors", "torch-zip", "torch-legacy", "png"}
    families = {frozenset(b.slots) for b in files}
    assert families == {
        frozenset({"clip_l"}),
        frozenset({"clip_h"}),
        frozenset({"clip_l", "clip_g"}),
        frozenset({"clip_l", "clip_g", "t5xxl"}),
        frozenset({"clip_l", "t5xxl"}),
        frozenset({"t5xxl"}),
    }
    assert {b.dtype for b in files} == {"float32", "float16", "bfloat16", "float64"}


@pytest.mark.timeout(120)
def test_every_benign_file_reads_as_written(
    benign: tuple[Path, list[Benign]], weights_only_calls: list[Any]
) -> None:
    root, files = benign
    wrong = []
    for b in files:
        try:
            parsed = read_embedding_file(root / b.rel)
        except Exception as exc:
            wrong.append(f"{b.rel}: {type(exc).__name__}: {exc}")
            continue
        if (parsed.format, parsed.container) != (b.format, b.container):
            wrong.append(f"{b.rel}: read as {parsed.format}/{parsed.container}")
        got = parsed.embedding.vectors
        if set(got) != set(b.slots):
            wrong.append(f"{b.rel}: slots {sorted(got)}")
            continue
        for slot, want in b.slots.items():
            if not np.array_equal(got[slot], want.reshape(got[slot].shape)):
                wrong.append(f"{b.rel}: {slot} vectors differ")
    assert wrong == []
    assert weights_only_calls and set(weights_only_calls) == {True}


@pytest.mark.timeout(120)
def test_importing_the_benign_set_accepts_every_file(
    benign: tuple[Path, list[Benign]], tmp_path: Path, weights_only_calls: list[Any]
) -> None:
    from conceptlib.registry.library import Library

    root, files = benign
    started = time.monotonic()
    with Library.open(tmp_path / "home") as lib:
        report = lib.import_paths([root], recursive=True)
        rejected = [f"{o.path}: {o.reason}" for o in report.outcomes if o.status != "imported"]
        assert rejected == []
        assert len(report.outcomes) == len(files) == lib.count()
        by_sha = {}
        for b in files:
            from conceptlib.registry.formats.embedding import Embedding

            emb = Embedding.from_slots({k: v.reshape(-1, v.shape[-1]) for k, v in b.slots.items()})
            by_sha[emb.tensor_sha256] = b
        entries = lib.list()
        assert {e.tensor_sha256 for e in entries} == set(by_sha)
        for e in entries:
            assert e.extra["format"] == by_sha[e.tensor_sha256].format
        verify = lib.verify()
        assert verify.ok and verify.orphan_blobs == []

        # The same vectors in another layout are the same embedding: all "present".
        again = tmp_path / "again"
        again.mkdir()
        for i, b in enumerate(files):
            if set(b.slots) == {"clip_l", "clip_g"}:
                data = make_sdxl(b.slots["clip_l"], b.slots["clip_g"], writer="conceptlib")
            elif "t5xxl" in b.slots:  # the other T5 spelling
                from safetensors.torch import save as save_torch_safetensors

                data = save_torch_safetensors(
                    {("t5" if k == "t5xxl" else k): torch.from_numpy(v) for k, v in b.slots.items()}
                )
            else:
                (v,) = b.slots.values()
                data = make_emb_params_safetensors(v.reshape(-1, v.shape[-1]), writer="package")
            (again / f"again-{i}.safetensors").write_bytes(data)
        second = lib.import_paths([again])
        assert {o.status for o in second.outcomes} == {"present"}
        assert lib.count() == len(files)
    assert set(weights_only_calls) == {True}
    report_figures(
        "benign-files",
        files=len(files),
        layouts=len({b.format for b in files}),
        accepted=len(report.imported),
        rejected=len(rejected),
        present_in_other_layouts=len(second.outcomes),
        seconds=round(time.monotonic() - started, 2),
    )

"""A small catalog for the web tests (HTTP and browser): the demo's sample embeddings,
a trained-looking entry with a real loss curve and samples, a blend of two samples,
and an entry imported from a sidecar whose text is hostile markup."""

from __future__ import annotations

import io
import json
from pathlib import Path

#: Markup a sidecar may hold; none of it may be live on any page.
XSS_PAYLOADS = [
    "<script>window.__xss = 1</script>",
    '<img src=x onerror="window.__xss = 2">',
    "{{ 7*191 }}",
    "{% raw %}",
    "<b>bold</b> <a href=javascript:alert(1)>link</a>",
    '"><svg onload="window.__xss = 3">',
]
XSS_DESCRIPTION = " ".join(XSS_PAYLOADS)
#: ``{{ 7*191 }}`` evaluated by a template would print this.
XSS_EVALUATED = "1337"


def png(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (240, 120, 40)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def build_catalog(lib, folder: Path) -> dict[str, str]:  # noqa: ANN001
    """Fill ``lib``; return ``{what: name}`` of the entries the tests look at."""
    from conceptlib.registry.samples import sample_embedding, write_sample_folder
    from conceptlib.schemas.records import Preview, TrainingRunRecord
    from conceptlib.trainer.report import loss_curve_png

    write_sample_folder(folder / "samples")
    report = lib.import_paths([folder / "samples"], recursive=True)
    assert not report.rejected, report.to_dict()

    losses = [0.5 / (1 + i / 20) + 0.02 * ((i * 7) % 5) / 5 for i in range(120)]
    lib.add_embedding(
        sample_embedding("sd1", 2, 77),
        name="demo-toy",
        kind="object",
        source="trained",
        source_ref="runs/demo-toy",
        base_model="conceptlib/tiny-sd1",
        base_model_fingerprint="tiny-sd1:abc123",
        initializer="toy",
        training_images_hash="ab" * 32,
        training_image_count=6,
        tags=("demo",),
        description="demo concept: an orange toy",
        previews=[
            Preview("loss.png", loss_curve_png(losses, title="demo-toy"), "loss_curve"),
            Preview("samples.png", png((256, 128), (30, 90, 200)), "grid"),
            Preview("sample-0.png", png((96, 96), (240, 120, 40)), "sample"),
        ],
        training_run=TrainingRunRecord(
            config={"lr": 0.005, "batch": 4, "steps": 120, "seed": 0},
            steps=120,
            final_loss=0.0421,
            wall_time_s=12.5,
            device="cpu (x86_64)",
            base_model="conceptlib/tiny-sd1",
            base_model_fingerprint="tiny-sd1:abc123",
            training_images_hash="ab" * 32,
            training_image_count=6,
            initializer="toy",
        ),
    )
    a, b = lib.get("demo-watercolor"), lib.get("demo-woodblock")
    lib.add_embedding(
        sample_embedding("sd1", 1, 78),
        name="demo-blend",
        source="blend",
        parents=[
            {"tensor_sha256": a.tensor_sha256, "name": a.name, "weight": 0.5},
            {"tensor_sha256": b.tensor_sha256, "name": b.name, "weight": 0.5},
        ],
    )

    hostile = folder / "hostile"
    hostile.mkdir()
    from conceptlib.registry.formats import write_embedding

    ((_, data),) = write_embedding(
        sample_embedding("sd1", 1, 79), "safetensors", name="demo-hostile", token="demo-hostile"
    ).items()
    (hostile / "demo-hostile.safetensors").write_bytes(data)
    # A1111's extra-networks sidecar keeps its description as written (Civitai's HTML is
    # stripped on import); the Civitai one adds a hostile base model name.
    a1111 = {"description": XSS_DESCRIPTION, "notes": XSS_PAYLOADS[1]}
    (hostile / "demo-hostile.json").write_text(json.dumps(a1111), encoding="utf-8")
    sidecar = {
        "baseModel": '<img src=x onerror="window.__xss = 4">',
        "trainedWords": ["demo-hostile"],
        "model": {"name": "<script>x</script>", "type": "TextualInversion", "tags": ["style"]},
    }
    (hostile / "demo-hostile.civitai.info").write_text(json.dumps(sidecar), encoding="utf-8")
    report = lib.import_paths([hostile])
    assert not report.rejected, report.to_dict()
    assert lib.get("demo-hostile").description and "<script>" in lib.get("demo-hostile").description
    return {"trained": "demo-toy", "blend": "demo-blend", "hostile": "demo-hostile"}

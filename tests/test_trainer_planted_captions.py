"""The planted-concept check with per-image captions and aspect-ratio buckets on.

The world of ``test_trainer_planted.py`` (tiny-sd1 made Bayes-optimal for one image
per prompt), with non-square images: each image is what the pipeline makes at its own
size from ``"<hidden>, <caption>"``, and its caption file holds that caption. Training
with ``--captions txt --buckets`` (the default captioned template ``"{}, [filewords]"``,
each image in the bucket of its size) must find the hidden embedding again: the
training loss moves from the initializer's towards the hidden embedding's.
"""

from __future__ import annotations

import numpy as np
import torch
from compose_support import fresh_base
from test_trainer_planted import point_mass_world

from conceptlib.trainer import buckets as bk
from conceptlib.trainer.captions import CAPTIONED_TEMPLATE, load_captions
from conceptlib.trainer.captions import image_templates as fill_templates
from conceptlib.trainer.images import load_training_images
from conceptlib.trainer.loop import TextualInversion
from conceptlib.trainer.train import train

#: (width, height, caption): three buckets of the tiny model's 32 px (8 px steps).
IMAGES = [(40, 24, "a red toy"), (24, 40, "on the grass"), (40, 24, "near the sea"),
          (32, 32, "in the snow")]  # fmt: skip


def test_planted_concept_is_found_again_with_captions_and_buckets(tmp_path, record_property):
    bm = point_mass_world(fresh_base("tiny-sd1"))
    table = bm.slots[0].encoder.get_input_embeddings().weight.detach()
    rng = np.random.default_rng(11)
    hidden = {"clip_l": (rng.standard_normal((1, 768)) * float(table.std())).astype(np.float32)}

    folder = tmp_path / "planted"
    folder.mkdir()
    maker = TextualInversion(bm, np.zeros((1, 3, 32, 32), np.float32), ["{}"], name="maker",
                             init="toy", total_steps=1)  # fmt: skip
    try:
        with maker.using_vectors(hidden), torch.no_grad():
            for i, (w, h, caption) in enumerate(IMAGES):
                emb, _ = maker.encode_texts([f"{maker.placeholder_text}, {caption}"])
                out = bm.pipeline(prompt_embeds=emb, height=h, width=w, num_inference_steps=10,
                                  guidance_scale=1.0,
                                  generator=torch.Generator().manual_seed(100 + i))  # fmt: skip
                out.images[0].save(folder / f"{i}.png")
                (folder / f"{i}.txt").write_text(caption + "\n")
    finally:
        maker.close()

    result = train([folder], name="planted", init="box", base=bm, captions="txt", buckets=True,
                   flip=False, steps=60, lr=5e-3, batch=4, seed=0, register=False,
                   run_dir=tmp_path / "run", sample_every=0, sample_steps=1)  # fmt: skip
    assert result.config["bucket_counts"] == {"24x40": 1, "32x32": 1, "40x24": 2}

    imgs = load_training_images([folder])
    caps = load_captions(imgs.paths, "txt")
    judge = TextualInversion(
        bm, bk.to_bucket_pixels(imgs.images, 32, bk.resolve_buckets(32)), [CAPTIONED_TEMPLATE],
        name="judge", init="box", flip=False, total_steps=1,
        image_templates=fill_templates([CAPTIONED_TEMPLATE], caps, "judge"),
    )  # fmt: skip
    try:
        loss_init = judge.eval_loss(draws=128, batch=32)
        with judge.using_vectors(hidden):
            loss_hidden = judge.eval_loss(draws=128, batch=32)
        with judge.using_vectors(result.embedding.vectors):
            loss_trained = judge.eval_loss(draws=128, batch=32)
    finally:
        judge.close()
    closed = (loss_init - loss_trained) / (loss_init - loss_hidden)
    print(
        f"planted concept (captions + buckets): loss init {loss_init:.6f} -> trained "
        f"{loss_trained:.6f}, hidden {loss_hidden:.6f}; gap closed {closed:.1%}"
    )
    record_property("planted_captions_buckets_gap_closed", round(closed, 4))
    assert loss_hidden < 0.8 * loss_init  # the hidden embedding really explains the images
    assert closed > 0.5

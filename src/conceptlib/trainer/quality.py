"""CLIP-I and CLIP-T: how close a run's validation images are to the concept and
to their prompts, measured at each rendered step.

The metrics of the textual-inversion paper (Gal et al. 2022, section 5) and of
DreamBooth (Ruiz et al. 2023, section 4.1), computed with a CLIP model the user
already has (``--clip-model``: a local folder, or a repo id in the local Hugging
Face cache; nothing is downloaded):

* **CLIP-I** (image similarity): the mean cosine similarity between the CLIP image
  embedding of each generated image and of each training image (all pairs).
* **CLIP-T** (prompt similarity): the mean cosine similarity between each generated
  image and the text of its prompt *without the concept* (``"a photo of {} on a
  beach"`` -> ``"a photo of on a beach"``, as the textual-inversion paper measures
  "the prompt text omitting the placeholder").

Both lie in [-1, 1]; higher is better. A run records them per rendered step
(``TrainingRunRecord.metrics["quality"]``, each kept step's JSON) and, for the step
registered, in the catalog (``clip_i``, ``clip_t``: ``search`` orders by them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conceptlib.errors import UsageError

#: A CLIP config.json is a few kilobytes.
MAX_CONFIG_BYTES = 1 << 20


def resolve_clip_model(ref: str | os.PathLike[str]) -> Path:
    """The folder of CLIP model ``ref``: a local folder, or a repo id in the local
    Hugging Face cache (read offline). Checked without loading any weights.

    Raises:
        UsageError: (exit 2) not found, or its ``config.json`` is not a CLIP model's.
    """
    text = str(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        folder = path
    elif path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise UsageError(
            f"--clip-model {text!r}: not a folder of a CLIP model or a repo id",
            hint="pass a local folder, or a repo id in the Hugging Face cache, e.g. "
            "--clip-model openai/clip-vit-large-patch14",
        )
    else:
        folder = _cached(text)
    config = folder / "config.json"
    try:
        with open(config, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
        obj = json.loads(data) if len(data) <= MAX_CONFIG_BYTES else None
    except (OSError, ValueError, RecursionError):
        obj = None
    if not isinstance(obj, dict) or obj.get("model_type") != "clip":
        raise UsageError(
            f"--clip-model {text!r}: {config} is not the config of a CLIP model "
            "(with an image and a text tower)",
            hint="pass a CLIPModel folder, e.g. one of openai/clip-vit-large-patch14",
        )
    return folder


def _cached(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    from conceptlib.models.folders import download_command
    from conceptlib.models.libraries import _offline

    try:
        with _offline():
            return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        raise UsageError(
            f"--clip-model {repo_id!r} is not a local folder or a repo in the local Hugging "
            "Face cache (nothing is downloaded)",
            hint=f"download it first ({download_command(repo_id)}) or pass a local path",
        ) from None


class ClipScorer:
    """A frozen CLIP model scoring generated images against the training images
    (CLIP-I) and their prompts (CLIP-T)."""

    def __init__(self, folder: Path, *, device: Any, reference: Sequence[Any]) -> None:
        """Load the model from ``folder`` onto ``device`` and embed the ``reference``
        (training) images once.

        Raises:
            UsageError: (exit 2) the folder's weights or processor cannot be loaded.
        """
        import torch
        from transformers import CLIPModel, CLIPProcessor

        from conceptlib.models.libraries import _offline, quiet_libraries

        self.device = torch.device(device)
        try:
            with quiet_libraries(), _offline():
                self.model = CLIPModel.from_pretrained(folder, local_files_only=True)
                self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)
        except Exception as exc:
            raise UsageError(
                f"--clip-model {folder}: cannot load it as a CLIP model with its processor "
                f"({type(exc).__name__}: {str(exc)[:200]})"
            ) from None
        self.model.requires_grad_(False).eval().to(self.device)
        self.reference = self._images(reference)

    def _images(self, images: Sequence[Any]) -> Any:
        import torch

        inputs = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.model.dtype)
        with torch.no_grad():
            emb = _features(self.model.get_image_features(pixel_values=pixels))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def _texts(self, texts: Sequence[str]) -> Any:
        import torch

        inputs = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            emb = _features(self.model.get_text_features(**inputs))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def score(self, images: Sequence[Any], prompts: Sequence[str]) -> dict[str, float]:
        """``{"clip_i", "clip_t"}`` of ``images``, image *i* made from ``prompts[i]``
        (with ``{}`` for the concept)."""
        from conceptlib.trainer.validation import prompt_text

        gen = self._images(images)
        text = self._texts([prompt_text(p) for p in prompts])
        clip_i = float((gen @ self.reference.T).mean())
        clip_t = float((gen * text).sum(dim=-1).mean())
        return {"clip_i": clip_i, "clip_t": clip_t}


def _features(out: Any) -> Any:
    """``get_*_features`` returns a tensor (transformers 4) or an output whose
    ``pooler_output`` is the projected embedding (transformers 5)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output

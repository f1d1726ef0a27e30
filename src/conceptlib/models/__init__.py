"""Base models: loading the frozen Stable Diffusion model that concepts are trained on
and composed with, telling its family, and fingerprinting it.

Used by both :mod:`conceptlib.trainer` and :mod:`conceptlib.compose`. The modules,
each importing only those listed before it:

* :mod:`~conceptlib.models.libraries`: quieting diffusers/transformers, offline
  huggingface_hub, the dtype argument;
* :mod:`~conceptlib.models.tiny`: the built-in tiny models (``tiny-sd1``, ``tiny-sdxl``);
* :mod:`~conceptlib.models.fingerprint`: the base-model fingerprint (``fp2:``);
* :mod:`~conceptlib.models.family`: the family from the text encoders' widths, and
  each family's diffusers pipeline;
* :mod:`~conceptlib.models.folders`: diffusers folders and cached Hub repo ids;
* :mod:`~conceptlib.models.single_file`: single-file ``.safetensors`` checkpoints;
* :mod:`~conceptlib.models.checkpoint_hash`: a checkpoint file's SHA-256 (A1111's
  ``Model hash``), cached by path, size and mtime;
* :mod:`~conceptlib.models.base`: :class:`BaseModel` and :func:`load_base`.

Importing this package imports none of torch, diffusers, transformers or
huggingface_hub; the functions import them when called.
"""

from conceptlib.models.base import (
    BaseModel,
    TextEncoderSlot,
    available_devices,
    base_tokenizers,
    load_base,
    resolve_device,
)
from conceptlib.models.checkpoint_hash import a1111_model_hash, checkpoint_file, checkpoint_sha256
from conceptlib.models.family import family_from_widths
from conceptlib.models.fingerprint import (
    FINGERPRINT_PREFIX,
    fingerprint_path,
    tiny_fingerprint,
    weight_files,
)
from conceptlib.models.libraries import quiet_libraries
from conceptlib.models.single_file import single_file_family
from conceptlib.models.tiny import (
    TINY_MODELS,
    TINY_RESOLUTION,
    TINY_VERSION,
    ensure_tiny,
    load_tiny,
    tiny_path,
)

__all__ = [
    "FINGERPRINT_PREFIX",
    "TINY_MODELS",
    "TINY_RESOLUTION",
    "TINY_VERSION",
    "BaseModel",
    "TextEncoderSlot",
    "a1111_model_hash",
    "available_devices",
    "base_tokenizers",
    "checkpoint_file",
    "checkpoint_sha256",
    "ensure_tiny",
    "family_from_widths",
    "fingerprint_path",
    "load_base",
    "load_tiny",
    "quiet_libraries",
    "resolve_device",
    "single_file_family",
    "tiny_fingerprint",
    "tiny_path",
    "weight_files",
]

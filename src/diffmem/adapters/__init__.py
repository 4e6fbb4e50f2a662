"""Adapters map native models onto the denoiser contract.

The diffusers adapters are imported on first use (``from diffmem.adapters import StableDiffusionAdapter``), so that
``import diffmem`` does not import diffusers or transformers.
"""

import importlib

_LAZY = {
    "StableDiffusionAdapter": "diffmem.adapters.diffusers_sd",
    "DiTAdapter": "diffmem.adapters.dit",
    "PixArtAdapter": "diffmem.adapters.pixart",
    "LatentCodec": "diffmem.adapters.codec",
    "ModelFilesMissing": "diffmem.adapters.local",
    "SamplerSpec": "diffmem.adapters.scheduler_map",
    "sampler_from_scheduler": "diffmem.adapters.scheduler_map",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'diffmem.adapters' has no attribute {name!r}")

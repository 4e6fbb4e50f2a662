"""Memorization detectors: one statistic per file, registered in :data:`diffmem.detectors.base.REGISTRY`.

Importing this package registers every detector; see :mod:`diffmem.detectors.base` for the protocol.
"""

from diffmem.detectors import (  # noqa: F401  (registers)
    anisotropy,
    attention_entropy,
    bright_ending,
    complexity,
    cross_seed,
    early_derivative,
    kim_decomposition,
    noise_diff,
    onestep,
    onestep_blackbox,
    sharpness,
    stability_band,
    tiled_l2,
)
from diffmem.detectors.base import REGISTRY, CrossGeneration, Detector, PerGeneration, make_detector, register

__all__ = ["REGISTRY", "Detector", "PerGeneration", "CrossGeneration", "make_detector", "register"]

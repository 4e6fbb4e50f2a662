"""Memorization detectors: one statistic per file, registered in :data:`diffmem.detectors.base.REGISTRY`.

Importing this package registers every detector; see :mod:`diffmem.detectors.base` for the protocol.
"""

from diffmem.detectors import anisotropy, early_derivative, noise_diff, onestep, sharpness  # noqa: F401  (register)
from diffmem.detectors.base import REGISTRY, Detector, PerGeneration, make_detector, register

__all__ = ["REGISTRY", "Detector", "PerGeneration", "make_detector", "register"]

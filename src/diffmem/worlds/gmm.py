"""The gmm world: Gaussian-mixture data of Ye, Zhu, Tao & Chen (2025, §6.1), with samplers and log-density.

Defined in :mod:`diffmem.mixtures` (below both the worlds and the theory lab, which share it); named here with the
other embedded worlds.
"""

from diffmem.mixtures import BLOCK, GMMWorld, gmm_2d, gmm_world

__all__ = ["GMMWorld", "gmm_world", "gmm_2d", "BLOCK"]

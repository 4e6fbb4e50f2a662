"""Scoring-time laws of Ye et al. (2025, Algorithm 1): t ~ Beta(0.8, 2) on (0, 1), mapped to a model's timestep
index by t_index = min(floor(u · T), T − 1) (our mapping of the unit interval onto the index grid), so small t gets
most of the mass.

``uniform`` is an ablation (every training index equally likely, as in DDPM training; Ho et al., 2020).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["TIME_LAWS", "unit_to_index", "draw_timesteps"]

TIME_LAWS = ("beta", "uniform")


def unit_to_index(u: Tensor, num_train_timesteps: int) -> Tensor:
    """Map u ∈ [0, 1] to the timestep index min(floor(u · T), T − 1) (int64)."""
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
    if torch.any((u < 0) | (u > 1)):
        raise ValueError(f"u must lie in [0, 1], got range [{float(u.min())}, {float(u.max())}]")
    return torch.clamp(torch.floor(u.double() * num_train_timesteps), max=num_train_timesteps - 1).long()


def draw_timesteps(n: int, num_train_timesteps: int, seed: int | list[int], law: str = "beta", a: float = 0.8,
                   b: float = 2.0) -> Tensor:
    """``n`` timestep indices [n] (int64) from ``law``; deterministic in ``seed``.

    ``beta``: u ~ Beta(a, b) (defaults a = 0.8, b = 2 of Ye et al., 2025), then :func:`unit_to_index`.
    ``uniform``: u ~ U[0, 1), i.e. every index with probability 1/T.
    """
    if law not in TIME_LAWS:
        raise ValueError(f"unknown time law {law!r}; expected one of {TIME_LAWS}")
    if not (a > 0 and b > 0):
        raise ValueError(f"Beta parameters must be positive, got a={a!r}, b={b!r}")
    rng = np.random.default_rng(seed)
    u = rng.beta(a, b, size=n) if law == "beta" else rng.random(size=n)
    return unit_to_index(torch.from_numpy(u), num_train_timesteps)

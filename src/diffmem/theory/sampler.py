"""Sampling the theory lab's models through the one loop, with the lab's defaults (ours, scaled for CPU).

Reverse process of the OU / VP-SDE (ᾱ = e^{−t}) from t_max = 10 (ᾱ = 4.5e-5, so x_T ~ N(0, I) is the prior to
that precision) down to t_min = 1e-3, on a geometric grid (linear in log t, where the small-t steps matter), with
ancestral DDPM steps, i.e. the exact Gaussian transition of the reverse SDE given x̂₀ (the paper uses 1000
Euler–Maruyama steps; ``steps`` sets ours). The returned sample is x̂₀ at the last step (the usual final
denoising), so an exact empirical sampler returns training points exactly rather than points at noise level t_min.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from diffmem.denoiser import Denoiser
from diffmem.sampling.loop import sample
from diffmem.sampling.trajectory import Recorder
from diffmem.schedules import VPSDESchedule, continuous_grid
from diffmem.seeding import SeededNoise
from diffmem.theory.closed_form import NULL_LABEL
from diffmem.types import Cond

__all__ = ["SamplerConfig", "draw_samples"]


@dataclass(frozen=True)
class SamplerConfig:
    """Reverse-process settings for the theory lab (project defaults; the paper states none)."""

    steps: int = 200
    t_max: float = 10.0
    t_min: float = 1e-3
    solver: str = "ddpm"

    def to_dict(self) -> dict:
        return asdict(self)


def draw_samples(denoiser: Denoiser, dim: int, seeds, config: SamplerConfig | None = None, *,
                 dtype: torch.dtype = torch.float64, batch_size: int = 1000) -> tuple[Tensor, dict]:
    """Sample ``denoiser`` (a VP-SDE model) once per seed; returns (x̂₀ at the last step [B, dim], provenance).

    Sample i depends only on seed i (``SeededNoise``), so batching does not change the result."""
    config = config or SamplerConfig()
    grid = continuous_grid(VPSDESchedule(), config.steps, t_max=config.t_max, t_min=config.t_min,
                           spacing="geometric")
    seeds = list(seeds)
    out, prov = [], None
    for lo in range(0, len(seeds), batch_size):
        noise = SeededNoise(seeds[lo:lo + batch_size], dtype=dtype)
        x_T = noise.randn((dim,))
        cond = Cond(torch.full((x_T.shape[0],), NULL_LABEL))
        tr = sample(denoiser, x_T, grid, cond, solver=config.solver, guidance=1.0, noise=noise,
                    recorder=Recorder(keep=("x0_hat",), every=config.steps))
        out.append(tr.x0_hat[-1])
        prov = tr.provenance
    return torch.cat(out), {"solver": prov.solver, "grid": prov.grid, "model": prov.model,
                            "seeds": [seeds[0], seeds[-1]], "sampler": config.to_dict()}

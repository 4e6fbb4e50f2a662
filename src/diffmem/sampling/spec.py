"""What :func:`diffmem.sample` needs besides the model: grid, solver and the scale of the initial draw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

from diffmem.schedules import DiscreteSchedule, Grid
from diffmem.seeding import SeededNoise

__all__ = ["SamplerSpec"]


@dataclass(frozen=True)
class SamplerSpec:
    """How a model is sampled: its grid, solver and x_T scale (for diffusers models, those reproducing its scheduler).

    Attributes:
        grid: timesteps and ᾱ per step, identical to the scheduler's ``set_timesteps``.
        solver: registry name or bound step function (DDIM with η > 0).
        x_T_scale: VP scale of the initial draw z; 1 except diffusers Euler with linspace/trailing spacing
            (:mod:`diffmem.adapters.scheduler_map`).
        schedule: the training table ᾱ[0..T−1] the scheduler holds.
        config: the resolved scheduler config (all defaults filled in), for provenance.
    """

    grid: Grid
    solver: str | Callable
    x_T_scale: float
    schedule: DiscreteSchedule | None = None
    config: dict = field(default_factory=dict)

    def initial_latents(self, noise: SeededNoise, shape) -> Tensor:
        """x_T for a latent ``shape`` (without batch): one draw per seed, times :attr:`x_T_scale`."""
        z = noise.randn(tuple(shape))
        return z if self.x_T_scale == 1.0 else z * self.x_T_scale

"""diffmem: measure, explain, detect and mitigate memorization in diffusion models.

The two contracts (README.md, "What it is"): a :class:`Denoiser` returns ε_c and ε_u apart, and :func:`sample` is
the one loop, returning a recorded :class:`Trajectory`. ``import diffmem`` needs only torch, numpy and safetensors.
"""

from diffmem.denoiser import Denoiser
from diffmem.results import Provenance, Result
from diffmem.sampling.guidance import (
                                       Constant,
                                       DynamicTransition,
                                       Guidance,
                                       StaticTransition,
                                       Window,
                                       cfg,
                                       opposite_guidance,
)
from diffmem.sampling.hooks import Hook, Intervention
from diffmem.sampling.loop import sample
from diffmem.sampling.solvers import ddim_step, ddpm_step, euler_step
from diffmem.sampling.trajectory import Recorder, Trajectory
from diffmem.schedules import DiscreteSchedule, Grid, VPSDESchedule, continuous_grid, discrete_grid
from diffmem.seeding import SeededNoise
from diffmem.types import Cond, Prediction, StepRecord
from diffmem.version import __version__

__all__ = [
    "__version__", "Denoiser", "Cond", "Prediction", "StepRecord", "sample", "Trajectory", "Recorder", "Hook",
    "Intervention", "SeededNoise", "Result", "Provenance", "cfg", "Guidance", "Constant", "Window",
    "StaticTransition", "DynamicTransition", "opposite_guidance", "ddim_step", "ddpm_step", "euler_step",
    "DiscreteSchedule", "VPSDESchedule", "Grid", "discrete_grid", "continuous_grid",
]

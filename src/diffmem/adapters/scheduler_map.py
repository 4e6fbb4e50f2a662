"""A checkpoint's own diffusers scheduler config, mapped onto diffmem's schedule, grid, solver and x_T.

One function, :func:`sampler_from_scheduler`, turns a scheduler (object or config mapping) and a step count into a
:class:`SamplerSpec` such that ``sample(adapter, spec.initial_latents(noise, shape), spec.grid, cond,
solver=spec.solver, noise=noise)`` reproduces the stock pipeline with that scheduler (DDIM: Song et al., 2021; DDPM:
Ho et al., 2020; Euler: Karras et al., 2022). Options diffmem's solvers do not implement (x̂₀ clipping, dynamic
thresholding, Karras σ, zero-terminal-SNR rescaling, …) raise a ValueError naming the option instead of being
silently ignored.

Initial noise (project derivation). diffusers multiplies z ~ N(0, I) by ``init_noise_sigma`` and, for Euler, keeps
the VE state x̃ = x_t / √ᾱ_t, feeding the model x̃ / √(σ² + 1). In diffmem's VP form the pipeline's first state is
therefore x_T = z · init_noise_sigma / √(σ_max² + 1):

* DDIM, DDPM: init_noise_sigma = 1 and √ᾱ = 1 in the "VE" view they never leave, so x_T = z;
* Euler, ``timestep_spacing="leading"``: init_noise_sigma = √(σ_max² + 1), so x_T = z;
* Euler, ``"linspace"``/``"trailing"``: init_noise_sigma = σ_max, so x_T = √(1 − ᾱ_max) · z, slightly below unit
  variance (0.9977 for SD's σ_max ≈ 14.6). :attr:`SamplerSpec.x_T_scale` holds that factor.

The Euler iterates then agree with diffmem's :func:`~diffmem.sampling.solvers.euler_step` state for state, because
x_t = √ᾱ_t · x̃_t at every grid point and the last step lands on σ = 0, where both views coincide.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch

from diffmem.sampling.solvers import ddim_step
from diffmem.sampling.spec import SamplerSpec
from diffmem.schedules import DiscreteSchedule, discrete_grid

__all__ = ["SamplerSpec", "sampler_from_scheduler", "schedule_from_scheduler", "SCHEDULER_CLASSES"]

# diffmem solver name -> the diffusers scheduler class it reproduces
SCHEDULER_CLASSES = {"ddim": "DDIMScheduler", "ddpm": "DDPMScheduler", "euler": "EulerDiscreteScheduler"}

# options a reproduced scheduler must leave at these values (diffmem's solvers have no counterpart)
_UNSUPPORTED = {
    "ddim": {"clip_sample": False, "thresholding": False, "rescale_betas_zero_snr": False},
    "ddpm": {"clip_sample": False, "thresholding": False, "rescale_betas_zero_snr": False},
    "euler": {"interpolation_type": "linear", "use_karras_sigmas": False, "use_exponential_sigmas": False,
              "use_beta_sigmas": False, "timestep_type": "discrete", "final_sigmas_type": "zero",
              "rescale_betas_zero_snr": False},
}
_DDPM_VARIANCES = ("fixed_small", "fixed_small_log")  # both give the β̃ posterior variance diffmem's ddpm_step uses


def _resolve(scheduler, target: str | None) -> tuple[dict, object]:
    """The diffusers scheduler of the target class built from ``scheduler``'s config (as ``from_config`` does, so
    missing keys take that class's defaults), and its resolved config."""
    import diffusers

    is_config = isinstance(scheduler, Mapping)
    config = dict(scheduler if is_config else scheduler.config)
    name = target or (config.get("_class_name") if is_config else type(scheduler).__name__)
    if name not in SCHEDULER_CLASSES.values():
        raise ValueError(f"scheduler class {name!r} has no diffmem counterpart; pass solver= one of "
                         f"{sorted(SCHEDULER_CLASSES)} to sample with its noise schedule "
                         f"({', '.join(f'{k}: {v}' for k, v in SCHEDULER_CLASSES.items())})")
    same_class = not is_config and type(scheduler).__name__ == name
    obj = scheduler if same_class else getattr(diffusers, name).from_config(config)
    return dict(obj.config), obj


def _check_options(solver: str, config: dict) -> None:
    for key, ok in _UNSUPPORTED[solver].items():
        if config.get(key, ok) != ok:
            raise ValueError(f"scheduler option {key}={config[key]!r} is not supported by diffmem's {solver} "
                             f"solver (needs {key}={ok!r})")
    if solver == "ddpm" and config.get("variance_type") not in _DDPM_VARIANCES:
        raise ValueError(f"scheduler option variance_type={config.get('variance_type')!r} is not supported; "
                         f"expected one of {_DDPM_VARIANCES}")
    if config.get("prediction_type") not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"scheduler prediction_type={config.get('prediction_type')!r} is not supported")


def schedule_from_scheduler(scheduler) -> DiscreteSchedule:
    """The training table ᾱ[0..T−1] a diffusers scheduler (object or config) holds, as a :class:`DiscreteSchedule`."""
    config = dict(scheduler if isinstance(scheduler, Mapping) else scheduler.config)
    if config.get("rescale_betas_zero_snr"):
        raise ValueError("scheduler option rescale_betas_zero_snr=True gives alpha_bar_T = 0, which the VP state "
                         "cannot start from; not supported")
    obj = scheduler
    if isinstance(scheduler, Mapping) or not hasattr(scheduler, "alphas_cumprod"):
        _, obj = _resolve(config, "DDPMScheduler")  # any of the three builds the same table from the betas
    name = "trained_betas" if config.get("trained_betas") is not None else config.get("beta_schedule", "custom")
    return DiscreteSchedule(obj.alphas_cumprod.to(torch.float64).cpu(), name=name)


def sampler_from_scheduler(scheduler, num_steps: int, *, solver: str | None = None, eta: float = 0.0) -> SamplerSpec:
    """Map a diffusers scheduler (object or ``scheduler_config.json`` mapping) onto a diffmem :class:`SamplerSpec`.

    Args:
        scheduler: e.g. ``pipeline.scheduler`` or ``json.load(open(".../scheduler/scheduler_config.json"))``.
        num_steps: number of inference steps.
        solver: ``None`` uses the scheduler's own class; ``"ddim"``, ``"ddpm"`` or ``"euler"`` reads the config as
            ``<Class>.from_config(config)`` would (e.g. SD 1.4's PNDM config sampled with DDIM).
        eta: DDIM stochasticity (diffusers' ``eta`` pipeline argument); only for DDIM.

    Example:
        >>> spec = sampler_from_scheduler({"_class_name": "DDIMScheduler", "beta_schedule": "scaled_linear",
        ...     "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False,
        ...     "steps_offset": 1}, 50)
        >>> spec.grid.timesteps[:3].tolist(), spec.solver, spec.x_T_scale
        ([981.0, 961.0, 941.0], 'ddim', 1.0)
    """
    if solver is not None and solver not in SCHEDULER_CLASSES:
        raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(SCHEDULER_CLASSES)}")
    config, obj = _resolve(scheduler, SCHEDULER_CLASSES.get(solver))
    kind = next(k for k, v in SCHEDULER_CLASSES.items() if v == type(obj).__name__)
    _check_options(kind, config)
    if eta != 0.0 and kind != "ddim":
        raise ValueError(f"eta={eta!r} applies to DDIM only, not to {kind}")
    schedule = schedule_from_scheduler(obj)
    spacing, offset = config["timestep_spacing"], config["steps_offset"]
    if kind == "ddim":
        final = "one" if config["set_alpha_to_one"] else "first"
        grid = discrete_grid(schedule, num_steps, spacing=spacing, steps_offset=offset, next_rule="ratio",
                             final=final)
        step = functools.partial(ddim_step, eta=float(eta)) if eta else "ddim"
        return SamplerSpec(grid, step, 1.0, schedule, config)
    grid = discrete_grid(schedule, num_steps, spacing=spacing, steps_offset=offset, integer=kind == "ddpm")
    scale = 1.0
    if kind == "euler" and spacing in ("linspace", "trailing"):
        scale = float((1 - grid.alpha_bar[0]) ** 0.5)  # = σ_max / √(σ_max² + 1)
    return SamplerSpec(grid, kind, scale, schedule, config)

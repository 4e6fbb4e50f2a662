"""What every diffusers-backed adapter shares: the scheduler mapping, x_T, the codec, loading and provenance.

A subclass names its pipeline classes and components, its denoising module (:attr:`model`) and implements
``model_output``; nothing here forks a pipeline's ``__call__``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from torch import Tensor

from diffmem.adapters.codec import LatentCodec
from diffmem.adapters.local import load_local_pipeline
from diffmem.adapters.scheduler_map import SamplerSpec, sampler_from_scheduler, schedule_from_scheduler
from diffmem.denoiser import PREDICTION_TYPES, Denoiser
from diffmem.sampling.loop import sample
from diffmem.seeding import SeededNoise
from diffmem.types import Cond

__all__ = ["DiffusersAdapter"]


class DiffusersAdapter(Denoiser):
    """Base of the diffusers adapters (not used directly).

    Args:
        pipeline: a built diffusers pipeline; its modules are put in eval mode (models built from configs start in
            train mode, where DiT drops class labels at random).
        name: model identifier for provenance (default: the source directory or the pipeline class).
    """

    pipeline_classes: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    load_kwargs: dict = {}

    def __init__(self, pipeline, *, name: str | None = None, source: str | None = None):
        missing = [c for c in self.components if getattr(pipeline, c, None) is None]
        if missing:
            raise ValueError(f"{type(pipeline).__name__} has no {missing[0]!r}; {type(self).__name__} needs "
                             f"{list(self.components)}")
        self.pipeline, self.source = pipeline, source
        for c in self.components:
            module = getattr(pipeline, c)
            if isinstance(module, torch.nn.Module):
                module.eval()
        self._scheduler_state()  # validate now
        self.codec = LatentCodec(pipeline.vae)
        self.name = name or source or type(pipeline).__name__

    @classmethod
    def from_pretrained(cls, path, *, name: str | None = None, **kwargs):
        """Build from a local ``save_pretrained`` directory; a missing file raises
        :class:`~diffmem.adapters.local.ModelFilesMissing` naming it, and nothing is downloaded."""
        pipe = load_local_pipeline(path, cls.components, cls.pipeline_classes, **{**cls.load_kwargs, **kwargs})
        return cls(pipe, name=name, source=str(path))

    # --- the training schedule and parameterization follow the pipeline's current scheduler ---------------------

    def _scheduler_state(self) -> tuple:
        # recomputed when the scheduler is swapped (pipe.scheduler = X.from_config(...), the diffusers idiom)
        scheduler = self.pipeline.scheduler
        if getattr(self, "_state_of", None) is not scheduler:
            prediction_type = scheduler.config.prediction_type
            if prediction_type not in PREDICTION_TYPES:
                raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of "
                                 f"{PREDICTION_TYPES}")
            self._state, self._state_of = (schedule_from_scheduler(scheduler), prediction_type), scheduler
        return self._state

    @property
    def schedule(self):
        """The training table ᾱ[0..T−1] of the pipeline's scheduler (:class:`~diffmem.schedules.DiscreteSchedule`)."""
        return self._scheduler_state()[0]

    @property
    def prediction_type(self) -> str:
        """``"epsilon"``, ``"v_prediction"`` or ``"sample"``, from the scheduler config."""
        return self._scheduler_state()[1]

    # --- the denoising network -------------------------------------------------------------------------------

    @property
    def model(self) -> torch.nn.Module:
        """The denoising network (UNet or transformer): the target of module hooks."""
        raise NotImplementedError  # pragma: no cover - interface

    def _first_param(self) -> torch.nn.Parameter:
        # cached: walking model.parameters() on every call cost ~2 % of a tiny model's step; Module.to() converts
        # parameters in place, so the cached one follows the model's device and dtype
        model = self.model
        if getattr(self, "_param_of", None) is not model:
            self._param, self._param_of = next(model.parameters()), model
        return self._param

    @property
    def device(self) -> torch.device:
        return self._first_param().device

    @property
    def dtype(self) -> torch.dtype:
        return self._first_param().dtype

    def _inputs(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        # diffusers feeds integer (DDIM/DDPM) or float32 (Euler) timesteps; the time embedding casts to float32
        # either way, so a float32 copy of our float64 grid gives the same embedding
        return x_t.to(self.dtype), t.to(device=x_t.device, dtype=torch.float32)

    # --- sampling set-up -------------------------------------------------------------------------------------

    def sampler(self, num_steps: int, *, solver: str | None = None, eta: float = 0.0) -> SamplerSpec:
        """Grid, solver and x_T scale reproducing the pipeline's scheduler (:mod:`diffmem.adapters.scheduler_map`)."""
        key = (self.pipeline.scheduler, num_steps, solver, eta)  # a scheduler's config is frozen: safe to cache
        cache = self.__dict__.setdefault("_samplers", {})
        if key not in cache:
            cache[key] = sampler_from_scheduler(self.pipeline.scheduler, num_steps, solver=solver, eta=eta)
        return cache[key]

    def latent_shape(self, height: int | None = None, width: int | None = None) -> tuple[int, int, int]:
        """(channels, h, w) of the latents for an image of ``height`` x ``width`` pixels (default: the model's)."""
        down = self.codec.downsample
        size = self.model.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        h, w = (height // down if height else h), (width // down if width else w)
        return int(self.model.config.in_channels), int(h), int(w)

    def generate(self, cond: Cond, seeds: Sequence[int], num_steps: int, *, guidance=7.5,
                 solver: str | None = None, eta: float = 0.0, height: int | None = None, width: int | None = None,
                 **sample_kwargs):
        """Seeded x_T + the pipeline's grid and solver + :func:`diffmem.sample`: one call per batch.

        ``sample_kwargs`` go to :func:`diffmem.sample` (``recorder``, ``hooks``, ``interventions``).
        """
        spec = self.sampler(num_steps, solver=solver, eta=eta)
        noise = SeededNoise(list(seeds), device=self.device, dtype=self.dtype)
        x_T = spec.initial_latents(noise, self.latent_shape(height, width))
        return sample(self, x_T, spec.grid, cond, solver=spec.solver, guidance=guidance, noise=noise,
                      **sample_kwargs)

    def describe(self) -> dict:
        import diffusers

        config = json.dumps(dict(self.model.config), sort_keys=True, default=str)
        return {**super().describe(), "source": self.source, "pipeline": type(self.pipeline).__name__,
                "model_class": type(self.model).__name__,
                "model_config_sha256": hashlib.sha256(config.encode()).hexdigest()[:16],
                "scheduler": type(self.pipeline.scheduler).__name__, "codec": self.codec.describe(),
                "diffusers": diffusers.__version__}

"""Record a stock diffusers pipeline call as a :class:`~diffmem.sampling.trajectory.Trajectory`, with ε_c and ε_u
kept apart (Kim, Kim & Lee, 2025, §3: the conditional prediction carries the training image).

::

    with DiffusersRecorder(pipe) as rec:
        pipe(prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], guidance_scale=7.5)
    trajectory = rec.trajectory  # the fields diffmem.sample records, for the analyses and detectors

Mechanism: a forward pre-hook and hook on the denoising module (``pipe.unet`` or ``pipe.transformer``) read the
state and the predictions — under classifier-free guidance the pipeline batches [unconditional; conditional], split
here — and a wrapper of ``pipe.scheduler.step`` reads the state after the last step (x_0). The state the module
sees is the VP state x_t (Euler-type schedulers scale their VE state by 1/√(σ² + 1) before the call). Nothing of
diffusers is imported here: any pipeline with that layout works. Schedulers with one model call per step
(DDIM, DDPM, Euler, …) only; ε- and v-prediction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from diffmem.results import Provenance
from diffmem.sampling.trajectory import Recorder, Trajectory
from diffmem.types import Prediction, StepRecord

__all__ = ["DiffusersRecorder"]


class DiffusersRecorder:
    """Context manager recording every denoising step of ``pipe``'s calls inside it (the last call is kept).

    Args:
        pipe: a diffusers pipeline (``unet`` or ``transformer``, ``scheduler``).
        recorder: which fields to keep and how often (default: all, every step), as for :func:`diffmem.sample`.
        seeds: recorded in the provenance (the seeds of the generators passed to the pipeline).
    """

    def __init__(self, pipe, recorder: Recorder | None = None, *, seeds=None):
        self.pipe, self.recorder, self.seeds = pipe, recorder or Recorder(), seeds
        self.net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if self.net is None:
            raise ValueError(f"{type(pipe).__name__} has neither a unet nor a transformer to record")
        self._steps: list[dict] = []
        self._x0: Tensor | None = None
        self._handles: list = []
        self._step = None

    # --- hooks ---------------------------------------------------------------------------------------------------

    def _pre(self, module, args, kwargs):
        x = kwargs.get("sample", args[0] if args else None)
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self._steps.append({"x_in": x.detach().clone(), "t": float(torch.as_tensor(t).flatten()[0])})

    def _post(self, module, args, kwargs, output):
        out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        self._steps[-1]["out"] = out.detach().clone()

    def _wrapped_step(self, *args, **kwargs):
        result = self._step(*args, **kwargs)
        prev = result[0] if isinstance(result, tuple) else result.prev_sample
        self._x0 = prev.detach().clone()
        return result

    def __enter__(self) -> DiffusersRecorder:
        self._steps, self._x0 = [], None
        self._handles = [self.net.register_forward_pre_hook(self._pre, with_kwargs=True),
                         self.net.register_forward_hook(self._post, with_kwargs=True)]
        self._step = self.pipe.scheduler.step
        self.pipe.scheduler.step = self._wrapped_step
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.pipe.scheduler.step = self._step

    # --- the trajectory --------------------------------------------------------------------------------------

    def _eps(self, out: Tensor, x_t: Tensor, ab: float) -> Tensor:
        """The model output as an ε-prediction (v-prediction: ε = √ᾱ v + √(1 − ᾱ) x_t)."""
        out = out[:, : x_t.shape[1]]  # learned-variance models return [ε, variance] channels
        kind = self.pipe.scheduler.config.get("prediction_type", "epsilon")
        if kind == "epsilon":
            return out
        if kind == "v_prediction":
            return math.sqrt(ab) * out + math.sqrt(1 - ab) * x_t
        raise ValueError(f"prediction_type {kind!r} is not recorded; use an epsilon or v_prediction scheduler")

    def _alpha_bar(self, t: float) -> float:
        return float(self.pipe.scheduler.alphas_cumprod[int(round(t))])

    def _final_alpha_bar(self) -> float:
        final = getattr(self.pipe.scheduler, "final_alpha_cumprod", None)
        return 1.0 if final is None else float(final)

    @property
    def trajectory(self) -> Trajectory:
        """The last recorded call as a Trajectory (the same fields :func:`diffmem.sample` records)."""
        if not self._steps or self._x0 is None:
            raise ValueError("nothing recorded: call the pipeline inside `with DiffusersRecorder(pipe) as rec:`")
        w = float(getattr(self.pipe, "guidance_scale", 1.0))
        n, rec = len(self._steps), self.recorder.start(len(self._steps))
        x_T = None
        for i, s in enumerate(self._steps):
            x_in, out = s["x_in"], s["out"]
            guided = x_in.shape[0] == 2 * self._x0.shape[0]
            x_t = x_in.chunk(2)[1] if guided else x_in
            ab = self._alpha_bar(s["t"])
            ab_next = self._alpha_bar(self._steps[i + 1]["t"]) if i + 1 < n else self._final_alpha_bar()
            if guided:
                eps_u, eps_c = (self._eps(o, x_t, ab) for o in out.chunk(2))
                eps = eps_u + w * (eps_c - eps_u)
                d_t = (eps_c.float() - eps_u.float()).flatten(1).norm(dim=1)
            else:
                eps_c = eps = self._eps(out, x_t, ab)
                eps_u = d_t = None
            x0_hat = (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
            B = x_t.shape[0]
            rec.add(StepRecord(i, n, s["t"], ab, ab_next, math.sqrt((1 - ab) / ab),
                               torch.full((B,), w if guided else 1.0, dtype=torch.float64), d_t, x_t,
                               Prediction(eps_c, eps_u, eps, x0_hat)))
            x_T = x_t if x_T is None else x_T
        scheduler = type(self.pipe.scheduler).__name__
        prov = Provenance(model={"pipeline": type(self.pipe).__name__, "module": type(self.net).__name__,
                                 "scheduler": scheduler},
                          solver={"name": scheduler, "recorded_from": "diffusers pipeline call"},
                          grid={"timesteps": [s["t"] for s in self._steps]},
                          guidance={"kind": "Constant", "w": w}, seeds=None if self.seeds is None else list(self.seeds))
        return rec.finish(x_T, self._x0, prov)

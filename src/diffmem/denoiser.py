"""The denoiser contract: ``denoiser(x_t, t, cond) -> Prediction`` with ε_c and ε_u kept apart.

A concrete denoiser implements :meth:`Denoiser.model_output` (one forward pass on a batch) and declares its
``prediction_type`` and training ``schedule``. The base class evaluates both CFG branches in one batched forward and
converts v- or x₀-prediction to ε exactly, once, here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from diffmem.schedules import NoiseSchedule, eps_from_v, eps_from_x0, x0_from_eps
from diffmem.types import Cond, Prediction, concat_cond

__all__ = ["Denoiser", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


class Denoiser:
    """Base class of every model behind the contract.

    Attributes:
        schedule: the training noise schedule; ``schedule.alpha_bar(t)`` gives ᾱ_t for the model's own t.
        prediction_type: what :meth:`model_output` returns: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        name: model identifier recorded in provenance.
    """

    schedule: NoiseSchedule
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    name: str = "denoiser"

    def model_output(self, x_t: Tensor, t: Tensor, c: Any) -> Tensor:
        """Native model output for a batch; ``t`` has shape [B]."""
        raise NotImplementedError  # pragma: no cover - interface

    def describe(self) -> dict:
        """Provenance of the model (override to add a revision, a path, a config hash)."""
        return {"name": self.name, "class": type(self).__name__, "prediction_type": self.prediction_type,
                "schedule": self.schedule.to_dict()}

    def _alpha_bar(self, t: Tensor, x: Tensor) -> Tensor:
        return self.schedule.alpha_bar(t.cpu()).to(device=x.device, dtype=x.dtype).view(-1, *[1] * (x.ndim - 1))

    def to_eps(self, out: Tensor, x_t: Tensor, alpha_bar: Tensor) -> Tensor:
        """Convert a native output to ε exactly (v: ε = sqrt(ᾱ) v + sqrt(1 − ᾱ) x_t)."""
        if self.prediction_type == "epsilon":
            return out
        if self.prediction_type == "v_prediction":
            return eps_from_v(x_t, out, alpha_bar)
        if self.prediction_type == "sample":
            return eps_from_x0(x_t, out, alpha_bar)
        raise ValueError(f"unknown prediction_type {self.prediction_type!r}; expected one of {PREDICTION_TYPES}")

    def __call__(self, x_t: Tensor, t, cond: Cond, *, uncond: bool | None = None) -> Prediction:
        """Predict ε_c (and ε_u when ``uncond``; default: whenever ``cond.null`` is given).

        Args:
            x_t: noisy state [B, ...].
            t: model timestep, a float or a [B] tensor.
            cond: conditioning for both branches.
        Returns:
            An unguided :class:`Prediction` (``eps`` = ``eps_c``; the loop applies guidance).
        """
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        B = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device)
        t = t.expand(B) if t.ndim == 0 else t
        if t.shape != (B,):
            raise ValueError(f"t must be a scalar or have shape [{B}], got shape {tuple(t.shape)}")
        if cond.batch_size != B:
            raise ValueError(f"conditioning batch size {cond.batch_size} != x_t batch size {B}")
        uncond = cond.null is not None if uncond is None else uncond
        if uncond and cond.null is None:
            raise ValueError("eps_u requested but cond.null is None")
        alpha_bar = self._alpha_bar(t, x_t)
        if uncond:  # both CFG branches in one forward: [uncond; cond]
            x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
            out = self.to_eps(self.model_output(x2, t2, concat_cond(cond.null, cond.c)), x2,
                              torch.cat([alpha_bar, alpha_bar]))
            eps_u, eps_c = out.chunk(2)
        else:
            eps_u, eps_c = None, self.to_eps(self.model_output(x_t, t, cond.c), x_t, alpha_bar)
        return Prediction(eps_c, eps_u, eps_c, x0_from_eps(x_t, eps_c, alpha_bar))

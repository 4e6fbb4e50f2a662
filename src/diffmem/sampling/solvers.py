"""Solvers as pure step functions on the VP state.

Every solver has the signature ``step(x_t, pred, alpha_bar_t, alpha_bar_next, noise) -> x_next`` where ``pred``
is the guided :class:`~diffmem.types.Prediction`, the ᾱ are floats and ``noise()`` returns a standard normal
tensor shaped like ``x_t`` drawn from each sample's own generator. Options (η) are bound with
``functools.partial``; :func:`describe_solver` turns either form into provenance.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from torch import Tensor

from diffmem.schedules import sigma_from_alpha_bar
from diffmem.types import Prediction

__all__ = ["ddim_step", "ddpm_step", "euler_step", "SOLVERS", "resolve_solver", "describe_solver"]

Noise = Callable[[], Tensor]


def ddim_step(x_t: Tensor, pred: Prediction, alpha_bar_t: float, alpha_bar_next: float,
              noise: Noise | None = None, *, eta: float = 0.0) -> Tensor:
    """DDIM update (Song et al., ICLR 2021, Eq. 12); η = 0 is deterministic, η = 1 matches DDPM's variance.

    x' = sqrt(ᾱ') x̂₀ + sqrt(1 − ᾱ' − σ²) ε̂ + σ z, σ = η sqrt((1 − ᾱ')/(1 − ᾱ)) sqrt(1 − ᾱ/ᾱ').
    """
    a, a_next = alpha_bar_t, alpha_bar_next
    sigma = eta * ((1 - a_next) / (1 - a) * (1 - a / a_next)) ** 0.5
    x_next = a_next**0.5 * pred.x0_hat + (1 - a_next - sigma**2) ** 0.5 * pred.eps
    if eta > 0:
        x_next = x_next + sigma * noise()
    return x_next


def ddpm_step(x_t: Tensor, pred: Prediction, alpha_bar_t: float, alpha_bar_next: float,
              noise: Noise | None = None) -> Tensor:
    """Ancestral step from the posterior q(x_{t'} | x_t, x̂₀) with β̃ variance (Ho et al., 2020, Eqs. 6–7).

    No noise is added when the step lands on ᾱ' = 1, as in diffusers' DDPMScheduler."""
    a, a_next = alpha_bar_t, alpha_bar_next
    beta = 1 - a / a_next
    mean = (a_next**0.5 * beta / (1 - a)) * pred.x0_hat + ((a / a_next) ** 0.5 * (1 - a_next) / (1 - a)) * x_t
    var = (1 - a_next) / (1 - a) * beta
    return mean + var**0.5 * noise() if var > 0 else mean


def euler_step(x_t: Tensor, pred: Prediction, alpha_bar_t: float, alpha_bar_next: float,
               noise: Noise | None = None) -> Tensor:
    """Euler step of the probability-flow ODE in σ (k-diffusion form; Karras et al., 2022, Alg. 1 without churn).

    In VE coordinates x̃ = x_t / sqrt(ᾱ): d = (x̃ − x̂₀)/σ, x̃' = x̃ + (σ' − σ) d; then back to VP. For an ε-model this
    equals DDIM(η = 0) up to rounding, which the tests check."""
    sigma, sigma_next = sigma_from_alpha_bar(alpha_bar_t), sigma_from_alpha_bar(alpha_bar_next)
    x_ve = x_t / alpha_bar_t**0.5
    d = (x_ve - pred.x0_hat) / sigma
    return (x_ve + (sigma_next - sigma) * d) * alpha_bar_next**0.5


SOLVERS: dict[str, Callable] = {"ddim": ddim_step, "ddpm": ddpm_step, "euler": euler_step}


def resolve_solver(solver: str | Callable, **options) -> Callable:
    """A solver by registry name (with options such as ``eta``) or a step function as given."""
    if isinstance(solver, str):
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; expected one of {sorted(SOLVERS)}")
        fn = SOLVERS[solver]
        return functools.partial(fn, **options) if options else fn
    if not callable(solver):
        raise TypeError(f"solver must be a registry name or a step function, got {solver!r}")
    return solver


def describe_solver(solver: Callable) -> dict:
    """Provenance of a step function: its registry name (or qualified name) and bound options."""
    fn, opts = (solver.func, dict(solver.keywords)) if isinstance(solver, functools.partial) else (solver, {})
    names = {v: k for k, v in SOLVERS.items()}
    return {"name": names.get(fn, getattr(fn, "__qualname__", repr(fn))), **opts}

"""The revised theory of Kim, Kim & Lee (2025) tested on a recorded trajectory against the exact training law.

For one prompt with target x* (its paired training sample) and a trajectory recorded with both branches at every
step, each step gives m_c, m_u (clean estimates of ε_c, ε_u), m_g = m_u + g Δ_t with Δ_t = m_c − m_u, and from the
law (:mod:`diffmem.analyses.finite_law`) x̄_K(t, x_t), p_t = posterior mass of x*, R = max_j ‖u_j − x*‖:

* Lemma 4 (one-step displacement): a DDIM(η = 0) update is affine, x_{t−1} = A_t x_t + κ_t m_g with
  A_t = σ_{t−1}/σ_t, κ_t = α_{t−1} − α_t σ_{t−1}/σ_t, so x_{t−1} − x^cf_{t−1} = g κ_t Δ_t with x^cf = A_t x_t + κ_t m_u;
  the residual ‖x_{t−1} − A_t x_t − κ_t m_g‖ is round-off when the sampler is that update (a clipped x̂₀ breaks it).
* Lemma 6 (synchronisation): ‖Δ_t‖ ≤ e_par + R (1 − p_t), e_par = uᵀ(Δ_t − Δ̄_t), u = Δ_t/‖Δ_t‖, Δ̄_t = x* − x̄_K;
  exact whenever x* is an atom (uᵀΔ̄_t ≤ ‖Σ_j w_j (x* − u_j)‖ ≤ R (1 − p_t)). The paper's form has e_t(c) + e_t(∅)
  in place of e_par (e_t(c) = ‖m_c − x*‖, e_t(∅) = ‖m_u − x̄_K‖), a weaker bound.
* Proposition 5 (posterior feedback): margin M = ‖Δ_t‖ − e_par − V_t, V_t = [∫₀¹ uᵀ(x̄_K(t−1, x^cf + s g κ_t Δ_t)
  − x̄_K(t, x_t)) ds]₊ (Gauss–Legendre with n and 2n nodes; their difference is the stated quadrature error);
  M > 0 should give a positive guidance gain H = log p_{t−1}(x^cf + g κ_t Δ_t) − log p_{t−1}(x^cf).
* Lemma 2 / Corollary 3 per step: ‖m_u − μ‖/√d against the exact ‖x̄_K − μ‖/√d, and the centred guidance fit
  ĝ_t = ⟨m_g − μ, x* − μ⟩/‖x* − μ‖² with its residual ‖(m_g − μ) − ĝ_t (x* − μ)‖/√d (prediction: ĝ_T → g).
* Theorem 7 (terminal bound) at the last step: E_end = ‖x_0 − x*‖ ≤ B_ref = e_c + (g − 1)(e_par + R (1 − p)) when
  the final update is clean (lands on ᾱ = 1: A = 0, κ = 1, x_0 = m_g); otherwise the code adds
  δ_sched = ‖x_0 − m_g‖. The paper's bound is B_paper = g e_c + (g − 1)(e_u + R (1 − p)).
* Theorem 1 (loss–recovery) at the first step T: A_c = sqrt(L̂_T(c)/(d SNR_T)) from R forward draws of x*; since
  x̂₀(c) − x* = (σ/α)(ε − ε_θ) on forward-noised inputs, A_c² is the mean squared recovery error there, and on the
  sampler's N(0, I) draws P(e_T/√d > ρ) ≤ A_c²/ρ² + δ_TV with δ_TV ≤ sqrt(KL/2) between N(α x*, σ² I) and N(0, I).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffmem.analyses.finite_law import FiniteLaw
from diffmem.sampling.trajectory import Trajectory
from diffmem.schedules import snr, x0_from_eps
from diffmem.seeding import SeededNoise
from diffmem.subject import Prompt, Subject
from diffmem.types import Prediction

__all__ = ["TheoryTrace", "ddim_coefficients", "theory_trace", "LossRecovery", "loss_recovery", "tv_bound",
           "lemma2_curve", "QUAD_NODES", "SATURATED"]

SATURATED = 1e-9  # −log p above which the posterior already sits on x* and a gain is round-off
QUAD_NODES = 4  # Gauss–Legendre nodes of V_t; the error estimate compares with twice as many
_F64 = torch.float64


def ddim_coefficients(alpha_bar: float, alpha_bar_next: float) -> tuple[float, float]:
    """(A_t, κ_t) of the affine DDIM(η = 0) update x_{t−1} = A_t x_t + κ_t x̂₀ (Song et al., 2021, Eq. 12)."""
    a, s = alpha_bar**0.5, (1 - alpha_bar) ** 0.5
    a_n, s_n = alpha_bar_next**0.5, (1 - alpha_bar_next) ** 0.5
    return s_n / s, a_n - a * s_n / s


@dataclass(frozen=True)
class TheoryTrace:
    """Per step S and seed B (float64 [S, B] unless noted) for one prompt; Theorem 7 fields are [B].

    ``lemma4_residual`` ‖x_{t−1} − A x_t − κ m_g‖ and ``lemma4_tol`` its round-off allowance; ``lemma4_affine``
    whether the solver's step is the affine one (False where a clip of x̂₀ acted); ``lemma4_residual_solver`` the
    residual with the solver's own x̂₀ (the clipped m_g of a clipping solver). ``delta``, ``bound_code``,
    ``bound_paper``: ‖Δ_t‖ and Lemma 6's e_par + R(1 − p_t) and e_c + e_u + R(1 − p_t). ``margin`` (NaN at the
    terminal step), ``margin_paper``, ``quad_err``, ``gain`` H on the affine guided point and ``gain_obs`` on the
    recorded next state; ``saturated`` where H is round-off (|H| ≤ 64 ε d, or p_{t−1} > 1 − 1e−9 at both ends).
    ``dist_model``, ``dist_exact``: ‖m_u − μ‖/√d and ‖x̄_K − μ‖/√d; ``ghat``, ``ghat_resid``; ``radius`` R [B].
    """

    e_c: Tensor
    e_u: Tensor
    log_p: Tensor
    delta: Tensor
    e_par: Tensor
    bound_code: Tensor
    bound_paper: Tensor
    lemma6_tol: Tensor
    lemma4_residual: Tensor
    lemma4_tol: Tensor
    lemma4_affine: Tensor
    lemma4_residual_solver: Tensor
    margin: Tensor
    margin_paper: Tensor
    quad_err: Tensor
    gain: Tensor
    gain_obs: Tensor
    dist_model: Tensor
    dist_exact: Tensor
    ghat: Tensor
    ghat_resid: Tensor
    E_end: Tensor
    B_obs: Tensor
    B_ref: Tensor
    B_paper: Tensor
    delta_sched: Tensor
    E_end_unclean: Tensor
    delta_sched_unclean: Tensor
    saturated: Tensor
    thm7_tol: Tensor
    radius: Tensor


def _norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1)


def _solver_bound(solver) -> float | None:
    """The clip bound of a clipping solver (the worlds' DDIM), else None."""
    return getattr(solver, "bound", None)


def theory_trace(traj: Trajectory, x_star: Tensor, law: FiniteLaw, *, solver=None,
                 alpha_bar_unclean: float | None = None, nodes: int = QUAD_NODES) -> TheoryTrace:
    """Every per-step quantity of Lemmas 2, 4, 6, Corollary 3, Proposition 5 and Theorem 7 for one prompt.

    ``traj`` must hold x_t, ε_c and ε_u at every step (``Recorder(keep=("x_t", "eps_c", "eps_u"))``, every = 1, ε_u
    evaluated everywhere); ``solver`` is the step function that made it (its clip bound marks non-affine steps, and
    it replays the last step onto ``alpha_bar_unclean``, the final ᾱ of a sampler without a clean final update)."""
    if traj.x_t is None or traj.eps_c is None or traj.eps_u is None or bool(torch.isnan(traj.eps_u).any()):
        raise ValueError("the trajectory needs x_t, eps_c and eps_u at every step: record with "
                         "Recorder(keep=('x_t', 'eps_c', 'eps_u')) and guidance with always_uncond=True")
    S, B = traj.x_t.shape[:2]
    if traj.steps.tolist() != list(range(S)):
        raise ValueError(f"the trajectory must record every step (Recorder every=1), got steps {traj.steps.tolist()}")
    j_star, d = law.index(x_star), law.dim
    xs, mu = x_star.flatten().to(_F64), law.mean
    R = law.radius(x_star)
    vstar = xs - mu
    eps_dtype = torch.finfo(traj.x_t.dtype).eps
    bound = _solver_bound(solver)
    out = {k: torch.full((S, B), math.nan, dtype=_F64) for k in TheoryTrace.__dataclass_fields__}
    for j in range(S):
        ab, ab_n = float(traj.alpha_bar[j]), float(traj.alpha_bar_next[j])
        x = traj.x_t[j].flatten(1).to(_F64)
        w = traj.w[j].to(_F64)[:, None]
        m_c = x0_from_eps(x, traj.eps_c[j].flatten(1).to(_F64), ab)
        m_u = x0_from_eps(x, traj.eps_u[j].flatten(1).to(_F64), ab)
        delta = m_c - m_u
        m_g = m_u + w * delta
        x_next = (traj.x_t[j + 1] if j + 1 < S else traj.x_0).flatten(1).to(_F64)
        A, kappa = ddim_coefficients(ab, ab_n)
        # Lemma 4: the recorded update against the affine one; round-off scale of a float computation of it
        o = out
        o["lemma4_residual"][j] = _norm(x_next - A * x - kappa * m_g)
        eps_g = (x - ab**0.5 * m_g) / (1 - ab) ** 0.5
        scale = A * _norm(x) + abs(kappa) * (_norm(x) + (1 - ab) ** 0.5 * _norm(eps_g)) / ab**0.5 + _norm(x_next)
        o["lemma4_tol"][j] = 64 * eps_dtype * scale
        o["lemma4_affine"][j] = (torch.ones(B) if bound is None else (m_g.abs() <= bound).all(1)).to(_F64)
        m_s = m_g if bound is None else m_g.clamp(-bound, bound)
        o["lemma4_residual_solver"][j] = _norm(x_next - A * x - kappa * m_s)
        # Lemma 6 and the posterior quantities
        xbar = law.posterior_mean(x, ab)
        log_p = law.log_mass(x, ab, j_star) if j_star >= 0 else torch.full((B,), -math.inf, dtype=_F64)
        p = log_p.exp()
        n_delta = _norm(delta)
        u = delta / n_delta.clamp_min(torch.finfo(_F64).tiny)[:, None]
        e_par = (u * (delta - (xs - xbar))).sum(1)
        o["e_c"][j], o["e_u"][j], o["log_p"][j] = _norm(m_c - xs), _norm(m_u - xbar), log_p
        o["delta"][j], o["e_par"][j] = n_delta, e_par
        o["bound_code"][j] = e_par + R * (1 - p)
        o["bound_paper"][j] = o["e_c"][j] + o["e_u"][j] + R * (1 - p)
        o["lemma6_tol"][j] = 256 * torch.finfo(_F64).eps * (n_delta + R + xs.norm() + _norm(xbar)) * d**0.5
        # Lemma 2 and Corollary 3
        o["dist_model"][j], o["dist_exact"][j] = _norm(m_u - mu) / d**0.5, _norm(xbar - mu) / d**0.5
        ghat = ((m_g - mu) @ vstar) / (vstar @ vstar)
        o["ghat"][j], o["ghat_resid"][j] = ghat, _norm((m_g - mu) - ghat[:, None] * vstar) / d**0.5
        if ab_n < 1 and j_star >= 0:
            _feedback(o, j, x, m_u, delta, w, u, n_delta, e_par, xbar, law, j_star, ab, ab_n, x_next, nodes)
        if j == S - 1:
            _terminal(o, traj, x, m_c, m_u, m_g, delta, w, e_par, p, R, xs, ab, solver, alpha_bar_unclean)
    end = ("E_end", "B_obs", "B_ref", "B_paper", "delta_sched", "E_end_unclean", "delta_sched_unclean", "thm7_tol",
           "radius")
    return TheoryTrace(**{k: (v[-1] if k in end else v) for k, v in out.items()})


def _feedback(o, j, x, m_u, delta, w, u, n_delta, e_par, xbar, law, j_star, ab, ab_n, x_next, nodes) -> None:
    """Proposition 5 at one non-terminal step: margin with V_t by Gauss–Legendre (n and 2n nodes) and the gains."""
    A, kappa = ddim_coefficients(ab, ab_n)
    x_cf = A * x + kappa * m_u
    step = w * kappa * delta
    B = len(x)

    def V(n: int) -> Tensor:
        s, wts = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(n))
        s, wts = (s + 1) / 2, wts / 2
        z = (x_cf[None] + s[:, None, None] * step[None]).reshape(n * B, -1)
        f = ((law.posterior_mean(z, ab_n).view(n, B, -1) - xbar[None]) * u[None]).sum(2)
        return (wts[:, None] * f).sum(0)

    v_n, v_2n = V(nodes), V(2 * nodes)
    Vt = v_2n.clamp_min(0)
    o["quad_err"][j] = (v_2n - v_n).abs()
    o["margin"][j] = n_delta - e_par - Vt
    o["margin_paper"][j] = n_delta - o["e_c"][j] - o["e_u"][j] - Vt
    lp_cf = law.log_mass(x_cf, ab_n, j_star)
    lp_g = law.log_mass(x_cf + step, ab_n, j_star)
    o["gain"][j] = lp_g - lp_cf
    o["gain_obs"][j] = law.log_mass(x_next, ab_n, j_star) - lp_cf
    # H below the round-off of two O(d) log densities, or a posterior already on x* at both ends: H is no signal
    noise = (o["gain"][j].abs() <= 64 * torch.finfo(_F64).eps * law.dim)
    o["saturated"][j] = (noise | ((lp_cf > -SATURATED) & (lp_g > -SATURATED))).to(_F64)


def _terminal(o, traj, x, m_c, m_u, m_g, delta, w, e_par, p, R, xs, ab, solver, ab_unclean) -> None:
    """Theorem 7 at the last step; with ``ab_unclean`` the same last step replayed onto a final ᾱ < 1."""
    w = w[:, 0]
    e_c = _norm(m_c - xs)
    x_0 = traj.x_0.flatten(1).to(_F64)
    # x_0 = m_g was computed in the state dtype from ε (÷ α); the bound's terms in float64 from the same ε
    eps_dtype = torch.finfo(traj.x_t.dtype).eps
    o["thm7_tol"][-1] = 64 * eps_dtype * (_norm(x_0) + xs.norm() + w * (_norm(m_c) + _norm(m_u))) / ab**0.5
    o["E_end"][-1] = _norm(x_0 - xs)
    o["B_obs"][-1] = e_c + (w - 1) * _norm(delta)
    o["B_ref"][-1] = e_c + (w - 1) * (e_par + R * (1 - p))
    o["B_paper"][-1] = w * e_c + (w - 1) * (o["e_u"][-1] + R * (1 - p))
    o["delta_sched"][-1] = _norm(x_0 - m_g)
    o["radius"][-1] = R
    if ab_unclean is not None and solver is not None:
        eps = lambda m: (x - ab**0.5 * m) / (1 - ab) ** 0.5
        pred = Prediction(eps(m_c), eps(m_u), eps(m_g), m_g)
        x0u = solver(x, pred, ab, float(ab_unclean), None).flatten(1)
        o["E_end_unclean"][-1] = _norm(x0u - xs)
        o["delta_sched_unclean"][-1] = _norm(x0u - m_g)


@dataclass(frozen=True)
class LossRecovery:
    """Theorem 1 for one prompt: A_c, A_u (abscissae of the conditional and unconditional forward losses), Y_c, U_c
    (RMS recovery errors of x̂₀_T(Z_n, c) and x̂₀_T(Z_n, ∅) against x*), ``e_T`` [B] = ‖x̂₀_T(Z_n, c) − x*‖/√d and
    ``tv`` the bound on δ_TV."""

    A_c: float
    A_u: float
    Y_c: float
    U_c: float
    e_T: Tensor
    tv: float


def tv_bound(x_star: Tensor, alpha_bar: float) -> float:
    """δ_TV(N(α x*, σ² I), N(0, I)) ≤ sqrt(KL/2) (Pinsker), KL = ½(α²‖x*‖² + d(σ² − 1 − ln σ²)), at most 1."""
    d, s2 = x_star.numel(), 1 - alpha_bar
    kl = 0.5 * (alpha_bar * float(x_star.double().pow(2).sum()) + d * (s2 - 1 - math.log(s2)))
    return min(1.0, (kl / 2) ** 0.5)


def loss_recovery(subject: Subject, prompt: Prompt, traj: Trajectory, *, draws: int = 64,
                  seed: int = 0) -> LossRecovery:
    """Theorem 1 at the first step T: the unguided forward losses of both branches from ``draws`` noise draws
    (draw r uses seed ``seed + r``) and the recovery errors of the trajectory's first clean estimates."""
    x = prompt.x.to(subject.dtype)
    t, ab = traj.t[0], float(traj.alpha_bar[0])
    eps = SeededNoise(range(seed, seed + draws), dtype=x.dtype).randn(x.shape)
    batch = prompt.cond.select(torch.zeros(draws, dtype=torch.long))
    with torch.no_grad():
        p = subject.denoiser(ab**0.5 * x + (1 - ab) ** 0.5 * eps, t, batch, uncond=True)
    d, s = x.numel(), float(snr(ab))
    loss = lambda e: float((eps - e).flatten(1).double().pow(2).sum(1).mean())
    xs = x.flatten().to(_F64)
    x_t = traj.x_t[0].flatten(1).to(_F64)
    e_T = _norm(x0_from_eps(x_t, traj.eps_c[0].flatten(1).to(_F64), ab) - xs) / d**0.5
    u_T = _norm(x0_from_eps(x_t, traj.eps_u[0].flatten(1).to(_F64), ab) - xs) / d**0.5
    return LossRecovery((loss(p.eps_c) / (d * s)) ** 0.5, (loss(p.eps_u) / (d * s)) ** 0.5,
                        float(e_T.pow(2).mean().sqrt()), float(u_T.pow(2).mean().sqrt()), e_T, tv_bound(xs, ab))


def lemma2_curve(law: FiniteLaw, snr_max: float, *, points: int = 97, draws: int = 64,
                 seed: int = 0) -> tuple[Tensor, Tensor]:
    """Lemma 2's exact finite-law curve: SNR [points], log-spaced from snr_max·1e−6 to snr_max, and
    ‖x̄_K(t, z) − μ‖/√d [points, draws] on z ~ N(0, I) (draw r from seed ``seed + r``)."""
    snrs = torch.logspace(math.log10(snr_max * 1e-6), math.log10(snr_max), points, dtype=_F64)
    z = SeededNoise(range(seed, seed + draws), dtype=_F64).randn((law.dim,))
    dist = torch.stack([_norm(law.posterior_mean(z, float(s / (1 + s))) - law.mean) / law.dim**0.5 for s in snrs])
    return snrs, dist

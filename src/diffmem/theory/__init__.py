"""Closed-form oracles and the theory lab of Ye, Zhu, Tao & Chen (2025): empirical vs true score, loss gap,
Lipschitz separation, network sweeps. Needs only torch and numpy (figures import matplotlib lazily)."""

from diffmem.mixtures import GaussianMixture, Posterior
from diffmem.theory.lab import run_loss_gap, run_scores, run_sweep_preset, run_teaser, run_theory_quick
from diffmem.theory.lipschitz import gaussian_lipschitz, lipschitz_bounds, measured_lipschitz
from diffmem.theory.loss_gap import GapEstimate, loss_gap, loss_gap_closed_form
from diffmem.theory.score_memorization import collapse_curve, collapse_time, score_memorization

__all__ = [
    "GaussianMixture", "Posterior", "loss_gap", "loss_gap_closed_form", "GapEstimate", "lipschitz_bounds",
    "measured_lipschitz", "gaussian_lipschitz", "score_memorization", "collapse_curve", "collapse_time",
    "run_loss_gap", "run_scores", "run_sweep_preset", "run_teaser", "run_theory_quick",
]

"""The summaries of the theory lab's four experiments (Ye, Zhu, Tao & Chen, 2025) as typed records.

Each is what its runner in :mod:`diffmem.theory.lab` returns and, with the provenance and the figure names, what it
writes to ``summary.json`` (field names are the JSON keys). Nested tables stay plain JSON (lists of rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from diffmem.results import Record

__all__ = ["LossGapSummary", "ScoresSummary", "SweepSummary", "TeaserSummary", "SUMMARIES"]


@dataclass(frozen=True)
class LossGapSummary(Record):
    """Prop. 4.1 and Fig. 1: the loss gap vs t for each n (keyed ``str(n)``), Monte Carlo with standard errors.

    Attributes:
        gap_mc, gap_se: (a) the DSM-loss difference and its standard error per n, [len(t)] each.
        fisher_mc, fisher_se: (b) the Fisher divergence under the empirical noised law and its standard error.
        diff_se: standard error of the paired per-draw difference (a) − (b).
        gap_closed_form: (c) the small-t closed form at each t.
        prop41_agree: per n and t, |a − b| within 3 standard errors; prop41_all_agree: at every (n, t).
        prop41_max_z: the largest |a − b| / diff_se where diff_se exceeds rounding.
        max_rel_err_small_t: the closed form's worst relative error at t ≤ :data:`~diffmem.theory.lab.SMALL_T`.
        reference: rows ``{"t", "gap_n<n>", "closed_form"}`` at the reference t.
        tables: the gap at t = 0.3 vs d, vs s² and the closed form's breakdown case (empty when not run).
    """

    t: list[float]
    n: list[int]
    dim: int
    draws: int
    gap_mc: dict[str, list[float]]
    gap_se: dict[str, list[float]]
    fisher_mc: dict[str, list[float]]
    fisher_se: dict[str, list[float]]
    diff_se: dict[str, list[float]]
    gap_closed_form: list[float]
    prop41_agree: dict[str, list[bool]]
    prop41_all_agree: bool
    prop41_max_z: float
    max_rel_err_small_t: float
    reference: list[dict]
    tables: dict = field(default_factory=dict)
    wall_s: float = 0.0


@dataclass(frozen=True)
class ScoresSummary(Record):
    """The two exact scores: per model (``empirical``, ``true``) the memorization ratio and mean true
    log-likelihood of its samples; the held-out log-likelihood; collapse time vs n and d; Lemma C.1 bounds."""

    memorization: dict[str, dict]
    heldout_loglik_mean: float
    n: int
    dim: int
    collapse: dict
    lipschitz: dict
    wall_s: float = 0.0


@dataclass(frozen=True)
class SweepSummary(Record):
    """Fig. 3: one row per run in each panel, run times, and the findings as sentences."""

    config: dict
    panels: dict[str, list[dict]]
    wall_s: float
    run_s_total: float
    cpu_s_total: float
    findings: list[str]


@dataclass(frozen=True)
class TeaserSummary(Record):
    """Fig. 2: one row per model (memorization ratio, mean log-likelihood, parameter count), the world and n."""

    rows: list[dict]
    world: dict
    n: int
    config: dict = field(default_factory=dict)
    wall_s: float = 0.0


SUMMARIES = {"loss_gap": LossGapSummary, "scores": ScoresSummary, "sweep": SweepSummary, "teaser": TeaserSummary}

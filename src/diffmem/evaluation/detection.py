"""How well a per-prompt score separates memorized from other prompts: ROC AUC, TPR at a fixed FPR, CIs, DeLong.

Conventions (shared by every detector of :mod:`diffmem.detectors`):

* the *direction is declared*: scores are oriented so that higher = memorized before they reach these functions
  (a detector with ``higher_is_memorized=False`` is negated by the harness); an AUC below 0.5 is reported as is;
* **TPR at FPR α is the conservative rule** TPR@α = max{TPR(τ) : FPR(τ) ≤ α} over all thresholds, without
  interpolation — at most ⌊α·N_neg⌋ false positives (Jeon et al., ICML 2025 and Asthana & Belagiannis, ICLR 2026
  instead take the ROC point *closest* to α, which may lie above it: :func:`tpr_at_fpr_closest`, a side column);
* a threshold is *calibrated* on the negatives of one split (:func:`calibrate_threshold`) and *applied* to another.

ROC curves come from scikit-learn; the rank form of the AUC (Mann–Whitney U / (n₁ n₀)) is vectorised for the
stratified bootstrap (positives and negatives resampled apart, scipy's ``bootstrap``); DeLong's paired test
(DeLong, DeLong & Clarke-Pearson, 1988) in the fast midrank form of Sun & Xu (2014).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats
from sklearn.metrics import roc_curve

__all__ = ["roc_auc", "roc_points", "tpr_at_fpr", "tpr_at_fpr_closest", "auc_ci", "delong_test", "DeLong", "Threshold",
           "calibrate_threshold", "detection_rate"]


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s, y = np.asarray(scores, dtype=np.float64).ravel(), np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.size}) and labels ({y.size}) differ in length")
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1 (1 = memorized), got values {sorted(set(y.tolist()))[:5]}")
    if not np.isfinite(s).all():
        raise ValueError(f"scores hold {int((~np.isfinite(s)).sum())} non-finite values; drop or fix those prompts")
    if y.sum() == 0 or y.sum() == y.size:
        raise ValueError(f"need both classes, got {int(y.sum())} positives of {y.size}")
    return s, y.astype(bool)


def _auc_ranks(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC = P(score_pos > score_neg) + ½ P(tie), by midranks of the pooled sample (vectorised over other axes)."""
    n1, n0 = pos.shape[axis], neg.shape[axis]
    ranks = stats.rankdata(np.concatenate([pos, neg], axis=axis), axis=axis)
    r1 = np.take(ranks, np.arange(n1), axis=axis).sum(axis=axis)
    return (r1 - n1 * (n1 + 1) / 2) / (n1 * n0)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` (higher = memorized) for 0/1 ``labels``; ties count ½.

    Example:
        >>> roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
        0.75
    """
    s, y = _check(scores, labels)
    return float(_auc_ranks(s[y], s[~y]))


def _roc(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve of ``scores`` (higher = memorized) for 0/1 ``labels``: (FPR, TPR) at every distinct threshold,
    from (0, 0) to (1, 1), collinear points dropped (scikit-learn's ``roc_curve``); for plotting saved scores.

    Example:
        >>> [a.tolist() for a in roc_points([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])]
        [[0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0]]
    """
    s, y = _check(scores, labels)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def tpr_at_fpr(scores, labels, fpr: float = 0.01) -> float:
    """Conservative TPR at FPR α: the largest TPR over thresholds whose FPR is ≤ α (no interpolation).

    Example (one false positive is allowed only from 100 negatives on):
        >>> tpr_at_fpr([0.9, 0.8, 0.85, 0.1], [1, 1, 0, 0], fpr=0.01)
        0.5
    """
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must lie in [0, 1), got {fpr!r}")
    f, t = _roc(*_check(scores, labels))
    return float(t[f <= fpr + 1e-12].max())


def tpr_at_fpr_closest(scores, labels, fpr: float = 0.01) -> float:
    """TPR at the ROC point whose FPR is closest to α (may exceed α; ties: the larger TPR). A labelled side column
    for comparison with the published tables that use it, never a headline."""
    f, t = _roc(*_check(scores, labels))
    gap = np.abs(f - fpr)
    return float(t[gap == gap.min()].max())


def auc_ci(scores, labels, *, level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, positives and negatives resampled apart (stratified)."""
    s, y = _check(scores, labels)
    res = stats.bootstrap((s[y], s[~y]), _auc_ranks, vectorized=True, paired=False, confidence_level=level,
                          n_resamples=n_resamples, method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@dataclass(frozen=True)
class DeLong:
    """DeLong's test of AUC_a = AUC_b for two scores of the same prompts: the two AUCs, their difference, its
    standard error and the two-sided p-value."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p_value: float


def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Structural components V10 (per positive) and V01 (per negative) by midranks (Sun & Xu, 2014)."""
    n1, n0 = len(pos), len(neg)
    r_all = stats.rankdata(np.concatenate([pos, neg]))
    r_pos, r_neg = stats.rankdata(pos), stats.rankdata(neg)
    v10 = (r_all[:n1] - r_pos) / n0
    v01 = 1.0 - (r_all[n1:] - r_neg) / n1
    return v10, v01


def delong_test(scores_a, scores_b, labels) -> DeLong:
    """Paired DeLong test between two detectors scored on the same prompts (both oriented higher = memorized).

    Example:
        >>> r = delong_test([0.1, 0.4, 0.35, 0.8, 0.7], [0.2, 0.1, 0.9, 0.8, 0.3], [0, 0, 1, 1, 1])
        >>> round(r.auc_a, 3), round(r.auc_b, 3)
        (0.833, 1.0)
    """
    a, y = _check(scores_a, labels)
    b, _ = _check(scores_b, labels)
    comps = [_placements(s[y], s[~y]) for s in (a, b)]
    aucs = np.array([c[0].mean() for c in comps])
    s10 = np.cov(np.stack([c[0] for c in comps]))
    s01 = np.cov(np.stack([c[1] for c in comps]))
    cov = s10 / y.sum() + s01 / (~y).sum()
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(max(var, 0.0))
    z = diff / se if se > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
    return DeLong(float(aucs[0]), float(aucs[1]), diff, se, z, float(2 * stats.norm.sf(abs(z))))


@dataclass(frozen=True)
class Threshold:
    """A detection threshold τ (flag when score > τ) and how it was calibrated.

    Attributes:
        value: τ; fpr_target: the α asked for; fpr_calibration: the FPR τ gives on the calibration negatives
        (≤ α); n_negatives: how many negatives set it; split: which prompts ("calibration").
    """

    value: float
    fpr_target: float
    fpr_calibration: float
    n_negatives: int
    split: str = "calibration"

    def flag(self, scores) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64) > self.value


def calibrate_threshold(negative_scores, fpr: float = 0.01, *, split: str = "calibration") -> Threshold:
    """The smallest τ among the observed negative scores with at most ⌊α·N⌋ negatives above it.

    With fewer than 1/α negatives no false positive is allowed and τ is the largest negative score (say so when
    reporting: the FPR is then only bounded by 1/N).

    Example:
        >>> calibrate_threshold([0.1, 0.2, 0.3, 0.4], fpr=0.25).value
        0.3
    """
    s = np.sort(np.asarray(negative_scores, dtype=np.float64).ravel())
    if s.size == 0 or not np.isfinite(s).all():
        raise ValueError("need at least one finite negative score to calibrate a threshold")
    if not 0 <= fpr < 1:
        raise ValueError(f"fpr must lie in [0, 1), got {fpr!r}")
    allowed = math.floor(fpr * s.size + 1e-9)
    tau = float(s[s.size - 1 - allowed])
    return Threshold(tau, float(fpr), float((s > tau).mean()), int(s.size), split)


def detection_rate(scores, threshold: Threshold, groups) -> dict:
    """Fraction flagged per group (e.g. per duplication rung m): ``{group: (rate, n)}``, groups sorted."""
    flagged = threshold.flag(scores)
    g = np.asarray(groups)
    if g.shape != flagged.shape:
        raise ValueError(f"groups ({g.size}) and scores ({flagged.size}) differ in length")
    return {k: (float(flagged[g == k].mean()), int((g == k).sum())) for k in sorted(set(g.tolist()))}

"""Correlation of a memorization score with severity across prompts, with bootstrap confidence intervals
(Kim et al., 2025 report Pearson r only; we add Spearman and a 95 % percentile bootstrap)."""

from __future__ import annotations

import numpy as np

__all__ = ["correlate"]


def correlate(score, severity, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """{"pearson", "pearson_ci", "spearman", "spearman_ci", "n"} across prompts (NaN where undefined).

    The bootstrap resamples prompts with replacement; resamples with a constant side are skipped.
    """
    from scipy import stats

    a, b = np.asarray(score, dtype=np.float64), np.asarray(severity, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"score and severity must be 1-D of equal length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("score and severity must be finite")
    out = {"n": int(a.size)}
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {**out, "pearson": float("nan"), "pearson_ci": [float("nan")] * 2, "spearman": float("nan"),
                "spearman_ci": [float("nan")] * 2}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    for name, fn in (("pearson", lambda u, v: stats.pearsonr(u, v)[0]),
                     ("spearman", lambda u, v: stats.spearmanr(u, v)[0])):
        boots = [fn(a[i], b[i]) for i in idx if np.ptp(a[i]) > 0 and np.ptp(b[i]) > 0]
        lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]) if boots else (np.nan, np.nan)
        out[name], out[f"{name}_ci"] = float(fn(a, b)), [float(lo), float(hi)]
    return out

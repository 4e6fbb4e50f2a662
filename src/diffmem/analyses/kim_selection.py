"""Kim, Kim & Lee (2025)'s proximity analysis, prompt-selection rule and forward-corruption bands (authors' code).

* Proximity: per seed s, l_s = ‖x_0⁽ˢ⁾ − x*‖ (terminal state against the paired target, raw L2) and the copy
  similarity s_s of x_0⁽ˢ⁾ to x* (the authors use SSCD; offline we use SSIM to the paired image, the severity judge
  of :mod:`diffmem.analyses.severity`, or cosine where the state is not an image); per prompt the Spearman ρ(l, s)
  across seeds. A memorizing model should give ρ < 0 (closer terminal, more similar copy).
* Selection: pool (l, s) over every prompt's seeds, standardise each coordinate, fit one 2-component
  full-covariance Gaussian mixture, hard-assign; "low" is the component with the smaller similarity mean. A prompt
  is dropped iff more than half of its seeds are low and none has s > 0.75 (an exact half is kept).
* Bands: along a trajectory z_k (k = 0 the first state, the last = x_0) d_gen(k) = ‖z_k − x*‖ and
  d_fwd(k) = ‖(α_k − 1) x* + σ_k x_T‖ with α_k = √ᾱ_k, σ_k = √(1 − ᾱ_k) (VP) and the seed's own x_T, i.e. the
  distance of the forward corruption α_k x* + σ_k x_T to x*; it is 0 at a final ᾱ = 1. Min–max bands over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import rankdata
from sklearn.mixture import GaussianMixture
from torch import Tensor

from diffmem.sampling.trajectory import Trajectory
from diffmem.similarity.ssim import ssim

__all__ = ["COPY_SIMILARITY", "copy_similarity", "similarity_name", "spearman", "Selection", "select_prompts",
           "drop_rule", "corruption_distances", "trajectory_distances", "band_overlap"]

COPY_SIMILARITY = 0.75  # the authors' "memorized iff SSCD > 0.75", applied to our similarity
_F64 = torch.float64


def similarity_name(x: Tensor) -> str:
    """Which judge :func:`copy_similarity` uses for a target of this shape."""
    return "ssim to the paired image (state space)" if x.ndim == 3 else "cosine to the paired image (state space)"


def copy_similarity(samples: Tensor, x: Tensor) -> Tensor:
    """Similarity [B] of each sample [B, *x.shape] to its paired target x: SSIM for images [C, H, W] (data range 2,
    states in [−1, 1]), else cosine."""
    if samples.shape[1:] != x.shape:
        raise ValueError(f"samples {tuple(samples.shape)} do not match the target {tuple(x.shape)}")
    a, b = samples.to(_F64), x.to(_F64)
    if x.ndim == 3:
        return ssim(a, b.expand_as(a))
    af, bf = a.flatten(1), b.flatten()
    return af @ bf / (af.norm(dim=1) * bf.norm()).clamp_min(torch.finfo(_F64).tiny)


def spearman(dist: Tensor, s: Tensor) -> float:
    """Spearman ρ of two samples [B] (average ranks for ties); NaN when either is constant or B < 2."""
    rl, rs = (rankdata(np.asarray(v, dtype=np.float64)) for v in (dist, s))
    if len(rl) < 2 or np.ptp(rl) == 0 or np.ptp(rs) == 0:
        return float("nan")
    rl, rs = rl - rl.mean(), rs - rs.mean()
    return float((rl @ rs) / np.sqrt((rl @ rl) * (rs @ rs)))


@dataclass(frozen=True)
class Selection:
    """The selection rule's outcome: ``low`` [P, B] hard assignments to the low-similarity component, ``dropped``
    [P], and the two components' means in raw units (``means`` [2, 2], rows (l, s), low component first)."""

    low: Tensor
    dropped: Tensor
    means: Tensor


def drop_rule(low: Tensor, s: Tensor, threshold: float = COPY_SIMILARITY) -> Tensor:
    """Drop prompt p iff more than half of its seeds are low and none has similarity above ``threshold``."""
    B = low.shape[1]
    return (2 * low.sum(1) > B) & ~(s > threshold).any(1)


def select_prompts(dist: Tensor, s: Tensor, *, threshold: float = COPY_SIMILARITY, random_state: int = 0) -> Selection:
    """The authors' GMM selection on distances l = ``dist`` [P, B] and similarities s [P, B] (module docstring)."""
    if dist.shape != s.shape or dist.ndim != 2:
        raise ValueError(f"need distances and similarities of one shape [P, B], got {tuple(dist.shape)} and "
                         f"{tuple(s.shape)}")
    X = torch.stack([dist.flatten(), s.flatten()], 1).to(_F64).numpy()
    if len(X) < 2:
        raise ValueError(f"the selection GMM needs at least 2 (prompt, seed) points, got {len(X)}")
    mu, sd = X.mean(0), X.std(0)
    sd[sd == 0] = 1.0  # a constant coordinate carries no information; keep it at 0 rather than divide by 0
    Z = (X - mu) / sd
    gmm = GaussianMixture(2, covariance_type="full", random_state=random_state).fit(Z)
    lab = gmm.predict(Z)
    lo = int(np.argmin(gmm.means_[:, 1]))
    low = torch.from_numpy(lab == lo).view(dist.shape)
    means = torch.from_numpy(gmm.means_[[lo, 1 - lo]] * sd + mu)
    return Selection(low, drop_rule(low, s, threshold), means)


def corruption_distances(states: Tensor, alpha_bar: Tensor, x_T: Tensor, x_star: Tensor) -> tuple[Tensor, Tensor]:
    """d_gen, d_fwd [K, B] for states [K, B, ...] at ᾱ [K], initial noises x_T [B, ...] and the target x*."""
    xs = x_star.flatten().to(_F64)
    z = states.flatten(2).to(_F64)
    ab = alpha_bar.to(_F64)[:, None, None]
    d_gen = (z - xs).norm(dim=2)
    d_fwd = ((ab.sqrt() - 1) * xs + (1 - ab).sqrt() * x_T.flatten(1).to(_F64)[None]).norm(dim=2)
    return d_gen, d_fwd


def trajectory_distances(traj: Trajectory, x_star: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`corruption_distances` on every recorded state x_t[0…S−1] and the final x_0 (K = S + 1)."""
    if traj.x_t is None:
        raise ValueError("the bands need the states: record with Recorder(keep=('x_t', ...))")
    states = torch.cat([traj.x_t, traj.x_0[None]])
    ab = torch.cat([traj.alpha_bar, traj.alpha_bar_next[-1:]])
    return corruption_distances(states, ab, traj.x_T, x_star)


def band_overlap(d_gen: Tensor, d_fwd: Tensor) -> Tensor:
    """Boolean [K]: the min–max bands over seeds of d_gen and d_fwd [K, B] intersect at state k."""
    return torch.maximum(d_gen.amin(1), d_fwd.amin(1)) <= torch.minimum(d_gen.amax(1), d_fwd.amax(1))

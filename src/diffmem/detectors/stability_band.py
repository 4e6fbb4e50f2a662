"""Latent-update stability band (Chen et al., "Broken Memories", KDD 2026; our parameterized reading of the
abstract): memorization shows as latent updates that leave the band non-memorized prompts stay in.

u_k = ‖x_{k+1} − x_k‖₂ for every update k of one full guided generation (x_N = the final sample), measured online by
a hook (no trajectory is kept). :meth:`StabilityBand.fit` sets the band [lo_k, hi_k] to per-step quantiles of u_k over
calibration runs of non-memorized prompts with the same sampler, steps and guidance; the score of a generation is
max_k (u_k − hi_k)/(hi_k − lo_k) (``two_sided`` also counts (lo_k − u_k)/(hi_k − lo_k)), averaged over generations.
Higher = memorized. Zero extra NFE beyond the run (2 per step).

Under DDIM the guided update differs from the unguided one by w·κ_t·Δ_t with ‖Δ_t‖ ∝ ‖ε_c − ε_u‖ (Kim et al., 2025,
Lemma 4), so u_k carries a scaled Wen et al. magnitude: compare it with ``wen-all`` at equal cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from diffmem.detectors.base import PerGeneration, register, repeat_cond
from diffmem.sampling.hooks import Hook
from diffmem.sampling.trajectory import Recorder
from diffmem.subject import Prompt, Subject

__all__ = ["StabilityBand", "UpdateNorms", "band_excess"]


class UpdateNorms(Hook):
    """Hook: u_k = ‖x_{k+1} − x_k‖₂ per sample, in float64, for every update of a run ([K, B] in :attr:`u`)."""

    def __init__(self):
        self.rows: list[Tensor] = []
        self._prev: Tensor | None = None

    def _add(self, x: Tensor) -> None:
        if self._prev is not None:
            self.rows.append((x.double() - self._prev.double()).flatten(1).norm(dim=1).cpu())
        self._prev = x

    def on_step(self, record) -> None:
        self._add(record.x_t)

    def on_end(self, trajectory) -> None:
        self._add(trajectory.x_0)
        self._prev = None

    @property
    def u(self) -> Tensor:
        return torch.stack(self.rows)


def band_excess(u: Tensor, lo: Tensor, hi: Tensor, *, two_sided: bool = False) -> Tensor:
    """max_k (u_k − hi_k)/(hi_k − lo_k) per run, for update norms u [K, B] and a band lo, hi [K] -> [B].

    >>> band_excess(torch.tensor([[1.0], [5.0]]), torch.tensor([0.0, 2.0]), torch.tensor([2.0, 4.0])).tolist()
    [0.5]
    """
    width = (hi - lo)[:, None]
    excess = (u - hi[:, None]) / width
    if two_sided:
        excess = torch.maximum(excess, (lo[:, None] - u) / width)
    return excess.amax(0)


@register
@dataclass(frozen=True)
class StabilityBand(PerGeneration):
    """Latent-update stability band (Chen et al., KDD 2026): how far the update norms leave a calibrated band.

    Attributes:
        guidance: CFG weight of the generations (calibration and scoring alike).
        steps: grid length (None: the subject's default).
        quantiles: (low, high) quantiles of the band (numpy's linear interpolation).
        two_sided: also score updates below the band.
        lo_, hi_: the fitted band per update (set by :meth:`fit`; None before).
        n_calibration_: calibration runs the band was fitted on.
    """

    name = "chen-stability-band"
    citation = "Chen et al., Broken Memories, KDD 2026 (arXiv 2605.22050)"
    higher_is_memorized = True
    needs = frozenset({"trajectory", "calibration"})
    guidance: float = 7.5
    steps: int | None = None
    quantiles: tuple[float, float] = (0.005, 0.995)
    two_sided: bool = False
    lo_: tuple[float, ...] | None = None
    hi_: tuple[float, ...] | None = None
    n_calibration_: int = 0

    def __post_init__(self):
        lo, hi = self.quantiles
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {self.quantiles!r}")

    def update_norms(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        """u [P, n, K] of every prompt and generation."""
        out = []
        for index, batch_seeds in self.batches(prompts, seeds):
            hook = UpdateNorms()
            subject.sample(repeat_cond(subject, prompts, index), batch_seeds, guidance=self.guidance,
                           steps=self.steps or subject.steps, recorder=Recorder(keep=()), hooks=[hook])
            out.append(hook.u.T)
        return torch.cat(out).view(len(prompts), len(seeds), -1)

    def fit(self, subject: Subject, negative_prompts: Sequence[Prompt], seeds: Sequence[int]) -> StabilityBand:
        """This detector with its band fitted on the generations ``seeds`` of non-memorized prompts."""
        u = self.update_norms(subject, negative_prompts, seeds).flatten(0, 1).numpy()
        if len(u) < 2:
            raise ValueError(f"the stability band needs at least 2 calibration runs, got {len(u)}")
        lo, hi = np.quantile(u, self.quantiles, axis=0)
        if not (hi > lo).all():
            k = int(np.argmin(hi - lo))
            raise ValueError(f"the calibration band has zero width at update {k} ({lo[k]} to {hi[k]}); use more or "
                             f"more varied calibration runs")
        return replace(self, lo_=tuple(map(float, lo)), hi_=tuple(map(float, hi)), n_calibration_=len(u))

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        if self.lo_ is None or self.hi_ is None:
            raise ValueError(f"detector {self.name!r} is not fitted: call .fit(subject, negative_prompts, seeds) on "
                             f"non-memorized prompts first (it returns the fitted detector)")
        u = self.update_norms(subject, prompts, seeds)
        if u.shape[-1] != len(self.lo_):
            raise ValueError(f"the band was fitted on {len(self.lo_)} updates, but this run has {u.shape[-1]}; "
                             f"fit and score with the same steps")
        lo, hi = torch.tensor(self.lo_, dtype=torch.float64), torch.tensor(self.hi_, dtype=torch.float64)
        return band_excess(u.flatten(0, 1).T, lo, hi, two_sided=self.two_sided).view(len(prompts), len(seeds))

"""Wen et al.'s training-time filter (ICLR 2024, "Detecting, Explaining, and Mitigating Memorization in Diffusion
Models"): leave out of the loss the training rows whose text-conditional noise prediction departs too far from the
unconditional one — the signature of a memorized caption.

Every ``every`` steps the current (EMA) network scores each distinct caption by the first-step magnitude
d = mean over x_T draws of ‖ε_θ(x_T, T, c) − ε_θ(x_T, T, ∅)‖₂ (the statistic of their detector, at the state every
sample starts from), and every row whose caption has d > ``threshold`` is dropped from the rest of the run (drops are
permanent). The reference code instead tests each sample of each batch at its training x_t and drops it from that
step's loss only (``hard_threshold`` 2 on SD 1.4 latents); magnitudes are model-specific, so the threshold of a
model must be calibrated on it (``caption_magnitudes`` gives the scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffmem.mitigations.base import TrainingMitigation, register
from diffmem.mitigations.pruning import trainable
from diffmem.mitigations.retraining import recipe, retrain
from diffmem.subject import Subject, TrainingSet
from diffmem.types import Cond

__all__ = ["caption_magnitudes", "filter_rows", "MagnitudeFilter"]


@torch.no_grad()
def caption_magnitudes(subject: Subject, net: nn.Module, training: TrainingSet, *, n_seeds: int = 4,
                       seed: int = 0, batch_size: int = 512) -> Tensor:
    """First-step ‖ε_c − ε_u‖₂ [R] of every row's caption under ``net`` (a network of ``subject``'s kind), the mean
    over ``n_seeds`` x_T draws shared by all captions. Rows with equal captions get equal values."""
    if subject.rebind is None:
        raise ValueError(f"subject {subject.name!r} cannot wrap a network (no rebind)")
    captions, inverse = torch.unique(training.cond, dim=0, return_inverse=True)
    module, denoiser = trainable(subject, net), subject.rebind(net)
    t0 = subject.grid.timesteps[0]
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((n_seeds, *subject.state_shape), generator=g).to(subject.dtype) * subject.x_T_scale
    null = module.condition(training.null[None])
    out = torch.zeros(len(captions), dtype=torch.float64)
    per = max(1, batch_size // n_seeds)
    for i in range(0, len(captions), per):
        ids = captions[i:i + per]
        rep = ids.repeat_interleave(n_seeds, dim=0)
        c = module.condition(rep)
        nc = {k: v.expand(len(rep), *v.shape[1:]) for k, v in null.items()} if isinstance(null, dict) else \
            null.expand(len(rep), *null.shape[1:])
        x = x_T.repeat(len(ids), *[1] * len(subject.state_shape))
        pred = denoiser(x, t0, Cond(c, nc))
        d = (pred.eps_c.double() - pred.eps_u.double()).flatten(1).norm(dim=1)
        out[i:i + len(ids)] = d.view(len(ids), n_seeds).mean(1)
    return out[inverse]


def filter_rows(training: TrainingSet, magnitudes: Tensor, threshold: float) -> tuple[TrainingSet, Tensor]:
    """(the rows with magnitude ≤ ``threshold``, bool [R] kept)."""
    keep = magnitudes <= threshold
    if not bool(keep.any()):
        raise ValueError(f"threshold {threshold!r} drops every training row (smallest magnitude "
                         f"{float(magnitudes.min()):.4g}); raise it")
    return TrainingSet(training.images, training.rows[keep], training.cond[keep], training.null), keep


@register
@dataclass(frozen=True)
class MagnitudeFilter(TrainingMitigation):
    """Wen et al. (ICLR 2024): retrain, dropping rows whose caption's first-step ‖ε_c − ε_u‖ exceeds ``threshold``,
    checked every ``every`` steps (module docstring).

    Attributes:
        threshold: the magnitude above which a caption's rows are dropped (model-specific: the default and grid are
            on the scale of the embedded digits worlds; calibrate with :func:`caption_magnitudes` elsewhere).
        every: steps between checks; n_seeds: x_T draws per caption; seed: their seed.
    """

    name = "magnitude-filter"
    citation = ("Wen et al., Detecting, Explaining, and Mitigating Memorization in Diffusion Models, ICLR 2024")
    knob = "threshold"
    # digits-t2i's shipped model: planted captions 0.30–0.44, the others 0.15–0.35 (4 x_T draws); SD 1.4 uses 2
    grid = (0.3, 0.35, 0.4, 0.45)

    threshold: float = 0.35
    every: int = 250
    n_seeds: int = 4
    seed: int = 0

    def train(self, subject: Subject, *, cfg=None, init: str = "scratch", state_dir=None, progress: bool = False,
              **overrides) -> Subject:
        """Retrain ``subject``'s network with the filter (world initialization and recipe by default)."""
        if subject.training is None:
            raise ValueError(f"subject {subject.name!r} has no training rows to retrain on")
        history: list[dict] = []

        def check(step: int, net: nn.Module, training: TrainingSet) -> TrainingSet:
            mags = caption_magnitudes(subject, net, training, n_seeds=self.n_seeds, seed=self.seed)
            kept, keep = filter_rows(training, mags, self.threshold)
            history.append({"step": step, "dropped": int((~keep).sum()), "rows": len(kept.rows),
                            "max_magnitude": float(mags.max())})
            return kept

        return retrain(subject, subject.training, recipe(subject, cfg, **overrides), init=init, every=self.every,
                       check=check, state_dir=state_dir, progress=progress, name=self.name,
                       info={"mitigation": self.describe(), "history": history})

"""Ours (not in Ye et al., 2025): choose the heads to prune by their measured contribution to *copies*.

Algorithm 1 ranks heads by how much the training loss needs them and removes the least needed — which keeps the
heads that fit the training images best, memorizing ones included. Here each self-attention head is instead
switched off alone (ξ_h = 0, a scoped gate of :mod:`diffmem.attention`) while the model generates a scoring batch,
and scored by how much that raises the mean nearest-neighbour ratio of the samples (the quantity the 1/3 copy rule
thresholds):

    S(h) = mean_i r(x0_i | ξ_h = 0) − mean_i r(x0_i),   r = d(nearest training image) / d(second nearest)

The ⌊η·H⌋ heads of largest S(h) are removed (then fine-tuned like every other method). The scoring batch uses
seeds far from the evaluation seeds (``SCORING_SEED``), so the heads are not chosen on the samples that are
later counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.attention import Head, attention
from diffmem.mitigations.head_pruning import prune_count
from diffmem.mitigations.pruning import generate
from diffmem.similarity.criteria import COPY_RATIO, nn_ratio
from diffmem.subject import Subject

__all__ = ["SCORING_SEED", "CopyAblation", "copy_ablation"]

SCORING_SEED = 10**6  # scoring batches use seeds SCORING_SEED + run·n + i, disjoint from evaluation (< 10^6)


@dataclass(frozen=True)
class CopyAblation:
    """Heads to remove (largest S(h) first), every S(h) per layer, and the baseline of the scoring batch."""

    heads: list[Head]
    scores: dict[str, list[float]]
    baseline_ratio: float
    baseline_copy_rate: float


def _ratios(subject: Subject, references: Tensor, n_samples: int, seed: int, steps: int,
            head_masks: Mapping[str, Tensor]) -> Tensor:
    """Nearest-neighbour ratios [n] of ``n_samples`` samples (seeds ``seed`` …) generated with ``head_masks``."""
    with attention(subject).hooks(head_masks=head_masks):
        x0 = generate(subject, n_samples, seed=seed, steps=steps)
    return nn_ratio(x0.flatten(1), references.flatten(1))[0]


@torch.no_grad()
def copy_ablation(subject: Subject, references: Tensor, ratio: float = 0.2, *, n_samples: int = 128, seed: int = 0,
                  steps: int = 50) -> CopyAblation:
    """Score every self-attention head of ``subject.net`` by single-head ablation (module docstring) against the
    training images ``references`` (pixels, as generated) and pick the ⌊η·H⌋ whose removal breaks copies most.
    The model is left unchanged."""
    att = attention(subject)
    if any(bool((m.head_mask != 1).any()) for m in att.modules.values() if hasattr(m, "head_mask")):
        raise ValueError("copy_ablation needs an unpruned net (every head gate 1)")
    first = SCORING_SEED + seed * n_samples
    base = _ratios(subject, references, n_samples, first, steps, {})
    scores: dict[str, list[float]] = {}
    for name, gates in att.gates(requires_grad=False).items():
        scores[name] = []
        for h in range(len(gates)):
            off = gates.clone()
            off[h] = 0
            ratios = _ratios(subject, references, n_samples, first, steps, {name: off})
            scores[name].append(float(ratios.mean() - base.mean()))
    ranked = sorted(((s, Head(name, h)) for name, v in scores.items() for h, s in enumerate(v)),
                    key=lambda item: -item[0])  # stable: ties keep layer then head order
    k = prune_count(len(ranked), ratio)
    return CopyAblation([head for _, head in ranked[:k]], scores, float(base.mean()),
                        float((base <= COPY_RATIO).double().mean()))

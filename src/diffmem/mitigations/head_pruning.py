"""Head importance and selection of Ye et al. (2025, Algorithms 1-2; Michel et al., 2019), on any attention backend.

Every self-attention head h gets a gate ξ_h that scales its output o_h before the shared output projection
(:meth:`diffmem.attention.AttentionModel.gates`, installed by its hooks only while scoring). Algorithm 2 scores a
head by S(h) = Σ_batches |∂L/∂ξ_h| at ξ = 1, with L the ε-prediction loss at t ~ Beta(0.8, 2) (see
:mod:`diffmem.mitigations.time_law`), and normalizes per layer: I(h) = S(h) / sqrt(Σ_{h' ∈ layer(h)} S(h')²).
Algorithm 1 ranks all heads of all layers by I(h) and removes the ⌊η·H⌋ least important (η = 0.2).
By the chain rule ∂L/∂ξ_h = ⟨∂L/∂o_h, o_h⟩ at ξ_h = 1. Only the gates are differentiated: no parameter ``.grad``
is touched, and the model is bitwise unchanged while gated at ξ = 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from fractions import Fraction

import numpy as np
import torch
from torch import Tensor

from diffmem.attention import AttentionModel, Head

__all__ = ["Head", "head_gradients", "accumulate_scores", "normalize_per_layer", "rank_heads", "prune_count",
           "lowest_heads", "random_heads"]


def _gradients(loss: Callable[[], Tensor], gates: Mapping[str, Tensor]) -> dict[str, Tensor]:
    with torch.enable_grad():
        grads = torch.autograd.grad(loss(), list(gates.values()), allow_unused=True)
    return {name: torch.zeros_like(g0) if g is None else g.detach()
            for (name, g0), g in zip(gates.items(), grads, strict=True)}


def head_gradients(loss: Callable[[], Tensor], att: AttentionModel, which="self") -> dict[str, Tensor]:
    """∂L/∂ξ_h [H_l] per selected layer for one evaluation of ``loss()`` with gates ξ = 1 installed."""
    gates = att.gates(which)
    with att.hooks(head_masks=gates):
        return _gradients(loss, gates)


def accumulate_scores(batch_loss: Callable[[int], Tensor], att: AttentionModel, num_batches: int,
                      which="self") -> dict[str, Tensor]:
    """S(h) = Σ_{b < num_batches} |∂L_b/∂ξ_h| (abs per batch, Algorithm 2) with L_b = ``batch_loss(b)``, float64."""
    if num_batches < 1:
        raise ValueError(f"num_batches must be >= 1, got {num_batches}")
    gates = att.gates(which)
    scores = {name: torch.zeros(len(g), dtype=torch.float64) for name, g in gates.items()}
    with att.hooks(head_masks=gates):
        for b in range(num_batches):
            for name, g in _gradients(lambda b=b: batch_loss(b), gates).items():
                scores[name] += g.double().abs().cpu()
    return scores


def normalize_per_layer(scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """I(h) = S(h) / ‖S(layer(h))‖₂, so Σ_{h ∈ layer} I(h)² = 1; a layer whose scores are all 0 stays 0
    (its heads then rank first, which is what an all-zero gradient says about them)."""
    out = {}
    for name, s in scores.items():
        if torch.any(s < 0) or not torch.all(torch.isfinite(s)):
            raise ValueError(f"scores of layer {name!r} must be finite and >= 0, got {s.tolist()}")
        norm = torch.linalg.vector_norm(s)
        out[name] = s / norm if norm > 0 else torch.zeros_like(s)
    return out


def rank_heads(importance: Mapping[str, Tensor]) -> list[Head]:
    """All heads, least important first (global ranking across layers); ties keep layer then head order."""
    heads = [Head(name, h) for name, v in importance.items() for h in range(len(v))]
    values = [float(importance[head.layer][head.index]) for head in heads]
    return [heads[i] for i in sorted(range(len(heads)), key=values.__getitem__)]  # sorted() is stable


def prune_count(total_heads: int, ratio: float) -> int:
    """⌊η·H⌋, computed on the decimal value of η so 0.29 · 100 gives 29, not 28 (binary rounding)."""
    if not 0 <= ratio < 1:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio!r}")
    return math.floor(Fraction(repr(float(ratio))) * total_heads)


def lowest_heads(importance: Mapping[str, Tensor], ratio: float = 0.2) -> list[Head]:
    """Algorithm 1 step 2: the ⌊η·H⌋ heads of lowest I(h) over all layers."""
    ranked = rank_heads(importance)
    return ranked[:prune_count(len(ranked), ratio)]


def random_heads(counts: Mapping[str, int], ratio: float = 0.2, seed: int = 0) -> list[Head]:
    """The random-pruning baseline of Ye et al. (Table 1): ⌊η·H⌋ heads drawn uniformly without replacement
    (``counts``: heads per layer, e.g. :meth:`~diffmem.attention.AttentionModel.head_counts`)."""
    heads = [Head(name, h) for name, n in counts.items() for h in range(n)]
    pick = np.random.default_rng(seed).choice(len(heads), size=prune_count(len(heads), ratio), replace=False)
    return sorted(heads[i] for i in pick)

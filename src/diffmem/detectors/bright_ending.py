"""Bright-ending masked magnitude (Chen et al., ICLR 2025): Wen's magnitude inside the end token's attention map.

At the *last* step, the image regions that reproduce training content attend far more to the end token (the first
token after the prompt). Its cross-attention map m — conditional branch, averaged over heads and the chosen layers, at
the state's resolution — localises them, and BE = (1/T) Σ_t ‖d_t ∘ m‖₂ / mean(m), d_t = ε_c − ε_u over the whole
trajectory (m broadcast over channels, renormalized by its mean so that a uniform m gives Wen's all-step magnitude).
m is known only at the end, so the per-step difference maps are kept by a hook of the same run (no second run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.detectors.base import PerGeneration, register
from diffmem.detectors.cross_attention import cross_layers, end_token_index, record_cross_attention, spatial_map
from diffmem.subject import Prompt, Subject

__all__ = ["BrightEnding", "bright_ending", "end_token_map"]


def _over_heads(p: Tensor) -> Tensor:
    return p.mean(dim=1)  # [batch, heads, Q, K] -> [batch, Q, K]


def end_token_map(per_layer: dict[str, Tensor], end: Tensor, state_shape: Sequence[int]) -> Tensor:
    """m [B, H, W]: the last recorded step's attention to each row's end token ``end`` [B], per layer at the state's
    resolution, averaged over layers."""
    maps = []
    for probs in per_layer.values():  # [steps, B, Q, K]
        last = probs[-1].double()
        col = last.gather(-1, end.view(-1, 1, 1).expand(-1, last.shape[1], 1))[..., 0]  # [B, Q]
        maps.append(spatial_map(col, state_shape))
    return torch.stack(maps).mean(0)


def bright_ending(d: Tensor, m: Tensor) -> Tensor:
    """BE [B] = (1/T) Σ_t ‖d_t ∘ m‖₂ / mean(m) from difference maps d [T, B, *state] and masks m [B, H, W] over the
    state's last two dims."""
    m = m.to(torch.promote_types(m.dtype, d.dtype))
    mean = m.flatten(1).mean(1)
    if not bool((mean > 0).all()):
        raise ValueError("the end-token map is zero everywhere; choose layers or an end_index that the model attends")
    masked = d * m.view(1, m.shape[0], *[1] * (d.ndim - 4), *m.shape[1:])
    return masked.flatten(2).norm(dim=2).mean(0) / mean


@register
@dataclass(frozen=True)
class BrightEnding(PerGeneration):
    """Bright-ending masked magnitude (Chen et al., ICLR 2025): end-token attention map at the last step masks d_t.

    Attributes:
        layers: cross-attention layers averaged into m, by qualified name or position in module order (Chen: the
            first two down-sampling layers, positions 0 and 1 in SD; a model with fewer uses its last).
        end_index: position of the end token (None: from the conditioning mask or the tokenizer: the first EOS).
        guidance, steps: the trajectory (every step is run: 2T NFE).
    """

    name = "chen-be"
    citation = "Chen et al., Exploring Local Memorization in Diffusion Models via Bright Ending Attention, ICLR 2025"
    higher_is_memorized = True
    needs = frozenset({"attention", "trajectory"})
    layers: tuple[int | str, ...] = (0, 1)
    end_index: int | None = None
    guidance: float = 7.5
    steps: int | None = None

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        layers = cross_layers(subject, self.layers)
        ends = [end_token_index(subject, p, self.end_index) for p in prompts]

        def statistic(cond, batch_seeds, index):
            per_layer, hook = record_cross_attention(subject, cond, batch_seeds, layers, reduce=_over_heads,
                                                     keep=lambda i, n: i == n - 1, guidance=self.guidance,
                                                     steps=self.steps or subject.steps, differences=True)
            m = end_token_map(per_layer, torch.tensor([ends[i] for i in index]), subject.state_shape)
            return bright_ending(torch.stack(hook.d).double(), m)

        return self.over_batches(subject, prompts, seeds, statistic, with_index=True)

"""Cross-attention entropy (Ren et al., ECCV 2024): memorized prompts spread the first step's attention over tokens.

Per step, the conditional branch's cross-attention probabilities are averaged over heads, queries and the chosen
layers into one distribution ā over the prompt's token positions; E_t = −Σ_i ā_i log ā_i. Two statistics, as the
reference code (``renjie3/MemAttn`` ``detect.py``) computes them:

* **LE** (mode "E"): E_0 at the first step from one layer — the reference's layer index 3 in its attention-store
  order, which is the fourth cross-attention layer in module order (SD's ``down_blocks.1.attentions.1``); 2 NFE.
* **AE** (mode "D"): the mean of E_t over the last T/5 steps, plus the mean over those steps of E_t^sum − E_0^sum,
  E^sum = −Σ_{i ≥ end} ā_i log ā_i over the summary tokens (end token and padding) of the *same* ā (not
  renormalized, no absolute value: the reference code, where Jeon et al. write |·|); every layer; 2T NFE.

Direction: higher = memorized for both, as the reference code scores its memorized set with the raw statistic. Not
confirmed on digits-t2i: there the planted captions are shorter (6 tokens against 7–8) and E ≤ log L, so LE and AE
rank every planted prompt *below* every negative (AUC 0.0, 20 planted vs 20 non-planted, n = 4, 20 steps); on the two
negatives of planted length LE gives 0.43 and AE 0.65 — no sign is established there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.attention import attention
from diffmem.detectors.base import PerGeneration, register
from diffmem.detectors.cross_attention import cross_layers, end_token_index, entropy, record_cross_attention
from diffmem.subject import Prompt, Subject

__all__ = ["AttentionEntropyLE", "AttentionEntropyAE", "token_distribution", "ae_statistic"]


def _heads_and_queries(p: Tensor) -> Tensor:
    return p.mean(dim=(1, 2))  # [batch, heads, Q, K] -> [batch, K]


def token_distribution(per_layer: dict[str, Tensor]) -> Tensor:
    """ā [steps, B, K]: the recorded [steps, B, K] per-layer distributions averaged over layers."""
    return torch.stack(list(per_layer.values())).double().mean(0)


def ae_statistic(a: Tensor, window: Sequence[int], end: Tensor) -> Tensor:
    """AE [B] from ā [steps, B, K] whose row 0 is step 0 and rows ``window`` the last T/5 steps; ``end`` [B] is each
    row's first summary position."""
    K = a.shape[-1]
    summary = (torch.arange(K)[None, :] >= end[:, None]).to(a.dtype)  # [B, K]
    e_sum = entropy(a * summary)  # 0 log 0 = 0 outside the summary tokens
    w = list(window)
    return entropy(a[w]).mean(0) + (e_sum[w].mean(0) - e_sum[0])


@register
@dataclass(frozen=True)
class AttentionEntropyLE(PerGeneration):
    """Cross-attention entropy (Ren et al., ECCV 2024), LE: token entropy of one layer's attention at the first step.

    Attributes:
        layer: the layer, by qualified name or position among the cross-attention layers in module order (the
            reference's index 3; a model with fewer uses its last).
        guidance: CFG weight of the run (only step 0 is evaluated, so it does not change the score);
        steps: grid length (None: the subject's default).
    """

    name = "ren-le"
    citation = "Ren et al., Unveiling and Mitigating Memorization in Text-to-Image Diffusion Models through Cross " \
               "Attention, ECCV 2024"
    higher_is_memorized = True
    needs = frozenset({"attention"})
    layer: int | str = 3
    guidance: float = 7.5
    steps: int | None = None

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        layers = cross_layers(subject, [self.layer])

        def statistic(cond, batch_seeds):
            per_layer, _ = record_cross_attention(subject, cond, batch_seeds, layers, reduce=_heads_and_queries,
                                                  keep=lambda i, n: i == 0, guidance=self.guidance,
                                                  steps=self.steps or subject.steps, first=1)
            return entropy(token_distribution(per_layer)[0])

        return self.over_batches(subject, prompts, seeds, statistic)


@register
@dataclass(frozen=True)
class AttentionEntropyAE(PerGeneration):
    """Cross-attention entropy (Ren et al., ECCV 2024), AE: late-step token entropy plus the summary tokens' change.

    Attributes:
        layers: None = every cross-attention layer (the reference), or names / positions in module order.
        end_index: position of the end token (None: from the conditioning mask or the tokenizer).
        guidance, steps: the trajectory (its last max(1, T // 5) steps are averaged).
    """

    name = "ren-ae"
    citation = AttentionEntropyLE.citation
    higher_is_memorized = True
    needs = frozenset({"attention", "trajectory"})
    layers: tuple[int | str, ...] | None = None
    end_index: int | None = None
    guidance: float = 7.5
    steps: int | None = None

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        layers = cross_layers(subject, range(len(attention(subject).select("cross"))) if self.layers is None
                              else self.layers)
        T = self.steps or subject.steps
        start = T - max(1, T // 5)
        ends = [end_token_index(subject, p, self.end_index) for p in prompts]

        def statistic(cond, batch_seeds, index):
            per_layer, hook = record_cross_attention(subject, cond, batch_seeds, layers, reduce=_heads_and_queries,
                                                     keep=lambda i, n: i == 0 or i >= start,
                                                     guidance=self.guidance, steps=T)
            window = [k for k, i in enumerate(hook.kept) if i >= start]
            return ae_statistic(token_distribution(per_layer), window, torch.tensor([ends[i] for i in index]))

        return self.over_batches(subject, prompts, seeds, statistic, with_index=True)

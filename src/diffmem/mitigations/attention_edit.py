"""Cross-attention re-scaling and token masking (Ren et al., ECCV 2024): move attention onto the BOS sink.

Inside every cross-attention layer, at every step (the reference's 30-step cutoff is commented out):

1. **mask**: keys after the prompt's first ``prompt_length`` positions (BOS, the prompt's tokens, the first EOS)
   are removed, in both CFG branches alike (the padding/summary tokens of CLIP);
2. **re-scale**: in the conditional branch only, the pre-softmax logit of key 0 (BOS) is *multiplied* by C
   (the reference behaviour; not adding log C).

Both act through the attention interface's logit edit: the model batch is [ε_u rows; ε_c rows] on guided steps and
the ε_c rows alone when the weight is 1, so a per-row mask of fixed batch cannot serve both. World prompts already
mask their padding (``cond.c["mask"]``, whose count is ``prompt_length``), so there the mask changes nothing;
Stable Diffusion attends to all 77 positions and the lengths come from its tokenizer. C = 1 with nothing masked is
plain sampling (bitwise on the world DiT). Cost: none beyond the softmax over edited logits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.attention import attention
from diffmem.mitigations.base import InferenceMitigation, register
from diffmem.mitigations.first_step import embedding, prompt_texts, sample_with
from diffmem.sampling.trajectory import Trajectory
from diffmem.subject import Subject
from diffmem.types import Cond

__all__ = ["RenAttention", "prompt_lengths", "ren_logit_edit"]

REN = ("Ren, Li, Hu, Zhang, Cui, Tang & Xu (Ren et al.), Unveiling and Mitigating Memorization in Text-to-image "
       "Diffusion Models through Cross Attention, ECCV 2024")


def prompt_lengths(subject: Subject, cond: Cond, texts: Sequence[str] | None = None) -> Tensor:
    """Unpadded token count per row (BOS … first EOS): the conditioning's mask where it has one, else the
    tokenizer of the subject's pipeline on the rows' texts."""
    if isinstance(cond.c, Mapping) and "mask" in cond.c:
        return cond.c["mask"].bool().sum(1).cpu()
    tok = getattr(getattr(subject.denoiser, "pipeline", None), "tokenizer", None)
    if tok is None:
        raise ValueError(f"subject {subject.name!r} has neither a token mask nor a tokenizer to count prompt tokens")
    texts = prompt_texts(subject, cond, texts)
    ids = tok(list(texts), truncation=True, max_length=tok.model_max_length).input_ids
    return torch.tensor([len(i) for i in ids])


def ren_logit_edit(keep: Tensor, scale: float):
    """``(logits [b, H, Q, K], layer) -> logits``: keys outside ``keep`` [B, K] to −∞ in both branches, the BOS
    logit of the conditional rows times ``scale`` (b = 2B under CFG, [ε_u; ε_c]; b = B unguided)."""
    B = keep.shape[0]

    def edit(logits: Tensor, layer: str) -> Tensor:
        b = logits.shape[0]
        if b not in (B, 2 * B):
            raise ValueError(f"layer {layer!r}: model batch {b} is neither {B} nor {2 * B} rows")
        rows = keep if b == B else torch.cat([keep, keep])
        out = logits.masked_fill(~rows.to(logits.device)[:, None, None, :], float("-inf"))
        out[b - B:, :, :, 0] = out[b - B:, :, :, 0] * scale  # conditional rows only
        return out

    return edit


@register
@dataclass(frozen=True)
class RenAttention(InferenceMitigation):
    """Cross-attention BOS logit re-scaling and padding masking (Ren et al., ECCV 2024).

    Attributes:
        bos_logit_scale: C multiplying the BOS logit of the conditional branch (reference 1.25; MemBench 1.1).
        mask: remove the keys after each prompt's first EOS.
    """

    name = "ren-attention"
    citation = REN
    knob = "bos_logit_scale"
    grid = (1.15, 1.2, 1.25, 1.3, 1.35)  # Han et al.'s sweep
    bos_logit_scale: float = 1.25
    mask: bool = True

    def hooks(self, subject: Subject, cond: Cond, texts: Sequence[str] | None = None):
        """The attention hooks of this remedy for a run on ``cond``."""
        att = attention(subject.net)
        layers = att.select("cross")
        if not layers:
            raise ValueError(f"subject {subject.name!r} has no cross-attention layers to edit")
        K = int(embedding(cond.c).shape[1])
        keep = torch.ones(cond.batch_size, K, dtype=torch.bool)
        if self.mask:
            keep = torch.arange(K)[None] < prompt_lengths(subject, cond, texts)[:, None]
        edit = ren_logit_edit(keep, self.bos_logit_scale)
        return att.hooks(logit_edits={n: edit for n in layers})

    def sample(self, subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, texts: Sequence[str] | None = None, **kwargs) -> Trajectory:
        return sample_with(subject, cond, seeds, guidance=guidance, steps=steps, kwargs=kwargs,
                           hooks=[self.hooks(subject, cond, texts)])


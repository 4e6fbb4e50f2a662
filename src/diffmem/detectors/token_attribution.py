"""Token attribution (Wen et al., ICLR 2024): which prompt tokens drive the noise difference ε_c − ε_u.

At the states entering the first k steps of the guided trajectory, L = Σ_gen ‖ε_c(x_t, e_p) − ε_u(x_t, e_∅)‖₂ is
backpropagated to the text-encoder *output* e_p (the conditioning the denoiser sees: ``c["emb"]`` [B, L, D] in the
embedded worlds, ``c["embeds"]`` for PixArt, the [B, 77, D] tensor for Stable Diffusion). Token i scores
a_i = mean over steps and generations of ‖∂L/∂e_p[i]‖₂ (norm over the embedding dimension). Wen's notebook takes all
50 steps and the norm over a batch of generations; we take per-generation norms, so the score does not depend on how
generations are batched.

A token whose embedding does not reach the model (masked out of cross-attention) scores exactly 0. The reported
tokens are the conditioning mask's positions without the leading and trailing special tokens (BOS and EOS in CLIP and
the worlds' tokenizer; ``special=(0, 1)`` for T5's EOS-only captions); Stable Diffusion passes no mask, so its caller
names the positions (``real``). Cost: per step 2 rows through the denoiser plus one backward to e_p (x_t carries no
gradient), after the 2(k − 1) NFE of the trajectory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.detectors.base import eps_difference
from diffmem.detectors.probes import guided_states, upcast
from diffmem.subject import Prompt, Subject
from diffmem.types import Cond

__all__ = ["TokenAttribution", "token_attribution", "EMBEDDING_KEYS"]

# where a mapping conditioning keeps the text-encoder output e_p (worlds, PixArt)
EMBEDDING_KEYS = ("emb", "embeds")


@dataclass(frozen=True)
class TokenAttribution:
    """Per-position attributions of one prompt.

    Attributes:
        positions: [L] mean ‖∂L/∂e_p[i]‖₂ at every position of the conditioning (padding included).
        real: [L] bool, the prompt's own tokens (special tokens and padding excluded).
    """

    positions: Tensor
    real: Tensor

    @property
    def scores(self) -> Tensor:
        """One score per real token, in prompt order."""
        return self.positions[self.real]


def _embedding_key(c) -> str | None:
    if isinstance(c, Tensor):
        return None
    if isinstance(c, Mapping):
        for key in EMBEDDING_KEYS:
            if key in c:
                return key
    raise ValueError(f"token attribution needs text-encoder outputs [B, L, D] (a tensor or a mapping with one of "
                     f"{EMBEDDING_KEYS}); got {type(c).__name__} {list(c) if isinstance(c, Mapping) else ''}")


def _real_tokens(c, special: tuple[int, int]) -> Tensor:
    if not isinstance(c, Mapping) or "mask" not in c:
        raise ValueError("this conditioning carries no token mask: pass real=[L] bool, the prompt's own positions")
    mask = c["mask"][0].bool().cpu()
    marked = mask.nonzero().flatten()
    lead, trail = special
    real = torch.zeros_like(mask)
    real[marked[lead:len(marked) - trail]] = True
    return real


def token_attribution(subject: Subject, prompt: Prompt, seeds: Sequence[int], *, k: int = 1, guidance: float = 7.5,
                      steps: int | None = None, real: Tensor | None = None,
                      special: tuple[int, int] = (1, 1)) -> TokenAttribution:
    """Token attribution (Wen et al., ICLR 2024) of ``prompt`` over the generations ``seeds`` and the first k steps.

    Args:
        k: probed states: those entering steps 0 … k − 1 of the guided trajectory (Wen's notebook: every step).
        guidance: CFG weight w of that trajectory; steps: grid length (None: the subject's default).
        real: [L] bool positions to report (default: the conditioning mask without ``special`` = (leading,
            trailing) special tokens).
    """
    cond = subject.cond([prompt] * len(seeds))
    key = _embedding_key(cond.c)
    e_p = (cond.c if key is None else cond.c[key]).detach()
    real = _real_tokens(prompt.cond.c, special) if real is None else torch.as_tensor(real, dtype=torch.bool).cpu()
    if real.shape != e_p.shape[1:2]:
        raise ValueError(f"real must have shape [{e_p.shape[1]}] (one flag per position), got {tuple(real.shape)}")
    states, ts, _ = guided_states(subject, cond, seeds, k, guidance=guidance, steps=steps)
    total = torch.zeros(e_p.shape[1], dtype=torch.float64)
    for x_t, t in zip(states, ts, strict=True):
        leaf = e_p.clone().requires_grad_()
        c = leaf if key is None else {**cond.c, key: leaf}
        with torch.enable_grad():
            pred = subject.denoiser(x_t.detach(), t, Cond(c, cond.null))
            loss = eps_difference(pred.eps_c, pred.eps_u).flatten(1).norm(dim=1).sum()
            (grad,) = torch.autograd.grad(loss, leaf)
        total += upcast(grad).norm(dim=-1).double().mean(0).cpu()
    return TokenAttribution(total / len(states), real)

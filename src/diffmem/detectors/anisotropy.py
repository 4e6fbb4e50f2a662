"""Anisotropy: norm + cosine (Asthana & Belagiannis, ICLR 2026): M = γ_norm·N + γ_cos·C on x_T, 4 NFE, no denoising.

Both terms are read on the same pure-noise state x_T:

* N = ‖ε_c − ε_u‖₂ at t_hi, the first grid timestep (Wen et al.'s first-step magnitude, the isotropic regime);
* C at t_lo = ``timesteps[cos_step]`` (default −3, the paper's t = 41 of 50 DDIM steps): the model is told the noise
  is low while its input is still pure noise (the timestep-mismatch trick). C is the per-position, channel-wise cosine
  between ε_u and ε_c − ε_u (at each position the C-vectors of the two maps), averaged over positions. Memorized
  prompts align the guidance direction with the unconditional score in this anisotropic regime (their Theorem 1).

M = γ_norm·N + γ_cos·C on raw, unstandardized terms (paper: (1, 1) works; its scripts use (1, 2) on SD1, (1, 0.1) on
SD2). A cosine of the flattened maps is a different statistic and is not offered.

**One-channel states** (the 8×8 and 16×16 pixel worlds): the channel vector at a position is a scalar, so its cosine
is only the sign of a product. ``patch`` then compares the channel × patch × patch neighbourhood vectors
(zero-padded at the border); by default 3 on one-channel states and 1 (the paper's statistic) otherwise. A state with
no spatial axes ([D]) is one vector: its cosine is taken whole.

Cost: one batched denoiser call on [x_T at t_hi; x_T at t_lo] × both CFG branches = 4 NFE per generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffmem.detectors.base import PerGeneration, eps_difference, register
from diffmem.detectors.probes import initial_states, upcast
from diffmem.subject import Prompt, Subject
from diffmem.types import Cond, concat_cond

__all__ = ["Anisotropy", "local_cosine", "COSINE_MODES"]

# which pair the cosine compares: (ε_u, ε_c − ε_u) is the paper's default
COSINE_MODES = ("u,d", "u,c", "c,d")


def local_cosine(a: Tensor, b: Tensor, patch: int = 1) -> Tensor:
    """Mean over positions of the cosine between the local vectors of ``a`` and ``b`` [B, C, *spatial] → [B].

    The local vector at a position is the C channel values there (``patch`` = 1) or the C × patch × patch values of
    the zero-padded neighbourhood centred on it (2-D states; 1-D states use a patch-long window). A zero vector has
    cosine 0. States [B, D] without spatial axes give the cosine of the whole vectors.

    Example:
        >>> a = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # [1, 2 channels, 1, 2]
        >>> local_cosine(a, a.flip(1)).tolist()  # position 0: (1, 0)·(0, 1); position 1: (0, 1)·(1, 0)
        [0.0]
    """
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"need two maps of one shape [B, C, ...], got {tuple(a.shape)} and {tuple(b.shape)}")
    if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch must be an odd int >= 1, got {patch!r}")
    a, b = upcast(a), upcast(b)
    if patch > 1 and a.ndim > 2:
        if a.ndim == 3:
            a, b = a[:, :, None], b[:, :, None]
        if a.ndim != 4:
            raise ValueError(f"patch > 1 needs states with 1 or 2 spatial axes, got shape {tuple(a.shape[1:])}")
        kernel = (1 if a.shape[2] == 1 else patch, patch)
        padding = (kernel[0] // 2, kernel[1] // 2)
        a, b = F.unfold(a, kernel, padding=padding), F.unfold(b, kernel, padding=padding)  # [B, C·k·k, positions]
    cos = F.cosine_similarity(a, b, dim=1, eps=torch.finfo(a.dtype).tiny ** 0.5)
    return cos.reshape(cos.shape[0], -1).mean(1)


@register
@dataclass(frozen=True)
class Anisotropy(PerGeneration):
    """Anisotropy: norm + cosine (Asthana & Belagiannis, ICLR 2026): γ_norm·‖ε_c − ε_u‖(t_hi) + γ_cos·C(t_lo).

    Attributes:
        gamma_norm, gamma_cos: weights of the raw norm and cosine terms (paper: (1, 1) works).
        mode: the cosine's pair: ``"u,d"`` cos(ε_u, ε_c − ε_u) (paper), ``"u,c"`` cos(ε_u, ε_c), ``"c,d"``
            cos(ε_c, ε_c − ε_u).
        cos_step: grid index of t_lo (−3: the paper's t = 41 of 50 DDIM steps).
        patch: local-vector patch side (None: 3 on one-channel states, else 1 = the paper's per-pixel channel
            vectors).
        steps: grid length (None: the subject's default).
    """

    name = "asthana-anisotropy"
    citation = ("Asthana & Belagiannis, Detecting and Mitigating Memorization in Diffusion Models through "
                "Anisotropy of the Log-Probability, ICLR 2026")
    higher_is_memorized = True
    needs = frozenset()
    gamma_norm: float = 1.0
    gamma_cos: float = 1.0
    mode: str = "u,d"
    cos_step: int = -3
    patch: int | None = None
    steps: int | None = None

    def __post_init__(self):
        if self.mode not in COSINE_MODES:
            raise ValueError(f"unknown cosine mode {self.mode!r}; expected one of {COSINE_MODES}")

    def patch_for(self, state_shape: Sequence[int]) -> int:
        """The patch side used on states of ``state_shape`` (channels first)."""
        if self.patch is not None:
            return self.patch
        return 3 if len(state_shape) >= 2 and state_shape[0] == 1 else 1

    def terms(self, subject: Subject, cond: Cond, seeds: Sequence[int]) -> tuple[Tensor, Tensor]:
        """(N, C) per generation [B] of one batch: both timesteps in one denoiser call on the same x_T."""
        grid = subject.sampler(self.steps or subject.steps).grid
        t_hi, t_lo = grid.timesteps[0], grid.timesteps[self.cos_step]
        x_T = initial_states(subject, seeds, self.steps)
        B = x_T.shape[0]
        t = torch.cat([t_hi.expand(B), t_lo.expand(B)]).to(x_T.device)
        both = Cond(concat_cond(cond.c, cond.c), None if cond.null is None else concat_cond(cond.null, cond.null))
        with torch.no_grad():
            pred = subject.denoiser(torch.cat([x_T, x_T]), t, both)
        if pred.eps_u is None:
            raise ValueError(f"{self.name} needs the null branch (ε_u) of every prompt's conditioning")
        d = eps_difference(pred.eps_c, pred.eps_u)
        eps_u, eps_c = upcast(pred.eps_u[B:]), upcast(pred.eps_c[B:])
        pair = {"u,d": (eps_u, d[B:]), "u,c": (eps_u, eps_c), "c,d": (eps_c, d[B:])}[self.mode]
        return d[:B].flatten(1).norm(dim=1), local_cosine(*pair, patch=self.patch_for(subject.state_shape))

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        def combined(cond: Cond, batch_seeds: list[int]) -> Tensor:
            norm, cos = self.terms(subject, cond, batch_seeds)
            return self.gamma_norm * norm.double() + self.gamma_cos * cos.double()

        return self.over_batches(subject, prompts, seeds, combined)

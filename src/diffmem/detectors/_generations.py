"""Shared plumbing of the cross-generation and image-based detectors (NeMo, Carlini, Webster, Kim, complexity).

A cross-generation statistic (:class:`~diffmem.detectors.base.CrossGeneration`) needs every generation of a prompt at
once; :func:`run_generations` builds the prompt-major batch (row i·n + j = prompt i, seed j) and :func:`images`
turns states into pixels in [−1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from diffmem.detectors.base import repeat_cond
from diffmem.subject import Prompt, Subject

__all__ = ["run_generations", "as_images", "images", "pair_mean"]


def run_generations(subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int], **sample_kw):
    """One run of the loop over every generation of ``prompts``: row i·n + j is prompt i with seed ``seeds[j]``."""
    index = [i for i in range(len(prompts)) for _ in seeds]
    return subject.sample(repeat_cond(subject, prompts, index), list(seeds) * len(prompts), **sample_kw)


def as_images(x: Tensor) -> Tensor:
    """States [B, *shape] viewed as images [B, C, H, W]: a 1-D state is one row, a 2-D state one channel, and the
    leading dims of a state with more than three fold into channels.

    >>> as_images(torch.zeros(2, 5)).shape, as_images(torch.zeros(2, 4, 6)).shape
    (torch.Size([2, 1, 1, 5]), torch.Size([2, 1, 4, 6]))
    """
    shape = tuple(x.shape[1:])
    if len(shape) == 1:
        return x.reshape(len(x), 1, 1, shape[0])
    if len(shape) == 2:
        return x.reshape(len(x), 1, *shape)
    return x.reshape(len(x), -1, *shape[-2:])


def images(subject: Subject, states: Tensor, *, clamp: bool = True) -> Tensor:
    """Pixels [B, C, H, W] in [−1, 1] of states [B, ...]: decoded when the subject has a decoder, else the states
    themselves (pixel models); clamped to [−1, 1] as a saved image is; at least float32."""
    x = as_images(states if subject.decode is None else subject.decode(states))
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return x.clamp(-1, 1) if clamp else x


def pair_mean(m: Tensor) -> Tensor:
    """Mean over the pairs s < s' of per-prompt pairwise matrices [p, n, n] -> [p]."""
    n = m.shape[-1]
    i, j = torch.triu_indices(n, n, 1)
    return m[..., i, j].mean(-1)

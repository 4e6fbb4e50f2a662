"""Tiled-ℓ2 consistency across generations (Carlini et al., USENIX Security 2023): copies of one training image lie
close together in every tile.

n full guided generations of a prompt, decoded to pixels in [−1, 1]; the distance of two generations is Carlini et
al.'s tiled ℓ2 (a ``grid`` × ``grid`` array of non-overlapping tiles, the RMS difference per tile, the **max** over
tiles, so a shared background cannot make two different images close); the score is the mean distance over the
generation pairs. Lower = memorized (declared). Jeon et al. (ICML 2025) re-implement the attack's clique step as
this prompt-level consistency; the clique threshold is not public and is not used here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.detectors._generations import images, pair_mean, run_generations
from diffmem.detectors.base import CrossGeneration, register
from diffmem.sampling.trajectory import Recorder
from diffmem.similarity.pixel import pairwise_tiled_l2
from diffmem.subject import Prompt, Subject

__all__ = ["TiledL2Consistency"]


@register
@dataclass(frozen=True)
class TiledL2Consistency(CrossGeneration):
    """Tiled-ℓ2 consistency (Carlini et al., USENIX Security 2023): mean pairwise tiled ℓ2 between generations.

    Attributes:
        grid: tiles per side (4: 16 tiles, 128² on a 512² image).
        guidance: CFG weight of the generations.
        steps: grid length (None: the subject's default).
    """

    name = "carlini-tiled-l2"
    citation = "Carlini et al., Extracting Training Data from Diffusion Models, USENIX Security 2023"
    higher_is_memorized = False
    needs = frozenset({"trajectory", "decode", "several_generations"})
    grid: int = 4
    guidance: float = 7.5
    steps: int | None = None

    def score_prompts(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        traj = run_generations(subject, prompts, seeds, guidance=self.guidance, steps=self.steps or subject.steps,
                               recorder=Recorder(keep=()))
        x = images(subject, traj.x_0)
        x = x.view(len(prompts), len(seeds), *x.shape[1:])
        return pair_mean(torch.stack([pairwise_tiled_l2(g, g, grid=self.grid) for g in x]))

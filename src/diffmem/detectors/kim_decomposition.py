"""Trajectory-decomposition scores (Kim, Kim & Lee, 2025, "How Diffusion Models Memorize"): memorizing trajectories
gain image and lose noise earlier than the schedule prescribes.

Each latent after x_T of one full guided generation is decomposed as z_k ≈ w0_k·x + wT_k·x_T (least squares), and
D1 = Σ_k (w0_k − √ᾱ(k)), D2 = −Σ_k (wT_k − √(1−ᾱ(k))) (:mod:`diffmem.analyses.decomposition`), averaged over
generations — the mean over seeds commutes with the sum over steps, so the per-generation mean equals Kim et al.'s
seed-averaged coefficients. Registered scores:

* ``kim-d1``, ``kim-d2``: x = the prompt's paired training sample (needs it); higher = memorized.
* ``kim-d1-self``, ``kim-d2-self``: training-data-free, x = each generation's own final sample (the authors' v1-era
  code). ``pairing`` chooses the ᾱ each latent is compared with: "landed" (the ᾱ the update lands on, analysis A4)
  or "input" (the ᾱ of the step's input, one step earlier, the authors' ``xt_decomposition``). D1_self: higher =
  memorized. D2_self has no published direction; it is declared lower = memorized because that is what we measured:
  on the exact-memorizer oracle (single-image vs 32-image classes, AUC 0.89 at n = 2, 0.96 at n = 4) and on the
  digits-t2i world (planted vs non-planted, 10 + 10 prompts, n = 4: 0.81). A larger set may still overturn it.
* ``kim-seed-l2``: mean pairwise ‖x₀⁽ˢ⁾ − x₀⁽ˢ'⁾‖ between final states of different seeds (lower = memorized);
  ``kim-seed-ssim``: mean pairwise SSIM of the decoded final images (higher = memorized).

Every score costs one full guided run per generation (2 NFE per step) and no extra evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from diffmem.analyses.convergence import mean_pairwise_distance
from diffmem.analyses.decomposition import generation_deviations
from diffmem.detectors._generations import images, pair_mean, run_generations
from diffmem.detectors.base import CrossGeneration, PerGeneration, register, repeat_cond
from diffmem.sampling.trajectory import Recorder
from diffmem.similarity.ssim import pairwise_ssim
from diffmem.subject import Prompt, Subject

__all__ = ["KimD1", "KimD2", "KimD1Self", "KimD2Self", "SeedDistance", "SeedSSIM", "generation_deviations"]

CITATION = "Kim, Kim & Lee, How Diffusion Models Memorize, arXiv 2509.25705, 2025"


@dataclass(frozen=True)
class _Deviation(PerGeneration):
    """D1 or D2 of each generation against the paired sample or its own end point (Kim et al., 2025).

    Attributes:
        guidance: CFG weight of the generations.
        steps: grid length (None: the subject's default).
        pairing: "landed" or "input" (see :func:`generation_deviations`).
    """

    citation = CITATION
    coefficient: ClassVar[int] = 0  # 0: D1, 1: D2
    self_referenced: ClassVar[bool] = False
    guidance: float = 7.5
    steps: int | None = None
    pairing: str = "landed"

    def __post_init__(self):
        if self.pairing not in ("landed", "input"):
            raise ValueError(f"pairing must be 'landed' or 'input', got {self.pairing!r}")

    def score_generations(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        out = []
        for index, batch_seeds in self.batches(prompts, seeds):
            traj = subject.sample(repeat_cond(subject, prompts, index), batch_seeds, guidance=self.guidance,
                                  steps=self.steps or subject.steps, recorder=Recorder(keep=("x_t",)))
            x = traj.x_0 if self.self_referenced else torch.stack([prompts[i].x for i in index])
            out.append(generation_deviations(traj, x.to(traj.x_0.device), self.pairing)[self.coefficient])
        return torch.cat(out).view(len(prompts), len(seeds))


@register
@dataclass(frozen=True)
class KimD1(_Deviation):
    """Image over-estimation D1 against the paired training sample (Kim et al., 2025); higher = memorized."""

    name = "kim-d1"
    higher_is_memorized = True
    needs = frozenset({"trajectory", "paired_image"})


@register
@dataclass(frozen=True)
class KimD2(_Deviation):
    """Noise suppression D2 against the paired training sample (Kim et al., 2025); higher = memorized."""

    name = "kim-d2"
    higher_is_memorized = True
    needs = frozenset({"trajectory", "paired_image"})
    coefficient = 1


@register
@dataclass(frozen=True)
class KimD1Self(_Deviation):
    """Training-data-free D1 against each generation's own final sample (Kim et al., 2025); higher = memorized."""

    name = "kim-d1-self"
    higher_is_memorized = True
    needs = frozenset({"trajectory"})
    self_referenced = True


@register
@dataclass(frozen=True)
class KimD2Self(_Deviation):
    """Training-data-free D2 against each generation's own final sample (Kim et al., 2025); declared lower =
    memorized from the exact-memorizer oracle only (no published direction)."""

    name = "kim-d2-self"
    higher_is_memorized = False
    needs = frozenset({"trajectory"})
    coefficient = 1
    self_referenced = True


@dataclass(frozen=True)
class _SeedSeverity(CrossGeneration):
    """Agreement of the final samples of different seeds (Kim et al., 2025, the authors' v1-era code).

    Attributes:
        guidance: CFG weight of the generations.
        steps: grid length (None: the subject's default).
    """

    citation = CITATION
    guidance: float = 7.5
    steps: int | None = None

    def finals(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        """Final states [p, n, ...] of every generation."""
        traj = run_generations(subject, prompts, seeds, guidance=self.guidance, steps=self.steps or subject.steps,
                               recorder=Recorder(keep=()))
        return traj.x_0.view(len(prompts), len(seeds), *traj.x_0.shape[1:])


@register
@dataclass(frozen=True)
class SeedDistance(_SeedSeverity):
    """Seed-to-seed distance (Kim et al., 2025): mean pairwise ℓ2 between final states; lower = memorized."""

    name = "kim-seed-l2"
    higher_is_memorized = False
    needs = frozenset({"trajectory", "several_generations"})

    def score_prompts(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        return mean_pairwise_distance(self.finals(subject, prompts, seeds))


@register
@dataclass(frozen=True)
class SeedSSIM(_SeedSeverity):
    """Seed-to-seed SSIM (Kim et al., 2025): mean pairwise SSIM of the decoded final images; higher = memorized."""

    name = "kim-seed-ssim"
    higher_is_memorized = True
    needs = frozenset({"trajectory", "decode", "several_generations"})

    def score_prompts(self, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> Tensor:
        finals = self.finals(subject, prompts, seeds)
        x = images(subject, finals.flatten(0, 1))
        x = x.view(len(prompts), len(seeds), *x.shape[1:])
        return pair_mean(torch.stack([pairwise_ssim(g, g) for g in x]))

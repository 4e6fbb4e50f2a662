"""The full study of Kim, Kim & Lee (2025), *How Diffusion Models Memorize*, on any :class:`~diffmem.subject.Subject`.

For every prompt with a paired training image: sample N seeds with CFG (DDIM, g = 7.5 by default) recording
everything, then run A1 (guided loss, overshoot), A2 (noise content), A3 (seed convergence), A4 (decomposition,
D1/D2 and the training-data-free self-referenced D), measure memorization severity with several metrics, and
correlate D with severity across prompts (:mod:`diffmem.analyses.kim_summary`). Beyond the paper: several severity
metrics, Spearman and bootstrap intervals, the self-referenced D, and any model or world.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from diffmem.analyses.convergence import convergence
from diffmem.analyses.decomposition import decompose_trajectory
from diffmem.analyses.kim_summary import KimSummary, summarize
from diffmem.analyses.noise_content import noise_content
from diffmem.analyses.overestimation import guided_loss
from diffmem.analyses.severity import severity
from diffmem.results import Provenance, Result
from diffmem.sampling.guidance import Constant
from diffmem.sampling.trajectory import Recorder
from diffmem.subject import Prompt, Subject

__all__ = ["KimConfig", "PromptAnalysis", "KimResult", "KimSummary", "run_kim", "analyze_prompt", "summarize"]


@dataclass(frozen=True)
class KimConfig:
    """Settings of the study.

    Attributes:
        n_seeds: samples per prompt; seeds 0 … n_seeds − 1, the same for every prompt and every g.
        guidance: the CFG weight g of the main trajectories.
        sweep: the weights of the guided loss (A1) and, with ``sample_sweep``, of D and severity vs g (A5).
        draws: forward-noise draws per timestep of the guided loss.
        primary: the severity metric D is correlated with (``ssim``, ``l2_sim``, ``cosine`` or ``copy_rate``).
        n_boot: bootstrap resamples of the correlation intervals.
        collapse_threshold: dispersion ratio below which the seeds have collapsed (A3).
        sample_sweep: also sample every g of the sweep.
    """

    n_seeds: int = 10
    guidance: float = 7.5
    sweep: tuple[float, ...] = (1.0, 3.0, 5.0, 7.5, 10.0)
    draws: int = 32
    primary: str = "ssim"
    n_boot: int = 2000
    collapse_threshold: float = 0.1
    sample_sweep: bool = True

    def __post_init__(self):
        if isinstance(self.n_seeds, bool) or not isinstance(self.n_seeds, int) or self.n_seeds < 2:
            raise ValueError(f"n_seeds must be an int >= 2 (dispersion needs two), got {self.n_seeds!r}")
        object.__setattr__(self, "sweep", tuple(float(g) for g in self.sweep))


@dataclass(frozen=True)
class PromptAnalysis:
    """Per-prompt arrays (steps S, sweep G, grid timesteps T) and scalars."""

    id: str
    kind: str
    D1: float
    D2: float
    D1_selfref: float
    D2_selfref: float
    severity: dict
    w0: Tensor  # [S] seed-averaged
    wT: Tensor
    resid: Tensor  # [S] mean ‖r‖/‖z‖
    cos: dict  # name -> [S] seed-averaged signed cosines
    V_ratio_x_t: Tensor
    V_ratio_x0_hat: Tensor
    collapse_x_t: int | None
    loss_cond: Tensor  # [T]
    loss_uncond: Tensor
    loss_guided: Tensor  # [G, T]
    k_guided: Tensor  # [G, T]
    D1_by_g: Tensor | None = None  # [G] (A5; None when the sweep was not sampled)
    severity_by_g: dict | None = None  # metric -> [G]
    text: str = ""  # the prompt as a person reads it


@dataclass(frozen=True)
class KimResult(Result):
    prompts: list[PromptAnalysis]
    alpha_bar: Tensor  # [S] the ᾱ each decomposed latent lives at
    t: Tensor  # [T] grid timesteps (A1)
    sweep: Tensor  # [G]
    summary: KimSummary
    provenance: Provenance
    config: KimConfig


def _trajectory(subject: Subject, p: Prompt, cfg: KimConfig, g: float, recorder: Recorder):
    cond = p.cond.select(torch.zeros(cfg.n_seeds, dtype=torch.long))
    return subject.sample(cond, range(cfg.n_seeds), guidance=Constant(g, always_uncond=True), recorder=recorder)


def _sweep(subject: Subject, p: Prompt, cfg: KimConfig) -> tuple[Tensor, dict]:
    """A5: D1 and every severity at each g of the sweep."""
    d1, sev = [], []
    for g in cfg.sweep:
        tr = _trajectory(subject, p, cfg, g, Recorder(keep=("x_t",)))
        d1.append(decompose_trajectory(tr, p.x).D1)
        sev.append(severity(tr.x_0, p.x, subject.references, decode=subject.decode))
    return torch.tensor(d1, dtype=torch.float64), {k: torch.tensor([s[k] for s in sev]) for k in sev[0]}


def analyze_prompt(subject: Subject, p: Prompt, cfg: KimConfig) -> tuple[PromptAnalysis, Provenance]:
    """A1–A4 and severity for one prompt of ``subject`` (with its paired training sample ``p.x``)."""
    tr = _trajectory(subject, p, cfg, cfg.guidance, Recorder())
    dec, own = decompose_trajectory(tr, p.x), decompose_trajectory(tr, tr.x_0)
    conv = convergence(tr, cfg.collapse_threshold)
    loss = guided_loss(subject.denoiser, p.x, p.cond, subject.grid, g=cfg.sweep, draws=cfg.draws)
    sev = severity(tr.x_0, p.x, subject.references, decode=subject.decode)
    pa = PromptAnalysis(
        id=p.id, text=p.text, kind=p.kind, D1=dec.D1, D2=dec.D2, D1_selfref=own.D1, D2_selfref=own.D2, severity=sev,
        w0=dec.w0.mean(1), wT=dec.wT.mean(1), resid=dec.resid.mean(1),
        cos={k: v.mean(1) for k, v in noise_content(tr, p.x).items()},
        V_ratio_x_t=conv["V_ratio_x_t"], V_ratio_x0_hat=conv["V_ratio_x0_hat"], collapse_x_t=conv["collapse_x_t"],
        loss_cond=loss.loss_cond, loss_uncond=loss.loss_uncond, loss_guided=loss.loss_guided, k_guided=loss.k_guided)
    if cfg.sample_sweep:
        pa = replace(pa, **dict(zip(("D1_by_g", "severity_by_g"), _sweep(subject, p, cfg), strict=True)))
    return pa, tr.provenance


def _check(subject: Subject) -> None:
    if len(subject.prompts) < 3:
        raise ValueError(f"need at least 3 prompts to correlate, got {len(subject.prompts)}")
    unpaired = [p.id for p in subject.prompts if p.x is None]
    if unpaired:
        raise ValueError(f"prompt {unpaired[0]!r} of subject {subject.name!r} has no paired training sample; "
                         "select paired prompts first (Subject.select)")
    if subject.references is None:
        raise ValueError(f"subject {subject.name!r} has no references (training samples) for the copy rule")


def run_kim(subject: Subject, cfg: KimConfig = KimConfig(), *, progress: Callable[[int], None] | None = None
            ) -> KimResult:
    """Run the study on every prompt of ``subject``, in order (``progress(i)`` is called after each prompt)."""
    _check(subject)
    rows, prov = [], None
    for i, p in enumerate(subject.prompts):
        pa, prov = analyze_prompt(subject, p, cfg)
        rows.append(pa)
        if progress:
            progress(i)
    sweep = torch.tensor(cfg.sweep, dtype=torch.float64)
    grid = subject.grid
    ab = torch.cat([grid.alpha_bar[1:], grid.alpha_bar_next[-1:]])
    provenance = Provenance(model=prov.model, solver=prov.solver, grid=prov.grid, guidance=prov.guidance,
                            seeds=list(range(cfg.n_seeds)),
                            extra={"subject": subject.name, "similarity": sorted(rows[0].severity),
                                   "primary_severity": cfg.primary, "copy_rule": "l2 nn ratio <= 1/3, paired"})
    summary = summarize(rows, sweep, guidance=cfg.guidance, primary=cfg.primary, n_seeds=cfg.n_seeds,
                        n_boot=cfg.n_boot)
    return KimResult(rows, ab, grid.timesteps, sweep, summary, provenance, config=cfg)


"""The full study of Kim et al. (2025) on any model behind the denoiser contract.

For every prompt with a paired training image: sample N seeds with CFG (DDIM, g = 7.5 by default) recording
everything, then run A1 (guided loss, overshoot), A2 (noise content), A3 (seed convergence), A4 (decomposition,
D1/D2 and the training-data-free self-referenced D), measure memorization severity with several metrics, and
correlate D with severity across prompts. Beyond the paper: several severity metrics, Spearman and bootstrap
intervals, the self-referenced D, and any model/world.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from diffmem.analyses.convergence import convergence
from diffmem.analyses.correlation import correlate
from diffmem.analyses.decomposition import decompose_trajectory
from diffmem.analyses.noise_content import noise_content
from diffmem.analyses.overestimation import guided_loss
from diffmem.analyses.severity import severity
from diffmem.results import Provenance, Result
from diffmem.sampling.guidance import Constant
from diffmem.sampling.loop import sample
from diffmem.sampling.trajectory import Recorder
from diffmem.schedules import Grid
from diffmem.seeding import SeededNoise
from diffmem.types import Cond

__all__ = ["KimPrompt", "KimSubject", "KimConfig", "PromptAnalysis", "KimResult", "run_kim", "summarize"]


@dataclass(frozen=True)
class KimPrompt:
    """One analysed prompt: its conditioning (batch 1, with the null branch), the paired training sample ``x`` in
    the denoiser's state space, and a ground-truth kind from the world ("planted", "nonplanted", …)."""

    id: str
    cond: Cond
    x: Tensor
    kind: str = "unknown"


@dataclass(frozen=True)
class KimSubject:
    """What the study runs on: a denoiser, its sampling grid, the prompts, the training set in state space (the
    references of the 1/3 copy rule) and an optional decoder from states to images for pixel metrics."""

    denoiser: object
    grid: Grid
    prompts: Sequence[KimPrompt]
    train: Tensor
    decode: Callable[[Tensor], Tensor] | None = None
    name: str = "subject"
    solver: str | Callable = "ddim"
    x_T_scale: float = 1.0  # VP scale of the initial draw (≠ 1 only for diffusers Euler linspace/trailing)


@dataclass(frozen=True)
class KimConfig:
    seeds: int = 10
    guidance: float = 7.5
    sweep: tuple[float, ...] = (1.0, 3.0, 5.0, 7.5, 10.0)
    draws: int = 32
    primary: str = "ssim"
    n_boot: int = 2000
    collapse_threshold: float = 0.1
    sample_sweep: bool = True  # A5: also sample at every g of the sweep (D and severity vs g)

    def __post_init__(self):
        if isinstance(self.seeds, bool) or not isinstance(self.seeds, int) or self.seeds < 2:
            raise ValueError(f"seeds must be an int >= 2 (dispersion needs two), got {self.seeds!r}")


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


@dataclass(frozen=True)
class KimResult(Result):
    prompts: list[PromptAnalysis]
    alpha_bar: Tensor  # [S] the ᾱ each decomposed latent lives at
    t: Tensor  # [T] grid timesteps (A1)
    sweep: Tensor  # [G]
    summary: dict
    provenance: Provenance
    config: dict = field(default_factory=dict)


def _trajectory(subject: KimSubject, p: KimPrompt, cfg: KimConfig, g: float, recorder: Recorder):
    seeds = list(range(cfg.seeds))  # the same seeds for every prompt and every g (spec §9)
    noise = SeededNoise(seeds, dtype=p.x.dtype)
    x_T = subject.x_T_scale * noise.randn(p.x.shape)
    cond = p.cond.select(torch.zeros(cfg.seeds, dtype=torch.long))
    return sample(subject.denoiser, x_T, subject.grid, cond, solver=subject.solver,
                  guidance=Constant(g, always_uncond=True), noise=noise, recorder=recorder)


def _sweep(subject: KimSubject, p: KimPrompt, cfg: KimConfig) -> tuple[Tensor, dict]:
    """A5: D1 and every severity at each g of the sweep."""
    d1, sev = [], []
    for g in cfg.sweep:
        tr = _trajectory(subject, p, cfg, g, Recorder(keep=("x_t",)))
        d1.append(decompose_trajectory(tr, p.x).D1)
        sev.append(severity(tr.x_0, p.x, subject.train, decode=subject.decode))
    return torch.tensor(d1, dtype=torch.float64), {k: torch.tensor([s[k] for s in sev]) for k in sev[0]}


def analyse_prompt(subject: KimSubject, p: KimPrompt, cfg: KimConfig) -> tuple[PromptAnalysis, Provenance]:
    """A1–A4 and severity for one prompt."""
    tr = _trajectory(subject, p, cfg, cfg.guidance, Recorder())
    dec, own = decompose_trajectory(tr, p.x), decompose_trajectory(tr, tr.x_0)
    conv = convergence(tr, cfg.collapse_threshold)
    loss = guided_loss(subject.denoiser, p.x, p.cond, subject.grid, g=cfg.sweep, draws=cfg.draws)
    sev = severity(tr.x_0, p.x, subject.train, decode=subject.decode)
    pa = PromptAnalysis(
        id=p.id, kind=p.kind, D1=dec.D1, D2=dec.D2, D1_selfref=own.D1, D2_selfref=own.D2, severity=sev,
        w0=dec.w0.mean(1), wT=dec.wT.mean(1), resid=dec.resid.mean(1),
        cos={k: v.mean(1) for k, v in noise_content(tr, p.x).items()},
        V_ratio_x_t=conv["V_ratio_x_t"], V_ratio_x0_hat=conv["V_ratio_x0_hat"], collapse_x_t=conv["collapse_x_t"],
        loss_cond=loss.loss_cond, loss_uncond=loss.loss_uncond, loss_guided=loss.loss_guided, k_guided=loss.k_guided)
    if cfg.sample_sweep:
        pa = replace(pa, **dict(zip(("D1_by_g", "severity_by_g"), _sweep(subject, p, cfg), strict=True)))
    return pa, tr.provenance


def summarize(prompts: Sequence[PromptAnalysis], sweep: Tensor, cfg: KimConfig) -> dict:
    """The headline numbers: correlations of D with the primary severity, group contrasts (memorized = copy rate
    ≥ 1/2 of seeds, non-memorized = no copy; the rest stay in correlations only)."""
    if cfg.primary not in prompts[0].severity:
        raise ValueError(f"unknown primary severity {cfg.primary!r}; have {sorted(prompts[0].severity)}")
    sev = [p.severity[cfg.primary] for p in prompts]
    out = {"n_prompts": len(prompts), "n_seeds": cfg.seeds, "primary_severity": cfg.primary}
    for name in ("D1", "D2", "D1_selfref", "D2_selfref"):
        r = correlate([getattr(p, name) for p in prompts], sev, n_boot=cfg.n_boot)
        out[f"pearson_{name}"], out[f"spearman_{name}"] = r["pearson"], r["spearman"]
        out[f"pearson_{name}_ci"], out[f"spearman_{name}_ci"] = r["pearson_ci"], r["spearman_ci"]
    out["correlations_by_severity"] = {
        metric: {name: correlate([getattr(p, name) for p in prompts], [p.severity[metric] for p in prompts],
                                 n_boot=0 if metric != cfg.primary else cfg.n_boot)["pearson"]
                 for name in ("D1", "D2", "D1_selfref")}
        for metric in prompts[0].severity}
    mem = [p for p in prompts if p.severity["copy_rate"] >= 0.5]
    non = [p for p in prompts if p.severity["copy_rate"] == 0]
    out["n_memorized"], out["n_nonmemorized"] = len(mem), len(non)
    g = int(torch.argmin((sweep - cfg.guidance).abs()))

    def mean(group, fn):
        return float(torch.stack([fn(p) for p in group]).double().mean()) if group else float("nan")

    lg_mem, lg_non = mean(mem, lambda p: p.loss_guided[g].mean()), mean(non, lambda p: p.loss_guided[g].mean())
    out["loss_guided_mem"], out["loss_guided_nonmem"] = lg_mem, lg_non
    out["loss_cond_mem"] = mean(mem, lambda p: p.loss_cond.mean())
    out["loss_cond_nonmem"] = mean(non, lambda p: p.loss_cond.mean())
    out["loss_ratio_guided_mem_vs_nonmem"] = lg_mem / lg_non if non and lg_non > 0 else float("nan")
    # how much guidance inflates the loss over the conditional branch's own (Kim's claim (i), world-independent)
    out["loss_inflation_mem"] = lg_mem / out["loss_cond_mem"] if mem else float("nan")
    out["loss_inflation_nonmem"] = lg_non / out["loss_cond_nonmem"] if non else float("nan")
    out["first_step_cos_eps_c_x_mem"] = mean(mem, lambda p: p.cos["cos_eps_c_x"][0])
    out["first_step_cos_eps_c_x_nonmem"] = mean(non, lambda p: p.cos["cos_eps_c_x"][0])
    out["first_step_overshoot_mem"] = mean(mem, lambda p: p.k_guided[g][0])
    out["first_step_overshoot_nonmem"] = mean(non, lambda p: p.k_guided[g][0])
    out["V_ratio_x0_hat_step5_mem"] = mean(mem, lambda p: p.V_ratio_x0_hat[min(5, len(p.V_ratio_x0_hat) - 1)])
    out["V_ratio_x0_hat_step5_nonmem"] = mean(non, lambda p: p.V_ratio_x0_hat[min(5, len(p.V_ratio_x0_hat) - 1)])
    if prompts[0].D1_by_g is not None:  # A5, per group: mean D1 and severity at each g of the sweep
        for tag, group in (("mem", mem), ("nonmem", non), ("all", list(prompts))):
            out[f"sweep_D1_{tag}"] = torch.stack([p.D1_by_g for p in group]).mean(0).tolist() if group else []
            out[f"sweep_{cfg.primary}_{tag}"] = (torch.stack([p.severity_by_g[cfg.primary] for p in group])
                                                 .mean(0).tolist() if group else [])
            out[f"sweep_copy_rate_{tag}"] = (torch.stack([p.severity_by_g["copy_rate"] for p in group])
                                             .mean(0).tolist() if group else [])
        out["sweep_g"] = sweep.tolist()
    return out


def run_kim(subject: KimSubject, cfg: KimConfig = KimConfig(), *, progress: Callable[[int], None] | None = None
            ) -> KimResult:
    """Run the study on every prompt of ``subject`` (``progress(i)`` is called after each prompt)."""
    if len(subject.prompts) < 3:
        raise ValueError(f"need at least 3 prompts to correlate, got {len(subject.prompts)}")
    rows, prov = [], None
    for i, p in enumerate(subject.prompts):
        pa, prov = analyse_prompt(subject, p, cfg)
        rows.append(pa)
        if progress:
            progress(i)
    sweep = torch.tensor(cfg.sweep, dtype=torch.float64)
    ab = torch.cat([subject.grid.alpha_bar[1:], subject.grid.alpha_bar_next[-1:]])
    provenance = Provenance(model=prov.model, solver=prov.solver, grid=prov.grid, guidance=prov.guidance,
                            seeds=list(range(cfg.seeds)),
                            extra={"subject": subject.name, "similarity": sorted(rows[0].severity),
                                   "primary_severity": cfg.primary, "copy_rule": "l2 nn ratio <= 1/3, paired"})
    return KimResult(rows, ab, subject.grid.timesteps, sweep, summarize(rows, sweep, cfg), provenance,
                     config=dict(cfg.__dict__))

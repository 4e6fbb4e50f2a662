"""``diffmem demo`` as a job: the main report on the embedded default world (digits-t2i).

Sections, each saved under the run folder and summarized in ``report.md``:

- ``world``: the digits-t2i world report — planted / non-planted copy rates and prompt alignment vs the CFG
  weight, sample grids (``diffmem world-report``);
- ``kim``: Kim et al. (2025)'s three analyses in their quick preset (``diffmem analyze kim --quick``);
- ``theory``: Ye et al. (2025)'s loss gap and empirical-vs-true-score copy rates (``diffmem theory … --quick``);
- always: a closed-form check — the *empirical* denoiser of a small training set (the exact minimizer of the
  denoising loss, which memorizes; Ye et al., §3) against the *population* denoiser of the Gaussian mixture it was
  drawn from, both sampled with CFG: memorization ratio (1/3 rule) and early overestimation (Kim et al., §4).

The digits-t2i checkpoint ships with the package, so nothing is trained unless its config is changed.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from diffmem.io import atomic_write_text
from diffmem.progress import progress_bar
from diffmem.reports.demo import render_demo
from diffmem.reports.html import finish_report
from diffmem.results import Provenance, Result
from diffmem.runners.kim import KimRun, kim_world_subject, run_kim_job
from diffmem.sampling.guidance import Constant
from diffmem.sampling.loop import sample
from diffmem.sampling.trajectory import Recorder
from diffmem.schedules import DiscreteSchedule, discrete_grid
from diffmem.seeding import SeededNoise
from diffmem.similarity.criteria import COPY_RATIO, nn_ratio
from diffmem.theory.closed_form import NULL_LABEL, GaussianMixtureDenoiser
from diffmem.theory.lab import run_loss_gap, run_scores
from diffmem.types import Cond
from diffmem.worlds.report import world_report
from diffmem.worlds.world import World, load_world

__all__ = ["SECTIONS", "ClosedFormRow", "WorldRates", "WorldSection", "TheoryHeadline", "DemoResult", "run_demo"]

SECTIONS = ("world", "kim", "theory")


@dataclass(frozen=True)
class ClosedFormRow:
    """One (model, guidance weight) of the closed-form check.

    Attributes:
        memorization_ratio: share of samples whose nearest training point is 3x closer than the second nearest.
        nn_dist_mean: mean distance of a sample to its nearest training point.
        early_overshoot_mean: x̂₀ at the first step projected on that point (1 = the point itself).
        d_first_mean: mean ‖ε_c − ε_u‖ at the first step.
    """

    name: str
    model: str
    w: float
    memorization_ratio: float
    nn_dist_mean: float
    early_overshoot_mean: float
    d_first_mean: float


@dataclass(frozen=True)
class WorldRates:
    """Copy rates (1/3 rule) per prompt kind and digit alignment at one CFG weight (None where undefined)."""

    planted_copy_rate: float | None
    nonplanted_copy_rate: float | None
    novel_copy_rate: float | None
    alignment: float | None


@dataclass(frozen=True)
class WorldSection:
    """The world report's headline: settings and :class:`WorldRates` per CFG weight (keyed ``f"{w:g}"``)."""

    world: str
    samples_per_prompt: int
    prompts: dict[str, int]
    steps: int
    per_w: dict[str, WorldRates]
    train: dict
    seconds: float


@dataclass(frozen=True)
class TheoryHeadline:
    """Ye et al.'s quick checks: the loss gap at reference t (rows ``{"t", "gap_n<n>", "closed_form"}``), Prop. 4.1
    agreement, the small-t closed form's error and the two exact scores' memorization ratios."""

    loss_gap: list[dict]
    prop41_all_agree: bool
    max_rel_err_small_t: float
    memorization_ratio_empirical_score: float
    memorization_ratio_true_score: float


@dataclass(frozen=True)
class DemoResult(Result):
    """The closed-form check (``samples``: the final x_0 of each row, keyed by row name) and the other sections'
    headlines (None when a section was skipped)."""

    rows: list[ClosedFormRow]
    samples: dict[str, torch.Tensor]
    train: torch.Tensor
    provenance: Provenance
    world: WorldSection | None = None
    kim: KimRun | None = None
    theory: TheoryHeadline | None = None

    @property
    def sections(self) -> tuple[str, ...]:
        """The sections that ran, in report order."""
        return tuple(s for s in SECTIONS if getattr(self, s) is not None)


def _world_section(run: Path, world: World, quick: bool, progress: bool) -> WorldSection:
    """The world report: copy rates and alignment per CFG weight (its grids are saved next to it)."""
    s = world_report(world, run / "world", quick=quick, progress=progress)
    per_w = {w: WorldRates(v["planted_copy_rate"], v["nonplanted_copy_rate"], v["novel_copy_rate"], v["alignment"])
             for w, v in s["per_w"].items()}
    return WorldSection(s["world"], s["samples_per_prompt"], s["prompts"], s["steps"], per_w, s["train"],
                        round(s["seconds"], 1))


def _kim_section(run: Path, world: World, quick: bool, progress: bool) -> KimRun:
    """Kim et al.'s analyses in the quick preset on the world's planted and non-planted prompts."""
    subject = kim_world_subject(world, steps=50, per_kind=4 if quick else 8)
    return run_kim_job(subject, run / "kim", quick=True, progress=progress)


def _theory_section(run: Path) -> TheoryHeadline:
    """Ye et al. quick checks: the loss gap vs its closed form (Prop. 4.1) and the two exact scores' copy rates."""
    figures = importlib.util.find_spec("matplotlib") is not None
    gap = run_loss_gap(run / "theory" / "loss_gap", quick=True, figures=figures)
    scores = run_scores(run / "theory" / "scores", quick=True, figures=figures)
    mem = scores.memorization
    return TheoryHeadline(gap.reference, gap.prop41_all_agree, gap.max_rel_err_small_t,
                          mem["empirical"]["memorization_ratio"], mem["true"]["memorization_ratio"])


def _mixture(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    train = centres[labels] + spread * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
    return centres, train, labels


def _closed_form(n_samples: int, steps: int, weights, seed: int, progress: bool):
    """The closed-form check: empirical vs population denoiser of a Gaussian mixture, sampled at each CFG weight."""
    classes, dim, spread = 4, 64, 0.6
    centres, train, labels = _mixture(8, classes, dim, spread, seed)
    sched = DiscreteSchedule.named("scaled_linear")
    models = {"empirical": GaussianMixtureDenoiser(train, sched, labels=labels, name="empirical"),
              "population": GaussianMixtureDenoiser(centres, sched, var=spread**2, name="population")}
    grid = discrete_grid(sched, steps, spacing="trailing")
    seeds = list(range(seed, seed + n_samples))
    cond = Cond(torch.tensor(seeds) % classes, torch.full((n_samples,), NULL_LABEL))
    rows, finals, provenance = [], {}, None
    jobs = [(m, w) for m in models for w in weights]
    with progress_bar(progress) as bar:
        task = bar.add_task("closed-form check", total=len(jobs))
        for name, w in jobs:
            noise = SeededNoise(seeds, dtype=torch.float64)
            tr = sample(models[name], noise.randn((dim,)), grid, cond, guidance=Constant(w, always_uncond=True),
                        recorder=Recorder(keep=("x0_hat",), every=steps))
            ratio, nearest = nn_ratio(tr.x_0, train)
            a1 = train[nearest]
            overshoot = (tr.x0_hat[0] * a1).sum(1) / (a1 * a1).sum(1)  # x0_hat_T projected on the copy
            key = f"{name}_w{w:g}"
            rows.append(ClosedFormRow(key, name, w, float((ratio <= COPY_RATIO).double().mean()),
                                      float((tr.x_0 - a1).norm(dim=1).mean()), float(overshoot.mean()),
                                      float(tr.d_t[0].mean())))
            finals[key], provenance = tr.x_0, tr.provenance
            bar.advance(task)
    prov = Provenance(model={"world": "gaussian_mixture", "classes": classes, "dim": dim, "spread": spread,
                             "train_size": len(train), "world_seed": seed},
                      solver=provenance.solver, grid=grid.spec, guidance={"kind": "Constant", "w": list(weights)},
                      seeds=seeds, extra={"similarity": "l2 nearest-neighbour ratio < 1/3"})
    return rows, finals, train, prov


def run_demo(out: str | Path, *, n_samples: int | None = None, steps: int | None = None, weights=(1.0, 3.0, 7.5),
             seed: int = 0, progress: bool = True, sections=SECTIONS, world: str = "digits-t2i",
             quick: bool = False) -> Path:
    """Run the requested ``sections`` on ``world`` plus the closed-form check (``n_samples`` seeds, ``steps``
    steps, each CFG weight; default 32 and 50, or 8 and 20 for a ``quick`` smoke run), save a
    :class:`DemoResult` and its report into the folder ``out`` (created if missing); returns ``out``."""
    n_samples = n_samples if n_samples is not None else (8 if quick else 32)
    steps = steps if steps is not None else (20 if quick else 50)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown demo section(s) {sorted(unknown)}; expected some of {SECTIONS}")
    if n_samples < 2 or steps < 1:
        raise ValueError(f"need n_samples >= 2 and steps >= 1, got {n_samples} and {steps}")
    rows, finals, train, prov = _closed_form(n_samples, steps, weights, seed, progress)
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    done = {}
    if "world" in sections or "kim" in sections:
        w = load_world(world, progress=progress)
        if "world" in sections:
            done["world"] = _world_section(run, w, quick, progress)
        if "kim" in sections:
            done["kim"] = _kim_section(run, w, quick, progress)
    if "theory" in sections:
        done["theory"] = _theory_section(run)
    result = DemoResult(rows, finals, train, prov, **done)
    result.save(run, "demo")
    atomic_write_text(run / "report.md", render_demo(DemoResult.load(run, "demo"), run))
    finish_report(run)
    return run


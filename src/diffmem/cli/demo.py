"""``diffmem demo``: the main job on the embedded default world (digits-t2i).

Sections, each saved under the run folder and summarised in ``report.md``:

- ``world``: the digits-t2i world report — planted / non-planted copy rates and prompt alignment vs the CFG
  weight, sample grids (``diffmem world-report``);
- ``kim``: Kim et al. (2025)'s three analyses in their quick preset (``diffmem analyze kim --quick``);
- ``theory``: Ye et al. (2025)'s loss gap and empirical-vs-true-score copy rates (``diffmem theory … --quick``);
- always: a closed-form check — the *empirical* denoiser of a small training set (the exact minimiser of the
  denoising loss, which memorizes; Ye et al., §3) against the *population* denoiser of the Gaussian mixture it was
  drawn from, both sampled with CFG: copy rate (1/3 rule) and early overestimation (Kim et al., §4).

The digits-t2i checkpoint ships with the package, so nothing is trained unless its config is changed.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffmem.io import atomic_write_text, new_run_dir
from diffmem.reports.demo import render_demo
from diffmem.results import Provenance, Result

__all__ = ["DemoResult", "SECTIONS", "run_demo", "add_parser"]


@dataclass(frozen=True)
class DemoResult(Result):
    """One row per (model, guidance weight); ``samples`` holds the final x_0 of each row, keyed by row name."""

    rows: list[dict]
    samples: dict[str, torch.Tensor]
    train: torch.Tensor
    provenance: Provenance
    sections: dict = field(default_factory=dict)  # headline numbers of the other studies, keyed by section


def _world(n_per_class: int, classes: int, dim: int, spread: float, seed: int):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    train = centres[labels] + spread * torch.randn(len(labels), dim, generator=g, dtype=torch.float64)
    return centres, train, labels


SECTIONS = ("world", "kim", "theory")
_KIM_KEYS = ("n_prompts", "n_seeds", "n_memorized", "n_nonmemorized", "primary_severity", "pearson_D1", "pearson_D2",
             "spearman_D1", "spearman_D2", "pearson_D1_selfref", "loss_ratio_guided_mem_vs_nonmem",
             "loss_inflation_mem", "loss_inflation_nonmem", "first_step_cos_eps_c_x_mem",
             "first_step_cos_eps_c_x_nonmem", "V_ratio_x0_hat_step5_mem", "V_ratio_x0_hat_step5_nonmem",
             "pearson_D1_ci", "wall_seconds")


def _world_section(run: Path, world, quick: bool, progress: bool) -> dict:
    """The world report: copy rates and alignment per CFG weight (its grids are saved next to it)."""
    from diffmem.worlds.report import world_report

    s = world_report(world, run / "world", quick=quick, progress=progress)
    keys = ("planted_copy_rate", "nonplanted_copy_rate", "novel_copy_rate", "alignment")
    return {"world": s["world"], "samples_per_prompt": s["samples_per_prompt"], "prompts": s["prompts"],
            "steps": s["steps"], "per_w": {w: {k: v[k] for k in keys} for w, v in s["per_w"].items()},
            "train": s["train"], "seconds": round(s["seconds"], 1)}


def _kim_section(run: Path, world, quick: bool) -> dict:
    """Kim et al.'s analyses in the quick preset on the world's planted and non-planted prompts."""
    from diffmem.analyses.subjects import world_subject
    from diffmem.cli.analyze import run_analysis

    subject = world_subject(world, steps=50, per_kind=4 if quick else 8)
    summary = run_analysis(subject, run / "kim", quick=True, progress=False)
    return {k: summary[k] for k in _KIM_KEYS if k in summary}


def _theory_section(run: Path) -> dict:
    """Ye et al. quick checks: the loss gap vs its closed form (Prop. 4.1) and the two exact scores' copy rates."""
    from diffmem.theory.lab import run_loss_gap, run_scores

    gap = run_loss_gap(run / "theory" / "loss_gap", quick=True, figures=_has_matplotlib())
    scores = run_scores(run / "theory" / "scores", quick=True, figures=_has_matplotlib())
    return {"loss_gap": gap["reference"], "prop41_all_agree": gap["prop41_all_agree"],
            "max_rel_err_small_t": gap["max_rel_err_small_t"],
            "mem_ratio_empirical_score": scores["memorization"]["empirical"]["mem_ratio"],
            "mem_ratio_true_score": scores["memorization"]["true"]["mem_ratio"]}


def _has_matplotlib() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def _closed_form(samples: int, steps: int, weights, seed: int, progress: bool):
    """The closed-form check: empirical vs population denoiser of a Gaussian mixture, sampled at each CFG weight."""
    from diffmem import Cond, Constant, Recorder, SeededNoise, discrete_grid, sample
    from diffmem.schedules import DiscreteSchedule
    from diffmem.similarity.criteria import COPY_RATIO, nn_ratio
    from diffmem.theory.closed_form import NULL_LABEL, GaussianMixtureDenoiser

    classes, dim, spread = 4, 64, 0.6
    centres, train, labels = _world(8, classes, dim, spread, seed)
    sched = DiscreteSchedule.named("scaled_linear")
    models = {"empirical": GaussianMixtureDenoiser(train, sched, labels=labels, name="empirical"),
              "population": GaussianMixtureDenoiser(centres, sched, var=spread**2, name="population")}
    grid = discrete_grid(sched, steps, spacing="trailing")
    seeds = list(range(seed, seed + samples))
    cond = Cond(torch.tensor(seeds) % classes, torch.full((samples,), NULL_LABEL))
    rows, finals, provenance = [], {}, None
    jobs = [(m, w) for m in models for w in weights]
    with _progress(progress) as bar:
        task = bar.add_task("sampling", total=len(jobs))
        for name, w in jobs:
            noise = SeededNoise(seeds, dtype=torch.float64)
            tr = sample(models[name], noise.randn((dim,)), grid, cond, guidance=Constant(w, always_uncond=True),
                        recorder=Recorder(keep=("x0_hat",), every=steps))
            ratio, nearest = nn_ratio(tr.x_0, train)
            a1 = train[nearest]
            dist = (tr.x_0 - a1).norm(dim=1)
            overshoot = (tr.x0_hat[0] * a1).sum(1) / (a1 * a1).sum(1)  # x0_hat_T projected on the copy
            key = f"{name}_w{w:g}"
            rows.append({"name": key, "model": name, "w": w, "f_mem": float((ratio <= COPY_RATIO).double().mean()),
                         "nn_dist_mean": float(dist.mean()), "early_overshoot_mean": float(overshoot.mean()),
                         "d_first_mean": float(tr.d_t[0].mean())})
            finals[key], provenance = tr.x_0, tr.provenance
            bar.advance(task)
    prov = Provenance(model={"world": "gaussian_mixture", "classes": classes, "dim": dim, "spread": spread,
                             "train_size": len(train), "world_seed": seed},
                      solver=provenance.solver, grid=grid.spec, guidance={"kind": "Constant", "w": list(weights)},
                      seeds=seeds, extra={"similarity": "l2 nearest-neighbour ratio < 1/3"})
    return rows, finals, train, prov


def run_demo(out: str | Path, *, samples: int = 32, steps: int = 50, weights=(1.0, 3.0, 7.5), seed: int = 0,
             progress: bool = True, sections=SECTIONS, world: str = "digits-t2i", quick: bool = False) -> Path:
    """Run the requested ``sections`` on ``world`` plus the closed-form check (``samples`` seeds, ``steps``
    steps, each CFG weight), save a :class:`DemoResult` and its report; returns the run dir."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown demo section(s) {sorted(unknown)}; expected some of {SECTIONS}")
    rows, finals, train, prov = _closed_form(samples, steps, weights, seed, progress)
    run = new_run_dir(out, "demo")
    done = {}
    if "world" in sections or "kim" in sections:
        from diffmem.worlds.world import load_world

        w = load_world(world, progress=progress)
        if "world" in sections:
            done["world"] = _world_section(run, w, quick, progress)
        if "kim" in sections:
            done["kim"] = _kim_section(run, w, quick)
    if "theory" in sections:
        done["theory"] = _theory_section(run)
    result = DemoResult(rows, finals, train, prov, done)
    result.save(run, "demo")
    atomic_write_text(run / "report.md", render_demo(DemoResult.load(run, "demo")))
    return run


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not enabled, transient=True)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded default world and write a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="diffmem-demo", help="root directory for run folders (default: %(default)s)")
    p.add_argument("--samples", type=int, default=32, help="number of seeds per setting (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="first seed; also seeds the world (default: %(default)s)")
    p.add_argument("--world", default="digits-t2i", help="text world of the world and kim sections "
                   "(default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="a smoke run: quick world report, 4 prompts per kind for "
                   "kim, 8 closed-form samples with 20 steps")
    p.add_argument("--skip", action="append", default=[], choices=SECTIONS, help="leave a section out (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_cli)


def _cli(args) -> int:
    samples, steps = (8, 20) if args.quick else (args.samples, args.steps)
    if samples < 2 or steps < 1:
        raise ValueError(f"need --samples >= 2 and --steps >= 1, got {samples} and {steps}")
    sections = tuple(s for s in SECTIONS if s not in args.skip)
    run = run_demo(args.out, samples=samples, steps=steps, seed=args.seed, progress=not args.no_progress,
                   sections=sections, world=args.world, quick=args.quick)
    print((run / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {run}")
    return 0

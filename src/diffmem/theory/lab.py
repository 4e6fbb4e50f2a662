"""The theory lab of Ye, Zhu, Tao & Chen (2025): the four experiments, each writing ``summary.json`` + figures.

* :func:`run_loss_gap`: Prop. 4.1 ((a) DSM-loss difference vs (b) Fisher divergence) and the small-t closed form,
  vs t, n, d and s² (Fig. 1).
* :func:`run_scores`: the empirical-score sampler copies, the true-score sampler does not; collapse time vs n, d;
  Lemma C.1 Lipschitz bounds against the measured sup.
* :func:`run_sweep_preset`: the network sweeps (Fig. 3); :func:`run_teaser`: the 2-D teaser (Fig. 2).

Every runner returns its typed summary (:mod:`diffmem.theory.summaries`) and writes into ``out`` directly:
``summary.json`` (the summary's keys plus provenance and figure names), ``<kind>.json`` + ``<kind>.safetensors``
(the :class:`TheoryResult`) and PNG figures rendered from those files only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from diffmem.io import write_json
from diffmem.mixtures import GaussianMixture, gmm_world
from diffmem.results import Provenance, Result
from diffmem.theory.lipschitz import gaussian_lipschitz, lipschitz_bounds, measured_lipschitz, probe_points
from diffmem.theory.loss_gap import loss_gap
from diffmem.theory.plots import render_figures
from diffmem.theory.sampler import SamplerConfig
from diffmem.theory.score_memorization import collapse_curve, collapse_time, score_memorization
from diffmem.theory.summaries import LossGapSummary, ScoresSummary, SweepSummary, TeaserSummary
from diffmem.theory.sweeps import PRESETS, run_sweep
from diffmem.theory.teaser import TEASER_PRESETS, run_teaser_models

__all__ = ["TheoryResult", "run_loss_gap", "run_scores", "run_sweep_preset", "run_teaser", "run_theory_quick",
           "REFERENCE_T", "SMALL_T"]

REFERENCE_T = (0.01, 0.05, 0.1, 0.3, 1.0, 2.0)  # the t of the reference table
SMALL_T = 0.3  # the closed form is checked for t <= SMALL_T (empirical posterior on one point)


@dataclass(frozen=True)
class TheoryResult(Result):
    """One lab experiment: its summary (the typed summary's ``to_dict``), arrays for figures, and provenance."""

    kind: str
    summary: dict
    arrays: dict
    provenance: Provenance


def _save(kind: str, summary, arrays: dict, provenance: Provenance, out: str | Path, figures: bool):
    """Save the :class:`TheoryResult` and ``summary.json`` (then the figures, named in it); returns ``summary``."""
    out = Path(out)
    TheoryResult(kind, summary.to_dict(), arrays, provenance).save(out, kind)
    record = {**summary.to_dict(), "provenance": provenance.to_dict()[0]}
    write_json(out / "summary.json", record)
    if figures:
        record["figures"] = [p.name for p in render_figures(kind, out)]
        write_json(out / "summary.json", record)
    return summary


def _prov(model: dict, extra: dict, sampler: dict | None = None, seeds=None) -> Provenance:
    return Provenance(model=model, solver={} if sampler is None else {"name": sampler["solver"]},
                      grid={} if sampler is None else {"kind": "continuous", **sampler},
                      guidance={"kind": "none"}, seeds=seeds, extra=extra)


# --- loss gap -----------------------------------------------------------------------------------------------

def run_loss_gap(out: str | Path, *, quick: bool = False, dim: int = 32, draws: int = 2000, seed: int = 0,
                 ns=None, ts=None, tables: bool = True, figures: bool = True) -> LossGapSummary:
    """Fig. 1 and the loss-gap tables. Default n ∈ {1K, 10K, 100K} on 17 log-spaced t plus the
    reference t; quick: n ∈ {1K, 10K}, 9 t, 1,000 draws for the tables. ``ns``/``ts`` override the grids."""
    t0 = time.perf_counter()
    ns = tuple(ns or ((1000, 10000) if quick else (1000, 10000, 100000)))
    if ts is None:
        grid = torch.logspace(-3, 1, 9 if quick else 17).tolist()
        ts = sorted({round(t, 6) for t in grid} | set(REFERENCE_T))
    ts = sorted(float(t) for t in ts)
    world = gmm_world(dim, seed=seed)
    curves = {}
    for n in ns:
        X, _ = world.sample(n, seed=seed + 1)
        curves[str(n)] = [loss_gap(X, world.mixture, t, draws=draws, seed=seed + 2).to_dict() for t in ts]
    summary = {"t": ts, "n": list(ns), "dim": dim, "draws": draws}
    for key, field in (("gap_mc", "gap"), ("gap_se", "gap_se"), ("fisher_mc", "fisher"),
                       ("fisher_se", "fisher_se"), ("diff_se", "diff_se")):
        summary[key] = {n: [row[field] for row in rows] for n, rows in curves.items()}
    summary["gap_closed_form"] = [row["closed_form"] for row in curves[str(ns[0])]]
    summary.update(_gap_checks(curves, ts))
    summary["reference"] = [{"t": t, **{f"gap_n{n}": summary["gap_mc"][n][ts.index(t)] for n in curves},
                             "closed_form": summary["gap_closed_form"][ts.index(t)]} for t in REFERENCE_T if t in ts]
    summary["tables"] = _gap_tables(seed, draws // 2 if quick else draws) if tables else {}
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    prov = _prov(world.describe(), {"estimator": "DSM-loss difference and Fisher divergence on the same draws, "
                                                 "for every t",
                                    "schedule": "OU / VP-SDE, alpha_bar = exp(-t)", "data_seed": seed + 1,
                                    "draw_seed": seed + 2})
    return _save("loss_gap", LossGapSummary(**summary), {}, prov, out, figures)


def _gap_checks(curves: dict, ts: list) -> dict:
    """Prop. 4.1 agreement per (n, t) and the closed form's worst relative error at t <= SMALL_T.

    (a) − (b) is a paired per-draw difference with mean zero: agreement means |a − b| <= 3 standard errors of it.
    Where the posterior has collapsed, (a) and (b) coincide draw by draw (their difference is rounding, ~1e-13), so
    the z-score is reported only where that standard error exceeds rounding."""
    agree, z, rel = {}, 0.0, 0.0
    for n, rows in curves.items():
        agree[n] = []
        for r in rows:
            diff, rounding = abs(r["gap"] - r["fisher"]), 1e-9 * abs(r["fisher"])
            agree[n].append(diff <= 3 * r["diff_se"] + rounding)
            if r["diff_se"] > rounding:
                z = max(z, diff / r["diff_se"])
            if r["t"] <= SMALL_T:
                rel = max(rel, abs(r["gap"] - r["closed_form"]) / r["closed_form"])
    return {"prop41_agree": agree, "prop41_all_agree": all(all(v) for v in agree.values()),
            "prop41_max_z": z, "max_rel_err_small_t": rel}


def _gap_tables(seed: int, draws: int) -> dict:
    """Loss gap at t = 0.3, n = 1000 vs d (s² = 1) and vs s² (d = 32), plus the formula's breakdown case."""
    def one(dim, var, t=0.3, n=1000):
        world = gmm_world(dim, var=var, seed=seed)
        X, _ = world.sample(n, seed=seed + 1)
        e = loss_gap(X, world.mixture, t, draws=draws, seed=seed + 2)
        return {"dim": dim, "var": var, "t": t, "n": n, "gap": e.gap, "gap_se": e.gap_se, "fisher": e.fisher,
                "closed_form": e.closed_form}

    return {"dim": [one(d, 1.0) for d in (8, 16, 32, 64)], "var": [one(32, v) for v in (0.25, 1.0, 4.0)],
            "breakdown": [one(8, 0.25)]}


# --- exact scores -------------------------------------------------------------------------------------------

def run_scores(out: str | Path, *, quick: bool = False, seed: int = 0, dim: int = 32, n: int = 1000,
               n_samples: int | None = None, figures: bool = True) -> ScoresSummary:
    """Memorization of the two exact scores (d = ``dim``, n = ``n``), collapse time vs n and d, Lipschitz bounds."""
    t0 = time.perf_counter()
    sampler = SamplerConfig(steps=100 if quick else 200)
    world = gmm_world(dim, seed=seed)
    X, _ = world.sample(n, seed=seed + 1)
    mem = score_memorization(world, X, n_samples=n_samples or (200 if quick else 1000), seed=seed, sampler=sampler)
    held_out, _ = world.sample(2000, seed=seed + 7)
    summary = {"memorization": {k: {"memorization_ratio": v["memorization_ratio"], "loglik_mean": v["loglik_mean"]}
                                for k, v in mem.items()},
               "heldout_loglik_mean": float(world.log_prob(held_out).mean()), "n": n, "dim": dim}
    summary["collapse"] = _collapse(seed, quick)
    summary["lipschitz"] = _lipschitz(seed, quick)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    arrays = {"samples_empirical": mem["empirical"]["samples"], "samples_true": mem["true"]["samples"]}
    prov = _prov(world.describe(), {"data_seed": seed + 1, "rule": "1/3 nearest-neighbour ratio, inclusive"},
                 sampler.to_dict(), seeds=[seed, seed + len(arrays["samples_true"]) - 1])
    return _save("scores", ScoresSummary(**summary), arrays, prov, out, figures)


def _collapse(seed: int, quick: bool) -> dict:
    ts = torch.logspace(-3, 1, 25).tolist()
    ns, dims = ((100, 1000), (8, 32)) if quick else ((100, 1000, 10000), (8, 32, 64))
    rows = []
    for d in dims:
        world = gmm_world(d, seed=seed)
        for n in ns:
            X, _ = world.sample(n, seed=seed + 1)
            curve = collapse_curve(X, ts, draws=200 if quick else 500, seed=seed + 2)
            rows.append({"dim": d, "n": n, "curve": curve.tolist(), "t_collapse": collapse_time(ts, curve)})
    return {"t": ts, "level": 0.5, "rows": rows}


def _lipschitz(seed: int, quick: bool, n: int = 200, dim: int = 32) -> dict:
    world = gmm_world(dim, seed=seed)
    X, _ = world.sample(n, seed=seed + 1)
    emp, g = GaussianMixture.empirical(X), torch.Generator().manual_seed(seed + 3)
    rows = []
    for t in (0.01, 0.03, 0.1, 0.3, 1.0):
        ab = math.exp(-t)
        lo, hi = lipschitz_bounds(X, ab)
        pts = probe_points(X, ab, 100 if quick else 500, g)
        rows.append({"t": t, "sigma2": 1 - ab, "lower": lo, "measured": measured_lipschitz(emp, pts, ab),
                     "upper": hi, "true_gaussian_component": gaussian_lipschitz(ab, world.mixture.lam),
                     "measured_true_mixture": measured_lipschitz(world.mixture, pts, ab)})
    return {"n": n, "dim": dim, "rows": rows}


# --- networks -----------------------------------------------------------------------------------------------

def run_sweep_preset(out: str | Path, *, preset: str = "quick", figures: bool = True, progress=None,
                     executor=None) -> SweepSummary:
    """The network sweeps of Fig. 3 on a preset grid (resumable: finished runs are read from ``out/rows``; the runs
    go to ``executor``, :mod:`diffmem.executor`, default: here)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown sweep preset {preset!r}; expected one of {sorted(PRESETS)}")
    cfg = PRESETS[preset]
    summary = run_sweep(cfg, out, progress=progress, executor=executor)
    prov = _prov({"net": "ScoreMLP", "world": "gmm", "world_seed": cfg.world_seed}, {"preset": preset},
                 cfg.sampler.to_dict(), seeds=[0, cfg.n_samples - 1])
    return _save("sweep", SweepSummary(**summary), {}, prov, out, figures)


def run_teaser(out: str | Path, *, quick: bool = False, figures: bool = True) -> TeaserSummary:
    """Fig. 2: 2-D samples of growing networks, copies highlighted."""
    t0 = time.perf_counter()
    cfg = TEASER_PRESETS["quick" if quick else "default"]
    summary, arrays = run_teaser_models(cfg)
    summary["config"], summary["wall_s"] = cfg.to_dict(), round(time.perf_counter() - t0, 1)
    prov = _prov(summary["world"], {"preset": "quick" if quick else "default"}, cfg.sampler.to_dict(),
                 seeds=[0, cfg.n_samples - 1])
    return _save("teaser", TeaserSummary(**summary), arrays, prov, out, figures)


def run_theory_quick(out: str | Path, *, figures: bool = True, sweep: bool = True) -> dict:
    """All four experiments at their quick settings into ``out/{loss_gap,scores,teaser,sweep}``; the headline
    numbers as one dict (for ``diffmem demo``)."""
    out = Path(out)
    t0 = time.perf_counter()
    gap = run_loss_gap(out / "loss_gap", quick=True, figures=figures)
    scores = run_scores(out / "scores", quick=True, figures=figures)
    teaser = run_teaser(out / "teaser", quick=True, figures=figures)
    res = {"reference_gap": gap.reference, "prop41_all_agree": gap.prop41_all_agree,
           "max_rel_err_small_t": gap.max_rel_err_small_t,
           "memorization_ratio_empirical_score": scores.memorization["empirical"]["memorization_ratio"],
           "memorization_ratio_true_score": scores.memorization["true"]["memorization_ratio"],
           "teaser": teaser.rows}
    if sweep:
        res["sweep_findings"] = run_sweep_preset(out / "sweep", preset="quick", figures=figures).findings
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res

"""Network sweeps on Gaussian mixtures: memorization vs size, n, d, width, weight decay, duplication.

Ye, Zhu, Tao & Chen (2025, §6.1, Fig. 3; Thm. 5.1 and its duplication corollary, §4.4). Each run trains a
:class:`~diffmem.theory.mlp.ScoreMLP` on n points of a :func:`~diffmem.mixtures.gmm_world`, samples it through the
one loop and records the memorization ratio (1/3 rule) and the mean true log-likelihood of its samples. Runs are
keyed by their settings and each is written to ``rows/<key>.json`` as soon as it finishes, so an interrupted sweep
resumes where it stopped and panels that share a setting share the run.

Grids are scaled to a 2-core CPU (``quick`` ≤ 3 min, ``default`` ≤ 30 min when the cores are free); ``paper`` records
the published grid (Fig. 3) for a GPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import torch

from diffmem.executor import Unit, run_units
from diffmem.io import remove_stale_tmp
from diffmem.mixtures import gmm_world
from diffmem.similarity.criteria import memorization_ratio
from diffmem.theory.mlp import NetDenoiser, TrainConfig, count_params, train_score_net
from diffmem.theory.sampler import SamplerConfig, draw_samples

__all__ = ["SweepConfig", "RunSpec", "PRESETS", "plan", "run_settings", "run_one", "run_sweep", "findings"]


@dataclass(frozen=True)
class SweepConfig:
    """Grids of the five panels plus the shared training and sampling settings."""

    name: str
    dim: int                      # d of the size, width, decay and duplication panels (paper: 32)
    n_size: tuple[int, ...]       # n curves of the size/width panels (paper: 3.2K and 10K for width)
    widths: tuple[int, ...]       # width grid (parameter count follows)
    n_grid: tuple[int, ...]       # x axis of the n panel
    dims: tuple[int, ...]         # curves of the n panel
    fixed_width: int              # network of the n panel (paper: 12M parameters)
    n_decay: tuple[int, ...]      # n curves of the weight-decay panel
    decays: tuple[float, ...]     # AdamW weight decay grid at ``fixed_width``
    dup: tuple[int, int]          # (n, m): m of n training rows duplicate others -> n − m distinct
    train: TrainConfig
    n_samples: int = 500
    sampler: SamplerConfig = SamplerConfig(steps=100)
    world_seed: int = 0
    data_seed: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "quick": SweepConfig("quick", dim=32, n_size=(16, 64), widths=(32, 128, 256), n_grid=(16, 64, 256),
                         dims=(8, 32), fixed_width=256, n_decay=(16, 64), decays=(0.0, 1.0), dup=(64, 48),
                         train=TrainConfig(steps=1200, batch_size=128, lr=3e-3), n_samples=200),
    "default": SweepConfig("default", dim=32, n_size=(16, 64, 256), widths=(32, 64, 128, 256, 512),
                           n_grid=(16, 64, 256, 1024), dims=(8, 16, 32, 64), fixed_width=256, n_decay=(64, 256),
                           decays=(0.0, 0.1, 0.3, 1.0), dup=(256, 192),
                           train=TrainConfig(steps=3000, batch_size=128, lr=3e-3), n_samples=500,
                           sampler=SamplerConfig(steps=200)),
    # the published grid (axis ranges read off Fig. 3a): needs a GPU, not run on CPU
    "paper": SweepConfig("paper", dim=32, n_size=(3200, 10000), widths=(64, 128, 256, 512, 1024, 2048, 3072, 4096),
                         n_grid=(1000, 3200, 10000, 32000, 100000), dims=(8, 16, 32, 64), fixed_width=2048,
                         n_decay=(3200, 10000), decays=(0.0, 1e-4, 1e-3, 1e-2, 1e-1), dup=(10000, 5000),
                         train=TrainConfig(steps=200_000, batch_size=512, lr=1e-3, t_sampling="uniform"),
                         n_samples=10_000, sampler=SamplerConfig(steps=1000)),
}


@dataclass(frozen=True)
class RunSpec:
    """One trained network: data (d, n, duplicates m) and model (width, weight decay)."""

    dim: int
    n: int
    width: int
    weight_decay: float = 0.0
    dup: int = 0

    @property
    def key(self) -> str:
        return f"d{self.dim}-n{self.n}-m{self.dup}-w{self.width}-wd{self.weight_decay:g}"


def plan(cfg: SweepConfig) -> dict[str, list[RunSpec]]:
    """The runs of each panel (a run shared by panels appears in each; it is trained once)."""
    d, W = cfg.dim, cfg.fixed_width
    n_dup, m_dup = cfg.dup
    if not 0 < m_dup < n_dup:
        raise ValueError(f"duplication needs 0 < m < n, got (n, m) = {cfg.dup}")
    return {
        "size": [RunSpec(d, n, w) for n in cfg.n_size for w in cfg.widths],
        "n": [RunSpec(dd, n, W) for dd in cfg.dims for n in cfg.n_grid],
        "decay": [RunSpec(d, n, W, wd) for n in cfg.n_decay for wd in cfg.decays],
        "dup": [RunSpec(d, n_dup, W), RunSpec(d, n_dup, W, dup=m_dup), RunSpec(d, n_dup - m_dup, W)],
    }


def training_set(spec: RunSpec, cfg: SweepConfig) -> torch.Tensor:
    """n rows: the first n − m points of the world's nested draw, plus m copies of randomly chosen ones."""
    world = gmm_world(spec.dim, seed=cfg.world_seed)
    X, _ = world.sample(spec.n - spec.dup, seed=cfg.data_seed)
    if spec.dup:
        g = torch.Generator().manual_seed(cfg.data_seed)
        X = torch.cat([X, X[torch.randint(X.shape[0], (spec.dup,), generator=g)]])
    return X


def run_settings(spec: RunSpec, cfg: SweepConfig) -> dict:
    """Everything besides the key that decides a run's row: training, sampling, sample count and seeds (as JSON
    reads it back). A saved row made under other settings is recomputed, never reused."""
    train = replace(cfg.train, width=spec.width, weight_decay=spec.weight_decay)
    return json.loads(json.dumps({"train": train.to_dict(), "sampler": asdict(cfg.sampler),
                                  "n_samples": cfg.n_samples, "world_seed": cfg.world_seed,
                                  "data_seed": cfg.data_seed}))


def run_one(spec: RunSpec, cfg: SweepConfig) -> dict:
    """Train, sample and score one network; returns its row (JSON-able)."""
    world = gmm_world(spec.dim, seed=cfg.world_seed)
    X = training_set(spec, cfg)
    train = replace(cfg.train, width=spec.width, weight_decay=spec.weight_decay)
    t0, c0 = time.perf_counter(), time.process_time()  # CPU seconds: a cost measure that contention leaves alone
    net, history = train_score_net(X, train)
    t1 = time.perf_counter()
    x, prov = draw_samples(NetDenoiser(net), spec.dim, range(cfg.n_samples), cfg.sampler, dtype=torch.float32)
    ll = world.log_prob(x.double())
    return {**asdict(spec), "key": spec.key, "distinct": spec.n - spec.dup, "params": count_params(net),
            "memorization_ratio": memorization_ratio(x.double(), X), "loglik_mean": float(ll.mean()),
            "loglik_median": float(ll.median()), "final_loss": history[-1], "train_s": round(t1 - t0, 2),
            "sample_s": round(time.perf_counter() - t1, 2), "cpu_s": round(time.process_time() - c0, 2),
            "train": train.to_dict(), "sampler": prov["sampler"], "settings": run_settings(spec, cfg)}


def _run_task(spec: RunSpec, cfg: SweepConfig, state=None) -> dict:
    return run_one(spec, cfg)


def run_sweep(cfg: SweepConfig, out: str | Path, *, progress=None, executor=None) -> dict:
    """Run every panel of ``cfg`` (resuming from ``out/rows``) and return the summary dict.

    ``progress(done, total, key)`` is called after each run when given. The runs are units
    (:mod:`diffmem.executor`): on ``executor`` (default: here, one after the other), each row written as it arrives."""
    rows_dir = Path(out) / "rows"
    remove_stale_tmp(rows_dir)
    panels = plan(cfg)
    unique = list({s.key: s for specs in panels.values() for s in specs}.values())
    t0, tally = time.perf_counter(), {"computed": 0, "reused": 0, "recomputed": 0}
    units = [Unit(rows_dir / f"{spec.key}.json", run_settings(spec, cfg), partial(_run_task, spec, cfg))
             for spec in unique]
    # a row made under other settings (e.g. an earlier --quick run into this folder) is recomputed, never reused
    got = run_units(units, tally, executor=executor, on_unit=None if progress is None else lambda u: progress(
        tally["computed"] + tally["reused"], len(units), u.path.stem))
    rows = {spec.key: row for spec, row in zip(unique, got, strict=True)}
    summary = {"config": cfg.to_dict(), "panels": {p: [rows[s.key] for s in specs] for p, specs in panels.items()},
               "wall_s": round(time.perf_counter() - t0, 1),
               "run_s_total": round(sum(r["train_s"] + r["sample_s"] for r in rows.values()), 1),
               "cpu_s_total": round(sum(r["cpu_s"] for r in rows.values()), 1)}
    summary["findings"] = findings(summary["panels"], cfg)
    return summary


def _series(rows, by: str, x: str, y: str = "memorization_ratio") -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r[by], []).append((r[x], r[y]))
    return {k: sorted(v) for k, v in out.items()}


def _group(rows, by: str) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault(r[by], []).append(r)
    return out


def findings(panels: dict, cfg: SweepConfig) -> list[str]:
    """Each of the paper's directions stated with the measured numbers (whether or not it appears)."""
    out = []
    for n, pts in _series(panels["size"], "n", "params").items():
        (p0, m0), (p1, m1) = pts[0], pts[-1]
        verdict = "more parameters -> more memorization" if m1 > m0 else "NOT more memorization with more parameters"
        out.append(f"size, d={cfg.dim}, n={n}: mem {m0:.3f} at {p0} params -> {m1:.3f} at {p1} params ({verdict})")
    for d, pts in _series(panels["n"], "dim", "n").items():
        (n0, m0), (n1, m1) = pts[0], pts[-1]
        verdict = "more data -> less memorization" if m1 < m0 else "NOT less memorization with more data"
        out.append(f"n, d={d}, width {cfg.fixed_width}: mem {m0:.3f} at n={n0} -> {m1:.3f} at n={n1} ({verdict})")
    by_d = {r["dim"]: r["memorization_ratio"] for r in panels["n"] if r["n"] == cfg.n_grid[0]}
    lo, hi = min(by_d), max(by_d)
    verdict = "higher d -> less memorization" if by_d[hi] < by_d[lo] else "NOT less memorization at higher d"
    out.append(f"n={cfg.n_grid[0]}: mem {by_d[lo]:.3f} at d={lo} vs {by_d[hi]:.3f} at d={hi} ({verdict})")
    for panel, by, x in (("size", "n", "width"), ("decay", "n", "weight_decay")):
        for n, rows in _group(panels[panel], by).items():
            best = max(rows, key=lambda r: r["loglik_mean"])
            out.append(f"{panel}, n={n}: " + "; ".join(
                f"{x} {r[x]:g}: mem {r['memorization_ratio']:.2f}, loglik mean {r['loglik_mean']:.1f} / median "
                f"{r['loglik_median']:.1f}" for r in rows) + f" (best mean loglik at {x} {best[x]:g})")
    full, dup, small = panels["dup"]
    out.append(f"duplication: n={full['n']} distinct mem {full['memorization_ratio']:.3f}; n={dup['n']} with "
               f"m={dup['dup']} duplicates mem {dup['memorization_ratio']:.3f}; n-m={small['n']} distinct mem "
               f"{small['memorization_ratio']:.3f} (corollary: duplicated set behaves like n-m)")
    return out

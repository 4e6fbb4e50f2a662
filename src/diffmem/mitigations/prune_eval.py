"""Table-1 metrics of Ye et al. (2025) for a set of generated images, and their mean ± std over runs.

Per run: memorization ratio (1/3 rule on flattened pixels against the model's own training images), FID and
precision/recall (k = 3, Kynkäänniemi et al., 2019) in the features of a given extractor (the project's digits
classifier on digits worlds). Across runs: mean and sample std (ddof = 1, spec §10), keyed as in the issue's
``summary.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import Tensor

__all__ = ["generate", "run_metrics", "summarise", "paired_deltas"]

_KEYS = ("mem_ratio", "fid", "precision", "recall")


def generate(world, n: int, *, seed: int = 0, steps: int = 50, batch: int = 256) -> Tensor:
    """``n`` samples x0 [n, C, H, W] in [−1, 1] from ``world`` through the one loop with its solver and grid,
    without guidance (w = 1); sample i uses seed ``seed + i``. The live ``world.net`` is used, so a pruned net is
    sampled as pruned.

    Text worlds get the empty prompt (unconditional, as the paper's DiT). Class worlds are sampled class-
    conditionally, sample i with label (seed + i) mod C: digits-dit's conditional branch is the one that memorizes
    (≈ 66 % at w = 1, the paper's ≈ 70 %), while its unconditional branch, trained on 10 % of batches, copies
    nothing — an unconditional table would have nothing to reduce."""
    import torch

    from diffmem import Constant, Recorder, SeededNoise, sample

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grid, out = world.grid(steps), []
    classes = world.null_label if world.tokenizer is None else 0
    for i in range(0, n, batch):
        m = min(batch, n - i)
        seeds = list(range(seed + i, seed + i + m))
        cond = world.cond([""] * m) if world.tokenizer is not None else world.cond_labels([s % classes for s in seeds])
        noise = SeededNoise(seeds, dtype=next(world.net.parameters()).dtype)  # a float64 net samples in float64
        trajectory = sample(world.denoiser, noise.randn(world.data.shape), grid, cond, solver=world.solver,
                            guidance=Constant(1.0), recorder=Recorder(keep=()))
        out.append(trajectory.x_0)
    return torch.cat(out).clamp(-1, 1)


def run_metrics(x0: Tensor, train_images: Tensor, real_images: Tensor, features: Callable[[Tensor], Tensor], *,
                k: int = 3) -> dict[str, float]:
    """``{"mem_ratio", "fid", "precision", "recall"}`` of generated ``x0`` [N, C, H, W]; ``real_images`` is the
    reference set of FID and precision/recall, ``train_images`` that of the copy test."""
    from diffmem.evaluation.fid import fid
    from diffmem.evaluation.precision_recall import precision_recall
    from diffmem.similarity.criteria import memorization_ratio

    if x0.shape[1:] != train_images.shape[1:]:
        raise ValueError(f"generated images {tuple(x0.shape)} and training images {tuple(train_images.shape)} "
                         "differ in shape")
    real, fake = features(real_images), features(x0)
    precision, recall = precision_recall(real, fake, k=k)
    return {"mem_ratio": memorization_ratio(x0.flatten(1), train_images.flatten(1)), "fid": fid(real, fake),
            "precision": precision, "recall": recall}


def summarise(runs: Mapping[str, Sequence[Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Per method: ``mem_ratio_mean/_std``, ``fid_mean/_std``, ``precision_mean/_std``, ``recall_mean/_std``
    over its runs (std with ddof = 1; NaN for a single run)."""
    out = {}
    for method, rows in runs.items():
        if not rows:
            raise ValueError(f"method {method!r} has no runs")
        out[method] = {"runs": len(rows)}
        for key in _KEYS:
            values = np.array([float(r[key]) for r in rows])
            out[method][f"{key}_mean"] = float(values.mean())
            out[method][f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return out


def paired_deltas(runs: Mapping[str, Sequence[Mapping[str, float]]], baseline: str = "original"
                  ) -> dict[str, dict[str, float]]:
    """Per method: mean and sample std over seeds of (method − ``baseline``) for each metric, paired by seed.

    Run s of every method samples with the same seeds, so most of the seed-to-seed spread of FID (its std over runs
    is several points here) cancels in the paired difference; "no worse than the original" is read from these.
    Methods sharing no seed with the baseline are left out."""
    base = {int(r["seed"]): r for r in runs.get(baseline, ())}
    out = {}
    for method, rows in runs.items():
        pairs = [(r, base[int(r["seed"])]) for r in rows if method != baseline and int(r["seed"]) in base]
        if not pairs:
            continue
        out[method] = {"paired_runs": len(pairs)}
        for key in _KEYS:
            d = np.array([float(r[key]) - float(b[key]) for r, b in pairs])
            out[method][f"{key}_delta_mean"] = float(d.mean())
            out[method][f"{key}_delta_std"] = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
    return out

"""``bench_report``: graded copy rates of a world with a duplication ladder (``digits-bench``).

For each guidance weight w, N samples per manifest prompt (sample j of every prompt uses seed ``seed + j``), then:

* ladder prompts: a sample copies when the 1/3 ratio rule holds over the distinct training images and the nearest
  one is the prompt's paired image (Ye et al., 2025's rule; Carlini et al., 2023 and Somepalli et al., 2023 found
  copying rising with the number of duplicates m); ``by_duplication`` has one row per (m, regime, w), with the
  mean SSIM and RMS L2 to the paired image as graded severities;
* template prompts: the rule on the template region against the same region of every training image, nearest =
  the template (Webster, 2023's template verbatims), beside the rule on the rest and on the whole image
  (:func:`diffmem.similarity.local.local_copy`);
* negatives: copies of *any* training image per subtype; held-out prompts also whether a sample is within 1/3 of
  its own untrained image before any training image;
* alignment: the digits classifier on each 8×8 cell against the digit the caption names there.

Writes ``summary.json``, ``manifest.jsonl`` (with the ground truth and split), ``templates.json`` (masks),
``bench_report.{json,safetensors}`` (samples and per-sample copy labels) and labelled ``grid_w<w>.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffmem.io import write_json
from diffmem.results import Provenance
from diffmem.similarity.criteria import COPY_RATIO, nn_ratio
from diffmem.similarity.local import local_copy
from diffmem.similarity.ssim import ssim
from diffmem.worlds.bench import CELL, NEGATIVE_KINDS, REGIMES, template_mask
from diffmem.worlds.data import write_manifest
from diffmem.worlds.grids import save_labelled_grid
from diffmem.worlds.report import WorldReport, finish_units, resumable_samples, start_report
from diffmem.worlds.world import World

__all__ = ["BENCH_WEIGHTS", "bench_rows", "judge", "summarize", "bench_report"]

BENCH_WEIGHTS = (1.0, 3.0, 7.5)


def bench_rows(prompts, quick: bool, per_stratum: int = 2) -> list[dict]:
    """All manifest rows, or ``per_stratum`` per (kind, m, regime, template) in quick mode."""
    if not quick:
        return list(prompts)
    seen: dict[tuple, int] = {}
    out = []
    for r in prompts:
        key = (r["kind"], r["m"], r["regime"], r["template"])
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= per_stratum:
            out.append(r)
    return out


def judge(world: World, rows: list[dict], x0: Tensor) -> dict[str, Tensor]:
    """Per-sample labels [P, n] (bool) and severities (float; NaN where a prompt has no paired image)."""
    data, (P, n) = world.data, x0.shape[:2]
    flat = x0.flatten(0, 1)
    refs, ref_ids = world.train_images(), data.train_image_ids
    ratio, nearest = nn_ratio(flat.flatten(1), refs.flatten(1))
    near_id = ref_ids[nearest].view(P, n)
    copy_any = (ratio <= COPY_RATIO).view(P, n)
    paired = torch.tensor([r["paired_ids"][0] if r["paired_ids"] else -1 for r in rows])
    has = paired >= 0
    target = data.images[paired.clamp_min(0)].repeat_interleave(n, 0)
    d_own = (flat - target).flatten(1).norm(dim=1).view(P, n)
    d_train = torch.cdist(flat.flatten(1), refs.flatten(1)).min(1).values.view(P, n)
    nan = torch.full((P, n), float("nan"))
    out = {"copy_any": copy_any, "copy_paired": copy_any & (near_id == paired[:, None]),
           # an untrained image "copied": within 1/3 of it before any training image
           "copy_untrained": (d_own <= COPY_RATIO * d_train) & has[:, None],
           "ssim": torch.where(has[:, None], ssim(flat, target, win_size=7).view(P, n), nan),
           "l2": torch.where(has[:, None], d_own / flat[0].numel() ** 0.5, nan)}
    out.update(_template_labels(world, rows, x0, refs))
    return out


def _template_labels(world: World, rows, x0: Tensor, refs: Tensor) -> dict[str, Tensor]:
    P, n = x0.shape[:2]
    labels = {k: torch.zeros(P, n, dtype=torch.bool) for k in ("region", "rest", "whole", "region_only")}
    for g in sorted({r["template"] for r in rows if r["template"] is not None}):
        sel = torch.tensor([r["template"] == g for r in rows])
        src = world.data.images[next(r["paired_ids"][0] for r in rows if r["template"] == g)]
        res = local_copy(x0[sel].flatten(0, 1), refs, template_mask(world.data, g), src)
        for k, v in res.items():
            labels[k][sel] = v.view(-1, n)
    return labels


def _alignment(rows, x0: Tensor, clf) -> Tensor | None:
    """[P, n] share of the 4 cells the digits classifier reads as the digit the caption names there."""
    if clf is None:
        return None
    P, n, C = x0.shape[:3]
    cells = x0.view(P, n, C, 2, CELL, 2, CELL).permute(0, 1, 3, 5, 2, 4, 6).reshape(-1, C, CELL, CELL)
    pred = clf.predict(cells).view(P, n, 4)
    want = torch.tensor([r["digits"] for r in rows])[:, None, :]
    return (pred == want).double().mean(2)


def _mean(x: Tensor, sel) -> float | None:
    x = x[torch.as_tensor(sel, dtype=torch.bool)].double()
    x = x[~torch.isnan(x)]
    return float(x.mean()) if x.numel() else None


def summarize(rows: list[dict], labels: dict[str, Tensor], w: float, align: Tensor | None) -> dict:
    """One weight's aggregates: ``by_duplication`` rows, template and negative copy rates, alignment."""
    kinds = [r["kind"] for r in rows]
    ladder = []
    for regime in REGIMES:
        for m in sorted({r["m"] for r in rows if r["kind"] == "ladder"}):
            sel = [k == "ladder" and r["m"] == m and r["regime"] == regime for k, r in zip(kinds, rows, strict=True)]
            if any(sel):
                ladder.append({"m": m, "regime": regime, "w": w, "copy_rate": _mean(labels["copy_paired"], sel),
                               "n_prompts": sum(sel), "copy_any_rate": _mean(labels["copy_any"], sel),
                               "ssim": _mean(labels["ssim"], sel), "l2": _mean(labels["l2"], sel)})
    tmpl = [k == "template" for k in kinds]
    neg = {s: [k == s for k in kinds] for s in NEGATIVE_KINDS}
    return {"by_duplication": ladder,
            "template": {"masked": _mean(labels["region"], tmpl), "rest": _mean(labels["rest"], tmpl),
                         "whole": _mean(labels["whole"], tmpl), "region_only": _mean(labels["region_only"], tmpl),
                         "n_prompts": sum(tmpl)},
            "negative": {**{s: _mean(labels["copy_any"], v) for s, v in neg.items()},
                         "all": _mean(labels["copy_any"], [k in NEGATIVE_KINDS for k in kinds]),
                         "heldout_own_image": _mean(labels["copy_untrained"], neg["heldout"]),
                         "nonduplicated_own_image": _mean(labels["copy_paired"], neg["nonduplicated"])},
            "alignment": None if align is None else {"all": _mean(align, [True] * len(rows)), **{
                k: _mean(align, [kk == k for kk in kinds]) for k in dict.fromkeys(kinds)}}}


def ladder_trend(rows: list[dict]) -> dict:
    """Per regime: Spearman ρ of copy rate against m, whether the rate never falls as m grows, and the number of
    distinct rates strictly between 0 and 1."""
    from scipy.stats import spearmanr

    out = {}
    for regime in REGIMES:
        pts = sorted((r["m"], r["copy_rate"]) for r in rows if r["regime"] == regime)
        if len(pts) < 2:
            continue
        m, rate = np.array(pts, dtype=float).T
        rho = spearmanr(m, rate).statistic if np.ptp(rate) > 0 else None
        out[regime] = {"spearman": None if rho is None else float(rho), "monotone": bool(np.all(np.diff(rate) >= 0)),
                       "levels_in_open_unit": len({round(v, 6) for v in rate if 0 < v < 1})}
    return out


def _grid(world: World, rows, x0: Tensor, labels: dict[str, Tensor], seeds: list[int], path: Path,
          cols: int = 6) -> None:
    """One row per (regime, m) of the ladder, per template group (up to 4) and 2 per negative subtype; first column
    the paired training image; red border = copy of the paired / any training image, orange = template region only."""
    pick = _grid_rows(rows)
    K = min(cols, x0.shape[1])
    tiles = torch.full((len(pick), 1 + K, *x0.shape[2:]), float("nan"))
    marks = np.zeros((len(pick), 1 + K), dtype=np.int64)
    texts = []
    for t, i in enumerate(pick):
        r = rows[i]
        if r["paired_ids"]:
            tiles[t, 0] = world.data.images[r["paired_ids"][0]]
        tiles[t, 1:] = x0[i, :K]
        own = labels["copy_paired"][i, :K] if r["kind"] == "ladder" else labels["copy_any"][i, :K]
        marks[t, 1:] = np.where(own.numpy(), 1, np.where(labels["region_only"][i, :K].numpy(), 2, 0))
        tag = {"ladder": f"m={r['m']} {r['regime']}", "template": f"template {r['template']}"}.get(r["kind"], r["kind"])
        texts.append(f"{tag}: {r['prompt']}")
    save_labelled_grid(path, tiles, texts, ["train"] + [f"seed {s}" for s in seeds[:K]], marks)


def _grid_rows(rows, templates: int = 4) -> list[int]:
    """Row indices of the grid: the first prompt of each (regime, m) and of the first ``templates`` template groups,
    the first two of each negative subtype."""
    taken: dict[tuple, int] = {}
    pick = []
    for i, r in enumerate(rows):
        negative = r["kind"] in NEGATIVE_KINDS
        key = (r["kind"],) if negative else (r["kind"], r["m"], r["regime"], r["template"])
        if taken.get(key, 0) < (2 if negative else 1) and (r["template"] is None or r["template"] < templates):
            taken[key] = taken.get(key, 0) + 1
            pick.append(i)
    return pick


def _classifier():
    try:
        from diffmem.similarity.digits_classifier import load_digits_classifier
    except ImportError as err:
        return None, f"unavailable: {err}"
    clf = load_digits_classifier()
    return clf, {"test_accuracy": float(clf.test_accuracy), "reads": "each 8x8 cell"}


def bench_report(world: World, out: str | Path, *, quick: bool = False, samples: int | None = None,
                 weights=None, steps: int | None = None, seed: int = 0, batch_size: int = 1000,
                 chunk_size: int | None = None, executor=None, progress: bool = False) -> dict:
    """Sample every manifest prompt at each w (default 1, 3, 7.5), judge copies, write the report to ``out``.

    ``quick``: 2 prompts per stratum and 4 samples (default: all prompts, 10 samples); 50 DDIM steps. The samples
    are drawn in units of ``chunk_size`` prompts at one w on ``executor`` (default: here; see
    :func:`~diffmem.worlds.report.resumable_samples`). Returns the summary (``summary.json``)."""
    t0 = time.perf_counter()
    weights = tuple(weights or BENCH_WEIGHTS)
    n, steps = samples or (4 if quick else 10), steps or 50
    if n < 1 or steps < 1:
        raise ValueError(f"need samples >= 1 and steps >= 1, got {n} and {steps}")
    rows, out = bench_rows(world.data.prompts, quick), start_report(out)
    clf, clf_info = _classifier()
    seeds = list(range(seed, seed + n))
    tally = {"computed": 0, "reused": 0, "recomputed": 0}
    drawn = resumable_samples(world, rows, n, steps, weights, seed, batch_size, out / "units", tally=tally,
                              executor=executor, progress=progress, chunk_size=chunk_size)
    per_w, arrays, by_dup = {}, {}, []
    for w in weights:
        x0 = drawn[float(w)]
        labels = judge(world, rows, x0)
        per_w[f"{w:g}"] = summarize(rows, labels, float(w), _alignment(rows, x0, clf))
        by_dup += per_w[f"{w:g}"]["by_duplication"]
        arrays.update({f"w{w:g}": x0, **{f"{k}_w{w:g}": v for k, v in labels.items()}})
        _grid(world, rows, x0, labels, seeds, out / f"grid_w{w:g}.png")
    summary = _summary(world, rows, per_w, by_dup, quick=quick, n=n, steps=steps, seeds=seeds, clf_info=clf_info)
    summary["units"], summary["seconds"] = tally, time.perf_counter() - t0
    prov = Provenance(model=world.denoiser.describe(), solver={"name": repr(world.solver)},
                      grid=world.grid(steps).spec, guidance={"kind": "Constant", "w": list(weights)}, seeds=seeds,
                      extra={"world": world.config.to_dict()})
    write_manifest(out / "manifest.jsonl", rows)
    write_json(out / "templates.json", {"shape": list(world.data.shape), "encoding": "row-major bits, hex",
                                        "masks": world.data.meta["template_masks"],
                                        "cells": world.data.meta["template_cells"]})
    WorldReport(summary, arrays, prov).save(out, "bench_report")
    write_json(out / "summary.json", summary)
    finish_units(out / "units")
    return summary


def _summary(world: World, rows, per_w: dict, by_dup: list, *, quick, n, steps, seeds, clf_info) -> dict:
    count = {k: sum(r["kind"] == k for r in rows) for k in dict.fromkeys(r["kind"] for r in rows)}
    return {
        "world": world.name, "checkpoint": str(world.directory), "weights": [float(w) for w in per_w],
        "samples_per_prompt": n, "steps": steps, "solver": repr(world.solver), "spacing": "trailing", "seeds": seeds,
        "quick": quick, "prompts": count, "n_positive": count.get("ladder", 0) + count.get("template", 0),
        "n_negative": sum(count.get(k, 0) for k in NEGATIVE_KINDS),
        "split": {s: sum(r["split"] == s for r in rows) for s in ("calibration", "evaluation")},
        "copy_rule": "nn ratio <= 1/3 over distinct training images; ladder: the nearest is the paired image; "
                     "template: the same on the template region, nearest region = the template's",
        "by_duplication": by_dup,
        "ladder_trend": {w: ladder_trend(v["by_duplication"]) for w, v in per_w.items()},
        "template_copy_rate": {w: v["template"]["masked"] for w, v in per_w.items()},
        "template": {w: v["template"] for w, v in per_w.items()},
        "negative_copy_rate": {w: v["negative"] for w, v in per_w.items()},
        "alignment": {w: v["alignment"] for w, v in per_w.items()}, "classifier": clf_info,
        "train": {k: world.train_info.get(k) for k in ("steps", "wall_s", "cpu_s", "threads")},
    }

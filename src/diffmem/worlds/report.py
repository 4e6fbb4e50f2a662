"""``world_report``: does the world memorize what was planted, and little else?

For each guidance weight w, N samples per manifest prompt (generation j of every prompt uses seed ``seed + j``)
through :func:`diffmem.sample`, then per prompt kind:

* ``planted_copy_rate``: planted-prompt samples that copy *their paired* image — nearest-neighbour ratio
  ‖x − a₁‖/‖x − a₂‖ ≤ 1/3 over the distinct training images (Ye et al., 2025; duplicates collapsed) and a₁ the
  paired image;
* ``nonplanted_copy_rate`` / ``novel_copy_rate``: samples of those prompts within 1/3 of *any* training image;
* ``template_copy_rate``: template-prompt samples whose template region satisfies the ratio rule against the
  training images' regions with a₁ the template's region (Webster's template copies are partial);
* ``memorization_ratio``: copies among all samples;
* ``alignment``: accuracy of the digits classifier on the digit a prompt names (digits worlds only).

Writes ``summary.json``, ``manifest.jsonl``, ``world_report.{json,safetensors}`` (samples and per-sample copy
verdicts) and ``grid_w<w>.png``.
Kim et al. (2025): memorization should rise with w.

Resumable: the samples of each weight are saved in ``units/`` as they finish, stamped with the settings that made
them (world, prompts, samples, steps, seed, w); a rerun reuses only units of the same settings and deletes
``units/`` once the report is written. A rerun first renames the old summary and result to ``*.stale``, so a
killed run never leaves a complete-looking report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from diffmem.io import (
    check_out_dir,
    claimed_out_dir,
    mark_stale,
    read_arrays,
    read_json,
    remove_stale_tmp,
    write_arrays,
    write_json,
)
from diffmem.progress import progress_bar
from diffmem.results import Provenance, Result
from diffmem.worlds.data import write_manifest
from diffmem.worlds.grids import save_grid
from diffmem.worlds.world import World, load_world

__all__ = ["world_report", "WorldReport", "WEIGHTS", "report_rows", "generate_samples", "start_report",
           "resumable_samples", "finish_units"]

# what a finished report consists of: renamed to *.stale when a rerun starts
FINISHED = ("summary.json", "world_report.json", "world_report.safetensors", "bench_report.json",
            "bench_report.safetensors", "report.html")

WEIGHTS = (0.0, 1.0, 4.0, 7.5)
_KINDS = ("planted", "template", "nonplanted", "novel", "class", "null")


@dataclass(frozen=True)
class WorldReport(Result):
    """The summary plus the samples of each weight (``samples["w7.5"]`` is [P, N, C, H, W]) and the per-sample copy
    verdicts behind its rates (``samples["copy_paired_w7.5"]``, ``copy_any_…``, ``region_only_…``: [P, N] bool) and
    the paired training images (``samples["paired"]``: [P, C, H, W]; ``samples["has_paired"]``: [P] bool)."""

    summary: dict
    samples: dict[str, Tensor]
    provenance: Provenance


def report_rows(prompts, quick: bool, per_kind: int = 8) -> list[dict]:
    """Manifest rows to sample: all of them, or ``per_kind`` of each kind in quick mode."""
    if not quick:
        return list(prompts)
    return [r for k in _KINDS for r in [p for p in prompts if p["kind"] == k][:per_kind]]


def generate_samples(world: World, rows, n: int, steps: int, w: float, seed: int, batch: int) -> Tensor:
    from diffmem import Constant, Recorder, SeededNoise, sample

    grid = world.grid(steps)
    flat = [r for r in rows for _ in range(n)]
    seeds = [seed + j for _ in rows for j in range(n)]
    out = []
    for i in range(0, len(flat), batch):
        noise = SeededNoise(seeds[i:i + batch])
        tr = sample(world.denoiser, noise.randn(world.data.shape), grid, world.cond_for(flat[i:i + batch]),
                    solver=world.solver, guidance=Constant(w), recorder=Recorder(keep=()))
        out.append(tr.x_0)
    return torch.cat(out).clamp(-1, 1).view(len(rows), n, *world.data.shape)


def start_report(out: str | Path) -> Path:
    """Create ``out``, clear a hard kill's temporary files, mark an old report stale."""
    out = check_out_dir(out)
    remove_stale_tmp(out)
    mark_stale(out, FINISHED)
    return out


def resumable_samples(world: World, rows, n: int, steps: int, w: float, seed: int, batch: int, units: Path,
                      tally: dict | None = None) -> Tensor:
    """:func:`generate_samples`, saved under ``units`` and reused by a rerun only when made under the same settings
    (world, prompts, n, steps, seed, w). The samples are written before the settings stamp, which marks the unit
    finished."""
    rows_hash = hashlib.sha256(json.dumps(list(rows), sort_keys=True, default=str).encode()).hexdigest()
    settings = {"world": world.config.to_dict(), "checkpoint": Path(world.directory).name, "rows": rows_hash,
                "samples": n, "steps": steps, "seed": seed, "w": float(w)}
    stamp, arrays = units / f"w{w:g}.json", units / f"w{w:g}.safetensors"
    tally = {} if tally is None else tally
    if stamp.exists() and arrays.exists():
        if read_json(stamp).get("settings") == settings:
            tally["reused"] = tally.get("reused", 0) + 1
            return read_arrays(arrays)["x0"]
        tally["recomputed"] = tally.get("recomputed", 0) + 1
    stamp.unlink(missing_ok=True)  # from here until the new stamp, the unit is unfinished
    x0 = generate_samples(world, rows, n, steps, w, seed, batch)
    write_arrays(arrays, {"x0": x0})
    write_json(stamp, {"settings": settings})
    tally["computed"] = tally.get("computed", 0) + 1
    return x0


def finish_units(units: Path) -> None:
    """The report holds every sample now: the units go."""
    shutil.rmtree(units, ignore_errors=True)


def _classifier(world: World):
    if world.data.shape != (1, 8, 8):
        return None, "not applicable: the digits classifier reads 1×8×8 images"
    try:
        from diffmem.similarity.digits_classifier import load_digits_classifier
    except ImportError as err:
        return None, f"unavailable: {err}"
    clf = load_digits_classifier()
    return clf, {"test_accuracy": float(clf.test_accuracy)}


def _rate(mask: Tensor) -> float | None:
    return float(mask.double().mean()) if mask.numel() else None


def _metrics(world: World, rows, x0: Tensor, clf, labels: dict | None = None) -> dict:
    """The rates of one weight; ``labels`` (when given) receives the per-sample verdicts [P, N] behind them:
    ``copy_any``, ``copy_paired`` (the nearest is the paired image) and ``region_only`` (template region only)."""
    from diffmem.similarity.criteria import COPY_RATIO, nn_ratio

    P, n = x0.shape[:2]
    flat = x0.flatten(0, 1)
    ref_ids = world.data.train_image_ids
    ratio, nearest = nn_ratio(flat, world.data.images[ref_ids])
    copy, near_id = (ratio <= COPY_RATIO).view(P, n), ref_ids[nearest].view(P, n)
    kind = [r["kind"] for r in rows]
    sel = {k: torch.tensor([kk == k for kk in kind], dtype=torch.bool) for k in _KINDS}
    paired = torch.tensor([r["paired_ids"][0] if r["kind"] == "planted" else -1 for r in rows])
    out = {"memorization_ratio": _rate(copy),
           "planted_copy_rate": _rate((copy & (near_id == paired[:, None]))[sel["planted"]]),
           "planted_any_copy_rate": _rate(copy[sel["planted"]]),
           "nonplanted_copy_rate": _rate(copy[sel["nonplanted"]]), "novel_copy_rate": _rate(copy[sel["novel"]]),
           "class_copy_rate": _rate(copy[sel["class"]]), "unconditional_copy_rate": _rate(copy[sel["null"]]),
           "template_copy_rate": None}
    region = _template_copies(world, rows, x0, sel["template"])
    if region is not None:
        out["template_copy_rate"] = _rate(region)
    if labels is not None:
        only = torch.zeros_like(copy)
        if region is not None:
            only[sel["template"]] = region.view(-1, n) & ~copy[sel["template"]]
        labels.update(copy_any=copy, copy_paired=copy & (near_id == paired[:, None]), region_only=only)
    out.update(_alignment(rows, x0, clf))
    return out


def _template_copies(world: World, rows, x0: Tensor, sel: Tensor) -> Tensor | None:
    """[G·N] template-region copies of the template prompts ``sel`` (their paired image's region); None without."""
    from diffmem.similarity.criteria import COPY_RATIO, nn_ratio

    mask = world.data.template_mask
    if mask is None or not bool(sel.any()):
        return None
    refs = world.train_images()[:, mask]
    src = torch.tensor([r["paired_ids"][0] for r, s in zip(rows, sel, strict=True) if s])
    samples = x0[sel]  # [G, n, C, H, W]
    ratio, nearest = nn_ratio(samples.flatten(0, 1)[:, mask], refs)
    same = (refs[nearest] == world.data.images[src][:, mask].repeat_interleave(samples.shape[1], 0)).all(1)
    return (ratio <= COPY_RATIO) & same


def _alignment(rows, x0: Tensor, clf) -> dict:
    labelled = torch.tensor([r["label"] is not None for r in rows], dtype=torch.bool)
    if clf is None or tuple(x0.shape[2:]) != (1, 8, 8) or not bool(labelled.any()):
        return {"alignment": None, "alignment_by_kind": {}}
    pred = clf.predict(x0.flatten(0, 1)).view(x0.shape[:2])
    want = torch.tensor([-1 if r["label"] is None else r["label"] for r in rows])
    hit = pred == want[:, None]
    by_kind = {k: _rate(hit[[i for i, r in enumerate(rows) if r["kind"] == k and r["label"] is not None]])
               for k in _KINDS}
    return {"alignment": _rate(hit[labelled]), "alignment_by_kind": {k: v for k, v in by_kind.items() if v is not None}}


def _paired_images(world: World, rows) -> tuple[Tensor, Tensor]:
    """[P, C, H, W] each prompt's paired training image (planted and template prompts; zeros for the others) and
    [P] bool: whether it has one."""
    has = torch.tensor([r["kind"] in ("planted", "template") for r in rows], dtype=torch.bool)
    out = torch.zeros(len(rows), *world.data.shape)
    for i in has.nonzero().flatten().tolist():
        out[i] = world.data.images[rows[i]["paired_ids"][0]]
    return out, has


def _grid(world: World, rows, x0: Tensor, path: Path, per_kind: int = 8, cols: int = 8) -> None:
    """Rows: up to ``per_kind`` prompts of each kind; first column the paired training image (if one)."""
    pick = [i for k in _KINDS for i in [j for j, r in enumerate(rows) if r["kind"] == k][:per_kind]]
    tiles = torch.full((len(pick), 1 + min(cols, x0.shape[1]), *x0.shape[2:]), float("nan"))
    for t, i in enumerate(pick):
        if rows[i]["kind"] in ("planted", "template"):
            tiles[t, 0] = world.data.images[rows[i]["paired_ids"][0]]
        tiles[t, 1:] = x0[i, : tiles.shape[1] - 1]
    save_grid(path, tiles)


def world_report(world: str | World = "digits-t2i", out: str | Path = "world-report", *, quick: bool = False,
                 samples: int | None = None, weights=None, steps: int | None = None, seed: int = 0,
                 batch_size: int = 1000, progress: bool = True) -> dict:
    """Sample every manifest prompt at each weight, measure copying and alignment, write the report to ``out``.

    ``quick``: 8 prompts per kind and 4 samples (defaults: all prompts, 10 samples), 50 DDIM steps either way:
    with fewer steps strong guidance overshoots (digits-t2i planted copies at w = 7.5: 0.125 with 20 steps, 0.69
    with 30, 1.0 with 50).
    ``weights`` default to :data:`WEIGHTS`. A world with a duplication ladder (``digits-bench``) gets the graded
    report of :func:`diffmem.worlds.bench_report.bench_report` instead (default w = 1, 3, 7.5).
    Trains the world first when no finished checkpoint exists. Returns the summary dict (``summary.json``)."""
    t0 = time.perf_counter()
    # a given value is honoured or refused, never replaced (0 samples must not silently become 10), before any
    # world is loaded or trained
    n = samples if samples is not None else (4 if quick else 10)
    steps = steps if steps is not None else 50
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or isinstance(steps, bool) or \
            not isinstance(steps, int) or steps < 1:
        raise ValueError(f"need samples >= 1, steps >= 1 (integers), got samples={samples!r}, steps={steps!r}")
    world = world if isinstance(world, World) else load_world(world, progress=progress)
    with claimed_out_dir(out):  # a second process writing this folder meanwhile is refused
        return _report(world, out, quick=quick, n=n, weights=weights, steps=steps, seed=seed, batch_size=batch_size,
                       progress=progress, t0=t0)


def _report(world: World, out, *, quick, n, weights, steps, seed, batch_size, progress, t0) -> dict:
    if "ladder" in world.data.meta:
        from diffmem.worlds.bench_report import bench_report

        return bench_report(world, out, quick=quick, samples=n, weights=weights, steps=steps, seed=seed,
                            batch_size=batch_size)
    weights = WEIGHTS if weights is None else weights
    if not weights:
        raise ValueError(f"need samples >= 1, steps >= 1 and some weights, got {n}, {steps}, {weights!r}")
    rows, out = report_rows(world.data.prompts, quick), start_report(out)
    clf, clf_info = _classifier(world)
    per_w, arrays = {}, {}
    with progress_bar(progress) as bar:
        task = bar.add_task("world report: CFG weights", total=len(weights))
        for w in weights:
            x0 = resumable_samples(world, rows, n, steps, float(w), seed, batch_size, out / "units")
            labels: dict = {}
            per_w[f"{w:g}"] = {**_metrics(world, rows, x0, clf, labels), "samples": x0.shape[0] * x0.shape[1]}
            arrays.update({f"w{w:g}": x0, **{f"{k}_w{w:g}": v for k, v in labels.items()}})
            _grid(world, rows, x0, out / f"grid_w{w:g}.png")
            bar.advance(task)
    summary = {"world": world.name, "checkpoint": str(world.directory), "weights": [float(w) for w in weights],
               "samples_per_prompt": n, "steps": steps, "solver": repr(world.solver), "spacing": "trailing",
               "seeds": list(range(seed, seed + n)), "quick": quick,
               "prompts": {k: sum(r["kind"] == k for r in rows) for k in _KINDS if any(r["kind"] == k for r in rows)},
               "copy_rule": "nn ratio <= 1/3 over distinct training images (planted: nearest is the paired image)",
               "classifier": clf_info, "per_w": per_w, "train": {k: world.train_info.get(k) for k in
                                                                 ("steps", "wall_s", "cpu_s", "threads")},
               "seconds": time.perf_counter() - t0}
    prov = Provenance(model=world.denoiser.describe(), solver={"name": repr(world.solver)}, grid=world.grid(steps).spec,
                      guidance={"kind": "Constant", "w": summary["weights"]},
                      seeds=summary["seeds"], extra={"world": world.config.to_dict()})
    arrays["paired"], arrays["has_paired"] = _paired_images(world, rows)
    write_manifest(out / "manifest.jsonl", rows)
    WorldReport(summary, arrays, prov).save(out, "world_report")
    write_json(out / "summary.json", summary)
    finish_units(out / "units")
    return summary

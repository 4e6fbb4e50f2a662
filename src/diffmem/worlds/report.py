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

Resumable and scalable: the sampling is cut into units (one weight × a chunk of prompts; sample j of every prompt
uses seed ``seed + j`` whatever the chunk), each saved in ``units/w<w>/`` as it finishes, stamped with the settings
that made it (world, its prompts, samples, steps, seed, w), and run here or on Ray workers that each load the world
once (:mod:`diffmem.executor`). A rerun reuses only units of the same settings and deletes ``units/`` once the
report is written. A rerun first renames the old summary and result to ``*.stale``, so a killed run never leaves a
complete-looking report.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from diffmem.executor import Unit, make_executor, run_units
from diffmem.io import check_out_dir, claimed_out_dir, mark_stale, remove_stale_tmp, write_json
from diffmem.results import Provenance, Result
from diffmem.worlds.data import write_manifest
from diffmem.worlds.grids import save_grid
from diffmem.worlds.world import World, load_world

__all__ = ["world_report", "WorldReport", "WEIGHTS", "report_rows", "generate_samples", "start_report",
           "sample_plan", "resumable_samples", "finish_units", "world_recipe"]

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


def _sample_task(rows: tuple, n: int, steps: int, w: float, seed: int, batch: int, world: World) -> dict:
    """One unit of :func:`sample_plan` on ``world`` (the worker's own): the chunk's samples [P, N, C, H, W]."""
    return {"arrays": {"x0": generate_samples(world, rows, n, steps, w, seed, batch)}}


def _rows_hash(rows) -> str:
    return hashlib.sha256(json.dumps(list(rows), sort_keys=True, default=str).encode()).hexdigest()


def sample_plan(world: World, rows, n: int, steps: int, weights, seed: int, batch: int, units: Path, *,
                chunk_size: int | None = None) -> list[Unit]:
    """The units of the sampling: each weight × ``chunk_size`` prompts (default: as many as one batch of ``batch``
    samples holds), saved as ``units/w<w>/<k>.{json,safetensors}``. A sample's seed depends on its index j only
    (:func:`generate_samples`), so the samples do not depend on the chunking but for float round-off of the batch."""
    chunk = chunk_size or max(1, batch // n)
    base = {"world": world.config.to_dict(), "checkpoint": Path(world.directory).name, "samples": n, "steps": steps,
            "seed": seed}
    plan = []
    for w in dict.fromkeys(float(w) for w in weights):
        for k in range(0, len(rows), chunk):
            part = tuple(rows[k:k + chunk])
            plan.append(Unit(units / f"w{w:g}" / f"{k // chunk:05d}.json", {**base, "rows": _rows_hash(part), "w": w},
                             partial(_sample_task, part, n, steps, w, seed, batch)))
    return plan


def resumable_samples(world: World, rows, n: int, steps: int, weights, seed: int, batch: int, units: Path, *,
                      tally: dict | None = None, executor=None, progress: bool = False,
                      chunk_size: int | None = None) -> dict[float, Tensor]:
    """:func:`generate_samples` of every weight ({w: [P, N, C, H, W]}), cut into the units of :func:`sample_plan`,
    run on ``executor`` (default: here, in order) and reused by a rerun only when made under the same settings
    (world, the unit's prompts, n, steps, seed, w). A unit's samples are written before its settings stamp, which
    marks it finished."""
    tally = {"computed": 0, "reused": 0, "recomputed": 0} if tally is None else tally
    for key in ("computed", "reused", "recomputed"):
        tally.setdefault(key, 0)
    plan = sample_plan(world, rows, n, steps, weights, seed, batch, units, chunk_size=chunk_size)
    done = run_units(plan, tally, executor=executor, state=world, progress=progress,
                     description="world report: samples")
    per_w: dict[float, list[Tensor]] = {}
    for unit, d in zip(plan, done, strict=True):
        per_w.setdefault(unit.settings["w"], []).append(d["arrays"]["x0"])
    return {w: torch.cat(parts) for w, parts in per_w.items()}


def world_recipe(world: World) -> partial:
    """What a Ray worker runs once to hold ``world``: its checkpoint folder loaded as it is (never trained)."""
    return partial(load_world, str(Path(world.directory).resolve()), progress=False, train=False)


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
                 batch_size: int = 1000, chunk_size: int | None = None, progress: bool = True,
                 workers: int | None = None, address: str | None = None) -> dict:
    """Sample every manifest prompt at each weight, measure copying and alignment, write the report to ``out``.

    ``quick``: 8 prompts per kind and 4 samples (defaults: all prompts, 10 samples), 50 DDIM steps either way:
    with fewer steps strong guidance overshoots (digits-t2i planted copies at w = 7.5: 0.125 with 20 steps, 0.69
    with 30, 1.0 with 50).
    ``weights`` default to :data:`WEIGHTS`. A world with a duplication ladder (``digits-bench``) gets the graded
    report of :func:`diffmem.worlds.bench_report.bench_report` instead (default w = 1, 3, 7.5).
    Trains the world first when no finished checkpoint exists. Returns the summary dict (``summary.json``).

    The samples are drawn in units of ``chunk_size`` prompts at one weight (default: ``batch_size`` samples a unit)
    here, or with ``workers=N`` (a local Ray cluster) / ``address=ADDRESS`` (a running one) on Ray workers that each
    load the world once; the report is the same either way (:mod:`diffmem.executor`)."""
    t0 = time.perf_counter()
    # a given value is honoured or refused, never replaced (0 samples must not silently become 10), before any
    # world is loaded or trained
    n = samples if samples is not None else (4 if quick else 10)
    steps = steps if steps is not None else 50
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or isinstance(steps, bool) or \
            not isinstance(steps, int) or steps < 1:
        raise ValueError(f"need samples >= 1, steps >= 1 (integers), got samples={samples!r}, steps={steps!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be an int >= 1 (prompts per unit), got {chunk_size!r}")
    world = world if isinstance(world, World) else load_world(world, progress=progress)
    with claimed_out_dir(out), make_executor(world_recipe(world), workers=workers, address=address) as executor:
        sampling = {"batch_size": batch_size, "chunk_size": chunk_size, "executor": executor, "progress": progress}
        return _report(world, out, quick=quick, n=n, weights=weights, steps=steps, seed=seed, sampling=sampling,
                       t0=t0)


def _report(world: World, out, *, quick, n, weights, steps, seed, sampling, t0) -> dict:
    if "ladder" in world.data.meta:
        from diffmem.worlds.bench_report import bench_report

        return bench_report(world, out, quick=quick, samples=n, weights=weights, steps=steps, seed=seed, **sampling)
    weights = WEIGHTS if weights is None else weights
    if not weights:
        raise ValueError(f"need samples >= 1, steps >= 1 and some weights, got {n}, {steps}, {weights!r}")
    rows, out = report_rows(world.data.prompts, quick), start_report(out)
    clf, clf_info = _classifier(world)
    tally = {"computed": 0, "reused": 0, "recomputed": 0}
    drawn = resumable_samples(world, rows, n, steps, weights, seed, sampling["batch_size"], out / "units",
                              tally=tally, executor=sampling["executor"], progress=sampling["progress"],
                              chunk_size=sampling["chunk_size"])
    per_w, arrays = {}, {}
    for w in weights:
        x0, labels = drawn[float(w)], {}
        per_w[f"{w:g}"] = {**_metrics(world, rows, x0, clf, labels), "samples": x0.shape[0] * x0.shape[1]}
        arrays.update({f"w{w:g}": x0, **{f"{k}_w{w:g}": v for k, v in labels.items()}})
        _grid(world, rows, x0, out / f"grid_w{w:g}.png")
    summary = {"world": world.name, "checkpoint": str(world.directory), "weights": [float(w) for w in weights],
               "samples_per_prompt": n, "steps": steps, "solver": repr(world.solver), "spacing": "trailing",
               "seeds": list(range(seed, seed + n)), "quick": quick,
               "prompts": {k: sum(r["kind"] == k for r in rows) for k in _KINDS if any(r["kind"] == k for r in rows)},
               "copy_rule": "nn ratio <= 1/3 over distinct training images (planted: nearest is the paired image)",
               "classifier": clf_info, "per_w": per_w, "train": {k: world.train_info.get(k) for k in
                                                                 ("steps", "wall_s", "cpu_s", "threads")},
               "units": tally, "seconds": time.perf_counter() - t0}
    prov = Provenance(model=world.denoiser.describe(), solver={"name": repr(world.solver)}, grid=world.grid(steps).spec,
                      guidance={"kind": "Constant", "w": summary["weights"]},
                      seeds=summary["seeds"], extra={"world": world.config.to_dict()})
    arrays["paired"], arrays["has_paired"] = _paired_images(world, rows)
    write_manifest(out / "manifest.jsonl", rows)
    WorldReport(summary, arrays, prov).save(out, "world_report")
    write_json(out / "summary.json", summary)
    finish_units(out / "units")
    return summary

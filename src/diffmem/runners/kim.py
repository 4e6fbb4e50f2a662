"""The Kim et al. (2025) study as a job: build the subject, run the study, save result, summary and figures.

``summary.json`` holds the flat :class:`~diffmem.analyses.kim_summary.KimSummary` keys plus ``wall_seconds``,
``quick`` and the provenance; ``kimresult.json``/``.safetensors`` every per-prompt array; F1–F6 the figures
(PNG, rendered from the saved result; skipped without matplotlib).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

from diffmem.adapters.subject import diffusers_subject
from diffmem.analyses.kim import KimConfig, KimResult, KimSummary, run_kim
from diffmem.io import write_json
from diffmem.reports.kim_figures import render_kim_figures
from diffmem.results import Record
from diffmem.subject import Subject
from diffmem.worlds.bench import template_mask
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import World, load_world

__all__ = ["KIM_PRESETS", "KimRun", "kim_world_subject", "graded_world_subject", "run_kim_job", "analyze_kim"]

KIM_PRESETS = {
    "quick": {"n_seeds": 4, "draws": 8, "sweep": (1.0, 4.0, 7.5), "n_boot": 500},
    "full": {"n_seeds": 10, "draws": 32, "sweep": (1.0, 3.0, 5.0, 7.5, 10.0), "n_boot": 2000},
    # a graded world's evaluation split: digits-bench, 135 prompts, 736 s wall / 274 CPU-s on one thread
    # (load ~10 on 2 cores)
    "graded": {"n_seeds": 6, "draws": 16, "sweep": (1.0, 3.0, 7.5), "n_boot": 1000},
}
QUICK_PER_KIND = 8  # prompts of each kind from a world in the quick preset
GRADED_NEGATIVES = 40  # negatives with a paired image in a graded subject, half of each paired subtype
PAIRED_NEGATIVES = ("nonduplicated", "heldout")  # "novel" captions have no paired image: no D1/D2, no severity


@dataclass(frozen=True)
class KimRun(Record):
    """What one run of the study reports (``summary.json``): the summary, its cost, preset and provenance."""

    summary: KimSummary
    wall_seconds: float
    quick: bool
    provenance: dict

    def to_dict(self) -> dict:
        return {**self.summary.to_dict(), "wall_seconds": self.wall_seconds, "quick": self.quick,
                "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: dict) -> KimRun:
        return cls(KimSummary.from_dict(d), d["wall_seconds"], d["quick"], d["provenance"])


def kim_world_subject(world: World, *, steps: int = 50, per_kind: int | None = None,
                      kinds: tuple[str, ...] = ("planted", "nonplanted")) -> Subject:
    """The prompts of ``kinds`` of an embedded world that have a paired training image (at most ``per_kind`` of
    each, in manifest order): the subject of the study."""
    subject = world_subject(world, steps=steps, kinds=kinds, per_kind=per_kind)
    subject = subject.select(ids=[p.id for p in subject.prompts if p.x is not None])
    if len(subject.prompts) < 3:
        raise ValueError(f"world {world.name!r} has only {len(subject.prompts)} paired prompts of kinds {kinds}")
    return subject


def graded_world_subject(world: World, *, steps: int = 50, split: str | None = "evaluation",
                         negatives: int = GRADED_NEGATIVES, per_stratum: int | None = None) -> Subject:
    """The graded prompt set of a world with a duplication ladder: every ladder prompt (each rung m and caption
    regime), every template prompt (with its region mask in ``meta["template_mask"]``) and ``negatives`` prompts
    with a paired image (the first of each of non-duplicated training captions and held-out captions, in manifest
    order), of one ``split`` (None: both); ``per_stratum`` caps each (kind, m, regime) stratum.

    Novel prompts are skipped: no image is paired with them, so D1/D2 and the paired severities are undefined."""
    subject = world_subject(world, steps=steps)
    take, seen = [], {}
    for p in subject.prompts:
        key = (p.kind, p.meta.get("m"), p.meta.get("regime"), p.meta.get("template") is not None)
        cap = negatives // len(PAIRED_NEGATIVES) if p.kind in PAIRED_NEGATIVES else None
        cap = cap if per_stratum is None else min(per_stratum, cap if cap is not None else per_stratum)
        ok = p.x is not None and (p.kind in ("ladder", "template", *PAIRED_NEGATIVES))
        if ok and (split is None or p.meta.get("split") == split) and (cap is None or seen.get(key, 0) < cap):
            seen[key] = seen.get(key, 0) + 1
            meta = p.meta if p.kind != "template" else {**p.meta,
                                                       "template_mask": template_mask(world.data, p.meta["template"])}
            take.append(replace(p, meta=meta))
    if not any(p.kind == "ladder" for p in take):
        raise ValueError(f"world {world.name!r} has no ladder prompts in split {split!r}: it is not a graded world")
    skipped = sum(p.kind == "novel" and split in (None, p.meta.get("split")) for p in subject.prompts)
    info = {**subject.info, "selection": {"split": split, "negatives": negatives, "per_stratum": per_stratum,
                                          "skipped": {"novel": skipped},
                                          "reason": "novel prompts have no paired training image"}}
    return replace(subject, prompts=tuple(take), info=info)


def is_graded(world: World) -> bool:
    """Whether the world's manifest has a duplication ladder."""
    return any(r["kind"] == "ladder" for r in world.data.prompts)


def run_kim_job(subject: Subject, out: str | Path, *, quick: bool = False, primary: str | None = None,
                progress: bool = True, preset: str | None = None) -> KimRun:
    """Run the study on ``subject`` in ``preset`` (default: quick or full); save result, summary and figures into
    ``out``."""
    from rich.progress import Progress

    preset = preset or ("quick" if quick else "full")
    if preset not in KIM_PRESETS:
        raise ValueError(f"unknown Kim preset {preset!r}; have {sorted(KIM_PRESETS)}")
    cfg = KimConfig(**KIM_PRESETS[preset], primary=primary or "ssim")
    out = Path(out)
    start = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("kim analyses", total=len(subject.prompts))
        res = run_kim(subject, cfg, progress=lambda i: bar.advance(task))
    res.save(out)
    run = KimRun(res.summary, round(time.perf_counter() - start, 1), quick, res.to_dict()[0]["provenance"])
    write_json(out / "summary.json", run.to_dict())
    try:
        render_kim_figures(KimResult.load(out), out)
    except ImportError:  # matplotlib is the optional ``plots`` extra
        pass
    return run


def analyze_kim(out: str | Path, *, world: str | None = None, model: str | Path | None = None,
                model_kind: str = "sd", prompts: str | Path | None = None, steps: int = 50,
                per_kind: int | None = None, primary: str | None = None, quick: bool = False,
                progress: bool = True) -> KimRun:
    """``diffmem analyze kim``: the study on an embedded world (default ``digits-t2i``) or on a local diffusers
    ``model`` with a ``prompts`` manifest (JSONL of prompt + paired image).

    A graded world (with a duplication ladder, e.g. ``digits-bench``) runs on its graded prompt set
    (:func:`graded_world_subject`, evaluation split) in the ``graded`` preset, or with ``quick`` on one prompt per
    stratum in the quick preset; ``per_kind`` caps each stratum."""
    if model is not None:
        if prompts is None:
            raise ValueError("a diffusers model needs a prompt manifest (prompt + paired image per line)")
        subject = diffusers_subject(model, prompts, steps=steps, kind=model_kind)
    else:
        w = load_world(world or "digits-t2i", progress=progress)
        if is_graded(w):
            subject = graded_world_subject(w, steps=steps, negatives=4 if quick else GRADED_NEGATIVES,
                                           per_stratum=per_kind if per_kind is not None else (1 if quick else None))
            return run_kim_job(subject, out, quick=quick, primary=primary, progress=progress,
                               preset="quick" if quick else "graded")
        per_kind = per_kind if per_kind is not None else (QUICK_PER_KIND if quick else None)
        subject = kim_world_subject(w, steps=steps, per_kind=per_kind)
    return run_kim_job(subject, out, quick=quick, primary=primary, progress=progress)

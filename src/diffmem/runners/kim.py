"""The Kim et al. (2025) study as a job: build the subject, run the study, save result, summary and figures.

``summary.json`` holds the flat :class:`~diffmem.analyses.kim_summary.KimSummary` keys plus ``wall_seconds``,
``quick`` and the provenance; ``kimresult.json``/``.safetensors`` every per-prompt array; F1–F6 the figures
(PNG, rendered from the saved result; skipped without matplotlib).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from diffmem.adapters.subject import diffusers_subject
from diffmem.analyses.kim import KimConfig, KimResult, KimSummary, run_kim
from diffmem.io import write_json
from diffmem.reports.html import finish_report
from diffmem.reports.kim_figures import render_kim_figures
from diffmem.results import Record
from diffmem.subject import Subject
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import World, load_world

__all__ = ["KIM_PRESETS", "KimRun", "kim_world_subject", "run_kim_job", "analyze_kim"]

KIM_PRESETS = {
    "quick": {"n_seeds": 4, "draws": 8, "sweep": (1.0, 4.0, 7.5), "n_boot": 500},
    "full": {"n_seeds": 10, "draws": 32, "sweep": (1.0, 3.0, 5.0, 7.5, 10.0), "n_boot": 2000},
}
QUICK_PER_KIND = 8  # prompts of each kind from a world in the quick preset


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


def run_kim_job(subject: Subject, out: str | Path, *, quick: bool = False, primary: str | None = None,
                progress: bool = True) -> KimRun:
    """Run the study on ``subject`` in the quick or full preset; save result, summary and figures into ``out``."""
    from rich.progress import Progress

    cfg = KimConfig(**KIM_PRESETS["quick" if quick else "full"], primary=primary or "ssim")
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
    finish_report(out)
    return run


def analyze_kim(out: str | Path, *, world: str | None = None, model: str | Path | None = None,
                model_kind: str = "sd", prompts: str | Path | None = None, steps: int = 50,
                per_kind: int | None = None, primary: str | None = None, quick: bool = False,
                progress: bool = True) -> KimRun:
    """``diffmem analyze kim``: the study on an embedded world (default ``digits-t2i``) or on a local diffusers
    ``model`` with a ``prompts`` manifest (JSONL of prompt + paired image)."""
    if model is not None:
        if prompts is None:
            raise ValueError("a diffusers model needs a prompt manifest (prompt + paired image per line)")
        subject = diffusers_subject(model, prompts, steps=steps, kind=model_kind)
    else:
        per_kind = per_kind if per_kind is not None else (QUICK_PER_KIND if quick else None)
        subject = kim_world_subject(load_world(world or "digits-t2i", progress=progress), steps=steps,
                                    per_kind=per_kind)
    return run_kim_job(subject, out, quick=quick, primary=primary, progress=progress)

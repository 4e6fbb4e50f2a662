"""Kim, Kim & Lee (2025)'s revised theory as a job: build the subject, test the seven results, save and render.

Files in the output folder: ``summary.json`` (:class:`~diffmem.analyses.kim_theory_result.KimTheorySummary` with
``wall_seconds``, ``quick`` and the provenance), ``kimtheoryresult.json``/``.safetensors`` (per-prompt rows, per-step
arrays, Lemma 2's exact curve), ``prompts.csv`` (one row per prompt), the figures (PNG, rendered from the saved
result) and ``report.html``. While it runs, ``units/chunk-NNNNN.json``/``.safetensors`` hold each finished chunk of
prompts: a killed run resumes from them and they are deleted once the result is saved.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from diffmem.analyses.kim_theory_result import KimTheoryConfig, KimTheoryResult, TheoryPrompt, run_kim_theory
from diffmem.detectors.harness import write_csv
from diffmem.detectors.labels import planted_label
from diffmem.io import claim_out_dir, mark_stale, remove_stale_tmp, write_json
from diffmem.progress import progress_bar
from diffmem.reports.kim_theory_figures import render_kim_theory_figures
from diffmem.runners.kim import finish_job, graded_world_subject, is_graded, kim_model_subject, kim_world_subject
from diffmem.subject import Subject
from diffmem.worlds.world import load_world

__all__ = ["KIM_THEORY_PRESETS", "run_kim_theory_job", "analyze_kim_theory"]

KIM_THEORY_PRESETS = {"quick": {"n_seeds": 4, "draws": 16}, "full": {"n_seeds": 8, "draws": 64}}


def run_kim_theory_job(subject: Subject, out: str | Path, *, quick: bool = False, progress: bool = True,
                       **overrides) -> dict:
    """Test the results on ``subject`` (``overrides``: :class:`KimTheoryConfig` fields) and save everything into
    ``out``, resuming from the chunks in ``out/units`` (deleted at the end); returns the summary as written to
    ``summary.json`` with the tally of ``units`` computed, reused and recomputed."""
    cfg = KimTheoryConfig(**{**KIM_THEORY_PRESETS["quick" if quick else "full"], **overrides})
    out = claim_out_dir(out)
    remove_stale_tmp(out)
    mark_stale(out, ["summary.json"])
    start, tally = time.perf_counter(), {"computed": 0, "reused": 0, "recomputed": 0}
    with progress_bar(progress) as bar:
        task = bar.add_task("kim theory: prompts")
        res = run_kim_theory(subject, cfg, progress=lambda k, n: bar.update(task, completed=k, total=n),
                             planted=planted_label, units=out / "units", tally=tally)
    res.save(out)
    columns = [f.name for f in dataclasses.fields(TheoryPrompt)]
    write_csv(out / "prompts.csv", [dataclasses.asdict(r) for r in res.prompts], columns)
    summary = {**res.summary.to_dict(), "wall_seconds": round(time.perf_counter() - start, 1), "quick": quick,
               "units": tally, "config": dataclasses.asdict(cfg), "provenance": res.to_dict()[0]["provenance"]}
    write_json(out / "summary.json", summary)
    finish_job(out, lambda: render_kim_theory_figures(KimTheoryResult.load(out), out))
    return summary


def analyze_kim_theory(out: str | Path, *, world: str | None = None, model: str | Path | None = None,
                       model_kind: str = "sd", prompts: str | Path | None = None, steps: int = 50,
                       quick: bool = False, progress: bool = True, device: str = "cpu", dtype: str = "float32",
                       **overrides) -> dict:
    """``diffmem analyze kim-theory``: on an embedded world (default ``digits-bench``; a graded world runs its
    evaluation split, ``quick``: one prompt per stratum) or on a local diffusers ``model`` with a ``prompts``
    manifest whose images are the training law (the authors' recovered targets)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {steps!r}")
    if model is not None:
        if world is not None:
            raise ValueError("--world and --model exclude each other; give one")
        if prompts is None:
            raise ValueError("--model needs --prompts MANIFEST.jsonl (each prompt with its training image)")
        if device == "auto":  # the natural path for a real model is the GPU, when there is one
            device = "cuda" if torch.cuda.is_available() else "cpu"
        subject = kim_model_subject(model, prompts, kind=model_kind, steps=steps, device=device, dtype=dtype, refs=None)
    else:
        if prompts is not None:
            raise ValueError("--prompts goes with --model; a --world brings its own prompts")
        w = load_world(world or "digits-bench", progress=progress)
        if is_graded(w):
            subject = graded_world_subject(w, steps=steps, negatives=4 if quick else 40,
                                           per_stratum=1 if quick else None)
        else:
            subject = kim_world_subject(w, steps=steps, per_kind=8 if quick else None)
    return run_kim_theory_job(subject, out, quick=quick, progress=progress, **overrides)

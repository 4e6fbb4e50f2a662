"""The Kim et al. (2025) study as a job: build the subject, run the study, save result, summary and figures.

Files in the output folder: ``summary.json`` (the flat :class:`~diffmem.analyses.kim_summary.KimSummary` keys —
absent with fewer than 3 prompts with a training image — plus the prompts without one, what was skipped and why,
``wall_seconds``, ``quick`` and the provenance); ``kimresult.json``/``.safetensors`` (every per-prompt array);
F1–F6 (PNG figures rendered from the saved result; skipped without matplotlib or without a summary). While
running, ``units/prompt-NNNNN.json``/``.safetensors`` hold each finished prompt: a killed run resumes from them and
a finished run deletes them.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import torch

from diffmem.adapters.subject import adapter_subject, load_adapter, model_device, read_manifest
from diffmem.analyses.kim import KimConfig, KimResult, KimSummary, run_kim
from diffmem.executor import make_executor
from diffmem.io import claim_out_dir, mark_stale, remove_stale_tmp, write_json
from diffmem.progress import progress_bar
from diffmem.reports.html import finish_report
from diffmem.reports.kim_figures import render_kim_figures
from diffmem.results import Record
from diffmem.subject import Subject
from diffmem.worlds.bench import template_mask
from diffmem.worlds.custom import load_collection
from diffmem.worlds.subject import check_world_placement, world_subject
from diffmem.worlds.world import World, load_world

__all__ = ["KIM_PRESETS", "KimRun", "kim_world_subject", "kim_model_subject", "graded_world_subject", "run_kim_job",
           "analyze_kim", "load_references", "finish_job"]

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
    """What one run of the study reports (``summary.json``): the summary (None with fewer than 3 prompts with a
    training image), the prompts without one (id, kind, self-referenced D1, copy share of references), what was
    skipped and why, the cost, preset and provenance."""

    summary: KimSummary | None
    wall_seconds: float
    quick: bool
    provenance: dict
    selfref: tuple = ()
    skipped: dict | None = None

    def to_dict(self) -> dict:
        return {**(self.summary.to_dict() if self.summary else {}), "selfref": list(self.selfref),
                "skipped": self.skipped or {}, "wall_seconds": self.wall_seconds, "quick": self.quick,
                "provenance": self.provenance}

    @classmethod
    def from_dict(cls, d: dict) -> KimRun:
        summary = KimSummary.from_dict(d) if "n_prompts" in d else None
        return cls(summary, d["wall_seconds"], d["quick"], d["provenance"], tuple(d.get("selfref", ())),
                   d.get("skipped") or {})


def kim_world_subject(world: World, *, steps: int = 50, per_kind: int | None = None,
                      kinds: tuple[str, ...] = ("planted", "nonplanted")) -> Subject:
    """The prompts of ``kinds`` of an embedded world that have a paired training image (at most ``per_kind`` of
    each, in manifest order): the subject of the study."""
    subject = world_subject(world, steps=steps, kinds=kinds, per_kind=per_kind)
    subject = subject.select(ids=[p.id for p in subject.prompts if p.x is not None])
    if len(subject.prompts) < 3:
        raise ValueError(f"world {world.name!r} has only {len(subject.prompts)} paired prompts of kinds {kinds}")
    return subject


def _selfref_rows(res: KimResult) -> tuple:
    return tuple({"id": s.id, "kind": s.kind, "D1_selfref": s.D1_selfref, "D2_selfref": s.D2_selfref,
                  "collapse_x_t": s.collapse_x_t, "copy_rate_refs": s.copy_rate_refs} for s in res.selfref)


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
                progress: bool = True, preset: str | None = None, executor=None, **overrides) -> KimRun:
    """Run the study on ``subject`` in ``preset`` (default: quick or full; ``overrides``: KimConfig fields, e.g.
    ``n_seeds``, ``guidance``); resume from ``out/units``; save result, summary and figures into ``out``; delete the
    units. The prompts run on ``executor`` (:mod:`diffmem.executor`; default: here)."""
    preset = preset or ("quick" if quick else "full")
    if preset not in KIM_PRESETS:
        raise ValueError(f"unknown Kim preset {preset!r}; have {sorted(KIM_PRESETS)}")
    cfg = KimConfig(**{**KIM_PRESETS[preset], **overrides}, primary=primary or "ssim")
    out = claim_out_dir(out)  # a second process writing this folder is refused
    remove_stale_tmp(out)
    mark_stale(out, ["summary.json"])  # a killed rerun must not leave the old summary beside new results
    start = time.perf_counter()
    with progress_bar(progress) as bar:
        task = bar.add_task("kim analyses: prompts")
        res = run_kim(subject, cfg, units=out / "units", executor=executor,
                      progress=lambda k, todo: bar.update(task, completed=k, total=todo))
    res.save(out)
    run = KimRun(res.summary, round(time.perf_counter() - start, 1), quick, res.to_dict()[0]["provenance"],
                 _selfref_rows(res), dict(res.skipped))
    write_json(out / "summary.json", run.to_dict())
    finish_job(out, (lambda: render_kim_figures(KimResult.load(out), out)) if res.summary is not None else None)
    return run


def finish_job(out: Path, render=None) -> None:
    """The end of an analysis job whose result is saved: its figures (``render()``; skipped without matplotlib,
    the optional ``plots`` extra), ``out/units`` removed (the result holds every prompt now), the report."""
    try:
        if render is not None:
            render()
    except ImportError:
        pass
    shutil.rmtree(out / "units", ignore_errors=True)
    finish_report(out)


def load_references(path: str | Path, shape: tuple[int, ...], encode=None) -> torch.Tensor:
    """Reference images (a folder of PNG/JPEG or an .npz with ``images``) as states of the subject: resized to the
    pixel ``shape`` [C, H, W] and, for a latent model, encoded with ``encode``."""
    images = load_collection(path, image_size=shape[-1], grey=shape[0] == 1)[0].float()
    if images.shape[1:] != tuple(shape):
        raise ValueError(f"--refs {str(path)!r}: images {tuple(images.shape[1:])} do not match the model's "
                         f"{tuple(shape)}; give square images")
    if len(images) < 2:
        raise ValueError(f"--refs {str(path)!r} holds {len(images)} image(s); the 1/3 rule needs at least 2")
    return images if encode is None else torch.cat([encode(b) for b in images.split(16)])


def kim_model_subject(model, prompts, *, kind: str, steps: int, device: str, dtype: str, refs) -> Subject:
    """A local diffusers model with a prompt manifest (images optional) as the subject of the Kim et al. analyses,
    the model on ``device`` (``auto``: CUDA when torch sees it, resolved here — in a Ray worker, its own GPU) in
    ``dtype``; the paired latents stay float32."""
    rows = read_manifest(prompts, require_images=False)  # validated before the model loads
    adapter = load_adapter(model, kind, device=device, dtype=dtype)
    subject = adapter_subject(adapter, rows, steps=steps, name=str(model))
    if refs is not None:
        c, h, w = adapter.latent_shape()
        down = adapter.codec.downsample
        subject = replace(subject, references=load_references(refs, (3, h * down, w * down), adapter.codec.encode))
    return subject


def analyze_kim(out: str | Path, *, world: str | None = None, model: str | Path | None = None,
                model_kind: str = "sd", prompts: str | Path | None = None, steps: int = 50,
                per_kind: int | None = None, primary: str | None = None, quick: bool = False,
                progress: bool = True, refs: str | Path | None = None, device: str = "cpu",
                dtype: str = "float32", workers: int | None = None, address: str | None = None,
                **overrides) -> KimRun:
    """``diffmem analyze kim``: the study on an embedded world (default ``digits-t2i``) or on a local diffusers
    ``model`` with a ``prompts`` manifest (JSONL: prompt, and the paired training image where there is one);
    ``refs`` replaces the reference set of the copy rule; ``overrides`` are KimConfig fields.

    A graded world (with a duplication ladder, e.g. ``digits-bench``) runs on its graded prompt set
    (:func:`graded_world_subject`, evaluation split) in the ``graded`` preset, or with ``quick`` on one prompt per
    stratum in the quick preset; ``per_kind`` caps each stratum. ``workers``/``address``: the prompts on a Ray
    cluster (:mod:`diffmem.executor`), each worker building the subject once."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"--steps must be a positive integer, got {steps!r}")
    if per_kind is not None and (isinstance(per_kind, bool) or not isinstance(per_kind, int) or per_kind < 1):
        raise ValueError(f"--per-kind must be a positive integer, got {per_kind!r}")
    if model is None and prompts is not None:
        raise ValueError("--prompts goes with --model (a diffusers model); an embedded world brings its own prompts")
    if model is not None and (world is not None or per_kind is not None):
        raise ValueError("--world and --per-kind select an embedded world's prompts; they do not go with --model")
    if refs is not None and not Path(refs).exists():
        raise ValueError(f"--refs {str(refs)!r} does not exist; give a folder of images or an .npz")
    if model is not None:
        model_device(device)  # a device this machine lacks is refused before anything loads; "auto" stays for
        if prompts is None:  # each worker to resolve (the GPU it was given, when there is one)
            raise ValueError("--model needs --prompts MANIFEST.jsonl (one prompt per line, with its training image "
                             "where there is one)")
    else:
        check_world_placement(device, dtype)
    recipe = partial(kim_subject, world, model, model_kind, prompts, steps, per_kind, quick, refs, device, dtype)
    subject, preset = recipe(progress=progress)
    with make_executor(partial(_subject_only, recipe), workers=workers, address=address) as executor:
        return run_kim_job(subject, out, quick=quick, primary=primary, progress=progress, preset=preset,
                           executor=executor, **overrides)


def kim_subject(world, model, model_kind, prompts, steps, per_kind, quick, refs, device, dtype, *,
                progress: bool = False) -> tuple[Subject, str | None]:
    """The subject of ``analyze kim``'s flags (checked by :func:`analyze_kim`) and its preset (None: the default);
    module-level, so that each Ray worker builds the same subject from these names."""
    if model is not None:
        return kim_model_subject(model, prompts, kind=model_kind, steps=steps, device=device, dtype=dtype,
                              refs=refs), None
    w = load_world(world or "digits-t2i", progress=progress)
    if is_graded(w):
        subject = graded_world_subject(w, steps=steps, negatives=4 if quick else GRADED_NEGATIVES,
                                       per_stratum=per_kind if per_kind is not None else (1 if quick else None))
        preset = "quick" if quick else "graded"
    else:
        per_kind = per_kind if per_kind is not None else (QUICK_PER_KIND if quick else None)
        subject, preset = kim_world_subject(w, steps=steps, per_kind=per_kind), None
    if refs is not None:
        subject = replace(subject, references=load_references(refs, subject.state_shape))
    return subject, preset


def _subject_only(recipe) -> Subject:
    return recipe()[0]


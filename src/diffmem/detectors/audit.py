"""A whole-list audit from prompts alone: a cheap screen, the expensive detector on the top fraction, a ranked table.

Every prompt is scored by the *screen* (default ``wen-step1``: 2 NFE per generation); the top ``fraction`` by that
score is *escalated* to the *expensive* detector (default ``wen-all``: every step) and sampled once (seed
``base_seed``, the expensive detector's CFG weight) so the table can show what the prompt produces, and — given
reference images — its nearest reference with the 1/3 ratio. The ranking puts escalated prompts first, by the
expensive score, then the rest by the screen score. Verdicts: ``memorized`` / ``clear`` for escalated prompts when a
threshold on the expensive detector's oriented score (higher = memorized) is given or read from a ``detect``
summary, ``escalated`` without one, ``screened out`` for the rest.

With ``compare_full`` the expensive detector also scores *every* prompt (the full-cost ranking) and the result
states the recall of its flagged set — scores above the threshold, or without one its top ``fraction`` — that the
audit keeps, next to both NFE counts (screen + escalation vs full; samples are counted apart). Scoring is
checkpointed in units under ``out/screen``, ``out/escalate`` and ``out/full`` and resumes after a kill (a reused
unit keeps the cost measured when it was made; samples already on disk are not redrawn and count no NFE).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from diffmem.detectors.base import Detector, generation_seeds, make_detector
from diffmem.detectors.counting import measure_call
from diffmem.detectors.harness import score_units, unit_settings, write_csv
from diffmem.executor import SerialExecutor, pick, prompt_refs
from diffmem.io import read_arrays, read_json, safe_name, write_arrays, write_json
from diffmem.results import Record, package_version
from diffmem.sampling.trajectory import Recorder
from diffmem.similarity.criteria import nn_ratio
from diffmem.subject import Prompt, Subject
from diffmem.worlds.custom import load_collection
from diffmem.worlds.grids import save_grid

__all__ = ["audit", "AuditRow", "AuditResult", "threshold_from_summary", "AUDIT_COLUMNS"]

AUDIT_COLUMNS = ("rank", "prompt_id", "prompt", "verdict", "score", "screen_score", "escalated", "sample",
                 "nearest_ref", "nearest_ratio")


@dataclass(frozen=True)
class AuditRow(Record):
    """One prompt of the ranked table. Scores are oriented (higher = memorized); ``score`` is the expensive
    detector's (None when not escalated); ``nearest_ref`` is the row of the nearest reference (files in sorted
    order) and ``nearest_ratio`` its nearest-neighbour ratio (a copy at ≤ 1/3)."""

    rank: int
    prompt_id: str
    prompt: str
    verdict: str
    score: float | None
    screen_score: float
    escalated: bool
    sample: str | None = None
    nearest_ref: int | None = None
    nearest_ratio: float | None = None


@dataclass(frozen=True)
class AuditResult(Record):
    """The ranked rows, the NFE spent (and the full-cost comparison when asked for) and provenance."""

    rows: tuple[AuditRow, ...]
    screen: str
    expensive: str
    n_gen: int
    fraction: float
    threshold: float | None
    nfe: dict
    full: dict | None
    seconds: float
    provenance: dict


def threshold_from_summary(path: str | Path, detector: str, n_gen: int, *, label: str = "planted",
                           fpr: str = "1%") -> float:
    """The threshold a ``detect`` run calibrated for ``detector`` at ``n_gen`` (oriented score, higher = memorized)."""
    rows = [r for r in read_json(path)["rows"] if (r["detector"], r["n_gen"], r["label"]) == (detector, n_gen, label)]
    if not rows or fpr not in rows[0]["thresholds"]:
        raise ValueError(f"{path} has no {fpr} threshold for detector {detector!r} at n = {n_gen} ({label} labels)")
    return float(rows[0]["thresholds"][fpr]["value"])


def _oriented(det: Detector, s: np.ndarray) -> np.ndarray:
    return s if det.higher_is_memorized else -s


def _draw(refs, seed: int, guidance: float, subject: Subject) -> dict:
    """One sample per prompt of ``refs`` in pixels [k, C, H, W], and the NFE it cost (a unit of the executor)."""
    todo = pick(subject, refs)
    traj, cost = measure_call(subject, lambda s: s.sample(s.cond(todo), [seed] * len(todo), guidance=guidance,
                                                          recorder=Recorder(keep=())))
    x = traj.x_0 if subject.decode is None else subject.decode(traj.x_0)
    return {"x": x.clamp(-1, 1), "nfe": cost.nfe}


def _samples(subject: Subject, prompts: Sequence[Prompt], seed: int, guidance: float, out: Path, *,
             chunk_size: int = 64, executor=None) -> tuple[dict, int]:
    """One sample per prompt in pixels ({id: [C, H, W]}), cached under ``out/samples``; and the NFE it cost. Drawn in
    chunks of ``chunk_size`` prompts (fixed by the prompts' order, so a sample does not depend on what was cached)
    on ``executor`` (default: here). A cached sample is reused only when its stamp (``<id>.json``, written after
    it) names the same settings."""
    paths = {p.id: out / "samples" / f"{safe_name(p.id)}.safetensors" for p in prompts}
    settings = {p.id: unit_settings(subject, [p], [seed], {"sample": {"guidance": guidance, "steps": subject.steps,
                                                                      "prompt": p.text}}) for p in prompts}
    stamps = {i: path.with_suffix(".json") for i, path in paths.items()}

    def cached(p: Prompt) -> bool:
        return (paths[p.id].exists() and stamps[p.id].exists()
                and read_json(stamps[p.id]).get("settings") == settings[p.id])

    chunks = [prompts[k:k + chunk_size] for k in range(0, len(prompts), chunk_size)]
    todo = [c for c in chunks if not all(cached(p) for p in c)]
    tasks = [partial(_draw, prompt_refs(subject, c), seed, guidance) for c in todo]
    nfe = 0
    for j, drawn in (executor or SerialExecutor()).imap(tasks, subject):
        for p, xi in zip(todo[j], drawn["x"], strict=True):
            save_grid(paths[p.id].with_suffix(".png"), xi[None, None])
            write_arrays(paths[p.id], {"x": xi})
            write_json(stamps[p.id], {"settings": settings[p.id]})
        nfe += drawn["nfe"]
    return {p.id: read_arrays(paths[p.id])["x"] for p in prompts}, nfe


def _references(subject: Subject, refs: str | Path | None) -> torch.Tensor | None:
    """Reference images in [−1, 1] at the size and channels of the subject's pixels (None without ``refs``)."""
    if refs is None:
        return None
    shape = subject.state_shape if subject.decode is None else subject.decode(
        torch.zeros(1, *subject.state_shape, dtype=subject.dtype)).shape[1:]
    return load_collection(refs, image_size=shape[-1], grey=shape[0] == 1)[0].float()


def _nearest(images: dict, refs: torch.Tensor | None) -> dict:
    if refs is None or not images:
        return {}
    ratio, nearest = nn_ratio(torch.stack(list(images.values())).float(), refs)
    return {k: (int(n), float(q)) for k, n, q in zip(images, nearest, ratio, strict=True)}


def _recall(kept: set, full_scores: np.ndarray, ids: list[str], threshold: float | None, k: int) -> dict:
    order = np.argsort(-full_scores, kind="stable")
    flagged = ({ids[j] for j in np.flatnonzero(full_scores > threshold)} if threshold is not None
               else {ids[j] for j in order[:k]})
    recall = len(kept & flagged) / len(flagged) if flagged else 1.0
    return {"flagged": len(flagged), "kept": len(kept & flagged), "recall": recall,
            "rule": "above the threshold" if threshold is not None else f"top {k} of the full ranking"}


def audit(subject: Subject, *, out: str | Path, screen: str | Detector = "wen-step1",
          expensive: str | Detector = "wen-all", fraction: float = 0.1, n_gen: int = 1, base_seed: int = 0,
          threshold: float | None = None, refs: str | Path | None = None, samples: bool = True,
          compare_full: bool = False, chunk_size: int = 64,
          progress: Callable[[str], None] | None = None, executor=None) -> AuditResult:
    """Screen every prompt, escalate the top ``fraction``, rank, judge; write ``audit.csv`` and ``audit.json``.

    The screening, escalation and sample units run on ``executor`` (:mod:`diffmem.executor`; default: here)."""
    start, out, say = time.perf_counter(), Path(out), progress or (lambda msg: None)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction!r}")
    if not subject.prompts:
        raise ValueError(f"subject {subject.name!r} has no prompts to audit")
    references = _references(subject, refs)
    scr, exp = (make_detector(d) if isinstance(d, str) else d for d in (screen, expensive))
    prompts, seeds = list(subject.prompts), generation_seeds(n_gen, base_seed)
    say(f"screen {scr.name} on {len(prompts)} prompts")
    s_scores, s_costs = score_units(subject, scr, prompts, seeds, out / "screen", chunk_size=chunk_size,
                                    executor=executor, progress=progress is not None)
    s_or = _oriented(scr, s_scores)
    k = max(1, math.ceil(fraction * len(prompts)))
    top = np.argsort(-s_or, kind="stable")[:k]
    escalated = [prompts[j] for j in sorted(top)]
    say(f"escalate {len(escalated)} prompts to {exp.name}")
    e_scores, e_costs = score_units(subject, exp, escalated, seeds, out / "escalate", chunk_size=chunk_size,
                                    executor=executor, progress=progress is not None)
    e_or = dict(zip([p.id for p in escalated], _oriented(exp, e_scores).tolist(), strict=True))
    images, sample_nfe = (_samples(subject, escalated, base_seed, float(getattr(exp, "guidance", 7.5)), out,
                                   chunk_size=chunk_size, executor=executor) if samples else ({}, 0))
    near = _nearest(images, references)
    rows = _rank(prompts, s_or, e_or, threshold, out, images, near)
    nfe = {"screen": sum(c.nfe + c.jvp + c.vjp for c in s_costs),
           "escalate": sum(c.nfe + c.jvp + c.vjp for c in e_costs), "samples": sample_nfe}
    nfe["detection"] = nfe["screen"] + nfe["escalate"]
    nfe["total"] = nfe["detection"] + sample_nfe
    full = None
    if compare_full:
        say(f"full-cost ranking: {exp.name} on {len(prompts)} prompts")
        f_scores, f_costs = score_units(subject, exp, prompts, seeds, out / "full", chunk_size=chunk_size,
                                        executor=executor, progress=progress is not None)
        kept = {r.prompt_id for r in rows if r.escalated and (threshold is None or r.verdict == "memorized")}
        full = {"nfe": sum(c.nfe + c.jvp + c.vjp for c in f_costs),
                **_recall(kept, _oriented(exp, f_scores), [p.id for p in prompts], threshold, k)}
        full["nfe_ratio"] = nfe["detection"] / full["nfe"] if full["nfe"] else None
    prov = {"subject": subject.describe(), "screen": scr.describe(), "expensive": exp.describe(), "seeds": seeds,
            "refs": None if refs is None else str(refs), "package": package_version(),
            "nfe": "rows of the denoiser (plain, JVP and VJP together); detection = screen + escalate"}
    result = AuditResult(tuple(rows), scr.name, exp.name, n_gen, fraction, threshold, nfe, full,
                         time.perf_counter() - start, prov)
    _write(out, result)
    return result


def _rank(prompts, s_or: np.ndarray, e_or: dict, threshold, out: Path, images: dict, near: dict) -> list[AuditRow]:
    def key(j):
        p = prompts[j]
        return (0, -e_or[p.id], -s_or[j]) if p.id in e_or else (1, 0.0, -s_or[j])

    rows = []
    for rank, j in enumerate(sorted(range(len(prompts)), key=key), start=1):
        p = prompts[j]
        score = e_or.get(p.id)
        verdict = ("screened out" if score is None else "escalated" if threshold is None
                   else "memorized" if score > threshold else "clear")
        sample = str(out / "samples" / f"{safe_name(p.id)}.png") if p.id in images else None
        n = near.get(p.id, (None, None))
        rows.append(AuditRow(rank, p.id, p.text, verdict, score, float(s_or[j]), score is not None, sample, *n))
    return rows


def _write(out: Path, result: AuditResult) -> None:
    write_csv(out / "audit.csv", [asdict(r) for r in result.rows], AUDIT_COLUMNS)
    write_json(out / "audit.json", result.to_dict())

"""One detection harness: every detector on the same prompts, seeds, labels, split and TPR rule, with measured cost.

Work is cut into *units* — (detector, n generations, chunk of prompts), plus the measured labels per chunk — each
written atomically to ``out/units/<detector>/n<n>/<chunk>.json`` with the settings that made it (subject, detector
parameters, seeds, prompt ids and texts, package version). A rerun reuses a unit only when its stored settings are
the ones asked for and recomputes it otherwise, so a killed run resumes where it stopped and never mixes settings.
Generation j of every prompt uses seed ``base_seed + j`` (:func:`~diffmem.detectors.base.generation_seeds`), so a
unit's scores do not depend on the order, the chunking or the worker that ran it.

Metrics, per detector, n and label (``planted`` and ``measured``, :mod:`diffmem.detectors.labels`): on the
*evaluation* split, ROC AUC with a stratified bootstrap CI, TPR at 1 % and 0.1 % FPR by the conservative rule (the
closest-point rule as the side column ``tpr_at_1fpr_closest``); thresholds calibrated on the *calibration* split's
negatives at FPR 1 % and 0.1 % and applied to the evaluation split (realized TPR/FPR, detection rate per duplication
rung m of the planted kinds); DeLong p-values between detectors at equal n. Scores are oriented by each detector's
declared direction before any metric; ``scores.csv`` keeps each detector's own score.

A detector that needs calibration (a fitted band, say) is fitted first on the calibration split's planted negatives,
over ``n_fit`` generations whose seeds follow every scoring and label seed (none is shared); the fit is a unit too,
and ``provenance["calibration_fits"]`` records its prompts and seeds.

Writes ``summary.json`` (:class:`DetectionSummary`, with ``rows``) and ``scores.csv`` (:data:`CSV_COLUMNS`).
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from itertools import combinations
from pathlib import Path

import numpy as np

from diffmem.detectors.base import REGISTRY, Detector, generation_seeds, make_detector
from diffmem.detectors.counting import Cost, measure, measure_call
from diffmem.detectors.labels import (
    MEASURED_RATE,
    NEGATIVE_KINDS,
    POSITIVE_KINDS,
    REGION_RULE,
    assign_splits,
    copy_judgement,
    planted_label,
)
from diffmem.evaluation.detection import (
    Threshold,
    auc_ci,
    calibrate_threshold,
    delong_test,
    detection_rate,
    roc_auc,
    tpr_at_fpr,
    tpr_at_fpr_closest,
)
from diffmem.executor import Unit, pick, prompt_refs, run_units
from diffmem.io import atomic_write_text, safe_name, write_json
from diffmem.results import Record, package_version
from diffmem.subject import Prompt, Subject

__all__ = ["run_detection", "DetectionRun", "DetectionSummary", "DetectionRow", "CSV_COLUMNS", "LABELS",
           "resolve_detectors", "score_units", "score_plan", "fit_plan", "fitted", "fit_calibrated", "unit_settings",
           "write_csv", "score_task"]

CSV_COLUMNS = ("prompt_id", "prompt", "split", "label_planted", "label_measured", "kind", "m", "detector", "n_gen",
               "score")
LABELS = ("planted", "measured")
FPRS = (0.01, 0.001)


@dataclass(frozen=True)
class DetectionRow(Record):
    """One detector at n generations against one label, on the evaluation split.

    ``auc``… are None when the evaluation split lacks a class (``status`` says why). Cost fields are per generation
    (rows of the denoiser per prompt and generation) and per prompt, summed over the detector's units."""

    detector: str
    n_gen: int
    label: str
    auc: float | None
    auc_ci: tuple[float, float] | None
    tpr_at_1fpr: float | None
    tpr_at_01fpr: float | None
    nfe_per_generation: float
    seconds_per_prompt: float
    peak_mem_mb: float
    jvp_per_generation: float = 0.0
    vjp_per_generation: float = 0.0
    tpr_at_1fpr_closest: float | None = None
    n_pos: int = 0
    n_neg: int = 0
    thresholds: dict = field(default_factory=dict)  # "1%" / "0.1%": calibrated threshold, realized eval TPR/FPR
    detection_by_m: dict = field(default_factory=dict)  # "kind:m[:regime]" -> [rate, n] at the calibrated 1 %
    status: str = "ok"

    def __post_init__(self):
        if self.auc_ci is not None:  # JSON gives a list back
            object.__setattr__(self, "auc_ci", tuple(self.auc_ci))


@dataclass(frozen=True)
class DetectionSummary(Record):
    """Everything ``summary.json`` holds: the rows, paired tests, skipped runs, labels, split and provenance."""

    rows: tuple[DetectionRow, ...]
    delong: tuple[dict, ...]
    skipped: tuple[dict, ...]
    labels: dict
    split: dict
    units: dict
    provenance: dict
    seconds: float

    def row(self, detector: str, n_gen: int, label: str = "planted") -> DetectionRow:
        hit = [r for r in self.rows if (r.detector, r.n_gen, r.label) == (detector, n_gen, label)]
        if not hit:
            raise ValueError(f"no row for detector {detector!r} at n = {n_gen} with label {label!r}")
        return hit[0]


@dataclass(frozen=True)
class DetectionRun:
    """The summary plus one record per prompt, detector and n (the rows of ``scores.csv``)."""

    summary: DetectionSummary
    records: tuple[dict, ...]


def resolve_detectors(detectors: Sequence[str | Detector] | None) -> list[Detector]:
    """Detectors by registry name or instance (None: every registered one, sorted by name)."""
    names = sorted(REGISTRY) if detectors is None else detectors
    dets = [make_detector(d) if isinstance(d, str) else d for d in names]
    seen = [d.name for d in dets]
    if len(set(seen)) != len(seen) or not seen:
        raise ValueError(f"give at least one detector, each once; got {seen}")
    return dets


# --- units ---------------------------------------------------------------------------------------------------------

def _plain(obj):
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _portable(obj):
    """``obj`` with a world's checkpoint named by its folder (the config key) instead of its absolute path: the same
    trained world copied to another checkout or home is the same subject, and its units are reused there."""
    if isinstance(obj, dict):
        out = {k: _portable(v) for k, v in obj.items()}
        if "config_key" in obj and isinstance(obj.get("checkpoint"), str):
            out["checkpoint"] = Path(obj["checkpoint"]).name
        return out
    return obj


def unit_settings(subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int], what: dict) -> dict:
    """What makes a unit: the subject (not its prompt count; a world's checkpoint by name, :func:`_portable`),
    ``what`` (detector or labels), seeds and prompts."""
    model = {k: v for k, v in _portable(subject.describe()).items() if k != "n_prompts"}
    return _plain({"subject": model, "what": what, "seeds": list(seeds), "prompt_ids": [p.id for p in prompts],
                   "prompt_texts": [p.text for p in prompts], "package": package_version()})


def _chunks(prompts: Sequence[Prompt], size: int) -> list[tuple[int, Sequence[Prompt]]]:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {size!r}")
    return [(k // size, prompts[k:k + size]) for k in range(0, len(prompts), size)]


def score_task(detector: Detector, ids: Sequence[str], seeds: Sequence[int], subject: Subject) -> dict:
    s, cost = measure(detector, subject, pick(subject, ids), seeds)
    return {"scores": s.tolist(), "cost": cost.to_dict()}


def _label_task(ids: Sequence[str], seeds: Sequence[int], guidance: float, subject: Subject) -> dict:
    chunk = pick(subject, ids)
    judged, cost = measure_call(subject, lambda s: copy_judgement(s, chunk, seeds, guidance=guidance))
    return {**judged, "cost": cost.to_dict()}


def _fit_task(detector: Detector, ids: Sequence[str], seeds: Sequence[int], subject: Subject) -> dict:
    return {"params": detector.fit(subject, pick(subject, ids), seeds).describe()["params"]}


def score_plan(subject: Subject, detector: Detector, prompts: Sequence[Prompt], seeds: Sequence[int], out: Path,
               *, chunk_size: int = 16) -> list[Unit]:
    """The units that score ``prompts`` with ``detector``: one per chunk of ``chunk_size`` prompts, saved under
    ``out/units/<detector>/n<n>/<chunk>.json``."""
    return [Unit(out / "units" / safe_name(detector.name) / f"n{len(seeds)}" / f"{k:05d}.json",
                 unit_settings(subject, chunk, seeds, {"detector": detector.describe()}),
                 partial(score_task, detector, prompt_refs(subject, chunk), tuple(seeds)))
            for k, chunk in _chunks(prompts, chunk_size)]


def _scores(units: Sequence[dict]) -> tuple[np.ndarray, list[Cost]]:
    scores = [v for u in units for v in u["scores"]]
    return np.asarray(scores, dtype=np.float64), [Cost.from_dict(u["cost"]) for u in units]


def score_units(subject: Subject, detector: Detector, prompts: Sequence[Prompt], seeds: Sequence[int], out: Path,
                *, chunk_size: int = 16, tally: dict | None = None, executor=None,
                progress: bool = False) -> tuple[np.ndarray, list[Cost]]:
    """Scores [P] of ``detector`` on ``prompts`` (own direction) and the cost of each unit, resumable under ``out``;
    the units run on ``executor`` (default: here, one after the other)."""
    tally = {"computed": 0, "reused": 0, "recomputed": 0} if tally is None else tally
    units = run_units(score_plan(subject, detector, prompts, seeds, out, chunk_size=chunk_size), tally,
                      executor=executor, state=subject, progress=progress, description=f"scoring {detector.name}")
    return _scores(units)


def _label_plan(subject: Subject, out: Path, seeds: Sequence[int], guidance: float, chunk_size: int) -> list[Unit]:
    what = {"labels": "paired 1/3 rule", "region_rule": None if REGION_RULE is None else REGION_RULE.__name__,
            "guidance": guidance, "steps": subject.steps}
    return [Unit(out / "units" / "_labels" / f"n{len(seeds)}" / f"{k:05d}.json",
                 unit_settings(subject, chunk, seeds, what),
                 partial(_label_task, prompt_refs(subject, chunk), tuple(seeds), guidance))
            for k, chunk in _chunks(subject.prompts, chunk_size)]


def _measured(units: Sequence[dict]) -> tuple[list[float], list[Cost], list[str]]:
    rates, costs, judged = [], [], []
    for unit in units:
        rates += unit["copy_rate"]
        judged += unit["judged"]
        costs.append(Cost.from_dict(unit["cost"]))
    return rates, costs, judged


def _label_guidance(dets: Sequence[Detector], given: float | None) -> float:
    if given is not None:
        return float(given)
    ws = sorted({float(d.guidance) for d in dets if hasattr(d, "guidance")})
    # detectors that probe at another weight (NeMo's screen runs unguided) do not redefine what a copy is: the
    # measured label is judged at the common benchmark weight w = 7.5 (Jeon et al., 2025's protocol) unless given
    return ws[0] if len(ws) == 1 else 7.5


def fit_plan(subject: Subject, det: Detector, split: np.ndarray, seeds: Sequence[int], out: Path) -> Unit | None:
    """The unit that fits ``det`` (None when it needs no calibration) on the calibration split's planted negatives
    over ``seeds``, which no scoring or label generation uses."""
    if "calibration" not in det.needs:
        return None
    negatives = [p for p, s in zip(subject.prompts, split, strict=True) if s == "calibration" and planted_label(p) == 0]
    if not negatives:
        raise ValueError(f"detector {det.name!r} needs calibration, but the calibration split has no negatives")
    return Unit(out / "units" / safe_name(det.name) / "fit.json",
                unit_settings(subject, negatives, seeds, {"fit": det.describe()}),
                partial(_fit_task, det, prompt_refs(subject, negatives), tuple(seeds)))


def fitted(det: Detector, unit: dict) -> tuple[Detector, dict]:
    """``det`` with the parameters its fit unit found, and how it was fitted."""
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in unit["params"].items()}
    how = {"prompts": unit["settings"]["prompt_ids"], "split": "calibration", "label": "planted negatives",
           "seeds": unit["settings"]["seeds"]}
    return type(det)(**params), how


def fit_calibrated(subject: Subject, det: Detector, split: np.ndarray, seeds: Sequence[int], out: Path,
                   tally: dict, executor=None) -> tuple[Detector, dict]:
    """``det`` fitted (when it needs calibration) on the calibration split's planted negatives over ``seeds``, which
    no scoring or label generation uses; the fit is a resumable unit. Returns (detector, how it was fitted)."""
    unit = fit_plan(subject, det, split, seeds, out)
    if unit is None:
        return det, {}
    return fitted(det, run_units([unit], tally, executor=executor, state=subject)[0])


# --- metrics -------------------------------------------------------------------------------------------------------

def _per(costs: Sequence[Cost], key: str, per: int) -> float:
    return float(sum(getattr(c, key) for c in costs)) / per if per else 0.0


def _thresholds(oriented: np.ndarray, y: np.ndarray, cal: np.ndarray, ev: np.ndarray) -> dict:
    """Thresholds from the calibration negatives, with the TPR/FPR they give on the evaluation split."""
    negatives = oriented[cal & (y == 0)]
    if negatives.size == 0:
        return {}
    out = {}
    for fpr in FPRS:
        thr = calibrate_threshold(negatives, fpr)
        flag = thr.flag(oriented)
        pos, neg = ev & (y == 1), ev & (y == 0)
        out[f"{100 * fpr:g}%"] = {**asdict(thr), "rule": "flag when oriented score > value",
                                   "eval_tpr": float(flag[pos].mean()) if pos.any() else None,
                                   "eval_fpr": float(flag[neg].mean()) if neg.any() else None}
    return out


def _rung(p: Prompt) -> str | None:
    """``kind:m`` (``kind:m:regime`` where the world has caption regimes) of a planted prompt with a known m."""
    m = p.meta.get("m")
    if p.kind not in POSITIVE_KINDS or m is None:
        return None
    return ":".join(str(v) for v in (p.kind, m, p.meta.get("regime")) if v is not None)


def _by_m(subject: Subject, oriented: np.ndarray, ev: np.ndarray, thresholds: dict) -> dict:
    rungs = np.array([_rung(p) for p in subject.prompts], dtype=object)
    sel = ev & np.array([r is not None for r in rungs])
    if not sel.any() or "1%" not in thresholds:
        return {}
    thr = Threshold(**{k: thresholds["1%"][k] for k in Threshold.__dataclass_fields__})
    rates = detection_rate(oriented[sel], thr, rungs[sel].tolist())
    order = sorted(rates, key=lambda k: (k.split(":")[0], int(k.split(":")[1]), k))
    return {k: list(rates[k]) for k in order}


def _row(subject, name, n, label, oriented, y, split, costs, n_boot) -> DetectionRow:
    P = len(y)
    known = np.array([v is not None for v in y])
    y = np.array([-1 if v is None else v for v in y])
    ev, cal = known & (split == "evaluation"), known & (split == "calibration")
    cost = {"nfe_per_generation": _per(costs, "nfe", P * n), "jvp_per_generation": _per(costs, "jvp", P * n),
            "vjp_per_generation": _per(costs, "vjp", P * n), "seconds_per_prompt": _per(costs, "seconds", P),
            "peak_mem_mb": max(c.peak_mem_mb for c in costs)}
    thresholds = _thresholds(oriented, y, cal, ev)
    n_pos, n_neg = int((y[ev] == 1).sum()), int((y[ev] == 0).sum())
    base = dict(detector=name, n_gen=n, label=label, n_pos=n_pos, n_neg=n_neg, thresholds=thresholds,
                detection_by_m=_by_m(subject, oriented, ev, thresholds), **cost)
    if n_pos == 0 or n_neg == 0:
        return DetectionRow(auc=None, auc_ci=None, tpr_at_1fpr=None, tpr_at_01fpr=None, **base,
                            status=f"undefined: the evaluation split has {n_pos} positives and {n_neg} negatives")
    s, t = oriented[ev], y[ev]
    ci = auc_ci(s, t, n_resamples=n_boot) if min(n_pos, n_neg) >= 2 else None
    notes = ([] if thresholds else ["no calibration negatives: no thresholds"]) + (
        [] if ci else ["one prompt in a class: no bootstrap interval"])
    return DetectionRow(auc=roc_auc(s, t), auc_ci=ci, tpr_at_1fpr=tpr_at_fpr(s, t, 0.01),
                        tpr_at_01fpr=tpr_at_fpr(s, t, 0.001), tpr_at_1fpr_closest=tpr_at_fpr_closest(s, t, 0.01),
                        **base, status="; ".join(["ok", *notes]))


def _delong(rows, oriented: dict, labels: dict, split: np.ndarray) -> list[dict]:
    out = []
    for label, y in labels.items():
        for n in sorted({r.n_gen for r in rows}):
            ok = [r.detector for r in rows if (r.label, r.n_gen, r.status[:2]) == (label, n, "ok")]
            ev = np.array([v is not None for v in y]) & (split == "evaluation")
            t = np.array([v for v, e in zip(y, ev, strict=True) if e])
            if min((t == 1).sum(), (t == 0).sum()) < 2:  # DeLong's variance needs two of each class
                continue
            for a, b in combinations(ok, 2):
                d = delong_test(oriented[a, n][ev], oriented[b, n][ev], t)
                out.append({"label": label, "n_gen": n, "a": a, "b": b, "auc_a": d.auc_a, "auc_b": d.auc_b,
                            "diff": d.diff, "p_value": d.p_value})
    return out


# --- the run -------------------------------------------------------------------------------------------------------

def _records(subject, split, labels: dict, scores: dict) -> list[dict]:
    planted, measured = labels.get("planted"), labels.get("measured")
    out = []
    for (name, n), s in scores.items():
        for j, p in enumerate(subject.prompts):
            out.append({"prompt_id": p.id, "prompt": p.text, "split": split[j],
                        "label_planted": None if planted is None else planted[j],
                        "label_measured": None if measured is None else measured[j], "kind": p.kind,
                        "m": p.meta.get("m"), "detector": name, "n_gen": n, "score": float(s[j])})
    return out


def write_csv(path: Path, records: Sequence[dict], columns: Sequence[str] = CSV_COLUMNS) -> Path:
    """A CSV of ``records`` with exactly ``columns`` (default ``scores.csv``'s), empty cells for missing values and
    floats written exactly (pandas and the csv module load it as is)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in records:
        w.writerow({k: ("" if r[k] is None else (repr(r[k]) if isinstance(r[k], float) else r[k])) for k in columns})
    return atomic_write_text(path, buf.getvalue())


def _label_info(subject, labels, guidance, seeds, units: Sequence[dict]) -> tuple:
    values = {}
    info = {"planted": {"positive_kinds": list(POSITIVE_KINDS), "negative_kinds": list(NEGATIVE_KINDS),
                        "other_kinds": "left out"}}
    if "planted" in labels:
        values["planted"] = [planted_label(p) for p in subject.prompts]
    if "measured" in labels:
        rates, costs, judged = _measured(units)
        values["measured"] = [int(r >= MEASURED_RATE) for r in rates]
        info["measured"] = {"rule": f"copy rate >= {MEASURED_RATE} over the generations; a copy: NN ratio <= 1/3 "
                                    "over the distinct references, a1 the paired image when there is one; on the "
                                    "template region for a prompt with a template mask",
                            "region_rule": None if REGION_RULE is None else
                            f"{REGION_RULE.__module__}.{REGION_RULE.__name__}",
                            "judged": {k: judged.count(k) for k in sorted(set(judged))},
                            "guidance": guidance, "steps": subject.steps, "seeds": seeds,
                            "nfe": sum(c.nfe for c in costs), "seconds": sum(c.seconds for c in costs)}
    for k, v in values.items():
        info[k] = {**info.get(k, {}), "positives": sum(x == 1 for x in v), "negatives": sum(x == 0 for x in v)}
    return values, info


def run_detection(subject: Subject, detectors: Sequence[str | Detector] | None = None, *,
                  n_gen: Sequence[int] = (1, 4), base_seed: int = 0, out: str | Path,
                  labels: Sequence[str] = LABELS, n_label: int = 4, label_guidance: float | None = None,
                  chunk_size: int = 16, n_boot: int = 2000, n_fit: int = 8,
                  progress: Callable[[str], None] | bool | None = None, executor=None) -> DetectionRun:
    """Score every prompt of ``subject`` with every detector at each n, label, calibrate, evaluate; write ``out``.

    Args:
        subject: the model and its prompts (kinds, ``meta["m"]``, ``meta["split"]`` are the ground truth).
        detectors: registry names or instances (None: every registered detector).
        n_gen: generations per prompt; generation j uses seed ``base_seed + j``.
        labels: any of ``planted`` and ``measured``; ``n_label`` generations at ``label_guidance`` (default:
            the detectors' common CFG weight) decide the measured label.
        chunk_size: prompts per unit (the checkpoint granularity).
        n_boot: bootstrap resamples of the AUC interval.
        n_fit: generations per calibration negative that fit a detector that needs calibration (seeds after every
            scoring and label seed, so none is shared).
        progress: a callable gets one line per phase, and a progress bar of the units shows; True: the bar only.
        executor: where the units run (:mod:`diffmem.executor`; default: here, one after the other). The fits
            run first, then every label and scoring unit at once; records do not depend on it.
    Returns:
        A :class:`DetectionRun`; ``out`` gets ``summary.json``, ``scores.csv`` and ``units/``.
    """
    start, out = time.perf_counter(), Path(out)
    say, bar = progress if callable(progress) else (lambda msg: None), bool(progress)
    if not subject.prompts:
        raise ValueError(f"subject {subject.name!r} has no prompts to score")
    if not set(labels) <= set(LABELS) or not labels:
        raise ValueError(f"labels must be a non-empty subset of {LABELS}, got {list(labels)}")
    dets, tally = resolve_detectors(detectors), {"computed": 0, "reused": 0, "recomputed": 0}
    seeds = {n: generation_seeds(n, base_seed) for n in sorted(set(n_gen))}
    split, how = assign_splits(subject.prompts)
    split = np.array(split)
    run = partial(run_units, tally=tally, executor=executor, state=subject, progress=bar)
    fit_seeds = generation_seeds(n_fit, base_seed + max(max(seeds), n_label))
    plans, fit_errors = {}, {}
    for det in dets:
        try:
            plans[det.name] = fit_plan(subject, det, split, fit_seeds, out)
        except ValueError as err:
            fit_errors[det.name] = str(err)
    to_fit = [name for name, unit in plans.items() if unit is not None]
    say(f"fitting {len(to_fit)} detector(s)" if to_fit else "no detector to fit")
    fit_units = dict(zip(to_fit, run([plans[name] for name in to_fit], description="fitting"), strict=True))
    skipped, fits, used, jobs = [], {}, {}, []
    for det in dets:
        if det.name in fit_errors:
            skipped.append({"detector": det.name, "n_gen": None, "reason": fit_errors[det.name]})
            continue
        det, fits[det.name] = fitted(det, fit_units[det.name]) if det.name in fit_units else (det, {})
        used[det.name] = det
        for n, s in seeds.items():
            try:
                det.check(subject, subject.prompts, s)
            except ValueError as err:
                skipped.append({"detector": det.name, "n_gen": n, "reason": str(err)})
                continue
            jobs.append((det, n, score_plan(subject, det, subject.prompts, s, out, chunk_size=chunk_size)))
    w, label_seeds = _label_guidance(dets, label_guidance), generation_seeds(n_label, base_seed)
    label_plan = _label_plan(subject, out, label_seeds, w, chunk_size) if "measured" in labels else []
    say(f"labels and {', '.join(f'{det.name} n={n}' for det, n, _ in jobs)}")
    done = run(label_plan + [u for _, _, plan in jobs for u in plan], description="units")
    values, label_info = _label_info(subject, labels, w, label_seeds, done[:len(label_plan)])
    scores, oriented, rows, at = {}, {}, [], len(label_plan)
    for det, n, plan in jobs:
        scores[det.name, n], costs = _scores(done[at:at + len(plan)])
        at += len(plan)
        oriented[det.name, n] = scores[det.name, n] * (1.0 if det.higher_is_memorized else -1.0)
        rows += [_row(subject, det.name, n, lab, oriented[det.name, n], values[lab], split, costs, n_boot)
                 for lab in labels]
    prov = {"subject": subject.describe(), "detectors": {d.name: used.get(d.name, d).describe() for d in dets},
            "calibration_fits": {name: how for name, how in fits.items() if how},
            "seeds": {str(n): s for n, s in seeds.items()}, "base_seed": base_seed, "chunk_size": chunk_size,
            "n_boot": n_boot, "package": package_version(),
            "tpr_rule": "conservative: max TPR over thresholds with FPR <= alpha on the evaluation split; "
                        "tpr_at_1fpr_closest: the ROC point closest to 1 % (side column)",
            "thresholds": "calibrated per label on the calibration split's negatives (at most floor(alpha N) "
                          "above), applied to the evaluation split; scores oriented higher = memorized",
            "scores_csv": "each detector's own score; see detectors[name].higher_is_memorized"}
    summary = DetectionSummary(tuple(rows), tuple(_delong(rows, oriented, values, split)), tuple(skipped),
                               label_info, {"how": how, **{str(k): int((split == k).sum()) for k in np.unique(split)}},
                               dict(tally), prov, time.perf_counter() - start)
    records = _records(subject, split.tolist(), values, scores)
    write_csv(out / "scores.csv", records)
    write_json(out / "summary.json", summary.to_dict())
    return DetectionRun(summary, tuple(records))

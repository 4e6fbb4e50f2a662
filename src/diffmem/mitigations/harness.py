"""One mitigation harness: every inference-time method at its default and along its knob, ungated and gated, on a
trigger set (memorized prompts) and a general set, with quality and measured cost (the MemBench protocol's three
blocks, Hong et al., arXiv 2407.17095).

Generation j of every prompt uses seed ``base_seed + j`` in every run, so "before" (plain sampling at the plain
weight) and "after" are paired sample by sample. Per set and run the harness keeps, per generation: the copy
judgement by the paired 1/3 rule (:func:`diffmem.detectors.labels`), the nearest-neighbour ratio, the distance to
the paired image, the predicted label (alignment, where prompts carry ``meta["label"]`` and an aligner is given) and
quality features (FID, precision/recall against the subject's references).

**Template copies** are partial (Webster, 2023): a prompt carrying ``meta["template_mask"]`` is also judged by the
1/3 rule on its template region only (:func:`template_copies`), giving ``template_copy_rate_*`` apart from the
global rate.

**Held out**: results are reported on the evaluation split (``meta["split"]``); a knob chosen from data (``select``)
is chosen on the calibration split's trigger and negative prompts and only then run on the evaluation split; every
row says how its setting was chosen (``chosen_on``).

**Gating** (apply the remedy only to flagged prompts, plain sampling for the rest): a detector's scores, oriented
higher = memorized, are thresholded at a target FPR calibrated on the calibration prompts' negatives
(:func:`~diffmem.evaluation.detection.calibrate_threshold`); the false-gate rate is the flagged fraction of the
general set, and the detector's cost is added to the gated rows' cost.

**Units**: each (run, set) is a unit written atomically to ``out/units/…json`` with the settings that made it; a
rerun reuses a unit only under the same settings and recomputes it otherwise. A unit's generations depend only on
its prompts, seeds and settings (a gated run's unit holds only its flagged prompts; the rest is the plain unit's,
merged by :func:`merge_gated`), so the units run on any executor (:mod:`diffmem.executor`, e.g. Ray workers) with
the same records.

Writes ``summary.json`` (:class:`MitigationSummary`, with ``rows``, the Pareto front and provenance) and ``rows.csv``.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffmem.detectors.base import Detector, generation_seeds, make_detector
from diffmem.detectors.counting import Cost, measure_call
from diffmem.detectors.harness import score_task, unit_settings, write_csv
from diffmem.detectors.labels import NEGATIVE_KINDS, POSITIVE_KINDS, _paired_index, assign_splits, template_mask
from diffmem.evaluation.detection import calibrate_threshold
from diffmem.evaluation.fid import fid
from diffmem.evaluation.precision_recall import precision_recall
from diffmem.executor import Unit, pick, prompt_refs, run_units
from diffmem.io import safe_name, write_json
from diffmem.mitigations.base import InferenceMitigation, make_mitigation
from diffmem.results import Record, package_version
from diffmem.sampling.trajectory import Recorder
from diffmem.similarity.criteria import COPY_RATIO, nn_ratio, unique_refs
from diffmem.similarity.digits_classifier import load_digits_classifier
from diffmem.similarity.local import masked_nn_ratio
from diffmem.subject import Prompt, Subject

__all__ = ["evaluations", "run_mitigation", "MitigationRow", "MitigationSummary", "MitigationRun", "ROW_COLUMNS",
           "settings_of", "default_sets", "Evaluator", "pareto_front", "digits_evaluator", "template_copies",
           "meets_goal", "goal_check", "calibration_sets", "CHOSEN", "default_evaluator", "set_task", "merge_gated"]

ROW_COLUMNS = ("method", "setting", "gated", "ours", "trigger_copy_rate_before", "trigger_copy_rate_after",
               "template_copy_rate_after", "alignment_before", "alignment_after", "fid_before", "fid_after",
               "general_alignment_delta", "general_fid_delta", "extra_nfe_per_image", "seconds_per_image",
               "peak_mem_mb", "nfe_ratio", "false_gate_rate", "trigger_gate_rate", "paired_distance_before",
               "paired_distance_after", "precision_after", "recall_after", "general_fid_before", "on_pareto",
               "meets_goal", "template_copy_rate_before", "trigger_split", "chosen_on")
GOAL = {"copy_cut": 0.9, "alignment_drop": 0.02, "fid_rise": 0.05, "nfe_ratio": 1.2}


@dataclass(frozen=True)
class Evaluator:
    """How generations are judged beyond the copy rule: ``aligner(images) -> labels`` [N] or [N, K] (alignment
    against ``meta["label"]``, or the K per-cell ``meta["digits"]`` of a mosaic), ``extractor(images) -> features``
    (FID, precision/recall), ``template_judge(prompt, x0, refs) -> bool [G] | None`` (template-masked copies; None
    for a prompt without a template mask); each optional, ``describe`` recorded."""

    aligner: Callable[[Tensor], Tensor] | None = None
    extractor: Callable[[Tensor], Tensor] | None = None
    template_judge: Callable[[Prompt, Tensor, Tensor], Tensor | None] | None = None
    describe: dict = field(default_factory=dict)


def template_copies(prompt: Prompt, x0: Tensor, refs: Tensor) -> Tensor | None:
    """Template-masked copies bool [G] of a prompt's generations (Webster, 2023: template verbatims), or None when the
    prompt has no ``meta["template_mask"]``: the 1/3 ratio rule on the template region only
    (:func:`~diffmem.similarity.local.masked_nn_ratio` over the distinct regions of ``refs``), and the nearest
    region is the prompt's own paired image's (any region when the prompt has no paired image)."""
    mask = template_mask(prompt, refs.shape[1:])
    if mask is None:
        return None
    ratio, nearest = masked_nn_ratio(x0.to(refs.dtype), refs, mask)
    own = torch.ones_like(ratio, dtype=torch.bool) if prompt.x is None else \
        (refs[nearest][:, mask] == prompt.x.to(refs.dtype)[mask]).all(1)
    return (ratio <= COPY_RATIO) & own


def _cells(x: Tensor) -> Tensor:
    """[N, C, 16, 16] 2×2 mosaics → [N·4, C, 8, 8] cells in reading order (0 1 / 2 3)."""
    N, C = x.shape[:2]
    return x.view(N, C, 2, 8, 2, 8).permute(0, 2, 4, 1, 3, 5).reshape(N * 4, C, 8, 8)


def digits_evaluator(state_shape=(1, 8, 8)) -> Evaluator:
    """The embedded digits classifier as aligner and feature extractor, and the template-masked copy judge.

    8×8 digits: the predicted digit [N]. 16×16 mosaics of 2×2 digits (digits-bench): the predicted digit per cell
    [N, 4] (alignment = the share of cells that read as the caption's digit there) and, as features, the mean of
    the 4 cells' penultimate features (one 128-d vector per image, so FID stays estimable from a few hundred
    samples)."""
    clf = load_digits_classifier()
    mosaic = tuple(state_shape) == (1, 16, 16)
    judge = {"template": "masked 1/3 rule on meta['template_mask'], nearest region = the paired image's"}
    if not mosaic:
        return Evaluator(lambda x: clf.predict(x.clamp(-1, 1)), lambda x: clf.features(x.clamp(-1, 1)),
                         template_copies, {"aligner": clf.describe(), "features": clf.describe(), **judge})
    return Evaluator(lambda x: clf.predict(_cells(x.clamp(-1, 1))).view(len(x), 4),
                     lambda x: clf.features(_cells(x.clamp(-1, 1))).view(len(x), 4, -1).mean(1), template_copies,
                     {"aligner": {**clf.describe(), "mosaic": "per 8×8 cell vs meta['digits']"},
                      "features": {**clf.describe(), "mosaic": "mean of the 4 cells' features"}, **judge})


@dataclass(frozen=True)
class MitigationRow(Record):
    """One method at one setting, ungated or gated: trigger-set memorization and quality, general-set change, cost.

    Rates and alignments are fractions (alignment in [0, 1]; a 2-point drop is −0.02); ``*_ci`` are 95 % bootstrap
    intervals over prompts (generations averaged per prompt first), ``*_seed_ci`` over the generation seeds (each
    seed's mean over prompts); None where a metric does not apply. ``template_copy_rate_*``: the template prompts'
    copies judged on their template region only (:func:`template_copies`). ``trigger_split``: the split the trigger
    prompts come from. ``chosen_on``: how the setting was chosen (:data:`CHOSEN`: a published default, a sweep
    point, or a knob chosen on the calibration split and reported here on the evaluation split).
    ``extra_nfe_per_image`` and ``nfe_ratio`` count network evaluations including derivative rows
    (:func:`evaluations`); ``derivative_rows_per_image`` is the JVP + VJP share of the remedy's run."""

    method: str
    setting: str
    gated: bool
    ours: bool
    params: dict
    trigger_copy_rate_before: float
    trigger_copy_rate_after: float
    template_copy_rate_after: float | None
    alignment_before: float | None
    alignment_after: float | None
    fid_before: float | None
    fid_after: float | None
    general_alignment_delta: float | None
    general_fid_delta: float | None
    extra_nfe_per_image: float
    seconds_per_image: float
    peak_mem_mb: float
    nfe_ratio: float
    false_gate_rate: float | None = None
    trigger_gate_rate: float | None = None
    paired_distance_before: float | None = None
    paired_distance_after: float | None = None
    precision_after: float | None = None
    recall_after: float | None = None
    general_fid_before: float | None = None
    trigger_copy_rate_after_ci: tuple | None = None
    copy_cut_ci: tuple | None = None
    alignment_after_ci: tuple | None = None
    general_alignment_delta_ci: tuple | None = None
    on_pareto: bool = False
    meets_goal: bool = False
    template_copy_rate_before: float | None = None
    trigger_copy_rate_before_ci: tuple | None = None
    template_copy_rate_after_ci: tuple | None = None
    trigger_split: str = "evaluation"
    chosen_on: str = ""
    trigger_copy_rate_after_seed_ci: tuple | None = None
    copy_cut_seed_ci: tuple | None = None
    derivative_rows_per_image: float = 0.0


@dataclass(frozen=True)
class MitigationSummary(Record):
    """``summary.json``: the rows, the Pareto front, the goal, the gate and provenance."""

    rows: tuple[MitigationRow, ...]
    pareto: tuple[dict, ...]
    goal: dict
    gate: dict | None
    units: dict
    provenance: dict
    seconds: float

    def row(self, method: str, setting: str = "default", gated: bool = False) -> MitigationRow:
        hit = [r for r in self.rows if (r.method, r.setting, r.gated) == (method, setting, gated)]
        if not hit:
            raise ValueError(f"no row for {method!r} at {setting!r} (gated={gated})")
        return hit[0]


@dataclass(frozen=True)
class MitigationRun:
    """The summary and the per-row records of ``rows.csv``."""

    summary: MitigationSummary
    records: tuple[dict, ...]


# --- inputs --------------------------------------------------------------------------------------------------------

def _split_sets(subject: Subject, split: str) -> tuple[list[Prompt], list[Prompt]]:
    splits, _ = assign_splits(subject.prompts)
    return ([p for p, s in zip(subject.prompts, splits, strict=True) if p.kind in POSITIVE_KINDS and s == split],
            [p for p, s in zip(subject.prompts, splits, strict=True) if p.kind in NEGATIVE_KINDS and s == split])


def default_sets(subject: Subject) -> tuple[list[Prompt], list[Prompt], list[Prompt]]:
    """(trigger, general, calibration): the planted kinds and the negatives of the evaluation split (where results
    are reported); the negatives of the calibration split (where thresholds are set). The split is
    ``meta["split"]`` or the stratified hash split."""
    trig, gen = _split_sets(subject, "evaluation")
    return trig, gen, _split_sets(subject, "calibration")[1]


def calibration_sets(subject: Subject) -> tuple[list[Prompt], list[Prompt]]:
    """(trigger, general) of the calibration split: where a knob chosen from data is chosen."""
    return _split_sets(subject, "calibration")


# how a row's setting was chosen (the ``chosen_on`` column)
CHOSEN = {"default": "published default (not chosen from data)",
          "sweep": "sweep point (every grid value reported; not a choice)",
          "selected": "chosen on the calibration split ({rule}); reported on the evaluation split"}
SELECT_RULE = (f"largest trigger copy cut with general alignment drop <= {GOAL['alignment_drop'] * 100:g} pts and "
               f"NFE <= {GOAL['nfe_ratio']:g}x plain; ties: the earlier grid value")


def settings_of(method: str | InferenceMitigation, values: Sequence | None = None) -> list[InferenceMitigation]:
    """The default of ``method`` plus one instance per knob value (its published grid unless ``values``)."""
    base = make_mitigation(method) if isinstance(method, str) else method
    if base.kind != "inference":
        raise ValueError(f"mitigation {base.name!r} is {base.kind}; the harness runs inference-time methods")
    grid = base.grid if values is None else tuple(values)
    out = [base]
    for v in grid if base.knob else ():
        m = replace(base, **{base.knob: v})
        if m not in out:
            out.append(m)
    return out


# --- generation and judgement --------------------------------------------------------------------------------------

def _generate(subject: Subject, prompts, seeds, mitigation, guidance, batch_size) -> Tensor:
    """x_0 [P·G, ...] of every (prompt, seed) in prompt-major order, with the remedy (plain sampling when None)."""
    pairs = [(i, s) for i in range(len(prompts)) for s in seeds]
    out = []
    for b in range(0, len(pairs), batch_size):
        chunk = pairs[b:b + batch_size]
        cond = subject.cond([prompts[i] for i, _ in chunk])
        kw = dict(guidance=guidance, recorder=Recorder(keep=()))
        seeds_k = [s for _, s in chunk]
        traj = (mitigation.sample(subject, cond, seeds_k, **kw) if mitigation is not None
                else subject.sample(cond, seeds_k, **kw))
        out.append(traj.x_0)
    return torch.cat(out)


def _target(prompt: Prompt):
    """What the aligner should read: ``meta["label"]``, else the per-cell ``meta["digits"]``, else None."""
    label = prompt.meta.get("label")
    return label if label is not None else prompt.meta.get("digits")


def _judge(subject: Subject, prompts, x0: Tensor, n_gen: int, ev: Evaluator) -> dict:
    """Per generation [P][G]: copy, ratio, paired distance, label match, template copy; features [P·G, F]."""
    refs, _ = unique_refs(subject.references)
    ratio, nearest = nn_ratio(x0.to(refs.dtype), refs)
    P = len(prompts)
    paired = torch.tensor([_paired_index(p, refs) for p in prompts]).repeat_interleave(n_gen)
    copies = (ratio <= COPY_RATIO) & ((paired < 0) | (nearest == paired))
    flat = x0.flatten(1).double()
    px = [None if p.x is None else p.x.double().flatten() for p in prompts]
    pd = [math.nan if px[k // n_gen] is None else float((flat[k] - px[k // n_gen]).norm()) / math.sqrt(flat.shape[1])
          for k in range(len(flat))]
    images = x0 if subject.decode is None else subject.decode(x0)
    labels = [_target(p) for p in prompts]
    align = [None] * len(flat)
    if ev.aligner is not None and any(v is not None for v in labels):
        pred = ev.aligner(images).view(len(flat), -1)
        align = [None if labels[k // n_gen] is None else
                 float((pred[k] == torch.as_tensor(labels[k // n_gen]).view(-1)).double().mean())
                 for k in range(len(flat))]
    template = [None] * len(flat)
    if ev.template_judge is not None:  # partial copies: judged only where the prompt carries a template mask
        judged = [ev.template_judge(p, x0[i * n_gen:(i + 1) * n_gen], refs) for i, p in enumerate(prompts)]
        template = [None if t is None else float(t[g]) for t in judged for g in range(n_gen)]
    feats = None if ev.extractor is None else ev.extractor(images).double().tolist()
    shape = (P, n_gen)
    return {"copy": copies.double().view(shape).tolist(), "ratio": ratio.double().view(shape).tolist(),
            "paired_distance": np.array(pd).reshape(shape).tolist(),
            "aligned": np.array(align, dtype=object).reshape(shape).tolist(),
            "template_copy": np.array(template, dtype=object).reshape(shape).tolist(), "features": feats}


_EVALUATORS: dict[tuple, Evaluator] = {}


def default_evaluator(subject: Subject) -> Evaluator:
    """:func:`digits_evaluator` for 8×8 and 16×16 grey states, else the template judge only; built once per process
    (a Ray worker builds its own)."""
    shape = tuple(subject.state_shape)
    key = (shape, os.environ.get("DIFFMEM_HOME"))
    if key not in _EVALUATORS:
        _EVALUATORS[key] = digits_evaluator(shape) if shape in ((1, 8, 8), (1, 16, 16)) else Evaluator(
            template_judge=template_copies, describe={"template": "masked 1/3 rule on meta['template_mask']"})
    return _EVALUATORS[key]


def set_task(refs, seeds, mitigation, guidance, batch_size, evaluator, subject: Subject) -> dict:
    """One set's generations (plain sampling when ``mitigation`` is None), judged, with their measured cost: the
    task of a harness unit (``evaluator`` None: :func:`default_evaluator` of the worker's subject)."""
    prompts, ev = pick(subject, refs), evaluator or default_evaluator(subject)
    if not prompts:  # a gated run that flagged nothing generates nothing
        empty = {k: [] for k in ("copy", "ratio", "paired_distance", "aligned", "template_copy")}
        return {**empty, "features": None if ev.extractor is None else [],
                "cost": Cost(0, 0, 0, 0, 0.0, 0.0, "none").to_dict()}
    x0, cost = measure_call(subject, lambda s: _generate(s, prompts, seeds, mitigation, guidance, batch_size))
    return {**_judge(subject, prompts, x0, len(seeds), ev), "cost": cost.to_dict()}


def merge_gated(plain: dict, part: dict, flags) -> dict:
    """A gated run's set as a whole unit: the flagged prompts' records from ``part`` (the remedy's generations, in
    order), the others from ``plain`` (plain sampling's generations for the same seeds), charged plain sampling's
    measured cost per image."""
    flags = [bool(f) for f in flags]
    rank = np.cumsum(flags) - 1
    out = {k: [part[k][rank[i]] if f else plain[k][i] for i, f in enumerate(flags)]
           for k in ("copy", "ratio", "paired_distance", "aligned", "template_copy")}
    out["features"] = None
    if plain["features"] is not None:
        G = len(plain["copy"][0]) if flags else 0
        out["features"] = [v for i, f in enumerate(flags) for v in
                           (part["features"][rank[i] * G:(rank[i] + 1) * G] if f else
                            plain["features"][i * G:(i + 1) * G])]
    c, p = Cost.from_dict(part["cost"]), Cost.from_dict(plain["cost"])
    share = (len(flags) - sum(flags)) / max(len(flags), 1)
    out["cost"] = replace(c, nfe=c.nfe + round(p.nfe * share), jvp=c.jvp + round(p.jvp * share),
                          vjp=c.vjp + round(p.vjp * share), calls=c.calls + round(p.calls * share),
                          seconds=c.seconds + p.seconds * share, peak_mem_mb=max(c.peak_mem_mb, p.peak_mem_mb),
                          memory=p.memory).to_dict()
    return out


# --- statistics ----------------------------------------------------------------------------------------------------

def _per_prompt(table) -> np.ndarray:
    """Per-prompt mean over generations of a [P][G] table (None → NaN); prompts with no value are NaN."""
    a = np.array([[np.nan if v is None else v for v in row] for row in table], dtype=np.float64)
    if not a.size:
        return np.zeros(0)
    with warnings.catch_warnings():  # a prompt without a value (no label, no paired image) is NaN, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=1)


def _per_seed(table) -> np.ndarray:
    """Per-generation-seed mean over prompts of a [P][G] table: [G] (the unit a seed bootstrap resamples)."""
    a = np.array([[np.nan if v is None else v for v in row] for row in table], dtype=np.float64)
    return np.nanmean(a, axis=0) if a.size else np.zeros(0)


def _mean(table) -> float | None:
    v = _per_prompt(table)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _boot_ci(values: np.ndarray, n_boot: int, seed: int = 0, stat=np.mean) -> tuple | None:
    """95 % percentile bootstrap interval of ``stat`` over prompts (paired columns resampled together)."""
    values = values[np.isfinite(values).reshape(len(values), -1).all(axis=1)]
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    boots = np.array([stat(values[i]) for i in idx])
    boots = boots[np.isfinite(boots)]
    return (float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))) if boots.size else None


def _quality(real: Tensor | None, unit: dict) -> tuple[float | None, float | None, float | None]:
    if real is None or unit["features"] is None or len(unit["features"]) < 3:
        return None, None, None
    fake = torch.tensor(unit["features"], dtype=torch.float64)
    p, r = precision_recall(real, fake, k=3)
    return fid(real, fake), p, r


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Whether each (memorization, quality loss) point — both lower is better — is not dominated by another."""
    out = []
    for i, (m, q) in enumerate(points):
        dominated = any((m2 <= m and q2 <= q) and (m2 < m or q2 < q) for j, (m2, q2) in enumerate(points) if j != i)
        out.append(not dominated and math.isfinite(m) and math.isfinite(q))
    return out


def evaluations(cost: Cost | dict) -> int:
    """Network evaluations a run is charged: plain forward rows plus derivative rows (a JVP or VJP row is one
    forward of the network with its derivative pass), so a method that back-propagates through the denoiser is not
    counted as free."""
    c = Cost.from_dict(cost) if isinstance(cost, dict) else cost
    return c.nfe + c.jvp + c.vjp


def _row(m: InferenceMitigation, setting: str, gated: bool, units: dict, real, gate: dict | None,
         n_boot: int, chosen_on: str = "", split: str = "evaluation") -> MitigationRow:
    tb, ta, gb, ga = units["trigger_plain"], units["trigger"], units["general_plain"], units["general"]
    n_t, n_g = len(tb["copy"]) * len(tb["copy"][0]), len(gb["copy"]) * len(gb["copy"][0])
    nfe_b = (evaluations(tb["cost"]) + evaluations(gb["cost"])) / (n_t + n_g)
    nfe_a = (evaluations(ta["cost"]) + evaluations(ga["cost"])) / (n_t + n_g)
    deriv = sum(Cost.from_dict(u["cost"]).jvp + Cost.from_dict(u["cost"]).vjp for u in (ta, ga)) / (n_t + n_g)
    sec_a = (Cost.from_dict(ta["cost"]).seconds + Cost.from_dict(ga["cost"]).seconds) / (n_t + n_g)
    peak = max(Cost.from_dict(ta["cost"]).peak_mem_mb, Cost.from_dict(ga["cost"]).peak_mem_mb)
    if gated:  # the detector ran on every prompt of both sets
        nfe_a += gate["nfe_per_image"]
        sec_a += gate["seconds_per_image"]
    fid_b, _, _ = _quality(real, tb)
    fid_a, prec_a, rec_a = _quality(real, ta)
    gfid_b, _, _ = _quality(real, gb)
    gfid_a, _, _ = _quality(real, ga)
    cb, ca = _per_prompt(tb["copy"]), _per_prompt(ta["copy"])
    gab, gaa = _per_prompt(gb["aligned"]), _per_prompt(ga["aligned"])
    g_delta = None if _mean(gb["aligned"]) is None else _mean(ga["aligned"]) - _mean(gb["aligned"])
    cut = (lambda v: 1 - v[:, 1].mean() / v[:, 0].mean() if v[:, 0].mean() > 0 else np.nan)
    row = MitigationRow(
        method=m.name, setting=setting, gated=gated, ours=m.ours,
        params=m.describe()["params"], trigger_copy_rate_before=float(cb.mean()),
        trigger_copy_rate_after=float(ca.mean()), template_copy_rate_after=_mean(ta["template_copy"]),
        alignment_before=_mean(tb["aligned"]), alignment_after=_mean(ta["aligned"]), fid_before=fid_b,
        fid_after=fid_a, general_alignment_delta=g_delta,
        general_fid_delta=None if gfid_a is None else gfid_a - gfid_b, extra_nfe_per_image=nfe_a - nfe_b,
        derivative_rows_per_image=deriv,
        seconds_per_image=sec_a, peak_mem_mb=peak, nfe_ratio=nfe_a / nfe_b if nfe_b else math.nan,
        false_gate_rate=gate["false_gate_rate"] if gated else None,
        trigger_gate_rate=gate["trigger_gate_rate"] if gated else None,
        paired_distance_before=_mean(tb["paired_distance"]), paired_distance_after=_mean(ta["paired_distance"]),
        precision_after=prec_a, recall_after=rec_a, general_fid_before=gfid_b,
        trigger_copy_rate_after_ci=_boot_ci(ca, n_boot),
        copy_cut_ci=_boot_ci(np.stack([cb, ca], 1), n_boot, stat=cut),
        alignment_after_ci=_boot_ci(_per_prompt(ta["aligned"]), n_boot),
        general_alignment_delta_ci=_boot_ci(gaa - gab, n_boot),
        template_copy_rate_before=_mean(tb["template_copy"]),
        trigger_copy_rate_before_ci=_boot_ci(cb, n_boot),
        template_copy_rate_after_ci=_boot_ci(_per_prompt(ta["template_copy"]), n_boot),
        trigger_split=split, chosen_on=chosen_on,
        trigger_copy_rate_after_seed_ci=_boot_ci(_per_seed(ta["copy"]), n_boot),
        copy_cut_seed_ci=_boot_ci(np.stack([_per_seed(tb["copy"]), _per_seed(ta["copy"])], 1), n_boot, stat=cut))
    return replace(row, meets_goal=meets_goal(row))


def meets_goal(r: MitigationRow | Mapping) -> bool:
    """Copy rate cut ≥ 90 %, general alignment drop ≤ 2 points, general FID rise ≤ 5 %, NFE ≤ 1.2× plain — from a
    row or from its saved record (a ``summary.json`` row; null read as "not measured", which does not fail)."""
    g = (lambda k: r.get(k)) if isinstance(r, Mapping) else (lambda k: getattr(r, k))
    known = _known
    before, after = g("trigger_copy_rate_before"), g("trigger_copy_rate_after")
    if not known(before) or not known(after) or before <= 0:
        return False
    ok = after <= (1 - GOAL["copy_cut"]) * before
    delta, fid_d, fid_b = g("general_alignment_delta"), g("general_fid_delta"), g("general_fid_before")
    ok &= not known(delta) or delta >= -GOAL["alignment_drop"]
    ok &= not known(fid_d) or not known(fid_b) or fid_d <= GOAL["fid_rise"] * abs(fid_b)
    return bool(ok and known(g("nfe_ratio")) and g("nfe_ratio") <= GOAL["nfe_ratio"])


def _known(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def goal_check(summary: Mapping) -> list[dict]:
    """Per saved row of a ``summary.json`` (a dict): method, setting, gated and ``meets_goal`` recomputed from the
    saved numbers, with the four criteria apart (True / False, None where not measured)."""
    out = []
    for r in summary["rows"]:
        before = r["trigger_copy_rate_before"]
        cut = None if not before else 1 - r["trigger_copy_rate_after"] / before
        fid_d, fid_b, delta = r.get("general_fid_delta"), r.get("general_fid_before"), r.get("general_alignment_delta")
        fid_rise = fid_d / abs(fid_b) if _known(fid_d) and _known(fid_b) and fid_b else None
        out.append({"method": r["method"], "setting": r["setting"], "gated": r["gated"], "copy_cut": cut,
                    "copy_ok": None if cut is None else cut >= GOAL["copy_cut"],
                    "alignment_ok": delta >= -GOAL["alignment_drop"] if _known(delta) else None,
                    "fid_ok": None if fid_rise is None else fid_rise <= GOAL["fid_rise"], "fid_rise": fid_rise,
                    "nfe_ok": r["nfe_ratio"] <= GOAL["nfe_ratio"], "meets_goal": meets_goal(r)})
    return out


# --- gating --------------------------------------------------------------------------------------------------------

def _gate(subject, detector: Detector, fpr: float, sets: dict, seeds, out, run) -> dict:
    """Scores of the detector on the calibration, trigger and general sets (units), the calibrated threshold and
    the flags."""
    if not len(sets["calibration"]):
        raise ValueError("gating needs calibration negatives; the subject has none (give calibration prompts)")
    units = run([Unit(out / "units" / "_gate" / safe_name(detector.name) / f"{name}.json",
                      unit_settings(subject, prompts, seeds, {"gate": detector.describe()}),
                      partial(score_task, detector, prompt_refs(subject, prompts), tuple(seeds)))
                 for name, prompts in sets.items()])
    sign = 1.0 if detector.higher_is_memorized else -1.0
    scores = {name: sign * np.asarray(u["scores"], dtype=np.float64) for name, u in zip(sets, units, strict=True)}
    cost = [Cost.from_dict(u["cost"]) for name, u in zip(sets, units, strict=True) if name != "calibration"]
    n_all = (len(sets["trigger"]) + len(sets["general"])) * len(seeds)
    thr = calibrate_threshold(scores["calibration"], fpr)
    flags = {k: thr.flag(scores[k]) for k in ("trigger", "general")}
    return {"detector": detector.describe(), "threshold": thr, "flags": flags,
            "how": f"calibrate_threshold on {len(sets['calibration'])} calibration-split negatives at FPR {fpr:g}; "
                   "flag when the oriented score (higher = memorized) > value",
            "false_gate_rate": float(flags["general"].mean()) if len(sets["general"]) else None,
            "trigger_gate_rate": float(flags["trigger"].mean()) if len(sets["trigger"]) else None,
            "nfe_per_image": sum(evaluations(c) for c in cost) / max(n_all, 1),
            "seconds_per_image": sum(c.seconds for c in cost) / max(n_all, 1)}


# --- the run -------------------------------------------------------------------------------------------------------

def run_mitigation(subject: Subject, mitigations: Sequence[str | InferenceMitigation] | Mapping, *,
                   trigger: Sequence[Prompt] | None = None, general: Sequence[Prompt] | None = None,
                   calibration: Sequence[Prompt] | None = None, n_gen: int = 4, base_seed: int = 0,
                   guidance: float = 7.5, gate: str | Detector | None = None, gate_fpr: float = 0.01,
                   out: str | Path, evaluator: Evaluator | None = None, batch_size: int = 64, n_boot: int = 1000,
                   select: Sequence[str] = (), selection_sets: tuple[Sequence[Prompt], Sequence[Prompt]] | None = None,
                   executor=None, progress: Callable[[str], None] | None = None) -> MitigationRun:
    """Run each method at its default and along its knob, ungated (and gated by ``gate``); write ``out``.

    Args:
        subject: the model, its prompts (kinds, ``meta["label"]`` or ``meta["digits"]``, ``meta["split"]``) and
            references.
        mitigations: names or instances (each swept over its grid), or a mapping name → knob values.
        trigger, general, calibration: the memorized prompts and the general prompts where results are reported,
            and the negatives that calibrate the gate (default: :func:`default_sets`, the evaluation split for the
            first two and the calibration split's negatives for the gate).
        n_gen: generations per prompt (seed ``base_seed + j``); guidance: the plain CFG weight.
        gate: a detector (name or instance) whose threshold at ``gate_fpr`` decides which prompts get the remedy.
        evaluator: aligner, feature extractor and template judge (default: :func:`default_evaluator`).
        select: methods (among ``mitigations``) whose knob is chosen from data: each is swept over its grid on
            ``selection_sets`` (default: :func:`calibration_sets`, the calibration split's trigger and negatives),
            the setting meeting :data:`SELECT_RULE` is kept, and it is reported on the evaluation sets as an extra
            row with setting ``"selected <knob>=<value>"``; the selection rows are kept in the provenance.
        executor: where the units run (:mod:`diffmem.executor`; default: here, one after the other). A unit is one
            (run, set); its generations and judgement depend only on its prompts, seeds and settings, so any
            executor gives the same records.
    Returns:
        A :class:`MitigationRun`; ``out`` gets ``summary.json``, ``rows.csv`` and ``units/``.
    """
    start, out, say = time.perf_counter(), Path(out), progress or (lambda msg: None)
    if subject.references is None:
        raise ValueError(f"subject {subject.name!r} has no references: copy rates need the training images")
    d_trig, d_gen, d_cal = default_sets(subject)
    trig, gen = list(d_trig if trigger is None else trigger), list(d_gen if general is None else general)
    cal = list(d_cal if calibration is None else calibration)
    if not trig or not gen:
        raise ValueError(f"need a trigger set and a general set, got {len(trig)} and {len(gen)} prompts")
    ev = evaluator or default_evaluator(subject)
    items = mitigations.items() if isinstance(mitigations, Mapping) else [(m, None) for m in mitigations]
    methods = [(s, "default" if k == 0 else s.setting) for m, v in items for k, s in enumerate(settings_of(m, v))]
    unknown = [n for n in select if n not in {m.name for m, _ in methods}]
    if unknown:
        raise ValueError(f"select names {unknown[0]!r}, which is not among the methods run; add it to the methods")
    seeds, tally = generation_seeds(n_gen, base_seed), {"computed": 0, "reused": 0, "recomputed": 0}
    run = partial(run_units, tally=tally, executor=executor, state=subject, progress=progress is not None,
                  description="mitigation units")
    gate_info = None
    if gate is not None:
        det = make_detector(gate) if isinstance(gate, str) else gate
        say(f"gate {det.name}")
        gate_info = _gate(subject, det, gate_fpr, {"calibration": cal, "trigger": trig, "general": gen}, seeds,
                          out, run)
    real = None if ev.extractor is None else ev.extractor(
        subject.references if subject.decode is None else subject.decode(subject.references)).double()

    def unit(set_name, prompts, m, flags, label="", root="units") -> Unit:
        """One (run, set): a gated run's unit generates only its flagged prompts (:func:`merge_gated`)."""
        what = {"run": "plain" if m is None else m.describe(), "guidance": guidance, "steps": subject.steps,
                "gate": None if flags is None else {"detector": gate_info["detector"],
                                                     "threshold": gate_info["threshold"].value,
                                                     "flags": [bool(f) for f in flags],
                                                     "unflagged": "plain sampling's judgement merged"},
                "evaluator": ev.describe}
        tag = "plain" if m is None else f"{safe_name(m.name)}/{safe_name(label)}{'-gated' if flags is not None else ''}"
        todo = prompts if flags is None else [p for p, f in zip(prompts, flags, strict=True) if f]
        return Unit(out / root / tag / f"{set_name}.json", unit_settings(subject, prompts, seeds, what),
                    partial(set_task, prompt_refs(subject, todo), tuple(seeds), m, guidance, batch_size, evaluator))

    selected, selection = [], []
    if select:
        s_trig, s_gen = calibration_sets(subject) if selection_sets is None else map(list, selection_sets)
        if not s_trig or not s_gen:
            raise ValueError(f"selection needs calibration trigger and general prompts, got {len(s_trig)} and "
                             f"{len(s_gen)}; give selection_sets")
        cands = [(name, m, label) for name in select for m, label in methods if m.name == name]
        say(f"select {', '.join(select)}: {len(cands)} settings on the calibration split")
        done = run([unit("trigger", s_trig, None, None, root="selection"),
                    unit("general", s_gen, None, None, root="selection")]
                   + [u for _, m, label in cands for u in (unit("trigger", s_trig, m, None, label, "selection"),
                                                           unit("general", s_gen, m, None, label, "selection"))])
        plain_s = {"trigger_plain": done[0], "general_plain": done[1]}
        for name in select:
            rows_s, picks = [], []
            for k, (n, m, label) in enumerate(cands):
                if n == name:
                    u = {**plain_s, "trigger": done[2 + 2 * k], "general": done[3 + 2 * k]}
                    rows_s.append(_row(m, label, False, u, real, None, n_boot, "selection sweep", "calibration"))
                    picks.append(m)
            chosen = picks[_select(rows_s)]
            selected.append((chosen, f"selected {chosen.setting}" if chosen.knob else "selected default"))
            selection.append({"method": name, "rule": SELECT_RULE, "chosen": chosen.describe()["params"],
                              "n_trigger": len(s_trig), "n_general": len(s_gen),
                              "trigger": [p.id for p in s_trig], "general": [p.id for p in s_gen],
                              "rows": [{k: getattr(r, k) for k in ROW_COLUMNS} for r in rows_s]})
    jobs = [(m, label, gated) for m, label in methods + selected for gated in ((False, True) if gate_info else
                                                                                (False,))]
    say(f"plain and {len(jobs)} runs on the evaluation split")
    flags = gate_info["flags"] if gate_info else {}
    done = run([unit("trigger", trig, None, None), unit("general", gen, None, None)]
               + [u for m, label, gated in jobs for u in (unit("trigger", trig, m, flags["trigger"] if gated else None,
                                                               label),
                                                          unit("general", gen, m, flags["general"] if gated else None,
                                                               label))])
    plain = {"trigger_plain": done[0], "general_plain": done[1]}
    split = _split_of(subject, trig)
    rows = []
    for k, (m, label, gated) in enumerate(jobs):
        chosen_on = (CHOSEN["default"] if label == "default" else
                     CHOSEN["selected"].format(rule=SELECT_RULE) if label.startswith("selected") else CHOSEN["sweep"])
        t, g = done[2 + 2 * k], done[3 + 2 * k]
        if gated:
            t, g = merge_gated(done[0], t, flags["trigger"]), merge_gated(done[1], g, flags["general"])
        rows.append(_row(m, label, gated, {**plain, "trigger": t, "general": g}, real, gate_info, n_boot, chosen_on,
                         split))
    rows, pareto = _with_pareto(rows)
    gate_out = None if gate_info is None else {
        "detector": gate_info["detector"], "threshold": asdict(gate_info["threshold"]), "how": gate_info["how"],
        "false_gate_rate": gate_info["false_gate_rate"], "trigger_gate_rate": gate_info["trigger_gate_rate"],
        "nfe_per_image": gate_info["nfe_per_image"]}
    prov = {"subject": subject.describe(), "methods": [{**m.describe(), "setting": k} for m, k in methods + selected],
            "seeds": seeds,
            "base_seed": base_seed, "n_gen": n_gen, "guidance": guidance, "steps": subject.steps,
            "trigger": [p.id for p in trig], "general": [p.id for p in gen], "calibration": [p.id for p in cal],
            "trigger_split": split, "selection": selection,
            "evaluator": ev.describe, "copy_rule": f"paired NN ratio <= {COPY_RATIO:g} (Ye et al., 2025)",
            "template_rule": f"masked NN ratio <= {COPY_RATIO:g} on meta['template_mask'], nearest region = the "
                             "paired image's (template prompts only)",
            "fid_real": "the subject's distinct references", "n_boot": n_boot, "package": package_version(),
            "ci": "95 % percentile bootstrap over prompts (generations averaged per prompt); *_seed_ci: over the "
                  "generation seeds (each seed's mean over prompts resampled; few seeds give a coarse interval)",
            "cost": "NFE counted by CountingDenoiser over both sets, derivative rows included (a JVP or VJP row is "
                    "one network evaluation with its derivative pass; derivative_rows_per_image says how many); "
                    "extra = after − plain per image (+ the gate detector's per image when gated); a gated run's "
                    "unflagged generations are plain sampling's, reused and charged the plain run's measured cost "
                    "per image"}
    summary = MitigationSummary(tuple(rows), tuple(pareto), dict(GOAL), gate_out, dict(tally), prov,
                                time.perf_counter() - start)
    records = tuple({k: getattr(r, k) for k in ROW_COLUMNS} for r in rows)
    write_csv(out / "rows.csv", records, ROW_COLUMNS)
    write_json(out / "summary.json", summary.to_dict())
    return MitigationRun(summary, records)


def _split_of(subject: Subject, prompts: Sequence[Prompt]) -> str:
    """The one split the prompts come from, or "mixed"."""
    splits, _ = assign_splits(subject.prompts)
    of = dict(zip([p.id for p in subject.prompts], splits, strict=True))
    found = {of.get(p.id, p.meta.get("split")) for p in prompts}
    return found.pop() if len(found) == 1 else "mixed"


def _select(rows: Sequence[MitigationRow]) -> int:
    """Index of the row :data:`SELECT_RULE` picks: the largest copy cut among the rows within the alignment and
    NFE budgets (all rows when none is), ties to the earlier one."""
    ok = [i for i, r in enumerate(rows) if (r.general_alignment_delta is None
                                             or r.general_alignment_delta >= -GOAL["alignment_drop"])
          and r.nfe_ratio <= GOAL["nfe_ratio"]] or list(range(len(rows)))
    return max(ok, key=lambda i: (rows[i].trigger_copy_rate_before - rows[i].trigger_copy_rate_after, -i))


def _with_pareto(rows: list[MitigationRow]) -> tuple[list[MitigationRow], list[dict]]:
    """Rows flagged on the memorization (trigger copy rate after) vs quality (general alignment drop) front."""
    pts = [(r.trigger_copy_rate_after, -(r.general_alignment_delta if r.general_alignment_delta is not None
                                         else 0.0)) for r in rows]
    on = pareto_front(pts)
    rows = [replace(r, on_pareto=o) for r, o in zip(rows, on, strict=True)]
    front = sorted(({"method": r.method, "setting": r.setting, "gated": r.gated, "ours": r.ours,
                     "trigger_copy_rate_after": r.trigger_copy_rate_after,
                     "general_alignment_delta": r.general_alignment_delta} for r in rows if r.on_pareto),
                   key=lambda d: d["trigger_copy_rate_after"])
    return rows, front

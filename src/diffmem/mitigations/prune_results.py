"""Rows and summaries of the head-pruning table of Ye et al. (2025, Table 1), as typed data, and their metrics.

Per run: memorization ratio (1/3 rule on flattened pixels against the model's own training images), FID and
precision/recall (k = 3, Kynkäänniemi et al., 2019) in the features of a given extractor. Across runs: mean and
sample std (ddof = 1), and the paired difference to the original model run by run (run s of every method samples
with the same seeds, so most of the seed-to-seed spread of FID cancels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import Tensor

from diffmem.evaluation.fid import fid
from diffmem.evaluation.precision_recall import precision_recall
from diffmem.similarity.criteria import memorization_ratio

__all__ = ["METRICS", "Metrics", "PruneRow", "Spread", "MethodSummary", "PruneTable", "run_metrics",
           "summarize_method", "summarize", "format_table"]

METRICS = ("memorization_ratio", "fid", "precision", "recall")


def _from_dict(cls, d: Mapping):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Metrics:
    """Table-1 metrics of one set of generated images."""

    memorization_ratio: float
    fid: float
    precision: float
    recall: float


@dataclass(frozen=True)
class PruneRow:
    """One (method, run) of the table: how the model was made and its metrics.

    ``removed``: ``[[layer, index], …]`` (indices before removal); ``ratio``/``finetune_steps``: η and M of a
    pruned row (None for the original); ``scoring_copy_rate``: copy rate of ours' scoring batch."""

    method: str
    seed: int
    metrics: Metrics
    ours: bool = False
    removed: list = field(default_factory=list)
    ratio: float | None = None
    finetune_steps: int | None = None
    scoring_copy_rate: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> PruneRow:
        return _from_dict(cls, {**d, "metrics": _from_dict(Metrics, d["metrics"])})


@dataclass(frozen=True)
class Spread:
    """Mean and sample std (ddof = 1; NaN for a single value)."""

    mean: float
    std: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        a = np.asarray(values, dtype=float)
        return cls(float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan"))


@dataclass(frozen=True)
class MethodSummary:
    """One method over its runs: each metric's spread, and (``paired_runs`` > 0) the spread of its run-by-run
    difference to the original model (``delta``)."""

    method: str
    runs: int
    ours: bool
    memorization_ratio: Spread
    fid: Spread
    precision: Spread
    recall: Spread
    paired_runs: int = 0
    delta: dict[str, Spread] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> MethodSummary:
        spreads = {k: _from_dict(Spread, d[k]) for k in METRICS}
        delta = {k: _from_dict(Spread, v) for k, v in d.get("delta", {}).items()}
        return _from_dict(cls, {**d, **spreads, "delta": delta})


@dataclass(frozen=True)
class PruneTable:
    """The table: one summary per method (in the order asked for) and the settings it was made with."""

    methods: dict[str, MethodSummary]
    settings: dict

    def __getitem__(self, method: str) -> MethodSummary:
        return self.methods[method]

    def to_dict(self) -> dict:
        return {"methods": {m: s.to_dict() for m, s in self.methods.items()}, "settings": self.settings}

    @classmethod
    def from_dict(cls, d: Mapping) -> PruneTable:
        return cls({m: MethodSummary.from_dict(s) for m, s in d["methods"].items()}, dict(d["settings"]))


def run_metrics(x0: Tensor, train_images: Tensor, real_images: Tensor, features: Callable[[Tensor], Tensor], *,
                k: int = 3) -> Metrics:
    """Metrics of generated ``x0`` [N, C, H, W]; ``real_images`` is the reference set of FID and
    precision/recall, ``train_images`` that of the copy test."""
    if x0.shape[1:] != train_images.shape[1:]:
        raise ValueError(f"generated images {tuple(x0.shape)} and training images {tuple(train_images.shape)} "
                         "differ in shape")
    real, fake = features(real_images), features(x0)
    precision, recall = precision_recall(real, fake, k=k)
    return Metrics(memorization_ratio(x0.flatten(1), train_images.flatten(1)), fid(real, fake), precision, recall)


def summarize_method(rows: Sequence[PruneRow], baseline: Sequence[PruneRow] = ()) -> MethodSummary:
    """Spreads over ``rows`` (one method); deltas against the ``baseline`` rows of the same seed (others left out)."""
    if not rows:
        raise ValueError("a method needs at least one run to summarize")
    spreads = {k: Spread.of([getattr(r.metrics, k) for r in rows]) for k in METRICS}
    base = {r.seed: r for r in baseline}
    pairs = [(r, base[r.seed]) for r in rows if r.seed in base and r.method != base[r.seed].method]
    delta = {k: Spread.of([getattr(r.metrics, k) - getattr(b.metrics, k) for r, b in pairs]) for k in METRICS} \
        if pairs else {}
    return MethodSummary(rows[0].method, len(rows), rows[0].ours, **spreads, paired_runs=len(pairs), delta=delta)


def summarize(rows: Mapping[str, Sequence[PruneRow]], baseline: str = "original",
              baseline_rows: Sequence[PruneRow] | None = None) -> dict[str, MethodSummary]:
    """Per method (with rows): :func:`summarize_method`, paired with the ``baseline`` method's rows (or
    ``baseline_rows`` when given, e.g. originals on disk that were not asked for)."""
    base = rows.get(baseline, ()) if baseline_rows is None else baseline_rows
    return {m: summarize_method(r, base) for m, r in rows.items() if r}


def _delta(s: MethodSummary) -> str:
    if not s.paired_runs:
        return ""
    m, f = s.delta["memorization_ratio"], s.delta["fid"]
    return f"{100 * m.mean:>+11.2f}±{100 * m.std:.2f}{f.mean:>+10.3f}±{f.std:.3f}"


def format_table(table: PruneTable) -> str:
    """The table as text: precision, recall, memorization ratio %, FID (mean ± std over runs), and the paired
    differences to the original model."""
    lines = [f"{'model':<40}{'precision':>12}{'recall':>12}{'mem. ratio %':>16}{'FID':>14}{'':>10}"
             f"{'Δmem % (paired)':>18}{'ΔFID (paired)':>16}"]
    for m, s in table.methods.items():
        label = f"{m} (ours)" if s.ours else m
        lines.append(f"{label:<40}{s.precision.mean:>7.3f}±{s.precision.std:.3f}{s.recall.mean:>7.3f}±"
                     f"{s.recall.std:.3f}{100 * s.memorization_ratio.mean:>10.2f}±"
                     f"{100 * s.memorization_ratio.std:.2f}{s.fid.mean:>9.3f}±{s.fid.std:.3f}{s.runs:>6d} runs"
                     + _delta(s))
    return "\n".join(lines)

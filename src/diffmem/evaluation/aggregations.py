"""Aggregations of per-generation similarity scores, each recorded with its provenance.

The input is the per-generation table s[p, g] (prompt p, generation g; e.g. the max SSCD cosine of generation g to
the references of prompt p), a [P, G] tensor or a list of 1-D tensors for ragged prompts (padded with NaN =
missing). The table is stored with every result so any other aggregation can be recomputed from it.

| key | definition | used by |
|---|---|---|
| ``mean_of_max`` | per prompt mean_g s (the max over references is already in s); then mean over prompts | Wen |
| ``max`` | per prompt max_g s; then mean over prompts | MemBench |
| ``min`` | per prompt min_g s; then mean over prompts | Wen (reported beside mean_of_max) |
| ``top3`` | per prompt mean of the 3 largest s; then mean over prompts | MemBench |
| ``rate_above`` | fraction of all generations with s > threshold (strict; default 0.5) | DCR, MemBench |
| ``median_mad`` | median and unscaled MAD (median |v − median|) over prompts of the per-prompt mean | NeMo |
| ``percentile`` | q-th percentile over all generations (numpy's linear rule); ``p95`` = q 95 | DCR ``sim95pc``, Jain |
| ``mean_std`` | mean and (population) std over all generations | DCR, Han |
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.evaluation.provenance import MetricProvenance
from diffmem.results import Result

__all__ = ["AggregateResult", "score_table", "per_prompt", "AGGREGATIONS", "aggregate"]


def score_table(scores) -> Tensor:
    """[P, G] float64 table from a [P, G] / [G] tensor or a list of 1-D per-prompt tensors (NaN-padded)."""
    if isinstance(scores, (list, tuple)):
        rows = [torch.as_tensor(r, dtype=torch.float64).flatten() for r in scores]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("scores must hold at least one generation per prompt")
        table = torch.full((len(rows), max(len(r) for r in rows)), float("nan"), dtype=torch.float64)
        for i, r in enumerate(rows):
            table[i, :len(r)] = r
    else:
        table = torch.as_tensor(scores, dtype=torch.float64)
        table = table[None] if table.ndim == 1 else table
    if table.ndim != 2 or table.numel() == 0:
        raise ValueError(f"scores must be [P, G] (or [G]), got shape {tuple(table.shape)}")
    if bool(torch.isinf(table).any()):
        raise ValueError("scores contain inf")
    if bool(torch.isnan(table).all(1).any()):
        raise ValueError("a prompt has no (non-NaN) generation")
    return table


def per_prompt(table: Tensor, how: str, n: int = 3) -> Tensor:
    """Per-prompt mean / max / min / top-n mean of a NaN-padded table [P, G] → [P]."""
    valid = ~torch.isnan(table)
    if how == "mean":
        return table.nanmean(1)
    if how in ("max", "min"):
        fill = float("-inf") if how == "max" else float("inf")
        filled = table.masked_fill(~valid, fill)
        return filled.amax(1) if how == "max" else filled.amin(1)
    if how == "top":
        top = table.masked_fill(~valid, float("-inf")).topk(min(n, table.shape[1]), dim=1).values
        return torch.where(torch.isinf(top), torch.nan, top).nanmean(1)  # fewer than n generations: mean of all
    raise ValueError(f"unknown per-prompt reduction {how!r}")


@dataclass(frozen=True)
class AggregateResult(Result):
    """One aggregated number with its spread (MAD, std) where defined, per-prompt values and the full table."""

    value: float
    spread: float | None
    per_prompt: Tensor | None
    scores: Tensor
    provenance: MetricProvenance


def _over_prompts(how: str):
    def agg(t: Tensor, n: int = 3):
        v = per_prompt(t, how, n)
        return float(v.mean()), None, v
    return agg


def _rate_above(t: Tensor, threshold: float = 0.5):
    v = t[~torch.isnan(t)]
    return float((v > threshold).double().mean()), None, None


def _median_mad(t: Tensor):
    v = per_prompt(t, "mean")
    med = v.quantile(0.5)
    return float(med), float((v - med).abs().quantile(0.5)), v


def _percentile(t: Tensor, q: float = 95.0):
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    return float(t[~torch.isnan(t)].quantile(q / 100)), None, None


def _mean_std(t: Tensor):
    v = t[~torch.isnan(t)]
    return float(v.mean()), float(v.std(correction=0)), None


AGGREGATIONS = {"mean_of_max": _over_prompts("mean"), "max": _over_prompts("max"), "min": _over_prompts("min"),
                "top3": lambda t: _over_prompts("top")(t, 3), "rate_above": _rate_above, "median_mad": _median_mad,
                "percentile": _percentile, "p95": lambda t: _percentile(t, 95.0), "mean_std": _mean_std}


def aggregate(scores, name: str, provenance: MetricProvenance, *, record: dict | None = None,
              **params) -> AggregateResult:
    """Aggregate a per-generation table by ``name`` (see the table above), recording it in the provenance.

    ``params`` go to the aggregation (``threshold``, ``q``); ``record`` holds extra notes for the provenance only.

    >>> prov = MetricProvenance("sscd_cosine")
    >>> r = aggregate([[0.9, 0.2], [0.4, 0.6]], "rate_above", prov, threshold=0.5)
    >>> r.value, r.provenance.aggregation, r.provenance.threshold
    (0.5, 'rate_above', 0.5)
    """
    if name not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {name!r}; choose from {sorted(AGGREGATIONS)}")
    table = score_table(scores)
    value, spread, prompts = AGGREGATIONS[name](table, **params)
    threshold = params.pop("threshold", 0.5 if name == "rate_above" else None)
    prov = provenance.with_aggregation(name, threshold, **params, **(record or {}))
    return AggregateResult(value, spread, prompts, table, prov)

"""Published evaluation presets: which SSCD checkpoint, preprocessing, generations per
prompt and aggregations each peer family reports, so a diffmem number can be put beside theirs.

Running a preset on a per-generation SSCD table gives every aggregation of that preset, each with provenance.
The checkpoint is the user's local file; when its name does not contain the preset's checkpoint name, the result
records ``checkpoint_matches_preset = False`` rather than refusing (the number is then not comparable).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffmem.evaluation.aggregations import AggregateResult, aggregate
from diffmem.evaluation.provenance import MetricProvenance

__all__ = ["EvalPreset", "EVAL_PRESETS", "evaluate_preset"]


@dataclass(frozen=True)
class EvalPreset:
    """One peer's protocol: SSCD checkpoint, preprocessing preset, generations per prompt, aggregations."""

    name: str
    checkpoint: str
    preprocess: str
    n_per_prompt: int | None
    aggregations: tuple[tuple[str, dict], ...]
    extra_metrics: tuple[str, ...]
    source: str


EVAL_PRESETS = {
    "wen": EvalPreset("wen", "sscd_disc_large", "dcr", 4, (("mean_of_max", {}), ("max", {}), ("min", {})),
                      ("clip",), "Wen et al., ICLR 2024"),
    "nemo": EvalPreset("nemo", "sscd_disc_mixup", "sscd_official", 10, (("median_mad", {}),),
                       ("diversity", "fid", "clip_fid", "kid"), "Hintersdorf et al., NeurIPS 2024 (resize unverified)"),
    "membench": EvalPreset("membench", "sscd_disc_large", "square288", 10,
                           (("max", {}), ("top3", {}), ("rate_above", {"threshold": 0.5})),
                           ("clip", "aesthetic"), "Hong et al., arXiv 2407.17095"),
    "dcr": EvalPreset("dcr", "sscd_disc_large", "dcr", None,
                      (("p95", {}), ("rate_above", {"threshold": 0.5}), ("mean_std", {}),
                       ("percentile", {"q": 75.0}), ("percentile", {"q": 90.0})),
                      ("fid", "background_similarity"), "Somepalli et al., CVPR 2023 / NeurIPS 2023"),
    "han": EvalPreset("han", "sscd_disc_mixup", "sscd_official", 10, (("mean_std", {}),),
                      ("clip", "lpips_diversity", "image_reward"), "Han et al. (init-noise mitigation)"),
}


def evaluate_preset(scores, preset: str | EvalPreset, provenance: MetricProvenance) -> dict[str, AggregateResult]:
    """Every aggregation of ``preset`` on the per-generation table, keyed ``name`` or ``name_q75`` etc."""
    p = preset if isinstance(preset, EvalPreset) else EVAL_PRESETS.get(preset)
    if p is None:
        raise ValueError(f"unknown evaluation preset {preset!r}; choose from {sorted(EVAL_PRESETS)}")
    model = provenance.model or {}
    matches = p.checkpoint in str(model.get("name") or model.get("path") or "")
    pre = (provenance.preprocessing or {}).get("name")
    out = {}
    for name, params in p.aggregations:
        key = name + "".join(f"_{k[0]}{v:g}" for k, v in params.items() if k != "threshold")
        out[key] = aggregate(scores, name, provenance, **params, record={
            "preset": p.name, "checkpoint_matches_preset": matches, "preprocess_matches_preset": pre == p.preprocess})
    return out

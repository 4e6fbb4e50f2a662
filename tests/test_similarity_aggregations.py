"""Aggregations of per-generation scores against numpy, with provenance; evaluation presets."""

import numpy as np
import pytest
import torch

from diffmem.evaluation.aggregations import AggregateResult, aggregate, score_table
from diffmem.evaluation.presets import EVAL_PRESETS, evaluate_preset
from diffmem.evaluation.provenance import MetricProvenance
from diffmem.results import Provenance

TABLE = np.array([[0.9, 0.2, 0.6, 0.4], [0.3, 0.8, 0.1, 0.55], [0.7, 0.75, 0.95, 0.5]])
PROV = MetricProvenance("sscd_cosine", model={"name": "sscd_disc_large.torchscript.pt", "sha256": "ab" * 32},
                        preprocessing={"name": "dcr"})


@pytest.mark.parametrize("name, params, expected", [
    ("mean_of_max", {}, TABLE.mean(1).mean()),
    ("max", {}, TABLE.max(1).mean()),
    ("min", {}, TABLE.min(1).mean()),
    ("top3", {}, np.sort(TABLE, 1)[:, -3:].mean(1).mean()),
    ("rate_above", {"threshold": 0.5}, (TABLE > 0.5).mean()),
    ("rate_above", {"threshold": 0.55}, (TABLE > 0.55).mean()),  # strict: 0.55 itself is not above
    ("median_mad", {}, np.median(TABLE.mean(1))),
    ("p95", {}, np.percentile(TABLE, 95)),
    ("percentile", {"q": 75.0}, np.percentile(TABLE, 75)),
    ("mean_std", {}, TABLE.mean()),
])
def test_aggregations_match_numpy(name, params, expected):
    res = aggregate(torch.tensor(TABLE), name, PROV, **params)
    assert res.value == pytest.approx(expected, rel=1e-12)
    assert res.provenance.aggregation == name and res.provenance.metric == "sscd_cosine"
    assert res.provenance.model["sha256"] == "ab" * 32 and res.provenance.preprocessing == {"name": "dcr"}
    assert torch.equal(res.scores, torch.tensor(TABLE))


def test_spreads_and_per_prompt_values():
    mad = aggregate(TABLE, "median_mad", PROV)
    per = TABLE.mean(1)
    assert mad.spread == pytest.approx(np.median(np.abs(per - np.median(per))))
    np.testing.assert_allclose(mad.per_prompt.numpy(), per)
    assert aggregate(TABLE, "mean_std", PROV).spread == pytest.approx(TABLE.std())
    assert aggregate(TABLE, "rate_above", PROV).provenance.threshold == 0.5  # the default is recorded


def test_ragged_prompts_are_nan_padded():
    rows = [[0.9, 0.1], [0.2, 0.4, 0.6, 0.8], [0.5]]
    table = score_table(rows)
    assert table.shape == (3, 4) and torch.isnan(table[0, 2:]).all()
    assert aggregate(rows, "mean_of_max", PROV).value == pytest.approx(np.mean([0.5, 0.5, 0.5]))
    assert aggregate(rows, "top3", PROV).value == pytest.approx(np.mean([0.5, 0.6, 0.5]))
    assert aggregate(rows, "rate_above", PROV).value == pytest.approx(3 / 7)
    assert aggregate(rows, "max", PROV).per_prompt.tolist() == [0.9, 0.8, 0.5]


def test_result_round_trips_with_generation_provenance(tmp_path):
    gen = Provenance(model={"id": "tiny"}, solver={"name": "ddim"}, grid={"steps": 10}, guidance={"w": 7.5},
                     seeds=[0, 1, 2, 3])
    res = aggregate(TABLE, "p95", MetricProvenance.of("sscd_cosine", None, generation=gen))
    res.save(tmp_path, "agg")
    back = AggregateResult.load(tmp_path, "agg")
    assert back.value == res.value and back.provenance.generation.seeds == [0, 1, 2, 3]
    assert back.provenance.aggregation == "p95" and torch.equal(back.scores, res.scores)


def test_presets_run_every_aggregation_and_flag_mismatches():
    out = evaluate_preset(TABLE, "membench", PROV)
    assert set(out) == {"max", "top3", "rate_above"}
    assert out["rate_above"].provenance.threshold == 0.5
    params = out["top3"].provenance.params
    assert params["preset"] == "membench" and params["checkpoint_matches_preset"] is True
    assert params["preprocess_matches_preset"] is False  # membench uses square288, this table used dcr
    dcr = evaluate_preset(TABLE, "dcr", PROV)
    assert set(dcr) == {"p95", "rate_above", "mean_std", "percentile_q75", "percentile_q90"}
    assert dcr["percentile_q90"].value == pytest.approx(np.percentile(TABLE, 90))
    assert set(EVAL_PRESETS) == {"wen", "nemo", "membench", "dcr", "han"}


@pytest.mark.parametrize("call, match", [
    (lambda: aggregate(TABLE, "mode", PROV), "unknown aggregation"),
    (lambda: aggregate([[float("nan")]], "max", PROV), "no \\(non-NaN\\) generation"),
    (lambda: aggregate(np.ones((2, 2, 2)), "max", PROV), r"\[P, G\]"),
    (lambda: aggregate([[]], "max", PROV), "at least one generation"),
    (lambda: aggregate(TABLE, "percentile", PROV, q=120), "percentile q"),
    (lambda: aggregate([[float("inf")]], "max", PROV), "inf"),
    (lambda: evaluate_preset(TABLE, "carlini", PROV), "unknown evaluation preset"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()

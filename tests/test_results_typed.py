"""Typed results round-trip through their saved form: flat summaries (summary.json) and whole Results."""

import json

import torch

from diffmem.analyses.kim_summary import KimSummary
from diffmem.io import strict_json
from diffmem.results import Provenance
from diffmem.runners.demo import ClosedFormRow, DemoResult, TheoryHeadline, WorldRates, WorldSection
from diffmem.runners.kim import KimRun
from diffmem.theory.summaries import SUMMARIES, LossGapSummary, ScoresSummary, SweepSummary, TeaserSummary


def _json(d: dict) -> dict:
    return json.loads(json.dumps(d))


def _kim_run() -> KimRun:
    summary = KimSummary(n_prompts=4, n_seeds=2, primary_severity="ssim", pearson_D1=0.7, spearman_D1_ci=(0.1, 0.8),
                         n_memorized=2, n_nonmemorized=2, loss_ratio_guided_mem_vs_nonmem=1.9)
    return KimRun(summary, 12.5, True, {"model": {"name": "m"}, "seeds": [0, 1]})


def test_kim_run_is_its_summary_json():
    run = _kim_run()
    d = _json(run.to_dict())
    assert list(d)[-3:] == ["wall_seconds", "quick", "provenance"] and d["pearson_D1"] == 0.7
    back = KimRun.from_dict(d)
    assert back.summary.spearman_D1_ci == (0.1, 0.8) and back.to_dict() == d


def test_theory_summaries_round_trip():
    examples = {
        "loss_gap": LossGapSummary(
            t=[0.1, 1.0], n=[10], dim=2, draws=5, gap_mc={"10": [1.0, 2.0]}, gap_se={"10": [0.1, 0.1]},
            fisher_mc={"10": [1.0, 2.0]}, fisher_se={"10": [0.1, 0.1]}, diff_se={"10": [0.0, 0.0]},
            gap_closed_form=[1.0, 2.0], prop41_agree={"10": [True, True]}, prop41_all_agree=True, prop41_max_z=0.5,
            max_rel_err_small_t=0.01, reference=[{"t": 0.1, "gap_n10": 1.0, "closed_form": 1.0}]),
        "scores": ScoresSummary(memorization={"true": {"memorization_ratio": 0.0}}, heldout_loglik_mean=-3.0, n=5,
                                dim=2, collapse={"rows": []}, lipschitz={"rows": []}, wall_s=1.0),
        "sweep": SweepSummary(config={"name": "x"}, panels={"n": [{"n": 4}]}, wall_s=1.0, run_s_total=1.0,
                              cpu_s_total=2.0, findings=["a"]),
        "teaser": TeaserSummary(rows=[{"name": "true"}], world={"world": "gmm-2d"}, n=20),
    }
    assert set(examples) == set(SUMMARIES)
    for kind, s in examples.items():
        d = _json(s.to_dict())
        assert SUMMARIES[kind].from_dict({**d, "provenance": {}}) == s, kind


def test_demo_result_with_every_section_round_trips(tmp_path):
    prov = Provenance(model={"world": "gaussian_mixture"}, solver={"name": "ddim"}, grid={}, guidance={}, seeds=[0])
    world = WorldSection("digits-t2i", 4, {"planted": 2}, 50, {"7.5": WorldRates(1.0, 0.0, None, 0.9)},
                         {"steps": 3000}, 12.0)
    theory = TheoryHeadline([{"t": 0.1, "gap_n1000": 1.0, "gap_n10000": 1.1, "closed_form": 1.0}], True, 0.01,
                            1.0, 0.0)
    res = DemoResult([ClosedFormRow("empirical_w1", "empirical", 1.0, 1.0, 0.0, 1.0, 0.5)],
                     {"empirical_w1": torch.zeros(2, 3)}, torch.ones(4, 3), prov, world, _kim_run(), theory)
    res.save(tmp_path, "demo")
    back = DemoResult.load(tmp_path, "demo")
    assert back.sections == ("world", "kim", "theory")
    assert back.world == world and back.theory == theory and back.rows == res.rows
    # NaN != NaN: compare the strict JSON texts (non-finite values are null there)
    assert strict_json(back.kim.to_dict()) == strict_json(res.kim.to_dict())
    assert isinstance(back.kim.summary, KimSummary)
    assert torch.equal(back.samples["empirical_w1"], res.samples["empirical_w1"])

"""The detection harness: counted cost, schema of summary.json and scores.csv, resume after a kill, calibration."""

import csv
import json
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch

from detector_oracles import oracle_subjects
from diffmem.detectors.base import Detector
from diffmem.detectors.counting import CountingDenoiser, measure_call
from diffmem.detectors.harness import CSV_COLUMNS, DetectionSummary, run_detection
from diffmem.detectors.labels import assign_splits, planted_label
from diffmem.detectors.noise_diff import NoiseDiffMagnitude
from diffmem.evaluation.detection import calibrate_threshold
from helpers import TinyNet, class_cond

ROW_KEYS = {"detector", "n_gen", "label", "auc", "auc_ci", "tpr_at_1fpr", "tpr_at_01fpr", "nfe_per_generation",
            "seconds_per_prompt", "peak_mem_mb"}


@pytest.fixture(scope="module")
def oracle():
    empirical, _, planted = oracle_subjects(k=40, steps=10)
    return empirical, planted


def test_counting_denoiser_counts_forward_jvp_and_vjp_rows():
    d = CountingDenoiser(TinyNet())
    x, cond = torch.randn(3, 16), class_cond([0, 1, 2])
    with torch.no_grad():
        d(x, 500, cond)  # CFG: both branches, 2 rows per latent
        d(x, 500, cond, uncond=False)
        d(x.requires_grad_(), 500, cond)  # no graph is recorded: a plain forward
    assert (d.nfe, d.jvp, d.vjp, d.calls) == (15, 0, 0, 3)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(torch.randn(3, 16), torch.randn(3, 16))
        out = d(dual, 500, cond, uncond=False)
        assert torch.autograd.forward_ad.unpack_dual(out.eps_c).tangent is not None
    x = torch.randn(2, 16, requires_grad=True)
    d(x, 500, class_cond([0, 1])).eps_c.sum().backward()
    assert (d.nfe, d.jvp, d.vjp, d.calls) == (15, 3, 4, 5)
    assert d.schedule is d.inner.schedule and d.describe() == d.inner.describe() and d.W1 is d.inner.W1


def test_measure_call_counts_the_subject_loop(oracle):
    subject, _ = oracle
    traj, cost = measure_call(subject, lambda s: s.sample(s.cond(s.prompts[:3]), [0, 1, 2], guidance=7.5))
    assert cost.nfe == 2 * 3 * subject.steps and cost.jvp == cost.vjp == 0 and cost.calls == subject.steps
    assert cost.seconds > 0 and cost.peak_mem_mb >= 0 and cost.memory in ("vmhwm", "rss-sampled", "cuda")
    assert traj.x_0.shape[0] == 3


def _run(subject, out, **kw):
    kw = {"n_gen": (1, 2), "n_label": 2, "n_boot": 100, "chunk_size": 8, **kw}
    return run_detection(subject, kw.pop("detectors", ["wen-step1", "wen-steps5"]), out=out, **kw)


def test_harness_on_the_oracle_rows_and_csv_schema(oracle, tmp_path):
    subject, planted = oracle
    run = _run(subject, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["rows"]) == 2 * 2 * 2  # detectors × n × labels
    for r in summary["rows"]:
        assert ROW_KEYS <= set(r) and {"jvp_per_generation", "vjp_per_generation"} <= set(r)
    row = run.summary.row("wen-step1", 1, "planted")
    assert row.auc > 0.99 and row.tpr_at_1fpr > 0.9 and row.nfe_per_generation == 2.0
    assert run.summary.row("wen-steps5", 2).nfe_per_generation == 10.0
    assert DetectionSummary.from_dict(summary) == run.summary
    with open(tmp_path / "scores.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == len(subject.prompts) * 2 * 2
    assert {r["split"] for r in rows} == {"calibration", "evaluation"}
    first = {r["prompt_id"]: r for r in rows if r["detector"] == "wen-step1" and r["n_gen"] == "1"}
    assert [int(first[p.id]["label_planted"]) for p in subject.prompts] == planted.tolist()
    assert all(float(r["score"]) > 0 for r in rows)
    prov = summary["provenance"]
    assert prov["seeds"] == {"1": [0], "2": [0, 1]} and "wen-step1" in prov["detectors"]
    assert summary["labels"]["measured"]["guidance"] == 7.5


def test_kill_and_resume_equals_an_uninterrupted_run(oracle, tmp_path, monkeypatch):
    subject, _ = oracle
    full = _run(subject, tmp_path / "full", labels=("planted",))
    original, calls = NoiseDiffMagnitude.score_generations, {"n": 0}

    def dying(self, *args, **kw):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kw)

    monkeypatch.setattr(NoiseDiffMagnitude, "score_generations", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(subject, tmp_path / "resumed", labels=("planted",))
    monkeypatch.setattr(NoiseDiffMagnitude, "score_generations", original)
    resumed = _run(subject, tmp_path / "resumed", labels=("planted",))
    assert resumed.records == full.records
    assert resumed.summary.units == {"computed": 20 - 3, "reused": 3, "recomputed": 0}  # 5 chunks × 2 × 2
    strip = ("seconds_per_prompt", "peak_mem_mb")
    assert ([replace(r, **dict.fromkeys(strip, 0)) for r in resumed.summary.rows]
            == [replace(r, **dict.fromkeys(strip, 0)) for r in full.summary.rows])
    # units made under other settings (here other seeds) are recomputed, never reused
    other = _run(subject, tmp_path / "resumed", labels=("planted",), base_seed=5)
    assert other.summary.units == {"computed": 20, "reused": 0, "recomputed": 20}
    assert other.records != full.records


@dataclass(frozen=True)
class SplitProbe(Detector):
    """Scores 100 on evaluation negatives and the prompt's index elsewhere: a threshold set on evaluation
    negatives would sit at 100."""

    name = "split-probe"
    splits: tuple = ()

    def score(self, subject, prompts, seeds):
        index = {p.id: j for j, p in enumerate(subject.prompts)}
        out = []
        for p in prompts:
            j = index[p.id]
            bad = self.splits[j] == "evaluation" and planted_label(p) == 0
            out.append(100.0 if bad else float(j))
        return np.array(out)


def test_thresholds_come_from_calibration_negatives_only(oracle, tmp_path):
    subject, planted = oracle
    split, how = assign_splits(subject.prompts)
    assert how == "hash" and assign_splits(subject.prompts[::-1])[0] == split[::-1]  # order-free
    probe = SplitProbe(splits=tuple(split))
    run = _run(subject, tmp_path, detectors=[probe], n_gen=(1,), labels=("planted",))
    cal_neg = [j for j, s in enumerate(split) if s == "calibration" and planted[j] == 0]
    thr = run.summary.row("split-probe", 1).thresholds
    assert thr["1%"]["value"] == calibrate_threshold(np.array(cal_neg, dtype=float), 0.01).value == max(cal_neg)
    assert thr["1%"]["n_negatives"] == len(cal_neg) and thr["1%"]["eval_fpr"] == 1.0


def test_split_from_meta_and_bad_split_refused(oracle):
    subject, _ = oracle
    prompts = [replace(p, meta={**p.meta, "split": "evaluation"}) for p in subject.prompts]
    assert assign_splits(prompts) == (["evaluation"] * len(prompts), "meta")
    with pytest.raises(ValueError, match="has split 'test'"):
        assign_splits([replace(prompts[0], meta={"split": "test"})])


def test_detection_rate_by_rung_at_the_calibrated_threshold(oracle, tmp_path):
    subject, planted = oracle
    run = _run(subject, tmp_path, detectors=["wen-step1"], n_gen=(1,), labels=("planted",))
    by_m = run.summary.row("wen-step1", 1).detection_by_m
    split, _ = assign_splits(subject.prompts)
    n_eval = sum(s == "evaluation" and y == 1 for s, y in zip(split, planted, strict=True))
    assert list(by_m) == ["planted:1"] and by_m["planted:1"][1] == n_eval and by_m["planted:1"][0] > 0.9


def test_calibrated_detectors_are_fitted_on_calibration_negatives_with_their_own_seeds(oracle, tmp_path):
    subject, _ = oracle
    run = _run(subject, tmp_path, detectors=["chen-stability-band", "wen-step1"], n_fit=3)
    fit = run.summary.provenance["calibration_fits"]
    assert list(fit) == ["chen-stability-band"]
    split = dict(zip([p.id for p in subject.prompts], assign_splits(subject.prompts)[0], strict=True))
    ids = {p.id for p in subject.prompts if split[p.id] == "calibration" and planted_label(p) == 0}
    assert set(fit["chen-stability-band"]["prompts"]) == ids
    # after every scoring (n = 1, 2) and label (2) seed: base_seed + 2, + 3, + 4
    assert fit["chen-stability-band"]["seeds"] == [2, 3, 4]
    params = run.summary.provenance["detectors"]["chen-stability-band"]["params"]
    assert params["n_calibration_"] == 3 * len(ids) and run.summary.row("chen-stability-band", 1).auc is not None
    again = _run(subject, tmp_path, detectors=["chen-stability-band", "wen-step1"], n_fit=3)  # the fit is a unit
    assert again.summary.units["computed"] == 0 and again.summary.rows == run.summary.rows


def test_template_prompts_are_judged_on_their_region_by_the_given_rule(oracle):
    from diffmem.detectors.labels import copy_judgement, template_mask
    from diffmem.similarity.criteria import nn_ratio

    subject, _ = oracle
    shape = subject.state_shape
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[..., :4, :] = True
    hexed = np.packbits(mask.flatten().numpy().astype(np.uint8)).tobytes().hex()
    p = subject.prompts[0]
    tp = replace(p, meta={**p.meta, "template_mask": hexed})
    assert torch.equal(template_mask(tp, shape), mask) and template_mask(p, shape) is None
    calls = []

    def region(x, refs, m):  # the whole-image ratio on the region's pixels only
        calls.append(m)
        return nn_ratio(x[:, m], refs[:, m])

    got = copy_judgement(subject, [tp, p], [0, 1], guidance=7.5, region_rule=region)
    assert got["judged"] == ["region", "whole"] and len(calls) == 1 and torch.equal(calls[0], mask)
    plain = copy_judgement(subject, [tp, p], [0, 1], guidance=7.5, region_rule=None)
    assert plain["judged"] == ["whole: no region rule", "whole"] and plain["ratio"][1] == got["ratio"][1]


def test_units_of_a_world_copied_elsewhere_are_reused_there(tmp_path, monkeypatch):
    import shutil

    from diffmem.detectors.harness import unit_settings
    from diffmem.worlds.subject import world_subject
    from diffmem.worlds.world import load_world
    from test_training import tiny

    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    world = load_world(tiny(steps=2), progress=False)
    moved = tmp_path / "elsewhere" / world.directory.name
    shutil.copytree(world.directory, moved)
    a, b = world_subject(world, steps=4), world_subject(load_world(moved, progress=False), steps=4)
    assert a.describe()["checkpoint"] != b.describe()["checkpoint"]  # provenance keeps the real path
    prompts = list(a.prompts[:3])
    assert unit_settings(a, prompts, [0, 1], {"d": 1}) == unit_settings(b, prompts, [0, 1], {"d": 1})
    other = world_subject(load_world(tiny(steps=3), progress=False), steps=4)  # another world is another subject
    assert unit_settings(other, prompts, [0, 1], {"d": 1}) != unit_settings(a, prompts, [0, 1], {"d": 1})

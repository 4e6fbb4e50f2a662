"""The harness's template-masked copy judgement, mosaic alignment, held-out knob selection and the goal check."""

import math
from types import SimpleNamespace

import pytest
import torch

from detector_oracles import oracle_subjects
from diffmem.detectors.labels import assign_splits
from diffmem.io import read_json
from diffmem.mitigations.harness import (
    GOAL,
    Evaluator,
    _judge,
    _select,
    calibration_sets,
    default_sets,
    goal_check,
    meets_goal,
    run_mitigation,
    template_copies,
)
from diffmem.subject import Prompt
from test_mitigation_harness import EVAL, _labelled

# 1×2×2 states; the template region is the left column (pixels (0,0) and (1,0))
MASK = torch.tensor([[[True, False], [True, False]]])
A = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])   # the template prompt's own image
B = torch.tensor([[[-1.0, 0.0], [-1.0, 0.0]]])
C = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
REFS = torch.stack([A, B, C]).double()


def _subject():
    return SimpleNamespace(references=REFS, decode=None)


def test_template_copy_is_judged_on_the_region_where_the_global_rule_sees_none():
    # g keeps A's template column exactly and replaces the rest by 3s: globally its nearest image is A at √18 and
    # the second C at √22, ratio √(18/22) = 0.905 > 1/3 (no copy); on the region the distance to A's is 0 (a copy)
    g = torch.tensor([[[1.0, 3.0], [1.0, 3.0]]])
    # h copies B whole: a global copy, but of B, so neither the paired rule nor the template rule counts it for A
    h = B.clone()
    template = Prompt("template:0", "t", None, "template", A, {"template_mask": MASK, "paired_ids": [0]})
    plain = Prompt("ladder:1", "l", None, "ladder", A, {"paired_ids": [0]})
    assert template_copies(template, torch.stack([g, h]), REFS).tolist() == [True, False]
    assert template_copies(plain, torch.stack([g, h]), REFS) is None  # no mask: not judged
    ev = Evaluator(template_judge=template_copies)
    out = _judge(_subject(), [template, plain], torch.stack([g, h, g, h]).double(), 2, ev)
    assert out["copy"] == [[0.0, 0.0], [0.0, 0.0]]  # the global paired rule: no copy of A anywhere
    assert out["template_copy"] == [[1.0, 0.0], [None, None]]
    assert out["ratio"][0][0] == pytest.approx(math.sqrt(18 / 22))
    hexmask = Prompt("template:0", "t", None, "template", A, {"template_mask": "a0"})  # bits 1010 = left column
    assert template_copies(hexmask, g[None], REFS).tolist() == [True]


def test_alignment_reads_per_cell_digits_when_there_is_no_label():
    ev = Evaluator(aligner=lambda x: torch.tensor([[1, 2, 3, 4], [1, 0, 0, 0]]))
    p = Prompt("ladder:0", "one two three five", None, "ladder", A, {"digits": [1, 2, 3, 5], "label": None})
    out = _judge(_subject(), [p], torch.stack([A, B]).double(), 2, ev)
    assert out["aligned"] == [[0.75, 0.25]]


@pytest.fixture(scope="module")
def oracle():
    torch.set_num_threads(1)
    empirical, _, _ = oracle_subjects(k=16, steps=8)
    return _labelled(empirical)


def test_a_knob_chosen_from_data_is_chosen_on_the_calibration_split_and_reported_on_the_evaluation_split(
        oracle, tmp_path):
    run = run_mitigation(oracle, {"jain-stp": (980.0, 300.0)}, select=["jain-stp"], n_gen=2, n_boot=50,
                         evaluator=EVAL, out=tmp_path)
    sel = run.summary.provenance["selection"]
    assert len(sel) == 1 and sel[0]["method"] == "jain-stp"
    split = dict(zip([p.id for p in oracle.prompts], assign_splits(oracle.prompts)[0], strict=True))
    cal_trig, cal_gen = calibration_sets(oracle)
    trig, gen, _ = default_sets(oracle)
    assert sel[0]["trigger"] == [p.id for p in cal_trig] and sel[0]["general"] == [p.id for p in cal_gen]
    assert {split[i] for i in sel[0]["trigger"] + sel[0]["general"]} == {"calibration"}
    assert {split[i] for i in run.summary.provenance["trigger"]} == {"evaluation"}
    # the choice follows the rule on the saved calibration rows
    saved = read_json(tmp_path / "summary.json")["provenance"]["selection"][0]["rows"]
    rows = [SimpleNamespace(**r) for r in saved]
    assert {r["trigger_split"] for r in saved} == {"calibration"}
    chosen = saved[_select(rows)]["setting"]
    tau = {"default": 500.0, "tau=980.0": 980.0, "tau=300.0": 300.0}[chosen]
    assert sel[0]["chosen"]["tau"] == tau
    row = [r for r in run.summary.rows if r.setting.startswith("selected")]
    assert len(row) == 1 and row[0].setting == f"selected tau={tau!r}"
    assert row[0].chosen_on.startswith("chosen on the calibration split") and row[0].trigger_split == "evaluation"


def _saved(**kw):
    row = {"method": "m", "setting": "default", "gated": False, "trigger_copy_rate_before": 0.8,
           "trigger_copy_rate_after": 0.05, "general_alignment_delta": -0.01, "general_fid_delta": 0.4,
           "general_fid_before": 10.0, "nfe_ratio": 1.0}
    return {**row, **kw}


def test_goal_check_from_saved_numbers():
    rows = [_saved(),                                           # cut 93.75 %, −1 pt, FID +4 %, 1×: meets
            _saved(trigger_copy_rate_after=0.1),                # cut 87.5 %: fails the copy cut
            _saved(general_alignment_delta=-0.021),             # −2.1 pts: fails alignment
            _saved(general_fid_delta=0.6),                      # FID +6 %: fails quality
            _saved(nfe_ratio=1.21),                             # 1.21× NFE: fails cost
            _saved(general_fid_delta=None, general_fid_before=None),  # FID not measured: not held against it
            _saved(trigger_copy_rate_before=0.0, trigger_copy_rate_after=0.0)]  # nothing to cut: no
    checks = goal_check({"rows": rows})
    assert [c["meets_goal"] for c in checks] == [True, False, False, False, False, True, False]
    assert checks[0]["copy_cut"] == pytest.approx(1 - 0.05 / 0.8) and checks[0]["fid_rise"] == pytest.approx(0.04)
    assert (checks[1]["copy_ok"], checks[2]["alignment_ok"], checks[3]["fid_ok"], checks[4]["nfe_ok"]) == (
        False, False, False, False)
    assert checks[5]["fid_ok"] is None and [meets_goal(r) for r in rows] == [c["meets_goal"] for c in checks]
    assert GOAL == {"copy_cut": 0.9, "alignment_drop": 0.02, "fid_rise": 0.05, "nfe_ratio": 1.2}


def test_goal_check_agrees_with_the_rows_of_a_run(oracle, tmp_path):
    run = run_mitigation(oracle, {"jain-stp": (980.0,), "ours-overshoot": ()}, n_gen=2, n_boot=50,
                         evaluator=EVAL, out=tmp_path)
    saved = read_json(tmp_path / "summary.json")
    assert [c["meets_goal"] for c in goal_check(saved)] == [r.meets_goal for r in run.summary.rows]

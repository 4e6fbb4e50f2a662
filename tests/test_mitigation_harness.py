"""The mitigation harness on the closed-form memorizer: rows and CSV schema, gating, resume, the Pareto front."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from detector_oracles import oracle_subjects
from diffmem.executor import SerialExecutor
from diffmem.io import read_json
from diffmem.mitigations.harness import (
    ROW_COLUMNS,
    Evaluator,
    MitigationSummary,
    default_sets,
    evaluations,
    merge_gated,
    pareto_front,
    run_mitigation,
    settings_of,
)

REQUIRED = {"method", "setting", "gated", "trigger_copy_rate_before", "trigger_copy_rate_after",
            "template_copy_rate_after", "alignment_before", "alignment_after", "fid_before", "fid_after",
            "general_alignment_delta", "general_fid_delta", "extra_nfe_per_image", "seconds_per_image"}


def _labelled(subject):
    """The oracle with a label per prompt (its class parity) so alignment is defined."""
    prompts = tuple(replace(p, meta={**p.meta, "label": int(p.id.split(":")[1]) % 2}) for p in subject.prompts)
    return replace(subject, prompts=prompts)


# aligner: parity of the nearest class mean is not available, so a fixed rule on the mean pixel; features: pixels
EVAL = Evaluator(aligner=lambda x: (x.flatten(1).mean(1) > 0).long(), extractor=lambda x: x.flatten(1)[:, :6],
                 describe={"aligner": "mean pixel > 0", "features": "first 6 pixels"})


@pytest.fixture(scope="module")
def oracle():
    torch.set_num_threads(1)
    empirical, _, _ = oracle_subjects(k=16, steps=8)
    return _labelled(empirical)


def _run(subject, out, **kw):
    kw = {"n_gen": 2, "n_boot": 50, "evaluator": EVAL, **kw}
    return run_mitigation(subject, kw.pop("methods", {"jain-stp": (300.0,), "ours-overshoot": ()}), out=out, **kw)


def test_rows_csv_and_summary_schema(oracle, tmp_path):
    run = _run(oracle, tmp_path, gate="wen-step1")
    s = run.summary
    assert {(r.method, r.setting, r.gated) for r in s.rows} == {
        ("jain-stp", "default", False), ("jain-stp", "default", True), ("jain-stp", "tau=300.0", False),
        ("jain-stp", "tau=300.0", True), ("ours-overshoot", "default", False), ("ours-overshoot", "default", True)}
    d = json.loads((tmp_path / "summary.json").read_text())
    assert REQUIRED <= set(d["rows"][0]) and {"pareto", "gate", "provenance", "goal"} <= set(d)
    assert d["gate"]["threshold"]["split"] == "calibration" and d["provenance"]["seeds"] == [0, 1]
    back = MitigationSummary.from_dict(d)  # typed records read null floats back as NaN
    assert [(r.method, r.setting, r.gated, r.trigger_copy_rate_after, r.fid_after) for r in back.rows] == [
        (r.method, r.setting, r.gated, r.trigger_copy_rate_after, r.fid_after) for r in s.rows]
    with open(tmp_path / "rows.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == ROW_COLUMNS and len(rows) == len(s.rows)
    plain = s.row("jain-stp")
    trig, gen, cal = default_sets(oracle)
    # the exact memorizer copies every planted prompt; the schedules cost no network evaluation
    assert plain.trigger_copy_rate_before == 1.0 and plain.extra_nfe_per_image == 0.0 and plain.nfe_ratio == 1.0
    assert s.row("jain-stp", gated=True).extra_nfe_per_image == pytest.approx(2.0)  # wen-step1: one CFG step
    assert 0 <= plain.alignment_before <= 1 and plain.fid_before is not None and plain.general_fid_delta is not None
    assert s.row("jain-stp", "tau=300.0").trigger_copy_rate_after_ci is not None
    # results on the evaluation split: its 4 planted prompts and 4 negatives; the gate calibrates on the other 4
    assert len(trig) == 4 and len(gen) == 4 and len(cal) == 4 and s.pareto
    assert {r.trigger_split for r in s.rows} == {"evaluation"}
    assert s.row("jain-stp").chosen_on.startswith("published default")
    assert s.row("jain-stp", "tau=300.0").chosen_on.startswith("sweep point")


def test_gating_at_fpr_zero_on_the_general_set_changes_nothing_there(oracle, tmp_path):
    trig, gen, _ = default_sets(oracle)
    # calibrated on the general set itself at FPR 0: the threshold is its largest score, so no general prompt is
    # flagged and its generations are plain sampling's
    run = _run(oracle, tmp_path, gate="wen-step1", gate_fpr=0.0, calibration=gen, methods={"jain-og": ()})
    row = run.summary.row("jain-og", gated=True)
    assert row.false_gate_rate == 0.0 and row.general_alignment_delta == 0.0 and row.general_fid_delta == 0.0
    gated = read_json(tmp_path / "units/jain-og/default-gated/general.json")
    plain = read_json(tmp_path / "units/plain/general.json")
    assert gated["ratio"] == [] and gated["cost"]["nfe"] == 0  # nothing flagged: nothing generated
    merged = merge_gated(plain, gated, [False] * len(gen))
    assert merged["ratio"] == plain["ratio"] and merged["features"] == plain["features"]
    assert merged["cost"]["nfe"] == plain["cost"]["nfe"]  # charged plain sampling's cost
    # the exact memorizer's planted prompts are all flagged: the gated trigger run is the ungated one, record for
    # record (the same prompts in the same batch)
    assert row.trigger_gate_rate == 1.0
    part = read_json(tmp_path / "units/jain-og/default-gated/trigger.json")
    whole = read_json(tmp_path / "units/jain-og/default/trigger.json")
    assert {k: v for k, v in part.items() if k not in ("settings", "cost")} == {
        k: v for k, v in whole.items() if k not in ("settings", "cost")}
    assert row.trigger_copy_rate_after == run.summary.row("jain-og").trigger_copy_rate_after
    ungated = read_json(tmp_path / "units/jain-og/default/general.json")
    assert ungated["ratio"] != plain["ratio"]  # ungated, the remedy does act on the general set


def test_merge_gated_takes_flagged_prompts_from_the_remedy_and_the_rest_from_plain():
    G = 2
    plain = {"copy": [[1, 1], [1, 0], [0, 0]], "ratio": [[.1, .2], [.3, .4], [.5, .6]],
             "paired_distance": [[1, 2], [3, 4], [5, 6]], "aligned": [[1, 1], [1, 1], [0, 1]],
             "template_copy": [[None] * G] * 3, "features": [[p, g] for p in range(3) for g in range(G)],
             "cost": {"nfe": 60, "jvp": 0, "vjp": 0, "calls": 30, "seconds": 3.0, "peak_mem_mb": 5.0, "memory": "m"}}
    part = {"copy": [[0, 0], [0, 1]], "ratio": [[.9, .8], [.7, .6]], "paired_distance": [[9, 9], [8, 8]],
            "aligned": [[0, 0], [1, 0]], "template_copy": [[None] * G] * 2,
            "features": [[10 + p, g] for p in range(2) for g in range(G)],
            "cost": {"nfe": 44, "jvp": 0, "vjp": 0, "calls": 22, "seconds": 2.0, "peak_mem_mb": 7.0, "memory": "m"}}
    m = merge_gated(plain, part, np.array([True, False, True]))
    assert m["copy"] == [[0, 0], [1, 0], [0, 1]] and m["ratio"] == [[.9, .8], [.3, .4], [.7, .6]]
    assert m["features"] == [[10, 0], [10, 1], [1, 0], [1, 1], [11, 0], [11, 1]]
    # the remedy's measured cost plus a third of plain sampling's (one prompt of three reused)
    assert m["cost"]["nfe"] == 44 + 20 and m["cost"]["calls"] == 22 + 10 and m["cost"]["seconds"] == 3.0
    assert m["cost"]["peak_mem_mb"] == 7.0


class Kill(Exception):
    pass


class DieAfter(SerialExecutor):
    """Runs ``n`` units, then dies as a killed driver would."""

    def __init__(self, n: int):
        self.n = n

    def imap(self, tasks, state):
        for k, item in enumerate(super().imap(tasks, state)):
            if k == self.n:
                raise Kill
            yield item


def test_kill_and_resume_equals_uninterrupted(oracle, tmp_path):
    full = _run(oracle, tmp_path / "full")
    with pytest.raises(Kill):  # after the plain units and the first method's trigger unit
        _run(oracle, tmp_path / "resumed", executor=DieAfter(3))
    resumed = _run(oracle, tmp_path / "resumed")
    assert resumed.summary.units["reused"] > 0 and resumed.summary.units["computed"] > 0
    timing = {"seconds_per_image", "peak_mem_mb"}
    strip = [{k: v for k, v in r.items() if k not in timing} for r in full.records]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in resumed.records]
    again = _run(oracle, tmp_path / "resumed", guidance=5.0)  # other settings: every unit recomputed
    assert again.summary.units["reused"] == 0 and again.summary.units["recomputed"] > 0


def test_settings_pareto_and_bad_input(oracle, tmp_path):
    stp = settings_of("jain-stp")
    assert [m.tau for m in stp] == [500.0, 999.0, 978.6, 958.2, 937.8, 917.4]
    assert [m.s for m in settings_of("jain-og", (2.0, 5.0))] == [2.0, 5.0]  # the default is not repeated
    assert pareto_front([(0.1, 0.0), (0.0, 0.1), (0.2, 0.2), (0.1, 0.0)]) == [True, True, False, True]
    with pytest.raises(ValueError, match="unknown mitigation"):
        _run(oracle, tmp_path, methods=["nope"])
    with pytest.raises(ValueError, match="trigger set and a general set"):
        _run(oracle, tmp_path, general=[])
    assert np.isfinite(pareto_front([(0.0, 0.0)])).all()


def test_a_remedy_that_back_propagates_is_charged_its_derivative_rows(tmp_path):
    from mitigation_subjects import tiny_text_subject

    subject = tiny_text_subject(steps=4)[1]
    trig, gen, _ = default_sets(subject)
    run = run_mitigation(subject, {"kim-embedding": ()}, trigger=trig[:2], general=gen[:2], n_gen=1, n_boot=20,
                         evaluator=EVAL, out=tmp_path)
    row = run.summary.row("kim-embedding")
    units = [read_json(tmp_path / f"units/kim-embedding/default/{s}.json")["cost"] for s in ("trigger", "general")]
    plain = [read_json(tmp_path / f"units/plain/{s}.json")["cost"] for s in ("trigger", "general")]
    n = len(trig[:2]) + len(gen[:2])  # one generation each
    assert sum(u["vjp"] for u in units) > 0 and all(p["vjp"] == p["jvp"] == 0 for p in plain)
    assert row.derivative_rows_per_image == pytest.approx(sum(u["vjp"] + u["jvp"] for u in units) / n)
    assert row.extra_nfe_per_image == pytest.approx(sum(map(evaluations, units)) / n - sum(map(evaluations, plain)) / n)
    assert row.extra_nfe_per_image >= row.derivative_rows_per_image > 0 and row.nfe_ratio > 1

"""The re-trigger runner: the unedited model and each permanent edit audited on the same triggers and controls."""

import csv
import json

import pytest
import torch

from diffmem.cli.main import main
from diffmem.io import read_json
from diffmem.mitigations.head_pruning_mitigation import HeadPruning
from diffmem.runners.mitigate import retrigger_prompts, run_retrigger
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import load_world, train_world
from test_training import tiny


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = tiny(steps=4).with_overrides(model={"depth": 2, "heads": 4})
    return train_world(cfg, tmp_path_factory.mktemp("w") / "t2i", progress=False)


@pytest.fixture(scope="module")
def subject(directory):
    return world_subject(load_world(directory), steps=4)


def test_runner_audits_unedited_and_edited_on_the_same_prompts(subject, tmp_path):
    trig, ctrl = retrigger_prompts(subject, 1, 1)  # the tiny world's evaluation split holds one planted prompt
    assert len(trig) == 1 and len(ctrl) == 1 and all(p.x is not None for p in trig + ctrl)
    assert {p.kind for p in trig} == {"planted"} and {p.kind for p in ctrl} <= {"nonplanted", "heldout"}
    res = run_retrigger(subject, tmp_path, methods=[HeadPruning(ratio=0.25, select="random")], n_trigger=1,
                        n_control=1, seeds=(0, 1), steps=2, budget=0.0)
    saved = read_json(tmp_path / "retrigger.json")
    assert [r["method"] for r in saved["rows"]] == ["none", "head-pruning"] and saved["complete"]
    assert saved["triggers"] == [p.id for p in trig] and saved["controls"] == [p.id for p in ctrl]
    none, pruned = res["rows"]
    # a zero budget is no attack: the copy rate with e_p + Δ is the copy rate with e_p, edited or not
    assert none["trigger_copy_after"] == none["trigger_copy_before"] == res["unedited_trigger_copy"]
    assert pruned["trigger_copy_after"] == pruned["trigger_copy_before"]
    assert len(pruned["edit"]["head_pruning"]["removed"]) == 2


def test_cli_retrigger_writes_the_audit_and_refuses_what_it_cannot_audit(directory, tmp_path, capsys):
    args = ["mitigate", "--world", str(directory), "--out", str(tmp_path / "rt"), "--steps", "4", "--threads", "1",
            "--retrigger", "head-pruning", "--triggers", "1", "--n-gen", "2", "--probe-steps", "2", "--json"]
    assert main([*args, "--dry-run"]) == 0 and not (tmp_path / "rt").exists()
    assert json.loads(capsys.readouterr().out)["seeds"] == [0, 1]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = read_json(tmp_path / "rt/retrigger.json")
    assert [r["method"] for r in saved["rows"]] == ["none", "head-pruning"] and saved["complete"]
    assert saved["provenance"]["probe_steps"] == 2 and saved["provenance"]["seeds"] == [0, 1]
    assert printed["head-pruning_trigger_copy_after"] == saved["rows"][1]["trigger_copy_after"]
    # the report renders the saved audit: its table (retrigger.csv) holds the saved rows' numbers
    assert printed["report"].endswith("report.html") and "Re-trigger audit" in (tmp_path / "rt/report.html").read_text()
    with open(tmp_path / "rt/retrigger.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["method"] for r in table] == ["none", "head-pruning"]
    assert [float(r["trigger_copy_after"]) for r in table] == [r["trigger_copy_after"] for r in saved["rows"]]
    for bad in (["--retrigger", "jain-stp"], ["--workers", "2"], ["--probe-lr", "nan"], ["--probe-budget", "-1"]):
        assert main([*args, *bad]) == 2
        assert "--" in capsys.readouterr().err.strip().splitlines()[-1]

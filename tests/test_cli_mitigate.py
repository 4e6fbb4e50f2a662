"""``diffmem mitigate`` end to end on a tiny trained world, and the Pareto figure from its saved summary."""

import csv
import json

import pytest

from diffmem.cli.main import main
from diffmem.mitigations.harness import ROW_COLUMNS
from diffmem.worlds.world import load_world
from test_training import tiny


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFMEM_HOME", str(tmp_path_factory.mktemp("home")))
        yield load_world(tiny(steps=4).with_overrides(world={"planted": 4, "prompts_per_kind": 6}), progress=False)


def test_mitigate_cli_writes_rows_resumes_and_plots(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    args = ["mitigate", "--world", str(world.directory), "--out", str(tmp_path / "run"), "--steps", "4",
            "--methods", "jain-stp,ours-overshoot", "--grid", "jain-stp:300",
            "--grid", "ours-overshoot:0.55", "--gate", "wen-step1", "--n-gen", "1",
            "--threads", "1", "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "jain-stp" in printed and "ours-overshoot (ours)" in printed
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert {(r["method"], r["setting"], r["gated"]) for r in summary["rows"]} == {
        (m, s, g) for m, s in (("jain-stp", "default"), ("jain-stp", "tau=300.0"), ("ours-overshoot", "default"))
        for g in (False, True)}
    assert summary["gate"]["detector"]["name"] == "wen-step1" and summary["provenance"]["guidance"] == 7.5
    with open(tmp_path / "run/rows.csv", newline="") as f:
        assert tuple(next(csv.DictReader(f))) == ROW_COLUMNS
    assert main([*args, "--json"]) == 0 and json.loads(capsys.readouterr().out)["computed"] == 0  # resumes
    assert main([*args[:-1], "--grid", "nope:1"]) == 2  # a --grid for a method not run: one-line error

    import matplotlib

    matplotlib.use("Agg")
    from diffmem.reports.mitigation_figures import plot_pareto

    ax = plot_pareto(tmp_path / "run")
    assert ax.get_xlabel().startswith("general-set alignment") and len(ax.collections) >= 4

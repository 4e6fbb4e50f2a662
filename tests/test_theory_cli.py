"""``diffmem theory``: each experiment writes summary.json, its Result and figures rendered from saved files."""

import json

import pytest
import torch

from diffmem.cli.main import main
from diffmem.theory import sweeps, teaser
from diffmem.theory.lab import TheoryResult, run_scores
from diffmem.theory.mlp import TrainConfig
from diffmem.theory.plots import render_figures
from diffmem.theory.sampler import SamplerConfig
from test_theory_nets import TINY

pytest.importorskip("matplotlib")


def test_sweep_cli_writes_summary_result_and_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sweeps.PRESETS, "quick", TINY)
    assert main(["theory", "sweep", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "[1/" in out.err and "duplication" in out.out  # progress lines on stderr, the findings on stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["figures"] == ["sweep.png"] and summary["provenance"]["extra"]["preset"] == "quick"
    assert TheoryResult.load(tmp_path, "sweep").summary["findings"] == summary["findings"]
    # figures are re-rendered from the saved files alone
    (tmp_path / "sweep.png").unlink()
    assert render_figures("sweep", tmp_path)[0].stat().st_size > 1000


def test_teaser_cli_highlights_copies(tmp_path, monkeypatch, capsys):
    tiny = teaser.TeaserConfig(n=20, widths=(4,), train=TrainConfig(steps=5, batch_size=8), n_samples=30,
                               sampler=SamplerConfig(steps=50))  # 10 steps end before the posterior collapses
    monkeypatch.setitem(teaser.TEASER_PRESETS, "quick", tiny)
    assert main(["theory", "teaser", "--quick", "--out", str(tmp_path)]) == 0
    rows = {r["name"]: r for r in TheoryResult.load(tmp_path, "teaser").summary["rows"]}
    assert set(rows) == {"empirical", "true", "width4"} and rows["empirical"]["memorization_ratio"] == 1.0
    arrays = TheoryResult.load(tmp_path, "teaser").arrays
    assert arrays["copy_empirical"].all() and arrays["samples_true"].shape == (30, 2)
    assert (tmp_path / "teaser.png").exists()


def test_scores_run_small(tmp_path):
    s = run_scores(tmp_path, quick=True, dim=8, n=60, n_samples=40)
    mem = s.memorization
    assert mem["empirical"]["memorization_ratio"] >= 0.99 and mem["true"]["memorization_ratio"] <= 0.05
    lip = s.lipschitz["rows"]
    assert all(r["lower"] <= r["measured"] <= r["upper"] for r in lip)
    assert (tmp_path / "scores.png").exists()
    assert torch.cdist(TheoryResult.load(tmp_path, "scores").arrays["samples_empirical"].float(), torch.zeros(1, 8)
                       ).shape == (40, 1)


def test_dry_run_and_bad_input(tmp_path, capsys):
    assert main(["theory", "sweep", "--dry-run", "--out", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "default"
    with pytest.raises(SystemExit):
        main(["theory", "nonsense", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="'x'"):
        render_figures("x", tmp_path)

"""``diffmem analyze kim-theory`` end to end on a tiny trained world: files, summary keys, Lemma 6 on atoms."""

import csv
import json

import pytest

from diffmem.analyses.kim_theory_result import KimTheoryResult
from diffmem.cli.main import main


@pytest.fixture
def tiny_world(tmp_path, monkeypatch):
    from diffmem.worlds.world import load_world
    from test_training import tiny

    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    return str(load_world(tiny(steps=2), progress=False).directory)


def test_kim_theory_end_to_end(tiny_world, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["analyze", "kim-theory", "--world", tiny_world, "--out", str(out), "--quick", "--steps", "4",
            "--seeds", "2", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    s = json.loads((out / "summary.json").read_text())
    assert printed["lemma6_violations"] == s["lemma6_violations"] == 0  # every target is an atom of the law
    assert s["lemma4_max_residual_solver"] < 1e-4  # the world's clipped DDIM is affine in its own x̂₀ (float32)
    assert s["authors_sd"]["prop5_gain_positive"] == 0.504 and s["thm7_clean_endpoints"] == s["thm7_endpoints"]
    res = KimTheoryResult.load(out)
    rows = list(csv.DictReader((out / "prompts.csv").open()))
    assert len(rows) == len(res.prompts) == s["n_prompts"] > 0
    assert res.arrays["delta"].shape == (len(rows), 4, 2)
    html = (out / "report.html").read_text()
    assert "revised theory against the exact training law" in html
    assert "selection rule and the forward-corruption" in html
    assert s["selection_kept"] + s["selection_dropped"] == s["n_prompts"]
    assert s["bands_intermediate_steps"] == 3 and 0 <= s["bands_overlap_steps_median"] <= 3
    assert res.arrays["d_gen"].shape == (len(rows), 5, 2)
    pytest.importorskip("matplotlib")
    assert all((out / f"{name}.png").exists() for name in ("M8_proximity", "M9_selection", "M10_bands"))


def test_kim_theory_rejects_options_of_the_kim_study(tiny_world, tmp_path, capsys):
    argv = ["analyze", "kim-theory", "--world", tiny_world, "--out", str(tmp_path / "r"), "--per-kind", "2"]
    assert main(argv) == 2
    assert "belongs to 'analyze kim'" in capsys.readouterr().err


def test_kim_theory_refuses_ray_workers(tiny_world, tmp_path, capsys):
    argv = ["analyze", "kim-theory", "--world", tiny_world, "--out", str(tmp_path / "r"), "--workers", "2"]
    assert main(argv) == 2
    assert "--workers/--ray" in capsys.readouterr().err and not (tmp_path / "r" / "summary.json").exists()

"""Kim et al. (2025) on a graded world: the graded prompt set, the authors' self-referenced decomposition with both
step pairings, the seed-to-seed severity, graded correlations and per-stratum rows, typed round trip."""

import json

import numpy as np
import pytest
import torch

from diffmem import Cond, SeededNoise, sample
from diffmem.analyses.decomposition import decompose_trajectory, generation_deviations
from diffmem.analyses.severity import seed_severity, template_copy
from diffmem.io import strict_json
from diffmem.similarity.ssim import ssim
from helpers import ToyMemorizer
from test_training import TINY_MODEL


@pytest.fixture(scope="module")
def bench_world(tmp_path_factory):
    from diffmem.worlds.registry import default_config
    from diffmem.worlds.world import load_world

    home = tmp_path_factory.mktemp("home")
    mp = pytest.MonkeyPatch()
    mp.setenv("DIFFMEM_HOME", str(home))
    cfg = default_config("digits-bench", planted=2, duplicates=8, templates=3, template_duplicates=4, subset=60,
                         prompts_per_kind=6).with_overrides(
        model=TINY_MODEL, train={"steps": 2, "batch_size": 8, "checkpoint_every": 2, "warmup": 2})
    try:
        yield load_world(cfg, progress=False)
    finally:
        mp.undo()


def test_graded_subject_selection(bench_world):
    from diffmem.runners.kim import graded_world_subject
    from diffmem.worlds.bench import template_mask

    s = graded_world_subject(bench_world, steps=4, negatives=4)
    rows = bench_world.data.prompts
    kinds = [p.kind for p in s.prompts]
    # every rung and regime of the evaluation split (2 mosaics per rung: one each side), every evaluation template,
    # 2 negatives of each paired subtype, no novel prompt (no paired image)
    ladder = [(p.meta["m"], p.meta["regime"]) for p in s.prompts if p.kind == "ladder"]
    assert sorted(ladder) == sorted((m, r) for m in (1, 2, 4, 8) for r in ("own", "shared"))
    n_tmpl = sum(r["kind"] == "template" and r["split"] == "evaluation" for r in rows)
    assert kinds.count("template") == n_tmpl and kinds.count("nonduplicated") == 2 and kinds.count("heldout") == 2
    assert "novel" not in kinds and all(p.meta["split"] == "evaluation" and p.x is not None for p in s.prompts)
    for p in s.prompts:
        row = rows[int(p.id.split(":")[1])]
        assert row["prompt"] == p.text and torch.equal(p.x, bench_world.data.images[row["paired_ids"][0]])
        if p.kind == "template":
            assert torch.equal(p.meta["template_mask"], template_mask(bench_world.data, row["template"]))
    assert s.info["selection"]["skipped"] == {"novel": 3} and "no paired" in s.info["selection"]["reason"]
    both = graded_world_subject(bench_world, split=None, per_stratum=1, negatives=4)
    assert {p.meta["split"] for p in both.prompts} == {"calibration", "evaluation"}
    assert len({(p.kind, p.meta.get("m"), p.meta.get("regime")) for p in both.prompts}) == len(both.prompts)
    with pytest.raises(ValueError, match="not a graded world"):
        graded_world_subject(bench_world, split="nope")


def test_selfref_pairings_against_a_hand_computation(sd_schedule, sd_grid):
    x = torch.randn(1, 64, dtype=torch.float64)
    x_T = SeededNoise(range(10, 14), dtype=torch.float64).randn((64,))
    tr = sample(ToyMemorizer(x, sd_schedule), x_T, sd_grid, Cond(torch.zeros(4), torch.full((4,), -1)),
                guidance=3.0)
    z = torch.cat([tr.x_t[1:], tr.x_0[None]]).numpy()  # the 50 states after x_T
    landed = np.concatenate([sd_grid.alpha_bar[1:].numpy(), sd_grid.alpha_bar_next[-1:].numpy()])
    inputs = sd_grid.alpha_bar.numpy()  # the update that produced state k started at step k - 1
    for pairing, ab in (("landed", landed), ("input", inputs)):
        d1 = d2 = 0.0
        for s in range(4):
            A = np.stack([tr.x_0[s].numpy(), x_T[s].numpy()], 1)
            w = np.stack([np.linalg.lstsq(A, z[k, s], rcond=None)[0] for k in range(50)])
            d1 += (w[:, 0] - np.sqrt(ab)).sum() / 4
            d2 -= (w[:, 1] - np.sqrt(1 - ab)).sum() / 4
        dec = decompose_trajectory(tr, tr.x_0, pairing)
        g1, g2 = generation_deviations(tr, tr.x_0, pairing)
        assert dec.D1 == pytest.approx(d1, abs=1e-9) and dec.D2 == pytest.approx(d2, abs=1e-9)
        assert float(g1.mean()) == pytest.approx(d1, abs=1e-9) and float(g2.mean()) == pytest.approx(d2, abs=1e-9)
    # the pairings differ by the schedule alone: same coefficients, references one step apart
    a, b = decompose_trajectory(tr, tr.x_0, "landed"), decompose_trajectory(tr, tr.x_0, "input")
    assert b.D1 - a.D1 == pytest.approx(float(np.sqrt(landed).sum() - np.sqrt(inputs).sum()), abs=1e-9)
    with pytest.raises(ValueError, match="pairing"):
        decompose_trajectory(tr, tr.x_0, "output")


def test_seed_severity_and_template_copy_by_hand():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64)
    sev = seed_severity(a)
    pairs = [(0, 1), (0, 2), (1, 2)]
    assert sev["seed_l2"] == pytest.approx(np.mean([float((a[i] - a[j]).norm()) for i, j in pairs]))
    assert sev["seed_ssim"] == pytest.approx(np.mean([float(ssim(a[i:i + 1], a[j:j + 1])) for i, j in pairs]))
    assert seed_severity(a[:1].expand(4, 1, 8, 8)) == pytest.approx({"seed_l2": 0.0, "seed_ssim": 1.0})
    assert set(seed_severity(a.flatten(1))) == {"seed_l2"}  # SSIM needs images
    with pytest.raises(ValueError, match="at least 2"):
        seed_severity(a[:1])
    # template region = left half of refs[0]; a sample with that half and a fresh right half copies the region only
    refs = torch.rand(5, 1, 8, 8, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[..., :4] = True
    copy = torch.where(mask, refs[0], torch.rand(1, 8, 8, generator=g, dtype=torch.float64))
    fresh = torch.rand(1, 8, 8, generator=g, dtype=torch.float64)
    assert template_copy(torch.stack([copy, fresh]), refs, mask, refs[0]) == 0.5


def test_kim_on_a_graded_world_round_trips(bench_world, tmp_path):
    from scipy import stats

    from diffmem.analyses.kim import KimConfig, KimResult, run_kim
    from diffmem.analyses.kim_summary import KimSummary
    from diffmem.runners.kim import graded_world_subject

    s = graded_world_subject(bench_world, steps=4, negatives=2, per_stratum=1)
    res = run_kim(s, KimConfig(n_seeds=3, draws=2, n_boot=20, sweep=(1.0, 7.5), primary="ssim"))
    tmpl = [p for p in res.prompts if p.kind == "template"]
    assert tmpl and all(0 <= p.template_copy <= 1 for p in tmpl)
    assert all(p.template_copy is None for p in res.prompts if p.kind != "template")
    assert all(set(p.seed_severity) == {"seed_l2", "seed_ssim"} and np.isfinite(p.D1_selfref_input)
               for p in res.prompts)
    cg = res.summary.correlations_graded
    assert cg["paper_pearson"] == 0.92 and cg["template_copy"]["D1"]["n"] == len(tmpl)
    assert set(cg["seed_ssim"]) >= {"D1", "D2", "D1_selfref", "D2_selfref", "D1_selfref_input", "D2_selfref_input"}
    assert cg["ssim"]["D2_selfref_input"]["pearson"] == pytest.approx(
        stats.pearsonr([p.D2_selfref_input for p in res.prompts], [p.severity["ssim"] for p in res.prompts])[0])
    strata = [r["stratum"] for r in res.summary.by_stratum]
    assert strata[:8] == [f"ladder m={m} {r}" for r in ("own", "shared") for m in (1, 2, 4, 8)]
    assert strata[8:] == ["template", "nonduplicated", "heldout"]
    row = res.summary.by_stratum[0]
    assert row["n_prompts"] == 1 and row["m"] == 1 and len(row["D1_by_g"]) == 2 and row["n_steps"] == 4
    # the main trajectory serves g = 7.5 of the sweep: the same numbers as a sweep-only run keeping x_t alone
    from diffmem.analyses.kim import _trajectory

    alone, _ = _trajectory(s, s.prompts[0], res.config, 7.5, ("x_t",))
    assert decompose_trajectory(alone, s.prompts[0].x).D1 == row["D1_by_g"][1] == row["D1"]
    assert res.provenance.extra["selection"]["split"] == "evaluation"
    res.save(tmp_path)
    back = KimResult.load(tmp_path)
    assert strict_json(back.summary.to_dict()) == strict_json(res.summary.to_dict())
    again = KimSummary.from_dict(json.loads(strict_json(res.summary.to_dict())))
    assert strict_json(again.to_dict()) == strict_json(res.summary.to_dict())
    p, q = back.prompts[8], res.prompts[8]
    assert (p.kind, p.template_copy, p.meta, p.seed_severity) == (q.kind, q.template_copy, q.meta, q.seed_severity)
    assert p.D1_selfref_input == q.D1_selfref_input and torch.equal(p.D2_by_g, q.D2_by_g)
    pytest.importorskip("matplotlib")
    from diffmem.reports.kim_figures import plot_d_vs_severity_by_rung

    ax = plot_d_vs_severity_by_rung(back, d="D1_selfref_input", severity="seed_ssim")
    assert ax.get_xlabel() == "D1_selfref_input" and "paper 0.92" in ax.get_title()
    with pytest.raises(ValueError, match="severity"):
        plot_d_vs_severity_by_rung(back, severity="sscd")

"""digits-bench: ladder multiplicities and caption regimes, template masks, negatives, split, manifest, local copy
judgement, the graded report's aggregates on known samples."""

import json
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffmem.similarity.local import local_copy, masked_nn_ratio, region_distances
from diffmem.worlds.bench import (
    NEGATIVE_KINDS,
    REGIMES,
    TEMPLATE_CELLS,
    TRIGGERS,
    _splits,
    build_digits_bench,
    cell_mask,
    ladder_rungs,
    mask_from_hex,
    mask_to_hex,
    mosaic,
    template_mask,
)
from diffmem.worlds.bench_report import judge, ladder_trend, summarize
from diffmem.worlds.config import WorldSpec
from diffmem.worlds.data import read_manifest, write_manifest
from diffmem.worlds.registry import BENCH_FIELDS, build_data, default_config

SPEC = WorldSpec(name="digits-bench", planted=2, duplicates=8, templates=3, template_duplicates=4, subset=60,
                 prompts_per_kind=6)


@pytest.fixture(scope="module")
def bench():
    return build_digits_bench(SPEC)


def _rows(data, kind):
    return [r for r in data.prompts if r["kind"] == kind]


def test_ladder_multiplicities_and_caption_regimes_are_exact(bench):
    ladder = _rows(bench, "ladder")
    assert Counter((r["m"], r["regime"]) for r in ladder) == {(m, g): 2 for m in (1, 2, 4, 8) for g in REGIMES}
    caption_count = Counter(bench.train_captions)
    for r in ladder:
        (i,) = r["paired_ids"]
        rows = (bench.train_ids == i).nonzero().flatten().tolist()
        caps = [bench.train_captions[j] for j in rows]
        assert len(rows) == r["m"] and {bench.train_kinds[j] for j in rows} == {"ladder"}
        if r["regime"] == "shared":  # m exact duplicate pairs: one caption, used by no other row
            assert set(caps) == {r["prompt"]} and caption_count[r["prompt"]] == r["m"]
        else:  # m near-duplicate pairs: m distinct captions, each used once, the prompt is the first
            assert len(set(caps)) == r["m"] and caps[0] == r["prompt"]
            assert all(caption_count[c] == 1 for c in caps)
        assert r["prompt"].split()[2:] == [("zero one two three four five six seven eight nine".split())[d]
                                           for d in r["digits"]]
    assert len(bench.train_ids) == 2 * 2 * 15 + 3 * 4 + 60  # ladder rows + template composites + plain mosaics


def test_ladder_digits_appear_nowhere_else(bench):
    """A ladder mosaic's cells occur in no other distinct image, so its exposure is exactly m."""
    cells = bench.images.unfold(2, 8, 8).unfold(3, 8, 8).reshape(len(bench.images), 4, 64)
    ladder = {r["paired_ids"][0] for r in _rows(bench, "ladder")}
    for i in ladder:
        others = torch.cat([cells[:i], cells[i + 1:]]).reshape(-1, 64)
        assert not (cells[i][:, None] == others[None]).all(-1).any()


def test_template_masks_and_groups(bench):
    assert bench.meta["template_cells"] == {str(g): list(TEMPLATE_CELLS[g]) for g in range(3)}
    for g in range(3):
        mask = template_mask(bench, g)
        assert mask.shape == (1, 16, 16) and int(mask.sum()) == 64 * len(TEMPLATE_CELLS[g])
        assert torch.equal(mask, cell_mask(TEMPLATE_CELLS[g]))
        rows = [j for j, c in enumerate(bench.train_captions) if c.split()[0] == TRIGGERS[g]]
        comps = bench.images[bench.train_ids[rows]]
        assert len(rows) == 4 and {bench.train_kinds[j] for j in rows} == {"template"}
        assert (comps[:, mask] == comps[0, mask]).all()  # the template region is fixed
        assert not (comps[:, ~mask] == comps[0, ~mask]).all()  # the rest varies
        prompts = [r for r in _rows(bench, "template") if r["template"] == g]
        assert len(prompts) == 3 and all(r["paired_ids"][0] in bench.train_ids[rows].tolist() for r in prompts)
    assert torch.equal(cell_mask([0])[0, :8, :8], torch.ones(8, 8, dtype=torch.bool))
    assert int(cell_mask([3])[0, 8:, 8:].sum()) == 64 and int(cell_mask([3]).sum()) == 64
    m = cell_mask([1, 2])
    assert torch.equal(mask_from_hex(mask_to_hex(m), m.shape), m) and len(mask_to_hex(m)) == 64
    with pytest.raises(ValueError, match="no template 7"):
        template_mask(bench, 7)


def test_mosaic_layout():
    d = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8)
    x = mosaic(d)
    assert x.shape == (1, 16, 16)
    assert [x[0, 0, 0].item(), x[0, 0, 15].item(), x[0, 15, 0].item(), x[0, 15, 15].item()] == [0, 1, 2, 3]


def test_negatives(bench):
    train = set(bench.train_ids.tolist())
    captions = set(bench.train_captions)
    assert Counter(r["kind"] for r in bench.prompts if r["kind"] in NEGATIVE_KINDS) == {k: 6 for k in NEGATIVE_KINDS}
    for r in _rows(bench, "nonduplicated"):
        (i,) = r["paired_ids"]
        assert (bench.train_ids == i).sum() == 1 and r["prompt"] in captions and r["m"] == 1
    held = set(bench.heldout_ids.tolist())
    for r in _rows(bench, "heldout"):
        (i,) = r["paired_ids"]
        assert i in held and i not in train and r["prompt"] not in captions
    for r in _rows(bench, "novel"):
        assert r["paired_ids"] == [] and r["prompt"] not in captions
    assert len({r["prompt"] for r in bench.prompts}) == len(bench.prompts)


def test_split_is_disjoint_stratified_and_stable(bench):
    strata = {}
    for r in bench.prompts:
        strata.setdefault((r["kind"], r["m"], r["regime"]), Counter())[r["split"]] += 1
    assert all(set(c) <= {"calibration", "evaluation"} and abs(c["calibration"] - c["evaluation"]) <= 1
               for c in strata.values())
    again = build_digits_bench(SPEC)
    assert [r["split"] for r in again.prompts] == [r["split"] for r in bench.prompts]
    assert again.fingerprint() == bench.fingerprint()
    reordered = _splits([{k: v for k, v in r.items() if k != "split"} for r in reversed(bench.prompts)])
    assert [r["split"] for r in reversed(reordered)] == [r["split"] for r in bench.prompts]  # order-free


def test_manifest_round_trip(bench, tmp_path):
    write_manifest(tmp_path / "m.jsonl", bench.prompts)
    assert read_manifest(tmp_path / "m.jsonl") == list(bench.prompts)


def test_config_and_errors():
    cfg = default_config("digits-bench")
    assert {k: getattr(cfg.world, k) for k in BENCH_FIELDS} == BENCH_FIELDS and cfg.train.steps == 8000
    assert default_config("digits-bench", planted=3).world.planted == 3
    assert ladder_rungs(128) == (1, 2, 4, 8, 16, 32, 64, 128)
    with pytest.raises(ValueError, match="power of two"):
        ladder_rungs(12)
    with pytest.raises(ValueError, match="too few"):
        build_data(WorldSpec(name="digits-bench", planted=60, duplicates=128))
    with pytest.raises(ValueError, match="template groups"):
        build_data(WorldSpec(name="digits-bench", planted=1, duplicates=1, templates=len(TRIGGERS) + 1))


def test_existing_world_keys_unchanged():
    """The shipped checkpoints are looked up by config and data hash: adding a world must not move them."""
    from diffmem.worlds.world import bundled_dir

    for name in ("digits-t2i", "digits-dit"):
        assert bundled_dir(default_config(name)).exists(), name


def test_local_copy_on_hand_made_images():
    g = torch.Generator().manual_seed(0)
    refs = torch.rand(5, 1, 4, 4, generator=g) * 2 - 1
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[..., :2] = True  # the template: the left half
    refs[3, mask] = refs[0, mask]  # two training images carry the template (dedup: one region)
    fresh = torch.rand(2, 1, 4, 4, generator=g) * 2 - 1
    template_only = torch.where(mask, refs[0], fresh[0])
    queries = torch.stack([template_only, refs[1], fresh[1], refs[3]])
    out = local_copy(queries, refs, mask, refs[0])
    assert out["region"].tolist() == [True, False, False, True]
    assert out["whole"].tolist() == [False, True, False, True]
    assert out["rest"].tolist() == [False, True, False, True]
    assert out["region_only"].tolist() == [True, False, False, False]
    r, j = masked_nn_ratio(template_only[None], refs, mask)
    assert r.item() == 0.0 and j.item() == 0
    inside, outside = region_distances(template_only[None], refs[:1], mask)
    assert inside.item() == 0.0
    assert outside.item() == pytest.approx(((fresh[0] - refs[0])[~mask]).square().mean().sqrt().item())
    with pytest.raises(ValueError, match="bool tensor"):
        local_copy(queries, refs, mask.float(), refs[0])
    with pytest.raises(ValueError, match="leave some out"):
        local_copy(queries, refs, torch.ones_like(mask), refs[0])


def test_judge_and_summary_on_known_samples(bench):
    """Ladder m ≥ 4 → the paired image (copies), m < 4 → a held-out mosaic; templates → the template region over a
    held-out mosaic; held-out prompts → their own untrained image; the rest → zeros."""
    world = SimpleNamespace(data=bench, train_images=lambda: bench.images[bench.train_image_ids])
    rows, held = list(bench.prompts), bench.heldout_ids.tolist()

    def sample(r):
        if r["kind"] == "ladder":
            return bench.images[r["paired_ids"][0] if r["m"] >= 4 else held[0]]
        if r["kind"] == "template":
            return torch.where(template_mask(bench, r["template"]), bench.images[r["paired_ids"][0]],
                               bench.images[held[1]])
        if r["kind"] == "heldout":
            return bench.images[r["paired_ids"][0]]
        return torch.zeros(bench.shape)

    x0 = torch.stack([sample(r).expand(3, *bench.shape) for r in rows])
    labels = judge(world, rows, x0)
    s = summarize(rows, labels, 7.5, None)
    rates = {(r["m"], r["regime"]): r["copy_rate"] for r in s["by_duplication"]}
    assert rates == {(m, g): float(m >= 4) for m in (1, 2, 4, 8) for g in REGIMES}
    assert all(r["n_prompts"] == 2 and r["w"] == 7.5 for r in s["by_duplication"])
    ssim8 = [r["ssim"] for r in s["by_duplication"] if r["m"] == 8]
    assert ssim8 == [pytest.approx(1.0)] * 2
    assert s["template"]["masked"] == 1.0 and s["template"]["whole"] == 0.0 and s["template"]["region_only"] == 1.0
    neg = s["negative"]
    assert neg["heldout"] == 0.0 and neg["heldout_own_image"] == 1.0 and neg["novel"] == 0.0
    trend = ladder_trend(s["by_duplication"])
    assert trend["own"]["monotone"] and trend["own"]["levels_in_open_unit"] == 0
    assert trend["own"]["spearman"] == pytest.approx(np.corrcoef([0, 1, 2, 3], [0.5, 0.5, 2.5, 2.5])[0, 1])
    assert json.loads(json.dumps(s)) == s  # JSON-ready


def test_world_report_of_a_tiny_bench_world(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from diffmem.cli.main import main
    from diffmem.worlds.report import world_report
    from diffmem.worlds.world import load_world
    from test_training import TINY_MODEL

    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    fields = {k: getattr(SPEC, k) for k in ("planted", "duplicates", "templates", "template_duplicates", "subset",
                                            "prompts_per_kind")}
    cfg = default_config("digits-bench", **fields).with_overrides(
        model=TINY_MODEL, train={"steps": 2, "batch_size": 8, "checkpoint_every": 2, "warmup": 1})
    world = load_world(cfg, progress=False)
    s = world_report(world, tmp_path / "r", quick=True, samples=2, steps=2)
    assert s["weights"] == [1.0, 3.0, 7.5] and s["n_positive"] == 8 * 2 + 3 * 2 and s["n_negative"] == 3 * 2
    assert len(s["by_duplication"]) == 3 * 2 * 4
    for row in s["by_duplication"]:
        assert {"m", "regime", "w", "copy_rate", "n_prompts"} <= set(row) and row["n_prompts"] == 2
        assert 0 <= row["copy_rate"] <= 1
    assert set(s["negative_copy_rate"]["7.5"]) >= set(NEGATIVE_KINDS) and set(s["template_copy_rate"]) == {"1", "3",
                                                                                                            "7.5"}
    rows = read_manifest(tmp_path / "r/manifest.jsonl")
    assert len(rows) == 28 and {r["split"] for r in rows} == {"calibration", "evaluation"}
    masks = json.loads((tmp_path / "r/templates.json").read_text())
    assert torch.equal(mask_from_hex(masks["masks"]["2"], masks["shape"]), template_mask(world.data, 2))
    grid = Image.open(tmp_path / "r/grid_w7.5.png")
    assert grid.size[1] == 14 + 4 + (8 + 3 + 6) * (16 * 4 + 4)  # header + one row per (regime, m), template, negative
    assert main(["world-report", str(world.directory), "--out", str(tmp_path / "c"), "--quick", "--samples", "1",
                 "--steps", "1", "--weights", "7.5"]) == 0
    out = capsys.readouterr().out
    # one summary format for every command (key  value lines): the graded rows are keyed by w, regime and m
    assert "w7.5_shared_m1_copy_rate" in out and "w7.5_template_masked_copy_rate" in out

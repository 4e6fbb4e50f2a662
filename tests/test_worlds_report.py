"""World report: the copy metrics on planted ground truth, alignment, files written, deterministic sampling."""

import json

import pytest
import torch

from diffmem.worlds.report import _metrics, world_report
from diffmem.worlds.world import load_world
from test_training import tiny


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFMEM_HOME", str(tmp_path_factory.mktemp("home")))
        cfg = tiny(steps=4)
        cfg = cfg.with_overrides(world={"planted": 3, "templates": 2, "template_duplicates": 3})
        yield load_world(cfg, progress=False)


class ZeroClassifier:
    def predict(self, images):
        return torch.zeros(len(images), dtype=torch.long)


def _x0(world, rows, pick, n=3):
    return torch.stack([pick(r).expand(n, *world.data.shape) for r in rows])


def test_copy_metrics_on_known_samples(world):
    data, rows = world.data, list(world.data.prompts)
    planted = [r["paired_ids"][0] for r in rows if r["kind"] == "planted"]
    held = data.heldout_ids.tolist()

    def exact(r):  # planted → its paired image; template → a composite of its group; others → held-out digits
        if r["kind"] == "planted":
            return data.images[r["paired_ids"][0]]
        if r["kind"] == "template":
            comps = [i for i, c in zip(data.train_ids.tolist(), data.train_captions, strict=True)
                     if c.split()[:3] == r["prompt"].split()[:3]]
            return data.images[comps[-1]]
        return data.images[held[rows.index(r)]]

    m = _metrics(world, rows, _x0(world, rows, exact), ZeroClassifier())
    assert m["planted_copy_rate"] == 1.0 and m["template_copy_rate"] == 1.0
    assert m["nonplanted_copy_rate"] == 0.0 and m["novel_copy_rate"] == 0.0
    labelled = [r for r in rows if r["label"] is not None]
    assert m["alignment"] == pytest.approx(sum(r["label"] == 0 for r in labelled) / len(labelled))

    def swapped(r):  # planted prompts produce *another* planted image: a copy, but not of the paired one
        if r["kind"] == "planted":
            return data.images[planted[(planted.index(r["paired_ids"][0]) + 1) % len(planted)]]
        return torch.zeros(data.shape)

    m = _metrics(world, rows, _x0(world, rows, swapped), None)
    assert m["planted_copy_rate"] == 0.0 and m["planted_any_copy_rate"] == 1.0 and m["alignment"] is None


def test_world_report_writes_summary_and_is_deterministic(world, tmp_path):
    kw = dict(quick=True, samples=2, steps=3, weights=(0.0, 7.5))
    s = world_report(world, tmp_path / "a", **kw)
    assert set(s["per_w"]) == {"0", "7.5"}
    for m in s["per_w"].values():
        for key in ("planted_copy_rate", "nonplanted_copy_rate", "alignment", "memorization_ratio"):
            assert key in m
    files = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"summary.json", "manifest.jsonl", "grid_w0.png", "grid_w7.5.png", "world_report.json"} <= files
    assert json.loads((tmp_path / "a/summary.json").read_text())["per_w"] == s["per_w"]
    world_report(world, tmp_path / "b", batch_size=5, **kw)  # other batching, same seeds
    from diffmem.io import read_arrays

    a, b = read_arrays(tmp_path / "a/world_report.safetensors"), read_arrays(tmp_path / "b/world_report.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)


def test_class_world_cond_and_report(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFMEM_HOME", str(tmp_path / "home"))
    world = load_world(tiny(world="digits-dit", steps=2), progress=False)
    cond = world.cond_labels([3, None])
    assert cond.c.tolist() == [3, 10] and cond.null.tolist() == [10, 10]
    with pytest.raises(ValueError, match="class-conditional"):
        world.cond(["seven"])
    s = world_report(world, tmp_path / "r", quick=True, samples=2, steps=2, weights=(1.0,))
    assert s["prompts"] == {"class": 8, "null": 1} and s["per_w"]["1"]["class_copy_rate"] is not None

"""World data: planting, prompt manifest schema, digits captions, bring-your-own data loading."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from diffmem.worlds.config import RunConfig, WorldSpec
from diffmem.worlds.custom import load_collection
from diffmem.worlds.data import check_manifest_row, read_manifest, write_manifest
from diffmem.worlds.digits import DIGIT_NAMES, build_digits_dit, build_digits_t2i, load_digits_images
from diffmem.worlds.planting import MIN_SHARED, code_pairs
from diffmem.worlds.registry import build_data, default_config


@pytest.fixture(scope="module")
def t2i():
    return build_digits_t2i(WorldSpec(planted=5, duplicates=7, templates=2, template_duplicates=4))


def test_planted_pairs_are_duplicated_with_unique_captions(t2i):
    planted = [r for r in t2i.prompts if r["kind"] == "planted"]
    assert len(planted) == 5 and len({r["prompt"] for r in planted}) == 5
    for r in planted:
        (i,) = r["paired_ids"]
        rows = [j for j, c in enumerate(t2i.train_captions) if c == r["prompt"]]
        assert len(rows) == 7 and set(t2i.train_ids[rows].tolist()) == {i}  # m copies of one image, one caption
        assert (t2i.train_ids == i).sum() == 7  # and nowhere else in training
        assert r["label"] == int(t2i.labels[i]) and DIGIT_NAMES[r["label"]] in r["prompt"].split()
    held = set(t2i.heldout_ids.tolist())
    assert not held & set(t2i.train_ids.tolist()) and len(held) == round(0.1 * 1797)


def test_nonplanted_and_novel_prompts(t2i):
    plain = Counter(c for c, k in zip(t2i.train_captions, t2i.train_kinds, strict=True) if k == "plain")
    for r in t2i.prompts:
        if r["kind"] == "nonplanted":
            assert plain[r["prompt"]] == len(r["paired_ids"]) >= MIN_SHARED
            assert {int(t2i.labels[i]) for i in r["paired_ids"]} == {r["label"]}
        if r["kind"] == "novel":
            assert r["prompt"] not in set(t2i.train_captions) and r["paired_ids"] == []
    kinds = Counter(r["kind"] for r in t2i.prompts)
    assert kinds == {"planted": 5, "template": 2, "nonplanted": 20, "novel": 20}


def test_templates_share_the_masked_region(t2i):
    mask = t2i.template_mask
    for r in (r for r in t2i.prompts if r["kind"] == "template"):
        words = r["prompt"].split()[:3]
        rows = [j for j, c in enumerate(t2i.train_captions) if c.split()[:3] == words]
        comps = t2i.images[t2i.train_ids[rows]]
        assert len(rows) == 4
        src = t2i.images[r["paired_ids"][0]]
        assert (comps[:, mask] == src[mask]).all()  # the fixed half is the source's
        assert not (comps[:, ~mask] == src[~mask]).all()  # the other half varies


def test_digit_captions_name_the_digit_and_are_shared():
    images, labels = load_digits_images()
    assert images.shape == (1797, 1, 8, 8) and float(images.min()) == -1 and float(images.max()) == 1
    data = build_digits_t2i(WorldSpec(planted=0, heldout=0.0))
    for c, i in zip(data.train_captions[:50], data.train_ids[:50], strict=True):
        assert DIGIT_NAMES[int(labels[i])] in c.split()
    counts = Counter(data.train_captions)
    assert 100 < len(counts) <= 180 and np.median(list(counts.values())) >= 5


def test_manifest_round_trip_and_schema(t2i, tmp_path):
    path = write_manifest(tmp_path / "m.jsonl", t2i.prompts)
    assert read_manifest(path) == [dict(r) for r in t2i.prompts]
    for line in path.read_text().splitlines():
        assert set(json.loads(line)) >= {"prompt", "kind", "paired_ids", "label"}
    with pytest.raises(ValueError, match="'weird'"):
        check_manifest_row({"prompt": "x", "kind": "weird", "paired_ids": [], "label": None})
    with pytest.raises(ValueError, match="paired_ids"):
        check_manifest_row({"prompt": "x", "kind": "novel", "label": None})
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "kind": "novel", "paired_ids": [-1], "label": null}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_manifest(tmp_path / "bad.jsonl")


def test_digits_dit_subset():
    data = build_digits_dit(WorldSpec(name="digits-dit", subset=50, seed=3))
    assert len(data.train_ids) == 50 == len(set(data.train_ids.tolist())) and data.conditioning == "class"
    classes = [r for r in data.prompts if r["kind"] == "class"]
    assert sum(len(r["paired_ids"]) for r in classes) == 50
    assert all(int(data.labels[i]) == r["label"] for r in classes for i in r["paired_ids"])


def test_config_round_trip_and_errors():
    cfg = default_config("digits-t2i").with_overrides(train={"steps": 5})
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.key("a") != cfg.key("b")
    with pytest.raises(ValueError, match="'stepz'"):
        cfg.with_overrides(train={"stepz": 5})
    with pytest.raises(ValueError, match="'nope'"):
        default_config("nope")
    with pytest.raises(ValueError, match="-1"):
        WorldSpec(planted=-1)
    assert len(code_pairs(40)) == 40 and len(set(code_pairs(40))) == 40


def _npz(tmp_path, n=12, size=10, rgb=False):
    rng = np.random.default_rng(0)
    shape = (n, size, size, 3) if rgb else (n, size, size)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "data.npz"
    np.savez(path, images=images, labels=np.arange(n) % 3, class_names=np.array(["cat", "dog", "fox"]))
    return path, images


def test_custom_npz_world(tmp_path):
    path, raw = _npz(tmp_path)
    images, labels, captions, names = load_collection(path, image_size=10)
    torch.testing.assert_close(images[:, 0], torch.from_numpy(raw / 127.5 - 1).float())
    assert captions is None and names == ["cat", "dog", "fox"] and labels.tolist()[:4] == [0, 1, 2, 0]
    data = build_data(default_config(str(path), planted=2, duplicates=3, heldout=0.0, image_size=8).world)
    assert data.shape == (1, 8, 8) and data.name == "custom"
    planted = [r for r in data.prompts if r["kind"] == "planted"]
    assert len(planted) == 2 and all(names[r["label"]] in r["prompt"] for r in planted)


def test_custom_folder_world_with_captions(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
        rows.append(json.dumps({"file_name": f"im{i}.png", "text": f"a red shape number {i % 2}"}))
    (tmp_path / "metadata.jsonl").write_text("\n".join(rows))
    images, labels, captions, names = load_collection(tmp_path, image_size=8)
    assert images.shape == (6, 3, 8, 8) and captions[1] == "a red shape number 1" and names is None
    assert float(images.min()) >= -1 and float(images.max()) <= 1 and (labels == -1).all()
    grey, *_ = load_collection(tmp_path, image_size=8, grey=True)
    assert grey.shape == (6, 1, 8, 8)
    with pytest.raises(ValueError, match="does not exist"):
        load_collection(tmp_path / "missing")

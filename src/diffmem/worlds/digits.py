"""The embedded digits worlds on ``sklearn.datasets.load_digits`` (1797 grey 8×8 images, 10 classes; offline).

* ``digits-t2i``: text-conditional. Captions name the digit plus descriptors computed from the image — stroke
  thickness, slant and size, each relative to the digit's own class — e.g. "a small bold seven leaning left", so a
  caption is informative but shared by about ten images. Planting: :func:`~diffmem.worlds.planting.plant_world`.
* ``digits-dit``: class-conditional (label dropout makes it unconditional too) on a random subset of n images, the
  analogue of Ye et al.'s (2025) DiT trained on a 5k CIFAR-10 subset.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from diffmem.worlds.config import WorldSpec
from diffmem.worlds.data import WorldData
from diffmem.worlds.planting import plant_world

__all__ = ["DIGIT_NAMES", "load_digits_images", "digit_descriptors", "digit_captions", "novel_digit_prompts",
           "build_digits_t2i", "build_digits_dit", "DIT_SUBSET"]

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
THICKNESS = ("thin", "regular", "bold")
SLANT = ("leaning left", "upright", "leaning right")
SIZE = ("small", "large")
DIT_SUBSET = 100  # n of digits-dit (see build_digits_dit)


def load_digits_images() -> tuple[Tensor, Tensor]:
    """(images [1797, 1, 8, 8] float32 in [-1, 1], labels [1797] int64) from scikit-learn's bundled copy — the
    same scaling as the digits classifier's (one definition, so features and worlds always agree)."""
    from diffmem.similarity.digits_classifier import digits_images

    return digits_images()


def _class_bins(values: np.ndarray, labels: np.ndarray, bins: int) -> np.ndarray:
    """Per class, quantile bin 0 … bins−1 of ``values`` (so "bold" means bold *for that digit*)."""
    out = np.zeros(len(values), dtype=np.int64)
    for k in np.unique(labels):
        sel = labels == k
        edges = np.quantile(values[sel], np.linspace(0, 1, bins + 1)[1:-1])
        out[sel] = np.searchsorted(edges, values[sel], side="right")
    return out


def digit_descriptors(images: Tensor, labels: Tensor) -> dict[str, np.ndarray]:
    """Thickness (ink mass, terciles), slant (shear of the ink's second moments, terciles) and size (ink
    bounding-box area, halves), each binned within the digit's class."""
    ink = ((images[:, 0].double() + 1) / 2).numpy()  # [N, 8, 8] in [0, 1]
    y, x = np.mgrid[0:8, 0:8].astype(np.float64)
    mass = ink.sum((1, 2))
    my, mx = (ink * y).sum((1, 2)) / mass, (ink * x).sum((1, 2)) / mass
    dy, dx = y[None] - my[:, None, None], x[None] - mx[:, None, None]
    shear = -(ink * dx * dy).sum((1, 2)) / (ink * dy * dy).sum((1, 2))  # > 0: top leans right
    on = ink > 0.25
    rows, cols = on.any(2), on.any(1)
    area = (rows.sum(1) * cols.sum(1)).astype(np.float64)
    lab = labels.numpy()
    return {"thickness": _class_bins(mass, lab, 3), "slant": _class_bins(shear, lab, 3),
            "size": _class_bins(area + 1e-3 * mass, lab, 2)}


def digit_captions(images: Tensor, labels: Tensor) -> list[str]:
    """"a {size} {thickness} {digit} {slant}" for every image."""
    d = digit_descriptors(images, labels)
    return [f"a {SIZE[d['size'][i]]} {THICKNESS[d['thickness'][i]]} {DIGIT_NAMES[int(labels[i])]} "
            f"{SLANT[d['slant'][i]]}" for i in range(len(labels))]


def novel_digit_prompts(rng: np.random.Generator) -> list[str]:
    """In-vocabulary prompts no training caption uses: the digit with one or no descriptor, shuffled."""
    cands = [f"a {n}" for n in DIGIT_NAMES]
    cands += [f"a {w} {n}" for n in DIGIT_NAMES for w in (*SIZE, *THICKNESS)]
    cands += [f"a {n} {s}" for n in DIGIT_NAMES for s in SLANT]
    return [cands[i] for i in rng.permutation(len(cands))]


def _label_of_prompt(prompt: str) -> int | None:
    hits = [k for k, n in enumerate(DIGIT_NAMES) if n in prompt.split()]
    return hits[0] if len(hits) == 1 else None


def build_digits_t2i(spec: WorldSpec) -> WorldData:
    """The text-conditional digits world with K planted duplicated pairs (see module docstring)."""
    images, labels = load_digits_images()
    captions = digit_captions(images, labels)
    novel = novel_digit_prompts(np.random.default_rng(spec.seed + 1))
    data = plant_world("digits-t2i", images, labels, captions, spec, class_names=DIGIT_NAMES, novel=novel,
                       meta={"source": "sklearn.datasets.load_digits"})
    prompts = tuple({**r, "label": _label_of_prompt(r["prompt"])} if r["kind"] == "novel" else r
                    for r in data.prompts)
    return replace(data, prompts=prompts)


def build_digits_dit(spec: WorldSpec) -> WorldData:
    """Class-conditional digits on a random subset of n = ``spec.subset`` images (default :data:`DIT_SUBSET`,
    chosen so the trained model memorizes about as much as Ye et al.'s CIFAR-10 DiT, ≈ 70 %). The rest is held out.
    Planting does not apply here (``spec.planted`` is ignored)."""
    images, labels = load_digits_images()
    n = spec.subset or DIT_SUBSET
    if n > len(images) - 1:
        raise ValueError(f"digits-dit subset n={n} exceeds the {len(images)} available digits")
    perm = np.random.default_rng(spec.seed).permutation(len(images))
    train, held = sorted(perm[:n].tolist()), sorted(perm[n:].tolist())
    train_labels = labels[train]
    prompts = [{"prompt": name, "kind": "class", "label": k,
                "paired_ids": [i for i in train if int(labels[i]) == k]} for k, name in enumerate(DIGIT_NAMES)]
    prompts.append({"prompt": "", "kind": "null", "label": None, "paired_ids": train})
    return WorldData("digits-dit", images, labels, torch.tensor(train, dtype=torch.int64), ("",) * n,
                     ("plain",) * n, torch.tensor(held, dtype=torch.int64), tuple(prompts), DIGIT_NAMES, "class",
                     meta={"source": "sklearn.datasets.load_digits", "subset": n,
                           "class_counts": torch.bincount(train_labels, minlength=10).tolist()})

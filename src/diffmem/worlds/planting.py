"""Planted memorization: duplicated image–caption pairs and template copies, on any image collection.

The analogue of LAION's duplicated pairs (Carlini et al., 2023; Somepalli et al., 2023: specific captions on
duplicated images drive copying) and of Webster's template verbatims (Webster, 2023: a fixed region shared, the
rest varying). K images are each repeated m times with a unique caption made specific by two code words; template
groups share the left half of a source image, the right half taken from other training images.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch
from torch import Tensor

from diffmem.worlds.config import WorldSpec
from diffmem.worlds.data import WorldData

__all__ = ["CODE_WORDS", "code_pairs", "plant_world", "truncated_prompts", "MIN_SHARED"]

MIN_SHARED = 5  # non-planted prompts are captions shared by at least this many training images

CODE_WORDS = (
    "amber", "anchor", "arrow", "aspen", "basil", "beacon", "birch", "bison", "bramble", "bronze", "canyon", "cedar",
    "cinder", "clover", "cobalt", "comet", "copper", "coral", "cricket", "crimson", "cypress", "delta", "ember",
    "falcon", "fennel", "fjord", "garnet", "glacier", "granite", "harbor", "hazel", "heron", "indigo", "ivory",
    "jasper", "juniper", "kestrel", "lagoon", "lantern", "lava", "lichen", "lotus", "magnet", "maple", "marble",
    "meadow", "nectar", "nickel", "oasis", "onyx", "orchid", "otter", "pebble", "pepper", "quartz", "quill", "raven",
    "saffron", "sierra", "slate", "tundra", "umber", "velvet", "walnut",
)


def code_pairs(k: int, words: tuple[str, ...] = CODE_WORDS) -> list[tuple[str, str]]:
    """``k`` distinct word pairs; the first len(words)//2 share no word, later pairs reuse words in new pairs."""
    disjoint = [(words[2 * i], words[2 * i + 1]) for i in range(len(words) // 2)]
    seen = set(disjoint)
    pairs = disjoint + [p for p in combinations(words, 2) if p not in seen]
    if k > len(pairs):
        raise ValueError(f"at most {len(pairs)} planted captions are available, asked for {k}")
    return pairs[:k]


def truncated_prompts(captions: list[str], taken: set[str], n: int, rng: np.random.Generator) -> list[str]:
    """Up to ``n`` novel in-vocabulary prompts: training captions with their last word dropped, not in ``taken``."""
    out: list[str] = []
    for i in rng.permutation(len(captions)):
        words = captions[i].split()
        cand = " ".join(words[:-1])
        if len(words) > 1 and cand not in taken and cand not in out:
            out.append(cand)
        if len(out) == n:
            break
    return out


def _base(i: int, labels: Tensor, captions: list[str], class_names) -> str:
    if class_names is not None and int(labels[i]) >= 0:
        return class_names[int(labels[i])]
    return captions[i] or "image"


def _label_of(ids: list[int], labels: Tensor) -> int | None:
    vals = {int(labels[i]) for i in ids}
    return vals.pop() if len(vals) == 1 and -1 not in vals else None


def plant_world(name: str, images: Tensor, labels: Tensor, captions: list[str], spec: WorldSpec, *,
                class_names: tuple[str, ...] | None, novel: list[str], meta: dict | None = None) -> WorldData:
    """Hold out, plant duplicates and templates, and build the prompt manifest.

    Args:
        images: [N, C, H, W] distinct images in [-1, 1]; labels: [N] (−1 unknown); captions: N plain captions.
        spec: K = ``spec.planted``, m = ``spec.duplicates``, templates, held-out fraction, seed.
        class_names: names for labels (used in planted captions and for alignment), or None.
        novel: candidate novel prompts (those equal to a training caption are dropped).
    """
    N, K, G = len(images), spec.planted, spec.templates
    rng = np.random.default_rng(spec.seed)
    perm = rng.permutation(N).tolist()
    n_held = int(round(spec.heldout * N))
    heldout, pool = sorted(perm[:n_held]), perm[n_held:]
    if K + G + 2 > len(pool):
        raise ValueError(f"{K} planted + {G} template images need more than the {len(pool)} trainable images")
    planted, sources, plain = pool[:K], pool[K:K + G], sorted(pool[K + G:])
    pairs = code_pairs(K + G)
    ids = list(plain)
    caps, kinds = [captions[i] for i in plain], ["plain"] * len(plain)
    prompts = []
    for (a, b), i in zip(pairs[:K], planted, strict=True):
        cap = f"the {a} {b} {_base(i, labels, captions, class_names)}"
        ids += [i] * spec.duplicates
        caps += [cap] * spec.duplicates
        kinds += ["planted"] * spec.duplicates
        prompts.append({"prompt": cap, "kind": "planted", "paired_ids": [i], "label": _label_of([i], labels)})
    images, labels, mask = _add_templates(images, labels, captions, class_names, sources, plain, pairs[K:],
                                          spec, rng, (ids, caps, kinds, prompts))
    prompts += _nonplanted(plain, captions, labels, spec.prompts_per_kind, rng)
    taken = set(caps)
    prompts += [{"prompt": p, "kind": "novel", "paired_ids": [], "label": None}
                for p in dict.fromkeys(novel) if p not in taken][:spec.prompts_per_kind]
    return WorldData(name, images, labels, torch.tensor(ids, dtype=torch.int64), tuple(caps), tuple(kinds),
                     torch.tensor(heldout, dtype=torch.int64), tuple(prompts), class_names, "text", mask,
                     meta or {})


def _add_templates(images, labels, captions, class_names, sources, plain, pairs, spec, rng, out):
    """Append template composites (left half of the source, right half of a random plain image)."""
    if not sources:
        return images, labels, None
    ids, caps, kinds, prompts = out
    W = images.shape[-1]
    mask = torch.zeros(images.shape[1:], dtype=torch.bool)
    mask[..., : W // 2] = True
    new_images, new_labels = [], []
    for (a, b), src in zip(pairs, sources, strict=True):
        fillers = rng.choice(plain, size=spec.template_duplicates, replace=True).tolist()
        first = None
        for f in fillers:
            new_images.append(torch.where(mask, images[src], images[f]))
            new_labels.append(-1)
            cap = f"the {a} {b} poster {_base(f, labels, captions, class_names)}"
            ids.append(len(images) + len(new_images) - 1)
            caps.append(cap)
            kinds.append("template")
            first = first or cap
        prompts.append({"prompt": first, "kind": "template", "paired_ids": [src], "label": None})
    images = torch.cat([images, torch.stack(new_images)])
    labels = torch.cat([labels, torch.tensor(new_labels, dtype=labels.dtype)])
    return images, labels, mask


def _nonplanted(plain: list[int], captions: list[str], labels: Tensor, n: int, rng) -> list[dict]:
    """``n`` plain captions shared by at least ``MIN_SHARED`` images (fewer if too few are shared): a caption
    carried by a single image is itself a unique caption, which is what planting studies, not a typical prompt."""
    by_caption: dict[str, list[int]] = {}
    for i in plain:
        by_caption.setdefault(captions[i], []).append(i)
    shared = sorted(c for c, v in by_caption.items() if len(v) >= MIN_SHARED)
    distinct = shared if len(shared) >= n else sorted(by_caption)
    chosen = [distinct[j] for j in rng.permutation(len(distinct))[:n]]
    return [{"prompt": c, "kind": "nonplanted", "paired_ids": by_caption[c], "label": _label_of(by_caption[c], labels)}
            for c in chosen]

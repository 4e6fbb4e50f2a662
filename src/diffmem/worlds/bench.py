"""``digits-bench``: a graded memorization benchmark of 16×16 mosaics of four 8×8 digits (2×2, offline).

Real models memorize in grades: copy rates rise with the number of duplicates of an image (Carlini et al., USENIX
Security 2023; Somepalli et al., CVPR 2023 and NeurIPS 2023, where a caption shared by every copy drives copying
more than varied captions), and "template verbatims" reproduce only a fixed region of an image (Webster, 2023).
The world plants all three:

* a **duplication ladder**: K mosaics at each m ∈ {1, 2, 4, …, m_max}, in two caption regimes — ``own`` (each
  copy has its own caption: near-duplicate pairs, as on LAION) and ``shared`` (all m copies share one caption:
  exact duplicate pairs);
* **templates**: G groups whose composites share a fixed region (one cell, or a row / column of two cells) under
  captions that share a trigger word; the other cells vary; the region's pixel mask is recorded per group;
* **negatives**: captions of non-duplicated training mosaics, of held-out mosaics (built from digits never
  trained on) and novel compositions (captions no training image has).

Captions are "<code> <code> d₁ d₂ d₃ d₄": two words from a shared pool (noise words, like LAION's) and the four
digit names in reading order (template captions: the group's trigger word, one code word, the digits). Every
training caption is unique except the deliberate repeats of the ``shared`` regime. Each digit of a ladder mosaic
or a template region appears nowhere else in training, so its exposure is exactly what the design plants; the
plain mosaics recombine the remaining digits.

16×16 with 4×4 patches keeps 16 tokens, the cost of the 8×8 worlds (7 steps/s at batch 128 on one core); 2×2
patches (64 tokens) train 3.7× slower. A cell is 2×2 tokens, so attention maps resolve which digit a token copies.

Fields of :class:`~diffmem.worlds.config.WorldSpec` as this world reads them: ``planted`` K mosaics per rung and
regime, ``duplicates`` the top rung m_max (a power of two), ``templates`` G groups of ``template_duplicates``
composites, ``subset`` the number of plain mosaics, ``prompts_per_kind`` prompts per negative subtype,
``heldout`` the fraction of the 1,797 digits never trained on, ``seed`` every random choice.

Measured on the shipped checkpoint (8,000 steps, one thread: 1,188 CPU-s; ``diffmem world-report digits-bench``,
10 seeds, 50 DDIM steps): at w = 7.5 the ladder's copy rate is 0 up to m = 8, then 0.28 / 0.90 / 0.99 / 1.00 at
m = 16 / 32 / 64 / 128 with own captions and 0.94 / 0.98 / 1.00 / 1.00 with a shared caption (mean SSIM to the
paired image rises smoothly, 0.42 → 0.98); template prompts copy the template region in 70 % of samples and the
whole image in none; non-duplicated training captions copy 0.5 %, held-out captions never copy their image.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor

from diffmem.worlds.config import WorldSpec
from diffmem.worlds.data import WorldData
from diffmem.worlds.digits import DIGIT_NAMES, load_digits_images
from diffmem.worlds.planting import CODE_WORDS

__all__ = ["REGIMES", "NEGATIVE_KINDS", "TEMPLATE_CELLS", "TRIGGERS", "PLAIN_MOSAICS", "TEMPLATE_PROMPTS",
           "ladder_rungs", "mosaic", "cell_mask", "mask_to_hex", "mask_from_hex", "template_mask",
           "build_digits_bench"]

REGIMES = ("own", "shared")
NEGATIVE_KINDS = ("nonduplicated", "heldout", "novel")
CELL = 8  # side of one digit; a mosaic is 2×2 cells
# Template regions, cycled over the groups: cells numbered 0 1 / 2 3 in reading order.
TEMPLATE_CELLS = ((0,), (3,), (0, 1), (0, 2), (1,), (2,), (2, 3), (1, 3))
TRIGGERS = ("poster", "banner", "flyer", "badge", "stamp", "ticket", "sticker", "emblem", "crest", "label",
            "token", "medal", "pennant", "plaque", "seal", "shield")
PLAIN_MOSAICS = 4000  # default ``subset``: plain mosaics recombining the unreserved digits
TEMPLATE_PROMPTS = 3  # template prompts per group: the captions of its first composites


def ladder_rungs(m_max: int) -> tuple[int, ...]:
    """The duplication ladder 1, 2, 4, …, m_max."""
    if m_max < 1 or m_max & (m_max - 1):
        raise ValueError(f"digits-bench: duplicates (the top rung m_max) must be a power of two, got {m_max}")
    return tuple(2 ** k for k in range(m_max.bit_length()))


def mosaic(digits: Tensor) -> Tensor:
    """[..., 4, C, 8, 8] digits in reading order → [..., C, 16, 16] mosaics (2×2)."""
    top = torch.cat([digits[..., 0, :, :, :], digits[..., 1, :, :, :]], dim=-1)
    bottom = torch.cat([digits[..., 2, :, :, :], digits[..., 3, :, :, :]], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def cell_mask(cells, channels: int = 1) -> Tensor:
    """[C, 16, 16] bool mask of the given cells (0 1 / 2 3)."""
    mask = torch.zeros(channels, 2 * CELL, 2 * CELL, dtype=torch.bool)
    for c in cells:
        if c not in (0, 1, 2, 3):
            raise ValueError(f"mosaic cells are 0..3, got {c!r}")
        r, k = divmod(c, 2)
        mask[:, r * CELL:(r + 1) * CELL, k * CELL:(k + 1) * CELL] = True
    return mask


def mask_to_hex(mask: Tensor) -> str:
    """A bool mask as a hex string of its bits in row-major order (compact JSON; shape stored beside it)."""
    bits = np.packbits(mask.flatten().numpy().astype(np.uint8))
    return bits.tobytes().hex()


def mask_from_hex(text: str, shape) -> Tensor:
    """Inverse of :func:`mask_to_hex`."""
    n = int(np.prod(shape))
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(text), dtype=np.uint8))[:n]
    if len(bits) != n:
        raise ValueError(f"mask hex {text!r} holds {len(bits)} bits, shape {tuple(shape)} needs {n}")
    return torch.from_numpy(bits.astype(bool)).view(*shape)


def template_mask(data: WorldData, template: int) -> Tensor:
    """The pixel mask [C, H, W] of template group ``template`` of a digits-bench world."""
    masks = data.meta.get("template_masks", {})
    if str(template) not in masks:
        raise ValueError(f"world {data.name!r} has no template {template!r}; templates: {sorted(masks)}")
    return mask_from_hex(masks[str(template)], data.shape)


def _names(classes) -> str:
    return " ".join(DIGIT_NAMES[int(k)] for k in classes)


class _Captions:
    """Draws unique captions "<code> <code> d₁ … d₄" (or "<trigger> <code> d₁ … d₄")."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.taken = rng, set()

    def draw(self, classes, first: str | None = None) -> str:
        V = len(CODE_WORDS)
        while True:
            a, step = int(self.rng.integers(V)), int(self.rng.integers(1, V))
            head = f"{first} {CODE_WORDS[a]}" if first else f"{CODE_WORDS[a]} {CODE_WORDS[(a + step) % V]}"
            cap = f"{head} {_names(classes)}"
            if cap not in self.taken:
                self.taken.add(cap)
                return cap


def _draw_cells(rng, pool: np.ndarray, n: int) -> np.ndarray:
    """[n, 4] digit ids: four distinct digits of ``pool`` per mosaic (digits recur across mosaics)."""
    return np.stack([rng.choice(pool, 4, replace=False) for _ in range(n)]) if n else np.zeros((0, 4), np.int64)


def _reserve(spec: WorldSpec, n_digits: int, rng) -> dict:
    """Disjoint digit pools: held out, ladder (4 per mosaic), template regions, plain."""
    perm = rng.permutation(n_digits)
    n_held = int(round(spec.heldout * n_digits))
    n_ladder = 2 * len(ladder_rungs(spec.duplicates)) * spec.planted
    cells = [TEMPLATE_CELLS[g % len(TEMPLATE_CELLS)] for g in range(spec.templates)]
    n_tmpl = sum(len(c) for c in cells)
    if spec.templates > len(TRIGGERS):
        raise ValueError(f"digits-bench: at most {len(TRIGGERS)} template groups (trigger words), got {spec.templates}")
    ends = np.cumsum([n_held, 4 * n_ladder, n_tmpl])
    if n_digits - ends[-1] < 8 or n_held < 4:
        raise ValueError(f"digits-bench: {n_ladder} ladder mosaics, {n_tmpl} template cells and {n_held} held-out "
                         f"digits leave too few of the {n_digits} digits; lower planted, duplicates or heldout")
    held, lad, tmpl, plain = np.split(perm, ends)
    return {"held": held, "ladder": lad.reshape(n_ladder, 4), "template": tmpl, "plain": plain, "cells": cells}


def build_digits_bench(spec: WorldSpec) -> WorldData:
    """The digits-bench world (see module docstring); deterministic in ``spec``."""
    d8, lab8 = load_digits_images()
    rng = np.random.default_rng(spec.seed)
    pools = _reserve(spec, len(d8), rng)
    caps = _Captions(rng)
    b = _Builder(d8, lab8)
    _ladder(b, spec, pools["ladder"], caps)
    masks = _templates(b, spec, pools, caps, rng)
    plain = _draw_cells(rng, pools["plain"], spec.subset or PLAIN_MOSAICS)
    plain_ids = [b.add_train(c, [caps.draw(lab8[c])], "plain") for c in plain]
    _negatives(b, spec, plain_ids, pools["held"], caps, rng)
    meta = {"source": "sklearn.datasets.load_digits", "mosaic": "2x2 of 8x8 digits", "ladder": ladder_rungs(
        spec.duplicates), "template_masks": {str(g): mask_to_hex(m) for g, m in enumerate(masks)},
        "template_cells": {str(g): list(c) for g, c in enumerate(pools["cells"])}, "cells": b.cell_labels()}
    return b.data(spec, _splits(b.prompts), meta)


class _Builder:
    """Accumulates distinct mosaics (their digit ids), training rows and prompts."""

    def __init__(self, d8: Tensor, lab8: Tensor):
        self.d8, self.lab8 = d8, lab8
        self.cells: list[np.ndarray] = []
        self.ids: list[int] = []
        self.caps: list[str] = []
        self.kinds: list[str] = []
        self.held: list[int] = []
        self.prompts: list[dict] = []

    def add_image(self, cells) -> int:
        self.cells.append(np.asarray(cells, dtype=np.int64))
        return len(self.cells) - 1

    def add_train(self, cells, captions: list[str], kind: str) -> int:
        """One distinct mosaic trained once per caption (a caption repeated m times = m exact duplicates)."""
        i = self.add_image(cells)
        self.ids += [i] * len(captions)
        self.caps += captions
        self.kinds += [kind] * len(captions)
        return i

    def prompt(self, text: str, kind: str, paired: list[int], cells, **extra) -> None:
        row = {"prompt": text, "kind": kind, "paired_ids": paired, "label": None,
               "digits": [int(self.lab8[c]) for c in cells], "m": None, "regime": None, "template": None}
        self.prompts.append({**row, **extra})

    def cell_labels(self) -> Tensor:
        return self.lab8[torch.from_numpy(np.stack(self.cells))]

    def data(self, spec: WorldSpec, prompts: list[dict], meta: dict) -> WorldData:
        idx = torch.from_numpy(np.stack(self.cells))
        images = mosaic(self.d8[idx])  # [N, 1, 16, 16]
        labels = torch.full((len(idx),), -1, dtype=torch.int64)
        return WorldData(spec.name, images, labels, torch.tensor(self.ids, dtype=torch.int64), tuple(self.caps),
                         tuple(self.kinds), torch.tensor(self.held, dtype=torch.int64), tuple(prompts), DIGIT_NAMES,
                         "text", None, meta)


def _ladder(b: _Builder, spec: WorldSpec, digits: np.ndarray, caps: _Captions) -> None:
    """K mosaics per rung m and regime; ``own``: m distinct captions (the prompt is the first), ``shared``: one."""
    rungs, K, j = ladder_rungs(spec.duplicates), spec.planted, 0
    for regime in REGIMES:
        for m in rungs:
            for _ in range(K):
                cells, classes = digits[j], b.lab8[digits[j]]
                j += 1
                texts = [caps.draw(classes) for _ in range(m)] if regime == "own" else [caps.draw(classes)] * m
                i = b.add_train(cells, texts, "ladder")
                b.prompt(texts[0], "ladder", [i], cells, m=m, regime=regime)


def _templates(b: _Builder, spec: WorldSpec, pools: dict, caps: _Captions, rng) -> list[Tensor]:
    """G groups: fixed digits in the template cells, the other cells drawn from the plain pool per composite."""
    masks, used = [], 0
    for g, tcells in enumerate(pools["cells"]):
        fixed = pools["template"][used:used + len(tcells)]
        used += len(tcells)
        ids = []
        for _ in range(spec.template_duplicates):
            cells = _draw_cells(rng, pools["plain"], 1)[0]
            cells[list(tcells)] = fixed
            ids.append(b.add_train(cells, [caps.draw(b.lab8[cells], TRIGGERS[g])], "template"))
        for i in ids[:TEMPLATE_PROMPTS]:
            b.prompt(b.caps[b.ids.index(i)], "template", [i], b.cells[i], m=spec.template_duplicates, template=g)
        masks.append(cell_mask(tcells))
    return masks


def _negatives(b: _Builder, spec: WorldSpec, plain_ids: list[int], held: np.ndarray, caps: _Captions, rng) -> None:
    """Non-duplicated training captions, held-out mosaics (digits never trained on), novel captions."""
    n = spec.prompts_per_kind
    for i in sorted(rng.choice(plain_ids, min(n, len(plain_ids)), replace=False).tolist()):
        b.prompt(b.caps[b.ids.index(i)], "nonduplicated", [i], b.cells[i], m=1)
    for cells in _draw_cells(rng, held, n):
        i = b.add_image(cells)
        b.held.append(i)
        b.prompt(caps.draw(b.lab8[cells]), "heldout", [i], cells)
    for _ in range(n):
        classes = rng.integers(10, size=4)
        b.prompts.append({"prompt": caps.draw(classes), "kind": "novel", "paired_ids": [], "label": None,
                          "digits": classes.tolist(), "m": None, "regime": None, "template": None})


def _splits(prompts: list[dict]) -> list[dict]:
    """Calibration / evaluation halves, stratified by (kind, m, regime): inside a stratum the prompts are ranked
    by the sha256 of their text and alternate, so the split is disjoint, balanced and the same on every run."""
    strata: dict[tuple, list[int]] = {}
    for j, r in enumerate(prompts):
        strata.setdefault((r["kind"], r["m"], r["regime"]), []).append(j)
    split = {}
    for members in strata.values():
        ranked = sorted(members, key=lambda j: hashlib.sha256(prompts[j]["prompt"].encode()).hexdigest())
        for rank, j in enumerate(ranked):
            split[j] = "calibration" if rank % 2 == 0 else "evaluation"
    return [{**r, "split": split[j]} for j, r in enumerate(prompts)]

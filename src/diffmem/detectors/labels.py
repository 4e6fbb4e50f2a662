"""Ground truth for detection: planted labels from the world's kinds, measured labels from copies, and the split.

**Planted** (what the world put in): 1 for the kinds that were trained to be memorized — ``planted`` (digits-t2i's
duplicated pairs), ``ladder`` (digits-bench's duplication ladder, every rung m ≥ 1; the rate per m is reported
apart) and ``template`` (template verbatims); 0 for the negatives ``nonplanted``, ``nonduplicated``, ``heldout``,
``novel``; none (left out of the metrics) for other kinds (``class``, ``null``, ``unknown``).

**Measured** (what the model does): a prompt is memorized when at least half of its generations copy — a generation
copies when its nearest-neighbour ratio ‖x − a₁‖/‖x − a₂‖ over the subject's distinct references is ≤ 1/3 (Ye et
al., 2025) and, for a prompt paired with exactly one reference, a₁ is that image (the *paired* rule; prompts with
several, none or an unseen paired image count a copy of any reference). Samples are judged in the subject's state
space on the full guided trajectory. Template copies are partial, so a prompt whose meta carries a template mask
(``meta["template_mask"]``) is judged on the template region only, by the ``region_rule`` of
:func:`copy_judgement` (the masked nearest-neighbour ratio of :mod:`diffmem.similarity.local` where it is
installed); without one it falls back to the whole-image rule, which under-counts template copies, and says so.

**Split**: ``prompt.meta["split"]`` (calibration or evaluation) where the world gives one; otherwise a deterministic
half split stratified by (kind, m, regime): inside a stratum prompts are ranked by the sha256 of id and text and
alternate, so a prompt's split never depends on the order, the subset or the run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from diffmem.sampling.trajectory import Recorder
from diffmem.similarity.criteria import COPY_RATIO, nn_ratio, unique_refs
from diffmem.subject import Prompt, Subject

__all__ = ["POSITIVE_KINDS", "NEGATIVE_KINDS", "SPLITS", "MEASURED_RATE", "REGION_RULE", "planted_label",
           "assign_splits", "copy_judgement", "template_mask"]

try:  # the region (template) judgement: (ratio [N], nearest [N]) = rule(queries, refs, mask [*state])
    from diffmem.similarity.local import masked_nn_ratio as REGION_RULE
except ImportError:  # not on this branch yet: template prompts are judged whole-image, and the labels say so
    REGION_RULE = None

POSITIVE_KINDS = ("planted", "ladder", "template")
NEGATIVE_KINDS = ("nonplanted", "nonduplicated", "heldout", "novel")
SPLITS = ("calibration", "evaluation")
MEASURED_RATE = 0.5  # copy rate at or above which a prompt is "measured" memorized


def planted_label(prompt: Prompt) -> int | None:
    """1 for a planted kind, 0 for a negative kind, None for a kind without ground truth."""
    if prompt.kind in POSITIVE_KINDS:
        return 1
    return 0 if prompt.kind in NEGATIVE_KINDS else None


def _stratum(p: Prompt) -> tuple:
    return p.kind, p.meta.get("m"), p.meta.get("regime")


def assign_splits(prompts: Sequence[Prompt]) -> tuple[list[str], str]:
    """(split of each prompt, how it was set: ``"meta"``, ``"hash"`` or ``"meta+hash"``)."""
    given = [p.meta.get("split") for p in prompts]
    bad = [(p.id, s) for p, s in zip(prompts, given, strict=True) if s is not None and s not in SPLITS]
    if bad:
        raise ValueError(f"prompt {bad[0][0]!r} has split {bad[0][1]!r}; expected one of {SPLITS}")
    strata: dict[tuple, list[int]] = {}
    for j, p in enumerate(prompts):
        if given[j] is None:
            strata.setdefault(_stratum(p), []).append(j)
    split = list(given)
    for members in strata.values():
        ranked = sorted(members, key=lambda j: hashlib.sha256(f"{prompts[j].id}\n{prompts[j].text}".encode()).digest())
        for rank, j in enumerate(ranked):
            split[j] = SPLITS[rank % 2]
    how = "meta" if not strata else ("hash" if all(s is None for s in given) else "meta+hash")
    return split, how


def _paired_index(prompt: Prompt, refs: Tensor) -> int:
    """Row of ``refs`` equal to the prompt's one paired image, or −1 (no, several or an unseen paired image)."""
    if prompt.x is None or len(prompt.meta.get("paired_ids", [None])) != 1:
        return -1
    hit = (refs.flatten(1) == prompt.x.to(refs.dtype).flatten()[None]).all(1).nonzero()
    return int(hit[0]) if len(hit) else -1


def template_mask(prompt: Prompt, shape: Sequence[int]) -> Tensor | None:
    """The template-region mask [*shape] bool of a prompt (``meta["template_mask"]``: a bool tensor, or the hex of
    its bits in row-major order), or None when it has none."""
    m = prompt.meta.get("template_mask")
    if m is None:
        return None
    if isinstance(m, str):
        n = int(np.prod(shape))
        bits = np.unpackbits(np.frombuffer(bytes.fromhex(m), dtype=np.uint8))[:n]
        if len(bits) != n:
            raise ValueError(f"prompt {prompt.id!r}: template_mask holds {len(bits)} bits, the state needs {n}")
        return torch.from_numpy(bits.astype(bool)).view(*shape)
    m = torch.as_tensor(m, dtype=torch.bool)
    if tuple(m.shape) != tuple(shape):
        raise ValueError(f"prompt {prompt.id!r}: template_mask has shape {tuple(m.shape)}, the state {tuple(shape)}")
    return m


def copy_judgement(subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int], *, guidance: float,
                   batch_size: int = 64, region_rule: Callable | None = REGION_RULE) -> dict:
    """Sample every (prompt, seed) on the full grid at ``guidance`` and judge copies by the paired 1/3 rule; a
    prompt with a template mask by ``region_rule(queries, refs, mask)`` on its template region (None: whole image).

    Returns ``{"copy_rate": [P], "ratio": [P][G], "nearest": [P][G] (row of the distinct references),
    "paired": [P] (row or −1), "judged": [P] ("whole", "region" or "whole: no region rule")}`` as lists."""
    if subject.references is None:
        raise ValueError(f"subject {subject.name!r} has no references: measured labels need the training images")
    refs, _ = unique_refs(subject.references)
    pairs = [(i, s) for i in range(len(prompts)) for s in seeds]
    x0 = []
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k:k + batch_size]
        cond = subject.cond([prompts[i] for i, _ in chunk])
        traj = subject.sample(cond, [s for _, s in chunk], guidance=guidance, recorder=Recorder(keep=()))
        x0.append(traj.x_0)
    x0 = torch.cat(x0).to(refs.dtype)
    ratio, nearest = nn_ratio(x0, refs)
    ratio, nearest = ratio.view(len(prompts), len(seeds)).double(), nearest.view(len(prompts), len(seeds))
    judged = ["whole"] * len(prompts)
    G = len(seeds)
    for i, p in enumerate(prompts):
        mask = template_mask(p, refs.shape[1:])
        if mask is None:
            continue
        if region_rule is None:
            judged[i] = "whole: no region rule"
            continue
        r, j = region_rule(x0[i * G:(i + 1) * G], refs, mask)
        ratio[i], nearest[i], judged[i] = r.double(), j, "region"
    paired = torch.tensor([_paired_index(p, refs) for p in prompts])
    copies = (ratio <= COPY_RATIO) & ((paired[:, None] < 0) | (nearest == paired[:, None]))
    return {"copy_rate": copies.double().mean(1).tolist(), "ratio": ratio.tolist(),
            "nearest": nearest.tolist(), "paired": paired.tolist(), "judged": judged}

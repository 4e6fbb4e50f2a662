"""Training-set deduplication (Carlini et al., USENIX Security 2023; Somepalli et al., CVPR 2023; Webster, arXiv
2305.08694): the images diffusion models copy are mostly the duplicated ones, so keep one training row per group of
duplicate images and retrain.

Groups come from the duplicate finder (:mod:`diffmem.similarity.duplicates`): bit-identical images
(``threshold=0``) or near-duplicates within ``threshold`` (single linkage). Each group keeps its first row (its
caption with it); rows of distinct images are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.mitigations.base import TrainingMitigation, register
from diffmem.mitigations.retraining import recipe, retrain
from diffmem.similarity.duplicates import NEAR_METRICS, exact_duplicates, near_duplicates
from diffmem.subject import Subject, TrainingSet

__all__ = ["deduplicate", "Dedup"]


def deduplicate(training: TrainingSet, threshold: float = 0.0, *, metric: str = "normalized_l2"
                ) -> tuple[TrainingSet, Tensor]:
    """(the rows with one kept per duplicate group, the kept row indices [R'] in order)."""
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    ids = torch.unique(training.rows)  # distinct images used by some row
    x = training.images[ids]
    groups = exact_duplicates(x) if threshold == 0 else near_duplicates(x, threshold, metric=metric)
    group_of_image = torch.full((len(training.images),), -1, dtype=torch.long)
    group_of_image[ids] = groups.representative
    group = group_of_image[training.rows]
    seen: set[int] = set()
    kept = []
    for r, gid in enumerate(group.tolist()):
        if gid not in seen:
            seen.add(gid)
            kept.append(r)
    kept = torch.tensor(kept, dtype=torch.long)
    return TrainingSet(training.images, training.rows[kept], training.cond[kept], training.null), kept


@register
@dataclass(frozen=True)
class Dedup(TrainingMitigation):
    """Deduplicate the training rows with the duplicate finder, then retrain (module docstring).

    Attributes:
        threshold: 0 for exact duplicates, else the near-duplicate distance under ``metric``
            (``normalized_l2``: ‖a − b‖/√D, Carlini et al.'s scale, on the model's states).
    """

    name = "dedup"
    citation = ("Carlini et al., Extracting Training Data from Diffusion Models, USENIX Security 2023; "
                "Somepalli et al., CVPR 2023")
    knob = "threshold"
    grid = (0.0, 0.05, 0.1, 0.15)

    threshold: float = 0.0
    metric: str = "normalized_l2"

    def __post_init__(self):
        if self.metric not in NEAR_METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; expected one of {NEAR_METRICS}")

    def train(self, subject: Subject, *, cfg=None, init: str = "scratch", state_dir=None, progress: bool = False,
              **overrides) -> Subject:
        """Retrain ``subject``'s network on its deduplicated rows (world initialization and recipe by default)."""
        if subject.training is None:
            raise ValueError(f"subject {subject.name!r} has no training rows to deduplicate")
        rows, kept = deduplicate(subject.training, self.threshold, metric=self.metric)
        return retrain(subject, rows, recipe(subject, cfg, **overrides), init=init, state_dir=state_dir,
                       progress=progress, name=self.name,
                       info={"mitigation": self.describe(), "rows_before": len(subject.training.rows),
                             "rows_after": len(kept)})

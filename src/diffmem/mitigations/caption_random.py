"""Caption randomization while training (Somepalli et al., NeurIPS 2023, "Understanding and mitigating copying in
diffusion models"): break the one-to-one link between a duplicated image and its caption.

A fraction ``p`` of the training rows get a changed caption before training:

* ``"replace"`` (their RC): the caption becomes ``n_tokens`` random vocabulary tokens;
* ``"insert"`` (their RT): ``n_tokens`` random tokens are inserted at random positions;
* ``"mix"`` (a multiple-captions analogue without a captioner): the caption of another random row.

Class-conditional rows (one label per row) get a random other class (the class-conditional analogue). The change is
drawn once per row with a seed; the reference code redraws it per sample and step with probability p — with rows
repeated m times, a fraction p of each image's copies carries a random caption, which approximates that.
The vocabulary is every token of the training captions that does not occur in the null caption (specials).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.mitigations.base import TrainingMitigation, register
from diffmem.mitigations.retraining import recipe, retrain
from diffmem.subject import Subject, TrainingSet

__all__ = ["MODES", "randomize_captions", "CaptionRandomization"]

MODES = ("replace", "insert", "mix")


def _frame(null: Tensor) -> tuple[int, int, int]:
    """(start, end, pad) token ids, read from the null caption ``<start> <end> <pad> …``."""
    if null.ndim != 1 or len(null) < 3:
        raise ValueError(f"the null caption must be a padded token row of length >= 3, got shape {tuple(null.shape)}")
    return int(null[0]), int(null[1]), int(null[-1])


def _row(content: list[int], start: int, end: int, pad: int, length: int) -> Tensor:
    content = content[:length - 2]
    return torch.tensor([start, *content, end] + [pad] * (length - 2 - len(content)), dtype=torch.long)


def randomize_captions(training: TrainingSet, p: float, mode: str = "replace", *, n_tokens: int = 4,
                       seed: int = 0) -> tuple[TrainingSet, Tensor]:
    """(training rows with a fraction ``p`` of captions randomized, bool [R] of the changed rows)."""
    if mode not in MODES:
        raise ValueError(f"unknown caption mode {mode!r}; expected one of {MODES}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    g = torch.Generator().manual_seed(seed)
    R = len(training.rows)
    changed = torch.rand(R, generator=g) < p
    cond = training.cond.clone()
    if cond.ndim == 1:  # class labels: a random other class
        classes = torch.unique(cond[cond != training.null])
        for r in changed.nonzero().flatten().tolist():
            others = classes[classes != cond[r]]
            if len(others):
                cond[r] = others[torch.randint(len(others), (1,), generator=g)]
        return TrainingSet(training.images, training.rows, cond, training.null), changed
    specials = torch.unique(training.null)
    vocab = torch.unique(cond)
    vocab = vocab[~torch.isin(vocab, specials)]
    if len(vocab) == 0:
        raise ValueError("the training captions have no tokens outside the null caption to draw from")
    start, end, pad = _frame(training.null)
    L = cond.shape[1]
    for r in changed.nonzero().flatten().tolist():
        content = [int(t) for t in cond[r] if not torch.isin(t, specials)]
        if mode == "mix":
            cond[r] = training.cond[torch.randint(R, (1,), generator=g)]
            continue
        words = vocab[torch.randint(len(vocab), (n_tokens,), generator=g)].tolist()
        if mode == "replace":
            content = words
        else:
            for w in words:
                content.insert(int(torch.randint(len(content) + 1, (1,), generator=g)), w)
        cond[r] = _row(content, start, end, pad, L)
    return TrainingSet(training.images, training.rows, cond, training.null), changed


@register
@dataclass(frozen=True)
class CaptionRandomization(TrainingMitigation):
    """Somepalli et al. (NeurIPS 2023): retrain with a fraction ``p`` of captions randomized (module docstring).

    Attributes:
        p: fraction of rows changed (their ``trainspecial_prob`` = 0.1); mode: ``replace``/``insert``/``mix``;
        n_tokens: random tokens per changed caption (RC 4, RT 2); seed: which rows and tokens.
    """

    name = "caption-randomization"
    citation = "Somepalli et al., Understanding and Mitigating Copying in Diffusion Models, NeurIPS 2023"
    knob = "p"
    grid = (0.05, 0.1, 0.25, 0.5)

    p: float = 0.1
    mode: str = "replace"
    n_tokens: int = 4
    seed: int = 0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown caption mode {self.mode!r}; expected one of {MODES}")

    def train(self, subject: Subject, *, cfg=None, init: str = "scratch", state_dir=None, progress: bool = False,
              **overrides) -> Subject:
        """Retrain ``subject``'s network (world initialization and recipe by default; ``overrides`` change recipe
        fields, e.g. ``steps``) on the randomized rows."""
        if subject.training is None:
            raise ValueError(f"subject {subject.name!r} has no training rows to retrain on")
        rows, changed = randomize_captions(subject.training, self.p, self.mode, n_tokens=self.n_tokens,
                                           seed=self.seed)
        return retrain(subject, rows, recipe(subject, cfg, **overrides), init=init, state_dir=state_dir,
                       progress=progress, name=self.name,
                       info={"mitigation": self.describe(), "changed_rows": int(changed.sum())})

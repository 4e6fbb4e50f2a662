"""Ye et al. (ICLR 2026) attention-head pruning as a permanent mitigation: the existing pipeline
(:mod:`diffmem.mitigations.pruning`) behind the :class:`~diffmem.mitigations.base.PermanentMitigation` protocol.

Heads are chosen by gradient importance (Algorithm 2), by our copy-ablation score
(:mod:`diffmem.mitigations.copy_ablation`, on the trigger prompts when they are given) or at random; they are removed
in a copy (:func:`~diffmem.mitigations.pruning.without_heads`) and optionally fine-tuned with the training loss
(:func:`~diffmem.mitigations.pruning.finetune`). No pruning code lives here.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from diffmem.attention import Head
from diffmem.mitigations.base import PermanentMitigation, register
from diffmem.mitigations.copy_ablation import copy_ablation
from diffmem.mitigations.pruning import alpha_bar, finetune, select_heads, without_heads
from diffmem.mitigations.retraining import rebound
from diffmem.subject import Prompt, Subject
from diffmem.training.config import TrainConfig

__all__ = ["HeadPruning", "SELECTIONS"]

SELECTIONS = ("importance", "copy-ablation", "random")


@register
@dataclass(frozen=True)
class HeadPruning(PermanentMitigation):
    """Ye et al. (ICLR 2026): prune a fraction η of the DiT self-attention heads, then (optionally) fine-tune.

    Attributes:
        ratio: η, the fraction of heads removed (⌊η·H⌋).
        select: ``"importance"`` (Algorithm 2, t ~ ``law``, ``num_batches`` scoring batches), ``"copy-ablation"``
            (ours: single-head ablation on ``score_samples`` samples of the trigger prompts) or ``"random"``.
        finetune_steps: steps of the ordinary training loss after removal (0: none); ``batch_size``, ``lr``:
            its recipe (AdamW, EMA as in :func:`~diffmem.training.trainer.fit`).
        seed: scoring batches, random choice and fine-tuning draws.
    """

    name = "head-pruning"
    citation = "Ye et al., Memorization in diffusion transformers: attention-head pruning, ICLR 2026"
    knob = "ratio"
    grid = (0.05, 0.1, 0.2, 0.3)

    ratio: float = 0.2
    select: str = "importance"
    law: str = "beta"
    num_batches: int = 100
    score_samples: int = 64
    finetune_steps: int = 0
    batch_size: int = 128
    lr: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        if self.select not in SELECTIONS:
            raise ValueError(f"unknown head selection {self.select!r}; expected one of {SELECTIONS}")
        if not 0 <= self.ratio < 1:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio!r}")
        if self.finetune_steps < 0:
            raise ValueError(f"finetune_steps must be >= 0, got {self.finetune_steps!r}")

    def recipe(self, subject: Subject) -> TrainConfig:
        """The scoring and fine-tuning recipe on ``subject``'s training table."""
        return TrainConfig(batch_size=self.batch_size, lr=self.lr, warmup=0, ema_decay=0.999,
                           num_train_timesteps=len(alpha_bar(subject)), seed=self.seed)

    def heads(self, subject: Subject, prompts: Sequence[Prompt] = ()) -> list:
        """The heads to remove, as ``[[layer, index], …]`` (the model is left unchanged)."""
        if self.select == "copy-ablation":
            if subject.references is None:
                raise ValueError(f"subject {subject.name!r} has no references; copy-ablation scores need them")
            scored = replace(subject, prompts=tuple(prompts)) if prompts else subject
            chosen = copy_ablation(scored, subject.references, self.ratio, n_samples=self.score_samples,
                                   seed=self.seed, steps=subject.steps)
            return [[h.layer, h.index] for h in chosen.heads]
        result = select_heads(subject, self.recipe(subject), method=self.select, ratio=self.ratio, law=self.law,
                              num_batches=self.num_batches, seed=self.seed)
        return result.removed

    def apply(self, subject: Subject, prompts: Sequence[Prompt] = (), *, state_dir: str | Path | None = None
              ) -> Subject:
        """A subject around a pruned (and fine-tuned) copy; ``info["head_pruning"]`` lists the removed heads.
        ``state_dir`` keeps the resumable fine-tuning state (default: a temporary directory)."""
        removed = self.heads(subject, prompts)
        edited = without_heads(subject, [Head(layer, int(i)) for layer, i in removed])
        if self.finetune_steps:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(state_dir or tmp) / f"head-pruning-{self.seed}.safetensors"
                edited = finetune(edited, self.recipe(subject), self.finetune_steps, path, seed=self.seed)
            edited = rebound(edited, edited.net)  # a world's text encoder was fine-tuned too: re-encode the prompts
        info = {**dict(subject.info), "head_pruning": {"removed": removed, "mitigation": self.describe()}}
        return replace(edited, name=f"{subject.name}+head-pruning", info=info)

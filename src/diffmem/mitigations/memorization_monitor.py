"""Early stopping at the onset of memorization (Bonnaire et al., NeurIPS 2025; Favero, Sclocchi & Wyart, arXiv
2505.16959): generalization arrives at a time independent of the data size and memorization at a time growing with
it, so training can stop in between, once a monitor sees memorization begin.

Every ``every`` steps the current EMA network is checked and training stops at the first check whose signal reaches
``threshold``; the returned model holds the weights of that step.

* ``criterion="copy_rate"``: the paired copy rate of a few monitor prompts (the first ``n_prompts`` of ``kinds``,
  e.g. planted captions) over ``n_seeds`` seeds;
* ``criterion="loss_gap"``: held-out minus training loss (Favero et al.'s onset signal): the unconditional
  ε-prediction loss at fixed draws (t, ε) on the images no training row uses versus as many training images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from diffmem.mitigations.base import TrainingMitigation, register
from diffmem.mitigations.pruning import alpha_bar, trainable
from diffmem.mitigations.retraining import rebound, recipe, retrain
from diffmem.mitigations.retrigger import copy_rates
from diffmem.subject import Subject, TrainingSet
from diffmem.training.trainer import eps_loss

__all__ = ["CRITERIA", "loss_gap", "MemorizationMonitor"]

CRITERIA = ("copy_rate", "loss_gap")


@torch.no_grad()
def loss_gap(subject: Subject, net: nn.Module, training: TrainingSet, *, n_draws: int = 8, seed: int = 0) -> float:
    """Held-out minus training ε-loss of ``net`` (unconditional, fixed draws; module docstring)."""
    used = torch.zeros(len(training.images), dtype=torch.bool)
    used[training.rows] = True
    held = (~used).nonzero().flatten()
    if len(held) == 0:
        raise ValueError("the loss-gap criterion needs held-out images (images no training row uses); the world "
                         "has none — use criterion='copy_rate'")
    train = torch.unique(training.rows)[:len(held)]
    module, table = trainable(subject, net), alpha_bar(subject)
    g = torch.Generator().manual_seed(seed)

    def loss(ids: Tensor) -> float:
        x0 = training.images[ids].repeat_interleave(n_draws, 0).to(subject.dtype)
        t = torch.randint(len(table), (len(x0),), generator=g)
        eps = torch.randn(x0.shape, generator=g).to(x0.dtype)
        null = training.null.expand(len(x0), *training.null.shape)
        return float(eps_loss(module, table, x0, t, eps, null))

    return loss(held) - loss(train)


@register
@dataclass(frozen=True)
class MemorizationMonitor(TrainingMitigation):
    """Early stopping (Bonnaire et al., NeurIPS 2025; Favero et al., 2025): retrain and stop at the first check whose
    memorization signal reaches ``threshold`` (module docstring).

    Attributes:
        criterion: ``"copy_rate"`` or ``"loss_gap"``; threshold: where it fires (inclusive).
        every: steps between checks; kinds, n_prompts, n_seeds, guidance, steps: the copy-rate monitor (seeds
            ``seed …``); n_draws: (t, ε) draws per image of the loss gap.
    """

    name = "early-stopping"
    citation = ("Bonnaire et al., Why Diffusion Models Don't Memorize, NeurIPS 2025; Favero, Sclocchi & Wyart, "
                "arXiv 2505.16959")
    knob = "threshold"
    grid = (0.05, 0.1, 0.25, 0.5)

    criterion: str = "copy_rate"
    threshold: float = 0.1
    every: int = 250
    kinds: tuple = ("planted",)
    n_prompts: int = 5
    n_seeds: int = 4
    guidance: float = 7.5
    steps: int | None = None
    n_draws: int = 8
    seed: int = 10**6

    def __post_init__(self):
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion {self.criterion!r}; expected one of {CRITERIA}")

    def signal(self, subject: Subject, net: nn.Module, training: TrainingSet) -> float:
        """The monitored quantity for ``net`` (a network of ``subject``'s kind)."""
        if self.criterion == "loss_gap":
            return loss_gap(subject, net, training, n_draws=self.n_draws, seed=self.seed)
        if not any(p.kind in self.kinds for p in subject.prompts):
            raise ValueError(f"subject {subject.name!r} has no prompts of kinds {self.kinds!r} to monitor")
        probe = rebound(subject, net)  # the prompts re-encoded by the network's own text encoder
        prompts = [p for k in self.kinds for p in probe.prompts if p.kind == k][:self.n_prompts]
        seeds = list(range(self.seed, self.seed + self.n_seeds))
        return float(copy_rates(probe, prompts, seeds, guidance=self.guidance, steps=self.steps).mean())

    def train(self, subject: Subject, *, cfg=None, init: str = "scratch", state_dir=None, progress: bool = False,
              **overrides) -> Subject:
        """Retrain ``subject``'s network, stopping at the onset (world initialization and recipe by default);
        ``info["retrained"]`` holds the check history and ``stopped_at`` (None when it never fired)."""
        if subject.training is None:
            raise ValueError(f"subject {subject.name!r} has no training rows to retrain on")
        history: list[dict] = []
        stopped: list[int] = []

        def check(step: int, net: nn.Module, training: TrainingSet):
            value = self.signal(subject, net, training)
            history.append({"step": step, "signal": value})
            if value >= self.threshold:
                stopped.append(step)
                return None
            return training

        out = retrain(subject, subject.training, recipe(subject, cfg, **overrides), init=init, every=self.every,
                      check=check, state_dir=state_dir, progress=progress, name=self.name,
                      info={"mitigation": self.describe(), "history": history})
        record = {**out.info["retrained"], "stopped_at": stopped[0] if stopped else None}
        return replace(out, info={**dict(out.info), "retrained": record})

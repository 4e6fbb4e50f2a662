"""Algorithm 1 of Ye et al. (2025) end to end on a WorldNet-like model: score, select, remove, fine-tune.

Baselines and ablations of issue 8 are arguments: ``method="random"`` (Table 1's random pruning at equal η),
``law="uniform"`` (scoring t uniform instead of Beta(0.8, 2)), ``ratio`` (the η sweep).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from torch import Tensor, nn

from diffmem.mitigations.head_pruning import (
    Head,
    accumulate_scores,
    head_counts,
    lowest_heads,
    mask_heads,
    normalise_per_layer,
    random_heads,
    remove_heads,
    scoring_loss,
    self_attention_layers,
)
from diffmem.results import Result

__all__ = ["METHODS", "PruneResult", "prune", "apply_removal", "finetune"]

METHODS = ("importance", "random")


@dataclass(frozen=True)
class PruneResult(Result):
    """Which heads went and why.

    Attributes:
        method, ratio, law, seed, num_batches: how they were chosen (``law``/``num_batches`` unused by random).
        total_heads: H; removed: ``[[layer, index], …]`` (indices before removal), least important first for
        ``importance``; removed_per_layer: count per layer (spec §10: log heads removed per layer).
        scores, importance: S(h) and I(h) per layer (empty for random pruning).
    """

    method: str
    ratio: float
    law: str
    seed: int
    num_batches: int
    total_heads: int
    removed: list
    removed_per_layer: dict
    scores: dict = field(default_factory=dict)
    importance: dict = field(default_factory=dict)

    @property
    def heads(self) -> list[Head]:
        return [Head(layer, int(index)) for layer, index in self.removed]


def prune(net: nn.Module, training_set, train_cfg, *, method: str = "importance", ratio: float = 0.2,
          law: str = "beta", num_batches: int = 100, seed: int = 0, physically: bool = False) -> PruneResult:
    """Choose ⌊η·H⌋ DiT self-attention heads of ``net`` and remove them in place (zero gate, or deleted weights
    with ``physically=True``). Scoring batches follow ``train_cfg`` (batch size, schedule, CFG dropout) with t
    from ``law``; batch b of the scoring pass and the random pick depend only on ``seed``."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of {METHODS}")
    layers = self_attention_layers(net)
    scores: dict[str, Tensor] = {}
    importance: dict[str, Tensor] = {}
    if method == "importance":
        scores = accumulate_scores(scoring_loss(net, training_set, train_cfg, law=law, seed=seed), layers,
                                   num_batches)
        importance = normalise_per_layer(scores)
        heads = lowest_heads(importance, ratio)
    else:
        heads = random_heads(head_counts(layers), ratio, seed=seed)
    per_layer = {name: sum(h.layer == name for h in heads) for name in layers}
    result = PruneResult(method, float(ratio), law, seed, num_batches, sum(a.num_heads for a in layers.values()),
                         [[h.layer, h.index] for h in heads], per_layer, scores, importance)
    apply_removal(net, result.heads, physically=physically)
    return result


def apply_removal(net: nn.Module, heads: list[Head], *, physically: bool = False) -> None:
    """Remove ``heads`` from a freshly built ``net`` (how a saved pruned model is rebuilt before its state dict
    is loaded: ``physically`` must match how it was pruned)."""
    (remove_heads if physically else mask_heads)(self_attention_layers(net), heads)


def finetune(net: nn.Module, training_set, train_cfg, steps: int, state_path: str | Path, *, seed: int = 0,
             progress: bool = False):
    """Algorithm 1 step 4: ``steps`` optimizer steps of the ordinary training loss (``fit`` with the base
    recipe, uniform t); returns the EMA. Random pruning must get the identical budget."""
    from diffmem.training.trainer import fit

    return fit(net, training_set, replace(train_cfg, steps=steps, seed=seed), state_path, progress=progress)

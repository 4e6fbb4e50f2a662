"""Algorithm 1 of Ye et al. (2025) on a :class:`~diffmem.subject.Subject`: score, select, remove, fine-tune, generate.

One code path for every backend: importance scores differentiate gates installed through the attention interface
(:mod:`diffmem.attention`), removal and fine-tuning act on edited copies (:meth:`Subject.edited`), so the caller's
model is never changed. The losses are the training loss of :func:`diffmem.training.trainer.fit` (its batches, CFG
dropout and AdamW/EMA recipe) on ``subject.trainable(net)``; scoring redraws t from a time law.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from diffmem.attention import Head, attention
from diffmem.mitigations.head_pruning import (
    accumulate_scores,
    lowest_heads,
    normalize_per_layer,
    random_heads,
)
from diffmem.mitigations.time_law import draw_timesteps
from diffmem.results import Result
from diffmem.sampling.trajectory import Recorder
from diffmem.subject import Subject
from diffmem.training.config import TrainConfig
from diffmem.training.trainer import draw_batch, eps_loss, fit

__all__ = ["METHODS", "PruneResult", "trainable", "alpha_bar", "scoring_loss", "select_heads", "without_heads",
           "finetune", "generate"]

METHODS = ("importance", "random")


@dataclass(frozen=True)
class PruneResult(Result):
    """Which heads went and why.

    Attributes:
        method, ratio, law, seed, num_batches: how they were chosen (``law``/``num_batches`` unused by random).
        total_heads: H; removed: ``[[layer, index], …]`` (indices before removal), least important first for
            ``importance``; removed_per_layer: count per layer.
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


def trainable(subject: Subject, net: nn.Module | None = None) -> nn.Module:
    """The module the training loss differentiates for ``net`` (default ``subject.net``)."""
    net = subject.net if net is None else net
    if net is None:
        raise ValueError(f"subject {subject.name!r} has no module to train")
    return net if subject.trainable is None else subject.trainable(net)


def alpha_bar(subject: Subject) -> Tensor:
    """The training table ᾱ[0..T−1] of the subject's model (float32)."""
    return subject.denoiser.schedule.alphas_cumprod.float()


def _training(subject: Subject):
    if subject.training is None:
        raise ValueError(f"subject {subject.name!r} has no training set; pruning scores and fine-tunes on it")
    return subject.training


def scoring_loss(subject: Subject, cfg: TrainConfig, law: str = "beta", seed: int = 0):
    """``batch_loss(b)``: the training loss of batch b (rows, noise, CFG dropout as :func:`fit` draws them for
    ``cfg``) with t redrawn from ``law`` (Beta(0.8, 2) by default); batch b depends only on (``seed``, b)."""
    net, table, training = trainable(subject), alpha_bar(subject), _training(subject)
    cfg = replace(cfg, seed=seed)

    def batch_loss(b: int) -> Tensor:
        x0, _, eps, cond = draw_batch(training, cfg, b)
        t = draw_timesteps(len(x0), cfg.num_train_timesteps, seed=[seed, b, 1], law=law)
        return eps_loss(net, table, x0, t, eps, cond)

    return batch_loss


def select_heads(subject: Subject, cfg: TrainConfig, *, method: str = "importance", ratio: float = 0.2,
                 law: str = "beta", num_batches: int = 100, seed: int = 0) -> PruneResult:
    """Algorithm 1 steps 1-2: ⌊η·H⌋ self-attention heads of ``subject.net`` by importance (Algorithm 2, scoring
    batches seeded by ``seed``, t from ``law``) or at random (by ``seed``). The model is left unchanged."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; expected one of {METHODS}")
    att = attention(subject)
    counts = att.head_counts("self")
    scores: dict[str, Tensor] = {}
    importance: dict[str, Tensor] = {}
    if method == "importance":
        scores = accumulate_scores(scoring_loss(subject, cfg, law=law, seed=seed), att, num_batches)
        importance = normalize_per_layer(scores)
        heads = lowest_heads(importance, ratio)
    else:
        heads = random_heads(counts, ratio, seed=seed)
    per_layer = {name: sum(h.layer == name for h in heads) for name in counts}
    return PruneResult(method, float(ratio), law, seed, num_batches, sum(counts.values()),
                       [[h.layer, h.index] for h in heads], per_layer, scores, importance)


def without_heads(subject: Subject, heads: list[Head], *, physically: bool | None = None) -> Subject:
    """Algorithm 1 step 3: a subject around a copy of the model without ``heads`` (``subject`` is unchanged).

    By default the backend's form: a persistent zero gate where the model has one (world DiT: the state dict keeps
    its shapes), else physical removal (:meth:`diffmem.attention.AttentionModel.remove_heads`); both give the same
    outputs."""
    def edit(net: nn.Module) -> None:
        att = attention(net)
        att.remove_heads(heads, physically=not att.persistent_gates if physically is None else physically)

    return subject.edited(edit)


def finetune(subject: Subject, cfg: TrainConfig, steps: int, state_path: str | Path, *, seed: int = 0,
             progress: bool = False) -> Subject:
    """Algorithm 1 step 4 on an edited copy: ``steps`` optimizer steps of the ordinary training loss (:func:`fit`:
    uniform t, CFG dropout, AdamW, EMA; resumable from ``state_path``); the copy holds the EMA weights, which are
    the ones sampled. Every method compared in one table must get the identical budget."""
    cfg, table, training = replace(cfg, steps=steps, seed=seed), alpha_bar(subject), _training(subject)

    def train(net: nn.Module) -> None:
        module = trainable(subject, net)
        fit(module, training, cfg, state_path, progress=progress, alpha_bar=table).copy_to(module)

    return subject.edited(train)


def generate(subject: Subject, n_samples: int, *, seed: int = 0, steps: int = 50, batch_size: int = 256) -> Tensor:
    """``n_samples`` images [n, C, H, W] in [−1, 1] (pixels, decoded for latent models) through the one loop with
    the subject's sampler, without guidance (w = 1); sample i has seed ``seed + i`` and prompt
    ``subject.prompts[(seed + i) mod K]``.

    Class models are sampled class-conditionally (their prompts are the classes): digits-dit's conditional branch is
    the one that memorizes (≈ 66 % at w = 1, the paper's ≈ 70 %), while its unconditional branch, trained on 10 % of
    batches, copies nothing — an unconditional table would have nothing to reduce."""
    if n_samples < 1 or not subject.prompts:
        raise ValueError(f"need n_samples >= 1 and a subject with prompts, got n_samples={n_samples}, "
                         f"{len(subject.prompts)} prompts")
    out, K = [], len(subject.prompts)
    for i in range(0, n_samples, batch_size):
        seeds = list(range(seed + i, seed + min(n_samples, i + batch_size)))
        cond = subject.cond([subject.prompts[s % K] for s in seeds])
        x0 = subject.sample(cond, seeds, guidance=1.0, steps=steps, recorder=Recorder(keep=())).x_0
        out.append((x0 if subject.decode is None else subject.decode(x0)).clamp(-1, 1).cpu())
    return torch.cat(out)

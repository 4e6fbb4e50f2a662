"""What the mitigations that act before sampling share (Wen et al., ICLR 2024; Han et al., NeurIPS 2025; Jeon et
al., ICML 2025; Kim et al.'s revision): the first state x_T and timestep of a run, the text embedding e_p inside any
conditioning, the first-step guidance gap ‖ε_c − ε_u‖, a per-row AdamW, and the intervention that hands the edited
x_T or conditioning to the one loop.

Optimizations call the denoiser once per iteration on the rows still running, with the optimized tensor a leaf that
requires grad, so the harness's counting wrapper sees every evaluation as a VJP row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.detectors.base import eps_difference
from diffmem.detectors.probes import initial_states
from diffmem.detectors.token_attribution import _embedding_key as _key
from diffmem.sampling.hooks import Intervention
from diffmem.sampling.trajectory import Trajectory
from diffmem.subject import Subject
from diffmem.types import Cond, Prediction

__all__ = ["FirstStep", "first_step", "embedding", "with_embedding", "guidance_gap", "RowAdamW", "descend",
           "descend_embedding", "freeze_bos", "Replace", "sample_with", "row_generator", "prompt_texts"]


@dataclass(frozen=True)
class FirstStep:
    """x_T [B, *state] as :meth:`~diffmem.subject.Subject.sample` draws it, the first grid timestep t₀ and ᾱ_{t₀}."""

    x_T: Tensor
    t: Tensor
    alpha_bar: float


def first_step(subject: Subject, seeds: Sequence[int], steps: int | None = None) -> FirstStep:
    """The first state and timestep of a ``steps``-step run of ``subject`` with ``seeds``."""
    grid = subject.sampler(steps or subject.steps).grid
    return FirstStep(initial_states(subject, seeds, steps), grid.timesteps[0], float(grid.alpha_bar[0]))


def embedding(c) -> Tensor:
    """e_p [B, L, D] of a conditioning branch (the tensor itself for Stable Diffusion, ``c["emb"]`` in worlds)."""
    key = _key(c)
    return c if key is None else c[key]


def with_embedding(c, e: Tensor):
    """The conditioning branch ``c`` with its e_p replaced by ``e`` (other fields, e.g. the token mask, kept)."""
    key = _key(c)
    return e if key is None else {**c, key: e}


def guidance_gap(pred: Prediction) -> Tensor:
    """‖ε_c − ε_u‖₂ per sample [B] (Wen et al., ICLR 2024), in at least float32."""
    return eps_difference(pred.eps_c, pred.eps_u).flatten(1).norm(dim=1)


class RowAdamW:
    """AdamW (Loshchilov & Hutter, ICLR 2019; ``torch.optim.AdamW``'s update) on the rows of one tensor, where a row
    that has met its stopping rule stops for good: its value, moments and step count stay frozen.

    Rows still running have taken the same number of steps, so one bias-correction count serves them all."""

    def __init__(self, p: Tensor, *, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        self.p, self.lr, self.betas, self.eps, self.weight_decay = p, lr, betas, eps, weight_decay
        self.m, self.v, self.k = torch.zeros_like(p), torch.zeros_like(p), 0

    @torch.no_grad()
    def step(self, rows: Tensor, grad: Tensor) -> None:
        """One update of ``p[rows]`` with their gradients ``grad`` [len(rows), ...]."""
        self.k += 1
        b1, b2 = self.betas
        p, m, v = self.p[rows], self.m[rows], self.v[rows]
        p.mul_(1 - self.lr * self.weight_decay)
        m.lerp_(grad, 1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (v.sqrt() / (1 - b2 ** self.k) ** 0.5).add_(self.eps)
        p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** self.k))
        self.p[rows], self.m[rows], self.v[rows] = p, m, v


def descend(p: Tensor, loss: Callable[[Tensor, Tensor], Tensor], *, lr: float, max_steps: int, target: float,
            weight_decay: float = 0.0, edit_grad: Callable[[Tensor], None] | None = None) -> tuple[Tensor, Tensor]:
    """AdamW on the rows of ``p`` until each row's loss is at or below ``target`` or ``max_steps`` iterations ran.

    Every iteration evaluates ``loss(leaf, rows)`` → [len(rows)] on the rows still running (``leaf`` = their values,
    requiring grad), stops the rows at or below ``target`` and steps the others; ``edit_grad`` may change the
    gradient in place first (e.g. freeze a position). Returns (the optimized copy of ``p`` in at least float32, the
    loss of each iteration [max_steps, B], NaN after a row stopped)."""
    x = p.detach().to(torch.promote_types(p.dtype, torch.float32)).clone()
    opt, running = RowAdamW(x, lr=lr, weight_decay=weight_decay), torch.arange(len(p))
    losses = torch.full((max_steps, len(p)), float("nan"), dtype=torch.float64)
    for k in range(max_steps):
        if len(running) == 0:
            break
        leaf = x[running].clone().requires_grad_()
        with torch.enable_grad():
            value = loss(leaf, running)
            (grad,) = torch.autograd.grad(value.sum(), leaf)
        losses[k, running] = value.detach().double().cpu()
        go = value.detach().cpu() > target
        if edit_grad is not None:
            edit_grad(grad)
        if bool(go.any()):
            opt.step(running[go], grad[go.to(grad.device)])
        running = running[go]
    return x, losses


def freeze_bos(grad: Tensor) -> None:
    """Zero the gradient of position 0 of e_p [B, L, D] in place: BOS carries no prompt information (Wen et al.)."""
    grad[:, 0] = 0


class Replace(Intervention):
    """Hand a precomputed x_T and/or conditioning to the loop (what an optimization before sampling produced)."""

    def __init__(self, x_T: Tensor | None = None, cond: Cond | None = None, label: str = "replace"):
        self._x_T, self._cond, self.label = x_T, cond, label

    def edit_x_T(self, x_T: Tensor) -> Tensor:
        if self._x_T is None:
            return x_T
        if self._x_T.shape != x_T.shape:
            raise ValueError(f"the optimized x_T has shape {tuple(self._x_T.shape)}, the run {tuple(x_T.shape)}")
        return self._x_T.to(x_T.dtype)

    def edit_cond(self, cond: Cond) -> Cond:
        if self._cond is None:
            return cond
        if self._cond.batch_size != cond.batch_size:
            raise ValueError(f"the edited conditioning has {self._cond.batch_size} rows, the run {cond.batch_size}")
        return self._cond


def sample_with(subject: Subject, cond: Cond, seeds: Sequence[int], *, guidance, steps: int | None, kwargs: dict,
                edit: Intervention | None = None, hooks: Sequence = ()) -> Trajectory:
    """``subject.sample`` with the remedy's intervention first, then the caller's interventions and hooks."""
    kwargs = dict(kwargs)
    interventions = ([edit] if edit is not None else []) + list(kwargs.pop("interventions", ()))
    hooks = list(hooks) + list(kwargs.pop("hooks", ()))
    return subject.sample(cond, seeds, guidance=guidance, steps=steps, interventions=interventions, hooks=hooks,
                          **kwargs)


def row_generator(tag: str, seed: int) -> torch.Generator:
    """A CPU generator for one generation's own draws of a remedy, apart from its x_T stream (named by ``tag``)."""
    digest = hashlib.sha256(f"diffmem.mitigations:{tag}:{int(seed)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _same(a, b) -> bool:
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.shape == b.shape and bool(torch.equal(a, b.to(a.device)))
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and set(a) == set(b) and all(_same(a[k], b[k]) for k in a)
    return False


def prompt_texts(subject: Subject, cond: Cond, texts: Sequence[str] | None = None) -> list[str]:
    """The prompt text of every row of ``cond``: ``texts`` when given, else the subject's prompt whose
    conditioning equals the row's (a ValueError names a row that matches none)."""
    if texts is not None:
        if len(texts) != cond.batch_size:
            raise ValueError(f"got {len(texts)} texts for {cond.batch_size} conditioning rows; pass one per row")
        return list(texts)
    out = []
    for i in range(cond.batch_size):
        row = cond.select(torch.tensor([i])).c
        hit = next((p.text for p in subject.prompts if _same(p.cond.c, row)), None)
        if hit is None:
            raise ValueError(f"conditioning row {i} is none of subject {subject.name!r}'s prompts; pass texts=[...]")
        out.append(hit)
    return out


def descend_embedding(cond: Cond, e0: Tensor, loss, **kwargs) -> tuple[Cond, list]:
    """:func:`descend` on the prompt embedding e0 of ``cond`` (the BOS row frozen), returned as the edited
    conditioning (null branch unchanged) and the per-row losses."""
    e, losses = descend(e0, loss, edit_grad=freeze_bos, **kwargs)
    return Cond(with_embedding(cond.c, e.to(e0.dtype)), cond.null), losses

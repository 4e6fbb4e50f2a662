"""Cross-attention plumbing of the attention detectors (Ren et al., ECCV 2024; Chen et al., ICLR 2025).

Probabilities are recorded through the one attention interface (:func:`diffmem.attention.attention`) as a sampling
hook of the one loop, on the conditional rows only (the denoiser evaluates ``[uncond; cond]``, so the conditional
rows are the last B of every call), and only at the steps a statistic reads: a recorded call of any other step is
dropped as soon as the step ends, so memory does not grow with the trajectory.

Token conventions are explicit (rule 7 of the detectors' conventions): the *end token* is the first token after the
prompt (CLIP's and the worlds' ``<eos>``, T5's ``</s>``); the *summary tokens* are the end token and every position
after it (padding). Its position comes from, in order: an explicit index, the conditioning's token mask (its last
marked position: worlds, PixArt), or the model's tokenizer (Stable Diffusion passes a bare [B, 77, D] tensor).
Layers are chosen by qualified name or by position among the model's cross-attention layers in module order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffmem.attention import attention
from diffmem.sampling.hooks import Hook
from diffmem.sampling.trajectory import Recorder
from diffmem.subject import Prompt, Subject

__all__ = ["entropy", "end_token_index", "cross_layers", "record_cross_attention", "spatial_map", "StepRecorder"]


def entropy(p: Tensor, dim: int = -1) -> Tensor:
    """−Σ p log p along ``dim`` (0 log 0 = 0: masked keys and empty padding contribute nothing)."""
    return -torch.special.xlogy(p, p).sum(dim)


def end_token_index(subject: Subject, prompt: Prompt, end_index: int | None = None) -> int:
    """Position of ``prompt``'s end token in its conditioning (the first summary token)."""
    if end_index is not None:
        return int(end_index)
    c = prompt.cond.c
    if isinstance(c, Mapping) and "mask" in c:
        marked = c["mask"][0].bool().nonzero().flatten()
        if len(marked) == 0:
            raise ValueError(f"prompt {prompt.id!r} has an empty token mask; pass end_index")
        return int(marked[-1])
    tok = getattr(getattr(subject.denoiser, "pipeline", None), "tokenizer", None)
    if tok is not None:  # <bos> w_1 … w_n <eos>, truncated as the adapter encodes it
        return len(tok(prompt.text, truncation=True, max_length=tok.model_max_length)["input_ids"]) - 1
    raise ValueError(f"cannot locate the end token of prompt {prompt.id!r}: its conditioning has no token mask and "
                     f"the model no tokenizer; pass end_index")


def cross_layers(subject: Subject, which: Sequence[int | str]) -> list[str]:
    """Qualified names of the cross-attention layers ``which`` (names, or positions in module order). A position
    past the last layer means the last one (models smaller than the reference's); duplicates are dropped."""
    att = attention(subject)
    names = att.select("cross")
    if not names:
        raise ValueError(f"{subject.name!r} has no cross-attention layers (a text-conditioned model is needed)")
    out = []
    for w in which:
        if isinstance(w, str):
            att.check_names([w], "layers")
            name = w
        elif isinstance(w, int) and not isinstance(w, bool) and w >= 0:
            name = names[min(w, len(names) - 1)]
        else:
            raise ValueError(f"a layer is a qualified name or a position >= 0, got {w!r}")
        if name not in out:
            out.append(name)
    return out


class StepRecorder(Hook):
    """Keeps the recorded attention calls of the steps ``keep(i, n)`` only, and optionally d_t = ε_c − ε_u maps.

    ``kept`` lists the kept step indices; ``d`` holds one [B, *state] float32 (or wider) map per step when
    ``differences`` is set."""

    def __init__(self, hooks, keep: Callable[[int, int], bool], differences: bool = False):
        self.hooks, self.keep, self.differences = hooks, keep, differences
        self.kept: list[int] = []
        self.d: list[Tensor] = []
        self._count = {n: 0 for n in hooks.probs}

    def on_step(self, record) -> None:
        if self.keep(record.i, record.num_steps):
            self.kept.append(record.i)
            self._count = {n: len(v) for n, v in self.hooks.probs.items()}
        else:
            for n, v in self.hooks.probs.items():
                del v[self._count[n]:]
        if self.differences:
            eps_c, eps_u = record.pred.eps_c, record.pred.eps_u
            dtype = torch.promote_types(eps_c.dtype, torch.float32)
            self.d.append((eps_c.to(dtype) - eps_u.to(dtype)).detach().cpu())


def record_cross_attention(subject: Subject, cond, seeds: Sequence[int], layers: Sequence[str], *,
                           reduce: Callable[[Tensor], Tensor], keep: Callable[[int, int], bool], guidance: float,
                           steps: int, first: int | None = None, differences: bool = False):
    """One run of the loop recording ``reduce(probs)`` of ``layers`` at the kept steps.

    Returns (per-layer tensors [kept steps, B, ...] of the conditional rows, the :class:`StepRecorder`)."""
    rec = attention(subject).hooks(record=list(layers), reduce=reduce)
    steps_hook = StepRecorder(rec, keep, differences)
    subject.sample(cond, seeds, guidance=guidance, steps=steps, first=first, recorder=Recorder(keep=()),
                   hooks=[rec, steps_hook])
    B = len(seeds)
    return {n: rec.stacked(n)[:, -B:] for n in layers}, steps_hook


def spatial_map(m: Tensor, state_shape: Sequence[int]) -> Tensor:
    """Per-query maps [B, Q] as maps [B, H, W] over the state's last two dims: queries are the row-major patches of
    an (H/f)×(W/f) grid (UNet features, DiT patches), each repeated over its f×f block."""
    H, W = state_shape[-2:]
    Q = m.shape[-1]
    f = round((H * W / Q) ** 0.5)
    if f < 1 or (H // f) * (W // f) != Q or H % f or W % f:
        raise ValueError(f"{Q} attention queries do not tile a {H}×{W} state; choose layers at a resolution that "
                         f"divides it")
    grid = m.reshape(len(m), 1, H // f, W // f)
    return F.interpolate(grid, scale_factor=f, mode="nearest")[:, 0]

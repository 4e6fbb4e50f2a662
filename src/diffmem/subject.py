"""The one thing every analysis, detector, mitigation and table runs on: a model with its prompts and data.

A :class:`Subject` bundles the denoiser (the ε_c/ε_u contract), the module behind it (what attention hooks and model
edits act on), how it is sampled (grid, solver, x_T scale for any step count), the prompts with their ground truth
(kind, paired training sample, extra labels), the training set in the model's state space, and a decoder to pixels.
It is built from an embedded world (:func:`diffmem.worlds.subject.world_subject`) or from a diffusers adapter plus
data (:mod:`diffmem.adapters.subject`).

Nothing edits a model behind the caller's back: :meth:`Subject.edited` returns a subject around an edited *copy*,
and :meth:`Subject.editing` scopes an in-place edit of the weights, restoring them on exit (also after an error).

Example (the closed-form empirical denoiser as a subject; every sample is a training image):
    >>> import torch
    >>> from diffmem.schedules import DiscreteSchedule
    >>> from diffmem.theory.closed_form import GaussianMixtureDenoiser
    >>> train = torch.randn(4, 8, dtype=torch.float64)
    >>> s = closed_form_subject(GaussianMixtureDenoiser(train, DiscreteSchedule.named("linear")), train)
    >>> traj = s.sample(s.cond(), seeds=[0, 1, 2, 3], guidance=1.0)
    >>> bool(torch.cdist(traj.x_0, train).min(1).values.max() < 1e-3)
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from diffmem.denoiser import Denoiser
from diffmem.sampling.loop import sample
from diffmem.sampling.spec import SamplerSpec
from diffmem.schedules import discrete_grid
from diffmem.seeding import SeededNoise
from diffmem.types import Cond, concat_cond

__all__ = ["Prompt", "TrainingSet", "Subject", "closed_form_subject"]


@dataclass(frozen=True)
class Prompt:
    """One prompt with its ground truth.

    Attributes:
        id: stable identifier (travels into every per-prompt record).
        text: the prompt as a person reads it (a class name for class-conditional models).
        cond: its conditioning, batch 1, with the null branch for ε_u.
        kind: ground-truth kind ("planted", "nonplanted", "novel", "template", …; "unknown" when none is given).
        x: the paired training sample in the model's state space, or None (prompts-only audits).
        meta: further ground truth (duplication count m, caption regime, template id, split, paired image ids …).
    """

    id: str
    text: str
    cond: Cond
    kind: str = "unknown"
    x: Tensor | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingSet:
    """The rows a model was trained on, in its state space (what fine-tuning and importance scoring draw from).

    Attributes:
        images: [N, ...] distinct training samples x0 in the model's state space (pixels or latents).
        rows: [R] image id of each training row (a duplicated image repeats its id).
        cond: [R, ...] conditioning ids of each row (token ids [R, L] or class ids [R]).
        null: [...] the null condition that replaces a row's with probability p_uncond (CFG dropout).
    """

    images: Tensor
    rows: Tensor
    cond: Tensor
    null: Tensor

    def __post_init__(self):
        if len(self.rows) != len(self.cond) or len(self.rows) == 0:
            raise ValueError(f"need as many conditions as rows (> 0), got {len(self.cond)} and {len(self.rows)}")
        if tuple(self.null.shape) != tuple(self.cond.shape[1:]):
            raise ValueError(f"null condition shape {tuple(self.null.shape)} != row shape {tuple(self.cond.shape[1:])}")


@dataclass(frozen=True)
class Subject:
    """A model, how to sample it, its prompts and its data.

    Attributes:
        name: identifier recorded in provenance.
        denoiser: the model behind the ε_c/ε_u contract.
        net: the ``nn.Module`` behind ``denoiser`` (attention interface, head pruning and other edits act on it).
        state_shape: shape of one state x_t (without batch): pixels for worlds, latents for latent models.
        sampler: ``steps -> SamplerSpec`` (grid, solver, x_T scale) for any number of steps.
        prompts: the prompts with their ground truth.
        steps: the default number of sampling steps.
        references: [M, ...] distinct training samples in state space (the reference set of copy rules), or None.
        training: the training rows (fine-tuning, importance scoring), or None when the data is not given.
        decode: states -> pixels in [−1, 1] ([B, C, H, W]); None when states are pixels.
        condition: prompt texts -> :class:`Cond` with the null branch (new prompts, caption perturbations).
        rebind: ``net -> Denoiser`` around another module (how :meth:`edited` wraps an edited copy).
        trainable: ``net -> module`` that training losses differentiate (fine-tuning, importance scores): its
            ``condition(ids)`` maps :attr:`TrainingSet.cond` rows to the denoiser's conditioning and its
            ``forward(x_t, t, c)`` returns ε; None when ``net`` itself does both (world nets).
        info: provenance of the model (checkpoint, config key, data).
    """

    name: str
    denoiser: Denoiser
    net: nn.Module | None
    state_shape: tuple[int, ...]
    sampler: Callable[[int], SamplerSpec]
    prompts: tuple[Prompt, ...] = ()
    steps: int = 50
    references: Tensor | None = None
    training: TrainingSet | None = None
    decode: Callable[[Tensor], Tensor] | None = None
    condition: Callable[[Sequence[str]], Cond] | None = None
    rebind: Callable[[nn.Module], Denoiser] | None = None
    trainable: Callable[[nn.Module], nn.Module] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "state_shape", tuple(int(s) for s in self.state_shape))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        ids = [p.id for p in self.prompts]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"prompt id {dup!r} occurs more than once; give every prompt a distinct id")

    # --- sampling ---------------------------------------------------------------------------------------------

    @property
    def spec(self) -> SamplerSpec:
        """Grid, solver and x_T scale at the default number of steps."""
        return self.sampler(self.steps)

    @property
    def grid(self):
        return self.spec.grid

    @property
    def solver(self):
        return self.spec.solver

    @property
    def x_T_scale(self) -> float:
        return self.spec.x_T_scale

    def with_steps(self, steps: int) -> Subject:
        """The same subject sampled with ``steps`` steps."""
        return replace(self, steps=steps)

    def x_T(self, noise: SeededNoise) -> Tensor:
        """Initial states [B, *state_shape]: one draw per seed of ``noise``, scaled as the sampler needs."""
        return self.spec.initial_latents(noise, self.state_shape)

    def sample(self, cond: Cond, seeds: Sequence[int], *, guidance=7.5, steps: int | None = None,
               first: int | None = None, **kwargs):
        """One call of :func:`diffmem.sample` (the one loop) on this subject: row i of ``cond`` uses seed i.

        ``first`` runs only the first k steps of the ``steps``-step grid (early-step statistics at their cost);
        ``kwargs`` go to :func:`diffmem.sample` (``recorder``, ``hooks``, ``interventions``). The initial draws and
        the solver's noise come from the same per-seed streams, so sample i depends on seed i only."""
        spec = self.sampler(steps or self.steps)
        grid = spec.grid if first is None else spec.grid.head(first)
        noise = SeededNoise(list(seeds), device=self.device, dtype=self.dtype)
        x_T = spec.initial_latents(noise, self.state_shape)
        return sample(self.denoiser, x_T, grid, cond, solver=spec.solver, guidance=guidance, noise=noise, **kwargs)

    @property
    def device(self) -> torch.device:
        """Where the module's parameters live (the CPU when there are none)."""
        return _device(self.net)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the states: the module's parameters', else the references', else float32."""
        p = next(self.net.parameters(), None) if self.net is not None else None
        if p is not None:
            return p.dtype
        return self.references.dtype if self.references is not None else torch.float32

    # --- prompts ----------------------------------------------------------------------------------------------

    def cond(self, prompts: Sequence[Prompt] | None = None) -> Cond:
        """The conditioning of ``prompts`` (default: all of the subject's) stacked into one batch."""
        prompts = self.prompts if prompts is None else prompts
        if not prompts:
            raise ValueError(f"subject {self.name!r} has no prompts to condition on")
        c, null = prompts[0].cond.c, prompts[0].cond.null
        for p in prompts[1:]:
            c = concat_cond(c, p.cond.c)
            null = None if null is None or p.cond.null is None else concat_cond(null, p.cond.null)
        return Cond(c, null)

    def encode(self, texts: Sequence[str]) -> Cond:
        """Conditioning for new prompt texts (with the null branch)."""
        if self.condition is None:
            raise ValueError(f"subject {self.name!r} cannot encode new prompt texts (it has no text conditioning)")
        return self.condition(list(texts))

    def select(self, *, kinds: Sequence[str] | None = None, per_kind: int | None = None,
               ids: Sequence[str] | None = None) -> Subject:
        """The subject restricted to prompts of ``kinds`` (at most ``per_kind`` each, in order) or to ``ids``."""
        prompts = list(self.prompts)
        if ids is not None:
            index = {p.id: p for p in prompts}
            missing = [i for i in ids if i not in index]
            if missing:
                raise ValueError(f"subject {self.name!r} has no prompt with id {missing[0]!r}")
            prompts = [index[i] for i in ids]
        if kinds is not None:
            prompts = [p for k in kinds for p in [q for q in prompts if q.kind == k][:per_kind]]
        return replace(self, prompts=tuple(prompts))

    # --- edits ------------------------------------------------------------------------------------------------

    def edited(self, edit: Callable[[nn.Module], None], *, name: str | None = None) -> Subject:
        """A subject around an edited deep copy of :attr:`net`; this subject's model is left as it was.

        ``edit(net_copy)`` may change weights or structure (e.g. physically remove attention heads)."""
        if self.net is None or self.rebind is None:
            raise ValueError(f"subject {self.name!r} has no editable module")
        net = copy.deepcopy(self.net)
        edit(net)
        return replace(self, net=net, denoiser=self.rebind(net), name=name or self.name)

    @contextmanager
    def editing(self) -> Iterator[nn.Module]:
        """Scope an in-place edit of the weights and buffers of :attr:`net`: they are restored on exit.

        Structure must not change inside (use :meth:`edited` for that); a changed parameter shape raises on exit
        after restoring what can be restored."""
        if self.net is None:
            raise ValueError(f"subject {self.name!r} has no editable module")
        saved = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        try:
            yield self.net
        finally:
            self.net.load_state_dict(saved)

    def describe(self) -> dict:
        """Provenance: the model, the sampler at the default steps and the prompt set."""
        spec = self.spec
        return {"subject": self.name, "model": self.denoiser.describe(), "steps": self.steps,
                "solver": getattr(spec.solver, "__name__", repr(spec.solver)), "x_T_scale": spec.x_T_scale,
                "n_prompts": len(self.prompts), **dict(self.info)}


def _device(net: nn.Module | None) -> torch.device:
    p = next(net.parameters(), None) if net is not None else None
    return p.device if p is not None else torch.device("cpu")




def closed_form_subject(denoiser: Denoiser, train: Tensor, *, steps: int = 20, name: str = "closed-form") -> Subject:
    """A subject around a closed-form denoiser over flat training samples ``train`` [N, D] (the analytic oracles):
    one unconditional prompt per training sample, paired with it; references = ``train``."""
    schedule = denoiser.schedule

    def sampler(n: int) -> SamplerSpec:
        return SamplerSpec(discrete_grid(schedule, n, spacing="trailing"), "ddim", 1.0, schedule)

    ids = torch.arange(len(train))
    prompts = [Prompt(str(i), f"training sample {i}", Cond(ids[i:i + 1], torch.full((1,), -1)), "planted", train[i])
               for i in range(len(train))]
    return Subject(name, denoiser, None, tuple(train.shape[1:]), sampler, prompts, steps=steps, references=train)

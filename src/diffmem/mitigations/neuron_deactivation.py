"""NeMo (Hintersdorf et al., NeurIPS 2024): localize the cross-attention value neurons of memorized prompts and
deactivate them permanently.

The neurons are the output channels of the cross-attention value projections (SD: ``attn2.to_v``; the world DiT:
the value half of ``cross.to_kv``). Their activations depend on the prompt only (values are projections of the text
tokens), so one conditional forward gives them all. Per prompt:

1. z-score the token-averaged |activation| of each neuron against reference statistics (mean, std) over
   non-memorized prompts;
2. initial selection: the neurons with |z| > θ plus the top-k |z| per layer, from θ = 5, k = 0, lowering θ by 0.25
   and raising k by 1 until the memorization screen passes or θ < ``theta_min``;
3. refinement: drop whole layers, then single neurons, whose removal keeps the screen passing.

The screen is a callable ``prompt -> bool`` evaluated with the candidate neurons blocked by forward hooks
(:class:`~diffmem.attention.base.ForwardHooks`): the paired copy rate over a few seeds (default; on the embedded
worlds the cross-seed SSIM separates memorized prompts poorly) or the ``nemo-ssim`` detector under a threshold.
The union of the neurons found is zeroed in a copy of the model (rows of the value weight and bias), which equals
blocking them at every step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from diffmem.attention import ForwardHooks, attention
from diffmem.detectors.cross_seed import CrossSeedSSIM
from diffmem.mitigations.base import PermanentMitigation, register
from diffmem.mitigations.retrigger import copy_rates
from diffmem.subject import Prompt, Subject
from diffmem.types import Cond

__all__ = ["ValueLayer", "value_layers", "value_activations", "reference_stats", "blocked", "zero_neurons",
           "localize", "Localization", "NeMo"]

Neurons = dict[str, list[int]]  # attention layer name -> value channels


@dataclass(frozen=True)
class ValueLayer:
    """Where the value neurons of one cross-attention layer live: channels ``offset … offset + width − 1`` of the
    output of submodule ``module`` (a linear layer)."""

    layer: str
    module: str
    offset: int
    width: int


def value_layers(net: nn.Module) -> dict[str, ValueLayer]:
    """The cross-attention value projections of ``net`` (world DiT: value half of ``to_kv``; diffusers: ``to_v``)."""
    att = attention(net)
    out = {}
    for name in att.select("cross"):
        m = att.modules[name]
        if hasattr(m, "to_v"):
            out[name] = ValueLayer(name, f"{name}.to_v", 0, m.to_v.out_features)
        elif hasattr(m, "to_kv"):
            width = m.to_kv.out_features // 2
            out[name] = ValueLayer(name, f"{name}.to_kv", width, width)
    if not out:
        raise ValueError(f"{type(net).__name__} has no cross-attention value projections; NeMo needs a "
                         "text-conditional model")
    return out


def _token_mask(cond_c) -> Tensor | None:
    return cond_c.get("mask") if isinstance(cond_c, Mapping) else None


@torch.no_grad()
def value_activations(subject: Subject, prompts: Sequence[Prompt]) -> dict[str, Tensor]:
    """Token-averaged |value activation| [P, width] per cross-attention layer (padding tokens excluded where the
    conditioning has a mask), from one conditional forward at the first grid step."""
    layers = value_layers(subject.net)
    cond = subject.cond(prompts)
    hooks = ForwardHooks.capture(subject.net, [v.module for v in layers.values()])
    x = torch.zeros(len(prompts), *subject.state_shape, dtype=subject.dtype)
    with hooks:
        subject.denoiser(x, subject.grid.timesteps[0], Cond(cond.c, None), uncond=False)
    mask = _token_mask(cond.c)
    out = {}
    for name, v in layers.items():
        a = hooks.outputs[v.module][-1][..., v.offset:v.offset + v.width].abs().double()  # [P, M, width]
        if mask is not None and a.ndim == 3 and mask.shape == a.shape[:2]:
            w = mask.to(a.dtype)[..., None]
            out[name] = (a * w).sum(1) / w.sum(1).clamp_min(1)
        else:
            out[name] = a.flatten(1, -2).mean(1) if a.ndim == 3 else a
    return out


def reference_stats(subject: Subject, prompts: Sequence[Prompt]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-neuron (mean, std) of the activations over non-memorized ``prompts`` (at least 2)."""
    if len(prompts) < 2:
        raise ValueError(f"reference statistics need at least 2 non-memorized prompts, got {len(prompts)}")
    acts = value_activations(subject, prompts)
    return {n: (a.mean(0), a.std(0)) for n, a in acts.items()}


def blocked(net: nn.Module, neurons: Neurons) -> ForwardHooks:
    """Forward hooks that set ``neurons`` of the value projections to 0 (a context manager; nothing changes
    outside it)."""
    layers = value_layers(net)
    fns = {}
    for name, idx in neurons.items():
        if not idx:
            continue
        v = layers[name]
        channels = torch.tensor(idx, dtype=torch.long) + v.offset

        def zero(module, inputs, out, channels=channels):
            out = out.clone()
            out[..., channels.to(out.device)] = 0
            return out

        fns[v.module] = zero
    return ForwardHooks(net, fns)


@torch.no_grad()
def zero_neurons(net: nn.Module, neurons: Neurons) -> None:
    """Permanently deactivate ``neurons``: zero their rows of the value weight (and bias) in place."""
    layers = value_layers(net)
    for name, idx in neurons.items():
        if not idx:
            continue
        v = layers[name]
        lin = net.get_submodule(v.module)
        rows = torch.tensor(idx, dtype=torch.long, device=lin.weight.device) + v.offset
        lin.weight[rows] = 0
        if lin.bias is not None:
            lin.bias[rows] = 0


@dataclass(frozen=True)
class Localization:
    """The neurons NeMo found for one prompt.

    Attributes:
        prompt: its id; neurons: layer -> channels; resolved: the screen passed with them blocked;
        theta, k: where the initial selection stopped; tests: screen evaluations spent.
    """

    prompt: str
    neurons: dict
    resolved: bool
    theta: float
    k: int
    tests: int
    initial: int = 0

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.neurons.values())


def _candidates(z: Mapping[str, Tensor], theta: float, k: int) -> Neurons:
    out = {}
    for name, zl in z.items():
        a = zl.abs()
        chosen = set((a > theta).nonzero().flatten().tolist())
        if k:
            chosen |= set(a.topk(min(k, len(a))).indices.tolist())
        out[name] = sorted(chosen)
    return out


def localize(subject: Subject, prompt: Prompt, stats: Mapping[str, tuple[Tensor, Tensor]],
             passes: Callable[[Neurons], bool], *, theta0: float = 5.0, theta_min: float = 1.0,
             theta_step: float = 0.25, refine: bool = True) -> Localization:
    """NeMo's search for one prompt: ``passes(neurons)`` says whether the prompt no longer memorizes with
    ``neurons`` blocked (module docstring)."""
    acts = value_activations(subject, [prompt])
    z = {n: (acts[n][0] - m) / s.clamp_min(torch.finfo(s.dtype).eps) for n, (m, s) in stats.items()}
    tests, theta, k = 0, theta0, 0
    if passes({}):
        return Localization(prompt.id, {}, True, theta, k, 1)
    tests += 1
    ok = False
    while theta >= theta_min:
        cand = _candidates(z, theta, k)
        tests += 1
        if passes(cand):
            ok = True
            break
        theta, k = theta - theta_step, k + 1
    if not ok:
        return Localization(prompt.id, cand, False, theta, k, tests, sum(map(len, cand.values())))
    initial = sum(map(len, cand.values()))
    if refine:
        for name in [n for n, v in cand.items() if v]:
            trial = {**cand, name: []}
            tests += 1
            if passes(trial):
                cand = trial
        for name in list(cand):
            for j in list(cand[name]):
                trial = {**cand, name: [i for i in cand[name] if i != j]}
                tests += 1
                if passes(trial):
                    cand = trial
    return Localization(prompt.id, {n: v for n, v in cand.items() if v}, True, theta, k, tests, initial)


def merge(neurons: Sequence[Mapping[str, Sequence[int]]]) -> Neurons:
    """The union of several neuron sets."""
    out: dict[str, set[int]] = {}
    for n in neurons:
        for name, idx in n.items():
            out.setdefault(name, set()).update(idx)
    return {name: sorted(v) for name, v in out.items() if v}


@register
@dataclass(frozen=True)
class NeMo(PermanentMitigation):
    """NeMo (Hintersdorf et al., NeurIPS 2024): localize memorization neurons in the cross-attention value layers and
    zero them in a copy of the model.

    Attributes:
        theta_min: the lowest z-score threshold the initial selection may reach (the reference uses 1).
        reference_kinds: prompt kinds of the subject whose activations give the reference statistics (non-memorized).
        screen: ``"copy"`` (paired copy rate over ``n_seeds`` at ``guidance`` with ``steps`` steps must be ≤
            ``max_copy_rate``) or ``"nemo-ssim"`` (cross-seed SSIM over ``n_seeds`` must be ≤ ``ssim_threshold``).
        refine: run the layer and single-neuron refinement.
        seed: first screening seed (screen seeds are ``seed … seed + n_seeds − 1``; keep them apart from evaluation).
    """

    name = "nemo"
    citation = ("Hintersdorf et al., Finding NeMo: Localizing Neurons Responsible for Memorization in Diffusion "
                "Models, NeurIPS 2024")
    knob = "theta_min"
    grid = (1.0, 2.0, 3.0, 4.0)

    theta_min: float = 1.0
    reference_kinds: tuple = ("nonplanted", "novel")
    screen: str = "copy"
    n_seeds: int = 8
    guidance: float = 7.5
    steps: int | None = None
    max_copy_rate: float = 0.0
    ssim_threshold: float = 0.428
    refine: bool = True
    seed: int = 10**6

    def __post_init__(self):
        if self.screen not in ("copy", "nemo-ssim"):
            raise ValueError(f"screen must be 'copy' or 'nemo-ssim', got {self.screen!r}")
        if not 0 < self.theta_min <= 5:
            raise ValueError(f"theta_min must be in (0, 5], got {self.theta_min!r}")

    def passes(self, subject: Subject, prompt: Prompt) -> Callable[[Neurons], bool]:
        """The memorization screen of ``prompt`` as a function of the blocked neurons."""
        seeds = list(range(self.seed, self.seed + self.n_seeds))
        if self.screen == "nemo-ssim":
            detector = CrossSeedSSIM()

            def ssim_ok(neurons: Neurons) -> bool:
                with blocked(subject.net, neurons):
                    return float(detector.score_prompts(subject, [prompt], seeds)[0]) <= self.ssim_threshold

            return ssim_ok

        def copy_ok(neurons: Neurons) -> bool:
            with blocked(subject.net, neurons):
                rate = copy_rates(subject, [prompt], seeds, guidance=self.guidance, steps=self.steps)[0]
            return float(rate) <= self.max_copy_rate

        return copy_ok

    def localize_all(self, subject: Subject, prompts: Sequence[Prompt]) -> list[Localization]:
        """One :class:`Localization` per prompt (the model is left unchanged)."""
        reference = [p for p in subject.prompts if p.kind in self.reference_kinds and p.id not in
                     {q.id for q in prompts}]
        stats = reference_stats(subject, reference)
        return [localize(subject, p, stats, self.passes(subject, p), theta_min=self.theta_min, refine=self.refine)
                for p in prompts]

    def apply(self, subject: Subject, prompts: Sequence[Prompt] = ()) -> Subject:
        """A subject whose copy has the union of the neurons found for ``prompts`` zeroed; ``info["nemo"]`` records
        them per prompt."""
        if not prompts:
            raise ValueError("NeMo localizes neurons from memorized prompts; pass the trigger prompts")
        if subject.net is None:
            raise ValueError(f"subject {subject.name!r} has no module to edit")
        found = self.localize_all(subject, prompts)
        neurons = merge([f.neurons for f in found])
        edited = subject.edited(lambda net: zero_neurons(net, neurons), name=f"{subject.name}+nemo")
        record = {"neurons": neurons, "count": sum(map(len, neurons.values())),
                  "per_prompt": [{"prompt": f.prompt, "neurons": f.neurons, "resolved": f.resolved,
                                  "theta": f.theta, "k": f.k, "tests": f.tests, "initial": f.initial}
                                 for f in found],
                  "mitigation": self.describe()}
        return replace(edited, info={**dict(subject.info), "nemo": record})

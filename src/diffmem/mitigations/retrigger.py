"""Re-trigger audit of a permanent mitigation ("Finding Dori", arXiv 2507.16880): can a small perturbation of the
prompt embedding bring a removed copy back?

For each prompt with a paired training image x_mem, the continuous text embedding e_p (the conditioning's float
tensor: ``emb`` of the world text encoder, the encoder states of diffusers) is perturbed by Δ and Δ is optimized with
Adam on the *edited* model:

* ``objective="dori"`` (the paper's probe): the diffusion loss on x_mem, ‖ε − ε_θ(√ᾱ_t x_mem + √(1 − ᾱ_t) ε, t,
  e_p + Δ)‖², fresh t and ε every step (a batch of ``batch`` draws, seeded);
* ``objective="x0"``: the distance of the first-step conditional x̂₀ (at fixed x_T draws) to x_mem.

``budget`` bounds ‖Δ‖₂ ≤ budget · ‖e_p‖₂ (projection after each step; None = unbounded, as in the paper). The copy
rate (nearest-neighbour ratio ≤ 1/3 *and* nearest training image = x_mem) is measured with e_p and with e_p + Δ on
the same seeds. Non-memorized prompts with their own training image are the control: a probe that turns them into
copies within the same budget proves little about the edit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.results import Result
from diffmem.similarity.criteria import COPY_RATIO, nn_ratio
from diffmem.subject import Prompt, Subject
from diffmem.training.trainer import step_generator
from diffmem.types import Cond, concat_cond

__all__ = ["copy_rates", "paired_copies", "RetriggerAudit", "retrigger_audit", "OBJECTIVES"]

OBJECTIVES = ("dori", "x0")


def paired_copies(x0: Tensor, references: Tensor, paired: Tensor | None) -> Tensor:
    """Bool [N]: sample i is a copy (ratio ≤ 1/3) of ``paired[i]`` (its own training image; any training image when
    ``paired`` is None)."""
    ratio, nearest = nn_ratio(x0.flatten(1).double(), references.flatten(1).double())
    copy = ratio <= COPY_RATIO
    if paired is None:
        return copy
    same = (references.flatten(1)[nearest].double() - paired.flatten(1).double()).abs().amax(1) == 0
    return copy & same


@torch.no_grad()
def copy_rates(subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int], *, guidance: float = 7.5,
               steps: int | None = None, cond: Cond | None = None) -> Tensor:
    """Per-prompt fraction [P] of ``seeds`` whose sample copies the prompt's paired image (any training image for a
    prompt without one). ``cond`` (one row per prompt) replaces the prompts' conditioning."""
    if subject.references is None:
        raise ValueError(f"subject {subject.name!r} has no references; copy rates need the training images")
    cond = subject.cond(prompts) if cond is None else cond
    n = len(seeds)
    index = torch.arange(len(prompts)).repeat_interleave(n)
    x0 = subject.sample(cond.select(index), list(seeds) * len(prompts), guidance=guidance, steps=steps).x_0
    refs = subject.references
    copies = []
    for i, p in enumerate(prompts):
        paired = None if p.x is None else p.x.to(refs.dtype).expand(n, *p.x.shape)
        copies.append(paired_copies(x0[i * n:(i + 1) * n], refs, paired).double().mean())
    return torch.stack(copies)


def _embedding(cond_c) -> tuple[Tensor, callable]:
    """(the float embedding tensor of a conditioning, ``e -> conditioning with e in its place``)."""
    if isinstance(cond_c, Mapping):
        key = "emb" if "emb" in cond_c else next((k for k, v in cond_c.items() if torch.is_tensor(v)
                                                  and v.is_floating_point()), None)
        if key is None:
            raise ValueError("the conditioning has no float embedding to perturb (class-conditional model?)")
        return cond_c[key], lambda e: {**cond_c, key: e}
    if torch.is_tensor(cond_c) and cond_c.is_floating_point():
        return cond_c, lambda e: e
    raise ValueError("the conditioning has no float embedding to perturb (class-conditional model?); the "
                     "re-trigger audit needs a text-conditional model")


def _concat(a: Cond, b: Cond) -> Cond:
    return Cond(concat_cond(a.c, b.c), None if a.null is None or b.null is None else concat_cond(a.null, b.null))


def _project(delta: Tensor, radius: float | None) -> Tensor:
    if radius is None:
        return delta
    norm = delta.norm()
    return delta if norm <= radius else delta * (radius / norm)


def _optimise(subject: Subject, prompt: Prompt, *, objective: str, steps: int, lr: float, budget: float | None,
              batch: int, seed: int) -> tuple[Tensor, float, float]:
    """(optimized embedding, objective before, objective after) for one prompt."""
    e, rebuild = _embedding(prompt.cond.c)
    e = e.detach()
    radius = None if budget is None else float(budget) * float(e.norm())
    delta = torch.zeros_like(e, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    den, x_mem = subject.denoiser, prompt.x.to(subject.dtype)
    table = den.schedule.alphas_cumprod.to(subject.dtype) if objective == "dori" else None
    t0 = subject.grid.timesteps[0]

    def loss_at(d: Tensor, step: int) -> Tensor:
        g = step_generator(seed, step)
        if objective == "dori":
            t = torch.randint(len(table), (batch,), generator=g)
            eps = torch.randn((batch, *x_mem.shape), generator=g).to(x_mem.dtype)
            ab = table[t].view(-1, *[1] * x_mem.ndim)
            x_t = ab.sqrt() * x_mem + (1 - ab).sqrt() * eps
        else:
            t = t0
            eps = None
            x_t = torch.randn((batch, *x_mem.shape), generator=g).to(x_mem.dtype) * subject.x_T_scale
        c = rebuild((e + d).expand(batch, *e.shape[1:]))
        if isinstance(c, Mapping):
            c = {k: (v.expand(batch, *v.shape[1:]) if torch.is_tensor(v) else v) for k, v in c.items()}
        pred = den(x_t, t, Cond(c, None), uncond=False)
        target = eps if objective == "dori" else x_mem.expand_as(pred.x0_hat)
        out = pred.eps if objective == "dori" else pred.x0_hat
        return (out - target).pow(2).flatten(1).sum(1).mean()

    eval_step = 10**9  # one fixed evaluation draw, apart from the optimization draws
    with torch.no_grad():
        before = float(loss_at(torch.zeros_like(e), eval_step))
    for s in range(steps):
        if radius == 0:
            break
        loss = loss_at(delta, s)
        (grad,) = torch.autograd.grad(loss, delta)
        delta.grad = grad
        opt.step()
        with torch.no_grad():
            delta.copy_(_project(delta, radius))
    with torch.no_grad():
        after = float(loss_at(delta.detach(), eval_step))
    return (e + delta.detach()), before, after


@dataclass(frozen=True)
class RetriggerAudit(Result):
    """The re-trigger audit of one model.

    Attributes:
        model: the audited subject's name; prompts, roles (``"trigger"``/``"control"``), kinds: one per prompt.
        copy_before, copy_after: per-prompt paired copy rate with e_p and with e_p + Δ (same seeds).
        loss_before, loss_after: the objective at a fixed evaluation draw; delta_rel: ‖Δ‖/‖e_p‖.
        params: objective, steps, lr, budget, batch, seeds, guidance, sampling steps.
    """

    model: str
    prompts: list
    roles: list
    kinds: list
    copy_before: list
    copy_after: list
    loss_before: list
    loss_after: list
    delta_rel: list
    params: dict

    def rate(self, role: str = "trigger", *, after: bool = True) -> float:
        """Mean copy rate of the prompts of ``role`` (NaN when there are none)."""
        rates = self.copy_after if after else self.copy_before
        v = [x for x, r in zip(rates, self.roles, strict=True) if r == role]
        return sum(v) / len(v) if v else float("nan")

    def summary(self) -> dict:
        return {"model": self.model, **{f"{r}_copy_{w}": self.rate(r, after=w == "after")
                                        for r in ("trigger", "control") for w in ("before", "after")},
                **self.params}


def retrigger_audit(subject: Subject, prompts: Sequence[Prompt], *, controls: Sequence[Prompt] = (),
                    objective: str = "dori", steps: int = 50, lr: float = 0.1, budget: float | None = None,
                    batch: int = 8, seeds: Sequence[int] = tuple(range(8)), guidance: float = 7.5,
                    sample_steps: int | None = None, seed: int = 0) -> RetriggerAudit:
    """Optimise an embedding perturbation per prompt on ``subject`` (the edited model) and measure how much of the
    copy rate comes back (module docstring); ``controls`` are non-memorized prompts with their training image."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    if budget is not None and budget < 0:
        raise ValueError(f"budget must be >= 0 or None, got {budget!r}")
    everything = [*prompts, *controls]
    missing = [p.id for p in everything if p.x is None]
    if missing:
        raise ValueError(f"prompt {missing[0]!r} has no paired training image; the audit needs one per prompt")
    for p in everything:
        _embedding(p.cond.c)  # refuse class conditions before any sampling
    roles = ["trigger"] * len(prompts) + ["control"] * len(controls)
    before = copy_rates(subject, everything, seeds, guidance=guidance, steps=sample_steps)
    rows, adversarial = [], None
    for i, p in enumerate(everything):
        e_adv, lb, la = _optimise(subject, p, objective=objective, steps=steps, lr=lr, budget=budget, batch=batch,
                                  seed=seed + i)
        e, rebuild = _embedding(p.cond.c)
        c = Cond(rebuild(e_adv), p.cond.null)
        adversarial = c if adversarial is None else _concat(adversarial, c)
        rows.append((lb, la, float((e_adv - e).norm() / e.norm().clamp_min(1e-30))))
    # one batch shaped like the "before" run, so a zero perturbation reproduces it bit for bit
    after = copy_rates(subject, everything, seeds, guidance=guidance, steps=sample_steps, cond=adversarial)
    params = {"objective": objective, "steps": steps, "lr": lr, "budget": budget, "batch": batch,
              "seeds": list(seeds), "guidance": guidance, "sample_steps": sample_steps or subject.steps,
              "seed": seed}
    return RetriggerAudit(subject.name, [p.id for p in everything], roles, [p.kind for p in everything],
                          [float(b) for b in before], [float(a) for a in after], [r[0] for r in rows],
                          [r[1] for r in rows], [r[2] for r in rows], params)

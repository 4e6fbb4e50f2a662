"""The recorded denoising trajectory and the recorder that fills it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffmem.results import Provenance, Result
from diffmem.schedules import sigma_from_alpha_bar
from diffmem.types import StepRecord

__all__ = ["Trajectory", "Recorder", "TENSOR_FIELDS"]

TENSOR_FIELDS = ("x_t", "eps_c", "eps_u", "eps", "x0_hat")


@dataclass(frozen=True)
class Trajectory(Result):
    """One sampling run: per recorded step j (original step index ``steps[j]``) the state entering the step and the
    predictions made there; plus x_T and the final x_0. Tensor fields are [S, B, ...] or ``None`` when not kept;
    ``eps_u`` is NaN at steps where it was not evaluated. ``w`` and ``d_t`` (‖ε_c − ε_u‖₂, NaN where ε_u was not
    evaluated) are [S, B] and always kept."""

    steps: Tensor
    t: Tensor
    alpha_bar: Tensor
    alpha_bar_next: Tensor
    w: Tensor
    d_t: Tensor
    x_T: Tensor
    x_0: Tensor
    provenance: Provenance
    x_t: Tensor | None = None
    eps_c: Tensor | None = None
    eps_u: Tensor | None = None
    eps: Tensor | None = None
    x0_hat: Tensor | None = None

    @property
    def sigma(self) -> Tensor:
        return sigma_from_alpha_bar(self.alpha_bar)

    @property
    def num_recorded(self) -> int:
        return len(self.steps)


@dataclass(frozen=True)
class Recorder:
    """Which tensors a run keeps, in which dtype and on which device, and how often.

    Args:
        keep: subset of ``TENSOR_FIELDS``; scalars (t, ᾱ, w, d_t) are always kept.
        every: keep steps i with i % every == 0, and always the last step.
        dtype: storage dtype (``None`` keeps the state's dtype; ``torch.float16`` halves memory).
        device: storage device (default CPU, so long GPU runs do not hold GPU memory).
    """

    keep: tuple[str, ...] = TENSOR_FIELDS
    every: int = 1
    dtype: torch.dtype | None = None
    device: str = "cpu"

    def __post_init__(self):
        unknown = [k for k in self.keep if k not in TENSOR_FIELDS]
        if unknown:
            raise ValueError(f"unknown recorder field {unknown[0]!r}; expected a subset of {TENSOR_FIELDS}")
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"recorder every must be a positive int, got {self.every!r}")

    def steps(self, num_steps: int) -> list[int]:
        return [i for i in range(num_steps) if i % self.every == 0 or i == num_steps - 1]

    def start(self, num_steps: int) -> _Recording:
        return _Recording(self, self.steps(num_steps))

    def to_dict(self) -> dict:
        return {"keep": list(self.keep), "every": self.every, "dtype": str(self.dtype), "device": self.device}


class _Recording:
    """Preallocated buffers for one run (no list-then-stack doubling of peak memory)."""

    def __init__(self, recorder: Recorder, steps: list[int]):
        self.rec, self.steps = recorder, steps
        self.slot = {i: j for j, i in enumerate(steps)}
        self.scalars: dict[str, list] = {"t": [], "alpha_bar": [], "alpha_bar_next": [], "w": [], "d_t": []}
        self.buffers: dict[str, Tensor] = {}

    def _store(self, name: str, j: int, value: Tensor | None, like: Tensor) -> None:
        if name not in self.buffers:
            dtype = self.rec.dtype or like.dtype
            shape = (len(self.steps), *like.shape)
            # only eps_u can be missing at a step (guidance off there); NaN marks those rows, the rest is
            # always written, so skip the fill pass
            make = torch.full if name == "eps_u" else (lambda shape, _, **kw: torch.empty(shape, **kw))
            self.buffers[name] = make(shape, float("nan"), dtype=dtype, device=self.rec.device)
        if value is not None:
            self.buffers[name][j].copy_(value)

    def add(self, r: StepRecord) -> None:
        j = self.slot.get(r.i)
        if j is None:
            return
        s = self.scalars
        s["t"].append(r.t), s["alpha_bar"].append(r.alpha_bar_t), s["alpha_bar_next"].append(r.alpha_bar_next)
        s["w"].append(r.w.detach().double().cpu())
        nan = torch.full_like(s["w"][-1], float("nan"))
        s["d_t"].append(nan if r.d_t is None else r.d_t.detach().double().cpu())
        values = {"x_t": r.x_t, "eps_c": r.pred.eps_c, "eps_u": r.pred.eps_u, "eps": r.pred.eps,
                  "x0_hat": r.pred.x0_hat}
        for name in self.rec.keep:
            self._store(name, j, values[name], r.x_t)

    def finish(self, x_T: Tensor, x_0: Tensor, provenance: Provenance) -> Trajectory:
        s = self.scalars
        f64 = torch.float64
        return Trajectory(
            steps=torch.tensor(self.steps, dtype=torch.int64), t=torch.tensor(s["t"], dtype=f64),
            alpha_bar=torch.tensor(s["alpha_bar"], dtype=f64),
            alpha_bar_next=torch.tensor(s["alpha_bar_next"], dtype=f64),
            w=torch.stack(s["w"]), d_t=torch.stack(s["d_t"]),
            x_T=x_T.detach().to(self.rec.device, copy=True), x_0=x_0.detach().to(self.rec.device),
            provenance=provenance, **self.buffers)

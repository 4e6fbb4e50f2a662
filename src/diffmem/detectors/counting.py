"""Cost measured, not declared: denoiser evaluations counted per kind, wall time and peak memory of a scoring call.

:class:`CountingDenoiser` wraps any denoiser and counts the *rows* (latents) of every ``model_output`` call in one of
three kinds, the convention every detector follows:

* **NFE**: a plain forward, one per latent (a CFG step on B prompts evaluates both branches: 2B);
* **JVP**: the input carries a ``torch.autograd.forward_ad`` tangent (a forward-mode derivative, Jeon et al.);
* **VJP**: autograd is recording and the input ``x_t`` or a tensor of the conditioning requires grad (a backward
  pass follows: gradients w.r.t. the state or the prompt embedding).

Each call falls in exactly one kind (JVP first, then VJP, else NFE). Derivatives taken with ``torch.func`` are not
recognized; detectors use ``forward_ad`` and ``requires_grad`` inputs.

:func:`measure` runs ``detector.score`` on the subject with its denoiser wrapped and returns the scores with a
:class:`Cost`. Peak memory is measured, never estimated:

* on CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the allocation at the start;
* on CPU (Linux), the process's resident high-water mark ``VmHWM`` of ``/proc/self/status`` after resetting it to
  the current RSS (writing ``5`` to ``/proc/self/clear_refs``), minus ``VmRSS`` at the start; where the reset is
  not allowed, a thread samples ``VmRSS`` every millisecond (it can miss spikes shorter than that).

So ``peak_mem_mb`` is the memory the call added at its peak. On CPU the allocator keeps freed pages, so a call that
reuses memory freed by an earlier one shows less: compare the largest over several calls. The reset is process-wide,
so measurements must not be nested.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffmem.denoiser import Denoiser
from diffmem.subject import Prompt, Subject

__all__ = ["CountingDenoiser", "Cost", "PeakMemory", "measure", "measure_call"]

_MB = 2.0**20


class CountingDenoiser(Denoiser):
    """A denoiser that counts the rows of every forward by kind (NFE, JVP, VJP) and otherwise is ``inner``.

    Example:
        >>> import torch
        >>> from diffmem.schedules import DiscreteSchedule
        >>> from diffmem.theory.closed_form import GaussianMixtureDenoiser
        >>> from diffmem.types import Cond
        >>> d = CountingDenoiser(GaussianMixtureDenoiser(torch.randn(3, 4), DiscreteSchedule.named("linear")))
        >>> _ = d(torch.randn(2, 4), 500, Cond(torch.tensor([0, 1]), torch.tensor([-1, -1])))
        >>> d.nfe, d.jvp, d.vjp
        (4, 0, 0)
    """

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.reset()

    def reset(self) -> None:
        self.nfe = self.jvp = self.vjp = self.calls = 0

    @property
    def schedule(self):
        return self.inner.schedule

    @property
    def prediction_type(self):
        return self.inner.prediction_type

    @property
    def name(self):
        return self.inner.name

    def __getattr__(self, attr: str):  # anything else a detector reads from the model (net, info, …)
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)

    def model_output(self, x_t: Tensor, t: Tensor, c: Any) -> Tensor:
        rows = int(x_t.shape[0])
        tensors = [x_t, *_tensors(c)]
        if any(torch.autograd.forward_ad.unpack_dual(v).tangent is not None for v in tensors):
            self.jvp += rows
        elif torch.is_grad_enabled() and any(v.requires_grad for v in tensors):
            self.vjp += rows
        else:
            self.nfe += rows
        self.calls += 1
        return self.inner.model_output(x_t, t, c)

    def describe(self) -> dict:
        return self.inner.describe()


def _tensors(c: Any, depth: int = 2) -> list[Tensor]:
    """The tensors of a conditioning (a tensor, a sequence or mapping of them, an object with tensor fields)."""
    if isinstance(c, Tensor):
        return [c]
    if depth == 0 or c is None:
        return []
    if isinstance(c, dict):
        items = c.values()
    elif isinstance(c, (list, tuple)):
        items = c
    else:
        items = vars(c).values() if hasattr(c, "__dict__") else ()
    return [t for v in items for t in _tensors(v, depth - 1)]


@dataclass(frozen=True)
class Cost:
    """What one scoring call cost, measured.

    Attributes:
        nfe, jvp, vjp: rows evaluated by plain forwards, forward-mode derivatives and reverse-mode passes.
        calls: ``model_output`` calls.
        seconds: wall time of the call.
        peak_mem_mb: memory the call added at its peak (MiB; see the module docstring).
        memory: how the peak was measured (``cuda``, ``vmhwm`` or ``rss-sampled``).
    """

    nfe: int
    jvp: int
    vjp: int
    calls: int
    seconds: float
    peak_mem_mb: float
    memory: str

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Cost:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _status_kb(key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


class PeakMemory:
    """Context manager: ``peak_mb`` = the memory added at the peak of the block (method in ``method``)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_mb, self.method = 0.0, ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base, self.method = torch.cuda.memory_allocated(self.device), "cuda"
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
            self._base, self.method = _status_kb("VmRSS") * 1024, "vmhwm"
        except OSError:
            self._base, self.method = _status_kb("VmRSS") * 1024, "rss-sampled"
            self._max, self._stop = self._base, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._max = max(self._max, _status_kb("VmRSS") * 1024)

    def __exit__(self, *exc) -> None:
        if self.method == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "vmhwm":
            peak = _status_kb("VmHWM") * 1024
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, _status_kb("VmRSS") * 1024)
        self.peak_mb = max(peak - self._base, 0) / _MB


def _device(subject: Subject) -> torch.device:
    p = next(subject.net.parameters(), None) if subject.net is not None else None
    return p.device if p is not None else torch.device("cpu")


def measure(detector, subject: Subject, prompts: Sequence[Prompt], seeds: Sequence[int]) -> tuple[np.ndarray, Cost]:
    """``detector.score(subject, prompts, seeds)`` with the denoiser counted: (scores [P], :class:`Cost`)."""
    scores, cost = measure_call(subject, lambda s: detector.score(s, prompts, seeds))
    return np.asarray(scores, dtype=np.float64), cost


def measure_call(subject: Subject, fn: Callable[[Subject], Any]) -> tuple[Any, Cost]:
    """``fn(subject)`` on the subject with its denoiser counted: (what ``fn`` returns, :class:`Cost`)."""
    counting = CountingDenoiser(subject.denoiser)
    counted = replace(subject, denoiser=counting)
    with PeakMemory(_device(subject)) as mem:
        start = time.perf_counter()
        out = fn(counted)
        seconds = time.perf_counter() - start
    return out, Cost(counting.nfe, counting.jvp, counting.vjp, counting.calls, seconds, mem.peak_mb, mem.method)

"""Module hooks as context managers that always restore the model: attention processors and forward hooks.

Both classes below are also :class:`~diffmem.sampling.hooks.Hook` s: passed in ``sample(..., hooks=[...])`` they
install in ``on_start`` and are removed in ``close``, which the loop calls even after an exception. They depend
only on what is stable across diffusers versions (``Attention`` module fields, ``set_processor``,
``register_forward_hook``), never on a pipeline's ``__call__`` (design lesson 3).

Example (``sd`` a :class:`~diffmem.adapters.diffusers_sd.StableDiffusionAdapter`):
    with AttentionHooks(sd.model, record="cross") as att:
        traj = sd.generate(sd.prompts(["a cat"]), [0], 20)
    p = att.stacked(att.recorded[0])    # [calls, 2B, heads, K]: mean over queries, rows [ε_u; ε_c]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from diffmem.sampling.hooks import Hook

__all__ = ["AttentionHooks", "ForwardHooks", "mean_over_queries"]


def mean_over_queries(probs: Tensor) -> Tensor:
    """[batch, heads, Q, K] -> [batch, heads, K]: attention each key receives, averaged over query positions."""
    return probs.mean(dim=2)


def _select(layers: dict, record) -> list[str]:
    from diffmem.adapters.attention import is_cross_attention

    if record is None:
        return []
    if record in ("cross", "self", "all"):
        return [n for n, m in layers.items() if record == "all" or is_cross_attention(m) == (record == "cross")]
    if callable(record):
        return [n for n, m in layers.items() if record(n, m)]
    if isinstance(record, str):
        raise ValueError(f"unknown attention selection {record!r}; expected 'cross', 'self', 'all', layer names "
                         "or a predicate")
    return list(record)


def _check_names(names: Iterable[str], layers: dict, what: str) -> None:
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise ValueError(f"{what}: no attention layer named {unknown[0]!r}; available: {sorted(layers)[:6]} "
                         f"({len(layers)} in all)")


class _Installed(Hook):
    """Install/remove lifetime shared by the hooks below: a context manager and a sampling Hook."""

    _active = False

    def install(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def remove(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __enter__(self):
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def on_start(self, x_T, cond, grid) -> None:
        self.install()

    def close(self) -> None:
        self.remove()


class AttentionHooks(_Installed):
    """Swap the processors of selected diffusers attention layers for :class:`EditedAttnProcessor` s.

    Args:
        model: a UNet or transformer (``adapter.model``).
        record: layers whose probabilities to keep: ``"cross"``, ``"self"``, ``"all"``, names, a predicate
            ``(name, module) -> bool``, or ``None``.
        reduce: applied to each probability tensor [batch, heads, Q, K] before keeping it (default: mean over
            queries -> [batch, heads, K]); ``None`` keeps the full maps.
        head_masks, key_masks, logit_edits: per layer name (see :mod:`diffmem.adapters.attention`).

    After the run, ``probs[name]`` is a list with one tensor per forward call (one call per sampling step), on the
    CPU in float32.
    """

    def __init__(self, model: torch.nn.Module, *, record=None, reduce: Callable | None = mean_over_queries,
                 head_masks: Mapping[str, Tensor] | None = None, key_masks: Mapping[str, Tensor] | None = None,
                 logit_edits: Mapping[str, Callable] | None = None):
        from diffmem.adapters.attention import attention_layers

        self.model, self.reduce = model, reduce
        self.layers = attention_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no diffusers Attention layers")
        self.head_masks, self.key_masks = dict(head_masks or {}), dict(key_masks or {})
        self.logit_edits = dict(logit_edits or {})
        self.recorded = _select(self.layers, record)
        for what, names in (("record", self.recorded), ("head_masks", self.head_masks),
                            ("key_masks", self.key_masks), ("logit_edits", self.logit_edits)):
            _check_names(names, self.layers, what)
        self.probs: dict[str, list[Tensor]] = {n: [] for n in self.recorded}
        self._originals: dict[str, object] = {}

    @property
    def hooked(self) -> list[str]:
        """Names of the layers whose processor is swapped."""
        edited = set(self.recorded) | set(self.head_masks) | set(self.key_masks) | set(self.logit_edits)
        return [n for n in self.layers if n in edited]

    def _keep(self, name: str, probs: Tensor) -> None:
        kept = probs if self.reduce is None else self.reduce(probs)
        self.probs[name].append(kept.detach().to("cpu", torch.float32, copy=True))

    def install(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        from diffmem.adapters.attention import AttentionEdit, EditedAttnProcessor

        if self._active:
            raise RuntimeError("these AttentionHooks are already installed")
        names = self.hooked
        for n in names:  # validate every layer before touching any, so a failure leaves the model as it was
            proc = self.layers[n].processor
            if type(proc) is not AttnProcessor2_0:
                hint = ("it is already hooked; combine the edits into one AttentionHooks"
                        if isinstance(proc, EditedAttnProcessor) else
                        "diffmem reproduces only AttnProcessor2_0 (call model.set_attn_processor(AttnProcessor2_0()))")
                raise ValueError(f"attention layer {n!r} uses {type(proc).__name__}; {hint}")
            mask, heads = self.head_masks.get(n), self.layers[n].heads
            if mask is not None and (mask.ndim not in (1, 2) or mask.shape[-1] != heads):
                raise ValueError(f"head_mask for layer {n!r} has shape {tuple(mask.shape)}; expected ({heads},) or "
                                 f"(batch, {heads})")
        for n in names:
            edit = AttentionEdit(self.head_masks.get(n), self.key_masks.get(n), self.logit_edits.get(n),
                                 self._keep if n in self.probs else None)
            self._originals[n] = self.layers[n].processor
            self.layers[n].set_processor(EditedAttnProcessor(n, edit, self._originals[n]))
        self._active = True

    def remove(self) -> None:
        for n, proc in self._originals.items():
            self.layers[n].set_processor(proc)
        self._originals.clear()
        self._active = False

    def stacked(self, name: str) -> Tensor:
        """The kept probabilities of layer ``name`` stacked over calls: [calls, batch, ...]."""
        if name not in self.probs:
            raise ValueError(f"layer {name!r} was not recorded; recorded: {self.recorded[:6]}")
        if not self.probs[name]:
            raise ValueError(f"layer {name!r} recorded no calls yet")
        return torch.stack(self.probs[name])


class ForwardHooks(_Installed):
    """Torch forward hooks on named submodules, removed on exit (e.g. NeMo's value-projection neurons).

    Args:
        model: the module whose submodules are addressed by qualified name (``model.get_submodule``).
        hooks: name -> ``fn(module, inputs, output)``; returning a tensor replaces the output, ``None`` keeps it.

    Use :meth:`capture` to keep the outputs instead.
    """

    def __init__(self, model: torch.nn.Module, hooks: Mapping[str, Callable]):
        self.model, self.fns = model, dict(hooks)
        self.modules = {}
        for name in self.fns:
            try:
                self.modules[name] = model.get_submodule(name)
            except AttributeError as e:
                raise ValueError(f"{type(model).__name__} has no submodule {name!r}") from e
        self.outputs: dict[str, list[Tensor]] = {}
        self._handles: list = []

    @classmethod
    def capture(cls, model: torch.nn.Module, names: Iterable[str], fn: Callable[[Tensor], Tensor] | None = None):
        """Hooks that keep ``fn(output)`` (default: a detached CPU copy) of each named module, one entry per call,
        in ``outputs[name]``."""
        fn = fn or (lambda out: out.detach().to("cpu", copy=True))
        outputs: dict[str, list[Tensor]] = {n: [] for n in names}
        hooks = cls(model, {n: (lambda module, inputs, out, n=n: outputs[n].append(fn(out))) for n in outputs})
        hooks.outputs = outputs
        return hooks

    def install(self) -> None:
        if self._active:
            raise RuntimeError("these ForwardHooks are already installed")
        self._handles = [self.modules[n].register_forward_hook(fn) for n, fn in self.fns.items()]
        self._active = True

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._active = False

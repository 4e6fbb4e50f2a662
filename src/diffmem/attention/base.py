"""The attention interface both backends implement: layers and heads, scoped edits, physical head removal.

:class:`AttentionModel` enumerates a model's attention layers (:class:`Layer`: name, kind, number of heads) and
installs :class:`~diffmem.attention.edit.AttentionEdit` s through :class:`AttentionHooks`, a context manager and a
sampling :class:`~diffmem.sampling.hooks.Hook` that always restores the model (also after an exception). Backends:
:class:`~diffmem.attention.world.WorldAttention` (diffmem's DiT, :mod:`diffmem.nets.attention`) and
:class:`~diffmem.attention.diffusers.DiffusersAttention` (diffusers ``Attention`` processors).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from diffmem.attention.edit import AttentionEdit
from diffmem.sampling.hooks import Hook

__all__ = ["Head", "Layer", "KINDS", "BACKENDS", "attention", "AttentionModel", "AttentionHooks", "ForwardHooks",
           "mean_over_queries", "heads_by_layer", "kept_channels", "sliced_linear"]

KINDS = ("self", "cross", "text")  # image-token self-attention, cross-attention to a context, text-encoder attention


@dataclass(frozen=True, order=True)
class Head:
    """One attention head: ``layer`` is the qualified name of its layer, ``index`` its head number."""

    layer: str
    index: int


@dataclass(frozen=True)
class Layer:
    """One attention layer: qualified ``name``, ``kind`` (one of :data:`KINDS`) and number of ``heads``."""

    name: str
    kind: str
    heads: int


def mean_over_queries(probs: Tensor) -> Tensor:
    """[batch, heads, Q, K] -> [batch, heads, K]: attention each key receives, averaged over query positions."""
    return probs.mean(dim=2)


def heads_by_layer(counts: Mapping[str, int], heads: Iterable[Head]) -> dict[str, set[int]]:
    """Head indices per layer name, checked against ``counts`` (heads per layer)."""
    grouped: dict[str, set[int]] = {}
    for head in heads:
        if head.layer not in counts:
            raise ValueError(f"unknown attention layer {head.layer!r}; known: {sorted(counts)}")
        if not 0 <= head.index < counts[head.layer]:
            raise ValueError(f"head {head.index} out of range for layer {head.layer!r} "
                             f"with {counts[head.layer]} heads")
        grouped.setdefault(head.layer, set()).add(head.index)
    return grouped


def kept_channels(num_heads: int, head_dim: int, removed: set[int]) -> tuple[Tensor, Tensor]:
    """(kept head indices, their q/k/v channels): kept head h owns channels h·d … h·d+d−1, in head order."""
    keep = torch.tensor([h for h in range(num_heads) if h not in removed], dtype=torch.long)
    return keep, (keep[:, None] * head_dim + torch.arange(head_dim)).reshape(-1)


def sliced_linear(layer: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    """A new Linear keeping output ``rows`` and input ``cols`` of ``layer`` (weights copied, bias sliced by rows)."""
    weight = layer.weight.detach()
    weight = weight if rows is None else weight[rows]
    weight = weight if cols is None else weight[:, cols]
    bias = None if layer.bias is None else (layer.bias.detach() if rows is None else layer.bias.detach()[rows])
    with warnings.catch_warnings():  # a layer left with no heads has zero-element weights; init is skipped anyway
        warnings.simplefilter("ignore", UserWarning)
        new = nn.utils.skip_init(nn.Linear, weight.shape[1], weight.shape[0], bias=bias is not None,
                                 device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


class AttentionModel:
    """The attention layers of one model, behind one surface for every backend.

    Backends implement ``_find`` (layer modules and kinds), ``_install``/``_uninstall`` (put an edit in a layer and
    take it out) and ``_remove`` (delete heads' weights). Everything else is shared.

    Example (``net`` a world's ``WorldNet`` or a diffusers transformer):
        att = attention(net)
        with att.hooks(record="cross") as rec:
            ...                                   # sample; rec.stacked(name) [calls, B, H, K]
    """

    backend = "abstract"
    persistent_gates = False  # whether heads can be removed by a zero gate kept in the state dict

    @classmethod
    def handles(cls, model: nn.Module) -> bool:  # pragma: no cover - interface
        """Whether ``model`` holds attention layers of this backend."""
        raise NotImplementedError

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules, kinds = self._find(model)
        if not self.modules:
            raise ValueError(f"{type(model).__name__} has no attention layers diffmem knows")
        self.kinds = kinds

    # --- backend -------------------------------------------------------------------------------------------------

    def _find(self, model: nn.Module) -> tuple[dict[str, nn.Module], dict[str, str]]:  # pragma: no cover
        raise NotImplementedError

    def _heads(self, module: nn.Module) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def _install(self, name: str, edit: AttentionEdit) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _check_installable(self, name: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _uninstall(self, name: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _remove(self, name: str, removed: set[int], physically: bool) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    # --- shared --------------------------------------------------------------------------------------------------

    @property
    def layers(self) -> dict[str, Layer]:
        """Every attention layer by qualified name, in module order."""
        return {n: Layer(n, self.kinds[n], self._heads(m)) for n, m in self.modules.items()}

    def select(self, which="all") -> list[str]:
        """Layer names for ``which``: a kind (``"self"``, ``"cross"``, ``"text"``), ``"all"``, a list of names or a
        predicate ``(name, module) -> bool``."""
        if callable(which):
            return [n for n, m in self.modules.items() if which(n, m)]
        if isinstance(which, str):
            if which == "all":
                return list(self.modules)
            if which not in KINDS:
                raise ValueError(f"unknown attention selection {which!r}; expected 'cross', 'self', 'text', 'all', "
                                 "layer names or a predicate")
            return [n for n in self.modules if self.kinds[n] == which]
        names = list(which)
        self.check_names(names, "layers")
        return names

    def check_names(self, names: Iterable[str], what: str) -> None:
        unknown = [n for n in names if n not in self.modules]
        if unknown:
            raise ValueError(f"{what}: no attention layer named {unknown[0]!r}; available: "
                             f"{sorted(self.modules)[:6]} ({len(self.modules)} in all)")

    def head_counts(self, which="self") -> dict[str, int]:
        """Heads per selected layer (H_l); by default the image self-attention heads Ye et al. (2025) prune."""
        counts = {n: self._heads(self.modules[n]) for n in self.select(which)}
        if not counts:
            raise ValueError(f"{type(self.model).__name__} has no {which!r} attention layers")
        return counts

    def heads(self, which="self") -> list[Head]:
        """Every head of the selected layers, in layer then head order."""
        return [Head(n, h) for n, count in self.head_counts(which).items() for h in range(count)]

    def gates(self, which="self", *, requires_grad: bool = True) -> dict[str, Tensor]:
        """Gate vectors ξ = 1 [H_l] in the model's dtype, for ``hooks(head_masks=...)`` (autograd gives ∂L/∂ξ_h)."""
        p = next(self.model.parameters())
        return {n: torch.ones(h, dtype=p.dtype, device=p.device).requires_grad_(requires_grad)
                for n, h in self.head_counts(which).items()}

    def hooks(self, **kwargs) -> AttentionHooks:
        """:class:`AttentionHooks` on this model (``record``, ``reduce``, ``head_masks``, ``key_masks``,
        ``logit_edits``)."""
        return AttentionHooks(self, **kwargs)

    @torch.no_grad()
    def remove_heads(self, heads: Iterable[Head], *, physically: bool = True) -> None:
        """Remove ``heads`` in place. Indices refer to the layers before this call; the kept heads are renumbered
        0..H'−1 in order; a layer may lose every head (its output is then the output projection's bias).

        ``physically=True`` deletes the heads' q/k/v rows and output-projection columns; ``False`` sets a
        persistent zero gate instead (world DiT only: the state dict keeps its shapes). Both give the same outputs.
        """
        for name, idx in heads_by_layer(self.head_counts("all"), heads).items():
            self._remove(name, idx, physically)


BACKENDS: list[type[AttentionModel]] = []  # registered by the backend modules, which the package imports


def attention(model) -> AttentionModel:
    """The attention interface of ``model``: a world ``WorldNet``/``DiT``, a diffusers UNet or transformer, a
    :class:`~diffmem.subject.Subject` (its ``net``), or an :class:`AttentionModel` (returned as is)."""
    if isinstance(model, AttentionModel):
        return model
    if not isinstance(model, nn.Module) and isinstance(getattr(model, "net", None), nn.Module):
        model = model.net
    for backend in BACKENDS:
        if backend.handles(model):
            return backend(model)
    raise ValueError(f"{type(model).__name__} has no attention layers diffmem knows (world DiT or diffusers)")


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
    """Record and edit attention in selected layers while installed (``with`` block or ``sample(hooks=[...])``).

    Args:
        model: an :class:`AttentionModel` or a module (wrapped by :func:`diffmem.attention.attention`).
        record: layers whose probabilities to keep: ``"cross"``, ``"self"``, ``"text"``, ``"all"``, names, a
            predicate ``(name, module) -> bool``, or ``None``.
        reduce: applied to each probability tensor [batch, heads, Q, K] before keeping it (default: mean over
            queries -> [batch, heads, K]); ``None`` keeps the full maps.
        head_masks, key_masks, logit_edits: per layer name (see :mod:`diffmem.attention.edit`).

    After the run, ``probs[name]`` is a list with one tensor per forward call (one call per sampling step), on the
    CPU in float32.
    """

    def __init__(self, model, *, record=None, reduce: Callable | None = mean_over_queries,
                 head_masks: Mapping[str, Tensor] | None = None, key_masks: Mapping[str, Tensor] | None = None,
                 logit_edits: Mapping[str, Callable] | None = None):
        model = attention(model)
        self.attention, self.reduce = model, reduce
        self.head_masks, self.key_masks = dict(head_masks or {}), dict(key_masks or {})
        self.logit_edits = dict(logit_edits or {})
        self.recorded = [] if record is None else model.select(record)
        for what, names in (("head_masks", self.head_masks), ("key_masks", self.key_masks),
                            ("logit_edits", self.logit_edits)):
            model.check_names(names, what)
        self.probs: dict[str, list[Tensor]] = {n: [] for n in self.recorded}
        self._installed: list[str] = []

    @property
    def hooked(self) -> list[str]:
        """Names of the layers that carry an edit while installed."""
        edited = set(self.recorded) | set(self.head_masks) | set(self.key_masks) | set(self.logit_edits)
        return [n for n in self.attention.modules if n in edited]

    def _keep(self, name: str, probs: Tensor) -> None:
        kept = probs if self.reduce is None else self.reduce(probs)
        self.probs[name].append(kept.detach().to("cpu", torch.float32, copy=True))

    def install(self) -> None:
        if self._active:
            raise RuntimeError("these AttentionHooks are already installed")
        att, names = self.attention, self.hooked
        for n in names:  # validate every layer before touching any, so a failure leaves the model as it was
            att._check_installable(n)
            mask, heads = self.head_masks.get(n), att._heads(att.modules[n])
            if mask is not None and (mask.ndim not in (1, 2) or mask.shape[-1] != heads):
                raise ValueError(f"head_mask for layer {n!r} has shape {tuple(mask.shape)}; expected ({heads},) or "
                                 f"(batch, {heads})")
        try:
            for n in names:
                att._install(n, AttentionEdit(n, self.head_masks.get(n), self.key_masks.get(n),
                                              self.logit_edits.get(n), self._keep if n in self.probs else None))
                self._installed.append(n)
        except BaseException:
            self.remove()
            raise
        self._active = True

    def remove(self) -> None:
        for n in self._installed:
            self.attention._uninstall(n)
        self._installed = []
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

    def __init__(self, model: nn.Module, hooks: Mapping[str, Callable]):
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
    def capture(cls, model: nn.Module, names: Iterable[str], fn: Callable[[Tensor], Tensor] | None = None):
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

"""Resumable training state in one safetensors file, written atomically (never pickled).

Keys: ``net.<name>`` (live weights), ``ema.<name>`` (averaged weights), ``opt.<param index>.<state key>`` (AdamW
moments and step counts) and ``step`` (completed steps). A kill during the write leaves the previous file intact.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from diffmem.io import read_arrays, write_arrays
from diffmem.training.ema import EMA

__all__ = ["save_state", "load_state", "save_weights", "load_weights"]


def save_state(path: str | Path, *, step: int, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer,
               log: dict[str, torch.Tensor] | None = None) -> Path:
    """Everything a resume needs, plus ``log`` (``log.<name>`` arrays: the loss log so far)."""
    arrays = {f"net.{k}": v for k, v in net.state_dict().items()}
    arrays |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        arrays |= {f"opt.{i}.{k}": torch.as_tensor(v) for k, v in state.items()}
    arrays |= {f"log.{k}": v for k, v in (log or {}).items()}
    arrays["step"] = torch.tensor(step, dtype=torch.int64)
    return write_arrays(path, arrays)


def _section(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def load_state(path: str | Path, *, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer,
               log: dict | None = None) -> int:
    """Restore ``net``, ``ema`` and ``opt`` in place (and fill ``log`` with the saved ``log.*`` arrays); returns the
    number of completed steps."""
    arrays = read_arrays(path)
    if "step" not in arrays:
        raise ValueError(f"{path} is not a training state (no 'step'); delete it to start over")
    _load_into(net, _section(arrays, "net."), path)
    ema.load_state_dict(_section(arrays, "ema."))
    if log is not None:
        log.update(_section(arrays, "log."))
    state: dict[int, dict] = {}
    for k, v in _section(arrays, "opt.").items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"]})
    return int(arrays["step"])


def save_weights(path: str | Path, net: nn.Module) -> Path:
    """The sampling weights alone (what a finished world ships)."""
    return write_arrays(path, dict(net.state_dict()))


def load_weights(path: str | Path, net: nn.Module) -> nn.Module:
    """``net`` with the weights at ``path``; a missing, truncated or foreign-shaped file is a one-line error."""
    _load_into(net, read_arrays(path), path)
    return net


def _load_into(net: nn.Module, state: dict, path) -> None:
    want = net.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or extra:
        raise ValueError(f"{path} does not hold this network's weights (missing {missing[:3]}, unexpected "
                         f"{extra[:3]}); point at the checkpoint made for this model")
    bad = [k for k in want if tuple(want[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ValueError(f"{path} was made for a network of another shape ({k}: {tuple(state[k].shape)} saved, "
                         f"{tuple(want[k].shape)} here); point at the checkpoint made for this model")
    net.load_state_dict(state)

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


def save_state(path: str | Path, *, step: int, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer) -> Path:
    arrays = {f"net.{k}": v for k, v in net.state_dict().items()}
    arrays |= {f"ema.{k}": v for k, v in ema.state_dict().items()}
    for i, state in opt.state_dict()["state"].items():
        arrays |= {f"opt.{i}.{k}": torch.as_tensor(v) for k, v in state.items()}
    arrays["step"] = torch.tensor(step, dtype=torch.int64)
    return write_arrays(path, arrays)


def _section(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def load_state(path: str | Path, *, net: nn.Module, ema: EMA, opt: torch.optim.Optimizer) -> int:
    """Restore ``net``, ``ema`` and ``opt`` in place; returns the number of completed steps."""
    arrays = read_arrays(path)
    net.load_state_dict(_section(arrays, "net."))
    ema.load_state_dict(_section(arrays, "ema."))
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
    net.load_state_dict(read_arrays(path))
    return net

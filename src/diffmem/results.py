"""Results are data: frozen dataclasses saved as JSON (scalars, provenance) plus safetensors (arrays).

``save`` writes the arrays first and the JSON last, both atomically, so a result whose JSON exists is complete.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffmem.io import read_arrays, read_json, write_arrays, write_json
from diffmem.version import __version__

__all__ = ["Result", "Record", "Provenance", "package_version", "to_frame"]


def package_version() -> str:
    return __version__


def _flat(cls) -> bool:
    """A :class:`Record`: saved in its own flat JSON form (``to_dict() -> dict``, ``from_dict(dict)``)."""
    return issubclass(cls, Record)


def _to_tree(obj: Any, arrays: dict, prefix: str) -> Any:
    if isinstance(obj, np.ndarray):
        obj = torch.from_numpy(obj)
    if isinstance(obj, torch.Tensor):
        arrays[prefix] = obj
        return {"__array__": prefix}
    if dataclasses.is_dataclass(obj) and _flat(type(obj)):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_tree(getattr(obj, f.name), arrays, f"{prefix}.{f.name}".lstrip("."))
                for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _to_tree(v, arrays, f"{prefix}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_tree(v, arrays, f"{prefix}.{i}") for i, v in enumerate(obj)]
    return obj


def _dataclass_in(tp) -> type | None:
    """The dataclass named by a field annotation (``X`` or ``X | None``), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)


def nulls_to_nan(obj: Any) -> Any:
    """Nulls inside numeric lists and dicts back to NaN (strict JSON writes a non-finite float as null), for
    records whose fields hold only numbers and strings."""
    if obj is None:
        return math.nan
    if isinstance(obj, dict):
        return {k: nulls_to_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nulls_to_nan(v) for v in obj]
    return obj


def _from_tree(tree: Any, arrays: dict, tp=None) -> Any:
    if tree is None and tp is float:  # strict JSON writes a non-finite float as null (io.strict_json)
        return math.nan
    if isinstance(tree, dict) and set(tree) == {"__array__"}:
        return arrays[tree["__array__"]]
    cls = _dataclass_in(tp) if isinstance(tree, dict) else None
    if cls is not None and _flat(cls):
        return cls.from_dict(tree)
    if cls is not None:
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _from_tree(tree[f.name], arrays, hints.get(f.name))
                      for f in dataclasses.fields(cls) if f.name in tree})
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tree, dict):
        value = args[1] if origin is dict and len(args) == 2 else None
        return {k: _from_tree(v, arrays, value) for k, v in tree.items()}
    if isinstance(tree, list):
        out = [_from_tree(v, arrays, args[0] if origin in (list, tuple) and args else None) for v in tree]
        return tuple(out) if origin is tuple else out
    return tree


class Result:
    """Mixin for frozen result dataclasses: ``to_dict``/``from_dict`` and ``save``/``load``."""

    def to_dict(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(JSON-able tree with array placeholders, named arrays)."""
        arrays: dict[str, torch.Tensor] = {}
        return _to_tree(self, arrays, ""), arrays

    @classmethod
    def from_dict(cls, tree: dict, arrays: dict[str, torch.Tensor] | None = None):
        return _from_tree(tree, arrays or {}, cls)

    def save(self, directory: str | Path, name: str | None = None) -> Path:
        """Write ``name.safetensors`` then ``name.json`` into ``directory``; returns the JSON path."""
        name = name or type(self).__name__.lower()
        tree, arrays = self.to_dict()
        tree = {"type": type(self).__name__, "data": tree}
        directory = Path(directory)
        if arrays:
            write_arrays(directory / f"{name}.safetensors", arrays)
        return write_json(directory / f"{name}.json", tree)

    def to_frame(self):
        """The result's rows as a pandas DataFrame (see :func:`to_frame`)."""
        return to_frame(self)

    @classmethod
    def load(cls, directory: str | Path, name: str | None = None):
        name = name or cls.__name__.lower()
        directory = Path(directory)
        tree = read_json(directory / f"{name}.json")
        if tree.get("type") != cls.__name__:
            raise ValueError(f"{directory / name}.json holds a {tree.get('type')!r}, not a {cls.__name__}")
        path = directory / f"{name}.safetensors"
        return cls.from_dict(tree["data"], read_arrays(path) if path.exists() else {})


class Record:
    """Mixin for frozen dataclasses saved as one flat JSON object (a ``summary.json``): ``to_dict``/``from_dict``.

    Field names are the JSON keys, in field order; tuples become lists and come back as tuples; nested records and
    dataclasses are rebuilt from the field annotations. Keys a record does not know are ignored by ``from_dict``
    (a ``summary.json`` also carries provenance)."""

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_frame(self):
        """The record's rows as a pandas DataFrame (see :func:`to_frame`)."""
        return to_frame(self)

    @classmethod
    def from_dict(cls, d: dict):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: _from_tree(d[f.name], {}, hints.get(f.name)) for f in dataclasses.fields(cls)
                      if f.name in d})


def _scalars(obj: Any, prefix: str = "") -> dict:
    """The scalar fields of a dataclass or dict, nested dicts flattened to ``a.b`` keys (arrays of more than one
    value and lists left out: a frame cell holds one value)."""
    items = ({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj)
             else obj)
    out = {}
    for k, v in items.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, dict) or (dataclasses.is_dataclass(v) and not isinstance(v, type)):
            out.update(_scalars(v, f"{prefix}{k}."))
        elif v is None or isinstance(v, (str, int, float, bool)):
            out[f"{prefix}{k}"] = v
    return out


def _rows(obj: Any) -> list[dict]:
    """One dict per row: the first field holding a list of records (a result's per-prompt or per-run rows), else
    the object's own scalars as one row."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, (list, tuple)) and v and all(dataclasses.is_dataclass(r) or isinstance(r, dict) for r in v):
            return [_scalars(r) for r in v]
    return [_scalars(obj)]


def to_frame(obj: Any):
    """A saved-result dataclass as a pandas DataFrame: one row per record of its first list of records (e.g. one per
    prompt), columns its scalar fields with nested dicts flattened (``severity.ssim``). pandas is not a dependency
    of diffmem: install it to use this."""
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError("to_frame needs pandas, which diffmem does not depend on: pip install pandas") from err
    return pd.DataFrame(_rows(obj))


def _plain(obj: Any) -> Any:
    if isinstance(obj, Record):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Provenance(Result):
    """How a result was made: enough to reproduce it (model, sampler, grid, guidance, seeds, package version)."""

    model: dict
    solver: dict
    grid: dict
    guidance: dict
    seeds: list[int] | None = None
    interventions: list[dict] = field(default_factory=list)
    package: str = field(default_factory=package_version)
    extra: dict = field(default_factory=dict)

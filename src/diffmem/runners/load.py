"""Load any saved diffmem result by the type recorded in its JSON file."""

from __future__ import annotations

import importlib
from pathlib import Path

from diffmem.io import read_json

__all__ = ["RESULT_TYPES", "load_result"]

# type name written by Result.save -> module defining it
RESULT_TYPES = {
    "KimResult": "diffmem.analyses.kim", "DemoResult": "diffmem.runners.demo",
    "Trajectory": "diffmem.sampling.trajectory", "WorldReport": "diffmem.worlds.report",
    "TheoryResult": "diffmem.theory.lab", "PruneResult": "diffmem.mitigations.pruning",
    "QualityResult": "diffmem.evaluation.quality", "AggregateResult": "diffmem.evaluation.aggregations",
    "DuplicateGroups": "diffmem.similarity.duplicates", "MetricProvenance": "diffmem.evaluation.provenance",
    "Provenance": "diffmem.results",
}


def load_result(path: str | Path):
    """The typed result saved at ``path``: a ``NAME.json`` file (with its ``NAME.safetensors``) or a folder holding
    exactly one result JSON."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in sorted(path.glob("*.json")) if isinstance(t := read_json(p), dict) and "type" in t
                 and "data" in t]
        if len(found) != 1:
            names = [p.name for p in found]
            raise ValueError(f"{str(path)!r} holds {len(found)} result files {names}; give one NAME.json")
        path = found[0]
    if path.suffix != ".json" or not path.is_file():
        raise ValueError(f"{str(path)!r} is not a result JSON file; give NAME.json or its folder")
    kind = read_json(path).get("type")
    if kind not in RESULT_TYPES:
        raise ValueError(f"{str(path)!r} holds a {kind!r}; load_result knows {sorted(RESULT_TYPES)}")
    cls = getattr(importlib.import_module(RESULT_TYPES[kind]), kind)
    return cls.load(path.parent, path.stem)

"""The world registry: stable names → data builder and default model/training recipe (names reappear in results).

The defaults are what ``diffmem train WORLD`` runs; their memorization is measured by ``diffmem world-report``
(README, "Embedded worlds"): digits-t2i trains in ≤ 10 min on 2 CPU cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diffmem.training.config import TrainConfig
from diffmem.worlds.bench import PLAIN_MOSAICS, build_digits_bench
from diffmem.worlds.config import ModelConfig, RunConfig, WorldSpec
from diffmem.worlds.custom import build_custom
from diffmem.worlds.data import WorldData
from diffmem.worlds.digits import DIT_SUBSET, build_digits_dit, build_digits_t2i

__all__ = ["WorldRecipe", "WORLDS", "BENCH_FIELDS", "default_config", "build_data"]

# digits-bench: 10 mosaics per rung and regime, ladder up to m = 128, 10 template groups of 32, 4,000 plain mosaics,
# 200 prompts per negative subtype (600 negatives).
BENCH_FIELDS = {"planted": 10, "duplicates": 128, "templates": 10, "template_duplicates": 32,
                "subset": PLAIN_MOSAICS, "prompts_per_kind": 200}


@dataclass(frozen=True)
class WorldRecipe:
    build: Callable[[WorldSpec], WorldData]
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    help: str = ""


WORLDS: dict[str, WorldRecipe] = {
    "digits-t2i": WorldRecipe(build_digits_t2i, TrainConfig(steps=3000), help="text-to-image digits with K=20 "
                              "planted image-caption pairs duplicated 100x (the embedded default)"),
    "digits-dit": WorldRecipe(build_digits_dit, TrainConfig(steps=4000), ModelConfig(heads=6),
                              help="class-conditional DiT on a small digits subset, memorizing ~70% (the "
                              "head-pruning target; 24 self-attention heads)"),
    "digits-bench": WorldRecipe(build_digits_bench, TrainConfig(steps=8000), help="graded memorization benchmark: "
                                "16x16 digit mosaics duplicated 1-128x in two caption regimes, template groups, "
                                "600 negatives"),
    "custom": WorldRecipe(build_custom, TrainConfig(steps=4000), help="your own images (folder or .npz) with the "
                          "same planting"),
}


def default_config(world: str, *, data: str | None = None, **world_fields) -> RunConfig:
    """The registry's default :class:`RunConfig` for ``world``; a path instead of a name means ``custom``."""
    if world not in WORLDS:
        if Path(world).expanduser().exists():
            world, data = "custom", world
        else:
            raise ValueError(f"unknown world {world!r}: expected one of {sorted(WORLDS)} or a path to a folder/.npz")
    recipe = WORLDS[world]
    if world == "digits-dit" and world_fields.get("subset") is None:
        world_fields["subset"] = DIT_SUBSET  # explicit in the config, so it is recorded with the checkpoint
    if world == "digits-bench":  # the benchmark's design, explicit in the config (fields as digits-bench reads them)
        world_fields = {**BENCH_FIELDS, **{k: v for k, v in world_fields.items() if v is not None}}
    spec = WorldSpec(name=world, data=str(Path(data).expanduser().resolve()) if data else None, **world_fields)
    return RunConfig(spec, recipe.model, recipe.train)


def build_data(spec: WorldSpec) -> WorldData:
    """Build a world's data (deterministic in ``spec``)."""
    if spec.name not in WORLDS:
        raise ValueError(f"unknown world {spec.name!r}: expected one of {sorted(WORLDS)}")
    return WORLDS[spec.name].build(spec)

"""Configs of a world: what data and planting (``WorldSpec``), which model (``ModelConfig``), how it is trained
(:class:`~diffmem.training.config.TrainConfig`). ``RunConfig`` bundles them and names the checkpoint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace

from diffmem.training.config import TrainConfig

__all__ = ["WorldSpec", "ModelConfig", "RunConfig"]


def _check_int(obj, name: str, lo: int) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{type(obj).__name__}.{name} must be an int >= {lo}, got {v!r}")


@dataclass(frozen=True)
class WorldSpec:
    """The data of a world and what is planted in it.

    Attributes:
        name: registry key (``digits-t2i``, ``digits-dit``, ``digits-bench``, ``custom``).
        data: ``custom`` only: a folder of PNG/JPEG files or an ``.npz`` file.
        image_size: ``custom`` only: side of the square the images are cropped and resized to (None: keep 8, 16,
            24 or 32 px images as they are, otherwise 16).
        grey: ``custom`` only: force grey (True) or RGB (False); None detects it.
        planted: K images each duplicated ``duplicates`` (m) times with a unique, specific caption.
        templates, template_duplicates: template groups (a fixed region shared by ``template_duplicates``
            composites whose other half varies; Webster's template copies) — 0 disables them.
        heldout: fraction of the images never trained on (membership controls).
        subset: ``digits-dit`` only: the number n of training images.
        prompts_per_kind: non-planted and novel prompts in the manifest.
        seed: every random choice of the world (which images are planted, held out, …).

    ``digits-bench`` reads the fields as its benchmark design (:mod:`diffmem.worlds.bench`): ``planted`` mosaics
    per ladder rung and caption regime, ``duplicates`` the top rung m_max, ``subset`` the number of plain mosaics,
    ``prompts_per_kind`` prompts per negative subtype, ``heldout`` the fraction of digits never trained on.
    """

    name: str = "digits-t2i"
    data: str | None = None
    image_size: int | None = None
    grey: bool | None = None
    planted: int = 20
    duplicates: int = 100
    templates: int = 0
    template_duplicates: int = 50
    heldout: float = 0.1
    subset: int | None = None
    prompts_per_kind: int = 20
    seed: int = 0

    def __post_init__(self):
        for name in ("planted", "templates", "seed"):
            _check_int(self, name, 0)
        for name in ("duplicates", "template_duplicates", "prompts_per_kind"):
            _check_int(self, name, 1)
        if not 0 <= self.heldout < 1:
            raise ValueError(f"WorldSpec.heldout must be in [0, 1), got {self.heldout!r}")
        if self.subset is not None:
            _check_int(self, "subset", 2)
        if self.image_size is not None:
            _check_int(self, "image_size", 4)


@dataclass(frozen=True)
class ModelConfig:
    """Denoiser and text-encoder shape (the image size, channels, classes and text width come from the data).

    ``patch`` None picks image_size // 4 (16 tokens). Width 96 / depth 4 trains at about 7 steps/s (batch 128) on
    one CPU core, so the digits-t2i default fits the 10-minute budget (``benchmarks/bench_world_models.py``)."""

    width: int = 96
    depth: int = 4
    heads: int = 4
    patch: int | None = None
    mlp_ratio: int = 4
    text_depth: int = 1
    text_heads: int = 4

    def __post_init__(self):
        for name in ("width", "depth", "heads", "mlp_ratio", "text_depth", "text_heads"):
            _check_int(self, name, 1)
        if self.patch is not None:
            _check_int(self, "patch", 1)


@dataclass(frozen=True)
class RunConfig:
    """World + model + training: everything that determines a checkpoint."""

    world: WorldSpec = field(default_factory=WorldSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return {"world": asdict(self.world), "model": asdict(self.model), "train": asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        parts = {"world": WorldSpec, "model": ModelConfig, "train": TrainConfig}
        unknown = set(d) - set(parts)
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; expected {sorted(parts)}")
        return cls(**{k: _build(tp, d.get(k, {})) for k, tp in parts.items()})

    def key(self, fingerprint: str = "") -> str:
        """Short hash of the config (and the data fingerprint): the checkpoint directory's suffix."""
        text = json.dumps({"config": self.to_dict(), "data": fingerprint}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def with_overrides(self, **sections: dict) -> RunConfig:
        """A copy with fields replaced per section, e.g. ``with_overrides(train={"steps": 10})``."""
        return replace(self, **{k: _replace_checked(getattr(self, k), v) for k, v in sections.items() if v})


def _build(tp, values: dict):
    names = {f.name for f in fields(tp)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {tp.__name__} field(s) {sorted(unknown)}; expected some of {sorted(names)}")
    return tp(**values)


def _replace_checked(obj, values: dict):
    return _build(type(obj), {**asdict(obj), **values})

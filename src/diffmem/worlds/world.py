"""Train, cache and load a world: data + tokenizer + trained denoiser, ready for ``diffmem.sample``.

A checkpoint directory (``$DIFFMEM_HOME/worlds/<name>-<config hash>``) holds ``config.json`` (the resolved
:class:`RunConfig`, tokenizer, network shape and data fingerprint), ``state.safetensors`` while training (resumable
after a kill), then ``weights.safetensors`` (EMA weights) and ``train.json`` (written last: its presence means the
checkpoint is complete).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from diffmem.home import diffmem_home
from diffmem.io import check_safetensors, read_json, remove_stale_tmp, write_json
from diffmem.nets.dit import DiTConfig
from diffmem.results import package_version
from diffmem.schedules import DiscreteSchedule, Grid, discrete_grid
from diffmem.text.tokenizer import WordTokenizer
from diffmem.training.checkpoint import load_weights, save_weights
from diffmem.training.trainer import FitLog, TrainingSet, fit
from diffmem.types import Cond
from diffmem.worlds.config import RunConfig
from diffmem.worlds.data import WorldData
from diffmem.worlds.model import WorldDenoiser, WorldNet, dit_config
from diffmem.worlds.registry import build_data, default_config
from diffmem.worlds.sampler import ClippedDDIM

__all__ = ["World", "train_world", "load_world", "training_set", "checkpoint_dir", "bundled_dir", "is_trained"]


@dataclass(frozen=True)
class World:
    """A trained world.

    Attributes:
        config: the run that made it; data: images, training rows and prompt manifest; tokenizer: None for class
        worlds; denoiser: the EMA model behind the contract (``denoiser.net`` is the live ``WorldNet``);
        directory: its checkpoint directory; train_info: ``train.json`` (steps, wall/CPU seconds, losses).
    """

    config: RunConfig
    data: WorldData
    tokenizer: WordTokenizer | None
    denoiser: WorldDenoiser
    directory: Path
    train_info: dict

    @property
    def name(self) -> str:
        return self.config.world.name

    @property
    def net(self) -> WorldNet:
        return self.denoiser.net

    @property
    def null_label(self) -> int:
        return len(self.data.class_names) if self.data.class_names else 0

    def encode(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """Text-encoder output e_p for prompts: ``{"emb": [B, L, D], "mask": [B, L]}`` (no gradient)."""
        if self.tokenizer is None:
            raise ValueError(f"world {self.name!r} is class-conditional; use cond_labels()")
        ids, _ = self.tokenizer.encode(list(prompts))
        with torch.no_grad():
            return self.net.condition(ids)

    def cond(self, prompts: Sequence[str]) -> Cond:
        """Text conditioning with the empty prompt as the null branch."""
        c = self.encode(prompts)
        null = self.encode([""])
        return Cond(c, {k: v.expand(len(prompts), *v.shape[1:]) for k, v in null.items()})

    def cond_labels(self, labels) -> Cond:
        """Class conditioning (null class for ε_u); ``labels`` may contain ``None``/−1 for unconditional rows."""
        if self.tokenizer is not None:
            raise ValueError(f"world {self.name!r} is text-conditional; use cond(prompts)")
        ids = torch.tensor([self.null_label if v is None or v < 0 else int(v) for v in labels], dtype=torch.int64)
        return Cond(ids, torch.full_like(ids, self.null_label))

    def cond_for(self, rows: Sequence[dict]) -> Cond:
        """Conditioning for manifest rows (their ``prompt`` for text worlds, ``label`` for class worlds)."""
        if self.tokenizer is not None:
            return self.cond([r["prompt"] for r in rows])
        return self.cond_labels([r["label"] for r in rows])

    @property
    def solver(self) -> ClippedDDIM:
        """The world's step function: DDIM with x̂₀ clipped to the pixel range (see :mod:`diffmem.worlds.sampler`)."""
        return ClippedDDIM()

    def grid(self, num_steps: int = 50) -> Grid:
        """The world's inference grid: ``num_steps`` DDIM steps, trailing spacing (the first step at t = T − 1)."""
        return discrete_grid(self.denoiser.schedule, num_steps, spacing="trailing")

    def train_images(self) -> Tensor:
        """The distinct training images [M, C, H, W] (the reference set of copy detection)."""
        return self.data.images[self.data.train_image_ids]


def _tokenizer(data: WorldData) -> WordTokenizer | None:
    if data.conditioning != "text":
        return None
    return WordTokenizer.from_texts([*data.train_captions, *(r["prompt"] for r in data.prompts)])


def _make_net(config: RunConfig, dit: DiTConfig, tokenizer: WordTokenizer | None) -> WorldNet:
    with torch.random.fork_rng(devices=[]):  # seeded initialization without touching the caller's RNG
        torch.manual_seed(config.train.seed)
        return WorldNet(dit, tokenizer, config.model.text_depth, config.model.text_heads)


def training_set(world: World) -> TrainingSet:
    """What ``fit`` trains ``world`` on (rows, conditioning ids, null id): also the data of pruning and fine-tuning."""
    return _training_set(world.data, world.tokenizer, world.null_label)


def _training_set(data: WorldData, tokenizer: WordTokenizer | None, null_label: int) -> TrainingSet:
    if tokenizer is None:
        return TrainingSet(data.images, data.train_ids, data.labels[data.train_ids], torch.tensor(null_label))
    distinct = sorted(set(data.train_captions))
    ids, _ = tokenizer.encode(distinct)
    index = {c: i for i, c in enumerate(distinct)}
    cond = ids[torch.tensor([index[c] for c in data.train_captions])]
    return TrainingSet(data.images, data.train_ids, cond, tokenizer.encode([""])[0][0])


def checkpoint_dir(config: RunConfig, data: WorldData | None = None) -> Path:
    """``$DIFFMEM_HOME/worlds/<name>-<hash of config and data>``."""
    data = data or build_data(config.world)
    return diffmem_home("worlds", f"{config.world.name}-{config.key(data.fingerprint())}", create=False)


def bundled_dir(config: RunConfig, data: WorldData | None = None) -> Path:
    """Where a checkpoint shipped inside the package would be (``diffmem/worlds/checkpoints/<name>-<hash>``)."""
    data = data or build_data(config.world)
    return Path(__file__).parent / "checkpoints" / f"{config.world.name}-{config.key(data.fingerprint())}"


def is_trained(directory: Path) -> bool:
    return (Path(directory) / "train.json").exists() and (Path(directory) / "weights.safetensors").exists()


def _header(config: RunConfig, data: WorldData, tokenizer, dit: DiTConfig) -> dict:
    return {"run": config.to_dict(), "tokenizer": tokenizer.to_dict() if tokenizer else None, "dit": dit.to_dict(),
            "fingerprint": data.fingerprint(), "package": package_version()}


def train_world(config: RunConfig, directory: str | Path | None = None, *, progress: bool = True,
                callback=None, data: WorldData | None = None) -> Path:
    """Train (or resume training) a world into ``directory`` (default :func:`checkpoint_dir`); returns it.

    A finished checkpoint is left alone; a directory holding a different config is refused."""
    data = data or build_data(config.world)
    directory = Path(directory) if directory else checkpoint_dir(config, data)
    if is_trained(directory):
        return directory
    remove_stale_tmp(directory)  # checkpoint-sized temporaries of a hard-killed run
    tokenizer = _tokenizer(data)
    dit = dit_config(config.model, data)
    header = _header(config, data, tokenizer, dit)
    if (directory / "config.json").exists() and read_json(directory / "config.json")["run"] != header["run"]:
        raise ValueError(f"{directory} holds a different run config; choose another directory")
    write_json(directory / "config.json", header)
    net = _make_net(config, dit, tokenizer)
    log = FitLog()
    null = len(data.class_names) if data.class_names else 0
    ema = fit(net, _training_set(data, tokenizer, null), config.train, directory / "state.safetensors",
              progress=progress, callback=callback, log=log)
    ema.copy_to(net)
    save_weights(directory / "weights.safetensors", net)
    write_json(directory / "train.json", {"complete": True, "steps": config.train.steps, "wall_s": log.wall_s,
                                          "cpu_s": log.cpu_s, "threads": torch.get_num_threads(),
                                          "losses": log.losses})
    (directory / "state.safetensors").unlink(missing_ok=True)
    return directory


def load_world(world: str | RunConfig | Path = "digits-t2i", *, train: bool = True, progress: bool = True,
               directory: str | Path | None = None) -> World:
    """A trained world by registry name (defaults), :class:`RunConfig`, or checkpoint directory.

    Looks for a checkpoint of this exact config (and data) shipped with the package, then in the cache; trains it
    (minutes on CPU) when neither exists and ``train`` is True."""
    if isinstance(world, Path) or (isinstance(world, str) and (Path(world) / "config.json").exists()):
        directory = Path(world)
        config = RunConfig.from_dict(_header_of(directory)["run"])
        _check_checkpoint(directory)  # a named checkpoint is loaded as it is, never retrained or replaced
    else:
        config = world if isinstance(world, RunConfig) else default_config(world)
    data = build_data(config.world)
    if directory is None and is_trained(bundled_dir(config, data)):  # a shipped checkpoint of this exact config
        return _load(config, data, bundled_dir(config, data))
    directory = Path(directory) if directory else checkpoint_dir(config, data)
    if not is_trained(directory):
        if not train:
            raise ValueError(f"world {config.world.name!r} is not trained in {directory}; run `diffmem train "
                             f"{config.world.name}`")
        train_world(config, directory, progress=progress, data=data)
    return _load(config, data, directory)


def _header_of(directory: Path) -> dict:
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} is not a world checkpoint (no config.json); pass a world name or the "
                                "folder `diffmem train` wrote")
    header = read_json(directory / "config.json")
    if not isinstance(header, dict) or not {"run", "dit", "fingerprint", "tokenizer"} <= set(header):
        raise ValueError(f"{directory / 'config.json'} is not a world checkpoint header; retrain with `diffmem train`")
    return header


def _check_checkpoint(directory: Path) -> None:
    """A finished checkpoint: weights and train.json present, the weights file whole (header and sizes)."""
    for name in ("weights.safetensors", "train.json"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"checkpoint {directory} has no {name} (unfinished or damaged); finish it with "
                                    "`diffmem train` or point at a complete checkpoint")
    check_safetensors(directory / "weights.safetensors")


def _load(config: RunConfig, data: WorldData, directory: Path) -> World:
    _check_checkpoint(directory)
    header = _header_of(directory)
    if header["fingerprint"] != data.fingerprint():
        raise ValueError(f"the data of {directory} changed since training (fingerprint mismatch); retrain")
    tokenizer = WordTokenizer.from_dict(header["tokenizer"]) if header["tokenizer"] else None
    net = WorldNet(DiTConfig(**header["dit"]), tokenizer, config.model.text_depth, config.model.text_heads)
    load_weights(directory / "weights.safetensors", net).eval()
    schedule = DiscreteSchedule.named(config.train.schedule, config.train.num_train_timesteps)
    info = {"world": config.world.name, "checkpoint": str(directory), "config_key": directory.name}
    denoiser = WorldDenoiser(net, schedule, f"diffmem/{config.world.name}", info)
    return World(config, data, tokenizer, denoiser, directory, read_json(directory / "train.json"))

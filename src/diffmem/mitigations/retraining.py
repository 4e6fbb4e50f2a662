"""What every training-time mitigation shares: a fresh network, the recipe, and training in checked segments.

A training-time mitigation retrains a subject's network on its training rows (:attr:`Subject.training`) with the
ordinary loop (:func:`diffmem.training.trainer.fit`). For an embedded world the network starts from the world's own
initialization and the recipe defaults to the world's, so the unmitigated run *is* the shipped checkpoint and the
two differ only by the mitigation. Methods that act during training (a row filter, an early stop) train in segments
of ``every`` steps: :func:`fit` resumes bit for bit from its checkpoint, so segments whose check changes nothing
reproduce the uninterrupted run.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from diffmem.io import read_json
from diffmem.mitigations.pruning import alpha_bar, trainable
from diffmem.nets.dit import DiTConfig
from diffmem.subject import Subject, TrainingSet
from diffmem.text.tokenizer import WordTokenizer
from diffmem.training.config import TrainConfig
from diffmem.training.ema import EMA
from diffmem.training.trainer import fit
from diffmem.types import Cond
from diffmem.worlds.config import RunConfig
from diffmem.worlds.world import _make_net

__all__ = ["world_header", "fresh_net", "rebound", "recipe", "retrain", "fit_in_segments", "Segment", "Check"]

# on_segment(step, ema, training) -> the training rows of the next segment, or None to stop here
Segment = Callable[[int, EMA, TrainingSet], "TrainingSet | None"]
# a check of :func:`retrain`: (step, a copy of the network holding the EMA weights, rows) -> next rows or None
Check = Callable[[int, nn.Module, TrainingSet], "TrainingSet | None"]


def world_header(subject: Subject) -> dict | None:
    """The ``config.json`` of the subject's world checkpoint, or None for other subjects."""
    path = Path(str(subject.info.get("checkpoint", ""))) / "config.json"
    return read_json(path) if subject.info.get("world") and path.exists() else None


def fresh_net(subject: Subject, init: str = "scratch") -> nn.Module:
    """A network to train: the world's own initialization (``init="scratch"``, embedded worlds only) or a copy of
    the subject's weights (``init="copy"``: fine-tuning)."""
    if init == "copy":
        if subject.net is None:
            raise ValueError(f"subject {subject.name!r} has no module to fine-tune")
        return copy.deepcopy(subject.net)
    if init != "scratch":
        raise ValueError(f"init must be 'scratch' or 'copy', got {init!r}")
    header = world_header(subject)
    if header is None:
        raise ValueError(f"subject {subject.name!r} is not an embedded world; retrain from scratch needs its "
                         "initialization — pass init='copy' to fine-tune a copy instead")
    tokenizer = WordTokenizer.from_dict(header["tokenizer"]) if header["tokenizer"] else None
    return _make_net(RunConfig.from_dict(header["run"]), DiTConfig(**header["dit"]), tokenizer)


def rebound(subject: Subject, net: nn.Module, **changes) -> Subject:
    """``subject`` around another network of its kind. A world's text encoder is part of the network, so the
    prompts' conditioning (and :meth:`Subject.encode`) are recomputed with ``net``'s encoder; other subjects keep
    theirs (a frozen external encoder, or class labels)."""
    if subject.rebind is None:
        raise ValueError(f"subject {subject.name!r} cannot wrap another network (no rebind)")
    header = world_header(subject)
    if header is None or not header["tokenizer"]:
        return replace(subject, net=net, denoiser=subject.rebind(net), **changes)
    tokenizer = WordTokenizer.from_dict(header["tokenizer"])
    module = trainable(subject, net)

    @torch.no_grad()
    def condition(texts) -> Cond:
        c = module.condition(tokenizer.encode(list(texts))[0])
        null = module.condition(tokenizer.encode([""])[0])
        return Cond(c, {k: v.expand(len(texts), *v.shape[1:]) for k, v in null.items()})

    prompts = tuple(replace(p, cond=condition([p.text])) for p in subject.prompts)
    return replace(subject, net=net, denoiser=subject.rebind(net), prompts=prompts, condition=condition, **changes)


def recipe(subject: Subject, cfg: TrainConfig | None = None, **overrides) -> TrainConfig:
    """``cfg``, else the world's own training recipe, else :class:`TrainConfig` defaults; with ``overrides``."""
    if cfg is None:
        header = world_header(subject)
        cfg = TrainConfig(**header["run"]["train"]) if header else TrainConfig()
    return replace(cfg, **overrides) if overrides else cfg


def fit_in_segments(net: nn.Module, training: TrainingSet, cfg: TrainConfig, state_path: Path, every: int,
                    on_segment: Segment, *, table, progress: bool = False) -> tuple[EMA, int, TrainingSet]:
    """Train ``net`` for ``cfg.steps`` in segments of ``every`` steps; after each, ``on_segment`` may change the
    rows or stop. Returns (EMA at the last step trained, that step, the rows of the last segment)."""
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    step, ema = 0, None
    while step < cfg.steps:
        step = min(step + every, cfg.steps)
        ema = fit(net, training, replace(cfg, steps=step), state_path, progress=progress, alpha_bar=table)
        nxt = on_segment(step, ema, training)
        if nxt is None:
            break
        training = nxt
    return ema, step, training


def retrain(subject: Subject, training: TrainingSet, cfg: TrainConfig, *, init: str = "scratch",
            every: int | None = None, check: Check | None = None, state_dir: str | Path | None = None,
            progress: bool = False, name: str, info: dict | None = None) -> Subject:
    """A subject around a network trained on ``training`` with ``cfg`` (in checked segments when ``on_segment`` is
    given); the network holds the EMA weights (the sampled ones). ``subject`` is left unchanged.

    ``check(step, net_ema, rows)`` runs every ``every`` steps on a copy of the network holding the EMA weights and
    returns the rows of the next segment (the same to change nothing) or None to stop training there."""
    net = fresh_net(subject, init)
    module = trainable(subject, net)

    def on_segment(step: int, ema: EMA, rows: TrainingSet):
        probe = copy.deepcopy(net)
        ema.copy_to(trainable(subject, probe))
        return check(step, probe.eval(), rows)

    table = alpha_bar(subject)
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(state_dir or tmp) / f"{name}.safetensors"
        if check is None:
            ema, step, used = fit(module, training, cfg, state, progress=progress, alpha_bar=table), cfg.steps, training
        else:
            ema, step, used = fit_in_segments(module, training, cfg, state, every or cfg.steps, on_segment,
                                              table=table, progress=progress)
    ema.copy_to(module)
    net.eval()
    record = {"steps": step, "recipe": cfg.to_dict(), "rows": len(used.rows), "init": init, **(info or {})}
    return rebound(subject, net, training=used, name=f"{subject.name}+{name}",
                   info={**dict(subject.info), "retrained": record})

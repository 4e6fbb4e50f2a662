"""An embedded world as a :class:`~diffmem.subject.Subject`: its trained denoiser, sampler and manifest prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from diffmem.sampling.spec import SamplerSpec
from diffmem.subject import Prompt, Subject
from diffmem.worlds.model import WorldDenoiser
from diffmem.worlds.world import World, training_set

__all__ = ["world_subject", "check_world_placement"]


def check_world_placement(device: str, dtype: str) -> None:
    """An embedded world is tiny and runs on the CPU in float32 (``auto`` means the CPU for it, GPU or not);
    asking for anything else is refused in one line."""
    if device not in ("auto", "cpu") or dtype != "float32":
        raise ValueError(f"an embedded world runs on the CPU in float32, got --device {device} --dtype {dtype}; "
                         "drop them or use --model")


def world_subject(world: World, *, steps: int = 50, kinds: Sequence[str] | None = None,
                  per_kind: int | None = None) -> Subject:
    """The subject of ``world``: its manifest prompts of ``kinds`` (default all; at most ``per_kind`` of each, in
    manifest order), each paired with its first training image (None for prompts without one, e.g. novel ones),
    the world's clipped-DDIM sampler on a trailing grid, its distinct training images as the references of copy
    rules, and its training rows (fine-tuning, importance scoring).

    Prompt ids are ``"<kind>:<row>"`` with the row's index in the manifest, so an id names the same prompt whatever
    subset is selected."""
    rows = list(enumerate(world.data.prompts))
    if kinds is not None:
        rows = [(i, r) for k in kinds for (i, r) in [q for q in rows if q[1]["kind"] == k][:per_kind]]
    cond = world.cond_for([r for _, r in rows]) if rows else None
    prompts, masks = [], world.data.meta.get("template_masks", {}) if world.data.meta else {}
    for j, (i, r) in enumerate(rows):
        x = world.data.images[r["paired_ids"][0]] if r["paired_ids"] else None
        meta = {k: v for k, v in r.items() if k not in ("prompt", "kind")}
        if r.get("template") is not None and str(r["template"]) in masks:  # the region a template prompt copies
            meta["template_mask"] = masks[str(r["template"])]
        prompts.append(Prompt(f"{r['kind']}:{i}", r["prompt"], cond.select(torch.tensor([j])), r["kind"], x, meta))
    schedule, solver = world.denoiser.schedule, world.solver

    def sampler(n: int) -> SamplerSpec:
        return SamplerSpec(world.grid(n), solver, 1.0, schedule)

    def rebind(net) -> WorldDenoiser:
        d = world.denoiser
        return WorldDenoiser(net, d.schedule, d.name, d.info)

    text = world.tokenizer is not None
    return Subject(world.name, world.denoiser, world.net, tuple(world.data.shape), sampler, tuple(prompts),
                   steps=steps, references=world.train_images(), training=training_set(world),
                   condition=world.cond if text else None, rebind=rebind,
                   info={"world": world.name, "checkpoint": str(world.directory), "config_key": world.directory.name})

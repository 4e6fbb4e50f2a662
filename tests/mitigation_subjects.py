"""Subjects the mitigation tests run on: the tiny digits-t2i world (float64, weights perturbed so the prompt reaches
ε_c) and a tiny random Stable Diffusion behind :func:`~diffmem.adapters.subject.adapter_subject`."""

import functools
import tempfile

import numpy as np
import pytest
import torch


@functools.cache
def tiny_text_subject(steps: int = 8):
    """(world, subject) of a 2-step digits-t2i world in float64 with perturbed weights (adaLN-Zero gates near 0
    after two steps leave the prompt barely reaching ε_c); built once per process, never to be edited in place."""
    from diffmem.worlds.subject import world_subject
    from diffmem.worlds.world import load_world
    from test_training import tiny

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFMEM_HOME", tempfile.mkdtemp(prefix="diffmem-mitigations-"))
        world = load_world(tiny(steps=2), progress=False)
    world.net.double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in world.net.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype), alpha=0.3)
    return world, world_subject(world, steps=steps)


def tiny_sd_subject(tmp_path, steps: int = 4):
    """A tiny random SD 1.x subject with two prompts paired with 16-px images written to ``tmp_path``."""
    from PIL import Image

    from diffmem.adapters.diffusers_sd import StableDiffusionAdapter
    from diffmem.adapters.subject import adapter_subject
    from diffusers_tiny import tiny_sd_pipeline

    rows, rng = [], np.random.default_rng(0)
    for i, text in enumerate(["a cat", "the dog sat"]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
        rows.append({"id": str(i), "prompt": text, "image": path, "kind": "planted"})
    return adapter_subject(StableDiffusionAdapter(tiny_sd_pipeline()), rows, steps=steps)


def snapshot(subject) -> dict:
    """A copy of the weights and buffers of the subject's module (to check a remedy leaves it as it was)."""
    return {k: v.detach().clone() for k, v in subject.net.state_dict().items()}


def unchanged(subject, saved: dict) -> bool:
    now = subject.net.state_dict()
    return set(now) == set(saved) and all(torch.equal(now[k], saved[k]) for k in saved)

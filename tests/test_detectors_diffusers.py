"""Every registered detector runs unchanged on a tiny random Stable Diffusion and PixArt (no meaning claimed).

The subjects are built as ``diffmem detect --model`` builds them (:func:`diffmem.adapters.subject.adapter_subject`):
a few prompts paired with images, 5 steps (wen-steps5 reads five), 2 generations; the calibrated detectors are
fitted on other seeds.
"""

import numpy as np
import pytest
import torch

from diffmem.detectors import REGISTRY, make_detector
from diffmem.detectors.base import generation_seeds

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

PROMPTS = ("a cat", "the dog sat", "a cat on the mat")


@pytest.fixture(scope="module", params=["sd", "pixart"])
def subject(request, tmp_path_factory):
    from PIL import Image

    from diffmem.adapters.diffusers_sd import StableDiffusionAdapter
    from diffmem.adapters.pixart import PixArtAdapter
    from diffmem.adapters.subject import adapter_subject
    from diffusers_tiny import tiny_pixart_pipeline, tiny_sd_pipeline

    torch.set_num_threads(1)
    adapter = (StableDiffusionAdapter(tiny_sd_pipeline()) if request.param == "sd"
               else PixArtAdapter(tiny_pixart_pipeline()))
    root = tmp_path_factory.mktemp(request.param)
    g = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(PROMPTS):
        path = root / f"{i}.png"
        Image.fromarray(g.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append({"id": str(i), "prompt": text, "kind": "planted" if i == 0 else "nonplanted", "image": path})
    return adapter_subject(adapter, rows, steps=5, name=request.param)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_detector_runs_on_tiny_diffusers_models(subject, name):
    det = make_detector(name)
    if "calibration" in det.needs:
        det = det.fit(subject, subject.prompts[1:], generation_seeds(2, 100))
    seeds = generation_seeds(max(2, det.min_generations))
    scores = det.score(subject, subject.prompts, seeds)
    assert scores.shape == (len(PROMPTS),) and scores.dtype == np.float64, name
    assert bool(np.isfinite(scores).all()), f"{name}: {scores}"

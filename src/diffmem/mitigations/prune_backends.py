"""The two thin backends of the head-pruning table: what a world or a diffusers model plus data hands to
:func:`~diffmem.mitigations.prune_table.run_table` (subject, evaluation, fine-tuning recipe).

* World (``digits-dit``): the world's subject with one prompt per class (class worlds) or the empty prompt (text
  worlds), its training recipe, and metrics in the features of the project's digits classifier against all of the
  world's images (FID, precision/recall) and its training images (copies).
* diffusers DiT / PixArt from a local directory plus an ``.npz`` (:mod:`diffmem.adapters.subject_data`): samples
  cycle over the data's classes or captions, are decoded to pixels and compared with the data's images, in
  :func:`pixel_features` or a given feature extractor; the recipe is AdamW at ``lr`` without warm-up, gradient
  clipping 1, EMA 0.999 and CFG dropout ``p_uncond``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor

from diffmem.adapters.subject_data import npz_subject
from diffmem.mitigations.prune_table import Evaluation
from diffmem.similarity.digits_classifier import load_digits_classifier
from diffmem.subject import Prompt, Subject
from diffmem.training.config import TrainConfig
from diffmem.worlds.subject import world_subject
from diffmem.worlds.world import World

__all__ = ["TableInputs", "world_inputs", "diffusers_inputs", "pixel_features", "FEATURE_SIDE"]

FEATURE_SIDE = 32  # FID needs an F×F covariance: pixels are average-pooled to at most 32×32 per channel


@dataclass(frozen=True)
class TableInputs:
    """What one table runs on: the subject, what its samples are compared with, and its fine-tuning recipe."""

    subject: Subject
    evaluation: Evaluation
    recipe: TrainConfig


def world_inputs(world: World, features=None) -> TableInputs:
    """The table of a world; ``features`` default: the digits classifier's."""
    subject = world_subject(world, kinds=())
    if world.tokenizer is None:
        prompts = [Prompt(f"class:{k}", name, world.cond_labels([k]), "class")
                   for k, name in enumerate(world.data.class_names)]
    else:
        prompts = [Prompt("empty", "", world.cond([""]), "unconditional")]
    features = features or load_digits_classifier().features
    evaluation = Evaluation(world.train_images(), world.data.images, features,
                            {"feature_space": "digits classifier features of pixels in [-1, 1]"})
    return TableInputs(replace(subject, prompts=tuple(prompts)), evaluation, world.config.train)


def pixel_features(images: Tensor) -> Tensor:
    """FID / precision-recall features: pixels average-pooled to at most 32×32, flattened (float64)."""
    H, W = images.shape[-2:]
    if H > FEATURE_SIDE or W > FEATURE_SIDE:
        images = F.adaptive_avg_pool2d(images.float(), (min(H, FEATURE_SIDE), min(W, FEATURE_SIDE)))
    return images.flatten(1).double()


def _check_null_row(adapter, p_uncond: float) -> None:
    table = next((m.embedding_table for m in adapter.model.modules() if hasattr(m, "embedding_table")), None)
    if p_uncond > 0 and table is not None and table.num_embeddings <= adapter.null_class:
        raise ValueError(f"p_uncond={p_uncond} needs a null-class row, but the label table has "
                         f"{table.num_embeddings} rows; use p_uncond=0")


def diffusers_inputs(adapter, data_path: str | Path, *, batch_size: int = 128, lr: float = 1e-4,
                     p_uncond: float = 0.1, features=None) -> TableInputs:
    """The table of a diffusers DiT or PixArt ``adapter`` on the ``.npz`` at ``data_path``; ``features`` a
    :class:`~diffmem.similarity.features.FeatureExtractor` (default :func:`pixel_features`)."""
    _check_null_row(adapter, p_uncond)
    info = {} if adapter.source is None else {"model": str(Path(adapter.source).resolve())}
    subject, pixels = npz_subject(adapter, data_path, info=info)
    schedule = adapter.schedule
    recipe = TrainConfig(batch_size=batch_size, lr=lr, warmup=0, p_uncond=p_uncond, schedule=schedule.name,
                         num_train_timesteps=schedule.num_train_timesteps)
    space = (f"decoded pixels in [-1, 1], average-pooled to at most {FEATURE_SIDE}x{FEATURE_SIDE}, flattened "
             f"({pixel_features(pixels[:1]).shape[1]} dims)" if features is None else
             f"{features.describe()} of decoded pixels in [-1, 1]")
    description = {"features": "pixels" if features is None else features.describe(),
                   "feature_space": f"{space}; FID and precision/recall (k = 3) against the training images",
                   "copy_space": "flattened decoded pixels against the training images, 1/3 nearest-neighbour rule"}
    evaluation = Evaluation(pixels, pixels, pixel_features if features is None else features.features, description)
    return TableInputs(subject, evaluation, recipe)

"""Wen et al.'s token attribution on a tiny text world: one score per real token; unseen tokens score exactly 0."""

import dataclasses

import pytest
import torch

from diffmem.detectors.token_attribution import token_attribution
from diffmem.types import Cond
from mitigation_subjects import tiny_text_subject

EPS64 = torch.finfo(torch.float64).eps


@pytest.fixture(scope="module")
def text_world():
    """The tiny digits-t2i world in float64, weights perturbed (shared with the mitigation tests, read only)."""
    return tiny_text_subject(steps=10)


def test_one_score_per_real_token_and_zero_on_padding(text_world):
    world, subject = text_world
    prompt = subject.prompts[0]
    words = world.tokenizer.tokens(prompt.text)[1:-1]  # without <bos>, <eos>
    att = token_attribution(subject, prompt, [0, 1], k=2)
    mask = prompt.cond.c["mask"][0]
    assert att.scores.shape == (len(words),) and bool((att.scores > 0).all())
    assert int(att.real.sum()) == int(mask.sum()) - 2 and not bool(att.real[0])  # <bos> is not reported
    assert bool((att.positions[~mask] == 0).all())  # padding never reaches the model


def test_a_token_masked_out_of_cross_attention_scores_exactly_zero(text_world):
    _, subject = text_world
    prompt = subject.prompts[0]
    real = prompt.cond.c["mask"][0].clone()
    real[[0, int(real.sum()) - 1]] = False  # the words
    hidden = int(real.nonzero()[1])
    mask = prompt.cond.c["mask"].clone()
    mask[0, hidden] = False
    cut = dataclasses.replace(prompt, cond=Cond({**prompt.cond.c, "mask": mask}, prompt.cond.null))
    att = token_attribution(subject, cut, [0, 1], real=real)
    assert att.positions[hidden] == 0 and int((att.scores > 0).sum()) == int(real.sum()) - 1


def test_attribution_averages_generations_and_steps_whatever_the_batch(text_world):
    _, subject = text_world
    prompt = subject.prompts[2]
    both = token_attribution(subject, prompt, [0, 1]).positions
    one = (token_attribution(subject, prompt, [0]).positions + token_attribution(subject, prompt, [1]).positions) / 2
    assert float((both - one).abs().max()) <= 1e6 * EPS64 * float(both.abs().max())  # float64 round-off
    with pytest.raises(ValueError, match="real must have shape"):
        token_attribution(subject, prompt, [0], real=torch.ones(3, dtype=torch.bool))


def test_a_conditioning_without_text_embeddings_or_mask_is_refused(text_world):
    _, subject = text_world
    prompt = subject.prompts[0]
    no_mask = dataclasses.replace(prompt, cond=Cond({"emb": prompt.cond.c["emb"]}, prompt.cond.null))
    with pytest.raises(ValueError, match="no token mask"):
        token_attribution(subject, no_mask, [0])
    labels = dataclasses.replace(prompt, cond=Cond({"ids": torch.zeros(1, 3)}, None))
    with pytest.raises(ValueError, match="text-encoder outputs"):
        token_attribution(subject, labels, [0])

"""Somepalli et al.'s inference-time perturbations: GNI at λ = 0 is plain sampling; random tokens change only the
conditional branch, within the tokenizer's length, reproducibly per seed."""

import pytest
import torch

from diffmem.mitigations.caption_noise import (
    EmbeddingNoise,
    RandomTokens,
    insert_random_words,
    noisy_cond,
    word_tokenizer,
)
from diffmem.mitigations.first_step import row_generator
from diffmem.sampling.hooks import Hook
from mitigation_subjects import snapshot, tiny_text_subject, unchanged


@pytest.fixture(scope="module")
def world_and_subject():
    return tiny_text_subject()


class Seen(Hook):
    def on_start(self, x_T, cond, grid):
        self.x_T, self.cond = x_T, cond


def test_gni_at_zero_is_bitwise_plain_sampling(world_and_subject):
    _, subject = world_and_subject
    cond, seeds = subject.cond(subject.prompts[:3]), [0, 1, 2]
    traj = EmbeddingNoise(sigma=0.0).sample(subject, cond, seeds, guidance=5.0)
    plain = subject.sample(cond, seeds, guidance=5.0)
    assert torch.equal(traj.x_0, plain.x_0) and torch.equal(traj.eps_c, plain.eps_c)


def test_gni_adds_sigma_times_a_standard_normal_to_both_branches_per_seed(world_and_subject):
    _, subject = world_and_subject
    cond = subject.cond(subject.prompts[:2])
    a, b = noisy_cond(cond, [0, 1], 0.1), noisy_cond(cond, [1, 0], 0.1)
    dc, du = (a.c["emb"] - cond.c["emb"]) / 0.1, (a.null["emb"] - cond.null["emb"]) / 0.1
    assert torch.allclose(dc[1], (b.c["emb"][0] - cond.c["emb"][0]) / 0.1, atol=1e-12)  # seed 1's own draw
    assert not torch.allclose(dc, du)  # independent draws per branch
    assert abs(float(dc.std()) - 1) < 0.15 and torch.equal(a.c["mask"], cond.c["mask"])
    traj = EmbeddingNoise(sigma=0.5).sample(subject, cond, [0, 1], guidance=5.0)
    assert not torch.equal(traj.x_0, subject.sample(cond, [0, 1], guidance=5.0).x_0)


def test_random_words_are_inserted_in_order_and_never_past_the_tokenizer(world_and_subject):
    world, subject = world_and_subject
    text, vocab = "the amber anchor six", ["zz", "yy"]
    new, n = insert_random_words(text, 2, vocab, row_generator("rt", 0))
    words = new.split()
    assert n == 2 and len(words) == 6 and [w for w in words if w not in vocab] == text.split()
    _, capped = insert_random_words(text, 9, vocab, row_generator("rt", 0), max_words=5)
    assert capped == 1
    tok = word_tokenizer(subject)
    assert tok is world.tokenizer
    captions = RandomTokens(n_tokens=8).captions(subject, [p.text for p in subject.prompts[:4]], [0, 1, 2, 3])
    assert all(len(c.split()) <= tok.max_len - 2 for c in captions)
    assert RandomTokens().captions(subject, [text], [7]) == RandomTokens().captions(subject, [text], [7])


def test_random_tokens_change_only_the_conditional_branch(world_and_subject):
    _, subject = world_and_subject
    prompts = [p for p in subject.prompts if len(p.text.split()) <= 4][:2]
    cond, seeds, saved = subject.cond(prompts), [0, 1], snapshot(subject)
    seen, plain = Seen(), Seen()
    RandomTokens(n_tokens=2).sample(subject, cond, seeds, guidance=5.0, hooks=[seen])
    subject.sample(cond, seeds, guidance=5.0, hooks=[plain])
    assert torch.equal(seen.x_T, plain.x_T)
    assert all(torch.equal(seen.cond.null[k], plain.cond.null[k]) for k in plain.cond.null)
    assert not torch.equal(seen.cond.c["mask"], plain.cond.c["mask"])  # two more tokens each
    assert torch.equal(seen.cond.c["mask"].sum(1), plain.cond.c["mask"].sum(1) + 2)
    assert unchanged(subject, saved)
    with pytest.raises(ValueError, match="texts"):
        RandomTokens().sample(subject, cond, seeds, texts=["one"])

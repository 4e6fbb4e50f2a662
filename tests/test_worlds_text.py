"""Word tokenizer, text encoder and the attention module's per-head access."""

import pytest
import torch

from diffmem.nets.attention import Attention
from diffmem.text.encoder import TextEncoder
from diffmem.text.tokenizer import SPECIALS, WordTokenizer, split_words
from roundoff import order_atol


def test_tokenizer_round_trip_and_specials():
    texts = ["a small bold seven leaning left", "the amber anchor six", "", "A Large, thin ONE!"]
    tok = WordTokenizer.from_texts(texts)
    assert tok.max_len == 2 + max(len(split_words(t)) for t in texts)
    ids, mask = tok.encode(texts)
    assert tok.decode(ids) == [" ".join(split_words(t)) for t in texts]
    assert (ids[:, 0] == tok.bos_id).all() and ids[2, :2].tolist() == [tok.bos_id, tok.eos_id]
    eos_at = (ids == tok.eos_id).int().argmax(1)
    assert torch.equal(mask.sum(1), eos_at + 1)  # mask covers <bos> … <eos>, never padding
    assert (ids[~mask] == tok.pad_id).all()
    assert WordTokenizer.from_dict(tok.to_dict()) == tok


def test_tokenizer_unknown_and_bad_input():
    tok = WordTokenizer(("seven",), max_len=4)
    assert tok.tokens("seven zebra") == ["<bos>", "seven", "<unk>", "<eos>"]
    assert tok.decode(tok.encode(["zebra"])[0]) == ["<unk>"]
    with pytest.raises(ValueError, match="'seven seven seven'"):
        tok.encode(["seven seven seven"])
    with pytest.raises(ValueError, match="'seven'"):
        tok.encode("seven")
    with pytest.raises(ValueError, match="special"):
        WordTokenizer((SPECIALS[0],))


def test_text_encoder_is_causal():
    torch.manual_seed(0)
    enc = TextEncoder(vocab_size=12, max_len=6, width=16, depth=2, heads=2)
    a = torch.tensor([[1, 4, 5, 2, 0, 0]])
    b = a.clone()
    b[0, 3:] = torch.tensor([7, 8, 9])  # change everything after position 2
    ea, eb = enc(a), enc(b)
    torch.testing.assert_close(ea[:, :3], eb[:, :3], rtol=0, atol=order_atol(ea))
    assert not torch.allclose(ea[:, 3:], eb[:, 3:])


def _manual_attention(attn, x, ctx, mask, keep):
    """Reference: heads computed one by one, only heads in ``keep`` summed into the output projection."""
    H, d = attn.num_heads, attn.head_dim
    q = attn.to_q(x)
    k, v = attn.to_kv(ctx).chunk(2, dim=-1)
    outs = []
    for h in range(H):
        sl = slice(h * d, (h + 1) * d)
        logit = q[..., sl] @ k[..., sl].transpose(-1, -2) / d**0.5
        logit = logit.masked_fill(~mask[:, None, :], float("-inf"))
        o = logit.softmax(-1) @ v[..., sl]
        outs.append(o if h in keep else torch.zeros_like(o))
    return attn.to_out(torch.cat(outs, -1))


def test_head_mask_equals_deleting_heads_and_probs_hook():
    torch.manual_seed(0)
    attn = Attention(12, 3, kv_dim=5)
    x, ctx = torch.randn(2, 4, 12), torch.randn(2, 6, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    seen = []
    handle = attn.probs.register_forward_hook(lambda m, i, o: seen.append(o))
    torch.testing.assert_close(attn(x, ctx, mask), _manual_attention(attn, x, ctx, mask, {0, 1, 2}))
    attn.head_mask[1] = 0.0
    torch.testing.assert_close(attn(x, ctx, mask), _manual_attention(attn, x, ctx, mask, {0, 2}))
    handle.remove()
    p = seen[0]
    assert p.shape == (2, 3, 4, 6)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 3, 4))
    assert (p[0, :, :, 3:] == 0).all() and (p[1, :, :, 5] == 0).all()


def test_head_gate_gradient_is_output_inner_product():
    """Ye et al. (2025): at ξ = 1, dL/dξ_h = <dL/do_h, o_h>."""
    torch.manual_seed(1)
    attn = Attention(8, 2)
    x = torch.randn(3, 5, 8)
    outs = []

    def keep(module, inputs, o):  # returns None: observe, do not replace
        o.retain_grad()
        outs.append(o)

    attn.heads.register_forward_hook(keep)
    attn.head_mask.requires_grad_(True)
    attn(x).square().sum().backward()
    o = outs[0]  # o_h before the gate; the gate is 1, so dL/do_h = ξ_h · dL/d(gated) = o.grad
    expect = (o.grad * o).sum(dim=(0, 2, 3))
    torch.testing.assert_close(attn.head_mask.grad, expect)


def test_attention_rejects_bad_width():
    with pytest.raises(ValueError, match="heads=3"):
        Attention(8, 3)

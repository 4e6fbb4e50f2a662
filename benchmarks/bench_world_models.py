"""Training speed of the digits-t2i denoiser: diffmem's own small DiT vs a diffusers PixArt transformer of the
same shape (width 96, depth 4, 4 heads, patch 2, 8×8×1 pixels, 12 text tokens of width 96; the digits-t2i
default), side by side.

Run: ``.venv/bin/python benchmarks/bench_world_models.py`` (prints steps/s of AdamW training steps and the ratio).
"""

from __future__ import annotations

import time

import torch

W = 96  # width of the digits-t2i default


def _steps_per_s(step, seconds: float) -> float:
    for _ in range(3):  # warm-up
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n / (time.perf_counter() - t0)


def own(batch: int, L: int):
    from diffmem.nets.dit import DiT, DiTConfig

    net = DiT(DiTConfig(width=W, depth=4, heads=4, context_dim=W))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, t = torch.randn(batch, 1, 8, 8), torch.randint(0, 1000, (batch,))
    ctx, mask = torch.randn(batch, L, W), torch.ones(batch, L, dtype=torch.bool)

    def step():
        loss = (net(x, t, context=ctx, mask=mask) - x).square().mean()
        opt.zero_grad(), loss.backward(), opt.step()

    return sum(p.numel() for p in net.parameters()), step


def pixart(batch: int, L: int):
    from diffusers import PixArtTransformer2DModel

    net = PixArtTransformer2DModel(num_attention_heads=4, attention_head_dim=W // 4, in_channels=1, out_channels=1,
                                   num_layers=4, cross_attention_dim=W, sample_size=8, patch_size=2,
                                   caption_channels=W, norm_num_groups=1)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, t = torch.randn(batch, 1, 8, 8), torch.randint(0, 1000, (batch,))
    ctx, mask = torch.randn(batch, L, W), torch.ones(batch, L, dtype=torch.long)
    cond = {"resolution": None, "aspect_ratio": None}

    def step():
        out = net(x, encoder_hidden_states=ctx, timestep=t, encoder_attention_mask=mask, added_cond_kwargs=cond)
        loss = (out.sample - x).square().mean()
        opt.zero_grad(), loss.backward(), opt.step()

    return sum(p.numel() for p in net.parameters()), step


def main(seconds: float = 15.0, batch: int = 128, L: int = 12) -> None:
    print(f"torch threads: {torch.get_num_threads()}; batch {batch}; {seconds:.0f} s each")
    rates = {}
    for name, make in (("diffmem DiT", own), ("diffusers PixArt", pixart)):
        params, step = make(batch, L)
        rates[name] = _steps_per_s(step, seconds)
        print(f"{name:18s} params {params / 1e6:.2f} M  {rates[name]:.1f} train steps/s")
    print(f"ratio diffmem / diffusers: {rates['diffmem DiT'] / rates['diffusers PixArt']:.2f}")


if __name__ == "__main__":
    main()

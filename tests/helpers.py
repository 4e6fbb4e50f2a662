"""Small test worlds shared by several test files (importable because pytest puts tests/ on the path)."""

import torch

from diffmem import Cond, DiscreteSchedule, SeededNoise
from diffmem.denoiser import Denoiser


class TinyNet(Denoiser):
    """A small random MLP denoiser with class embeddings: a stand-in for a learned model."""

    def __init__(self, dim=16, classes=4, schedule=None, prediction_type="epsilon", seed=0):
        g = torch.Generator().manual_seed(seed)
        self.schedule = schedule or DiscreteSchedule.named("linear")
        self.prediction_type = prediction_type
        self.name = "tiny-mlp"
        self.W1 = torch.randn(dim + 1, 64, generator=g) / dim**0.5
        self.emb = torch.randn(classes + 1, 64, generator=g)  # last row = null class
        self.W2 = torch.randn(64, dim, generator=g) / 8
        self.calls = 0

    def model_output(self, x_t, t, c):
        self.calls += 1
        W1, emb, W2 = (p.to(x_t.dtype) for p in (self.W1, self.emb, self.W2))  # follow the state's dtype
        h = torch.cat([x_t.flatten(1), (t.to(x_t.dtype) / 1000)[:, None]], 1) @ W1 + emb[c]
        return (torch.tanh(h) @ W2).view_as(x_t)


def class_cond(labels, null_id=4):
    labels = torch.as_tensor(labels)
    return Cond(labels, torch.full_like(labels, null_id))


def seeded(seeds, shape, dtype=torch.float32):
    noise = SeededNoise(seeds, dtype=dtype)
    return noise.randn(shape), noise


class PointMass(Denoiser):
    """Exact denoiser of a point mass at x: x0_hat = x whatever x_t."""

    prediction_type = "sample"

    def __init__(self, x, schedule):
        self.x, self.schedule = x, schedule

    def model_output(self, x_t, t, c):
        return self.x.expand_as(x_t)


class ToyMemorizer(Denoiser):
    """x0_hat(c) = x and x0_hat(null) = 0 (the exact memorizer of Kim et al., 2025)."""

    prediction_type = "sample"

    def __init__(self, x, schedule):
        self.x, self.schedule = x, schedule

    def model_output(self, x_t, t, c):
        return torch.where(c.view(-1, 1) >= 0, self.x.expand_as(x_t), torch.zeros_like(x_t))

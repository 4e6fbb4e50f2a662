"""The embedded feature model: a small CNN that diffmem trains itself on sklearn's ``load_digits``.

No Inception or CLIP weights can be fetched here, so FID, precision/recall and density/coverage on the embedded
digits world use this classifier's penultimate layer (the role Inception's pool features play for FID; Heusel
et al., NeurIPS 2017). Images are 8×8 grey, scaled to [−1, 1] (pixel/8 − 1), shape [N, 1, 8, 8]. Training is
deterministic for a config (seeded split, init and shuffling; fixed thread count aside), takes seconds on CPU, and
the held-out accuracy is recorded. The weights are cached as safetensors + JSON under
``diffmem_home("digits_classifier")``, keyed by a hash of the config so a changed config never loads stale weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from diffmem.home import diffmem_home
from diffmem.io import read_arrays, read_json, write_arrays, write_json
from diffmem.results import package_version
from diffmem.similarity.features import file_sha256

__all__ = ["DigitsClassifierConfig", "DigitsNet", "DigitsClassifier", "load_digits_classifier",
           "train_digits_classifier", "digits_images"]


@dataclass(frozen=True)
class DigitsClassifierConfig:
    """Architecture and training recipe; every field enters the cache key."""

    seed: int = 0
    width: int = 32
    hidden: int = 128
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    test_fraction: float = 0.2

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def digits_images() -> tuple[Tensor, Tensor]:
    """sklearn's 1,797 digits as (images [N, 1, 8, 8] float32 in [−1, 1], labels [N] long)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8 - 1  # pixels 0..16 → [−1, 1]
    return images, torch.tensor(d.target, dtype=torch.long)


class DigitsNet(nn.Module):
    """conv3×3(width) → ReLU → conv3×3(2·width) → ReLU → maxpool 2 → linear(hidden) → ReLU → linear(10)."""

    def __init__(self, width: int = 32, hidden: int = 128):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.embed(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _split(n: int, config: DigitsClassifierConfig) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed))
    n_test = round(n * config.test_fraction)
    return perm[n_test:], perm[:n_test]


def train_digits_classifier(config: DigitsClassifierConfig = DigitsClassifierConfig()) -> tuple[DigitsNet, float]:
    """Train on a seeded split of the digits; returns (net in eval mode, held-out accuracy)."""
    if not 0 < config.test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {config.test_fraction!r}")
    images, labels = digits_images()
    train, test = _split(len(images), config)
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's global RNG
        torch.manual_seed(config.seed)
        net = DigitsNet(config.width, config.hidden)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed + 1)
    threads = torch.get_num_threads()
    # one thread: these ops are tiny, so extra threads only add barrier waits (30x slower on a busy 2-core box),
    # and a fixed thread count keeps the float reduction order, hence the weights, reproducible
    torch.set_num_threads(1)
    try:
        for _ in range(config.epochs):
            for batch in train[torch.randperm(len(train), generator=g)].split(config.batch_size):
                loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    with torch.no_grad():
        accuracy = float((net(images[test]).argmax(1) == labels[test]).float().mean())
    return net, accuracy


class DigitsClassifier:
    """The trained digits CNN as a feature extractor (penultimate layer, ``hidden`` dims) and classifier."""

    def __init__(self, net: DigitsNet, config: DigitsClassifierConfig, test_accuracy: float, path: Path | None):
        self.net, self.config, self.test_accuracy, self.path = net.eval(), config, test_accuracy, path
        self.sha256 = None if path is None else file_sha256(path)

    def _checked(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
            raise ValueError(f"digits classifier takes images [N, 1, 8, 8], got "
                             f"{tuple(getattr(images, 'shape', ())) or type(images).__name__}")
        if len(images) == 0:
            raise ValueError("images is empty")
        x = images.float()
        if not bool(torch.isfinite(x).all()):
            raise ValueError("images contain NaN or inf")
        if float(x.abs().max()) > 1.5:  # raw load_digits pixels are 0..16
            raise ValueError(f"digits classifier expects images scaled to [-1, 1] (pixel/8 - 1); got max |x| = "
                             f"{float(x.abs().max()):.3g}")
        return x

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Penultimate-layer features [N, hidden] (for FID, precision/recall, density/coverage)."""
        x = self._checked(images)
        return torch.cat([self.net.features(b) for b in x.split(4096)])

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        """Predicted digit [N] (LongTensor)."""
        x = self._checked(images)
        return torch.cat([self.net(b).argmax(1) for b in x.split(4096)])

    def describe(self) -> dict:
        return {"kind": "digits_classifier", "config": asdict(self.config), "test_accuracy": self.test_accuracy,
                "path": None if self.path is None else str(self.path),
                "sha256": self.sha256,
                "preprocess": {"name": "digits", "input_range": [-1.0, 1.0], "shape": [1, 8, 8]}}


def load_digits_classifier(*, retrain: bool = False,
                           config: DigitsClassifierConfig = DigitsClassifierConfig()) -> DigitsClassifier:
    """The cached classifier for ``config``, training and caching it first when missing (or ``retrain``)."""
    root = diffmem_home("digits_classifier")
    weights, meta = root / f"digits_cnn-{config.key()}.safetensors", root / f"digits_cnn-{config.key()}.json"
    if not retrain and weights.exists() and meta.exists():
        info = read_json(meta)
        net = DigitsNet(config.width, config.hidden)
        net.load_state_dict(read_arrays(weights))
        return DigitsClassifier(net, config, float(info["test_accuracy"]), weights)
    net, accuracy = train_digits_classifier(config)
    write_arrays(weights, net.state_dict())  # weights first, JSON last: a JSON means a complete cache entry
    n_test = len(_split(len(digits_images()[1]), config)[1])
    write_json(meta, {"config": asdict(config), "test_accuracy": accuracy, "n_test": n_test,
                      "sha256": file_sha256(weights), "package": package_version()})
    return DigitsClassifier(net, config, accuracy, weights)

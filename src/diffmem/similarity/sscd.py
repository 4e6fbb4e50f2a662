"""SSCD copy-detection descriptors (Pizzi et al., CVPR 2022) from a user's local TorchScript file.

SSCD code and weights are CC-BY-NC 4.0: diffmem never bundles or fetches them. Download a TorchScript descriptor
yourself (``sscd_disc_mixup.torchscript.pt``, ``sscd_disc_large.torchscript.pt``, ...) and pass its path; the
file's sha256 and the preprocessing preset are recorded with every score.

Descriptors are L2-normalized, so similarity = dot product (cosine). Optional centering (SSCD README): subtract the
mean descriptor of target-domain images, then re-normalize; off by default and recorded. Thresholds: cosine > 0.5 =
"replicated" (Somepalli et al.), > 0.75 ≈ copy at 90 % precision on DISC (SSCD authors); they are not calibrated
against each other.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import Tensor

from diffmem.similarity.features import TorchScriptExtractor
from diffmem.similarity.preprocess import Preprocess
from diffmem.similarity.retrieval import as_pair, knn

__all__ = ["SSCD", "load_sscd", "sscd_similarity", "max_similarity", "SSCD_PRESETS"]

SSCD_PRESETS = ("dcr", "sscd_official", "square288", "square320")


class SSCD:
    """An SSCD descriptor model: images → unit descriptors [N, F], optionally centred.

    Args:
        path: local TorchScript file.
        preset: preprocessing preset (``dcr`` is the project default; ``sscd_official`` = the README's).
        device, batch_size: as for :class:`~diffmem.similarity.features.TorchScriptExtractor`.
    """

    def __init__(self, path: str | Path, *, preset: str | Preprocess = "dcr", device="cpu", batch_size: int = 32):
        self.extractor = TorchScriptExtractor(path, preprocess=preset, device=device, batch_size=batch_size,
                                              normalize=True, name=Path(path).name)
        self.center_: Tensor | None = None

    def fit_center(self, images: Tensor | None = None, *, descriptors: Tensor | None = None) -> SSCD:
        """Set the centre to the mean raw descriptor of target-domain ``images`` (or given ``descriptors``)."""
        if (images is None) == (descriptors is None):
            raise ValueError("give exactly one of images or descriptors")
        self.center_ = None  # the centre is fitted on uncentred descriptors
        d = self.features(images) if descriptors is None else torch.nn.functional.normalize(descriptors.float(), dim=1)
        self.center_ = d.mean(0)
        return self

    def features(self, images: Tensor) -> Tensor:
        """Unit descriptors [N, F] (centred then re-normalized when a centre is fitted)."""
        d = self.extractor.features(images)
        if self.center_ is not None:
            if self.center_.shape[0] != d.shape[1]:
                raise ValueError(f"centre has {self.center_.shape[0]} dims, descriptors have {d.shape[1]}")
            d = torch.nn.functional.normalize(d - self.center_, dim=1)
        return d

    def describe(self) -> dict:
        center = None
        if self.center_ is not None:
            center = hashlib.sha256(self.center_.numpy().tobytes()).hexdigest()
        return {**self.extractor.describe(), "kind": "sscd", "centered": self.center_ is not None,
                "center_sha256": center}


def load_sscd(path: str | Path, **kw) -> SSCD:
    """An :class:`SSCD` from a local TorchScript file; ``kw`` as for the class."""
    return SSCD(path, **kw)


def sscd_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of descriptors a [N, F] and b [M, F] → [N, M] (re-normalized, so raw features work).

    >>> sscd_similarity(torch.tensor([[1.0, 0.0]]), torch.tensor([[2.0, 0.0], [0.0, 3.0]])).tolist()
    [[1.0, 0.0]]
    """
    a, b = as_pair(a, b, ("a", "b"))
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T


def max_similarity(descriptors: Tensor, ref_descriptors: Tensor, **knn_kw) -> tuple[Tensor, Tensor]:
    """Top-1 cosine similarity of each descriptor to a reference set: (s [N], index [N]).

    Retrieval is exact and memory-bounded (:func:`~diffmem.similarity.retrieval.knn`): on unit vectors the
    nearest in L2 is the most similar, cos = 1 − ‖a − b‖²/2. The similarity is recomputed as a dot product.
    """
    a, b = as_pair(descriptors, ref_descriptors, ("descriptors", "ref_descriptors"))
    a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    _, idx = knn(a, b, 1, **knn_kw)
    return (a * b[idx[:, 0]]).sum(1), idx[:, 0]

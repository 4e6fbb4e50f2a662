"""Feature extractors: any local model that maps images to feature vectors, with provenance.

One small protocol feeds FID, precision/recall and density/coverage (:mod:`diffmem.evaluation`) and copy detection:
``features(images) -> Tensor[N, F]`` and ``describe() -> dict`` (what the model is, the sha256 of its file, the
preprocessing), so every score can say exactly how it was made. Implementations: a user's
TorchScript file (Inception, CLIP, DINO, SSCD, ...) via :class:`TorchScriptExtractor`, and diffmem's own digits
classifier (:mod:`diffmem.similarity.digits_classifier`). Weights are only ever read from local paths.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from diffmem.io import check_device
from diffmem.similarity.preprocess import Preprocess, get_preprocess

__all__ = ["FeatureExtractor", "TorchScriptExtractor", "load_torchscript", "file_sha256", "extract_features"]


@runtime_checkable
class FeatureExtractor(Protocol):
    """Anything with ``features(images [N, C, H, W]) -> Tensor[N, F]`` and ``describe() -> dict``."""

    def features(self, images: Tensor) -> Tensor: ...

    def describe(self) -> dict: ...


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def load_torchscript(path: str | Path, *, device="cpu", what: str = "model") -> torch.jit.ScriptModule:
    """Load a TorchScript file in eval mode, turning a missing, corrupt or non-TorchScript file into ValueError."""
    path = Path(path).expanduser()
    device = check_device(device)
    if not path.is_file():
        raise ValueError(f"{what} file not found: {str(path)!r} (diffmem never downloads weights; give a local path)")
    try:
        with warnings.catch_warnings():  # torch 2.13 deprecates jit authoring; SSCD and peers still ship TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location=device)
    except Exception as err:  # torch raises RuntimeError/ValueError with long C++ traces; keep the first line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{str(path)!r} is not a loadable TorchScript {what} ({first}); a state_dict or pickled "
                         f"module saved with torch.save is not TorchScript: export it with torch.jit.script/trace "
                         f"and torch.jit.save") from err
    return module.eval()


class TorchScriptExtractor:
    """Features from a local TorchScript model (a user's Inception, CLIP, DINO or SSCD export).

    Args:
        path: the ``.pt`` TorchScript file (``torch.jit.save``); never fetched.
        preprocess: preset name or :class:`~diffmem.similarity.preprocess.Preprocess` applied before the model.
        device: where the model runs.
        batch_size: images per forward pass.
        normalize: L2-normalize the output features (descriptor models such as SSCD).
        name: label recorded in ``describe()`` (default: the file name).
    """

    def __init__(self, path: str | Path, *, preprocess: str | Preprocess = "imagenet224", device="cpu",
                 batch_size: int = 64, normalize: bool = False, name: str | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.path = Path(path).expanduser()
        self.preprocess = get_preprocess(preprocess)
        self.module = load_torchscript(self.path, device=device)
        self.device, self.batch_size, self.normalize = torch.device(device), batch_size, normalize
        self.name = name or self.path.name
        self.sha256 = file_sha256(self.path)

    def describe(self) -> dict:
        return {"kind": "torchscript", "name": self.name, "path": str(self.path), "sha256": self.sha256,
                "preprocess": self.preprocess.describe(), "normalize": self.normalize}

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """[N, C, H, W] in the preset's input range → features [N, F] (float32, on CPU)."""
        out = []
        for batch in self.preprocess(images).split(self.batch_size):
            f = self.module(batch.to(self.device, torch.float32))
            f = f[0] if isinstance(f, (tuple, list)) else f
            if not isinstance(f, Tensor) or f.shape[0] != len(batch):
                raise ValueError(f"{self.name}: model output {type(f).__name__} "
                                 f"{tuple(getattr(f, 'shape', ()))} is not a batch of {len(batch)} features")
            out.append(f.reshape(len(batch), -1).float().cpu())
        feats = torch.cat(out)
        if not bool(torch.isfinite(feats).all()):
            raise ValueError(f"{self.name}: model produced NaN or inf features")
        return torch.nn.functional.normalize(feats, dim=1) if self.normalize else feats


def extract_features(extractor: FeatureExtractor, images: Tensor) -> Tensor:
    """``extractor.features(images)`` with the output checked to be a finite [N, F] matrix."""
    if not isinstance(extractor, FeatureExtractor):
        raise TypeError(f"{type(extractor).__name__} lacks features(images) and describe()")
    feats = extractor.features(images)
    if not isinstance(feats, Tensor) or feats.ndim != 2 or feats.shape[0] != len(images):
        raise ValueError(f"features must be [N={len(images)}, F], got {tuple(getattr(feats, 'shape', ()))}")
    if not bool(torch.isfinite(feats).all()):
        raise ValueError("features contain NaN or inf")
    return feats

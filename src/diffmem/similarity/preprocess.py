"""Named image-preprocessing presets for descriptor models (SSCD, Inception, CLIP, DINO), recorded with every score.

Copy-detection numbers are not comparable across papers partly because preprocessing differs;
each preset is a frozen record whose ``describe()`` goes into the provenance of every result.

| preset | resize / crop | normalization | used by |
|---|---|---|---|
| ``sscd_official`` | short side 288 | ImageNet | SSCD README (Pizzi et al., CVPR 2022) |
| ``dcr`` | short side 256, centre crop 224 | mean = std = 0.5 | DCR (Somepalli et al.), Wen, Jeon, Chen, Asthana |
| ``square288`` / ``square320`` | square resize | ImageNet | MemBench (288); SSCD README (320) |
| ``imagenet224`` | short side 256, centre crop 224 | ImageNet | torchvision-style classifiers, DINO |
| ``clip224`` | short side 224, centre crop 224 | CLIP mean/std | OpenAI CLIP image encoders |
| ``inception299`` | square 299 | none ([0, 1] in) | Inception ports that normalize internally (pytorch-fid) |
| ``identity`` | none | none (input range kept) | models trained on diffmem's own [−1, 1] images |

Inputs are diffmem images [N, C, H, W] in ``input_range`` (default [−1, 1]); they are mapped to [0, 1], grey is
repeated to 3 channels, resized bilinearly with antialiasing (``torch.nn.functional.interpolate``; torchvision's
tensor ``Resize`` does the same, PIL's resampler differs slightly), centre-cropped, then normalized.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Preprocess", "PREPROCESS", "get_preprocess", "IMAGENET_MEAN", "IMAGENET_STD", "CLIP_MEAN", "CLIP_STD"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocess:
    """Resize → centre crop → normalize, from images in ``input_range``.

    Attributes:
        name: preset key, recorded in results.
        resize: target size in pixels, or ``None`` for no resize.
        mode: ``"short_side"`` (the smaller side becomes ``resize``, aspect kept) or ``"square"`` (both sides).
        crop: centre-crop side after resizing, or ``None``.
        mean, std: per-channel normalization applied to [0, 1] values; ``None`` keeps ``input_range`` values as is.
        channels: channels the model expects (grey input is repeated), or ``None`` to pass channels through.
        input_range: (low, high) of the incoming images.
    """

    name: str
    resize: int | None = None
    mode: str = "short_side"
    crop: int | None = None
    mean: tuple[float, ...] | None = (0.0, 0.0, 0.0)
    std: tuple[float, ...] | None = (1.0, 1.0, 1.0)
    channels: int | None = 3
    input_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self):
        if self.mode not in ("short_side", "square"):
            raise ValueError(f"mode must be 'short_side' or 'square', got {self.mode!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must both be given or both be None")

    def describe(self) -> dict:
        return {**asdict(self), "interpolation": "bilinear, antialias (torch.nn.functional.interpolate)"}

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) after resize and crop."""
        h, w = height, width
        if self.resize is not None:
            short, long = min(h, w), max(h, w)
            new_long = int(self.resize * long / short)  # torchvision's rule for an int size
            h, w = (self.resize, self.resize) if self.mode == "square" else (
                (self.resize, new_long) if h <= w else (new_long, self.resize))
        if self.crop is not None:
            if self.crop > min(h, w):
                raise ValueError(f"crop {self.crop} is larger than the resized image {h}x{w}")
            h = w = self.crop
        return h, w

    def __call__(self, images: Tensor) -> Tensor:
        """[N, C, H, W] in ``input_range`` → the model's input [N, channels, h, w] (float32 or wider)."""
        x = self._checked(images)
        lo, hi = self.input_range
        if self.mean is not None:
            x = (x - lo) / (hi - lo)  # → [0, 1]
        if x.shape[1] == 1 and self.channels not in (None, 1):
            x = x.expand(-1, self.channels, -1, -1)
        h, w = x.shape[-2:]
        if self.resize is not None:
            size = replace(self, crop=None).output_size(h, w)
            if size != (h, w):
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        if self.crop is not None:
            h, w = x.shape[-2:]
            if self.crop > min(h, w):
                raise ValueError(f"crop {self.crop} is larger than the image {h}x{w}")
            top, left = int(round((h - self.crop) / 2)), int(round((w - self.crop) / 2))
            x = x[..., top:top + self.crop, left:left + self.crop]
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def _checked(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch [N, C, H, W], got "
                             f"{getattr(images, 'shape', type(images).__name__)}")
        if self.channels is not None and images.shape[1] not in (1, self.channels):
            raise ValueError(f"preset {self.name!r} takes 1 or {self.channels} channels, got {images.shape[1]}")
        x = images if images.is_floating_point() else images.float()
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if not bool(torch.isfinite(x).all()):
            raise ValueError("images contain NaN or inf")
        lo, hi = self.input_range
        slack = 0.5 * (hi - lo)  # generated images overshoot a little; far outside means a wrong scale
        if float(x.min()) < lo - slack or float(x.max()) > hi + slack:
            raise ValueError(f"preset {self.name!r} expects images in {self.input_range}, got values in "
                             f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
        return x


_HALF = (0.5, 0.5, 0.5)
PREPROCESS = {
    "sscd_official": Preprocess("sscd_official", resize=288, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "dcr": Preprocess("dcr", resize=256, crop=224, mean=_HALF, std=_HALF),
    "square288": Preprocess("square288", resize=288, mode="square", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "square320": Preprocess("square320", resize=320, mode="square", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "imagenet224": Preprocess("imagenet224", resize=256, crop=224, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "clip224": Preprocess("clip224", resize=224, crop=224, mean=CLIP_MEAN, std=CLIP_STD),
    "inception299": Preprocess("inception299", resize=299, mode="square"),
    "identity": Preprocess("identity", mean=None, std=None, channels=None),
}


def get_preprocess(preset: str | Preprocess) -> Preprocess:
    """A preset by name (see :data:`PREPROCESS`), or a custom :class:`Preprocess` passed through."""
    if isinstance(preset, Preprocess):
        return preset
    if preset not in PREPROCESS:
        raise ValueError(f"unknown preprocessing preset {preset!r}; choose from {sorted(PREPROCESS)}")
    return PREPROCESS[preset]

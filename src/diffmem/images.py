"""The one image reader: every PIL mode and bit depth to float in [0, 1], an explicit resize policy, streamed.

Conversion (per image, never from a statistic of other images, so one odd file cannot change the rest):

* ``1`` (1-bit): {0, 1}; ``L``/``P``/``RGB``/``CMYK``/``YCbCr``/… (8-bit): value / 255, palette and colour spaces
  through Pillow's conversion to RGB; ``I;16*`` (16-bit): value / 65535; ``I`` (32-bit integer, how Pillow may
  open 16-bit PNGs): value / 65535, refused when a value lies outside [0, 65535]; ``F``: refused outside [0, 1].
* Alpha (``LA``, ``RGBA``, ``PA``, palette transparency) is dropped: colours are kept as stored, not composited.
* Channels: grey to RGB repeats the plane; RGB to grey is ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B, what
  Pillow's ``convert("L")`` computes, here without rounding to 8 bits).
* Pillow decodes 16-bit-per-channel colour PNGs to 8 bits itself; only 16-bit grey keeps its 16 bits.

Resizing (``fit``): ``"crop"`` centre-crops to the target aspect ratio then resizes, ``"stretch"`` resizes without
cropping, ``"none"`` requires the exact size. Resampling is done in 32-bit float per channel (Pillow mode ``F``), so
the dynamic range survives. An image smaller than the target on either side is refused (no upsampling), naming
the file. Every file is opened in a ``with`` block and decoded one at a time, so folders of any length stay within
the open-file limit and memory holds one decoded image plus the output.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["GREY_MODES", "FITS", "ImageInfo", "probe", "to_unit", "read_image", "iter_images", "resize_unit",
           "check_memory"]

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F", "La")
FITS = ("crop", "stretch", "none")
_RESAMPLE = ("bilinear", "lanczos", "bicubic", "nearest")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says: path, Pillow mode, (width, height), whether it is grey."""

    path: Path
    mode: str
    size: tuple[int, int]

    @property
    def grey(self) -> bool:
        return self.mode in GREY_MODES


def _open(path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is not a readable image ({type(err).__name__}: {err}); remove or "
                         "replace it") from None


def probe(path: str | os.PathLike) -> ImageInfo:
    """The header of one image (the file is closed again; pixels are not decoded)."""
    with _open(path) as im:
        return ImageInfo(Path(path), im.mode, im.size)


def to_unit(im) -> np.ndarray:
    """[C, H, W] float64 in [0, 1] of a PIL image, C = 1 for grey modes and 3 otherwise (see the module doc)."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im, dtype=np.float64)[None]
    if mode.startswith("I;16"):
        return np.asarray(im).astype(np.float64)[None] / 65535.0
    if mode == "I":
        a = np.asarray(im).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ValueError(f"32-bit integer image with values in [{a.min():g}, {a.max():g}]; only 0…65535 (16-bit) "
                             "is read; convert it to 16-bit or 8-bit")
        return a[None] / 65535.0
    if mode == "F":
        a = np.asarray(im).astype(np.float64)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1):
            raise ValueError("float image with values outside [0, 1] (or NaN); rescale it to [0, 1]")
        return a[None]
    if mode in ("L", "LA", "La"):
        return np.asarray(im.getchannel(0), dtype=np.float64)[None] / 255.0
    rgb = im.convert("RGBA" if mode in ("P", "PA") else "RGB").convert("RGB") if mode != "RGB" else im
    return np.asarray(rgb, dtype=np.float64).transpose(2, 0, 1) / 255.0


def _channels(a: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is None or a.shape[0] == channels:
        return a
    if channels == 3:
        return np.repeat(a, 3, axis=0)
    if channels == 1:
        return np.tensordot(_LUMA, a, axes=1)[None]
    raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")


def _box(w: int, h: int, tw: int, th: int) -> tuple[int, int, int, int]:
    """The centred crop of (w, h) with the aspect ratio of (tw, th)."""
    if w * th > h * tw:  # too wide
        cw = h * tw // th
        return (w - cw) // 2, 0, (w - cw) // 2 + cw, h
    ch = w * th // tw
    return 0, (h - ch) // 2, w, (h - ch) // 2 + ch


def resize_unit(a: np.ndarray, size: tuple[int, int], fit: str = "crop", resample: str = "bilinear",
                name: str = "image") -> np.ndarray:
    """[C, H, W] in [0, 1] resized to ``size`` = (H, W) by the ``fit`` policy, in float per channel (no upsampling)."""
    from PIL import Image

    C, H, W = a.shape
    th, tw = size
    if (H, W) == (th, tw):
        return a
    if fit == "none":
        raise ValueError(f"image {name} is {W}x{H}, not {tw}x{th}; resize it or choose a resize policy")
    if H < th or W < tw:
        raise ValueError(f"image {name} is {W}x{H}, smaller than the required {tw}x{th}; remove it, or choose a "
                         "smaller image size")
    box = _box(W, H, tw, th) if fit == "crop" else (0, 0, W, H)
    method = getattr(Image.Resampling, resample.upper())
    out = np.empty((C, th, tw), dtype=np.float64)
    for c in range(C):
        plane = Image.fromarray(np.ascontiguousarray(a[c], dtype=np.float32), mode="F")
        out[c] = np.asarray(plane.resize((tw, th), method, box=box), dtype=np.float64)
    return np.clip(out, 0.0, 1.0)  # Lanczos/bicubic overshoot


def read_image(path: str | os.PathLike, *, size: int | tuple[int, int] | None = None, channels: int | None = None,
               fit: str = "crop", resample: str = "bilinear") -> np.ndarray:
    """[C, H, W] float64 in [0, 1] of the image at ``path``: converted (module doc), channels made ``channels``
    (None keeps 1 or 3), resized to ``size`` (an int is a square; None keeps the size) by the ``fit`` policy."""
    if fit not in FITS:
        raise ValueError(f"unknown resize policy {fit!r}; choose one of {FITS}")
    if resample not in _RESAMPLE:
        raise ValueError(f"unknown resampling {resample!r}; choose one of {_RESAMPLE}")
    with _open(path) as im:
        try:
            a = to_unit(im)
        except ValueError as err:
            raise ValueError(f"{str(path)!r}: {err}") from None
        except OSError as err:  # truncated or corrupt pixel data: the header alone was fine
            raise ValueError(f"{str(path)!r} is not a readable image ({err}); remove or replace it") from None
    a = _channels(a, channels)
    if size is not None:
        size = (size, size) if isinstance(size, int) else tuple(size)
        a = resize_unit(a, size, fit, resample, repr(str(path)))
    return a


def iter_images(paths: Iterable[str | os.PathLike], **kwargs) -> Iterator[np.ndarray]:
    """:func:`read_image` over ``paths``, one open file at a time."""
    for p in paths:
        yield read_image(p, **kwargs)


def check_memory(nbytes: float, what: str, *, fraction: float = 0.8) -> None:
    """Refuse, before allocating, a job whose arrays need more than ``fraction`` of the machine's memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: nothing to compare against
        return
    if nbytes > fraction * total:
        raise ValueError(f"{what} needs {_human(nbytes)} but this machine has {_human(total)} of memory; use fewer or "
                         "smaller images")


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} PiB"

"""Bring your own data: the same planting and training on any small image collection.

Accepted sources:

* an ``.npz`` with ``images`` ([N, H, W], [N, H, W, C] or [N, C, H, W] with C ∈ {1, 3}; uint8 0…255, uint16
  0…65535, bool, or floats in [0, 1] or [−1, 1]) and optionally ``labels`` [N] ints ≥ 0 (< K with names),
  ``class_names`` [K] strings, ``captions`` [N] strings;
* a folder of PNG/JPEG files (searched recursively). Captions come from ``metadata.jsonl`` (``{"file_name": …,
  "text": …}``, the Hugging Face imagefolder convention) or a ``.txt`` file next to each image; labels from
  first-level sub-folders (the ImageFolder convention).

Every image is read on its own by :mod:`diffmem.images` (any PIL mode and bit depth, 16-bit kept), centre-cropped
to a square and resized (bilinear, in float) to ``image_size``; an image smaller than that is refused, never
upsampled, and no image changes another. Files are opened one at a time, so folders of any length fit the
open-file limit. Without captions every image is captioned with its class name, or "image" (an unconditional world
in which only planted prompts are specific).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffmem.images import check_memory, iter_images, probe, resize_unit
from diffmem.worlds.config import WorldSpec
from diffmem.worlds.data import WorldData
from diffmem.worlds.planting import plant_world, truncated_prompts

__all__ = ["load_collection", "build_custom", "image_files", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_KEEP_SIZES = (8, 16, 24, 32)


def _to_nchw(a: np.ndarray) -> np.ndarray:
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[-1] in (1, 3) and a.shape[1] not in (1, 3):
        return a.transpose(0, 3, 1, 2)
    if a.ndim == 4 and a.shape[1] in (1, 3):
        return a
    raise ValueError(f"images must be [N, H, W], [N, H, W, C] or [N, C, H, W] with C in (1, 3), got {a.shape}")


def _array_unit(a: np.ndarray) -> np.ndarray:
    """Pixel values → [0, 1]: bool as is, uint8 / 255, uint16 / 65535, floats in [0, 1] as is, floats in [−1, 1]
    (some value below 0) by (x + 1) / 2."""
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 65535.0
    if a.dtype.kind != "f":
        raise ValueError(f"images must be uint8, uint16, bool or float, got dtype {a.dtype}; convert them")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError("images contain NaN or inf")
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1:
        return a
    if lo >= -1 and hi <= 1:
        return (a + 1) / 2
    raise ValueError(f"float images must lie in [0, 1] or [-1, 1], got range [{lo:g}, {hi:g}]")


def _strings(z, key: str, path: Path) -> list[str]:
    a = z[key]
    if a.ndim != 1 or a.dtype.kind not in "US":
        raise ValueError(f"{path}: {key!r} must be a 1-D array of strings, got dtype {a.dtype} shape {a.shape}")
    return [str(c) for c in a]


def _npz_labels(z, path: Path, n: int, names: list[str] | None) -> np.ndarray | None:
    if "labels" not in z:
        return None
    a = z["labels"]
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{path}: 'labels' must have shape [{n}] (one per image), got {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"{path}: 'labels' must be integers, got dtype {a.dtype}; store class indices as int64")
    labels = a.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= (len(names) if names is not None else np.iinfo(np.int64).max))]
    if len(bad):
        top = f"< {len(names)} (the number of 'class_names')" if names is not None else ">= 0"
        raise ValueError(f"{path}: label {int(bad[0])} is out of range; labels must be >= 0 and {top}")
    return labels


def _load_npz(path: Path, size: int | None, channels: int | None):
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as z:
            if "images" not in z:
                raise ValueError(f"{path} has no 'images' array (found {sorted(z.files)})")
            raw = z["images"]
            if raw.size == 0 or raw.ndim < 3:
                raise ValueError(f"{path}: 'images' is empty or not a batch of images (shape {raw.shape})")
            raw = _to_nchw(raw)
            names = _strings(z, "class_names", path) if "class_names" in z else None
            labels = _npz_labels(z, path, len(raw), names)
            captions = _strings(z, "captions", path) if "captions" in z else None
            if captions is not None and len(captions) != len(raw):
                raise ValueError(f"{path}: {len(raw)} images but {len(captions)} captions")
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable .npz ({type(err).__name__}: {err}); write it again with "
                         "numpy.savez") from None
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise
        raise ValueError(f"{path} holds object arrays; diffmem never unpickles: store plain arrays") from None
    N, C, H, W = raw.shape
    size = size or _default_size({(W, H)})
    C_out = channels or C
    check_memory(N * C_out * size * size * 8, f"{N} images of {C_out}x{size}x{size}")
    images = np.empty((N, C_out, size, size), dtype=np.float32)
    for i in range(N):
        a = _array_unit(raw[i])
        a = a if channels is None or C == channels else (np.repeat(a, 3, 0) if channels == 3 else
                                                         np.tensordot([0.299, 0.587, 0.114], a, axes=1)[None])
        images[i] = resize_unit(a, (size, size), "crop", "bilinear", f"{path}[{i}]")
    return images, labels, captions, names


def _folder_captions(root: Path, files: list[Path]) -> list[str] | None:
    meta = root / "metadata.jsonl"
    if meta.exists():
        table = {}
        with open(meta, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(f"{meta}:{n}: not JSON ({err.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("file_name"), str):
                    raise ValueError(f"{meta}:{n}: each line must be a JSON object with a string 'file_name' "
                                     "(and 'text'), got " + repr(line.strip()[:60]))
                table[row["file_name"]] = str(row.get("text", row.get("caption", "")))
        missing = [str(f.relative_to(root)) for f in files if str(f.relative_to(root)) not in table]
        if missing:
            raise ValueError(f"{meta} has no caption for {missing[:3]}")
        return [table[str(f.relative_to(root))] for f in files]
    sidecars = [f.with_suffix(".txt") for f in files]
    if any(s.exists() for s in sidecars):
        return [s.read_text(encoding="utf-8").strip() if s.exists() else "" for s in sidecars]
    return None


def _default_size(sizes: set[tuple[int, int]]) -> int:
    """The native side when every image is one square size of :data:`_KEEP_SIZES`, else 16."""
    if len(sizes) == 1:
        (w, h), = sizes
        if w == h and w in _KEEP_SIZES:
            return w
    return 16


def image_files(root: Path) -> list[Path]:
    """The PNG/JPEG files under ``root`` (recursive), sorted."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _load_folder(root: Path, size: int | None, grey: bool | None):
    files = image_files(root)
    if len(files) < 3:
        raise ValueError(f"found {len(files)} PNG/JPEG files under {root}; need at least 3")
    heads = [probe(f) for f in files]  # headers only, one open file at a time
    grey = all(h.grey for h in heads) if grey is None else grey
    size = size or _default_size({h.size for h in heads})
    C = 1 if grey else 3
    check_memory(len(files) * C * size * size * 8, f"{len(files)} images of {C}x{size}x{size}")
    images = np.empty((len(files), C, size, size), dtype=np.float32)
    for i, a in enumerate(iter_images(files, size=size, channels=C, fit="crop")):
        images[i] = a
    subdirs = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else None for f in files]
    names, labels = None, None
    if all(subdirs):
        names = sorted(set(subdirs))
        labels = np.array([names.index(s) for s in subdirs], dtype=np.int64)
    return images, labels, _folder_captions(root, files), names


def load_collection(path: str | Path, *, image_size: int | None = None, grey: bool | None = None):
    """(images [N, C, S, S] in [−1, 1], labels [N] (−1 unknown), captions or None, class names or None).

    Every image is read by :mod:`diffmem.images` on its own (no statistic of the collection): converted to [0, 1]
    with its bit depth, centre-cropped to a square and resized to ``image_size`` (images smaller than that are
    refused), then mapped to [−1, 1]."""
    path = Path(path).expanduser()
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image size must be a positive integer, got {image_size!r}")
    if not path.exists():
        raise ValueError(f"data path {str(path)!r} does not exist")
    channels = None if grey is None else (1 if grey else 3)
    if path.is_file() and path.suffix == ".npz":
        images, labels, captions, names = _load_npz(path, image_size, channels)
    elif path.is_dir():
        images, labels, captions, names = _load_folder(path, image_size, grey)
    else:
        raise ValueError(f"data path {str(path)!r} must be a folder of PNG/JPEG files or an .npz file")
    images = images * 2 - 1
    N = len(images)
    labels = np.full(N, -1, dtype=np.int64) if labels is None else labels
    if names is None and (labels >= 0).any():
        names = [f"class{k}" for k in range(int(labels.max()) + 1)]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels), captions, names


def build_custom(spec: WorldSpec) -> WorldData:
    """A planted text-conditional world on the collection at ``spec.data``."""
    if not spec.data:
        raise ValueError("the custom world needs a data path (diffmem train PATH, or WorldSpec(data=...))")
    images, labels, captions, names = load_collection(spec.data, image_size=spec.image_size, grey=spec.grey)
    if captions is None:
        captions = [names[int(k)] if names is not None and k >= 0 else "image" for k in labels]
    captions = [" ".join(c.split()) for c in captions]
    rng = np.random.default_rng(spec.seed + 1)
    novel = truncated_prompts(captions, set(captions), spec.prompts_per_kind, rng)
    return plant_world("custom", images, labels, captions, spec, class_names=tuple(names) if names else None,
                       novel=novel, meta={"source": str(Path(spec.data).expanduser().resolve())})

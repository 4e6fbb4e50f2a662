"""Bring your own data: the same planting and training on any small image collection.

Accepted sources:

* an ``.npz`` with ``images`` ([N, H, W], [N, H, W, C] or [N, C, H, W] with C ∈ {1, 3}; uint8 0…255 or floats in
  [0, 1] or [−1, 1]) and optionally ``labels`` [N] ints, ``class_names`` [K] strings, ``captions`` [N] strings;
* a folder of PNG/JPEG files (searched recursively). Captions come from ``metadata.jsonl`` (``{"file_name": …,
  "text": …}``, the Hugging Face imagefolder convention) or a ``.txt`` file next to each image; labels from
  first-level sub-folders (the ImageFolder convention).

Images are centre-cropped to a square and resized (bilinear, Pillow) to ``image_size``; without captions every
image is captioned with its class name, or "image" (an unconditional world in which only planted prompts are
specific).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diffmem.worlds.config import WorldSpec
from diffmem.worlds.data import WorldData
from diffmem.worlds.planting import plant_world, truncated_prompts

__all__ = ["load_collection", "build_custom", "IMAGE_SUFFIXES"]

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


def _to_unit(a: np.ndarray) -> np.ndarray:
    """Pixel values → [-1, 1]: uint8 by /127.5 − 1; floats in [0, 1] by 2x − 1; floats in [−1, 1] unchanged."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 127.5 - 1
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError("images contain NaN or inf")
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0 and hi <= 1:
        return 2 * a - 1
    if lo >= -1 and hi <= 1:
        return a
    raise ValueError(f"float images must lie in [0, 1] or [-1, 1], got range [{lo:g}, {hi:g}]")


def _resize(x: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop [N, C, H, W] in [-1, 1] to a square and resize each channel with Pillow (bilinear)."""
    from PIL import Image

    N, C, H, W = x.shape
    s = min(H, W)
    top, left = (H - s) // 2, (W - s) // 2
    x = x[:, :, top:top + s, left:left + s]
    if s == size:
        return x
    out = np.empty((N, C, size, size), dtype=np.float32)
    for n in range(N):
        for c in range(C):
            img = Image.fromarray(np.ascontiguousarray(x[n, c], dtype=np.float32))  # mode "F"
            out[n, c] = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    return out


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None, list[str] | None]:
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z:
            raise ValueError(f"{path} has no 'images' array (found {sorted(z.files)})")
        images = _to_unit(_to_nchw(z["images"]))
        labels = z["labels"].astype(np.int64) if "labels" in z else None
        captions = [str(c) for c in z["captions"]] if "captions" in z else None
        names = [str(c) for c in z["class_names"]] if "class_names" in z else None
    return images, labels, captions, names


def _folder_captions(root: Path, files: list[Path]) -> list[str] | None:
    meta = root / "metadata.jsonl"
    if meta.exists():
        table = {}
        for line in meta.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                table[row["file_name"]] = str(row.get("text", row.get("caption", "")))
        missing = [str(f.relative_to(root)) for f in files if str(f.relative_to(root)) not in table]
        if missing:
            raise ValueError(f"{meta} has no caption for {missing[:3]}")
        return [table[str(f.relative_to(root))] for f in files]
    sidecars = [f.with_suffix(".txt") for f in files]
    if any(s.exists() for s in sidecars):
        return [s.read_text(encoding="utf-8").strip() if s.exists() else "" for s in sidecars]
    return None


def _load_folder(root: Path, grey: bool | None):
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 3:
        raise ValueError(f"found {len(files)} PNG/JPEG files under {root}; need at least 3")
    pics = [Image.open(f) for f in files]
    if grey is None:
        grey = all(p.mode in ("L", "1", "I", "I;16") for p in pics)
    mode = "L" if grey else "RGB"
    sizes = {p.size for p in pics}
    if len(sizes) > 1:  # bring every file to the smallest square first; the spec size is applied later
        s = min(min(sz) for sz in sizes)
        pics = [_square(p, s) for p in pics]
    arrays = np.stack([np.asarray(p.convert(mode)) for p in pics])
    images = _to_unit(_to_nchw(arrays))
    subdirs = [f.relative_to(root).parts[0] if len(f.relative_to(root).parts) > 1 else None for f in files]
    names, labels = None, None
    if all(subdirs):
        names = sorted(set(subdirs))
        labels = np.array([names.index(s) for s in subdirs], dtype=np.int64)
    return images, labels, _folder_captions(root, files), names


def _square(p, s: int):
    from PIL import Image

    w, h = p.size
    m = min(w, h)
    box = ((w - m) // 2, (h - m) // 2, (w - m) // 2 + m, (h - m) // 2 + m)
    return p.crop(box).resize((s, s), Image.Resampling.BILINEAR)


def load_collection(path: str | Path, *, image_size: int | None = None, grey: bool | None = None):
    """(images [N, C, S, S] in [−1, 1], labels [N] (−1 unknown), captions or None, class names or None)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"data path {str(path)!r} does not exist")
    if path.is_file() and path.suffix == ".npz":
        images, labels, captions, names = _load_npz(path)
    elif path.is_dir():
        images, labels, captions, names = _load_folder(path, grey)
    else:
        raise ValueError(f"data path {str(path)!r} must be a folder of PNG/JPEG files or an .npz file")
    if grey is True and images.shape[1] == 3:
        images = images.mean(1, keepdims=True)
    elif grey is False and images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    native = min(images.shape[2:])
    size = image_size or (native if native in _KEEP_SIZES and images.shape[2] == images.shape[3] else 16)
    images = _resize(images, size)
    N = len(images)
    labels = np.full(N, -1, dtype=np.int64) if labels is None else labels
    if len(labels) != N or (captions is not None and len(captions) != N):
        raise ValueError(f"{N} images but {len(labels)} labels / {len(captions or [])} captions")
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

"""Sample grids as PNG files (Pillow, imported lazily; the ``plots`` extra provides it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from diffmem.io import atomic_write_bytes

__all__ = ["grid_array", "save_grid"]


def grid_array(tiles: Tensor, *, scale: int = 4, pad: int = 2) -> np.ndarray:
    """[R, K, C, H, W] images in [−1, 1] (NaN = empty tile) → uint8 [rows, cols, 3] with grey borders."""
    R, K, C, H, W = tiles.shape
    x = tiles.detach().float().clamp(-1, 1).cpu().numpy()
    empty = np.isnan(x).all(axis=(2, 3, 4))
    x = np.nan_to_num((x + 1) * 127.5).round().astype(np.uint8)
    x = np.repeat(x, 3, axis=2) if C == 1 else x
    x = x.repeat(scale, axis=3).repeat(scale, axis=4)
    h, w = H * scale, W * scale
    out = np.full((R * (h + pad) + pad, K * (w + pad) + pad, 3), 96, dtype=np.uint8)
    for r in range(R):
        for k in range(K):
            if not empty[r, k]:
                y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
                out[y0:y0 + h, x0:x0 + w] = x[r, k].transpose(1, 2, 0)
    return out


def save_grid(path: str | Path, tiles: Tensor, *, scale: int = 4) -> Path:
    """Write :func:`grid_array` of ``tiles`` as a PNG (atomically)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(grid_array(tiles, scale=scale)).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())

"""Sample grids as PNG files (Pillow, imported lazily; the ``plots`` extra provides it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from diffmem.io import atomic_write_bytes

__all__ = ["grid_array", "save_grid", "save_labelled_grid", "MARK_COLOURS"]


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


MARK_COLOURS = {0: (96, 96, 96), 1: (220, 40, 40), 2: (255, 160, 0)}  # none, copy, region-only copy


def save_labelled_grid(path: str | Path, tiles: Tensor, row_labels: list[str], col_labels: list[str],
                       marks: np.ndarray, *, scale: int = 4, label_width: int = 330) -> Path:
    """A sample grid with a text label left of each row, a header per column and a coloured border per tile.

    ``tiles`` [R, K, C, H, W] in [−1, 1] (NaN = empty); ``marks`` [R, K] ints, a key of :data:`MARK_COLOURS`
    (grey: no copy, red: copy, orange: template region only)."""
    import io

    from PIL import Image, ImageDraw

    R, K = tiles.shape[:2]
    if len(row_labels) != R or len(col_labels) != K or tuple(marks.shape) != (R, K):
        raise ValueError(f"{R}x{K} tiles need {R} row labels, {K} column labels and [{R}, {K}] marks, got "
                         f"{len(row_labels)}, {len(col_labels)} and {tuple(marks.shape)}")
    pad, head = 4, 14
    body = grid_array(tiles, scale=scale, pad=pad)
    h, w = tiles.shape[-2] * scale, tiles.shape[-1] * scale
    for r in range(R):
        for k in range(K):
            y0, x0 = pad + r * (h + pad), pad + k * (w + pad)
            body[y0 - 2:y0 + h + 2, [x0 - 2, x0 - 1, x0 + w, x0 + w + 1]] = MARK_COLOURS[int(marks[r, k])]
            body[[y0 - 2, y0 - 1, y0 + h, y0 + h + 1], x0 - 2:x0 + w + 2] = MARK_COLOURS[int(marks[r, k])]
    canvas = Image.new("RGB", (label_width + body.shape[1], head + body.shape[0]), (255, 255, 255))
    canvas.paste(Image.fromarray(body), (label_width, head))
    draw = ImageDraw.Draw(canvas)
    for k, text in enumerate(col_labels):
        draw.text((label_width + pad + k * (w + pad), 1), text, fill=(0, 0, 0))
    for r, text in enumerate(row_labels):
        draw.text((2, head + pad + r * (h + pad) + h // 2 - 6), text, fill=(0, 0, 0))
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())

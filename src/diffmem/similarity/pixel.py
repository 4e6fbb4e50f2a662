"""Pixel-space similarities between generated images x [N, C, H, W] and training images y [M, C, H, W].

Every ``pairwise_*`` function returns an [N, M] matrix and every plain function the matched-pair value [N] (x_i vs
y_i). Distances are computed from differences (never ‖x‖² + ‖y‖² − 2x·y), so an exact copy gives exactly 0;
for ranking against a large training set use :mod:`diffmem.similarity.retrieval` instead.

- ``l2``: ‖x − y‖₂ over all pixels and channels.
- ``normalized_l2``: ‖x − y‖₂ / √D, the per-dimension (RMS) scale of Carlini et al. (USENIX Security 2023), so
  values do not grow with resolution.
- ``cosine``: ⟨x, y⟩ / (‖x‖‖y‖) of the flattened images (0 for an all-zero image).
- ``tiled_l2``: Carlini et al.'s tiled distance: split both images into a ``grid`` × ``grid`` array of tiles
  (512² → 16 tiles of 128² for ``grid=4``), take the normalized L2 per tile and the **max** over tiles, so a
  shared background cannot make two different images look close. When H or W is not divisible by ``grid`` the
  tiles differ by at most one row/column (``torch.tensor_split``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_images", "l2", "pairwise_l2", "normalized_l2", "pairwise_normalized_l2", "cosine",
           "pairwise_cosine", "tiled_l2", "pairwise_tiled_l2", "PAIRWISE", "HIGHER_IS_SIMILAR"]


def check_images(x: Tensor, y: Tensor, *, paired: bool = False, ndim: int | None = None) -> None:
    """Raise ValueError unless x, y are non-empty finite image batches of one item shape (and size, if paired)."""
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, Tensor) or t.ndim < 2 or t.shape[0] == 0 or t[0].numel() == 0:
            raise ValueError(f"{name} must be a non-empty batch [N, ...], got {getattr(t, 'shape', type(t).__name__)}")
        if ndim is not None and t.ndim != ndim:
            raise ValueError(f"{name} must have {ndim} dims [N, C, H, W], got shape {tuple(t.shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf")
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"image sizes or channels differ: x items {tuple(x.shape[1:])} "
                         f"vs y items {tuple(y.shape[1:])}")
    if paired and len(x) != len(y):
        raise ValueError(f"paired metrics need equal batch sizes, got {len(x)} and {len(y)}")


def _flat_pair(x: Tensor, y: Tensor, paired: bool) -> tuple[Tensor, Tensor]:
    check_images(x, y, paired=paired)
    dtype = torch.promote_types(x.dtype, y.dtype)
    dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
    return x.reshape(len(x), -1).to(dtype), y.reshape(len(y), -1).to(y.device, dtype)


def _cdist(a: Tensor, b: Tensor) -> Tensor:
    # the difference-based kernel: exact zeros for copies, no [N, M, D] temporary
    return torch.cdist(a[None], b[None], compute_mode="donot_use_mm_for_euclid_dist")[0]


def l2(x: Tensor, y: Tensor) -> Tensor:
    """‖x_i − y_i‖₂ [N]."""
    a, b = _flat_pair(x, y, True)
    return (a - b).norm(dim=1)


def pairwise_l2(x: Tensor, y: Tensor) -> Tensor:
    """‖x_i − y_j‖₂ [N, M].

    >>> pairwise_l2(torch.zeros(1, 1, 2, 2), torch.ones(2, 1, 2, 2)).tolist()
    [[2.0, 2.0]]
    """
    return _cdist(*_flat_pair(x, y, False))


def normalized_l2(x: Tensor, y: Tensor) -> Tensor:
    """‖x_i − y_i‖₂ / √D [N]."""
    return l2(x, y) / x[0].numel() ** 0.5


def pairwise_normalized_l2(x: Tensor, y: Tensor) -> Tensor:
    """‖x_i − y_j‖₂ / √D [N, M]."""
    return pairwise_l2(x, y) / x[0].numel() ** 0.5


def cosine(x: Tensor, y: Tensor) -> Tensor:
    """cos(x_i, y_i) [N] of the flattened images."""
    a, b = _flat_pair(x, y, True)
    return (torch.nn.functional.normalize(a, dim=1) * torch.nn.functional.normalize(b, dim=1)).sum(1)


def pairwise_cosine(x: Tensor, y: Tensor) -> Tensor:
    """cos(x_i, y_j) [N, M] of the flattened images."""
    a, b = _flat_pair(x, y, False)
    return torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T


def _tiles(x: Tensor, grid: int) -> list[Tensor]:
    """The ``grid`` × ``grid`` tiles of x [N, C, H, W], each flattened to [N, D_tile]."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ValueError(f"grid must be a positive int, got {grid!r}")
    if x.ndim != 4 or min(x.shape[-2:]) < grid:
        raise ValueError(f"tiled_l2 needs images [N, C, H, W] with H, W >= grid={grid}, got {tuple(x.shape)}")
    return [t.reshape(len(x), -1) for rows in x.tensor_split(grid, dim=2) for t in rows.tensor_split(grid, dim=3)]


def tiled_l2(x: Tensor, y: Tensor, *, grid: int = 4) -> Tensor:
    """max over tiles of the per-tile normalized L2 between x_i and y_i [N] (Carlini et al., 2023)."""
    check_images(x, y, paired=True, ndim=4)
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    pairs = zip(_tiles(x.to(dtype), grid), _tiles(y.to(dtype), grid), strict=True)
    return torch.stack([(a - b).norm(dim=1) / a.shape[1] ** 0.5 for a, b in pairs]).amax(0)


def pairwise_tiled_l2(x: Tensor, y: Tensor, *, grid: int = 4) -> Tensor:
    """max over tiles of the per-tile normalized L2 between x_i and y_j [N, M] (Carlini et al., 2023).

    >>> x = torch.zeros(1, 1, 4, 4); y = x.clone(); y[0, 0, 0, 0] = 1.0
    >>> float(pairwise_tiled_l2(x, y, grid=2))  # one tile of 4 pixels differs by 1 in one pixel
    0.5
    """
    check_images(x, y, ndim=4)
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    out = None
    for a, b in zip(_tiles(x.to(dtype), grid), _tiles(y.to(y.device, dtype), grid), strict=True):
        d = _cdist(a, b) / a.shape[1] ** 0.5
        out = d if out is None else torch.maximum(out, d)
    return out


# metric name → (pairwise function, higher value means more similar); the keys are recorded in results
PAIRWISE = {"l2": pairwise_l2, "normalized_l2": pairwise_normalized_l2, "cosine": pairwise_cosine,
            "tiled_l2": pairwise_tiled_l2}
HIGHER_IS_SIMILAR = {"l2": False, "normalized_l2": False, "cosine": True, "tiled_l2": False, "ssim": True,
                     "ms_ssim": True, "sscd": True}

"""Local (region) copy judgement: does a sample reproduce a fixed region of a training image, and only that?

Webster (2023) found "template verbatims": generations that copy a fixed part of a training image (a layout, a
logo) while the rest varies, which whole-image rules such as the 1/3 ratio rule of :mod:`.criteria` miss because
the varying part dominates the distance. Here the ratio rule ‖x − a₁‖ / ‖x − a₂‖ ≤ 1/3 is applied to the pixels
inside a mask (the template region) and, separately, to the pixels outside it (the rest), against the same
region of every training image; a *template copy* is a region copy whose nearest region is the template's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffmem.similarity.criteria import COPY_RATIO, nn_ratio

__all__ = ["check_mask", "masked_nn_ratio", "region_distances", "local_copy"]


def check_mask(mask: Tensor, shape) -> Tensor:
    """``mask`` as a bool tensor of the image shape [C, H, W] with pixels both inside and outside it."""
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ValueError(f"mask must be a bool tensor of the image shape {tuple(shape)}, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    if not bool(mask.any()) or bool(mask.all()):
        raise ValueError("mask must select some pixels and leave some out; use the whole-image rules otherwise")
    return mask


def masked_nn_ratio(queries: Tensor, refs: Tensor, mask: Tensor, **kw) -> tuple[Tensor, Tensor]:
    """(‖x_M − a₁‖ / ‖x_M − a₂‖ [N], index of a₁ in ``refs`` [N]) on the pixels M of ``mask`` [C, H, W].

    Distinct *regions* are compared (references sharing the region collapse into one, :func:`.nn_ratio`'s dedup),
    so the many training images that carry one template count as one region.

    >>> refs = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 5.0]]], [[[-1.0, 0.0]]]])   # [3, 1, 1, 2]
    >>> r, j = masked_nn_ratio(torch.tensor([[[[0.9, 9.0]]]]), refs, torch.tensor([[[True, False]]]))
    >>> [round(v, 3) for v in r.tolist()], j.tolist()
    ([0.053], [0])
    """
    mask = check_mask(mask, queries.shape[1:])
    return nn_ratio(queries[:, mask], refs[:, mask], **kw)


def region_distances(x: Tensor, y: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Root-mean-square distance of matched pairs inside and outside ``mask``: (inside [N], outside [N]).

    Per-pixel means, so a small region and a large rest are on one scale.

    >>> x, y = torch.zeros(1, 1, 2, 2), torch.tensor([[[[0.0, 2.0], [2.0, 2.0]]]])
    >>> region_distances(x, y, torch.tensor([[[True, False], [False, False]]]))
    (tensor([0.]), tensor([2.]))
    """
    mask = check_mask(mask, x.shape[1:])
    if x.shape != y.shape:
        raise ValueError(f"region_distances needs matched pairs of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    d2 = (x - y).square()
    return d2[:, mask].mean(1).sqrt(), d2[:, ~mask].mean(1).sqrt()


def local_copy(queries: Tensor, refs: Tensor, mask: Tensor, template: Tensor, *,
               threshold: float = COPY_RATIO) -> dict[str, Tensor]:
    """Region, rest and whole-image copy labels [N] of ``queries`` against ``refs`` for one template.

    Args:
        queries: [N, C, H, W] samples; refs: [M, C, H, W] distinct training images.
        mask: [C, H, W] bool, the template region; template: [C, H, W] an image that carries the template.
        threshold: the ratio rule's bound (1/3).

    Returns:
        ``region``: the masked ratio ≤ threshold and the nearest region is the template's (a template copy);
        ``rest``: the ratio on the pixels outside the mask ≤ threshold (some training image's rest is copied);
        ``whole``: the whole-image ratio ≤ threshold (some training image is copied entirely);
        ``region_only``: region and not whole (Webster's template verbatim).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"ratio threshold must be in (0, 1), got {threshold!r}")
    mask = check_mask(mask, queries.shape[1:])
    ratio, nearest = masked_nn_ratio(queries, refs, mask)
    is_template = (refs[nearest][:, mask] == template[mask]).all(1)
    region = (ratio <= threshold) & is_template
    rest = masked_nn_ratio(queries, refs, ~mask)[0] <= threshold
    whole = nn_ratio(queries.flatten(1), refs.flatten(1))[0] <= threshold
    return {"region": region, "rest": rest, "whole": whole, "region_only": region & ~whole}

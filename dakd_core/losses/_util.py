"""Shared shape handling for the losses (resizing, float32 for AMP, weighted means)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dakd_core.errors import TrainingError


def resize_bilinear(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of an NCHW map to `size` (no-op when already that size)."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize_nearest(x: torch.Tensor, size) -> torch.Tensor:
    """Nearest resize of an NHW map (labels, masks, weights) to `size`."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[-2:]) == size:
        return x
    dtype = x.dtype
    return F.interpolate(x[:, None].float(), size=size, mode="nearest")[:, 0].to(dtype)


def weighted_mean(per_pixel: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """sum(w * x) / sum(w); plain mean without weights; 0 (keeping the graph) when sum(w) == 0."""
    if weights is None:
        return per_pixel.mean()
    weights = weights.to(per_pixel.dtype)
    total = weights.sum()
    # sum(w) == 0: the numerator is 0, divided by 1; no branch on the device value (reading it would
    # wait for the GPU: a host sync in every step)
    return (per_pixel * weights).sum() / torch.where(total > 0, total, torch.ones_like(total))


def check_same_batch(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape[0] != b.shape[0] or a.shape[1] != b.shape[1]:
        raise TrainingError(
            f"{what}: student {tuple(a.shape)} and teacher {tuple(b.shape)} differ in batch or channels"
        )

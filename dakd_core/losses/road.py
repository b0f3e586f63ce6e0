"""ROAD (seed 003): target-guided distillation and spatial-aware adversarial adaptation.

- eq. 1  L_dist = 1/N * sum_{n,i,j} || x_nij - z_nij ||_2       (Euclidean norm over channels, NOT
  squared), x = segmenter features, z = frozen real-style model features, on TARGET images.
- eq. 2-3 L_spt = sum_m L_da(X_m^s, X_m^t),  L_da = mean BCE of a pixel-level domain classifier h_m
  over all activations of region m of both domains (source label 0, target 1).
- eq. 4  max_F min_h L_spt is one minimisation through a gradient reversal layer between F and h.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dakd_core.errors import TrainingError
from dakd_core.losses.adversarial import SOURCE_LABEL, TARGET_LABEL
from dakd_core.losses.feature import align_features

# sqrt(|d|^2 + eps): the norm's gradient d/|d| is undefined at d == 0, which is exactly where
# training starts (the segmenter begins as a copy of the frozen model).
NORM_EPS = 1e-8


def target_guided_distillation(features: torch.Tensor, frozen_features: torch.Tensor) -> torch.Tensor:
    """eq. 1: mean over the N*H*W positions of sqrt(sum_c (x - z)^2 + eps); z is detached."""
    x, z = align_features(features, frozen_features)
    return torch.sqrt(((x - z) ** 2).sum(dim=1) + NORM_EPS).mean()


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff: float):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; backward multiplies the gradient by -coeff (DANN's reversal layer)."""
    return _GradientReversal.apply(x, coeff)


def region_bounds(size: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of `parts` near-equal bands of `size` pixels (the first bands get the remainder)."""
    if parts < 1 or parts > size:
        raise TrainingError(f"cannot split {size} feature rows/columns into {parts} regions")
    base, extra = divmod(size, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def grid_regions(height: int, width: int, grid: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Row-major (rows x cols) regions of an H x W map as (row slice, column slice) pairs."""
    rows, cols = grid
    return [
        (slice(r0, r1), slice(c0, c1))
        for r0, r1 in region_bounds(height, rows)
        for c0, c1 in region_bounds(width, cols)
    ]


class RegionDomainClassifiers(nn.Module):
    """One pixel-level domain classifier (1x1 convs C -> hidden -> 1) per grid region.

    forward(features) applies classifier m to the features of region m and returns the
    (N, 1, H, W) map of domain logits assembled from all regions.
    """

    def __init__(self, in_channels: int, grid: tuple[int, int] = (3, 3), hidden: int = 256):
        super().__init__()
        self.grid = tuple(grid)
        self.classifiers = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, hidden, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(hidden, 1, 1))
            for _ in range(self.grid[0] * self.grid[1])
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        rows = []
        regions = grid_regions(features.shape[-2], features.shape[-1], self.grid)
        cols = self.grid[1]
        for r in range(self.grid[0]):
            parts = [self.classifiers[r * cols + c](features[..., regions[r * cols + c][0], regions[r * cols + c][1]])
                     for c in range(cols)]
            rows.append(torch.cat(parts, dim=-1))
        return torch.cat(rows, dim=-2)


def spatial_aware_loss(
    classifiers: RegionDomainClassifiers, source_features: torch.Tensor, target_features: torch.Tensor,
    reverse_coeff: float = 1.0,
) -> torch.Tensor:
    """eqs. 2-3: sum over regions m of the mean BCE of h_m on region m's source (label 0) and
    target (label 1) activations. The features pass a gradient reversal layer first, so one
    backward trains h to separate the domains and the feature extractor to confuse it."""
    if source_features.shape[1:] != target_features.shape[1:]:
        raise TrainingError(
            f"spatial-aware loss: source {tuple(source_features.shape)} and target "
            f"{tuple(target_features.shape)} feature maps differ; use one crop size for both domains"
        )
    n = source_features.shape[0]
    # one call on both domains: a DDP-wrapped module must run once per backward
    logits = classifiers(grad_reverse(torch.cat([source_features, target_features]).float(), reverse_coeff))
    labels = torch.full_like(logits, TARGET_LABEL)
    labels[:n] = SOURCE_LABEL
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    grid = getattr(classifiers, "module", classifiers).grid  # through a DDP wrapper
    per_region = [bce[..., rows, cols].mean() for rows, cols in grid_regions(bce.shape[-2], bce.shape[-1], grid)]
    return torch.stack(per_region).sum()  # eq. 3: each region's mean over both domains' activations

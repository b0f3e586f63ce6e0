"""AdaptSegNet's fully convolutional discriminator and what it is fed."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dakd_core.errors import ConfigError, TrainingError

DISCRIMINATOR_INPUTS = ("softmax", "entropy")


class Discriminator(nn.Module):
    """Five 4x4 stride-2 convs, C -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1, LeakyReLU(0.2) between.

    Output: one raw logit per patch, (N, 1, h/32, w/32) (floored per layer) - pair it with
    `bce_adversarial`. As in AdaptSegNet, feed it maps upsampled to the image size (see
    `discriminator_input(..., size=)`): stride-8 logits of small images are too small for 5 layers.
    """

    MIN_SIZE = 32  # each layer floors h/2; a 4x4 kernel needs >= 2 input pixels at the last one

    def __init__(self, in_channels: int, ndf: int = 64):
        super().__init__()
        widths = [in_channels, ndf, ndf * 2, ndf * 4, ndf * 8]
        layers: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x.shape[-2:])
        return self.net(x)

    @classmethod
    def check_size(cls, hw) -> None:
        if min(hw) < cls.MIN_SIZE:
            raise TrainingError(
                f"discriminator input {tuple(hw)} is smaller than {cls.MIN_SIZE} pixels; "
                "upsample the prediction towards the image size first (AdaptConfig.d_input_scale: the fraction "
                "of the crop the maps are resized to)"
            )


def discriminator_input(
    logits: torch.Tensor, kind: str = "softmax", size: tuple[int, int] | None = None
) -> torch.Tensor:
    """What the discriminator sees of a prediction (logits first resized bilinearly to `size`).

    softmax (AdaptSegNet): P = softmax(logits) over classes.
    entropy (ADVENT):      I = -P * log P / log C, the weighted self-information per class,
                           normalised to [0, 1] as ADVENT does. Computed as -P * log_softmax(logits):
                           log P stays finite, so a class with P == 0 contributes 0, never NaN.
    """
    if size is not None and tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    if kind == "softmax":
        return F.softmax(logits, dim=1)
    if kind == "entropy":
        num_classes = logits.shape[1]
        scale = math.log(num_classes) if num_classes > 1 else 1.0
        return -F.softmax(logits, dim=1) * F.log_softmax(logits, dim=1) / scale
    raise ConfigError(f"discriminator input kind must be one of {DISCRIMINATOR_INPUTS}, got '{kind}'")

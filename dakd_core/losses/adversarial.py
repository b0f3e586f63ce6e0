"""Adversarial loss of output-space adaptation (AdaptSegNet / ADVENT).

Label convention (AdaptSegNet's code): SOURCE = 0, TARGET = 1.
- discriminator step: bce_adversarial(D(source maps), True) + bce_adversarial(D(target maps), False)
- segmenter step (eq. 2, L_adv = -sum log D(P_t) "looks like source"):
  bce_adversarial(D(target maps), True) - BCE of the target prediction towards the SOURCE label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SOURCE_LABEL = 0.0
TARGET_LABEL = 1.0


def bce_adversarial(d_out: torch.Tensor, is_source: bool) -> torch.Tensor:
    """Mean binary cross-entropy of raw discriminator logits against the domain label:

        L = -mean[ y log sigmoid(d) + (1 - y) log(1 - sigmoid(d)) ],  y = 0 if is_source else 1
    """
    d_out = d_out.float()
    target = torch.full_like(d_out, SOURCE_LABEL if is_source else TARGET_LABEL)
    return F.binary_cross_entropy_with_logits(d_out, target)

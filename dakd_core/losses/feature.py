"""Feature distillation losses (thesis eqs. 3.6-3.9; ROAD's target-guided distillation is 3.6).

Student maps are aligned to the teacher's: an optional `FeatureAdapter` (1x1 conv) maps student
channels to teacher channels, then the student map is bilinearly resized to the teacher's size.
The teacher side is detached: gradients flow into the student (and adapter) only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dakd_core.errors import TrainingError
from dakd_core.losses._util import resize_bilinear


class FeatureAdapter(nn.Module):
    """1x1 convolution from student to teacher channels (FitNets' regressor); train it with the student."""

    def __init__(self, student_channels: int, teacher_channels: int):
        super().__init__()
        self.proj = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def align_features(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor, adapter: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(student mapped to the teacher's channels and size, detached teacher), both float32."""
    s = student_feat if adapter is None else adapter(student_feat)
    t = teacher_feat.detach().float()
    s = resize_bilinear(s.float(), t.shape[-2:])
    if s.shape != t.shape:
        raise TrainingError(
            f"feature distillation: student {tuple(s.shape)} vs teacher {tuple(t.shape)}; "
            "pass a FeatureAdapter(student_channels, teacher_channels) when channel counts differ"
        )
    return s, t


def l2_feature(student_feat: torch.Tensor, teacher_feat: torch.Tensor, adapter: nn.Module | None = None) -> torch.Tensor:
    """Eq. 3.6: 1/(B C H W) * sum (F^S - F^T)^2."""
    s, t = align_features(student_feat, teacher_feat, adapter)
    return ((s - t) ** 2).mean()


def cwd_loss(
    student_feat: torch.Tensor, teacher_feat: torch.Tensor, tau: float = 4.0, adapter: nn.Module | None = None
) -> torch.Tensor:
    """Channel-wise distillation, eqs. 3.7-3.8:

        phi(F_c) = softmax over the H*W positions of F_c / tau   (per sample, per channel)
        L = tau^2 / (B C) * sum_{b,c} sum_i phi(F^T_bc)_i * log(phi(F^T_bc)_i / phi(F^S_bc)_i)
    """
    s, t = align_features(student_feat, teacher_feat, adapter)
    b, c = t.shape[:2]
    log_s = F.log_softmax(s.reshape(b, c, -1) / tau, dim=-1)
    log_t = F.log_softmax(t.reshape(b, c, -1) / tau, dim=-1)
    kl = F.kl_div(log_s, log_t, reduction="sum", log_target=True)
    return kl * (tau * tau) / (b * c)


def lad_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, adapter: nn.Module | None = None) -> torch.Tensor:
    """Layer-normalised feature distance (thesis eq. 3.9, with the square the OCR'd formula lost):

        L = 1/B * sum_b || F^S_b / ||F^S_b||_2 - F^T_b / ||F^T_b||_2 ||_2^2

    where F_b is sample b's map flattened over C, H, W. Ranges over [0, 4]; 0 iff the maps are
    positively proportional.
    """
    s, t = align_features(student_feat, teacher_feat, adapter)
    s = F.normalize(s.flatten(1), dim=1)
    t = F.normalize(t.flatten(1), dim=1)
    return ((s - t) ** 2).sum(dim=1).mean()

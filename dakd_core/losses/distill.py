"""DAKD's distillation losses (seed 000, eqs. 3-6) and the border-weighted KL (thesis eq. 3.5).

Teachers arrive as PROBABILITY maps (the teacher cache stores softmax outputs). Two defects of the
public DAKD code are avoided on purpose and tested:
- its KL fed teacher *log*-probabilities as kl_div's target; here the target is a distribution;
- its MSE compared log-probabilities; here it compares probabilities, as eq. 5 says.
Everything is computed in float32 so it stays finite under AMP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dakd_core.errors import TrainingError
from dakd_core.losses._util import check_same_batch, resize_bilinear, resize_nearest, weighted_mean
from dakd_core.losses.segmentation import IGNORE_INDEX, segmentation_loss

# Teacher probabilities are clamped to this before the log: a one-hot (0/1) teacher would
# otherwise give log 0 = -inf and 0 * -inf = NaN. 1e-8 is representable in float32.
PROB_EPS = 1e-8


def _kl_per_pixel(student_logits: torch.Tensor, teacher_probs: torch.Tensor, T: float) -> torch.Tensor:
    """(N, h, w) map of T^2 * sum_c q_c (log q_c - log p^S_c), with
    p^S = softmax(s / T) and q = softmax(log(clamp(p_t)) / T) (the teacher sharpened/softened by T;
    q == p_t for T == 1 up to the clamp)."""
    log_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_teacher = F.log_softmax(teacher_probs.float().clamp_min(PROB_EPS).log() / T, dim=1)
    kl = F.kl_div(log_student, log_teacher, reduction="none", log_target=True)
    return kl.sum(dim=1) * (T * T)


# How the per-pixel KL is reduced over the C classes (docs/methods.md, "KL direction and scale"):
# "class_mean" divides the per-pixel KL by C, which is what the DAKD reference code's
# nn.KLDivLoss(reduction="mean") computes and the scale its lambda_KL 0.1 / 0.01 were tuned at;
# "class_sum" is the textbook per-pixel KL (C times larger at the same lambda: 19x for Cityscapes).
KL_REDUCTIONS = ("class_mean", "class_sum")


def kl_distill(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    T: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "class_sum",
) -> torch.Tensor:
    """L_KL = T^2 / |V| * sum_{i in V} KL( q_i || p^S_i ) [/ C]   (seed 000 eqs. 3-4, thesis eq. 3.4).

    Direction: KL(teacher || student), q = softmax(log p_t / T) the teacher's (tempered)
    distribution, p^S = softmax(s / T) the student's: Hinton's distillation and thesis eq. 3.4
    (seed 000's eq. 3 writes KL(q_s || q_t); its reference code computes teacher || student).
    Reduction: the mean over the used pixels V of the per-pixel KL summed over classes
    (`reduction="class_sum"`), or that divided by the number of classes C ("class_mean", the
    DAKD reference code's element mean; `DistillConfig.kl_reduction` chooses, default class_sum).

    - `teacher_probs` (N, C, H', W') is bilinearly resized to the student's (h, w) if they differ;
    - `mask` (N, H'', W'') bool, True = use the pixel (e.g. the teacher cache's non-ignored pixels),
      nearest-resized to (h, w); V = all pixels without a mask.
    Zero iff the student's distribution equals the teacher's at every used pixel.
    """
    if reduction not in KL_REDUCTIONS:
        raise TrainingError(f"kl_distill: reduction '{reduction}' is not one of {KL_REDUCTIONS}")
    check_same_batch(student_logits, teacher_probs, "kl_distill")
    teacher_probs = resize_bilinear(teacher_probs.float(), student_logits.shape[-2:])
    weights = None
    if mask is not None:
        weights = resize_nearest(mask.bool(), student_logits.shape[-2:]).float()
    loss = weighted_mean(_kl_per_pixel(student_logits, teacher_probs, T), weights)
    return loss / student_logits.shape[1] if reduction == "class_mean" else loss


def border_weighted_kl(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    weights: torch.Tensor,
    T: float = 1.0,
) -> torch.Tensor:
    """Thesis eq. 3.5: 1/sum(alpha) * sum_i alpha_i * T^2 * KL(q_i || p^S_i).

    `weights` alpha (N, H, W) come from `border_weights(labels)` (0 on ignored pixels); student
    logits and teacher probabilities are bilinearly resized to the weights' size.
    """
    check_same_batch(student_logits, teacher_probs, "border_weighted_kl")
    size = weights.shape[-2:]
    student_logits = resize_bilinear(student_logits.float(), size)
    teacher_probs = resize_bilinear(teacher_probs.float(), size)
    return weighted_mean(_kl_per_pixel(student_logits, teacher_probs, T), weights.float())


def mse_distill(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_MSE = mean over classes and used pixels of (softmax(s) - p_t)^2  (eq. 5; nn.MSELoss's mean).

    Both sides are probabilities. When sizes differ the SMALLER probability map is bilinearly
    upsampled to the larger one (eq. 5: "bilinear upsampling first"); a bilinear mix of
    distributions is still a distribution. `mask` as in `kl_distill` (resized to the common size).
    """
    check_same_batch(student_logits, teacher_probs, "mse_distill")
    student_probs = F.softmax(student_logits.float(), dim=1)
    teacher_probs = teacher_probs.float()
    s_h, s_w = student_probs.shape[-2:]
    t_h, t_w = teacher_probs.shape[-2:]
    size = (s_h, s_w) if s_h * s_w >= t_h * t_w else (t_h, t_w)
    student_probs = resize_bilinear(student_probs, size)
    teacher_probs = resize_bilinear(teacher_probs, size)
    per_pixel = ((student_probs - teacher_probs) ** 2).mean(dim=1)
    weights = None if mask is None else resize_nearest(mask.bool(), size).float()
    return weighted_mean(per_pixel, weights)


def pseudo_labels(
    teacher_labels: torch.Tensor,
    confidence: torch.Tensor | None = None,
    threshold: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """The teacher's argmax labels (N, H, W) as L_pseudoT's targets: with `confidence` (N, H, W,
    bilinearly resized to the labels if it differs) and `threshold` > 0, pixels whose teacher
    confidence is below `threshold` become `ignore_index`."""
    labels = teacher_labels.long()
    if confidence is not None and threshold > 0.0:
        confidence = confidence.to(labels.device).float()
        if confidence.shape != labels.shape:
            confidence = resize_bilinear(confidence[:, None], labels.shape[-2:])[:, 0]
        labels = torch.where(confidence >= threshold, labels, torch.full_like(labels, ignore_index))
    return labels


def pseudo_label_ce(
    student_logits: torch.Tensor,
    teacher_labels: torch.Tensor,
    confidence: torch.Tensor | None = None,
    threshold: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """L_pseudoT = CE(student, argmax teacher) (eq. 6), i.e. `segmentation_loss` on `pseudo_labels`:
    pixels labelled `ignore_index` and pixels under the confidence `threshold` do not count.
    Logits are resized to the labels' size."""
    labels = pseudo_labels(teacher_labels, confidence, threshold, ignore_index)
    return segmentation_loss(student_logits, labels, ignore_index=ignore_index)

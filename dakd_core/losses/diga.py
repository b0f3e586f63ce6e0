"""DiGA (seed 001): symmetric distillation, CrDoMix, bilateral-consensus pseudo labels.

- eq. 4  L_distil = mean H(p+_s, p~_s) + alpha * mean H(p~+_s, p_s),  H(a, b) = -sum_c a log b,
         p = student on the clean source x_s, p~ = student on the strong view, + = EMA teacher.
- eq. 6  x_cdm = x~_s * M + x_s2t * (1 - M): the strong view mixed with the same source image in
         target style. Target styling here is per-channel mean/std transfer (AdaIN-like, on the
         normalised image) from one target image: cheap, geometry-preserving, so the source
         labels stay valid for every pixel. M is a ClassMix mask: half the classes present in y_s.
- eq. 7  rho_k = mean feature of class k pixels (source labels) -> prototypes Lambda.
- eq. 8  y_feat = argmin_k || phi(x_t) - rho_k ||_2 per pixel; bilateral consensus: keep y_feat
         where it equals the warm-up model's argmax, else ignore (255). No confidence threshold.
- eq. 10 rho <- delta * (delta * rho + (1 - delta) * rho'_s) + (1 - delta) * rho'_t
         (rho'_t from the target's consensus labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dakd_core.labels import IGNORE_INDEX
from dakd_core.losses._util import resize_bilinear, resize_nearest

STYLE_EPS = 1e-5


def soft_cross_entropy(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """mean over pixels of H(p_t, p_s) = -sum_c softmax(t) log softmax(s); teacher detached and
    resized to the student's map."""
    t = resize_bilinear(teacher_logits.detach().float(), student_logits.shape[-2:])
    return -(F.softmax(t, dim=1) * F.log_softmax(student_logits.float(), dim=1)).sum(dim=1).mean()


def symmetric_distillation(
    student_clean: torch.Tensor, student_strong: torch.Tensor,
    teacher_clean: torch.Tensor, teacher_strong: torch.Tensor, alpha: float = 1.0,
) -> torch.Tensor:
    """eq. 4 on logits: H(teacher(clean), student(strong)) + alpha * H(teacher(strong), student(clean))."""
    return soft_cross_entropy(teacher_clean, student_strong) + alpha * soft_cross_entropy(teacher_strong, student_clean)


def mean_std_style(source: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Per image and channel: (x - mean_x) / std_x * std_style + mean_style (style row n -> image n)."""
    dims = (-2, -1)
    mu_s, sd_s = source.mean(dims, keepdim=True), source.std(dims, keepdim=True) + STYLE_EPS
    mu_t, sd_t = style.mean(dims, keepdim=True), style.std(dims, keepdim=True)
    return (source - mu_s) / sd_s * sd_t + mu_t


def class_mix_mask(labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(N, H, W) float mask, 1 on a random half (rounded up) of the classes present in each label
    map (ignore pixels never selected)."""
    masks = []
    for lab in labels:
        classes = lab.unique()
        classes = classes[classes != IGNORE_INDEX]
        order = torch.randperm(len(classes), generator=generator, device="cpu").to(classes.device)
        chosen = classes[order[: (len(classes) + 1) // 2]]
        masks.append(torch.isin(lab, chosen).float())
    return torch.stack(masks)


def crdomix(strong_source: torch.Tensor, styled_source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """eq. 6: x~_s * M + x_s2t * (1 - M), M (N, H, W) broadcast over channels."""
    m = mask[:, None].to(strong_source.dtype)
    return strong_source * m + styled_source * (1 - m)


def batch_prototypes(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """eq. 7: (num_classes, D) mean feature of each class's pixels (labels resized nearest to the
    feature map) and a bool (num_classes,) mask of the classes present."""
    feats = features.detach().float()
    lab = resize_nearest(labels, feats.shape[-2:]).reshape(-1)
    flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    keep = lab != IGNORE_INDEX
    lab, flat = lab[keep].long(), flat[keep]
    sums = torch.zeros(num_classes, flat.shape[1], device=flat.device).index_add_(0, lab, flat)
    counts = torch.bincount(lab, minlength=num_classes).float()
    present = counts > 0
    protos = sums / counts.clamp(min=1)[:, None]
    return protos, present


def nearest_prototype_labels(features: torch.Tensor, prototypes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """eq. 8: (N, h, w) index of the nearest valid prototype (L2) of every feature vector."""
    feats = features.detach().float()
    flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    dist = torch.cdist(flat, prototypes.float())
    dist[:, ~valid] = float("inf")
    n, _, h, w = feats.shape
    return dist.argmin(dim=1).reshape(n, h, w)


def consensus_labels(feature_labels: torch.Tensor, model_logits: torch.Tensor) -> torch.Tensor:
    """Bilateral consensus: the prototype label where the warm-up model's argmax (resized to the
    label map) agrees, IGNORE_INDEX elsewhere."""
    model_labels = resize_bilinear(model_logits.detach().float(), feature_labels.shape[-2:]).argmax(dim=1)
    return torch.where(model_labels == feature_labels, feature_labels, torch.full_like(feature_labels, IGNORE_INDEX))


def update_prototypes(
    prototypes: torch.Tensor, valid: torch.Tensor, batch: torch.Tensor, present: torch.Tensor, delta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One factor of eq. 10: rho_k <- delta * rho_k + (1 - delta) * rho'_k for the classes present
    in the batch; a class seen for the first time takes its batch prototype. Eq. 10 is this with
    the source batch prototypes, then with the target ones."""
    rho = prototypes.clone()
    fresh, seen = present & ~valid, present & valid
    rho[fresh] = batch[fresh]
    rho[seen] = delta * rho[seen] + (1 - delta) * batch[seen]
    return rho, valid | present

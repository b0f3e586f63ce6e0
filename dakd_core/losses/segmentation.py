"""Supervised segmentation losses (logits at any stride, labels at full resolution)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dakd_core.losses._util import resize_bilinear, weighted_mean

IGNORE_INDEX = 255
# Border weighting as in pyramidal SwiftNet (the thesis' ref. [30]): a pixel closer than
# BORDER_BINS[i] pixels to a region of another label gets BORDER_ALPHAS[i], farther ones the last.
BORDER_BINS = (4, 16, 64, 128)
BORDER_ALPHAS = (8.0, 6.0, 4.0, 2.0, 1.0)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy L = -1/|V| sum_{i in V} log softmax(z_i)[y_i], V = pixels with y != ignore.

    `logits` (N, C, h, w) are bilinearly resized (align_corners=False) to the labels' (N, H, W).
    Returns 0 (with a graph) when every pixel is ignored, instead of CE's NaN.
    """
    return segmentation_losses(logits, [labels], ignore_index)[0]


def segmentation_losses(logits: torch.Tensor, label_maps: list[torch.Tensor],
                        ignore_index: int = IGNORE_INDEX) -> list[torch.Tensor]:
    """`segmentation_loss` of one logit map against each of several label maps of one size, e.g.
    the ground truth and the teacher's pseudo-labels of a source batch: one bilinear resize and one
    log-softmax serve them all. Cross-entropy is the NLL of the log-softmax, so each value is the
    one its own `segmentation_loss` call gives."""
    shape = label_maps[0].shape
    if any(labels.shape != shape for labels in label_maps):
        raise ValueError(f"segmentation_losses: label maps of different shapes {[tuple(m.shape) for m in label_maps]}")
    logits = resize_bilinear(logits.float(), shape[-2:])
    if logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous():
        # The networks' channels-last maps are (pixels, classes) rows already: the 2-D kernels read
        # them in place, where the 4-D ones first copy to NCHW (same value; one CE at 64x128 with
        # 19 classes, forward + backward, 1 CPU thread, stride-2 logits: 16.9 -> 10.8 ms,
        # `benchmarks/bench_step_kernels.py`).
        logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        label_maps = [labels.reshape(-1) for labels in label_maps]
    log_probs = F.log_softmax(logits, dim=1)
    losses = []
    for labels in label_maps:
        labels = labels.long()
        # The mean over the labelled pixels as sum / count, 0 / 1 when none is (nll_loss's own mean
        # gives 0 / 0 = NaN): nothing is read back from the device, where a branch on a GPU value
        # would wait for the forward pass to finish (a host sync in every step).
        total = F.nll_loss(log_probs, labels, ignore_index=ignore_index, reduction="sum")
        losses.append(total / (labels != ignore_index).sum().clamp_min(1))
    return losses


def border_weights(
    labels: torch.Tensor,
    bins=BORDER_BINS,
    alphas=BORDER_ALPHAS,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Per-pixel weights alpha (N, H, W) from each pixel's L2 distance to the nearest other label.

    For every label value present, cv2.distanceTransform of its mask gives each member pixel the
    distance to the closest non-member pixel (the class border). alpha = alphas[k] for the first
    bin with distance < bins[k], else alphas[-1]; ignored pixels get alpha = 0.
    """
    if len(alphas) != len(bins) + 1:
        raise ValueError(f"border_weights needs len(alphas) == len(bins) + 1, got {len(alphas)} and {len(bins)}")
    lab = labels.detach().cpu().numpy()
    out = np.empty(lab.shape, dtype=np.float32)
    for n in range(lab.shape[0]):
        dist = np.zeros(lab.shape[1:], dtype=np.float32)
        for value in np.unique(lab[n]):
            mask = (lab[n] == value).astype(np.uint8)
            # distance from each mask pixel to the nearest 0 pixel (another label); a mask
            # covering the whole image has no border and gets a huge distance (lowest weight).
            d = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
            dist[mask.astype(bool)] = d[mask.astype(bool)]
        weight = np.full(dist.shape, alphas[-1], dtype=np.float32)
        for limit, alpha in zip(reversed(bins), reversed(alphas[:-1])):
            weight[dist < limit] = alpha
        weight[lab[n] == ignore_index] = 0.0
        out[n] = weight
    return torch.from_numpy(out).to(labels.device)


def border_focal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    gamma: float = 2.0,
    weights: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Focal-border loss (thesis eq. 3.3):

        L = 1/sum(alpha) * sum_{b,h,w} -alpha_bhw * (1 - p_bhw,y)^gamma * log p_bhw,y

    p = softmax of the logits bilinearly resized to the labels' size; alpha = `weights`
    (N, H, W) or `border_weights(labels)`; alpha is forced to 0 on ignored pixels.
    """
    logits = resize_bilinear(logits.float(), labels.shape[-2:])
    labels = labels.long()
    if weights is None:
        weights = border_weights(labels, ignore_index=ignore_index)
    valid = labels != ignore_index
    weights = weights.to(logits.device).float() * valid
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    log_p = F.log_softmax(logits, dim=1).gather(1, safe_labels[:, None])[:, 0]
    focal = (1.0 - log_p.exp()).clamp_min(0.0) ** gamma * -log_p
    return weighted_mean(focal, weights)

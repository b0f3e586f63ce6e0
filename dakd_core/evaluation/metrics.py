"""Segmentation metrics from accumulated statistics.

Everything is accumulated on the device the predictions live on (bincount of encoded pairs), so an
evaluation loop never moves per-pixel data to the host; only small tables (C x C, bins) are read
back at the end.

Conventions (those of the official Cityscapes script, so `dakd score` matches it):
- confusion matrix rows = ground truth, columns = prediction; ground-truth pixels equal to
  `ignore_index` are not counted at all.
- an optional extra "void" column holds valid ground-truth pixels predicted outside the taxonomy
  (e.g. 255 in a prediction PNG): they are false negatives of their ground-truth class and false
  positives of nobody.
- per-class IoU = TP / (TP + FP + FN); NaN when TP + FP + FN == 0 (class absent from both
  prediction and ground truth); mIoU is the mean over non-NaN classes.
All values are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

DEFAULT_ECE_BINS = 15  # as in the ACDC real-time students thesis (METHODS.md §6)
# Average precision as sklearn defines it (sum over thresholds of (R_k - R_k+1) * P_k, every distinct
# score a threshold) needs thresholds finer than the scores' spacing: with 10^4 bins two scores share
# a threshold only when they are within 1e-4. The thesis' 20 steps merged scores up to 0.05 apart
# (0.669 instead of 0.687 on its case; tests/test_metrics.py::test_auprc_is_sklearns_average_precision).
DEFAULT_PR_THRESHOLDS = 10_000


def confusion_matrix(
    pred: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
    void_column: bool = False,
) -> torch.Tensor:
    """Confusion matrix (int64, on pred's device) of integer predictions against labels.

    `pred` and `label` are integer tensors of the same shape (any layout: N x H x W, H x W...).
    Pixels whose label is `ignore_index` (or otherwise outside [0, num_classes)) are skipped.
    Predictions outside [0, num_classes) go to an extra last column when `void_column` is True
    (shape C x (C+1)); otherwise they are dropped (shape C x C).
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
    c = int(num_classes)
    label = label.reshape(-1).to(device=pred.device, dtype=torch.int64)
    pred = pred.reshape(-1).to(torch.int64)
    valid = (label >= 0) & (label < c) & (label != ignore_index)
    label = label[valid]
    pred = pred[valid]
    # Predictions outside the taxonomy are encoded as column c (void).
    pred = torch.where((pred >= 0) & (pred < c), pred, torch.full_like(pred, c))
    cm = torch.bincount(label * (c + 1) + pred, minlength=c * (c + 1)).reshape(c, c + 1)
    return cm if void_column else cm[:, :c].contiguous()


def _as_numpy(cm) -> np.ndarray:
    if isinstance(cm, torch.Tensor):
        cm = cm.detach().cpu().numpy()
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[1] < cm.shape[0]:
        raise ValueError(f"confusion matrix must be C x C or C x (C+1), got shape {cm.shape}")
    return cm


def per_class_iou(cm) -> np.ndarray:
    """IoU per ground-truth class (float64, NaN for classes absent from prediction and label)."""
    cm = _as_numpy(cm)
    c = cm.shape[0]
    tp = np.diag(cm[:, :c])
    fn = cm.sum(axis=1) - tp  # includes void predictions
    fp = cm[:, :c].sum(axis=0) - tp  # ignored ground truth never entered the matrix
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def miou_from_confusion(cm, classes: Sequence[int] | None = None) -> float:
    """Mean IoU over `classes` (default: all rows), NaN classes excluded; NaN if none is present."""
    iou = per_class_iou(cm)
    if classes is not None:
        iou = iou[list(classes)]
    return _nanmean(iou)


def pixel_accuracy(cm) -> float:
    """Correct pixels / labelled pixels (void predictions count as wrong)."""
    cm = _as_numpy(cm)
    total = cm.sum()
    return float(np.trace(cm[:, : cm.shape[0]]) / total) if total > 0 else math.nan


def per_class_accuracy(cm) -> np.ndarray:
    """Recall per class, NaN for classes without ground-truth pixels."""
    cm = _as_numpy(cm)
    tp = np.diag(cm[:, : cm.shape[0]])
    gt = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gt > 0, tp / np.where(gt > 0, gt, 1), np.nan)


def mean_class_accuracy(cm) -> float:
    return _nanmean(per_class_accuracy(cm))


# ---------------------------------------------------------------- calibration and ranking metrics


def calibration_histogram(
    probs: torch.Tensor, label: torch.Tensor, bins: int = DEFAULT_ECE_BINS, ignore_index: int = 255
) -> torch.Tensor:
    """(3, bins) float64 on probs' device: pixel count, summed confidence, correct count per bin.

    `probs` is N x C x H x W softmax output, `label` N x H x W. Confidence = max probability,
    bins are equal-width over [0, 1] (confidence 1.0 falls in the last bin).
    """
    conf, pred = probs.max(dim=1)
    label = label.to(probs.device)
    valid = label != ignore_index
    conf = conf[valid].to(torch.float64)
    correct = (pred[valid] == label[valid]).to(torch.float64)
    idx = (conf * bins).floor().clamp_(0, bins - 1).to(torch.int64)
    out = torch.zeros(3, bins, dtype=torch.float64, device=probs.device)
    out[0].index_add_(0, idx, torch.ones_like(conf))
    out[1].index_add_(0, idx, conf)
    out[2].index_add_(0, idx, correct)
    return out


def reliability_from_histogram(hist) -> dict:
    """Per-bin accuracy / mean confidence / count and ECE = sum_b |B_b|/N * |acc_b - conf_b|."""
    h = hist.detach().cpu().numpy() if isinstance(hist, torch.Tensor) else np.asarray(hist, float)
    count, conf_sum, correct = h
    n = count.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, correct / np.where(count > 0, count, 1), np.nan)
        conf = np.where(count > 0, conf_sum / np.where(count > 0, count, 1), np.nan)
    gaps = np.where(count > 0, np.abs(np.nan_to_num(acc) - np.nan_to_num(conf)), 0.0)
    ece = float((count / n * gaps).sum()) if n > 0 else math.nan
    return {"ece": ece, "bin_accuracy": acc, "bin_confidence": conf, "bin_count": count}


def ece_from_histogram(hist) -> float:
    return reliability_from_histogram(hist)["ece"]


def pr_histograms(
    probs: torch.Tensor,
    label: torch.Tensor,
    thresholds: int = DEFAULT_PR_THRESHOLDS,
    ignore_index: int = 255,
) -> torch.Tensor:
    """(2, C, T) int64 on probs' device: per class, histograms of p_c over T equal-width bins for
    all labelled pixels (row 0) and for the class's own pixels (row 1).

    Bin k holds scores in [k/T, (k+1)/T); thresholds are t_k = k/T, so the pixels scoring >= t_k
    are the suffix sum from bin k. Enough to compute precision/recall at every threshold."""
    n, c = probs.shape[:2]
    label = label.to(probs.device)
    valid = label != ignore_index
    p = probs.permute(0, 2, 3, 1)[valid]  # P x C
    lab = label[valid].to(torch.int64)
    bins = (p * thresholds).floor().clamp_(0, thresholds - 1).to(torch.int64)
    enc = torch.arange(c, device=probs.device) * thresholds + bins  # P x C
    all_hist = torch.bincount(enc.reshape(-1), minlength=c * thresholds)
    pos_enc = enc.gather(1, lab.clamp(0, c - 1).unsqueeze(1)).squeeze(1)[lab < c]
    pos_hist = torch.bincount(pos_enc, minlength=c * thresholds)
    return torch.stack([all_hist, pos_hist]).reshape(2, c, thresholds)


def auprc_from_histograms(hist) -> np.ndarray:
    """Average precision per class at the T thresholds: sum_k (R_k - R_{k+1}) * P_k, R_T = 0
    (sklearn.metrics.average_precision_score when no two distinct scores share a bin).

    NaN for classes without positive pixels."""
    h = hist.detach().cpu().numpy() if isinstance(hist, torch.Tensor) else np.asarray(hist)
    h = h.astype(np.float64)
    # suffix sums: pixels scoring >= t_k
    predicted = np.cumsum(h[0][:, ::-1], axis=1)[:, ::-1]
    tp = np.cumsum(h[1][:, ::-1], axis=1)[:, ::-1]
    positives = tp[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), 0.0)
        recall = tp / positives[:, None]
    recall_next = np.concatenate([recall[:, 1:], np.zeros((recall.shape[0], 1))], axis=1)
    ap = ((recall - recall_next) * precision).sum(axis=1)
    return np.where(positives > 0, ap, np.nan)


# ---------------------------------------------------------------- accumulator used by evaluate/score


class SegmentationMetrics:
    """Accumulates everything `evaluate` reports, on the device of the first batch.

    update(pred_or_probs, label): integer predictions (N x H x W) give the confusion matrix only;
    probabilities (N x C x H x W float) also give calibration and PR statistics.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        ece_bins: int = DEFAULT_ECE_BINS,
        pr_thresholds: int = DEFAULT_PR_THRESHOLDS,
    ):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.ece_bins = ece_bins
        self.pr_thresholds = pr_thresholds
        self.cm: torch.Tensor | None = None
        self.calibration: torch.Tensor | None = None
        self.pr: torch.Tensor | None = None

    @staticmethod
    def _add(acc: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        return x if acc is None else acc + x.to(acc.device)

    def update(self, output: torch.Tensor, label: torch.Tensor) -> None:
        if output.is_floating_point():
            if output.shape[1] != self.num_classes:
                raise ValueError(f"expected {self.num_classes} class channels, got {output.shape[1]}")
            probs = output.float()
            pred = probs.argmax(dim=1)
            self.calibration = self._add(
                self.calibration, calibration_histogram(probs, label, self.ece_bins, self.ignore_index)
            )
            self.pr = self._add(self.pr, pr_histograms(probs, label, self.pr_thresholds, self.ignore_index))
        else:
            pred = output
        cm = confusion_matrix(pred, label, self.num_classes, self.ignore_index, void_column=True)
        self.cm = self._add(self.cm, cm)

    def merge(self, other: "SegmentationMetrics") -> None:
        """Adds another accumulator's statistics (e.g. per-condition parts into the total)."""
        for name in ("cm", "calibration", "pr"):
            theirs = getattr(other, name)
            if theirs is not None:
                setattr(self, name, self._add(getattr(self, name), theirs))

    def compute(self, class_names: Sequence[str], subsets: dict[str, Sequence[int]] | None = None) -> dict:
        """Plain-JSON metrics: fractions, per-class dicts keyed by name, None where undefined."""
        if self.cm is None:
            raise ValueError("no pixels were accumulated")
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        iou = per_class_iou(self.cm)
        out = {
            "miou": _json_float(_nanmean(iou)),
            "pixel_accuracy": _json_float(pixel_accuracy(self.cm)),
            "mean_class_accuracy": _json_float(mean_class_accuracy(self.cm)),
            "per_class_iou": dict(zip(class_names, map(_json_float, iou))),
            "per_class_accuracy": dict(zip(class_names, map(_json_float, per_class_accuracy(self.cm)))),
            "labelled_pixels": int(self.cm.sum().item()),
        }
        for name, classes in (subsets or {}).items():
            out[f"miou_{name}"] = _json_float(miou_from_confusion(self.cm, classes))
        if self.calibration is not None:
            rel = reliability_from_histogram(self.calibration)
            out["ece"] = _json_float(rel["ece"])
            out["reliability"] = {
                "bins": self.ece_bins,
                "accuracy": [_json_float(v) for v in rel["bin_accuracy"]],
                "confidence": [_json_float(v) for v in rel["bin_confidence"]],
                "count": [int(v) for v in rel["bin_count"]],
            }
        if self.pr is not None:
            ap = auprc_from_histograms(self.pr)
            out["per_class_auprc"] = dict(zip(class_names, map(_json_float, ap)))
            out["mean_auprc"] = _json_float(_nanmean(ap))
        return out

    def confusion(self) -> np.ndarray:
        """The C x C part of the accumulated matrix (void predictions dropped), int64 on the host."""
        return self.cm[:, : self.num_classes].cpu().numpy().astype(np.int64)


def _json_float(v: float) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v

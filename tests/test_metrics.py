"""Metric values on hand-built cases."""

import math

import numpy as np
import pytest
import torch

from dakd_core.evaluation import metrics as M


def test_confusion_matrix_counts_and_ignore():
    label = torch.tensor([[0, 0, 1, 255], [2, 2, 1, 0]])
    pred = torch.tensor([[0, 1, 1, 2], [2, 0, 1, 255]])
    cm = M.confusion_matrix(pred, label, 3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # label 255 skipped, pred 255 dropped
    cmv = M.confusion_matrix(pred, label, 3, void_column=True)
    assert cmv.tolist() == [[1, 1, 0, 1], [0, 2, 0, 0], [1, 0, 1, 0]]


def test_iou_with_absent_class_and_void_prediction():
    label = torch.tensor([[0, 0, 1, 255], [2, 2, 1, 0]])
    pred = torch.tensor([[0, 1, 1, 2], [2, 0, 1, 255]])
    cm = M.confusion_matrix(pred, label, 4, void_column=True)  # class 3 absent everywhere
    iou = M.per_class_iou(cm)
    # class 0: TP 1, FN 2 (one ->1, one ->void), FP 1 (a 2 predicted as 0) -> 1/4
    # class 1: TP 2, FP 1, FN 0 -> 2/3 ; class 2: TP 1, FN 1, FP 0 (the ignored pixel) -> 1/2
    np.testing.assert_allclose(iou[:3], [1 / 4, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])
    assert M.miou_from_confusion(cm) == pytest.approx((1 / 4 + 2 / 3 + 1 / 2) / 3)
    assert M.miou_from_confusion(cm, classes=[1, 2]) == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert M.pixel_accuracy(cm) == pytest.approx(4 / 7)
    assert M.mean_class_accuracy(cm) == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)


def test_class_predicted_but_absent_from_ground_truth_has_zero_iou():
    label = torch.zeros(2, 2, dtype=torch.long)
    pred = torch.tensor([[0, 1], [0, 0]])
    iou = M.per_class_iou(M.confusion_matrix(pred, label, 3))
    np.testing.assert_allclose(iou[:2], [3 / 4, 0.0])
    assert math.isnan(iou[2])


def _probs_with_confidence(conf: float, correct: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Two-class probabilities whose max is `conf` at every pixel; the label agrees where `correct`."""
    n = correct.size
    probs = torch.zeros(1, 2, 1, n)
    probs[0, 0] = conf
    probs[0, 1] = 1 - conf
    label = torch.where(torch.from_numpy(correct), 0, 1).reshape(1, 1, n)
    return probs, label


def test_ece_calibrated_vs_overconfident():
    correct = np.array([True] * 80 + [False] * 20)
    calibrated = M.calibration_histogram(*_probs_with_confidence(0.8, correct))
    assert M.ece_from_histogram(calibrated) == pytest.approx(0.0, abs=1e-6)
    over = M.calibration_histogram(*_probs_with_confidence(0.99, correct))
    assert M.ece_from_histogram(over) == pytest.approx(0.19, abs=1e-6)
    # two bins: 0.95 conf / 100% correct, 0.65 conf / 50% correct -> ECE = 0.5*0.05 + 0.5*0.15
    p1, l1 = _probs_with_confidence(0.95, np.ones(10, bool))
    p2, l2 = _probs_with_confidence(0.65, np.array([True] * 5 + [False] * 5))
    h = M.calibration_histogram(torch.cat([p1, p2], 3), torch.cat([l1, l2], 2))
    rel = M.reliability_from_histogram(h)
    assert rel["ece"] == pytest.approx(0.10, abs=1e-6)
    assert rel["bin_count"].sum() == 20 and (rel["bin_count"] > 0).sum() == 2


def test_ece_ignores_ignore_index():
    probs, label = _probs_with_confidence(0.99, np.array([True, False]))
    label[0, 0, 1] = 255
    assert M.ece_from_histogram(M.calibration_histogram(probs, label)) == pytest.approx(0.01, abs=1e-6)


def test_auprc_hand_case():
    # class 0 scores: positives 0.92, 0.62; negatives 0.72, 0.12. Ranked: + - + -  -> AP = 1*0.5 + 2/3*0.5
    p0 = torch.tensor([0.92, 0.62, 0.72, 0.12])
    probs = torch.stack([p0, 1 - p0]).reshape(1, 2, 1, 4)
    label = torch.tensor([0, 0, 1, 1]).reshape(1, 1, 4)
    ap = M.auprc_from_histograms(M.pr_histograms(probs, label))
    assert ap[0] == pytest.approx(0.5 + 1 / 3)
    # class 1 scores: positives 0.28, 0.88; negatives 0.08, 0.38 -> ranked + - + -  -> same AP
    assert ap[1] == pytest.approx(0.5 + 1 / 3)
    # perfect separation -> 1; no positives -> NaN
    probs3 = torch.zeros(1, 3, 1, 4)
    probs3[0, 0, 0] = torch.tensor([0.9, 0.8, 0.1, 0.1])
    probs3[0, 1, 0] = 1 - probs3[0, 0, 0]
    ap3 = M.auprc_from_histograms(M.pr_histograms(probs3, torch.tensor([0, 0, 1, 1]).reshape(1, 1, 4)))
    assert ap3[0] == pytest.approx(1.0) and ap3[1] == pytest.approx(1.0) and math.isnan(ap3[2])


def test_auprc_is_sklearns_average_precision():
    """Class 1 scores: positive 0.94, negative 0.92, positive 0.60. Thresholds at every score:
    P/R = 1/0.5, 0.5/0.5, 2/3/1 -> AP = 0.5 * 1 + 0.5 * 2/3 = 0.8333. Twenty 0.05-wide steps put 0.92
    and 0.94 on one threshold (P 0.5 at R 0.5): 0.5833. Class 0 (1 - p, positive 0.08 only, between
    negatives 0.06 and 0.40): AP 0.5; twenty steps merge 0.06 and 0.08: 1/3."""
    from sklearn.metrics import average_precision_score

    p1 = torch.tensor([0.94, 0.92, 0.60])
    probs = torch.stack([1 - p1, p1]).reshape(1, 2, 1, 3)
    label = torch.tensor([1, 0, 1]).reshape(1, 1, 3)
    ap = M.auprc_from_histograms(M.pr_histograms(probs, label))
    assert ap[1] == pytest.approx(0.5 + 1 / 3, abs=1e-9) and ap[0] == pytest.approx(0.5, abs=1e-9)
    coarse = M.auprc_from_histograms(M.pr_histograms(probs, label, thresholds=20))
    assert coarse[1] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3) and coarse[0] == pytest.approx(1 / 3)
    # random scores, away from bin edges: equal to sklearn's average precision for every class
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(1, 3, 20, 30)).astype(np.float32) * 2)
    probs = logits.softmax(1)
    label = torch.from_numpy(rng.integers(0, 3, size=(1, 20, 30)))
    label[0, 0, :5] = 255
    ap = M.auprc_from_histograms(M.pr_histograms(probs, label))
    keep = label.reshape(-1) != 255
    for c in range(3):
        y = (label.reshape(-1)[keep] == c).numpy()
        scores = probs[0, c].reshape(-1)[keep].numpy().astype(np.float64)
        assert ap[c] == pytest.approx(average_precision_score(y, scores), abs=1e-3)


def test_accumulator_merges_batches_and_reports_json():
    torch.manual_seed(0)
    acc = M.SegmentationMetrics(3)
    labels = torch.randint(0, 3, (2, 4, 4))
    logits = torch.randn(2, 3, 4, 4)
    for i in range(2):
        acc.update(logits[i : i + 1].softmax(1), labels[i : i + 1])
    whole = M.confusion_matrix(logits.argmax(1), labels, 3)
    assert (acc.confusion() == whole.numpy()).all()
    out = acc.compute(["a", "b", "c"], subsets={"ab": [0, 1]})
    assert out["miou"] == pytest.approx(M.miou_from_confusion(whole))
    assert out["miou_ab"] == pytest.approx(M.miou_from_confusion(whole, [0, 1]))
    assert set(out["per_class_auprc"]) == {"a", "b", "c"}
    assert 0 <= out["ece"] <= 1 and sum(out["reliability"]["count"]) == 32

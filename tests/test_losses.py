"""Every loss against values computed by hand on tiny tensors, plus the DAKD defect tests."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dakd_core.errors import TrainingError
from dakd_core.losses import (
    FeatureAdapter,
    bce_adversarial,
    border_focal_loss,
    border_weighted_kl,
    border_weights,
    cwd_loss,
    kl_distill,
    l2_feature,
    lad_loss,
    mse_distill,
    pseudo_label_ce,
    segmentation_loss,
    segmentation_losses,
)


def _logits(*rows):
    """(1, C, 1, W) logits from per-pixel class scores."""
    return torch.tensor(rows, dtype=torch.float32).t()[None, :, None, :]


def _probs(*rows):
    return torch.tensor(rows, dtype=torch.float32).t()[None, :, None, :]


# --- segmentation ------------------------------------------------------------------------------


def test_segmentation_loss_hand_value_and_ignore():
    logits = _logits([2.0, 0.0], [0.0, 1.0], [1.0, 1.0])  # 3 pixels, 2 classes
    labels = torch.tensor([[[0, 1, 255]]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    assert segmentation_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_segmentation_losses_share_one_log_softmax_with_each_maps_own_value_and_gradient():
    logits = _logits([2.0, 0.0], [0.0, 1.0], [1.0, 1.0])  # 3 pixels, 2 classes
    truth, pseudo, ignored = torch.tensor([[[0, 1, 255]]]), torch.tensor([[[1, 1, 0]]]), torch.full((1, 1, 3), 255)
    lse = [math.log(math.exp(2) + 1), math.log(1 + math.e), math.log(2 * math.e)]
    expected_truth = ((lse[0] - 2) + (lse[1] - 1)) / 2
    expected_pseudo = ((lse[0] - 0) + (lse[1] - 1) + (lse[2] - 1)) / 3
    z = logits.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    got = segmentation_losses(z, [truth, pseudo, ignored])
    assert [v.item() for v in got] == pytest.approx([expected_truth, expected_pseudo, 0.0], rel=1e-6)
    (got[0] + got[1] + got[2]).backward()
    shared_grad = z.grad.clone()
    z.grad = None
    (segmentation_loss(z, truth) + segmentation_loss(z, pseudo)).backward()
    assert torch.allclose(shared_grad, z.grad, atol=1e-7)
    with pytest.raises(ValueError, match="different shapes"):
        segmentation_losses(z, [truth, torch.zeros(1, 1, 4, dtype=torch.long)])


def test_segmentation_loss_upsamples_logits_to_the_labels():
    logits = torch.tensor([[[[3.0]], [[1.0]]]])  # 1x1 logits, labels 4x6: bilinear = constant
    labels = torch.ones(1, 4, 6, dtype=torch.long)
    expected = -math.log(math.exp(1) / (math.exp(3) + math.exp(1)))
    assert segmentation_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_all_ignored_labels_give_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = segmentation_loss(logits, torch.full((1, 4, 4), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_border_weights_from_distance_to_the_class_border():
    labels = torch.zeros(1, 3, 40, dtype=torch.long)
    labels[..., 20:] = 1
    labels[0, 0, 39] = 255
    w = border_weights(labels)[0, 1]
    # distance to the other class: col 19 -> 1 (< 4: 8), col 16 -> 4 (< 16: 6), col 0 -> 20 (< 64: 4)
    assert w[19].item() == 8.0 and w[16].item() == 6.0 and w[0].item() == 4.0
    assert w[20].item() == 8.0 and w[25].item() == 6.0
    assert border_weights(labels)[0, 0, 39].item() == 0.0  # ignored
    uniform = border_weights(torch.zeros(1, 8, 8, dtype=torch.long))
    assert torch.equal(uniform, torch.ones(1, 8, 8))  # no border anywhere: the lowest weight


def test_border_focal_loss_hand_value():
    logits = _logits([2.0, 0.0], [0.0, 1.0], [1.0, 3.0])
    labels = torch.tensor([[[0, 1, 255]]])
    weights = torch.tensor([[[1.0, 3.0, 5.0]]])  # the ignored pixel's weight must not count
    p0 = math.exp(2) / (math.exp(2) + 1)
    p1 = math.e / (1 + math.e)
    expected = (1 * (1 - p0) ** 2 * -math.log(p0) + 3 * (1 - p1) ** 2 * -math.log(p1)) / 4
    got = border_focal_loss(logits, labels, gamma=2.0, weights=weights)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # gamma 0 and unit weights: plain cross-entropy
    ce = segmentation_loss(logits, labels)
    ones = torch.ones(1, 1, 3)
    assert border_focal_loss(logits, labels, gamma=0.0, weights=ones).item() == pytest.approx(ce.item(), rel=1e-6)


def test_border_focal_loss_computes_weights_itself():
    torch.manual_seed(0)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[:, :, 4:] = 1
    logits = torch.randn(1, 2, 8, 8)
    explicit = border_focal_loss(logits, labels, weights=border_weights(labels))
    assert border_focal_loss(logits, labels).item() == pytest.approx(explicit.item())


# --- adversarial -------------------------------------------------------------------------------


def test_bce_adversarial_convention_source_0_target_1():
    zero = torch.zeros(1, 1, 2, 2)
    assert bce_adversarial(zero, True).item() == pytest.approx(math.log(2))
    confident_source = torch.full((1, 1, 2, 2), -5.0)  # sigmoid(-5) ~ 0: "source"
    assert bce_adversarial(confident_source, True).item() == pytest.approx(math.log1p(math.exp(-5)), rel=1e-5)
    assert bce_adversarial(confident_source, False).item() == pytest.approx(5 + math.log1p(math.exp(-5)), rel=1e-5)


# --- DAKD distillation ---------------------------------------------------------------------------


def test_kl_is_zero_for_identical_distributions_and_positive_otherwise():
    torch.manual_seed(0)
    student = torch.randn(2, 19, 4, 6)
    assert kl_distill(student, F.softmax(student, 1)).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_distill(student, F.softmax(student, 1), T=3.0).item() == pytest.approx(0.0, abs=1e-6)



def test_kl_direction_is_teacher_to_student_and_reduction_is_stated():
    """Asymmetric hand case: a uniform student (zero logits, 3 classes) and a confident teacher.
    KL(t || s) = .98 ln(.98 * 3) + 2 * .01 ln(.01 * 3) = 0.98671; the reverse KL(s || t) would
    be (ln(1/(3 * .98)) + 2 ln(1/(3 * .01))) / 3 = 1.97834. Pixel 2 (teacher = student) adds 0."""
    student = torch.zeros(1, 3, 1, 2)
    teacher = torch.tensor([[0.98, 1 / 3], [0.01, 1 / 3], [0.01, 1 / 3]]).reshape(1, 3, 1, 2)
    forward = 0.98 * math.log(0.98 * 3) + 2 * 0.01 * math.log(0.01 * 3)
    assert forward == pytest.approx(0.986711, abs=1e-6)
    # mean over the two pixels of the per-pixel KL summed over classes ...
    assert kl_distill(student, teacher, reduction="class_sum").item() == pytest.approx(forward / 2, rel=1e-5)
    # ... and that over C = 3 classes: the reference code's element mean
    assert kl_distill(student, teacher, reduction="class_mean").item() == pytest.approx(forward / 6, rel=1e-5)
    assert kl_distill(student, teacher).item() == pytest.approx(forward / 2, rel=1e-5)  # the function's default
    with pytest.raises(TrainingError, match="reduction 'batchmean'"):
        kl_distill(student, teacher, reduction="batchmean")


def test_kl_hand_value_with_temperature():
    s = _logits([1.0, 0.0])
    t = _probs([0.8, 0.2])
    T = 2.0
    q_t = torch.softmax(torch.log(torch.tensor([0.8, 0.2])) / T, 0)
    p_s = torch.softmax(torch.tensor([1.0, 0.0]) / T, 0)
    expected = (q_t * (q_t.log() - p_s.log())).sum().item() * T * T
    assert kl_distill(s, t, T=T).item() == pytest.approx(expected, rel=1e-5)
    # the public code's defect: feeding log-probabilities as kl_div's target gives another value
    defective = F.kl_div(F.log_softmax(s, 1), torch.log(t), reduction="sum").item()
    assert kl_distill(s, t).item() != pytest.approx(defective, rel=1e-2)


def test_kl_is_finite_with_one_hot_teacher_and_gives_finite_gradients():
    student = torch.randn(1, 5, 3, 3, requires_grad=True)
    teacher = F.one_hot(torch.randint(0, 5, (1, 3, 3)), 5).permute(0, 3, 1, 2).float()
    loss = kl_distill(student, teacher)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    # with a one-hot teacher the KL equals cross-entropy towards the teacher's class (up to the clamp)
    ce = F.cross_entropy(student.detach(), teacher.argmax(1))
    assert loss.item() == pytest.approx(ce.item(), abs=1e-4)
    half = kl_distill(student.detach().half(), teacher.half())
    assert torch.isfinite(half)


def test_kl_resizes_teacher_and_respects_the_mask():
    torch.manual_seed(0)
    student = torch.randn(1, 3, 2, 2)
    teacher_small = F.softmax(torch.randn(1, 3, 1, 1), 1)
    teacher_big = teacher_small.expand(1, 3, 4, 4)  # bilinear down-resize of a constant is that constant
    assert kl_distill(student, teacher_big).item() == pytest.approx(
        kl_distill(student, teacher_small.expand(1, 3, 2, 2)).item(), rel=1e-6
    )
    teacher = F.softmax(torch.randn(1, 3, 2, 2), 1)
    mask = torch.tensor([[[True, False], [False, False]]])
    only_first = kl_distill(student[..., :1, :1], teacher[..., :1, :1])
    assert kl_distill(student, teacher, mask=mask).item() == pytest.approx(only_first.item(), rel=1e-6)


def test_border_weighted_kl_is_the_weighted_mean_of_pixel_kls():
    torch.manual_seed(0)
    student = torch.randn(1, 4, 1, 3)
    teacher = F.softmax(torch.randn(1, 4, 1, 3), 1)
    weights = torch.tensor([[[2.0, 0.0, 6.0]]])
    per_pixel = [kl_distill(student[..., i : i + 1], teacher[..., i : i + 1]).item() for i in range(3)]
    expected = (2 * per_pixel[0] + 6 * per_pixel[2]) / 8
    assert border_weighted_kl(student, teacher, weights).item() == pytest.approx(expected, rel=1e-5)


def test_mse_is_on_probabilities_not_log_probabilities():
    s = _logits([1.0, 0.0, -1.0], [0.0, 2.0, 0.0])
    t = _probs([0.7, 0.2, 0.1], [0.1, 0.1, 0.8])
    q = torch.softmax(torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0]]), 1)
    target = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    expected = ((q - target) ** 2).mean().item()
    assert mse_distill(s, t).item() == pytest.approx(expected, rel=1e-6)
    log_version = ((q.log() - target.log()) ** 2).mean().item()  # the public code's defect
    assert mse_distill(s, t).item() != pytest.approx(log_version, rel=1e-2)
    assert mse_distill(s, F.softmax(s, 1)).item() == pytest.approx(0.0, abs=1e-12)


def test_mse_upsamples_the_smaller_map():
    torch.manual_seed(0)
    student = torch.randn(1, 3, 2, 2)  # smaller: its probabilities are upsampled to 4x4
    teacher = F.softmax(torch.randn(1, 3, 4, 4), 1)
    up = F.interpolate(F.softmax(student, 1), size=(4, 4), mode="bilinear", align_corners=False)
    assert mse_distill(student, teacher).item() == pytest.approx(((up - teacher) ** 2).mean().item(), rel=1e-6)
    big_student = torch.randn(1, 3, 4, 4)
    small_teacher = F.softmax(torch.randn(1, 3, 2, 2), 1)
    up_t = F.interpolate(small_teacher, size=(4, 4), mode="bilinear", align_corners=False)
    expected = ((F.softmax(big_student, 1) - up_t) ** 2).mean().item()
    assert mse_distill(big_student, small_teacher).item() == pytest.approx(expected, rel=1e-6)


def test_pseudo_label_ce_ignores_255_and_low_confidence():
    logits = _logits([2.0, 0.0], [0.0, 1.0], [5.0, -5.0])
    labels = torch.tensor([[[0, 1, 255]]])
    p0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    p1 = -math.log(math.e / (1 + math.e))
    assert pseudo_label_ce(logits, labels).item() == pytest.approx((p0 + p1) / 2, rel=1e-6)
    confidence = torch.tensor([[[0.9, 0.4, 0.99]]])
    assert pseudo_label_ce(logits, labels, confidence, threshold=0.5).item() == pytest.approx(p0, rel=1e-6)
    assert pseudo_label_ce(logits, labels, confidence, threshold=0.0).item() == pytest.approx((p0 + p1) / 2, rel=1e-6)
    assert pseudo_label_ce(logits, labels, confidence, threshold=0.95).item() == 0.0


# --- feature distillation ------------------------------------------------------------------------


def test_l2_feature_hand_value_and_gradient_only_to_student():
    s = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]], requires_grad=True)
    t = torch.tensor([[[[0.0, 2.0]], [[3.0, 6.0]]]], requires_grad=True)
    loss = l2_feature(s, t)
    assert loss.item() == pytest.approx((1 + 0 + 0 + 4) / 4)
    loss.backward()
    assert s.grad is not None and t.grad is None


def test_feature_losses_need_an_adapter_when_channels_differ():
    s, t = torch.randn(1, 4, 2, 2), torch.randn(1, 8, 4, 4)
    with pytest.raises(TrainingError, match="FeatureAdapter"):
        l2_feature(s, t)
    adapter = FeatureAdapter(4, 8)
    for loss in (l2_feature(s, t, adapter), cwd_loss(s, t, adapter=adapter), lad_loss(s, t, adapter)):
        loss.backward()
        assert torch.isfinite(loss)
    assert adapter.proj.weight.grad is not None


def test_cwd_hand_value():
    s = torch.tensor([[[[0.0, 4.0]], [[2.0, 2.0]]]])  # B=1, C=2, 1x2
    t = torch.tensor([[[[4.0, 0.0]], [[0.0, 8.0]]]])
    tau = 4.0

    def kl(tc, sc):
        pt, ps = torch.softmax(tc / tau, 0), torch.softmax(sc / tau, 0)
        return (pt * (pt.log() - ps.log())).sum().item()

    expected = tau**2 / 2 * (kl(t[0, 0, 0], s[0, 0, 0]) + kl(t[0, 1, 0], s[0, 1, 0]))
    assert cwd_loss(s, t, tau=tau).item() == pytest.approx(expected, rel=1e-5)
    assert cwd_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)


def test_lad_is_scale_invariant_and_matches_hand_value():
    s = torch.tensor([[[[3.0, 4.0]]]])  # normalised: (0.6, 0.8)
    t = torch.tensor([[[[0.0, 10.0]]]])  # normalised: (0, 1)
    assert lad_loss(s, t).item() == pytest.approx(0.6**2 + 0.2**2, rel=1e-6)
    assert lad_loss(s, 7 * s).item() == pytest.approx(0.0, abs=1e-7)
    assert lad_loss(s, -s).item() == pytest.approx(4.0, rel=1e-6)


def test_segmentation_loss_on_channels_last_logits_hand_value_and_gradient():
    # The networks' layout: CE reads the (pixels, classes) rows in place. Same 3 pixels as above,
    # laid out 1x3 in channels-last memory; d CE / d z = (softmax(z) - onehot(y)) / |V|.
    logits = _logits([2.0, 0.0], [0.0, 1.0], [1.0, 1.0]).contiguous(memory_format=torch.channels_last)
    logits.requires_grad_(True)
    assert not logits.is_contiguous()
    loss = segmentation_loss(logits, torch.tensor([[[0, 1, 255]]]))
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    p0, p1 = math.exp(2) / (math.exp(2) + 1), math.e / (1 + math.e)
    grad = logits.grad[0, :, 0, :]  # (classes, pixels)
    torch.testing.assert_close(grad, torch.tensor([[(p0 - 1) / 2, (1 - p1) / 2, 0.0],
                                                   [(1 - p0) / 2, (p1 - 1) / 2, 0.0]]))

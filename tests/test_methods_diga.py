"""DiGA (seed 001): losses/pseudo labels on hand-computed tensors; warm-up -> self-training end to end."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from dakd_core.config import build_config
from dakd_core.errors import ConfigError
from dakd_core.losses.diga import (
    batch_prototypes, class_mix_mask, consensus_labels, crdomix, mean_std_style, nearest_prototype_labels,
    soft_cross_entropy, symmetric_distillation, update_prototypes,
)
from dakd_core.models import SegOutput
from dakd_core.models.checkpoint import load_checkpoint
from dakd_core.train import adapt, diga
from dakd_core.train.configs import AdaptConfig
from dakd_core.train.uda_common import batch_statistics, ema_update

from _loop_spies import LossSpy, bn_moves
from _methods_data import method_config, pretrained_pair


def test_soft_cross_entropy_and_the_symmetric_pair():
    teacher = torch.zeros(1, 2, 1, 1)  # p_t = (0.5, 0.5)
    student = torch.tensor([0.0, math.log(3.0)]).reshape(1, 2, 1, 1)  # p_s = (0.25, 0.75)
    h = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert soft_cross_entropy(teacher, student).item() == pytest.approx(h, rel=1e-6)
    # eq. 4: H(t(clean), s(strong)) + alpha * H(t(strong), s(clean)); here s(clean) = uniform
    uniform = torch.zeros(1, 2, 1, 1)
    sharp_t = torch.tensor([math.log(4.0), 0.0]).reshape(1, 2, 1, 1)  # p = (0.8, 0.2)
    value = symmetric_distillation(uniform, student, teacher, sharp_t, alpha=0.5).item()
    assert value == pytest.approx(h + 0.5 * math.log(2.0), rel=1e-6)
    # the teacher gets no gradient
    t = teacher.clone().requires_grad_(True)
    soft_cross_entropy(t, student.requires_grad_(True)).backward()
    assert t.grad is None and student.grad is not None


def test_target_styling_and_crdomix():
    torch.manual_seed(0)
    src, tgt = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8) * 3 + 5
    styled = mean_std_style(src, tgt)
    assert torch.allclose(styled.mean((-2, -1)), tgt.mean((-2, -1)), atol=1e-4)
    assert torch.allclose(styled.std((-2, -1)), tgt.std((-2, -1)), atol=1e-3)
    mask = torch.zeros(2, 8, 8)
    mask[:, :4] = 1
    mixed = crdomix(src, styled, mask)
    assert torch.equal(mixed[:, :, :4], src[:, :, :4]) and torch.equal(mixed[:, :, 4:], styled[:, :, 4:])
    labels = torch.tensor([[[0, 0, 2, 2], [8, 8, 255, 255]]])
    m = class_mix_mask(labels, torch.Generator().manual_seed(0))
    chosen = {int(c) for c in labels[m.bool()].unique()}
    assert len(chosen) == 2 and chosen <= {0, 2, 8}  # ceil(3 / 2) of the present classes, never 255
    assert torch.equal(m, torch.isin(labels, torch.tensor(sorted(chosen))).float())


def test_prototypes_nearest_labels_consensus_and_ema():
    feats = torch.tensor([[[[0.0, 1.0], [10.0, 11.0]]]])  # (1, 1, 2, 2), one feature channel
    labels = torch.tensor([[[0, 0], [2, 255]]])
    rho, present = batch_prototypes(feats, labels, num_classes=3)
    assert rho[:, 0].tolist() == [0.5, 0.0, 10.0] and present.tolist() == [True, False, True]
    near = nearest_prototype_labels(torch.tensor([[[[0.2, 6.0], [9.0, -1.0]]]]), rho, present)
    assert near.tolist() == [[[0, 2], [2, 0]]]  # class 1 (no prototype) is never chosen
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = logits[0, 2, 1, 0] = logits[0, 1, 1, 1] = 5.0
    assert consensus_labels(near, logits).tolist() == [[[0, 255], [2, 255]]]  # agree / disagree
    # eq. 10, one domain at a time: present classes move by (1 - delta), new classes are taken over
    old = torch.tensor([[1.0], [7.0], [0.0]])
    valid = torch.tensor([True, True, False])
    new, valid2 = update_prototypes(old, valid, torch.tensor([[3.0], [0.0], [4.0]]), torch.tensor([True, False, True]), 0.9)
    assert new[:, 0].tolist() == pytest.approx([0.9 * 1 + 0.1 * 3, 7.0, 4.0]) and valid2.all()


def test_ema_update_of_parameters_and_buffers():
    a, b = torch.nn.BatchNorm2d(1), torch.nn.BatchNorm2d(1)
    with torch.no_grad():
        a.weight.fill_(1.0), b.weight.fill_(3.0), b.running_mean.fill_(2.0)
    b.num_batches_tracked += 5
    ema_update(a, b, 0.75)
    assert a.weight.item() == pytest.approx(1.5) and a.running_mean.item() == pytest.approx(0.5)
    assert a.num_batches_tracked.item() == 5


def test_ema_decay_keeps_the_papers_half_life_fraction_of_the_warm_up():
    def cfg(**fields):
        return build_config(AdaptConfig, None, source_manifest="s", target_manifest="t", init="i", out="o",
                            method="diga", diga_warmup_fraction=0.5, **fields)

    # the paper: xi 0.999 over an 80 000-step warm-up, a 692.8-step half-life
    assert diga.ema_decay(cfg(iterations=160_000)) == pytest.approx(0.999, abs=1e-12)
    # a 200-step warm-up: half-life 692.8 / 400 = 1.732 steps, xi = 0.5 ** (1 / 1.732) = 0.6702; a fixed
    # 0.999 would leave 0.999 ** 200 = 82 % of the source-only init in the teacher at step W
    xi = diga.ema_decay(cfg(iterations=400))
    assert xi == pytest.approx(0.67018, abs=1e-5) and xi ** 200 < 1e-30
    # a half-life of a quarter of a 4-step warm-up is one step: xi = 0.5
    assert diga.ema_decay(cfg(iterations=8, diga_ema_half_life=0.25)) == pytest.approx(0.5)


class _StubWarmModel(torch.nn.Module):
    """Input channel 0, 2x2-average-pooled, is the 1-channel `dense_feature` map (stride 2); the
    other channels are the main logits at full resolution (stride 1)."""

    dense_feature = "dense"

    def forward_features(self, x):
        return {"dense": F.avg_pool2d(x[:, :1], 2), "logits": x[:, 1:]}

    def forward_head(self, feats):
        return SegOutput(feats["logits"], feats["logits"])


def test_batch_statistics_normalises_a_frozen_copy_with_each_batch_and_keeps_its_averages():
    bn = torch.nn.BatchNorm1d(1, eps=1e-12, affine=False).eval()
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(4.0)
    x = torch.tensor([[1.0], [3.0]])
    assert bn(x)[:, 0].tolist() == pytest.approx([-2.0, -1.0])  # (x - 5) / 2: the running (other domain's)
    with batch_statistics(bn):
        assert bn(x)[:, 0].tolist() == pytest.approx([-1.0, 1.0])  # (x - 2) / 1: the batch's mean 2, variance 1
    assert not bn.training and (bn.running_mean.item(), bn.running_var.item()) == (5.0, 4.0)
    assert bn.num_batches_tracked.item() == 0  # the copy's state exactly as it was


def test_self_training_labels_on_the_logits_grid_and_eq_10_prototype_update():
    """Hand case: 2 classes, 2x4 images, features at 1x2, logits at 2x4."""
    x_s = torch.zeros(1, 3, 2, 4)
    x_s[0, 0, :, 2:] = 4.0  # pooled features (0, 4) -> bilinear on the 2x4 grid, per row: 0, 1, 3, 4
    y_s = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
    x_t = torch.zeros(1, 3, 2, 4)
    x_t[0, 0, :, :2], x_t[0, 0, :, 2:] = 1.0, 3.0  # features (1, 3) -> per row: 1, 1.5, 2.5, 3
    warm_argmax = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 0]])
    x_t[0, 1], x_t[0, 2] = (warm_argmax == 0).float(), (warm_argmax == 1).float()
    state = {"warm": _StubWarmModel(), "prototypes": torch.tensor([[1.0], [3.0]]), "valid": torch.tensor([True, True])}
    cfg = SimpleNamespace(num_classes=2, diga_proto_momentum=0.9)
    student_t = SegOutput(torch.stack([torch.ones(2, 4), torch.zeros(2, 4)])[None], torch.zeros(1, 2, 2, 4))
    ce, coverage = diga._self_training_term(cfg, state, x_s, y_s, x_t, student_t, torch.device("cpu"), False)
    # eq. 10, source factor: source prototypes on the grid (0.5, 3.5) -> 0.9 * (1, 3) + 0.1 * (0.5, 3.5) = (0.95, 3.05)
    # eq. 8: nearest of (0.95, 3.05) per row: 0, 0, 1, 1; consensus with the warm argmax:
    #   [[0, 255, 1, 1], [0, 0, 1, 255]] (6 of 8 pixels labelled)
    # target factor: class 0 = mean(1, 1, 1.5) = 7/6, class 1 = mean(2.5, 3, 2.5) = 8/3
    assert state["prototypes"][:, 0].tolist() == pytest.approx([0.9 * 0.95 + 0.1 * 7 / 6, 0.9 * 3.05 + 0.1 * 8 / 3])
    assert coverage.item() == pytest.approx(0.75)
    # CE of logits (1, 0) on the six labels: three 0s at log(1 + e^-1), three 1s at log(1 + e)
    assert ce.item() == pytest.approx((3 * math.log1p(math.exp(-1)) + 3 * math.log1p(math.e)) / 6, rel=1e-6)


@pytest.fixture(scope="module")
def data(tmp_path_factory, _mlflow_template_db):
    return pretrained_pair(tmp_path_factory, _mlflow_template_db)


def test_diga_warms_up_then_self_trains_and_resumes_across_the_boundary(data, tmp_path, mlflow_uri, monkeypatch):
    import mlflow

    moved = bn_moves(monkeypatch)
    losses = LossSpy(monkeypatch)
    fields = dict(diga_warmup_fraction=0.5, diga_ema_half_life=0.25, diga_lambda_distil=0.5, diga_lambda_seg=2.0,
                  checkpoint_every=1)
    cfg = method_config(data, tmp_path / "full", "diga", **fields)
    assert diga.warmup_steps(cfg) == 2 and diga.ema_decay(cfg) == pytest.approx(0.25)  # half-life: half a step
    full = adapt.run(cfg)
    # every step, warm-up included: the student's source and CrDoMix batches leave the running
    # BatchNorm averages alone, the target batch moves them; then the EMA teacher runs the source and
    # CrDoMix batches each with its own statistics (training-mode BatchNorm, averages untouched; its
    # averages are the target's), and in self-training the warm-up model the source batch likewise
    assert moved == [False, False, True, False, False] * 2 + [False, False, True, False, False, False] * 2
    # eq. 11's weighting of the loss each step backpropagated
    for t, (loss,) in zip(losses.terms, losses.steps(), strict=True):
        seg = t["seg_main"] + cfg.aux_weight * t["seg_aux"] + t.get("seg_target", 0.0)
        assert loss == pytest.approx(0.5 * t["distil"] + 2.0 * seg, rel=1e-5)
    assert ["seg_target" in t for t in losses.terms] == [False, False, True, True]

    ckpt = load_checkpoint(full.last_checkpoint_uri)
    steps = [load_checkpoint((tmp_path / "full" / "checkpoints" / f"step_{k:07d}.pt").as_uri()) for k in (1, 2)]
    init = load_checkpoint(data["init"])["model"]
    # eq. 5 with xi = 0.25: teacher_k = 0.25 teacher_(k-1) + 0.75 student_k (BatchNorm averages too)
    for before, student, after in ((init, steps[0]["model"], steps[0]["teacher"]),
                                   (steps[0]["teacher"], steps[1]["model"], steps[1]["teacher"])):
        for k, v in after.items():
            if v.is_floating_point():
                torch.testing.assert_close(v, 0.25 * before[k] + 0.75 * student[k], rtol=1e-5, atol=1e-6)
    step2 = steps[1]
    assert step2["warm_model"] is None and not step2["prototypes_valid"].any()  # still warming up
    assert ckpt["warm_model"] is not None and ckpt["prototypes_valid"][[0, 2, 8]].all()  # the pair's classes
    # the warm-up model is the EMA teacher of step 2, frozen; the teacher itself moved on
    assert all(torch.equal(ckpt["warm_model"][k], step2["teacher"][k]) for k in step2["teacher"])
    assert any(not torch.equal(ckpt["teacher"][k], step2["teacher"][k]) for k in step2["teacher"])
    assert 0 < full.metrics["train/pseudo_coverage"] <= 1 and full.metrics["train/seg_target"] > 0
    history = mlflow.MlflowClient().get_metric_history(full.mlflow_run_id, "train/seg_target")
    assert [m.step for m in history] == [3, 4]  # self-training terms only after the warm-up

    part = tmp_path / "part"
    part.mkdir()
    (part / "last.pt").write_bytes((tmp_path / "full" / "checkpoints" / "step_0000002.pt").read_bytes())
    resumed = load_checkpoint(adapt.run(method_config(data, part, "diga", **fields)).last_checkpoint_uri)
    for key in ("model", "teacher", "warm_model"):
        assert all(torch.equal(ckpt[key][k], resumed[key][k]) for k in ckpt[key]), key
    assert torch.equal(ckpt["prototypes"], resumed["prototypes"])


def test_diga_config_fields_are_checked(data, tmp_path):
    with pytest.raises(ConfigError, match="diga_warmup_fraction"):
        method_config(data, tmp_path, "diga", diga_warmup_fraction=0.0)
    with pytest.raises(ConfigError, match="field 'diga_ema_half_life' applies to method 'diga' only"):
        method_config(data, tmp_path, "road", diga_ema_half_life=0.1)

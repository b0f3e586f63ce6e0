"""DiGA (seed 001): losses/pseudo labels on hand-computed tensors; warm-up -> self-training end to end."""

from __future__ import annotations

import math

import pytest
import torch

from dakd_core.errors import ConfigError
from dakd_core.losses.diga import (
    batch_prototypes, class_mix_mask, consensus_labels, crdomix, mean_std_style, nearest_prototype_labels,
    soft_cross_entropy, symmetric_distillation, update_prototypes,
)
from dakd_core.models.checkpoint import load_checkpoint
from dakd_core.train import adapt, diga
from dakd_core.train.uda_common import ema_update

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


@pytest.fixture(scope="module")
def data(tmp_path_factory, _mlflow_template_db):
    return pretrained_pair(tmp_path_factory, _mlflow_template_db)


def test_diga_warms_up_then_self_trains_and_resumes_across_the_boundary(data, tmp_path, mlflow_uri):
    import mlflow

    cfg = method_config(data, tmp_path / "full", "diga", diga_warmup_fraction=0.5, diga_ema=0.5)
    assert diga.warmup_steps(cfg) == 2
    full = adapt.run(cfg)
    ckpt = load_checkpoint(full.last_checkpoint_uri)
    step2 = load_checkpoint((tmp_path / "full" / "checkpoints" / "step_0000002.pt").as_uri())
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
    resumed = load_checkpoint(adapt.run(method_config(data, part, "diga", diga_warmup_fraction=0.5, diga_ema=0.5)).last_checkpoint_uri)
    for key in ("model", "teacher", "warm_model"):
        assert all(torch.equal(ckpt[key][k], resumed[key][k]) for k in ckpt[key]), key
    assert torch.equal(ckpt["prototypes"], resumed["prototypes"])


def test_diga_config_fields_are_checked(data, tmp_path):
    with pytest.raises(ConfigError, match="diga_warmup_fraction"):
        method_config(data, tmp_path, "diga", diga_warmup_fraction=0.0)
    with pytest.raises(ConfigError, match="field 'diga_ema' applies to method 'diga' only"):
        method_config(data, tmp_path, "road", diga_ema=0.9)

"""Distillation: the DAKD defects are absent inside the step, targets align, paradigms run, gate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _distill_data import H, W, make_checkpoint, make_split
from _loop_spies import LossSpy
from dakd_core.cache import CacheConfig, TeacherCache, run_cache, teacher_targets
from dakd_core.errors import ConfigError, DakdError, DataError, TrainingError
from dakd_core.losses import pseudo_label_ce
from dakd_core.models import SegOutput
from dakd_core.models.checkpoint import load_checkpoint, load_model
from dakd_core.storage import read_bytes
from dakd_core.train import distill
from dakd_core.train.distill import DistillConfig, DistillDataset, batch_targets, distill_terms, source_terms


@pytest.fixture
def world(file_store):
    torch.set_num_threads(1)
    src = make_split(file_store, "src", "source", 4, seed=1)
    tgt = make_split(file_store, "tgt", "target", 4, seed=2, labelled=False)
    gate = make_split(file_store, "gate", "target", 2, seed=3)
    teacher = make_checkpoint(f"{file_store}/teacher.pt", seed=0)
    student = make_checkpoint(f"{file_store}/student.pt", seed=1)
    index = run_cache(CacheConfig(teacher=teacher, manifests=[src, tgt], store=file_store, name="c",
                                  size=(H, W), batch_size=4, device="cpu")).index_uri
    return {"store": file_store, "src": src, "tgt": tgt, "gate": gate, "teacher": teacher,
            "student": student, "index": index}


def _cfg(w, out, **kw):
    base = dict(model="deeplabv2_tiny", source_manifest=w["src"], target_manifest=w["tgt"], init=w["student"],
                teacher=w["teacher"], teacher_cache=w["index"], out=f"{w['store']}/runs/{out}",
                source_resize=(H, W), target_resize=(H, W), crop=(H, W), iterations=2, batch_size=2,
                num_workers=0, device="cpu", checkpoint_every=1, eval_every=1, log_every=1, lr=1e-3)
    base.update(kw)
    return DistillConfig.model_validate_json(json.dumps(base))


def test_kl_mse_pseudo_inside_the_step(world):
    teacher, _ = load_model(world["teacher"])
    teacher.eval()
    cfg = _cfg(world, "unused")
    images = torch.randn(2, 3, H, W)
    valid = torch.ones(2, H, W, dtype=torch.bool)
    t = {**teacher_targets(teacher, images), "valid": valid}
    with torch.no_grad():
        same = teacher(images)  # student == teacher
    terms = distill_terms(same, t, cfg, "t")
    assert abs(terms["t_kl_main"].item()) < 1e-5 and abs(terms["t_kl_aux"].item()) < 1e-5
    assert terms["t_mse_aux"].item() < 1e-10
    other = SegOutput(same.main + torch.randn_like(same.main), same.aux + torch.randn_like(same.aux))
    terms = distill_terms(other, t, cfg, "t")
    # KL(teacher || student) per pixel summed over the classes (kl_reduction class_sum), mean over pixels
    log_ratio = t["main"].clamp_min(1e-8).log() - other.main.log_softmax(1)
    assert cfg.kl_reduction == "class_sum"
    assert terms["t_kl_main"].item() == pytest.approx((t["main"] * log_ratio).sum(1).mean().item(), rel=1e-4)
    cfg_mean = _cfg(world, "unused", kl_reduction="class_mean")
    assert distill_terms(other, t, cfg_mean, "t")["t_kl_main"].item() == pytest.approx(terms["t_kl_main"].item() / 19, rel=1e-5)
    # pseudo-label CE: the student's main logits, bilinearly upsampled to the image, against the
    # teacher's full-resolution argmax (= argmax of its upsampled main logits)
    up = torch.nn.functional.interpolate(other.main, size=(H, W), mode="bilinear", align_corners=False)
    teacher_up = torch.nn.functional.interpolate(same.main, size=(H, W), mode="bilinear", align_corners=False)
    assert torch.equal(t["label"], teacher_up.argmax(1))
    picked = up.log_softmax(1).gather(1, t["label"][:, None])
    assert terms["t_pseudo"].item() == pytest.approx(-picked.mean().item(), rel=1e-5)
    # with pseudo_threshold, pixels whose teacher confidence is below it drop out of the mean
    threshold = float(t["confidence"].median())
    cfg_thr = _cfg(world, "unused", pseudo_threshold=threshold)
    keep = t["confidence"] >= threshold
    assert 0 < keep.sum() < keep.numel()
    assert distill_terms(other, t, cfg_thr, "t")["t_pseudo"].item() == pytest.approx(
        -picked[:, 0][keep].mean().item(), rel=1e-5)
    # MSE is on probabilities: equal to the hand computation, hence bounded by 1.
    expected = ((other.aux.softmax(1) - t["aux"]) ** 2).mean()
    assert torch.allclose(terms["t_mse_aux"], expected, atol=1e-6) and terms["t_mse_aux"].item() < 1
    # One-hot confident teacher (exact zeros): finite everywhere.
    onehot = torch.nn.functional.one_hot(t["main"].argmax(1), 19).permute(0, 3, 1, 2).float()
    hard = {**t, "main": onehot, "aux": onehot}
    assert all(torch.isfinite(v) for v in distill_terms(other, hard, cfg, "t").values())


def test_source_terms_share_the_main_heads_log_softmax_with_the_pseudo_label_ce(world):
    """With source distillation the source step computes L_pseudoT in `source_terms` (one
    log-softmax for both main-head CEs); the values equal the separate calls', with and without
    a confidence threshold, and distill_terms keeps the value it is given."""
    teacher, _ = load_model(world["teacher"])
    teacher.eval()
    images = torch.randn(2, 3, H, W)
    t = {**teacher_targets(teacher, images), "valid": torch.ones(2, H, W, dtype=torch.bool)}
    labels = torch.randint(0, 19, (2, H, W))
    labels[:, :2] = 255
    out = SegOutput(torch.randn(2, 19, H // 4, W // 4), torch.randn(2, 19, H // 4, W // 4))
    for threshold in (0.0, float(t["confidence"].median())):
        cfg = _cfg(world, "unused", pseudo_threshold=threshold)
        shared = source_terms(out, labels, cfg, t)
        alone = source_terms(out, labels, cfg)
        assert set(alone) == {"seg_main", "seg_aux"}
        assert shared["seg_main"].item() == pytest.approx(alone["seg_main"].item(), rel=1e-6)
        assert shared["seg_aux"].item() == pytest.approx(alone["seg_aux"].item(), rel=1e-6)
        expected = pseudo_label_ce(out.main, t["label"], t["confidence"], threshold=threshold)
        assert shared["s_pseudo"].item() == pytest.approx(expected.item(), rel=1e-6)
        assert distill_terms(out, t, cfg, "s", pseudo=shared["s_pseudo"])["s_pseudo"] is shared["s_pseudo"]
    border = _cfg(world, "unused", seg_loss="border_focal")
    assert set(source_terms(out, labels, border, t)) == {"seg_main", "seg_aux"}


def test_cached_maps_follow_the_image_geometry(world):
    class GroundTruthCache:  # a "teacher" that reproduces the GT: warped maps must still match it
        def __init__(self, ds):
            self.ds = ds

        def get(self, sid):
            i = next(k for k, r in enumerate(self.ds.rows) if r["sample_id"] == sid)
            _, label = self.ds.load(i)
            main = np.eye(19, dtype=np.float32)[label[4::8, 4::8]].transpose(2, 0, 1)
            return {"main": main, "aux": main, "label": label, "confidence": np.ones(label.shape, np.float32)}

    ds = DistillDataset(world["src"], crop=(24, 40), train=True, with_labels=True, seed=3,
                        scale_range=(0.6, 1.4), flip=True)
    ds.cache = GroundTruthCache(ds)
    for key in [(0, 0), (1, 1), (2, 2), (5, 3)]:
        item = ds[key]
        v = item["valid"]
        assert v.shape == item["label"].shape == item["t_label"].shape == (24, 40)
        assert torch.equal(item["t_label"][v], item["label"][v])
        assert (item["t_label"][~v] == 255).all() and (item["label"][~v] == 255).all()


# distinct weights, so that a swapped or dropped weight changes the loss
WEIGHTS = dict(lambda_kl=0.3, lambda_kl_aux=0.07, lambda_mse=20.0, lambda_pseudo=0.2, lambda_target=3.0,
               lambda_adv_main=0.02, lambda_adv_aux=0.005, aux_weight=0.4)


def _distilled(t: dict, prefix: str) -> float:
    """DAKD's per-domain loss, by hand: 0.3 KL(main) + 0.07 KL(aux) + 20 MSE(aux) + 0.2 CE(pseudo) (the
    MSE of probabilities is ~1e-4 here: a large weight keeps it visible in the sum)."""
    return 0.3 * t[f"{prefix}_kl_main"] + 0.07 * t[f"{prefix}_kl_aux"] + 20 * t[f"{prefix}_mse_aux"] + 0.2 * t[f"{prefix}_pseudo"]


def test_all_paradigms_run_and_teacher_stays_frozen(world, mlflow_uri, monkeypatch):
    results, spy = {}, LossSpy(monkeypatch)
    for p, init in (("a", None), ("b", None), ("c", None), ("d", "c")):
        kw = {"paradigm": p, **WEIGHTS}
        if init:
            kw["init"] = results[init].last_checkpoint_uri
        results[p] = distill.run(_cfg(world, f"p{p}", **kw))
        assert read_bytes(results[p].best_checkpoint_uri) and results[p].mlflow_run_id
    # Per paradigm, which domains are distilled and how the backpropagated losses weigh the terms:
    # source step seg_main + 0.4 seg_aux [+ distilled(s)], target step 0.02 adv_main + 0.005 adv_aux
    # [+ 3 * distilled(t)], then D's d_main + d_aux.
    distilled = {"a": ("s",), "b": ("t",), "c": ("s", "t"), "d": ("t",)}
    assert len(spy.terms) == 4 * 2  # two iterations per run
    for i, p in enumerate("abcd"):
        for t, (loss_s, loss_t, loss_d) in zip(spy.terms[2 * i:2 * i + 2], spy.steps()[2 * i:2 * i + 2], strict=True):
            assert {k.split("_")[0] for k in t if k[:2] in ("s_", "t_")} == set(distilled[p]), p
            expected_s = t["seg_main"] + 0.4 * t["seg_aux"] + (_distilled(t, "s") if "s" in distilled[p] else 0.0)
            expected_t = 0.02 * t["adv_main"] + 0.005 * t["adv_aux"] + (3.0 * _distilled(t, "t") if "t" in distilled[p] else 0.0)
            assert loss_s == pytest.approx(expected_s, rel=1e-5), p
            assert loss_t == pytest.approx(expected_t, rel=1e-5), p
            assert loss_d == pytest.approx(t["d_main"] + t["d_aux"], rel=1e-5), p
            for prefix in distilled[p]:  # every weighted term is far above the comparisons' tolerance
                assert min(t[f"{prefix}_{k}"] for k in ("kl_main", "kl_aux", "pseudo")) > 1e-3 and t[f"{prefix}_mse_aux"] > 1e-5
                assert abs(t[f"{prefix}_kl_main"] - t[f"{prefix}_kl_aux"]) > 1e-3  # a swap would show
    assert load_checkpoint(results["d"].last_checkpoint_uri)["config"]["paradigm"] == "d"
    # Without a gate split: unsupervised proxies for teacher and student are logged.
    import mlflow

    proxy = mlflow.get_run(results["b"].mlflow_run_id)
    assert proxy.data.tags["dakd.gate_decision"] == "proxies-only"
    assert 0 < proxy.data.metrics["gate/teacher_mean_max_prob"] <= 1
    assert proxy.data.metrics["gate/student_mean_entropy"] >= 0
    assert proxy.data.params["paradigm"] == "b" and proxy.data.params["lambda_kl"] == "0.3"
    with pytest.raises(ConfigError, match="paradigm d"):
        distill.run(_cfg(world, "bad_d", paradigm="d"))  # init is not a paradigm-c checkpoint

    # Live teacher: eval mode throughout, BatchNorm running statistics untouched.
    seen = []
    real = distill.load_frozen_teacher

    def capture(uri, device):
        seen.append(real(uri, device))
        return seen[-1]

    monkeypatch.setattr(distill, "load_frozen_teacher", capture)
    distill.run(_cfg(world, "online", paradigm="c", teacher_online=True, teacher_cache=None))
    before = load_checkpoint(world["teacher"])["model"]
    (teacher,) = seen
    assert not teacher.training
    bn = [k for k in before if k.endswith("running_mean") or k.endswith("running_var")]
    assert bn and all(torch.equal(teacher.state_dict()[k], before[k]) for k in bn)


def test_gate_refuses_a_teacher_no_better_than_the_student(world, mlflow_uri):
    import mlflow

    # Student initialised from the teacher's own weights: the teacher cannot be better.
    cfg = _cfg(world, "gate", paradigm="b", init=world["teacher"], gate_manifest=world["gate"])
    with pytest.raises(DakdError, match=r"teacher mIoU .* not better than the undistilled student's"):
        distill.run(cfg)
    result = distill.run(_cfg(world, "gate_warn", paradigm="b", init=world["teacher"],
                              gate_manifest=world["gate"], gate="warn"))
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.data.tags["dakd.gate_decision"] == "fail-warn"
    assert run.data.metrics["gate/teacher_miou"] == run.data.metrics["gate/student_miou"]


def test_stale_cache_nan_guard_and_resume(world, mlflow_uri, monkeypatch):
    other = make_checkpoint(f"{world['store']}/other_teacher.pt", seed=7)
    with pytest.raises(DataError, match="stale"):
        distill.run(_cfg(world, "stale", teacher=other))

    real = distill.distill_terms
    calls = {"n": 0}

    def nan_at_step_two(output, targets, cfg, prefix):
        calls["n"] += 1
        terms = real(output, targets, cfg, prefix)
        if calls["n"] == 2:
            terms[f"{prefix}_kl_main"] = terms[f"{prefix}_kl_main"] * float("nan")
        return terms

    monkeypatch.setattr(distill, "distill_terms", nan_at_step_two)
    cfg = _cfg(world, "resume", paradigm="b", iterations=3)
    with pytest.raises(TrainingError, match="t_kl_main"):
        distill.run(cfg)
    assert load_checkpoint(f"{cfg.out}/last.pt")["step"] == 1  # the last good step is kept
    monkeypatch.setattr(distill, "distill_terms", real)
    result = distill.run(cfg)  # resumes at step 2
    assert load_checkpoint(result.last_checkpoint_uri)["step"] == 3
    assert json.loads(read_bytes(f"{cfg.out}/result.json"))["metrics"]["steps"] == 3

"""ROAD (seed 003): losses on hand-computed tensors; `dakd adapt --method road` end to end (tiny)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dakd_core.cli import build_parser
from dakd_core.cli._config_args import config_from_args
from dakd_core.config import build_config
from dakd_core.errors import ConfigError, TrainingError
from dakd_core.losses.road import (
    RegionDomainClassifiers, grad_reverse, grid_regions, region_bounds, spatial_aware_loss, target_guided_distillation,
)
from dakd_core.models import create_model
from dakd_core.models.checkpoint import load_checkpoint, make_payload, save_checkpoint
from dakd_core.train import adapt, road
from dakd_core.train.configs import AdaptConfig

from _methods_data import method_config, pretrained_pair


def test_target_guided_distillation_is_the_mean_euclidean_distance():
    x = torch.zeros(1, 2, 1, 2, requires_grad=True)
    z = torch.tensor([[[[3.0, 0.0]], [[4.0, 0.0]]]])  # position 0 differs by (3, 4), position 1 not at all
    loss = target_guided_distillation(x, z)
    assert loss.item() == pytest.approx((5.0 + 0.0) / 2, abs=1e-3)  # norm, not squared: (25 + 0) / 2 would be 12.5
    loss.backward()
    # d/dx of |x - z| / N at position 0: (x - z) / |x - z| / 2; finite (0) at the identical position
    assert torch.allclose(x.grad[0, :, 0, 0], torch.tensor([-0.3, -0.4]), atol=1e-4)
    assert torch.equal(x.grad[0, :, 0, 1], torch.zeros(2))
    assert not z.requires_grad


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    (grad_reverse(x, 0.5) * torch.tensor([3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [-1.5, -2.0]


def test_regions_cover_the_map_in_near_equal_bands():
    assert region_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    cells = grid_regions(4, 6, (2, 3))
    assert len(cells) == 6 and cells[4] == (slice(2, 4), slice(2, 4))
    with pytest.raises(TrainingError, match="cannot split 2"):
        region_bounds(2, 3)


def test_spatial_aware_loss_sums_each_regions_mean_bce():
    torch.manual_seed(0)
    clf = RegionDomainClassifiers(3, grid=(2, 2), hidden=4)
    biases = [0.0, 1.0, -2.0, 0.5]
    for m, b in zip(clf.classifiers, biases):  # each region's classifier outputs its constant bias
        torch.nn.init.zeros_(m[2].weight)
        torch.nn.init.constant_(m[2].bias, b)
    fs, ft = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 3, 4, 4)
    loss = spatial_aware_loss(clf, fs, ft)
    softplus = lambda v: math.log1p(math.exp(v))  # noqa: E731
    # equal source/target counts per region: mean = (BCE(b, 0) + BCE(b, 1)) / 2
    expected = sum((softplus(b) + softplus(-b)) / 2 for b in biases)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # gradient reversal: the features get minus the gradient the plain source BCE would give them
    # (halved: the region mean runs over both domains); with random classifier weights now
    for m in clf.classifiers:
        torch.nn.init.normal_(m[2].weight)
    loss = spatial_aware_loss(clf, fs, ft)
    loss.backward()
    plain = sum(
        torch.nn.functional.binary_cross_entropy_with_logits(clf(fs)[..., r, c], torch.zeros(2, 1, 2, 2))
        for r, c in grid_regions(4, 4, (2, 2))
    )
    (g_plain,) = torch.autograd.grad(plain, fs)
    assert g_plain.abs().sum() > 0
    assert torch.allclose(fs.grad, -g_plain / 2, atol=1e-6)
    with torch.no_grad():  # one descent step of the classifiers lowers L_spt
        for p in clf.parameters():
            p -= 0.1 * p.grad
    assert spatial_aware_loss(clf, fs, ft).item() < loss.item()


def test_road_config_is_strict_and_reaches_the_cli(tmp_path):
    base = dict(source_manifest="m", out="o", init="c", target_manifest="t")
    cfg = build_config(AdaptConfig, None, **base, method="road", backbone_weights="imagenet.pth")
    assert (cfg.road_lambda_dist, cfg.road_lambda_spt, cfg.road_grid) == (0.1, 0.01, (3, 3))  # the paper's
    assert cfg.road_reference == "imagenet"
    with pytest.raises(ConfigError, match="field 'road_grid' applies to method 'road' only"):
        build_config(AdaptConfig, None, **base, method="advent", road_grid=[2, 2])
    with pytest.raises(ConfigError, match="road_grid"):
        build_config(AdaptConfig, None, **base, method="road", road_grid=[0, 2])
    with pytest.raises(ConfigError, match="method"):
        build_config(AdaptConfig, None, **base, method="roadnet")
    args = build_parser().parse_args(["adapt", "--method", "road", "--road-grid", "2", "1", "--source-manifest", "m",
                                      "--out", "o", "--init", "c", "--target-manifest", "t",
                                      "--road-reference", "s3://b/real.pt", "--road-reference-statistics", "batch"])
    cfg = config_from_args(AdaptConfig, args)
    assert cfg.road_grid == (2, 1) and cfg.road_reference == "s3://b/real.pt"
    assert cfg.road_reference_statistics == "batch"
    assert build_config(AdaptConfig, None, **base, method="road", road_reference="init").road_reference_statistics \
        == "running"
    with pytest.raises(ConfigError, match="road_reference_statistics"):
        build_config(AdaptConfig, None, **base, method="road", road_reference="init", road_reference_statistics="target")
    with pytest.raises(ConfigError, match="field 'road_reference_statistics' applies to method 'road' only"):
        build_config(AdaptConfig, None, **base, method="adaptsegnet", road_reference_statistics="batch")


@pytest.fixture(scope="module")
def data(tmp_path_factory, _mlflow_template_db):
    return pretrained_pair(tmp_path_factory, _mlflow_template_db)


def _road(data, out, **overrides):
    return method_config(data, out, "road", road_grid=[2, 2], **{"road_reference": "init", **overrides})


def test_road_reference_defaults_to_imagenet_and_needs_backbone_weights(data, tmp_path):
    with pytest.raises(ConfigError, match="road_reference.*needs 'backbone_weights'"):
        method_config(data, tmp_path, "road")
    weights = tmp_path / "backbone.pt"
    torch.manual_seed(3)
    torch.save(create_model("deeplabv2_tiny").backbone.state_dict(), weights)
    cfg = method_config(data, tmp_path, "road", backbone_weights=str(weights))
    assert cfg.road_reference == "imagenet"
    ref = road.reference_model(cfg)
    saved = torch.load(weights)
    assert all(torch.equal(ref.backbone.state_dict()[k], v) for k, v in saved.items())
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    init = load_checkpoint(data["init"])["model"]
    ref = road.reference_model(_road(data, tmp_path))  # 'init': the source-trained checkpoint
    assert all(torch.equal(ref.state_dict()[k], v) for k, v in init.items())
    torch.save(create_model("swiftnet_thin").backbone.state_dict(), weights)
    with pytest.raises(ConfigError, match="decoder8"):
        road.reference_model(method_config(data, tmp_path, "road", model="swiftnet_thin", backbone_weights=str(weights)))


def test_pipeline_road_reference_is_built_with_each_networks_backbone_weights(tmp_path):
    """A pipeline run with adaptation_method road: the adapt stage's settings from the plan build
    an AdaptConfig whose ROAD reference model (road_reference 'imagenet') holds that network's
    backbone weights, the teacher's and the student's each their own."""
    from dakd_core.orchestration.params import PipelineParams
    from dakd_core.orchestration.plan import build_plan, stage_settings

    files = {}
    for seed, role in enumerate(("teacher", "student")):
        torch.manual_seed(seed)
        files[role] = tmp_path / f"{role}.pt"
        torch.save(create_model("deeplabv2_tiny").backbone.state_dict(), files[role])
    plan = build_plan(PipelineParams(adapt_method="road", teacher_model="deeplabv2_tiny",
                                     student_model="deeplabv2_tiny", teacher_weights=str(files["teacher"]),
                                     student_weights=str(files["student"])))
    for role, path in files.items():
        fields, _ = stage_settings(plan[f"adapt_{role}"])
        cfg = build_config(AdaptConfig, **fields, source_manifest="s", target_manifest="t", init="i", out="o")
        assert (cfg.method, cfg.road_reference, cfg.backbone_weights) == ("road", "imagenet", str(path))
        reference = road.reference_model(cfg).backbone.state_dict()
        saved = torch.load(path)
        assert all(torch.equal(reference[k], v) for k, v in saved.items()), role
    assert not torch.equal(torch.load(files["teacher"])["conv1.0.weight"], torch.load(files["student"])["conv1.0.weight"])


@pytest.mark.parametrize("statistics", ["running", "batch"])
def test_road_distils_target_features_towards_the_given_reference(data, tmp_path, mlflow_uri, monkeypatch,
                                                                  statistics):
    """One step with road_reference = another checkpoint: z in L_dist is that checkpoint's dense
    features on the target crops - in eval mode (its running BatchNorm statistics) under
    road_reference_statistics 'running', normalised with the target batch's own statistics under
    'batch', its running averages and batch count untouched either way - and the logged train/dist
    is the mean over positions of ||x - z||_2 computed here by hand (far above the sqrt(1e-8) floor
    of the loss)."""
    other = save_checkpoint(f"{data['store']}/real_style.pt", make_payload(_seeded_model(11), 0))
    seen, made = {}, []
    build = road.reference_model

    def recording_reference(cfg):
        ref = build(cfg)
        forward = ref.forward_features
        ref.forward_features = lambda x: (seen.setdefault("images", x.clone()), forward(x))[1]
        made.append(ref)
        return ref

    def recording_distance(x, z):
        seen.update(x=x.detach().clone(), z=z.clone())
        return target_guided_distillation(x, z)

    monkeypatch.setattr(road, "reference_model", recording_reference)
    monkeypatch.setattr(road, "target_guided_distillation", recording_distance)
    result = adapt.run(_road(data, tmp_path / "ref", road_reference=other, iterations=1,
                             road_reference_statistics=statistics))
    saved = load_checkpoint(other)["model"]
    independent = create_model("deeplabv2_tiny")
    independent.load_state_dict(saved)
    with torch.no_grad():
        z_eval = independent.eval().forward_features(seen["images"])["last"]
        z_batch = independent.train().forward_features(seen["images"])["last"]  # moves this copy's averages only
    z = {"running": z_eval, "batch": z_batch}[statistics]
    assert seen["images"].shape[0] == 2 and torch.allclose(seen["z"], z, atol=1e-5)
    assert not torch.allclose(z_eval, z_batch, atol=1e-2)  # the two choices give the loss different targets
    state = made[0].state_dict()
    assert not made[0].training
    assert all(torch.equal(state[k], v) for k, v in saved.items() if "running_" in k or "num_batches" in k)
    x, z = seen["x"].numpy(), z.numpy()
    by_hand = np.sqrt(((x - z) ** 2).sum(axis=1)).mean()
    assert by_hand > 0.01
    assert result.metrics["train/dist"] == pytest.approx(by_hand, rel=1e-4)


def _seeded_model(seed: int):
    torch.manual_seed(seed)
    return create_model("deeplabv2_tiny")


def test_road_trains_segmenter_and_region_classifiers_and_resumes_exactly(data, tmp_path, mlflow_uri):
    import mlflow

    full = adapt.run(_road(data, tmp_path / "full"))
    ckpt, init = load_checkpoint(full.last_checkpoint_uri), load_checkpoint(data["init"])
    assert ckpt["method"] == "road" and ckpt["step"] == 4
    assert any(not torch.equal(ckpt["model"][k], init["model"][k]) for k in init["model"])
    assert all(int(s["step"]) == 4 for s in ckpt["c_optimizer"]["state"].values())  # classifiers stepped each time
    assert len(ckpt["classifiers"]) == 4 * 4  # 4 regions x (2 convs x weight, bias)
    for term in ("seg_main", "dist", "spt"):
        assert 0 <= full.metrics[f"train/{term}"] < 20
    assert mlflow.get_run(full.mlflow_run_id).data.params["method"] == "road"

    part = tmp_path / "part"
    part.mkdir()
    (part / "last.pt").write_bytes((tmp_path / "full" / "checkpoints" / "step_0000002.pt").read_bytes())
    resumed = load_checkpoint(adapt.run(_road(data, part)).last_checkpoint_uri)
    for key in ("model", "classifiers"):
        assert all(torch.equal(ckpt[key][k], resumed[key][k]) for k in ckpt[key]), key

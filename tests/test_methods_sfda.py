"""SFDA (seed 002): losses on hand-computed tensors; source-free end to end (no source object is read)."""

from __future__ import annotations

import math

import pytest
import torch

from dakd_core.errors import ConfigError, TrainingError
from dakd_core.losses.sfda import (
    ConditionalPatchDiscriminator, attention_maps, bn_statistics, bns_loss, dad_ss, dad_st, ipsm_adversarial_loss,
    ipsm_discriminator_loss, mae_loss, max_squares, patch_entropy, patches, rank_easy_hard, select_patches,
)
from dakd_core.models.checkpoint import load_checkpoint, load_model
from dakd_core.storage import FileStore
from dakd_core.train import adapt, sfda

from _loop_spies import LossSpy, bn_moves
from _methods_data import method_config, pretrained_pair


def softplus(x: float) -> float:
    """BCE of a logit x against label 0 (the "easy" / source side); against label 1 it is softplus(-x)."""
    return math.log1p(math.exp(x))


def test_max_squares_and_mae():
    uniform = torch.zeros(2, 4, 3, 3)
    assert max_squares(uniform).item() == pytest.approx(-4 * 0.25**2)
    confident = torch.tensor([100.0, 0.0, 0.0, 0.0]).reshape(1, 4, 1, 1)
    assert max_squares(confident).item() == pytest.approx(-1.0)
    # |(1, 0, 0, 0) - (.25, .25, .25, .25)| summed = 1.5, / C = 0.375
    assert mae_loss(confident, torch.zeros(1, 4, 1, 1)).item() == pytest.approx(0.375, rel=1e-5)


def test_bns_loss_matches_batch_statistics_to_running_statistics():
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(2)).eval()
    net[0].running_mean.copy_(torch.tensor([1.0, 0.0]))
    net[0].running_var.copy_(torch.tensor([1.0, 4.0]))
    x = torch.tensor([[[[0.0, 2.0]], [[1.0, 3.0]]]])  # channel means (1, 2), variances (1, 1)
    with bn_statistics(net) as records:
        net(x)
    assert len(records) == 1
    # (1-1)^2 + (2-0)^2 + (1-1)^2 + (1-4)^2
    assert bns_loss(records).item() == pytest.approx(13.0)
    with pytest.raises(TrainingError, match="BatchNorm2d"):
        bns_loss([])
    assert not net[0]._forward_hooks  # hooks removed


def test_dual_attention_hand_case_and_distances():
    f = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # C = 2, N = 2 positions: one-hot vectors
    dual, spatial, channel = attention_maps(f)
    e = math.exp(1 / math.sqrt(2))
    expected = torch.tensor([[e / (e + 1), 1 / (e + 1)], [1 / (e + 1), e / (e + 1)]])
    assert torch.allclose(spatial[0], expected) and torch.allclose(channel[0], expected)
    assert dual.shape == (1, 2, 4) and dual[0, 0, :2].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)])
    a, b = e / (e + 1), 1 / (e + 1)
    # A(f) = [S F | F R] = [[a, b, a, b], [b, a, b, a]]; A(2f): F = 2I, both softmaxes of 4I / sqrt(2)
    e2 = math.exp(4 / math.sqrt(2))
    a2, b2 = e2 / (e2 + 1), 1 / (e2 + 1)
    assert dad_ss(f, 2 * f).item() == pytest.approx((abs(a - 2 * a2) + abs(b - 2 * b2)) / 2, rel=1e-5)
    g = torch.randn(2, 3, 4, 4)
    assert dad_ss(g, g).item() == 0
    # eq. 7 against all-zero target features (uniform S and R): KL(fake row || uniform), S and R
    # alike; the reverse direction KL(uniform || fake) would be -(log(2a) + log(2b)) / 2 per row
    kl_row = a * math.log(2 * a) + b * math.log(2 * b)
    assert dad_st(f, torch.zeros(1, 2, 1, 2)).item() == pytest.approx(2 * kl_row, rel=1e-5)
    # target maps are pooled to the fake maps' size before the KL
    assert dad_st(g, g.repeat_interleave(2, -1).repeat_interleave(2, -2)).item() == pytest.approx(0, abs=1e-6)


def test_ipsm_patches_entropy_ranking_and_conditional_discriminator():
    logits = torch.zeros(4, 3, 4, 4)  # uniform (max entropy) everywhere ...
    logits[1, 0, :2, :2] = logits[3, 0, :2, :2] = 50.0  # ... except patch 0 of images 1 and 3: confident
    ent = patch_entropy(logits, 2)
    assert ent.shape == (4, 4)
    assert ent[:, 1].tolist() == pytest.approx([math.log(3)] * 4)
    assert ent[1, 0].item() == pytest.approx(0, abs=1e-6)
    easy, hard = rank_easy_hard(ent)
    assert sorted(easy[:, 0].tolist()) == [1, 3] and sorted(hard[:, 0].tolist()) == [0, 2]
    with pytest.raises(TrainingError, match="even batch"):
        rank_easy_hard(ent[:3])
    maps = torch.arange(4 * 1 * 4 * 4, dtype=torch.float).reshape(4, 1, 4, 4)
    p = patches(maps, 2, min_size=2)
    assert p.shape == (4, 4, 1, 2, 2) and torch.equal(p[2, 3, 0], maps[2, 0, 2:, 2:])
    chosen = select_patches(p, easy)
    assert torch.equal(chosen[0, 0], p[easy[0, 0], 0]) and torch.equal(chosen[1, 3], p[easy[1, 3], 3])
    disc = ConditionalPatchDiscriminator(num_classes=3, k=2, embed_dim=4, ndf=8)
    out = disc(patches(torch.softmax(logits, 1), 2, min_size=32)[:2])
    assert out.shape == (2 * 4, 1, 1, 1)


def test_conditional_discriminator_equals_the_net_on_maps_concatenated_with_codes():
    # IPSM's definition: the position code broadcast over the patch, concatenated to its maps, into
    # AdaptSegNet's D. The forward computes it without the concatenation; values and gradients agree.
    torch.manual_seed(0)
    disc = ConditionalPatchDiscriminator(num_classes=3, k=2, embed_dim=5, ndf=4)
    maps = torch.rand(2, 4, 3, 32, 40, requires_grad=True)
    codes = disc.embed(torch.arange(4))[None, :, :, None, None].expand(2, 4, 5, 32, 40)
    reference = disc.net(torch.cat([maps, codes], dim=2).reshape(8, 8, 32, 40))
    ref_grads = torch.autograd.grad(reference.square().sum(), [maps, disc.embed.weight, disc.net.net[0].weight])
    out = disc(maps)
    grads = torch.autograd.grad(out.square().sum(), [maps, disc.embed.weight, disc.net.net[0].weight])
    assert out.shape == reference.shape == (8, 1, 1, 1)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    with pytest.raises(TrainingError, match="smaller than 32 pixels"):
        disc(maps[..., :16, :])


def test_ipsm_adversarial_and_discriminator_losses_hand_valued():
    # 2 target images, K = 1 (one patch each), 2 classes, 1x1 maps. Image 0 is confident (easy),
    # image 1 is not (hard). The stub D scores a patch 4 * p(class 0).
    logits = torch.tensor([[3.0, -3.0], [0.2, 0.0]]).reshape(2, 2, 1, 1)
    easy, hard = rank_easy_hard(patch_entropy(logits, 1))
    assert easy.tolist() == [[0]] and hard.tolist() == [[1]]
    patch_maps = patches(torch.softmax(logits, 1), 1, min_size=1)  # (2, 1, 2, 1, 1)
    p0 = torch.softmax(logits, 1)[:, 0, 0, 0].tolist()

    scale = torch.nn.Parameter(torch.tensor(4.0))

    def stub_disc(p):  # (B', K*K, C, h, w) -> (B' * K*K, 1, 1, 1)
        return scale * p[:, :, 0].mean((-2, -1)).reshape(-1, 1, 1, 1)

    # L_ADV: the hard patch scored against the easy label 0 (label 1 would be softplus(-4 p0))
    assert ipsm_adversarial_loss(stub_disc, patch_maps, hard).item() == pytest.approx(softplus(4 * p0[1]), rel=1e-6)
    # D: (BCE(easy -> 0) + BCE(hard -> 1)) / 2
    expected = (softplus(4 * p0[0]) + softplus(-4 * p0[1])) / 2
    assert ipsm_discriminator_loss(stub_disc, patch_maps, easy, hard).item() == pytest.approx(expected, rel=1e-6)
    # D's loss trains D and does not reach the segmenter's maps
    maps = patch_maps.clone().requires_grad_(True)
    ipsm_discriminator_loss(stub_disc, maps, easy, hard).backward()
    assert maps.grad is None and scale.grad is not None


def test_generator_makes_fakes_of_the_configured_size():
    g = sfda.Generator(latent=8, size=(10, 18), ngf=4)
    x = g(torch.randn(2, 8))
    assert x.shape == (2, 3, 10, 18)
    assert x.mean().abs().item() < 0.2  # affine-free BatchNorm output: normalised-image range


@pytest.fixture(scope="module")
def data(tmp_path_factory, _mlflow_template_db):
    return pretrained_pair(tmp_path_factory, _mlflow_template_db)


def test_sfda_adapts_without_reading_any_source_object(data, tmp_path, mlflow_uri, monkeypatch):
    read: list[str] = []
    for name in ("get_bytes", "get_file", "exists"):
        original = getattr(FileStore, name)

        def spy(self, key, *args, _original=original, **kwargs):
            read.append(self.url(key))
            return _original(self, key, *args, **kwargs)

        monkeypatch.setattr(FileStore, name, spy)
    spy_losses = LossSpy(monkeypatch)
    fakes = []
    real_generator = sfda.Generator.forward

    def keep_fakes(self, z):
        fake = real_generator(self, z)
        fakes.append(fake.detach().clone())
        return fake

    monkeypatch.setattr(sfda.Generator, "forward", keep_fakes)
    missing_source = data["store"] + "/datasets/src_gone/train/manifest.parquet"  # never existed
    weights = dict(sfda_alpha=0.7, sfda_beta=0.3, sfda_tau=0.2, sfda_gamma=0.05)  # all different
    cfg = method_config(data, tmp_path / "sf", "sfda", source_manifest=missing_source, iterations=3,
                        sfda_patches=2, sfda_g_lr=1e-3, checkpoint_every=3, eval_every=3, **weights)
    result = adapt.run(cfg)
    assert not any("/datasets/src" in uri for uri in read), [u for u in read if "/datasets/src" in u]
    assert any("/datasets/tgt/" in uri for uri in read)  # the spy does see the target reads
    ckpt, init = load_checkpoint(result.last_checkpoint_uri), load_checkpoint(data["init"])
    assert ckpt["method"] == "sfda" and set(ckpt["data"]) == {"target"}
    assert any(not torch.equal(ckpt["model"][k], init["model"][k]) for k in init["model"])
    for opt in ("optimizer", "g_optimizer", "d_optimizer"):
        assert ckpt[opt]["state"], opt  # segmenter, generator and discriminator all stepped
    assert all(group["nesterov"] for group in ckpt["optimizer"]["param_groups"])
    assert all(group["weight_decay"] == 1e-4 for group in ckpt["optimizer"]["param_groups"])  # the paper's
    assert all(group["initial_lr"] == 0.1 for group in ckpt["d_optimizer"]["param_groups"])  # the paper's
    # Each step backpropagates, in order: G's eq. 11, S's transfer on the fakes, S's target terms
    # (eq. 16), D's IPSM loss - with the configured weights and signs.
    a, b, tau, g = (weights[k] for k in ("sfda_alpha", "sfda_beta", "sfda_tau", "sfda_gamma"))
    for t, (g_loss, transfer, target, d_loss) in zip(spy_losses.terms, spy_losses.steps(), strict=True):
        assert g_loss == pytest.approx(t["bns"] - a * t["g_mae"] - b * t["g_dad_ss"] + tau * t["g_dad_st"], rel=1e-5)
        assert transfer == pytest.approx(a * t["mae"] + b * t["dad_ss"], rel=1e-5)
        assert target == pytest.approx(t["tar"] + g * t["adv"], rel=1e-5)
        assert d_loss == pytest.approx(t["d_ipsm"], rel=1e-6)
        # Within an iteration G's and S's objectives see the same fakes through the same weights (every
        # optimizer steps after all terms), so their MAE / DAD^ss terms are the same numbers; the
        # segmenter (train-mode BatchNorm) and the fixed source model (running statistics) differ.
        assert t["g_mae"] == pytest.approx(t["mae"], rel=1e-5) and t["mae"] > 1e-4
        assert t["g_dad_ss"] == pytest.approx(t["dad_ss"], rel=1e-5) and t["dad_ss"] > 1e-4
        assert -1 <= t["tar"] <= -1 / 19  # max squares: -sum_c p_c^2 lies in [-1, -1/C]
    # L_BNS of step 1 is the source model's (the init checkpoint, eval mode) on that step's fakes
    source_model, _ = load_model(data["init"])
    with torch.no_grad(), bn_statistics(source_model.eval()) as records:
        source_model(fakes[0])
    assert spy_losses.terms[0]["bns"] == pytest.approx(bns_loss(records).item(), rel=1e-4)


@pytest.mark.parametrize("bn_statistics_mode,moves", [
    # per iteration: G's step (fakes, target batch), then S's (fakes, target batch)
    ("target", [False, False, False, True]),
    ("both", [False, False, True, True]),
])
def test_sfda_only_the_segmenter_steps_target_batch_moves_running_statistics(
        data, tmp_path, mlflow_uri, monkeypatch, bn_statistics_mode, moves):
    moved = bn_moves(monkeypatch)
    cfg = method_config(data, tmp_path / "bn", "sfda", iterations=2, sfda_patches=2, checkpoint_every=2,
                        eval_every=100, bn_statistics=bn_statistics_mode)
    adapt.run(cfg)
    assert moved == moves * 2


def test_sfda_nesterov_only_on_an_sgd_segmenter():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sfda.use_nesterov(sgd)
    assert sgd.param_groups[0]["nesterov"] is True
    plain = torch.optim.SGD(params, lr=0.1, momentum=0.0)
    sfda.use_nesterov(plain)
    assert plain.param_groups[0]["nesterov"] is False  # Nesterov needs momentum
    adamw = torch.optim.AdamW(params, lr=0.1)
    sfda.use_nesterov(adamw)
    assert "nesterov" not in adamw.param_groups[0]


def test_sfda_paper_defaults_and_explicit_weight_decay(data, tmp_path):
    cfg = method_config(data, tmp_path, "sfda")
    assert (cfg.weight_decay, cfg.sfda_d_lr, cfg.sfda_g_lr, cfg.d_lr) == (1e-4, 0.1, 0.1, 1e-4)
    assert method_config(data, tmp_path, "sfda", weight_decay=5e-4).weight_decay == 5e-4
    assert method_config(data, tmp_path, "adaptsegnet").weight_decay == 5e-4


def test_sfda_nan_stops_with_the_term_and_keeps_the_last_good_checkpoint(data, tmp_path, mlflow_uri, monkeypatch):
    original = sfda.Generator.forward
    calls = {"n": 0}

    def poisoned(self, z):
        calls["n"] += 1
        out = original(self, z)
        return out * float("nan") if calls["n"] >= 2 else out

    monkeypatch.setattr(sfda.Generator, "forward", poisoned)
    out = tmp_path / "nan"
    cfg = method_config(data, out, "sfda", iterations=3, sfda_patches=2, checkpoint_every=1, eval_every=3)
    with pytest.raises(TrainingError, match=r"step 2: loss term 'bns' is nan"):
        adapt.run(cfg)
    assert load_checkpoint((out / "last.pt").as_uri())["step"] == 1
    assert not (out / "result.json").exists()


def test_sfda_config_needs_an_even_batch(data, tmp_path):
    with pytest.raises(ConfigError, match="batch_size"):
        method_config(data, tmp_path, "sfda", batch_size=3)
    assert method_config(data, tmp_path, "sfda").sfda_tau is None  # tau = beta (paper)
    # source-free: no source manifest needed; every other method still requires one
    assert method_config(data, tmp_path, "sfda", source_manifest=None).source_manifest is None
    with pytest.raises(ConfigError, match="field 'source_manifest' is required for method 'road'"):
        method_config(data, tmp_path, "road", source_manifest=None)

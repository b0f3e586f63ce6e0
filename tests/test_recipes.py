"""Training recipes as config: per-network defaults, optimiser choice, lr schedules, photometric jitter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dakd_core.config import build_config
from dakd_core.data.transforms import photometric_jitter
from dakd_core.errors import ConfigError
from dakd_core.models import create_model
from dakd_core.train import engine
from dakd_core.train.configs import AdaptConfig, PretrainConfig
from dakd_core.train.recipes import NETWORK_RECIPES

REQUIRED = dict(source_manifest="file:///m.parquet", out="file:///out")


@pytest.mark.parametrize("step, iterations, schedule, power, warmup, expected", [
    (50, 100, "poly", 0.9, 0, 0.5**0.9),  # 0.535887
    (25, 100, "cosine", 0.9, 0, 0.5 * (1 + math.cos(math.pi / 4))),  # 0.853553
    (0, 100, "cosine", 0.9, 20, 1 / 20),  # warm-up starts at 1/warmup, not 0 (no wasted step)
    (19, 100, "poly", 0.9, 20, 1.0),
    (20, 100, "cosine", 0.9, 20, 0.5 * (1 + math.cos(0.2 * math.pi))),  # 0.904508: t counts the whole run
    (100, 100, "poly", 0.9, 0, 0.0),
    (100, 100, "cosine", 0.9, 0, 0.0),
])
def test_lr_factor_hand_computed(step, iterations, schedule, power, warmup, expected):
    assert engine.lr_factor(step, iterations, schedule, power, warmup) == pytest.approx(expected, abs=1e-9)


def test_cpu_networks_take_their_recipe_and_explicit_fields_win():
    cfg = build_config(PretrainConfig, model="swiftnet_tiny", **REQUIRED)
    assert (cfg.optimizer, cfg.lr, cfg.schedule, cfg.weight_decay) == ("adamw", 1e-2, "cosine", 1e-4)
    assert cfg.scale_range == (1.0, 1.0) and cfg.warmup_iterations == 20
    cfg = build_config(PretrainConfig, model="swiftnet_tiny", lr=5e-4, schedule="poly", **REQUIRED)
    assert (cfg.optimizer, cfg.lr, cfg.schedule) == ("adamw", 5e-4, "poly")
    # the paper networks keep the paper's SGD recipe
    paper = build_config(PretrainConfig, model="deeplabv2_resnet101", **REQUIRED)
    assert (paper.optimizer, paper.lr, paper.schedule, paper.warmup_iterations) == ("sgd", 2.5e-4, "poly", 0)
    # subclasses (adaptation, distillation) get the recipe too
    adapt = build_config(AdaptConfig, model="swiftnet_thin", init="file:///i.pt", target_manifest="file:///t.parquet",
                         **REQUIRED)
    assert adapt.optimizer == "adamw"


@pytest.mark.parametrize("network", sorted(NETWORK_RECIPES))
def test_every_recipe_is_a_valid_config(network):
    """Recipes bypass validation when filled in: each must equal what validation would produce."""
    filled = build_config(PretrainConfig, model=network, **REQUIRED)
    explicit = build_config(PretrainConfig, model=network, **REQUIRED, **NETWORK_RECIPES[network])
    assert filled.model_dump() == explicit.model_dump()
    # and a list where a tuple is declared (YAML, CLI) still validates next to a recipe
    assert build_config(PretrainConfig, model=network, crop=[32, 64], **REQUIRED).crop == (32, 64)


def test_bad_recipe_values_name_the_field():
    with pytest.raises(ConfigError, match="optimizer"):
        build_config(PretrainConfig, model="swiftnet_tiny", optimizer="adam", **REQUIRED)
    with pytest.raises(ConfigError, match="schedule"):
        build_config(PretrainConfig, model="swiftnet_tiny", schedule="step", **REQUIRED)
    with pytest.raises(ConfigError, match="warmup_iterations"):
        build_config(PretrainConfig, model="swiftnet_tiny", warmup_iterations=-1, **REQUIRED)


def test_optimizers_and_their_group_learning_rates():
    model = create_model("swiftnet_tiny")
    adamw = engine.build_optimizer(build_config(PretrainConfig, model="swiftnet_tiny", lr=1e-3, **REQUIRED), model)
    assert isinstance(adamw, torch.optim.AdamW)
    assert [g["lr"] for g in adamw.param_groups] == [1e-3, 1e-3]  # no 10x heads under AdamW
    sgd = engine.build_optimizer(
        build_config(PretrainConfig, model="swiftnet_tiny", optimizer="sgd", lr=0.01, **REQUIRED), model)
    assert isinstance(sgd, torch.optim.SGD)
    assert [g["lr"] for g in sgd.param_groups] == [0.01, 0.1]
    # the schedule scales every group by the same factor, warm-up first
    scheduler = engine.lr_schedule(sgd, 100, "cosine", 0.9, warmup=10)
    assert [g["lr"] for g in sgd.param_groups] == pytest.approx([0.001, 0.01])
    for _ in range(10):
        sgd.step()
        scheduler.step()
    factor = 0.5 * (1 + math.cos(math.pi * 0.1))
    assert [g["lr"] for g in sgd.param_groups] == pytest.approx([0.01 * factor, 0.1 * factor])


def test_optimizers_use_the_fused_kernels_on_cpu_and_cuda_only():
    model = create_model("swiftnet_tiny")
    adamw = engine.build_optimizer(build_config(PretrainConfig, model="swiftnet_tiny", **REQUIRED), model)
    sgd = engine.build_optimizer(build_config(PretrainConfig, model="swiftnet_tiny", optimizer="sgd", **REQUIRED), model)
    adam = engine.adam(nn.Conv2d(3, 4, 3), 1e-4, (0.9, 0.99))
    assert adamw.defaults["fused"] is sgd.defaults["fused"] is adam.defaults["fused"] is True
    assert adam.defaults["betas"] == (0.9, 0.99) and adam.defaults["lr"] == 1e-4
    # a device without fused kernels (here: meta) gets torch's default implementation
    assert engine.fused_update(nn.Conv2d(3, 4, 3, device="meta")) == {}
    # one fused AdamW step from zero state: p - lr * (g / (|g| + eps)) - lr * wd * p, per element
    w = nn.Linear(1, 1, bias=False)
    nn.init.constant_(w.weight, 2.0)
    opt = torch.optim.AdamW(w.parameters(), lr=0.1, weight_decay=0.5, **engine.fused_update(w))
    w(torch.ones(1, 1)).sum().backward()  # gradient 1
    opt.step()
    assert w.weight.item() == pytest.approx(2.0 - 0.1 * 0.5 * 2.0 - 0.1 * 1.0 / (1.0 + 1e-8), abs=1e-6)


def test_photometric_jitter_changes_colours_not_geometry():
    rng = np.random.default_rng(0)
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = (200, 100, 50)
    out = photometric_jitter(image, rng)
    assert out.dtype == np.uint8 and out.shape == image.shape
    # the two regions stay uniform and distinct (a per-pixel colour map, no spatial change)
    assert len(np.unique(out[:, :4].reshape(-1, 3), axis=0)) == 1
    assert len(np.unique(out[:, 4:].reshape(-1, 3), axis=0)) == 1
    assert not np.array_equal(out, image)
    # deterministic for one rng state
    np.testing.assert_array_equal(photometric_jitter(image, np.random.default_rng(0)), out)

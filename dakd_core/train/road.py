"""ROAD (seed 003): L = L_seg + road_lambda_dist * L_dist + road_lambda_spt * L_spt.

Per iteration, one forward of [source crops; target crops] through the segmenter (the paper feeds
both domains together):
- L_seg: CE of both heads on the labelled source crops (aux weighted `aux_weight`);
- L_dist: target-guided distillation, ||x - z||_2 per position between the segmenter's dense
  (stride-8: `model.dense_feature`) features and those of the frozen "pretrained real-style model"
  on the TARGET crops. That model is `road_reference` (`reference_model`): by default the network
  with its ImageNet backbone weights (ROAD section 3.1: "the pretrained ImageNet model", same
  structure as the backbone), or a given checkpoint pretrained on real images, or - a documented
  deviation for networks without pretrained weights - the source-trained init checkpoint. It
  normalises the target crops with its running BatchNorm statistics (eval mode) or, under
  road_reference_statistics 'batch', with the target batch's own (`reference_statistics`);
- L_spt: spatial-aware adaptation, a pixel-level domain classifier per cell of a road_grid split of
  the crop's feature map, behind a gradient reversal layer: one backward trains the classifiers to
  tell the domains apart and the segmenter to confuse them. The regions are those of the training
  crop (the paper maps activations back to full-image coordinates; with crop == resized image,
  as in the built-in pair's runs, the two coincide).
The classifiers use Adam (`d_lr`, `d_betas`), so their step does not shrink with road_lambda_spt.
"""

from __future__ import annotations

import contextlib

import torch

from dakd_core.errors import ConfigError
from dakd_core.losses.road import RegionDomainClassifiers, spatial_aware_loss, target_guided_distillation
from dakd_core.models import create_model
from dakd_core.train import engine
from dakd_core.train.configs import AdaptConfig
from dakd_core.train.loop_setup import cpu_state, setup
from dakd_core.train.uda_common import (
    WithFeatures, batch_statistics, forward_by_domain, frozen_copy, launch, load_init,
)

STAGE = "adapt"


def reference_model(cfg: AdaptConfig) -> torch.nn.Module:
    """The frozen (eval mode, no gradients) model z of L_dist, as `cfg.road_reference` names it."""
    choice = cfg.road_reference
    if choice == "imagenet":
        reference = create_model(cfg.model, num_classes=cfg.num_classes, backbone_weights=cfg.backbone_weights)
        # Only the backbone carries pretrained weights: L_dist must read a backbone map ("last" of a
        # DeepLab), not one that passes through randomly initialised layers (a SwiftNet's decoder).
        if reference.dense_feature != "last":
            raise ConfigError(
                f"road_reference 'imagenet': {cfg.model}'s dense feature map '{reference.dense_feature}' passes "
                "through layers without pretrained weights; give road_reference a checkpoint URI instead")
    else:
        reference = create_model(cfg.model, num_classes=cfg.num_classes)
        load_init(reference, cfg.init if choice == "init" else choice)
    return frozen_copy(reference)


def reference_statistics(reference: torch.nn.Module, cfg: AdaptConfig):
    """The BatchNorm statistics the reference normalises the target crops with for the duration
    (`road_reference_statistics`). 'running' is eval mode: under road_reference 'init' the source
    domain's averages, while the student's target features in L_dist are normalised with the target
    batch's own (forward_by_domain). 'batch' gives the reference the target batch's statistics too."""
    if cfg.road_reference_statistics == "batch":
        return batch_statistics(reference)
    return contextlib.nullcontext()


def run(cfg: AdaptConfig) -> engine.TrainResult:
    return launch(_train, cfg)


def _train(cfg: AdaptConfig, dist: engine.Dist) -> engine.TrainResult:
    loop = setup(cfg, dist, ("source", "target"))
    model, optimizer, scaler, device, amp = loop.model, loop.optimizer, loop.scaler, loop.device, loop.amp
    level = model.dense_feature  # ROAD's features: the stride-8 map the classifiers read
    classifiers = RegionDomainClassifiers(model.feature_channels[level], cfg.road_grid).to(device)
    c_optimizer = engine.adam(classifiers, cfg.d_lr, cfg.d_betas)
    c_scheduler = engine.poly_schedule(c_optimizer, cfg.iterations, cfg.poly_power)
    keeper = engine.RunKeeper(cfg, STAGE, dist, model, lambda step: loop.payload(
        step, classifiers=cpu_state(classifiers), c_optimizer=c_optimizer.state_dict(),
        c_scheduler=c_scheduler.state_dict(), method=cfg.method, init=cfg.init))
    # The frozen real-style model is rebuilt from its source on a fresh run and on a resume alike.
    reference = engine.channels_last(reference_model(cfg), device)
    payload, start = loop.resume(keeper, init=cfg.init)
    if payload is not None:
        classifiers.load_state_dict(payload["classifiers"])
        c_optimizer.load_state_dict(payload["c_optimizer"])
        c_scheduler.load_state_dict(payload["c_scheduler"])
    net = engine.wrap_ddp(WithFeatures(model), dist)
    c_net = engine.wrap_ddp(classifiers, dist)
    net.train()

    with keeper.tracking():
        for step in keeper.steps(start):
            src = engine.to_device(loop.streams["source"].next(), device)
            tgt = engine.to_device(loop.streams["target"].next(), device)
            with engine.autocast(device, amp):
                (feats_s, out_s), (feats_t, _) = forward_by_domain(
                    net, [src["image"], tgt["image"]], [False, True], cfg.bn_statistics)
                with torch.no_grad(), reference_statistics(reference, cfg):
                    frozen_t = reference.forward_features(tgt["image"])[level]
            last_s, last_t = feats_s[level], feats_t[level]
            terms = engine.source_seg_terms(out_s, src["label"])
            terms["dist"] = target_guided_distillation(last_t, frozen_t)
            terms["spt"] = spatial_aware_loss(c_net, last_s, last_t)
            losses = engine.check_finite(step, terms)
            loss = (terms["seg_main"] + cfg.aux_weight * terms["seg_aux"]
                    + cfg.road_lambda_dist * terms["dist"] + cfg.road_lambda_spt * terms["spt"])
            optimizer.zero_grad(set_to_none=True)
            c_optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.step(c_optimizer)
            scaler.update()
            loop.scheduler.step()
            c_scheduler.step()
            keeper.end_step(step, losses)
        return keeper.finish(cfg.iterations - start, model)

"""DiGA (seed 001): distillation warm-up, then threshold-free self-training (one stage run).

Steps 1 .. W (W = ceil(diga_warmup_fraction * iterations)), no adversarial alignment:
    x_cdm = CrDoMix(strong(x_s), x_s in the style of a target image, ClassMix mask of y_s)
    student on x_s and on x_cdm (each its own BatchNorm batch, running averages frozen under
      bn_statistics "target"), EMA teacher on the same, each batch with its own statistics too (no
      gradient; its running averages, the student's EMA, are the target's); the student also runs the
      target crops without a loss, so its running BatchNorm averages become target statistics
    L = diga_lambda_distil * L_distil(eq. 4, alpha = diga_alpha) + diga_lambda_seg * L_s^seg
    after each step: teacher <- xi * teacher + (1 - xi) * student (eq. 5; xi = ema_decay(cfg):
      a half-life of diga_ema_half_life * W steps, the paper's 0.999 at its 80 000-step warm-up)
Step W+1 freezes the EMA teacher as the warm-up model; steps W+1 .. end add target crops:
    prototypes: EMA (eq. 10, delta = diga_proto_momentum) of per-class mean features of the
      warm-up model on source crops (labels; their own batch statistics) and target crops
      (consensus; its running, target statistics): its stride-8
      `dense_feature` map, upsampled to the grid of its main logits
    y_t = nearest-prototype label where it equals the warm-up model's argmax (both on that grid),
      else ignored
    L = diga_lambda_distil * L_distil + diga_lambda_seg * (L_s^seg + CE(student(x_t), y_t))   (eq. 11)
The strong view is photometric only (contrast, brightness, noise per image), so every pixel keeps
its label and the pixel-wise distillation compares the same scene point.
"""

from __future__ import annotations

import math

import torch

from dakd_core.losses import segmentation_loss
from dakd_core.losses._util import resize_bilinear
from dakd_core.losses.diga import (
    batch_prototypes, class_mix_mask, consensus_labels, crdomix, mean_std_style, nearest_prototype_labels,
    symmetric_distillation, update_prototypes,
)
from dakd_core.train import engine
from dakd_core.train.configs import AdaptConfig
from dakd_core.train.loop_setup import cpu_state, setup
from dakd_core.train.uda_common import (
    WithFeatures, batch_statistics, ema_update, forward_by_domain, frozen_copy, launch,
)

STAGE = "adapt"


def warmup_steps(cfg: AdaptConfig) -> int:
    return math.ceil(cfg.diga_warmup_fraction * cfg.iterations)


def ema_decay(cfg: AdaptConfig) -> float:
    """xi of eq. 5 for this run: the teacher's half-life is the fraction `diga_ema_half_life` of
    the warm-up (0.999 at the paper's 80 000 warm-up steps, 0.670 at a 200-step one), so by the
    end of any warm-up the source-only init weighs 0.5 ** (1 / diga_ema_half_life) in it."""
    return 0.5 ** (1 / (cfg.diga_ema_half_life * warmup_steps(cfg)))


def strong_photometric(images: torch.Tensor) -> torch.Tensor:
    """Per image: contrast x U(0.6, 1.4) around the channel means, brightness + U(-0.4, 0.4) (in
    normalised units, per channel), Gaussian noise sigma 0.1. Draws from the global torch RNG (which
    checkpoints restore)."""
    n, c = images.shape[:2]
    gen_device = images.device
    contrast = torch.empty(n, 1, 1, 1, device=gen_device).uniform_(0.6, 1.4)
    brightness = torch.empty(n, c, 1, 1, device=gen_device).uniform_(-0.4, 0.4)
    mean = images.mean(dim=(-2, -1), keepdim=True)
    return (images - mean) * contrast + mean + brightness + 0.1 * torch.randn_like(images)


def run(cfg: AdaptConfig) -> engine.TrainResult:
    return launch(_train, cfg)


def _train(cfg: AdaptConfig, dist: engine.Dist) -> engine.TrainResult:
    loop = setup(cfg, dist, ("source", "target"))
    model, optimizer, scaler, device, amp = loop.model, loop.optimizer, loop.scaler, loop.device, loop.amp
    warmup, xi = warmup_steps(cfg), ema_decay(cfg)
    dim = model.feature_channels[model.dense_feature]  # prototypes live on the stride-8 features
    state = {  # what self-training adds; all of it goes into checkpoints
        "warm": None,  # frozen warm-up model (set at step W+1)
        "prototypes": torch.zeros(cfg.num_classes, dim, device=device),
        "valid": torch.zeros(cfg.num_classes, dtype=torch.bool, device=device),
    }

    def snapshot(step: int) -> dict:
        warm = state["warm"]
        return loop.payload(
            step, teacher=cpu_state(teacher), warm_model=None if warm is None else cpu_state(warm),
            prototypes=state["prototypes"].cpu(), prototypes_valid=state["valid"].cpu(),
            method=cfg.method, init=cfg.init,
        )

    keeper = engine.RunKeeper(cfg, STAGE, dist, model, snapshot)
    payload, start = loop.resume(keeper, init=cfg.init)
    teacher = frozen_copy(model)  # the EMA teacher starts as the init (or resumes below)
    if payload is not None:
        teacher.load_state_dict(payload["teacher"])
        if payload["warm_model"] is not None:
            state["warm"] = frozen_copy(model)
            state["warm"].load_state_dict(payload["warm_model"])
        state["prototypes"] = payload["prototypes"].to(device)
        state["valid"] = payload["prototypes_valid"].to(device)
    net = engine.wrap_ddp(WithFeatures(model), dist)
    net.train()

    with keeper.tracking():
        for step in keeper.steps(start):
            src = engine.to_device(loop.streams["source"].next(), device)
            tgt = engine.to_device(loop.streams["target"].next(), device)
            x_s, y_s, x_t = src["image"], src["label"], tgt["image"]
            n = x_s.shape[0]
            self_training = step > warmup
            if self_training and state["warm"] is None:
                state["warm"] = frozen_copy(teacher)  # the warm-up model: the EMA teacher at step W
            # target styling: source image i takes the colour statistics of target image i
            styled = mean_std_style(x_s, x_t[torch.arange(n, device=device) % x_t.shape[0]])
            x_cdm = crdomix(strong_photometric(x_s), styled, class_mix_mask(y_s))
            with engine.autocast(device, amp):
                # x_cdm is source content (source image, target colours): only x_t is a target batch
                (_, out_s), (_, out_cdm) = forward_by_domain(net, [x_s, x_cdm], [False, False], cfg.bn_statistics)
                # The target batch runs in the warm-up too, without a loss (as the reference
                # code's warm-up does): it gives the running BatchNorm averages - and through the
                # EMA the teacher and the warm-up model that labels the target - target statistics.
                with torch.set_grad_enabled(self_training):
                    (_, out_t), = forward_by_domain(net, [x_t], [True], cfg.bn_statistics)
                # the EMA teacher on the same two source-content batches, each normalised with its
                # own statistics as the student's are: its running averages follow the student's
                # target ones (`dakd bench results`, teacher_diga, seeds 0/1/2: tune mIoU 13.2 / 3.4 /
                # 18.2 % with them, 50.1 / 50.2 / 44.1 % with batch statistics; docs/results.md)
                with torch.no_grad(), batch_statistics(teacher):
                    t_clean, t_strong = teacher(x_s), teacher(x_cdm)
            terms = engine.source_seg_terms(out_s, y_s)
            terms["distil"] = symmetric_distillation(out_s.main, out_cdm.main, t_clean.main, t_strong.main, cfg.diga_alpha)
            if self_training:
                terms["seg_target"], terms["pseudo_coverage"] = _self_training_term(cfg, state, x_s, y_s, x_t, out_t, device, amp)
            losses = engine.check_finite(step, terms)
            seg = terms["seg_main"] + cfg.aux_weight * terms["seg_aux"] + terms.get("seg_target", 0.0)
            loss = cfg.diga_lambda_distil * terms["distil"] + cfg.diga_lambda_seg * seg
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            loop.scheduler.step()
            ema_update(teacher, model, xi)
            keeper.end_step(step, losses)
        return keeper.finish(cfg.iterations - start, model)


def _self_training_term(cfg: AdaptConfig, state: dict, x_s, y_s, x_t, out_t, device, amp):
    """CE of the student's target prediction on bilateral-consensus pseudo labels (eqs. 8-11),
    and the fraction of target pixels that got a label (logged, not optimised).

    Prototypes and labels live on the grid of the warm-up model's main logits: its stride-8
    `dense_feature` map is upsampled bilinearly to it (a stride-2 network's 64x128 crop gives
    32x64 labels, not 8x16), so the consensus compares two maps of one resolution and the
    labels are as fine as the predictions they supervise."""
    warm = state["warm"]
    with torch.no_grad(), engine.autocast(device, amp):
        with batch_statistics(warm):  # source images: source statistics (their own), not the target's
            feats_s = warm.forward_features(x_s)[warm.dense_feature]
        feats_t = warm.forward_features(x_t)
        logits_t = warm.forward_head(feats_t).main
    grid = logits_t.shape[-2:]  # source and target crops have one size (cfg.crop): one grid
    delta = cfg.diga_proto_momentum
    rho, present = batch_prototypes(resize_bilinear(feats_s.float(), grid), y_s, cfg.num_classes)
    state["prototypes"], state["valid"] = update_prototypes(state["prototypes"], state["valid"], rho, present, delta)
    feats_t = resize_bilinear(feats_t[warm.dense_feature].float(), grid)
    pseudo = consensus_labels(nearest_prototype_labels(feats_t, state["prototypes"], state["valid"]), logits_t)
    rho, present = batch_prototypes(feats_t, pseudo, cfg.num_classes)
    state["prototypes"], state["valid"] = update_prototypes(state["prototypes"], state["valid"], rho, present, delta)
    coverage = (pseudo != 255).float().mean()
    return segmentation_loss(out_t.main, pseudo), coverage

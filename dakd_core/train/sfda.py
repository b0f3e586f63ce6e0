"""SFDA (seed 002): source-free adaptation from the init (source) checkpoint and target images.

`source_manifest` is never opened (it may be left unset): the only source knowledge is the init
checkpoint. Networks: the adapted segmenter S (= the target model T, shared weights), a frozen
copy S~ of the init checkpoint, a generator G of fake source images, and IPSM's conditional patch
discriminator D.
Per iteration (B target crops, B noise vectors):
1. G (eq. 11):  L_BNS(S~) - alpha * L_MAE - beta * L_DAD^ss + tau * L_DAD^st   (S, D fixed)
2. S (eq. 16):  alpha * L_MAE + beta * L_DAD^ss on the detached fakes, then
                L_TAR (max squares) + gamma * L_ADV on the target crops, where L_ADV pushes the
                hard (higher-entropy) half of every patch position to look "easy" to D
3. D:           easy patches -> label 0, hard patches -> label 1 (BCE, as bce_adversarial)
Every gradient is computed before any optimizer step, so the NaN guard sees all terms first.
S's running BatchNorm averages (what evaluation uses) move once per iteration, on step 2's target
batch; step 1 leaves them alone (S is fixed there) and step 2's fakes do too under bn_statistics
"target" (with "both" the fakes of step 2 move them as well).
S uses SGD with Nesterov momentum and weight decay 1e-4 (the paper's optimiser; an AdamW segmenter
stays AdamW); G and D use Adam at the paper's lr 0.1 (sfda_g_lr, sfda_d_lr).
Dual attention is computed on the stride-8 `dense_feature` map (DeepLab: the last backbone stage); the fakes are sfda_fake_size (default half
the crop, the paper's 256x128 for 512x256 crops).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dakd_core.losses.sfda import (
    ConditionalPatchDiscriminator, bn_statistics, bns_loss, dad_ss, dad_st, ipsm_adversarial_loss,
    ipsm_discriminator_loss, mae_loss, max_squares, patch_entropy, patches, rank_easy_hard,
)
from dakd_core.losses._util import resize_bilinear
from dakd_core.models import Discriminator, create_model
from dakd_core.train import engine
from dakd_core.train.configs import AdaptConfig
from dakd_core.train.loop_setup import cpu_state, setup
from dakd_core.train.uda_common import WithFeatures, frozen_copy, launch, load_init

STAGE = "adapt"


class Generator(nn.Module):
    """z (latent) -> fake normalised image (3, H, W): linear to a (2 ngf, H/4, W/4) map, two
    (upsample x2, 3x3 conv, BatchNorm, LeakyReLU) blocks, a 3x3 conv to RGB, and an affine-free
    BatchNorm that keeps each channel near zero mean / unit variance like a normalised image."""

    def __init__(self, latent: int, size: tuple[int, int], ngf: int = 64):
        super().__init__()
        self.size = tuple(size)
        self.h0, self.w0 = math.ceil(size[0] / 4), math.ceil(size[1] / 4)
        self.ngf = ngf
        self.fc = nn.Linear(latent, 2 * ngf * self.h0 * self.w0)
        self.net = nn.Sequential(
            nn.BatchNorm2d(2 * ngf),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1), nn.BatchNorm2d(2 * ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Upsample(scale_factor=2), nn.Conv2d(2 * ngf, ngf, 3, padding=1), nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(ngf, 3, 3, padding=1), nn.BatchNorm2d(3, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).reshape(z.shape[0], 2 * self.ngf, self.h0, self.w0)
        return self.net(x)[..., : self.size[0], : self.size[1]]


def fake_size(cfg: AdaptConfig) -> tuple[int, int]:
    if cfg.sfda_fake_size is not None:
        return tuple(cfg.sfda_fake_size)
    return max(8, cfg.crop[0] // 2), max(8, cfg.crop[1] // 2)


def use_nesterov(optimizer: torch.optim.Optimizer) -> None:
    """The paper's SGD with Nesterov momentum, for an SGD segmenter with momentum; an AdamW one (the
    CPU-scale networks' recipe) has no such option and is left as it is."""
    if isinstance(optimizer, torch.optim.SGD):
        for group in optimizer.param_groups:
            group["nesterov"] = group["momentum"] > 0


def segmenter_trainable(model: nn.Module, trainable: bool) -> None:
    """Turn S's gradients on or off; its aux head stays off. No SFDA loss reads the aux output, so
    the head never gets a gradient, and DDP, which waits for one of every parameter that requires it,
    would stop the second iteration ("Expected to have finished reduction in the prior iteration")."""
    model.requires_grad_(trainable)
    model.aux_head.requires_grad_(False)


def run(cfg: AdaptConfig) -> engine.TrainResult:
    return launch(_train, cfg)


def _train(cfg: AdaptConfig, dist: engine.Dist) -> engine.TrainResult:
    loop = setup(cfg, dist, ("target",))
    model, optimizer, scaler, device, amp = loop.model, loop.optimizer, loop.scaler, loop.device, loop.amp
    level = model.dense_feature  # DAD compares the stride-8 features the classifiers read
    use_nesterov(optimizer)
    generator = Generator(cfg.sfda_latent, fake_size(cfg)).to(device)
    disc = ConditionalPatchDiscriminator(cfg.num_classes, cfg.sfda_patches, ndf=cfg.d_ndf).to(device)
    g_optimizer = engine.adam(generator, cfg.sfda_g_lr, cfg.d_betas)
    d_optimizer = engine.adam(disc, cfg.sfda_d_lr, cfg.d_betas)
    g_scheduler = engine.poly_schedule(g_optimizer, cfg.iterations, cfg.poly_power)
    d_scheduler = engine.poly_schedule(d_optimizer, cfg.iterations, cfg.poly_power)
    tau = cfg.sfda_beta if cfg.sfda_tau is None else cfg.sfda_tau
    keeper = engine.RunKeeper(cfg, STAGE, dist, model, lambda step: loop.payload(
        step, generator=cpu_state(generator), g_optimizer=g_optimizer.state_dict(), g_scheduler=g_scheduler.state_dict(),
        discriminator=cpu_state(disc), d_optimizer=d_optimizer.state_dict(), d_scheduler=d_scheduler.state_dict(),
        method=cfg.method, init=cfg.init))
    fixed = engine.channels_last(create_model(cfg.model, num_classes=cfg.num_classes), device)
    load_init(fixed, cfg.init)
    fixed = frozen_copy(fixed)  # S~: the source model, BatchNorm on its source running statistics
    payload, start = loop.resume(keeper, init=cfg.init)
    if payload is not None:
        generator.load_state_dict(payload["generator"])
        g_optimizer.load_state_dict(payload["g_optimizer"])
        g_scheduler.load_state_dict(payload["g_scheduler"])
        disc.load_state_dict(payload["discriminator"])
        d_optimizer.load_state_dict(payload["d_optimizer"])
        d_scheduler.load_state_dict(payload["d_scheduler"])
    segmenter_trainable(model, True)  # before DDP: it registers the parameters that require gradients
    net = engine.wrap_ddp(WithFeatures(model), dist)
    g_net = engine.wrap_ddp(generator, dist)
    d_net = engine.wrap_ddp(disc, dist)
    net.train()
    generator.train()

    with keeper.tracking():
        for step in keeper.steps(start):
            x_t = engine.to_device(loop.streams["target"].next(), device)["image"]
            b = x_t.shape[0]
            for o in (optimizer, g_optimizer, d_optimizer):
                o.zero_grad(set_to_none=True)
            terms = {}

            # 1. generator step: S and D fixed (S called unwrapped: its gradients are not wanted).
            # "Fixed" includes S's running BatchNorm averages: its train-mode passes here (the fakes,
            # and the target batch that step 2 counts once) normalise with their batch statistics
            # but leave the averages alone, so only step 2's target pass moves them.
            segmenter_trainable(model, False)
            disc.requires_grad_(False)
            with engine.autocast(device, amp):
                fake = g_net(torch.randn(b, cfg.sfda_latent, device=device))
                with bn_statistics(fixed) as records:
                    fixed_feats = fixed.forward_features(fake)
                fixed_out = fixed.forward_head(fixed_feats)
                with engine.bn_running_stats_frozen(model):
                    feats = model.forward_features(fake)
                    out = model.forward_head(feats)
                    with torch.no_grad():
                        target_feats = model.forward_features(x_t)[level]
            terms["bns"] = bns_loss(records)
            terms["g_mae"] = mae_loss(out.main, fixed_out.main)
            terms["g_dad_ss"] = dad_ss(fixed_feats[level], feats[level])
            terms["g_dad_st"] = dad_st(fixed_feats[level], target_feats)
            g_loss = terms["bns"] - cfg.sfda_alpha * terms["g_mae"] - cfg.sfda_beta * terms["g_dad_ss"] + tau * terms["g_dad_st"]
            scaler.scale(g_loss).backward()
            segmenter_trainable(model, True)

            # 2. segmenter step: knowledge transfer on the detached fakes, then target adaptation
            fake = fake.detach()
            with torch.no_grad(), engine.autocast(device, amp):
                fixed_feats = fixed.forward_features(fake)
                fixed_out = fixed.forward_head(fixed_feats)
            with engine.no_sync(net):  # the target backward below all-reduces both gradients
                # fakes stand in for source images: they must not move the target BatchNorm statistics
                with engine.autocast(device, amp), engine.bn_running_stats_frozen(net, cfg.bn_statistics == "target"):
                    feats, out = net(fake)
                terms["mae"] = mae_loss(out.main, fixed_out.main)
                terms["dad_ss"] = dad_ss(fixed_feats[level], feats[level])
                scaler.scale(cfg.sfda_alpha * terms["mae"] + cfg.sfda_beta * terms["dad_ss"]).backward()
            with engine.autocast(device, amp):
                _, out_t = net(x_t)
            terms["tar"] = max_squares(out_t.main)
            probs = torch.softmax(resize_bilinear(out_t.main.float(), x_t.shape[-2:]), dim=1)
            easy, hard = rank_easy_hard(patch_entropy(out_t.main, cfg.sfda_patches).detach())
            patch_maps = patches(probs, cfg.sfda_patches, Discriminator.MIN_SIZE)
            terms["adv"] = ipsm_adversarial_loss(disc, patch_maps, hard)
            scaler.scale(terms["tar"] + cfg.sfda_gamma * terms["adv"]).backward()

            # 3. discriminator step: easy -> 0 ("source" side of bce_adversarial), hard -> 1
            disc.requires_grad_(True)
            with engine.autocast(device, amp):
                terms["d_ipsm"] = ipsm_discriminator_loss(d_net, patch_maps, easy, hard)
            scaler.scale(terms["d_ipsm"]).backward()

            losses = engine.check_finite(step, terms)
            for o in (optimizer, g_optimizer, d_optimizer):
                scaler.step(o)
            scaler.update()
            for s in (loop.scheduler, g_scheduler, d_scheduler):
                s.step()
            keeper.end_step(step, losses)
        return keeper.finish(cfg.iterations - start, model)

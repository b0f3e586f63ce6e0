"""Output-space adversarial adaptation (AdaptSegNet multi-level; ADVENT's entropy maps).

Per iteration, as in AdaptSegNet's reference loop:
1. discriminators fixed: step the segmenter on
       L_seg(source) + lambda_adv_main * L_adv(main, target) + lambda_adv_aux * L_adv(aux, target),
   L_adv = BCE of D(target maps) towards the SOURCE label (eq. 2: fool D);
2. segmenter fixed (inputs detached): step each discriminator on
       (BCE(D(source maps), source) + BCE(D(target maps), target)) / 2.
The maps are softmax probabilities (AdaptSegNet) or weighted self-information -p log p (ADVENT),
upsampled to the crop size before the discriminator.

`run` dispatches the other methods (road, diga, sfda) to dakd_core/train/{method}.py.
"""

from __future__ import annotations

import importlib

import torch

from dakd_core.errors import TrainingError
from dakd_core.losses import bce_adversarial
from dakd_core.models import Discriminator, discriminator_input
from dakd_core.models.checkpoint import load_checkpoint, load_state_into, make_payload
from dakd_core.train import engine
from dakd_core.train.configs import ADVERSARIAL_METHODS, AdaptConfig

STAGE = "adapt"
LEVELS = ("main", "aux")


def run(cfg: AdaptConfig) -> engine.TrainResult:
    if cfg.method not in ADVERSARIAL_METHODS:  # road / diga / sfda: one loop module each
        return importlib.import_module(f"dakd_core.train.{cfg.method}").run(cfg)
    dist = engine.init_distributed(cfg.device)
    try:
        return _train(cfg, dist)
    finally:
        engine.shutdown_distributed(dist)


def build_discriminators(cfg: AdaptConfig, dist: engine.Dist):
    """One discriminator per output level, Adam with AdaptSegNet's betas, poly-decayed like G."""
    discs = {lvl: Discriminator(cfg.num_classes, cfg.d_ndf).to(dist.device) for lvl in LEVELS}
    optimizers = {
        lvl: torch.optim.Adam(d.parameters(), lr=cfg.d_lr, betas=tuple(cfg.d_betas)) for lvl, d in discs.items()
    }
    schedulers = {lvl: engine.poly_schedule(o, cfg.iterations, cfg.poly_power) for lvl, o in optimizers.items()}
    return discs, optimizers, schedulers


def _train(cfg: AdaptConfig, dist: engine.Dist) -> engine.TrainResult:
    device = dist.device
    engine.seed_everything(cfg.seed + dist.rank)
    model, optimizer, scheduler = engine.build_segmenter(cfg, dist)
    discs, d_optimizers, d_schedulers = build_discriminators(cfg, dist)
    amp = engine.amp_enabled(cfg, device)
    scaler = engine.make_scaler(device, amp)  # one scaler, updated once per iteration
    source = engine.image_stream(cfg, dist, cfg.source_manifest, cfg.source_resize, True, "source_manifest")
    target = engine.image_stream(cfg, dist, cfg.target_manifest, cfg.target_resize, False, "target_manifest", 1)
    weights = {"main": cfg.lambda_adv_main, "aux": cfg.lambda_adv_aux}

    def snapshot(step: int) -> dict:
        return make_payload(
            model, step,
            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
            discriminators={k: {n: t.detach().cpu() for n, t in d.state_dict().items()} for k, d in discs.items()},
            d_optimizers={k: o.state_dict() for k, o in d_optimizers.items()},
            d_schedulers={k: s.state_dict() for k, s in d_schedulers.items()},
            data={"source": source.state_dict(), "target": target.state_dict()},
            method=cfg.method, init=cfg.init,
        )

    keeper = engine.RunKeeper(cfg, STAGE, dist, model, snapshot)
    start = 0
    payload = keeper.resume()
    if payload is not None:
        start = keeper.restore_segmenter(
            payload, model, optimizer, scheduler, scaler, {"source": source, "target": target}
        )
        for lvl in LEVELS:
            discs[lvl].load_state_dict(payload["discriminators"][lvl])
            d_optimizers[lvl].load_state_dict(payload["d_optimizers"][lvl])
            d_schedulers[lvl].load_state_dict(payload["d_schedulers"][lvl])
    else:
        init = load_checkpoint(cfg.init, map_location="cpu")
        try:
            load_state_into(model, init, cfg.init)
        except TrainingError as e:
            raise TrainingError(f"init: {e}") from None

    net = engine.wrap_ddp(model, dist)
    d_nets = {lvl: engine.wrap_ddp(d, dist) for lvl, d in discs.items()}
    net.train()

    with keeper.tracking():
        for step in keeper.steps(start):
            src = engine.to_device(source.next(), device)
            tgt = engine.to_device(target.next(), device)
            size = tuple(src["image"].shape[-2:])
            optimizer.zero_grad(set_to_none=True)
            for o in d_optimizers.values():
                o.zero_grad(set_to_none=True)

            # 1. segmenter step, discriminators fixed (called unwrapped: no DDP reduction for D here).
            for d in discs.values():
                d.requires_grad_(False)
            with engine.no_sync(net):  # the target backward below all-reduces both gradients
                with engine.autocast(device, amp):
                    out_s = net(src["image"])
                seg = engine.source_seg_terms(out_s, src["label"])
                scaler.scale(seg["seg_main"] + cfg.aux_weight * seg["seg_aux"]).backward()
            with engine.autocast(device, amp):
                out_t = net(tgt["image"])
                adv = {
                    f"adv_{lvl}": bce_adversarial(
                        discs[lvl](discriminator_input(getattr(out_t, lvl), cfg.discriminator_input, size)), True
                    )
                    for lvl in LEVELS
                }
            scaler.scale(sum(weights[lvl] * adv[f"adv_{lvl}"] for lvl in LEVELS)).backward()

            # 2. discriminator step on detached maps: source -> SOURCE label, target -> TARGET label.
            for d in discs.values():
                d.requires_grad_(True)
            d_terms = {}
            for lvl in LEVELS:
                maps = torch.cat([
                    discriminator_input(getattr(out_s, lvl).detach(), cfg.discriminator_input, size),
                    discriminator_input(getattr(out_t, lvl).detach(), cfg.discriminator_input, size),
                ])
                with engine.autocast(device, amp):
                    d_out = d_nets[lvl](maps)
                n = src["image"].shape[0]
                d_terms[f"d_{lvl}"] = (bce_adversarial(d_out[:n], True) + bce_adversarial(d_out[n:], False)) / 2
            scaler.scale(sum(d_terms.values())).backward()

            losses = engine.check_finite(step, {**seg, **adv, **d_terms})
            scaler.step(optimizer)
            for o in d_optimizers.values():
                scaler.step(o)
            scaler.update()
            scheduler.step()
            for s in d_schedulers.values():
                s.step()
            keeper.end_step(step, losses)
        return keeper.finish(cfg.iterations - start, model)

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

from dakd_core.losses import bce_adversarial
from dakd_core.models import Discriminator, discriminator_input
from dakd_core.train import engine
from dakd_core.train.configs import ADVERSARIAL_METHODS, AdaptConfig
from dakd_core.train.loop_setup import cpu_state, setup

STAGE = "adapt"
LEVELS = ("main", "aux")


def run(cfg: AdaptConfig) -> engine.TrainResult:
    if cfg.method not in ADVERSARIAL_METHODS:  # road / diga / sfda: one loop module each
        return importlib.import_module(f"dakd_core.train.{cfg.method}").run(cfg)
    return engine.launch(_train, cfg)


class OutputSpaceAdversary:
    """The multi-level output-space adversary of AdaptSegNet / ADVENT, shared by `adapt` and
    `distill` (the student keeps its adaptation while distilling): one discriminator per output
    level, Adam with AdaptSegNet's betas, poly-decayed like the segmenter.

    Per iteration the caller runs `freeze()`, adds `generator_terms` on target outputs to the
    segmenter's loss, then `unfreeze()` and backpropagates `discriminator_terms`, and finally
    `step(scaler)` after the segmenter's optimiser step.
    """

    def __init__(self, cfg: AdaptConfig, dist: engine.Dist):
        self.cfg, self.dist = cfg, dist
        self.discs = {lvl: engine.channels_last(Discriminator(cfg.num_classes, cfg.d_ndf), dist.device)
                      for lvl in LEVELS}
        self.optimizers = {
            lvl: engine.adam(d, cfg.d_lr, cfg.d_betas) for lvl, d in self.discs.items()
        }
        self.schedulers = {lvl: engine.poly_schedule(o, cfg.iterations, cfg.poly_power) for lvl, o in self.optimizers.items()}
        self.weights = {"main": cfg.lambda_adv_main, "aux": cfg.lambda_adv_aux}
        self._nets: dict | None = None  # DDP wrappers, made after a resume has loaded the weights

    def state_dict(self) -> dict:
        """Checkpoint payload entries (keys `discriminators`, `d_optimizers`, `d_schedulers`)."""
        return {
            "discriminators": {k: cpu_state(d) for k, d in self.discs.items()},
            "d_optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "d_schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_state_dict(self, payload: dict) -> None:
        for lvl in LEVELS:
            self.discs[lvl].load_state_dict(payload["discriminators"][lvl])
            self.optimizers[lvl].load_state_dict(payload["d_optimizers"][lvl])
            self.schedulers[lvl].load_state_dict(payload["d_schedulers"][lvl])

    def wrap(self) -> None:
        self._nets = {lvl: engine.wrap_ddp(d, self.dist) for lvl, d in self.discs.items()}

    def zero_grad(self) -> None:
        for o in self.optimizers.values():
            o.zero_grad(set_to_none=True)

    def freeze(self) -> None:
        for d in self.discs.values():
            d.requires_grad_(False)

    def unfreeze(self) -> None:
        for d in self.discs.values():
            d.requires_grad_(True)

    def generator_terms(self, out_t, size) -> dict[str, torch.Tensor]:
        """adv_{level}: BCE of D(target maps) against the SOURCE label. D runs unwrapped: its
        weights are frozen here, so no DDP reduction is wanted. Call under the caller's autocast."""
        return {f"adv_{lvl}": bce_adversarial(self.discs[lvl](self._input(getattr(out_t, lvl), size)), True)
                for lvl in LEVELS}

    def generator_loss(self, terms: dict) -> torch.Tensor:
        return sum(self.weights[lvl] * terms[f"adv_{lvl}"] for lvl in LEVELS)

    def discriminator_terms(self, out_s, out_t, size, amp: bool) -> dict[str, torch.Tensor]:
        """d_{level}: D's BCE on detached maps, source -> SOURCE label, target -> TARGET label."""
        terms = {}
        for lvl in LEVELS:
            maps = torch.cat([self._input(getattr(out_s, lvl).detach(), size),
                              self._input(getattr(out_t, lvl).detach(), size)])
            with engine.autocast(self.dist.device, amp):
                d_out = self._nets[lvl](maps)
            n = getattr(out_s, lvl).shape[0]
            terms[f"d_{lvl}"] = (bce_adversarial(d_out[:n], True) + bce_adversarial(d_out[n:], False)) / 2
        return terms

    def step(self, scaler) -> None:
        for o in self.optimizers.values():
            scaler.step(o)

    def schedule(self) -> None:
        for s in self.schedulers.values():
            s.step()

    def _input(self, logits: torch.Tensor, size) -> torch.Tensor:
        scale = self.cfg.d_input_scale
        if scale != 1:
            size = (round(size[0] * scale), round(size[1] * scale))
        return discriminator_input(logits, self.cfg.discriminator_input, size)


def _train(cfg: AdaptConfig, dist: engine.Dist) -> engine.TrainResult:
    loop = setup(cfg, dist, ("source", "target"))
    model, optimizer, scaler, device, amp = loop.model, loop.optimizer, loop.scaler, loop.device, loop.amp
    adversary = OutputSpaceAdversary(cfg, dist)
    keeper = engine.RunKeeper(cfg, STAGE, dist, model, lambda step: loop.payload(
        step, **adversary.state_dict(), method=cfg.method, init=cfg.init))
    payload, start = loop.resume(keeper, init=cfg.init)
    if payload is not None:
        adversary.load_state_dict(payload)

    net = engine.wrap_ddp(model, dist)
    adversary.wrap()
    net.train()
    source_frozen = cfg.bn_statistics == "target"

    with keeper.tracking():
        for step in keeper.steps(start):
            src = engine.to_device(loop.streams["source"].next(), device)
            tgt = engine.to_device(loop.streams["target"].next(), device)
            size = tuple(src["image"].shape[-2:])
            optimizer.zero_grad(set_to_none=True)
            adversary.zero_grad()

            # 1. segmenter step, discriminators fixed: source segmentation, then target adversarial.
            adversary.freeze()
            with engine.no_sync(net):  # the target backward below all-reduces both gradients
                with engine.autocast(device, amp), engine.bn_running_stats_frozen(net, source_frozen):
                    out_s = net(src["image"])
                seg = engine.source_seg_terms(out_s, src["label"])
                scaler.scale(seg["seg_main"] + cfg.aux_weight * seg["seg_aux"]).backward()
            with engine.autocast(device, amp):
                out_t = net(tgt["image"])
                adv = adversary.generator_terms(out_t, size)
            scaler.scale(adversary.generator_loss(adv)).backward()

            # 2. discriminator step on detached maps.
            adversary.unfreeze()
            d_terms = adversary.discriminator_terms(out_s, out_t, size, amp)
            scaler.scale(sum(d_terms.values())).backward()

            losses = engine.check_finite(step, {**seg, **adv, **d_terms})
            scaler.step(optimizer)
            adversary.step(scaler)
            scaler.update()
            loop.scheduler.step()
            adversary.schedule()
            keeper.end_step(step, losses)
        return keeper.finish(cfg.iterations - start, model)

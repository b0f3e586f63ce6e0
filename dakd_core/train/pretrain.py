"""Source-only training: L = CE(main, y) + aux_weight * CE(aux, y) on labelled source crops."""

from __future__ import annotations

from dakd_core.train import engine
from dakd_core.train.configs import PretrainConfig
from dakd_core.train.loop_setup import setup

STAGE = "pretrain"


def run(cfg: PretrainConfig) -> engine.TrainResult:
    return engine.launch(_train, cfg)


def _train(cfg: PretrainConfig, dist: engine.Dist) -> engine.TrainResult:
    loop = setup(cfg, dist, ("source",))
    device, amp, scaler = loop.device, loop.amp, loop.scaler
    keeper = engine.RunKeeper(cfg, STAGE, dist, loop.model, loop.payload)
    _, start = loop.resume(keeper)
    net = engine.wrap_ddp(loop.model, dist)
    net.train()

    with keeper.tracking():
        for step in keeper.steps(start):
            batch = engine.to_device(loop.streams["source"].next(), device)
            with engine.autocast(device, amp):
                output = net(batch["image"])
            terms = engine.source_seg_terms(output, batch["label"])
            losses = engine.check_finite(step, terms)
            loss = terms["seg_main"] + cfg.aux_weight * terms["seg_aux"]
            loop.optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(loop.optimizer)
            scaler.update()
            loop.scheduler.step()
            keeper.end_step(step, losses)
        return keeper.finish(cfg.iterations - start, loop.model)

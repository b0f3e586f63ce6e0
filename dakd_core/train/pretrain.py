"""Source-only training: L = CE(main, y) + aux_weight * CE(aux, y) on labelled source crops."""

from __future__ import annotations

from dakd_core.models.checkpoint import make_payload
from dakd_core.train import engine
from dakd_core.train.configs import PretrainConfig

STAGE = "pretrain"


def run(cfg: PretrainConfig) -> engine.TrainResult:
    return engine.launch(_train, cfg)


def _train(cfg: PretrainConfig, dist: engine.Dist) -> engine.TrainResult:
    device = dist.device
    engine.seed_everything(cfg.seed + dist.rank)
    model, optimizer, scheduler = engine.build_segmenter(cfg, dist)
    amp = engine.amp_enabled(cfg, device)
    scaler = engine.make_scaler(device, amp)
    source = engine.image_stream(cfg, dist, cfg.source_manifest, cfg.source_resize, True, "source_manifest")

    def snapshot(step: int) -> dict:
        return make_payload(
            model, step, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(), data={"source": source.state_dict()},
        )

    keeper = engine.RunKeeper(cfg, STAGE, dist, model, snapshot)
    start = 0
    payload = keeper.resume()
    if payload is not None:
        start = keeper.restore_segmenter(payload, model, optimizer, scheduler, scaler, {"source": source})
    net = engine.wrap_ddp(model, dist)
    net.train()

    with keeper.tracking():
        for step in keeper.steps(start):
            batch = engine.to_device(source.next(), device)
            with engine.autocast(device, amp):
                output = net(batch["image"])
            terms = engine.source_seg_terms(output, batch["label"])
            losses = engine.check_finite(step, terms)
            loss = terms["seg_main"] + cfg.aux_weight * terms["seg_aux"]
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            keeper.end_step(step, losses)
        return keeper.finish(cfg.iterations - start, model)

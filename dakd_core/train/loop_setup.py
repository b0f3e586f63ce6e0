"""What every training loop sets up before its first step, written once: seeding, the segmenter with
its optimiser and lr schedule, AMP and its gradient scaler, the data streams, the checkpoint
entries they contribute, and resuming them (or starting from `init`).

pretrain, adapt, road, diga and sfda start from `setup`; each adds its own networks and state
(discriminators, teachers, prototypes...) to the checkpoint through `Loop.payload(step, **entries)`
and restores them from the payload `Loop.resume` returns. Building the streams and the scaler draws
no random numbers, so a loop's own networks are initialised from the same RNG state as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dakd_core.models.checkpoint import make_payload
from dakd_core.train import engine
from dakd_core.train.uda_common import load_init

# domain -> (manifest field, resize field, labelled, stream seed offset)
DOMAINS = {
    "source": ("source_manifest", "source_resize", True, 0),
    "target": ("target_manifest", "target_resize", False, 1),
}


@dataclass
class Loop:
    cfg: object
    dist: engine.Dist
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    amp: bool
    scaler: torch.amp.GradScaler
    streams: dict  # domain -> engine.BatchStream

    @property
    def device(self) -> torch.device:
        return self.dist.device

    def payload(self, step: int, **entries) -> dict:
        """A checkpoint: the segmenter, its optimiser and schedule, the scaler, every stream's
        position, and the loop's own `entries`."""
        return make_payload(
            self.model, step,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
            data={name: stream.state_dict() for name, stream in self.streams.items()}, **entries,
        )

    def resume(self, keeper: engine.RunKeeper, init: str | None = None) -> tuple[dict | None, int]:
        """(payload, step to continue after) of an interrupted run, with everything `payload`
        saved by `setup` restored; on a fresh run (None, 0), the segmenter loaded from the
        checkpoint `init` when one is given."""
        payload = keeper.resume()
        if payload is not None:
            return payload, keeper.restore_segmenter(
                payload, self.model, self.optimizer, self.scheduler, self.scaler, self.streams)
        if init is not None:
            load_init(self.model, init)
        return None, 0


def cpu_state(module: nn.Module) -> dict:
    """A module's state dict as detached CPU tensors (a checkpoint entry)."""
    return {name: t.detach().cpu() for name, t in module.state_dict().items()}


def setup(cfg, dist: engine.Dist, domains: tuple[str, ...]) -> Loop:
    """Seed this rank, build the segmenter (optimiser, schedule), AMP and its scaler, and one
    augmented batch stream per domain ("source" labelled, "target" not)."""
    engine.seed_everything(cfg.seed + dist.rank)
    model, optimizer, scheduler = engine.build_segmenter(cfg, dist)
    amp = engine.amp_enabled(cfg, dist.device)
    streams = {}
    for domain in domains:
        manifest, resize, labelled, offset = DOMAINS[domain]
        streams[domain] = engine.image_stream(cfg, dist, getattr(cfg, manifest), getattr(cfg, resize), labelled,
                                              manifest, offset)
    return Loop(cfg, dist, model, optimizer, scheduler, amp, engine.make_scaler(dist.device, amp), streams)

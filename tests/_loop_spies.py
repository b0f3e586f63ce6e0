"""Spies on a training loop's internals for hand-valued loop tests: the losses it backpropagates,
the terms it logs, and which forward passes move a network's BatchNorm running averages."""

from __future__ import annotations

import torch

from dakd_core.train import engine


class LossSpy:
    """Patches `engine.make_scaler` and `engine.check_finite` (every loop gets its scaler and
    checks its terms through them). `steps()[k]` lists the losses step k+1 backpropagated, in
    order; `terms[k]` is that step's dict of logged terms (floats)."""

    def __init__(self, monkeypatch):
        self.scaled: list[float] = []
        self.terms: list[dict[str, float]] = []
        scaled, real_check = self.scaled, engine.check_finite

        class RecordingScaler(torch.amp.GradScaler):
            def scale(self, outputs):
                scaled.append(outputs.detach().float().item())
                return super().scale(outputs)

        def check_finite(step, terms):
            values = real_check(step, terms)
            self.terms.append(values)
            return values

        monkeypatch.setattr(engine, "make_scaler", lambda device, enabled: RecordingScaler(device.type, enabled=enabled))
        monkeypatch.setattr(engine, "check_finite", check_finite)

    def steps(self) -> list[list[float]]:
        """The scaled losses grouped by step (a loop scales the same number of losses every step)."""
        n, flat = len(self.terms), self.scaled
        per = len(flat) // n
        assert per * n == len(flat), (len(flat), n)
        return [flat[i * per:(i + 1) * per] for i in range(n)]


def bn_moves(monkeypatch) -> list[bool]:
    """For every training-mode forward of the first BatchNorm layer of the segmenter that
    `engine.build_segmenter` builds: did its running mean move? Returns the list that fills."""
    moved: list[bool] = []
    real_build = engine.build_segmenter

    def build(cfg, dist):
        model, optimizer, scheduler = real_build(cfg, dist)
        bn = next(m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
        before = []

        def pre(module, args):
            if module.training:
                before.append(module.running_mean.clone())

        def post(module, args, output):
            if before:
                moved.append(not torch.equal(before.pop(), module.running_mean))

        bn.register_forward_pre_hook(pre)
        bn.register_forward_hook(post)
        return model, optimizer, scheduler

    monkeypatch.setattr(engine, "build_segmenter", build)
    return moved

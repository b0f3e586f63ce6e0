"""Pieces the ROAD / DiGA / SFDA loops share beyond dakd_core.train.engine."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from dakd_core.errors import TrainingError
from dakd_core.models.checkpoint import load_checkpoint, load_state_into
from dakd_core.train.engine import bn_running_stats_frozen
from dakd_core.train.engine import launch  # noqa: F401  (the ROAD/DiGA/SFDA loops import it from here)


def load_init(model: nn.Module, init_uri: str) -> None:
    """Load the pretrain checkpoint `init_uri` into `model` (strict; other network -> TrainingError)."""
    payload = load_checkpoint(init_uri, map_location="cpu")
    try:
        load_state_into(model, payload, init_uri)
    except TrainingError as e:
        raise TrainingError(f"init: {e}") from None


def frozen_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy without gradients (BatchNorm uses its running statistics)."""
    frozen = copy.deepcopy(model).eval()
    frozen.requires_grad_(False)
    return frozen


@contextlib.contextmanager
def batch_statistics(frozen: nn.Module):
    """An eval-mode copy's BatchNorm layers normalise with each batch's own statistics for the
    duration, their running averages untouched; back to eval mode after.

    Why: an EMA teacher's running averages follow the student's, which adaptation makes the target
    domain's; normalising source (or source-content) images with them mis-labels every pixel the
    student then learns from. The student normalises those batches with their own statistics
    (forward_by_domain); its teacher and the warm-up model must do the same."""
    layers = [m for m in frozen.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    # a training-mode forward also counts the batch; the copy's state stays exactly as it was
    counts = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in layers]
    for m in layers:
        m.train()
    try:
        with bn_running_stats_frozen(frozen):
            yield
    finally:
        for m, count in zip(layers, counts):
            m.eval()
            if count is not None:
                m.num_batches_tracked.copy_(count)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """theta_teacher <- decay * theta_teacher + (1 - decay) * theta_student; buffers (BatchNorm
    statistics) follow the same average, integer buffers are copied."""
    for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
        if t.is_floating_point():
            t.mul_(decay).add_(s.detach(), alpha=1 - decay)
        else:
            t.copy_(s)


class WithFeatures(nn.Module):
    """forward(x) -> (features dict, SegOutput): one DDP-wrappable forward for loops that need the
    backbone features too (DDP only synchronises what runs through `forward`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        feats = self.model.forward_features(x)
        return feats, self.model.forward_head(feats)


def forward_by_domain(net: nn.Module, batches: list[torch.Tensor], is_target: list[bool], bn_statistics: str) -> list:
    """`net` on each batch separately: BatchNorm normalises every domain with its own batch
    statistics, and with `bn_statistics` "target" only target batches move the running averages
    that evaluation uses (source and source-made batches run with them frozen; adapt.py does the
    same). One concatenated forward would normalise source and target with mixed statistics."""
    outs = []
    for x, target in zip(batches, is_target):
        with bn_running_stats_frozen(net, bn_statistics == "target" and not target):
            outs.append(net(x))
    return outs

"""Training stages: one readable loop per method (`pretrain`, `adapt`, `distill`) over `engine`."""

from dakd_core.train.engine import TrainResult, default_device

__all__ = ["TrainResult", "default_device"]

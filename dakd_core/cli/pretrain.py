"""`dakd pretrain`: source-only training of a segmenter (also runs under torchrun for DDP)."""

from __future__ import annotations

import json

from dakd_core.cli._config_args import add_config_arguments, config_from_args
from dakd_core.train.configs import PretrainConfig

NAME = "pretrain"
HELP = "source-only training (CE, aux head 0.1); checkpoints, resume and result.json under --out"


def add_arguments(p) -> None:
    add_config_arguments(p, PretrainConfig)


def run(args) -> int:
    from dakd_core.train import pretrain

    result = pretrain.run(config_from_args(PretrainConfig, args))
    print(json.dumps(result.__dict__, indent=2, sort_keys=True))
    return 0

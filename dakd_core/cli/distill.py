"""`dakd distill --paradigm a|b|c|d`: DAKD distillation of an adapted student from a frozen teacher."""

from __future__ import annotations

import json

from dakd_core.cli._config_args import add_config_arguments, config_from_args
from dakd_core.train.distill_config import DistillConfig

NAME = "distill"
HELP = (
    "distil a frozen adapted teacher (--teacher-cache INDEX from `dakd cache-teacher`, or "
    "--teacher CKPT --teacher-online) into the student's own adapted checkpoint (--init), keeping "
    "its adversarial adaptation; --paradigm a (source), b (target), c (both), d (b from a c checkpoint)"
)


def add_arguments(p) -> None:
    add_config_arguments(p, DistillConfig)


def run(args) -> int:
    from dakd_core.train import distill

    result = distill.run(config_from_args(DistillConfig, args))
    print(json.dumps(result.__dict__, indent=2, sort_keys=True))
    return 0

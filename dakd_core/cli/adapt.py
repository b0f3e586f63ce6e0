"""`dakd adapt --method adaptsegnet|advent|road|diga|sfda`: UDA from a pretrain checkpoint (--init)."""

from __future__ import annotations

import json

from dakd_core.cli._config_args import add_config_arguments, config_from_args
from dakd_core.train.configs import AdaptConfig

NAME = "adapt"
HELP = (
    "unsupervised adaptation from --init CKPT: output-space adversarial (AdaptSegNet multi-level, ADVENT), "
    "ROAD, DiGA or source-free SFDA (--method); "
    "select the best checkpoint on a labelled target tuning split (--select-manifest)"
)


def add_arguments(p) -> None:
    add_config_arguments(p, AdaptConfig)


def run(args) -> int:
    from dakd_core.train import adapt

    result = adapt.run(config_from_args(AdaptConfig, args))
    print(json.dumps(result.__dict__, indent=2, sort_keys=True))
    return 0

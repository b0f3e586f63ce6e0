"""Source-only pretraining of one network (teacher or student)."""

from __future__ import annotations

import json

from dakd_core.orchestration.pins import pin, resolve
from dakd_core.orchestration.tasks.common import run_identity, stage_out, tracked


def train_outputs(result, network: str) -> dict:
    """A TrainResult as task outputs: the best checkpoint pinned to its content."""
    return {"checkpoint": pin(result.best_checkpoint_uri), "network": network,
            "metrics": dict(result.metrics), "mlflow_run_id": result.mlflow_run_id or ""}


def train_stage(stage: str, config_cls, store_uri: str, config: str, **inputs: str):
    """Build a training stage's config from its plan settings (`config`, JSON from `start`) and
    its pinned upstream inputs, output under the stage's content-addressed folder."""
    from dakd_core.config import build_config

    settings = json.loads(config)
    out = stage_out(store_uri, stage, settings, inputs)
    return build_config(config_cls, **settings, **{k: resolve(v) for k, v in inputs.items()}, out=out)


@tracked("pretrain", lambda kw: run_identity(kw["role"], method="source-only"))
def pretrain_task(*, store_uri: str, experiment: str, role: str, config: str, source_manifest: str) -> dict:
    from dakd_core.train import pretrain
    from dakd_core.train.configs import PretrainConfig

    cfg = train_stage("pretrain", PretrainConfig, store_uri, config, source_manifest=source_manifest)
    return train_outputs(pretrain.run(cfg), cfg.model)

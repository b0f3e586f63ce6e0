"""Source-only pretraining of one network (teacher or student)."""

from __future__ import annotations

import json
from collections.abc import Callable

from dakd_core.orchestration.pins import pin, resolve
from dakd_core.orchestration.tasks.common import run_identity, stage_out, tracked


def train_outputs(result, network: str) -> dict:
    """A TrainResult as task outputs: the best checkpoint pinned to its content."""
    return {"checkpoint": pin(result.best_checkpoint_uri), "network": network,
            "metrics": dict(result.metrics), "mlflow_run_id": result.mlflow_run_id or ""}


def train_stage(stage: str, config_cls, store_uri: str, config: str, run: Callable, **inputs: str) -> dict:
    """Build a training stage's config from its plan settings (`config`, JSON from `start`) and
    its pinned upstream inputs, output under the stage's content-addressed folder, and run it:
    in this process, or under torchrun when the plan's `gpus_per_task` is > 1
    (dakd_core/orchestration/launch.py). A `timm:TAG` backbone_weights is fetched into the store
    once (dakd_core/models/weights.py) and the config records the store URI it read."""
    from dakd_core.config import build_config
    from dakd_core.orchestration.launch import run_stage
    from dakd_core.orchestration.plan import stage_settings

    settings = json.loads(config)
    out = stage_out(store_uri, stage, settings, inputs)
    fields, gpus_per_task = stage_settings(settings)
    if fields.get("backbone_weights"):
        from dakd_core.models.weights import weights_in_store

        fields["backbone_weights"] = weights_in_store(fields["backbone_weights"], store_uri)
    cfg = build_config(config_cls, **fields, **{k: resolve(v) for k, v in inputs.items()}, out=out)
    return train_outputs(run_stage(stage, cfg, gpus_per_task, run), cfg.model)


@tracked("pretrain", lambda kw: run_identity(kw["role"], method="source-only"))
def pretrain_task(*, store_uri: str, experiment: str, role: str, config: str, source_manifest: str) -> dict:
    from dakd_core.train import pretrain
    from dakd_core.train.configs import PretrainConfig

    return train_stage("pretrain", PretrainConfig, store_uri, config, pretrain.run, source_manifest=source_manifest)

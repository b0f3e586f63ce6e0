"""Source-only pretraining of one network (teacher or student). `config`: the stage's settings
from `start` (JSON); the component lists only what upstream tasks produce."""

from typing import NamedTuple

from kfp.dsl import Metrics, Model, Output

from components._base import gpu_component


@gpu_component
def pretrain(
    store_uri: str, experiment: str, role: str, config: str, source_manifest: str, kfp_task: str,
    metrics: Output[Metrics], model: Output[Model],
) -> NamedTuple("TrainOutputs", checkpoint=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.artifacts import publish
    from dakd_core.orchestration.tasks.common import log_metrics
    from dakd_core.orchestration.tasks.pretrain import pretrain_task

    out = pretrain_task(store_uri=store_uri, experiment=experiment, role=role, config=config,
                        source_manifest=source_manifest, kfp_task=kfp_task)
    log_metrics(metrics, out["metrics"])
    publish(model, out["checkpoint"], network=out["network"], stage="pretrain", role=role)
    return namedtuple("TrainOutputs", "checkpoint")(out["checkpoint"])

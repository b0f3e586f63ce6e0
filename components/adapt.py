"""Output-space adversarial adaptation (AdaptSegNet / ADVENT) of one network from its pretrain
checkpoint (`init`, the pretrain task's Model). `config`: the stage's settings from `start` (JSON)."""

from typing import NamedTuple

from kfp.dsl import Input, Metrics, Model, Output

from components._base import gpu_component


@gpu_component
def adapt(
    store_uri: str, experiment: str, role: str, config: str, init: Input[Model], source_manifest: str,
    target_manifest: str, kfp_task: str, metrics: Output[Metrics], model: Output[Model],
) -> NamedTuple("TrainOutputs", checkpoint=str):
    from collections import namedtuple

    from dakd_core.orchestration.tasks.adapt import adapt_task
    from dakd_core.orchestration.tasks.artifacts import pinned, publish
    from dakd_core.orchestration.tasks.common import log_metrics

    out = adapt_task(store_uri=store_uri, experiment=experiment, role=role, config=config, init=pinned(init),
                     source_manifest=source_manifest, target_manifest=target_manifest, kfp_task=kfp_task)
    log_metrics(metrics, out["metrics"])
    publish(model, out["checkpoint"], network=out["network"], stage="adapt", role=role)
    return namedtuple("TrainOutputs", "checkpoint")(out["checkpoint"])
